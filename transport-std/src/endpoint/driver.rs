//! The background task of an endpoint: it owns the socket, moves bytes between it and the
//! session, arms the session's timer, and reconnects with backoff. Every protocol decision is
//! the session's; this task only moves bytes, timers and buffers.
//!
//! The connection is an `embedded_io_async::{Read, Write}` transport ([`transport::Stream`]),
//! the traits the embassy endpoint drives the same session through.
//!
//! One loop per connection: (1) under the lock, gather all pending output — unsent publish
//! frames, then the session's control frames — into one buffer; (2) write it with one
//! `write_all`, bounded by a no-progress timeout and raced only against a passed stop deadline
//! (it is not cancel safe, so a cancelled write ends the connection); (3) `select!` over a
//! socket read (cancel safe), a wake-up from the API, the session's timer and the stop deadline.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use embedded_io_async::{Read, Write};
use tlsro_proto::Instant as ProtoInstant;
use tlsro_proto::endpoint::{Error as SessionError, Event as SessionEvent, Input, Phase};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout};

use super::state::{Frame as OutFrame, Item, Payload, Shared, State};
use super::{Backoff, Event, Status, deadline_after};
use crate::busy_poll::BusyPoll;
use crate::error::Error;
use crate::transport::{self, Failure, Heal, Link};

/// Read granularity, and the size the read buffer shrinks back to after a large frame.
const READ_CHUNK: usize = 64 * 1024;

/// A delivered object at least this large (and most of the read buffer) is queued in the read
/// buffer it arrived in, not copied out of it.
const HAND_OVER: usize = 256 * 1024;

/// Room for the control frames of one `poll_transmit` call (the largest is a `Hello` with 16
/// groups of 64 bytes, about 1.1 KiB).
const CONTROL_ROOM: usize = 4096;

/// Publish frames gathered into one write, at most (at least one frame is always taken).
const WRITE_BATCH: usize = 1024 * 1024;

/// What the driver needs besides the shared state.
pub(crate) struct DriverConfig {
    pub(crate) addr: String,
    pub(crate) link: Link,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    /// No progress on a write for this long means the relay is gone.
    pub(crate) write_stall: Duration,
    /// Told of every read and write, when the builder asked for busy polling.
    pub(crate) busy_poll: Option<BusyPoll>,
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    config: DriverConfig,
    /// The session's clock starts here.
    epoch: Instant,
    rbuf: Vec<u8>,
    filled: usize,
    wbuf: Vec<u8>,
    ctl: Control,
}

/// Per-driver bookkeeping that event handling updates while the read buffer is borrowed.
struct Control {
    /// Reports the outcome of the first connect to `Builder::connect`.
    first: Option<oneshot::Sender<Result<(), Error>>>,
    /// Connection attempts since the last success.
    attempt: u32,
    /// The current connection got the relay's `Welcome`.
    connected: bool,
    /// The relay answered our `Close`.
    stopped: bool,
    /// A failure found by the driver itself (not by the session).
    failure: Option<Failure>,
    /// The last connection attempt got as far as a TCP connection (its failure came after).
    tcp_connected: bool,
}

/// What a first connect that never succeeds reports: the last failure that says something about
/// the relay, and whether that attempt got as far as a TCP connection.
#[derive(Default)]
struct Unreachable {
    telling: Option<(Error, bool)>,
}

impl Unreachable {
    fn record(&mut self, failure: &Failure, tcp_connected: bool) {
        let replace = match &self.telling {
            None => true,
            // Cut short by the deadline, an attempt says only that time ran out: it replaces
            // what an earlier one learnt (a refused connection, a relay at its connection
            // limit) only if it got further (a TCP connection where the earlier got none).
            Some((_, earlier_tcp)) if failure.ran_out_of_time => tcp_connected && !earlier_tcp,
            Some(_) => true,
        };
        if replace {
            self.telling = Some((failure.error.clone(), tcp_connected));
        }
    }

