//! The state the [`Endpoint`](crate::Endpoint) handles and the [`Runner`](crate::Runner) share:
//! the protocol session, the inbox and the outbox, behind one blocking mutex that is never held
//! across an `.await`.

use core::cell::RefCell;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::waitqueue::{MultiWakerRegistration, WakerRegistration};
use tlsro_proto::endpoint::{EndpointSession, Event, Input, Phase};
use tlsro_proto::frame::{self, Delivery, Frame, GroupList, Kind, Publish, PublishKind};

use crate::queue::{EntryHeader, Inbox, Outbox};
use crate::{Error, Rejection};

/// Caller-owned storage for one endpoint: put it in a `StaticCell` and hand it to
/// [`new`](crate::new). It is filled by `new`; until then it holds nothing.
pub struct State<'a, M: RawMutex> {
    inner: Mutex<M, RefCell<Option<Inner<'a>>>>,
}

impl<M: RawMutex> State<'_, M> {
    /// Empty storage.
    pub const fn new() -> Self {
        State {
            inner: Mutex::new(RefCell::new(None)),
        }
    }
}

impl<M: RawMutex> Default for State<'_, M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, M: RawMutex> State<'a, M> {
    pub(crate) fn init(&mut self, inner: Inner<'a>) {
        *self.inner.get_mut() = RefCell::new(Some(inner));
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Inner<'a>) -> T) -> T {
        self.inner.lock(|cell| {
            let mut inner = cell.borrow_mut();
            f(inner
                .as_mut()
                .expect("State is filled by tlsro_embassy::new"))
        })
    }
}

/// Where the endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Status {
    /// No connection has been made yet; the runner is trying.
    Connecting,
    /// Connected and authenticated both ways; objects flow.
    Connected,
    /// The last attempt failed or the connection was lost, for this reason; the runner keeps
    /// trying (with backoff). Publishes are kept in the outbox meanwhile.
    Retrying(Error),
    /// A permanent error: the runner stopped. Every call returns this error.
    Failed(Error),
    /// Stopped gracefully by [`Endpoint::stop`](crate::Endpoint::stop).
    Stopped,
}

/// Counters, for a person or a test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Stats {
    /// Connections that reached `Welcome` (the first one and every reconnect).
    pub connects: u32,
    /// Broadcasts the relay skipped because they exceed this endpoint's frame buffer.
    pub skipped: u32,
    /// Rejections that did not fit the small rejection queue (they were logged).
    pub rejections_lost: u32,
    /// Objects waiting in the inbox.
    pub inbox_items: u32,
    /// Bytes of publishes waiting in the outbox for the relay's confirmation.
    pub outbox_bytes: u32,
    /// Kept publishes dropped unsent because a relay came back with a lower frame limit than
    /// they need (they were logged).
    pub publishes_dropped: u32,
}

/// What [`Inner::take_frame`] did with the bytes at the front of the frame buffer.
pub(crate) enum Step {
    /// No whole frame yet.
    NeedMore,
    /// A frame was handled; drop this many bytes. `true`: the graceful stop finished.
    Consumed(usize, bool),
    /// A delivery is waiting for room in the inbox.
    NoRoom,
}

/// Metadata of an object taken from the inbox.
pub(crate) struct Taken {
    pub group: usize,
    pub produced: bool,
    pub number: u64,
    pub len: usize,
}

pub(crate) struct Inner<'a> {
    pub session: EndpointSession,
    /// The caller's group names, to hand out `&'a str`.
    pub groups: &'a [&'a str],
    pub inbox: Inbox<'a>,
    pub outbox: Outbox<'a>,
    pub status: Status,
    /// The error that stopped the runner for good.
    pub fatal: Option<Error>,
    /// Generation of the connection whose produced objects may be handed over (acknowledged).
    pub live: Option<u32>,
    /// The current connection reached `Welcome`.
    pub welcomed: bool,
    /// The runner stopped reading because the inbox is full.
    pub paused: bool,
    /// Room was freed in the inbox since the runner last looked.
    pub room_freed: bool,
    /// There may be something to transmit.
    pub tx_wake: bool,
    /// [`Endpoint::stop`](crate::Endpoint::stop) was called.
    pub stop_requested: bool,
    pub runner_waker: WakerRegistration,
    pub reader_waker: WakerRegistration,
    pub rx_wakers: MultiWakerRegistration<4>,
    pub space_wakers: MultiWakerRegistration<4>,
    pub status_wakers: MultiWakerRegistration<4>,
    pub rejections: heapless::Deque<Rejection, 4>,
    pub stats: Stats,
}

impl<'a> Inner<'a> {
    pub fn new(
        session: EndpointSession,
        groups: &'a [&'a str],
        inbox: Inbox<'a>,
        outbox: Outbox<'a>,
    ) -> Self {
        Inner {
            session,
            groups,
            inbox,
            outbox,
            status: Status::Connecting,
            fatal: None,
            live: None,
            welcomed: false,
            paused: false,
            room_freed: false,
            tx_wake: false,
            stop_requested: false,
            runner_waker: WakerRegistration::new(),
            reader_waker: WakerRegistration::new(),
            rx_wakers: MultiWakerRegistration::new(),
            space_wakers: MultiWakerRegistration::new(),
            status_wakers: MultiWakerRegistration::new(),
            rejections: heapless::Deque::new(),
            stats: Stats::default(),
        }
    }

    pub fn wake_runner(&mut self) {
        self.tx_wake = true;
        self.runner_waker.wake();
    }

    pub fn set_status(&mut self, status: Status) {
        if self.status != status {
            self.status = status;
            self.status_wakers.wake();
        }
    }

    /// The runner stopped for good: wake everyone so they see the error.
    pub fn fail(&mut self, error: Error) {
        self.fatal = Some(error);
        self.set_status(if error == Error::Stopped {
            Status::Stopped
        } else {
            Status::Failed(error)
        });
        self.rx_wakers.wake();
        self.space_wakers.wake();
    }

    pub fn check(&self) -> Result<(), Error> {
        match self.fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            inbox_items: self.inbox.count() as u32,
            outbox_bytes: self.outbox.kept() as u32,
            ..self.stats
        }
    }

    /// A new connection starts (its transport is up).
    pub fn start_connection(
        &mut self,
        now: tlsro_proto::Instant,
        nonce: [u8; 32],
    ) -> Result<(), Error> {
        self.session.start_connection(now, nonce)?;
        self.outbox.restart();
        self.live = Some(self.session.generation());
        self.welcomed = false;
        self.paused = false;
        self.wake_runner();
        Ok(())
    }

    /// The connection ended; returns whether it had reached `Welcome`.
    pub fn end_connection(&mut self) -> bool {
        self.live = None;
        self.paused = false;
        self.session.connection_lost();
        core::mem::take(&mut self.welcomed)
    }

    /// Handles the frame at the front of `buf`, if it is whole and there is room for it.
    pub fn take_frame(&mut self, now: tlsro_proto::Instant, buf: &[u8]) -> Result<Step, Error> {
        // A TLS record (handshake 0x16 or alert 0x15, version 3.x) where the first frame was
        // expected: a plain endpoint talking to a TLS relay. Say so rather than "frame too large".
        if !self.welcomed && matches!(buf, [0x15 | 0x16, 0x03, ..]) {
            self.session.connection_lost();
            return Err(Error::RelayExpectsTls);
        }
        let max = self.session.config().max_frame;
        if let Ok(Some(len)) = frame::frame_len(buf, max) {
            // A delivery is only taken when the inbox can hold it: nothing is dropped, the
            // runner stops reading instead (and the relay's slow-consumer rule applies).
            if buf[4] == u8::from(Kind::Deliver) && self.inbox.free() < len + EntryHeader::LEN {
                if !self.paused {
                    debug!("tlsro: inbox full, reading paused");
                }
                self.paused = true;
                return Ok(Step::NoRoom);
            }
        }
        if self.paused {
            self.paused = false;
            self.session.reading_resumed(now);
        }
        let (consumed, event) = match self.session.handle_input(now, buf)? {
            Input::NeedMore => return Ok(Step::NeedMore),
            Input::Frame { consumed, event } => (consumed, event),
        };
        let stopped = match event {
            Some(event) => self.handle_event(event),
            None => false,
        };
        // Pongs, acknowledgements, the credit re-granted after `Welcome`, the resend: let the
        // writer look.
        self.wake_runner();
        Ok(Step::Consumed(consumed, stopped))
    }

    fn handle_event(&mut self, event: Event<'_>) -> bool {
        match event {
            Event::Connected { last_seq } => {
                let confirmed = self.session.confirmed();
                self.outbox.drop_confirmed(confirmed);
                let max = self.session.relay_max_frame() as usize;
                let (dropped, highest_kept) = self.outbox.drop_longer_than(max);
                if dropped > 0 {
                    warn!(
                        "tlsro: {} kept publishes exceed the relay's limit of {} bytes now and are dropped",
                        dropped, max
                    );
                    self.stats.publishes_dropped += dropped as u32;
                    self.session.publishes_dropped(highest_kept);
                }
                self.welcomed = true;
                self.stats.connects += 1;
                self.set_status(Status::Connected);
                self.space_wakers.wake();
                info!(
                    "tlsro: connected (relay had publishes up to {}, {} bytes to resend)",
                    last_seq,
                    self.outbox.kept()
                );
            }
            Event::Delivered {
                group,
                delivery,
                payload,
            } => {
                let Some(index) = self.groups.iter().position(|g| *g == group) else {
                    // The session only accepts deliveries for its own groups.
                    return false;
                };
                let (produced, number) = match delivery {
                    Delivery::Broadcast { seq } => (false, seq),
                    Delivery::Produced { tag } => (true, tag),
                };
                let header = EntryHeader {
                    generation: self.session.generation(),
                    group: index as u8,
                    produced,
                    number,
                    len: payload.len() as u32,
                };
                let pushed = self.inbox.push(header, payload);
                debug_assert!(pushed, "room was checked before the frame was taken");
                self.rx_wakers.wake();
            }
            Event::Confirmed { .. } => {
                let confirmed = self.session.confirmed();
                if self.outbox.drop_confirmed(confirmed) > 0 {
                    self.space_wakers.wake();
                }
            }
            Event::Rejected { seq, group, reason } => {
                warn!(
                    "tlsro: the relay rejected publish {} for group {}: {}",
                    seq,
                    group,
                    reason.description()
                );
                let rejection = Rejection { seq, reason };
                if self.rejections.push_back(rejection).is_err() {
                    self.stats.rejections_lost += 1;
                }
                self.rx_wakers.wake();
            }
            Event::Skipped { group, seq, size } => {
                warn!(
                    "tlsro: broadcast {} of group {} ({} bytes) exceeds the frame buffer; skipped",
                    seq, group, size
                );
                self.stats.skipped += 1;
            }
            Event::Stopped => return true,
        }
        false
    }

    /// The next bytes to write: the rest of the outbox first (publishes must precede a
    /// graceful `Close`), then control frames. `Ok(0)`: nothing to write.
    pub fn next_output(&mut self, stage: &mut [u8]) -> Result<usize, Error> {
        if let Some(e) = self.session.error() {
            return Err(e.clone().into());
        }
        if matches!(self.session.phase(), Phase::Open | Phase::Closing) {
            let unsent = self.outbox.unsent();
            if !unsent.is_empty() {
                let n = unsent.len().min(stage.len());
                stage[..n].copy_from_slice(&unsent[..n]);
                self.outbox.mark_sent(n);
                return Ok(n);
            }
        }
        Ok(self.session.poll_transmit(stage)?)
    }

    /// Encodes a publish straight into the outbox; `write` fills the `payload_len` bytes of
    /// payload. `Ok(None)`: no room now (wait for confirms).
    pub fn publish(
        &mut self,
        kind: PublishKind,
        groups: &[&str],
        payload_len: usize,
        write: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<Option<u64>, Error> {
        self.check()?;
        if groups.is_empty() {
            return Err(Error::NoGroup);
        }
        let mut list = GroupList::new();
        for g in groups {
            frame::check_group_name(g).map_err(|_| Error::BadGroupName)?;
            list.push(g).map_err(|_| Error::TooManyGroups)?;
        }
        // The header has the same size as the one `publish_header` writes below (same sequence
        // number, same groups), so the payload can be written first: a payload that fails to
        // serialize then uses up no sequence number.
        let header_len = Frame::Publish(Publish {
            seq: self.session.next_seq(),
            kind,
            groups: list,
            payload: &[],
        })
        .encoded_len();
        let size = header_len + payload_len;
        if size > self.outbox.capacity() || size as u64 > u64::from(self.session.relay_max_frame())
        {
            return Err(Error::FrameTooLarge);
        }
        if size > self.outbox.free() {
            return Ok(None);
        }
        let room = self.outbox.room();
        write(&mut room[header_len..size])?;
        let (seq, n) =
            self.session
                .publish_header(kind, groups, payload_len, &mut room[..header_len])?;
        debug_assert_eq!(n, header_len);
        self.outbox.commit(size);
        self.wake_runner();
        Ok(Some(seq))
    }

    /// Takes the oldest deliverable object into `out`. Produced objects of a connection that
    /// ended are dropped here: the relay has put them back in the queue (PROTOCOL.md §7.3).
    pub fn pop(&mut self, out: &mut [u8]) -> Result<Option<Taken>, Error> {
        loop {
            let Some(h) = self.inbox.peek() else {
                return Ok(None);
            };
            if h.produced && self.live != Some(h.generation) {
                self.inbox.skip();
                self.inbox_room_freed();
                continue;
            }
            let len = h.len as usize;
            if len > out.len() {
                return Err(Error::BufferTooSmall { needed: len });
            }
            self.inbox.pop_into(out);
            self.inbox_room_freed();
            let group = h.group as usize;
            if h.produced {
                if self
                    .session
                    .handed_over(self.groups[group], h.number)
                    .is_err()
                {
                    // The connection failed since: not ours to hand over any more.
                    continue;
                }
                self.wake_runner();
            }
            return Ok(Some(Taken {
                group,
                produced: h.produced,
                number: h.number,
                len,
            }));
        }
    }

    fn inbox_room_freed(&mut self) {
        if self.paused {
            self.room_freed = true;
            self.reader_waker.wake();
        }
    }
}