    fn reason(&self) -> String {
        match &self.telling {
            // Something accepted the TCP connection: say so, as "unreachable" alone would send
            // the user looking for a relay that is not running.
            Some((error, true)) => format!(
                "{error}; something accepts TCP connections there but did not complete a tlsro \
                 handshake (a relay busy with too many handshakes, or another service on that \
                 port?)"
            ),
            Some((error, false)) if transport::is_unresolved(error) => {
                format!("{error} (check the host name)")
            }
            Some((error, false)) => {
                format!("{error} (is the relay running and listening there?)")
            }
            None => "no connection attempt finished".to_owned(),
        }
    }
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: DriverConfig,
        first: oneshot::Sender<Result<(), Error>>,
    ) -> Self {
        Driver {
            shared,
            config,
            epoch: Instant::now(),
            rbuf: vec![0; READ_CHUNK],
            filled: 0,
            wbuf: Vec::new(),
            ctl: Control {
                first: Some(first),
                attempt: 0,
                connected: false,
                stopped: false,
                failure: None,
                tcp_connected: false,
            },
        }
    }

    fn now(&self) -> ProtoInstant {
        proto_now(self.epoch)
    }

    /// The task: connects, drives, reconnects, and finally records how the endpoint ended.
    pub(crate) async fn run(mut self) {
        let guard = FinishGuard(self.shared.clone());
        let result = self.run_connections().await;
        self.finish(result);
        drop(guard);
    }

    async fn run_connections(&mut self) -> Result<(), Error> {
        let first_deadline = deadline_after(self.config.connect_timeout);
        let mut unreachable = Unreachable::default();
        loop {
            let first = self.ctl.first.is_some();
            let deadline = if first {
                first_deadline
            } else {
                deadline_after(self.config.connect_timeout)
            };
            let failure = match self.connection(deadline, first).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if self.ctl.connected {
                self.ctl.connected = false;
                tracing::warn!(relay = %self.config.addr, error = %failure.error, "disconnected from the relay");
                self.shared.emit(Event::Disconnected {
                    reason: failure.error.clone(),
                });
            } else {
                tracing::debug!(relay = %self.config.addr, error = %failure.error, "connection attempt failed");
            }
            let first = self.ctl.first.is_some();
            if first {
                unreachable.record(&failure, self.ctl.tcp_connected);
            }
            match failure.heal {
                Heal::Never => return Err(failure.error),
                Heal::NotOnFirstConnect if first => return Err(failure.error),
                _ => {}
            }
            self.ctl.attempt = self.ctl.attempt.saturating_add(1);
            if !first {
                self.shared.lock().status = Status::Reconnecting {
                    attempt: self.ctl.attempt,
                    last_error: failure.error.clone(),
                };
            }
            let wake_at = deadline_after(self.config.backoff.delay(self.ctl.attempt));
            if first && wake_at >= first_deadline {
                sleep_until(first_deadline).await;
                return Err(Error::RelayUnreachable {
                    addr: self.config.addr.clone(),
                    reason: unreachable.reason(),
                });
            }
            if let Some(end) = self.back_off(wake_at).await {
                return end;
            }
        }
    }

    /// Sleeps until `wake_at`, unless a stop request ends the endpoint first.
    async fn back_off(&mut self, wake_at: Instant) -> Option<Result<(), Error>> {
        tokio::select! {
            end = stop_wanted(&self.shared) => Some(end),
            _ = sleep_until(wake_at) => None,
        }
    }

    /// One connection: open the transport, start the session's connection, drive it.
    async fn connection(&mut self, deadline: Instant, first: bool) -> Result<(), Failure> {
        let shared = self.shared.clone();
        self.ctl.tcp_connected = false;
        let io = tokio::select! {
            opened = transport::open(&self.config.addr, &self.config.link, deadline) => opened?,
            end = stop_wanted(&shared) => return end.map_err(|e| Failure::new(e, Heal::Never)),
        };
        self.ctl.tcp_connected = true;
        let nonce = random_nonce().map_err(Failure::retry)?;
        {
            let mut st = shared.lock();
            st.session
                .start_connection(self.now(), nonce)
                .map_err(|e| Failure::new(e.into(), Heal::Never))?;
            st.outbox.rewind();
        }
        self.filled = 0;
        self.ctl.stopped = false;
        self.ctl.failure = None;
        let handshake_deadline = first.then_some(deadline);
        let result = self.drive(io, handshake_deadline).await;
        shared.lock().connection_lost();
        result
    }

    async fn drive(
        &mut self,
        mut io: impl Read<Error = io::Error> + Write<Error = io::Error>,
        handshake_deadline: Option<Instant>,
    ) -> Result<(), Failure> {
        let shared = self.shared.clone();
        let mut paused = false;
        loop {
            let plan = self.plan();
            if plan.direct.is_some() || !self.wbuf.is_empty() {
                // A large publish frame first, written from the outbox's own buffer, then what
                // was gathered (control frames after it, as when everything is gathered).
                let bufs: &[&[u8]] = match &plan.direct {
                    Some(frame) => &[frame.bytes(), &self.wbuf],
                    None => &[&self.wbuf],
                };
                // A stop waits no longer than its deadline, even for a relay that stopped
                // reading (the stop may come while the write is stuck): what is not written by
                // then is reported unconfirmed.
                let written = tokio::select! {
                    // The write first: one the socket takes at once (the Close of a stop whose
                    // deadline has just passed, say) always goes out.
                    biased;
                    written = write_all(&mut io, bufs, self.config.write_stall) => written,
                    _ = stop_deadline_passed(&shared) => return Ok(()),
                };
                self.wbuf.clear();
                if let Err(e) = written {
                    return Err(Failure::retry(e.into()));
                }
                if let Some(busy) = &self.config.busy_poll {
                    busy.activity();
                }
            }
            if let Some(end) = plan.end {
                return end;
            }
            if paused && !plan.paused {
                shared.lock().session.reading_resumed(self.now());
            }
            paused = plan.paused;
            // While paused the session's timers are off: the silence is ours, not the relay's.
            let timer = if paused { None } else { plan.timer };
            let handshake_deadline = handshake_deadline.filter(|_| !self.ctl.connected);
            let read_room = &mut self.rbuf[self.filled..];
            tokio::select! {
                biased;
                read = io.read(read_room), if !paused => match read {
                    Ok(0) => return Err(self.end_of_stream()),
                    Ok(n) => {
                        if let Some(busy) = &self.config.busy_poll {
                            busy.activity();
                        }
                        self.filled += n;
                        self.process_input();
                    }
                    Err(e) => return Err(Failure::retry(e.into())),
                },
                _ = shared.wake_driver.notified() => {}
                _ = sleep_until_opt(timer) => {
                    let now = self.now();
                    shared.lock().session.handle_timeout(now);
                }
                _ = sleep_until_opt(plan.stop_deadline) => {}
                _ = sleep_until_opt(handshake_deadline) => {
                    return Err(Failure::out_of_time(Error::Protocol(SessionError::HandshakeTimeout)));
                }
                _ = std::future::ready(()), if plan.more_output => {}
            }
        }
    }

    /// The relay hung up without a `Close` frame.
    fn end_of_stream(&self) -> Failure {
        if self.filled > 0 {
            let cut = tlsro_proto::frame::truncated(&self.rbuf[..self.filled]);
            return Failure::retry(Error::Protocol(SessionError::Frame(cut)));
        }
        let during = if self.ctl.connected {
            ""
        } else {
            " during the handshake"
        };
        Failure::retry(Error::Closed(format!(
            "the connection ended{during} without a Close frame"
        )))
    }

    /// Feeds every whole frame in the read buffer to the session and handles what it means.
    fn process_input(&mut self) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let now = self.now();
        let handshaking = matches!(
            st.session.phase(),
            Phase::SendHello | Phase::AwaitChallenge | Phase::SendProof | Phase::AwaitWelcome
        );
        if handshaking
            && self.config.link.is_plain()
            && transport::looks_like_tls(&self.rbuf[..self.filled])
        {
            self.ctl.failure = Some(Failure::new(
                Error::TlsMismatch(transport::RELAY_SPEAKS_TLS.to_owned()),
                Heal::NotOnFirstConnect,
            ));
            return;
        }
        // Nothing from the relay has been taken yet: a first frame that does not parse means
        // that something else answers at this address.
        let first_frame = matches!(st.session.phase(), Phase::SendHello | Phase::AwaitChallenge);
        let mut start = 0;
        let mut delivered = false;
        while st.session.phase() != Phase::Closed {
            match st.session.handle_input(now, &self.rbuf[start..self.filled]) {
                Ok(Input::NeedMore) => break,
                Ok(Input::Frame {
                    consumed,
                    event:
                        Some(SessionEvent::Delivered {
                            group,
                            delivery,
                            payload,
                        }),
                }) if payload.len() >= HAND_OVER && payload.len() >= self.rbuf.len() / 2 => {
                    // A large object is most of the read buffer: the buffer itself becomes the
                    // queued item (copying the object out would cost more than a fresh buffer
                    // for what follows it).
                    let range = tlsro_proto::frame::range_within(&self.rbuf, payload);
                    let group = group.to_owned();
                    let generation = st.session.generation();
                    let end = start + consumed;
                    let Some(range) = range else {
                        // Not a part of the read buffer (cannot happen): a copy, as for others.
                        let payload = payload.into();
                        st.inbox.push(Item {
                            group,
                            delivery,
                            generation,
                            payload,
                        });
                        start = end;
                        delivered = true;
                        continue;
                    };
                    let leftover = self.filled - end;
                    let mut next = vec![0; READ_CHUNK.max(leftover)];
                    next[..leftover].copy_from_slice(&self.rbuf[end..self.filled]);
                    let mut buf = std::mem::replace(&mut self.rbuf, next);
                    buf.truncate(end);
                    self.filled = leftover;
                    start = 0;
                    st.inbox.push(Item {
                        group,
                        delivery,
                        generation,
                        payload: Payload::within(buf, range),
                    });
                    delivered = true;
                }
                Ok(Input::Frame { consumed, event }) => {
                    start += consumed;
                    if let Some(event) = event {
                        delivered |= on_event(&mut self.ctl, &shared, &mut st, event);
                    }
                }
                Err(SessionError::Frame(e)) if first_frame && start == 0 => {
                    self.ctl.failure = Some(Failure::new(
                        Error::NotARelay(format!("its first bytes are not a tlsro frame ({e})")),
                        Heal::NotOnFirstConnect,
                    ));
                    break;
                }
                // The session closed the connection; `plan` reports why.
                Err(_) => break,
            }
        }
        let limit = st.session.receive_limit();
        drop(st);
        if delivered {
            shared.rx_ready.notify_waiters();
        }
        self.rbuf.copy_within(start..self.filled, 0);
        self.filled -= start;
        self.size_read_buffer(limit);
    }

    /// Makes room for the frame being received (never more than the session's `limit` now: a
    /// longer length prefix has already failed the connection, and before `Welcome` that limit
    /// is far below our `max_frame`), or shrinks back after a large one.
    fn size_read_buffer(&mut self, limit: u32) {
        let need = tlsro_proto::frame::announced_len(&self.rbuf[..self.filled]).unwrap_or(0);
        let want = need.min(limit as usize).max(READ_CHUNK);
        if self.rbuf.len() < want {
            // A fresh zeroed buffer rather than `resize`: the allocator hands large ones out as
            // zero pages from the OS, where `resize` would write every byte.
            let mut grown = vec![0; want];
            grown[..self.filled].copy_from_slice(&self.rbuf[..self.filled]);
            self.rbuf = grown;
        } else if self.filled == 0 && self.rbuf.len() > 4 * READ_CHUNK {
            self.rbuf.truncate(READ_CHUNK);
            self.rbuf.shrink_to_fit();
        }
    }

    /// Under the lock: handles a stop request, gathers the output into `wbuf`, and decides
    /// whether the connection is over.
    fn plan(&mut self) -> Plan {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let now = self.now();
        let mut stop_deadline = None;
        let mut stop_expired = false;
        if let Some(stop) = st.stop.as_ref() {
            stop_deadline = Some(stop.deadline);
            stop_expired = Instant::now() >= stop.deadline;
            let closing = stop.closing;
            if !closing && !st.outbox.is_empty() && !stop_expired {
                // The relay may hold back the last confirm for its confirm delay.
                st.session.request_confirm();
            }
            if !closing
                && st.session.phase() == Phase::Open
                && (st.outbox.is_empty() || stop_expired)
            {
                // The session sends its `Close` after the acknowledgements still owed.
                st.session.close(now);
                if let Some(stop) = st.stop.as_mut() {
                    stop.closing = true;
                }
            }
        }

        let direct = if matches!(st.session.phase(), Phase::Open | Phase::Closing) {
            st.outbox.write_unsent(&mut self.wbuf, WRITE_BATCH)
        } else {
            None
        };
        loop {
            let len = self.wbuf.len();
            self.wbuf.resize(len + CONTROL_ROOM, 0);
            let written = match st.session.poll_transmit(&mut self.wbuf[len..]) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "control frame did not fit; dropped");
                    0
                }
            };
            self.wbuf.truncate(len + written);
            if written == 0 {
                break;
            }
        }
        let more_output =
            st.outbox.has_unsent() && matches!(st.session.phase(), Phase::Open | Phase::Closing);

        let end = if let Some(failure) = self.ctl.failure.take() {
            Some(Err(failure))
        } else if st.session.phase() == Phase::Closed {
            Some(if self.ctl.stopped || st.stop.is_some() {
                Ok(())
            } else {
                Err(session_failure(st.session.error()))
            })
        } else if stop_expired {
            Some(Ok(()))
        } else {
            None
        };

        Plan {
            end,
            timer: st
                .session
                .poll_timeout()
                .map(|t| self.epoch + Duration::from_millis(t.as_millis())),
            // Only while objects flow: a handshake and a stop must be able to finish.
            paused: st.session.phase() == Phase::Open
                && st.stop.is_none()
                && st.inbox.bytes > shared.limits.max_queued,
            more_output,
            stop_deadline,
            direct,
        }
    }

    /// Records how the endpoint ended, resolves what is still open and wakes every waiter.
    fn finish(&mut self, result: Result<(), Error>) {
        let mut st = self.shared.lock();
        let stop_requested = st.stop.is_some();
        let unconfirmed = !st.outbox.is_empty();
        let result = match result {
            Ok(()) if unconfirmed => Err(Error::Timeout),
            other => other,
        };
        match &result {
            Ok(()) => st.status = Status::Stopped,
            Err(_) if stop_requested => st.status = Status::Stopped,
            Err(e) => {
                // A first connect returns its error to the caller: logged as an error too, every
                // failure would be said twice.
                if self.ctl.first.is_some() {
                    tracing::debug!(relay = %self.config.addr, error = %e, "first connect failed");
                } else {
                    tracing::error!(relay = %self.config.addr, error = %e, "endpoint failed");
                }
                st.status = Status::Failed(e.clone());
            }
        }
        let reason = st.terminal().unwrap_or(Error::Stopped);
        st.outbox.fail_all(&reason);
        st.connection_lost();
        st.stop_result = Some(result.clone());
        drop(st);
        if let Some(first) = self.ctl.first.take() {
            let _ = first.send(Err(result.err().unwrap_or(Error::Stopped)));
        }
        self.shared.emit(Event::Stopped);
        self.shared.rx_ready.notify_waiters();
        self.shared.finished.send_replace(true);
    }
}

/// What one pass under the lock decided.
struct Plan {
    /// The connection is over (after `wbuf` is written).
    end: Option<Result<(), Failure>>,
    /// When the session's timer fires.
    timer: Option<Instant>,
    /// The receive queue is over its limit: do not read.
    paused: bool,
    /// Publish frames are still unsent: come back without waiting.
    more_output: bool,
    /// A large publish frame to write as it is, before `wbuf`.
    direct: Option<OutFrame>,
    stop_deadline: Option<Instant>,
}

/// Handles one session event under the lock. Returns whether an object was queued.
fn on_event(ctl: &mut Control, shared: &Shared, st: &mut State, event: SessionEvent<'_>) -> bool {
    match event {
        SessionEvent::Connected { last_seq } => {
            st.outbox.confirm_up_to(last_seq);
            let max = st.session.relay_max_frame();
            if st.outbox.bytes > 0 {
                let highest_kept = st.outbox.drop_larger_than(max, |seq, size| {
                    shared.emit(Event::PublishDropped { seq, size, max })
                });
                st.session.publishes_dropped(highest_kept.unwrap_or(0));
            }
            st.outbox.rewind();
            st.status = Status::Connected;
            ctl.connected = true;
            ctl.attempt = 0;
            tracing::info!(last_seq, "connected to the relay");
            // The first connection is announced by `connect()` returning; reconnections are
            // events.
            match ctl.first.take() {
                Some(first) => {
                    let _ = first.send(Ok(()));
                }
                None => shared.emit(Event::Connected),
            }
            false
        }
        SessionEvent::Delivered {
            group,
            delivery,
            payload,
        } => {
            st.inbox.push(Item {
                group: group.to_owned(),
                delivery,
                generation: st.session.generation(),
                payload: payload.into(),
            });
            true
        }
        SessionEvent::Confirmed { up_to } => {
            st.outbox.confirm_up_to(up_to);
            false
        }
        SessionEvent::Rejected { seq, group, reason } => {
            tracing::warn!(seq, group, %reason, "the relay refused a published object");
            st.outbox.reject(seq, group, reason);
            shared.emit(Event::Rejected {
                seq,
                group: group.to_owned(),
                reason,
            });
            false
        }
        SessionEvent::Skipped { group, seq, size } => {
            tracing::warn!(
                group,
                seq,
                size,
                "a broadcast was too large for this endpoint and was skipped"
            );
            shared.emit(Event::Skipped {
                group: group.to_owned(),
                seq,
                size,
            });
            false
        }
        SessionEvent::Stopped => {
            ctl.stopped = true;
            false
        }
    }
}

/// Sorts an error that closed the session's connection.
fn session_failure(error: Option<&SessionError>) -> Failure {
    let Some(error) = error else {
        return Failure::retry(Error::Closed("the connection was closed".to_owned()));
    };
    let heal = match error {
        e if e.is_permanent() => Heal::Never,
        SessionError::Frame(_)
        | SessionError::Unexpected(_)
        | SessionError::AckUnknown { .. }
        | SessionError::RelayAhead { .. }
        | SessionError::SessionReused { .. } => Heal::NotOnFirstConnect,
        _ => Heal::Retry,
    };
    Failure::new(error.clone().into(), heal)
}

/// Writes every buffer of `bufs` in order, then flushes once, failing when the relay accepts
/// nothing for `stall`.
async fn write_all(
    io: &mut impl Write<Error = io::Error>,
    bufs: &[&[u8]],
    stall: Duration,
) -> io::Result<()> {
    let stalled = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the relay accepted no data for {stall:?}"),
        )
    };
    for &buf in bufs {
        let mut buf = buf;
        while !buf.is_empty() {
            match timeout(stall, io.write(buf)).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(stalled()),
            }
        }
    }
    timeout(stall, io.flush()).await.map_err(|_| stalled())?
}

/// Resolves when a stop request ends the endpoint while it has no connection: at once when
/// nothing is left to deliver, with [`Error::Timeout`] at the stop deadline otherwise. Pending
/// while no stop was requested.
async fn stop_wanted(shared: &Shared) -> Result<(), Error> {
    loop {
        let notified = shared.wake_driver.notified();
        let deadline = {
            let st = shared.lock();
            match &st.stop {
                Some(_) if st.outbox.is_empty() => return Ok(()),
                Some(stop) if Instant::now() >= stop.deadline => return Err(Error::Timeout),
                Some(stop) => Some(stop.deadline),
                None => None,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = sleep_until_opt(deadline) => {}
        }
    }
}

/// Resolves once a stop was requested and its deadline has passed; pending before. It waits on
/// `stop_requested`, never on `wake_driver`: a wake-up taken here during a write would be lost
/// to the `select!` after it (a `notify` sent only at the next keepalive, say).
async fn stop_deadline_passed(shared: &Shared) {
    loop {
        let notified = shared.stop_requested.notified();
        tokio::pin!(notified);
        // Registered before looking, so a stop request in between is not missed.
        notified.as_mut().enable();
        let deadline = shared.lock().stop.as_ref().map(|stop| stop.deadline);
        match deadline {
            Some(deadline) => return sleep_until(deadline).await,
            None => notified.await,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn proto_now(epoch: Instant) -> ProtoInstant {
    ProtoInstant::from_millis(u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
}

fn random_nonce() -> Result<[u8; 32], Error> {
    let mut nonce = [0; 32];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::Io(Arc::new(io::Error::other(e.to_string()))))?;
    Ok(nonce)
}

/// Marks the endpoint ended if the task ends without `finish`: aborted (the endpoint was
/// dropped, or its runtime shut down) or panicked. No caller waits forever.
struct FinishGuard(Arc<Shared>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if *self.0.finished.borrow() {
            return;
        }
        let mut st = self.0.lock();
        let error = if std::thread::panicking() {
            let error = Error::Closed("the endpoint's background task panicked".to_owned());
            st.status = Status::Failed(error.clone());
            error
        } else {
            st.status = Status::Stopped;
            Error::Stopped
        };
        st.outbox.fail_all(&error);
        st.stop_result.get_or_insert(Err(error));
        drop(st);
        self.0.emit(Event::Stopped);
        self.0.rx_ready.notify_waiters();
        self.0.finished.send_replace(true);
    }
}

#[cfg(test)]
mod unreachable_tests {
    use super::*;

    fn io_failure(kind: io::ErrorKind, text: &str) -> Failure {
        Failure::retry(Error::Io(Arc::new(io::Error::new(kind, text))))
    }

    #[test]
    fn running_out_of_time_keeps_the_earlier_reason() {
        let refused = io_failure(io::ErrorKind::ConnectionRefused, "connection refused");
        let cut_dialing = Failure::out_of_time(Error::Io(Arc::new(io::Error::new(
            io::ErrorKind::TimedOut,
            "TCP connect timed out",
        ))));
        let cut_handshaking = Failure::out_of_time(Error::Protocol(SessionError::HandshakeTimeout));
        let mut report = Unreachable::default();
        report.record(&refused, false);
        report.record(&cut_dialing, false);
        assert_eq!(
            report.reason(),
            "I/O error: connection refused (is the relay running and listening there?)"
        );

        // With nothing earlier, the timeout is all there is to say.
        let mut report = Unreachable::default();
        report.record(&cut_dialing, false);
        assert_eq!(
            report.reason(),
            "I/O error: TCP connect timed out (is the relay running and listening there?)"
        );

        // A host name nobody knows is not a relay that is not running.
        let unknown = io_failure(io::ErrorKind::NotFound, "cannot resolve relay.invalid:7000");
        let mut report = Unreachable::default();
        report.record(&unknown, false);
        let reason = report.reason();
        assert!(reason.ends_with("(check the host name)"), "{reason}");

        // A relay at its connection limit said so on every attempt but the last, which the
        // deadline cut in the handshake: its refusal is the answer.
        let busy = Failure::retry(Error::Closed("relay has too many connections".to_owned()));
        let mut report = Unreachable::default();
        report.record(&busy, true);
        report.record(&cut_handshaking, true);
        assert!(
            report.reason().contains("too many connections"),
            "{}",
            report.reason()
        );

        // A cut attempt that got further than the earlier ones (a TCP connection where they
        // were refused) replaces them: something is there.
        let mut report = Unreachable::default();
        report.record(&refused, false);
        report.record(&cut_handshaking, true);
        report.record(&cut_dialing, false);
        let reason = report.reason();
        assert!(
            reason.starts_with("the handshake with the relay timed out"),
            "{reason}"
        );
        assert!(reason.contains("accepts TCP connections there"), "{reason}");
    }
}
