//! One endpoint's side of the protocol, without I/O and without an allocator.
//!
//! An [`EndpointSession`] lives as long as the endpoint, across reconnects: it keeps the session
//! id, the publish sequence numbers, the credit the endpoint has granted and the last broadcast
//! seen per group. Each connection is started with [`EndpointSession::start_connection`] and
//! ended by the relay, by an error, or by [`EndpointSession::connection_lost`].
//!
//! Driving it (quinn-proto shape):
//!
//! 1. feed received bytes to [`handle_input`](EndpointSession::handle_input): it consumes one
//!    whole frame at a time and returns an [`Event`] that borrows from your buffer (so a delivered
//!    payload is never copied by the core); a partial frame is not an error;
//! 2. write what [`poll_transmit`](EndpointSession::poll_transmit) produces (control frames:
//!    handshake, notify, ack, ping, close); publish frames are encoded by
//!    [`publish_header`](EndpointSession::publish_header) into your buffer, and you keep them
//!    until they are confirmed, so they can be sent again after a reconnect;
//! 3. sleep until [`poll_timeout`](EndpointSession::poll_timeout) and call
//!    [`handle_timeout`](EndpointSession::handle_timeout).

use core::fmt;
use core::time::Duration;

use heapless::String;

use crate::auth::{AuthKey, Role, Transcript};
use crate::frame::{
    self, Ack, Close, CloseCode, Delivery, Frame, FrameError, GroupList, Hello, Kind, Notify,
    Proof, Publish, PublishKind, RejectReason,
};
use crate::{Instant, MAX_GROUP_NAME, MAX_GROUPS, PROTOCOL_VERSION};

/// The relay's limit assumed before its `Welcome` says otherwise (the relay's default).
pub const DEFAULT_RELAY_MAX_FRAME: u32 = 16 * 1024 * 1024 + 1024;

/// A group name held without an allocator.
pub type GroupName = String<MAX_GROUP_NAME>;

/// Details from the relay, kept short enough to live in an error without an allocator.
pub type Detail = String<96>;

/// How an endpoint session behaves; fixed for its whole life.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The key derived from the shared password.
    pub key: AuthKey,
    /// The session id: random, drawn once by the driver, the same across reconnects.
    pub session: [u8; 16],
    /// The groups this endpoint is a member of.
    pub groups: heapless::Vec<GroupName, MAX_GROUPS>,
    /// The largest frame this endpoint can receive (prefix included).
    pub max_frame: u32,
    /// Ping the relay after this much silence.
    pub keepalive: Duration,
    /// Consider the relay dead after this much silence.
    pub dead_after: Duration,
    /// The handshake (and a graceful close) must finish within this.
    pub handshake_timeout: Duration,
}

impl EndpointConfig {
    /// A configuration with default timings (keepalive 5 s, dead after 15 s, handshake 10 s) and
    /// a 16 MiB receive limit.
    pub fn new(key: AuthKey, session: [u8; 16], groups: &[&str]) -> Result<Self, Error> {
        let mut names = heapless::Vec::new();
        for g in groups {
            frame::check_group_name(g).map_err(|_| Error::BadGroupName)?;
            if names.iter().any(|n: &GroupName| n.as_str() == *g) {
                continue;
            }
            let name = GroupName::try_from(*g).map_err(|_| Error::BadGroupName)?;
            names.push(name).map_err(|_| Error::TooManyGroups)?;
        }
        Ok(EndpointConfig {
            key,
            session,
            groups: names,
            max_frame: DEFAULT_RELAY_MAX_FRAME,
            keepalive: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
        })
    }
}

/// Everything that can go wrong on an endpoint session. Errors are sticky: a connection error
/// is returned again by every call until the next [`EndpointSession::start_connection`]; a
/// permanent error ([`Error::is_permanent`]) is returned forever.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The relay sent bytes that are not a valid frame.
    Frame(FrameError),
    /// The relay sent a frame that is not allowed now (for example before `Welcome`).
    Unexpected(Kind),
    /// The relay's proof did not verify: it does not know the password (or is not our relay).
    RelayProofInvalid,
    /// The relay refused this endpoint for good (wrong password, group refused, …).
    Rejected(
        CloseCode,
        #[cfg_attr(feature = "defmt", defmt(Debug2Format))] Detail,
    ),
    /// The relay closed the connection; reconnecting may help.
    Closed(
        CloseCode,
        #[cfg_attr(feature = "defmt", defmt(Debug2Format))] Detail,
    ),
    /// The relay's `Welcome` says it handled publishes of this session up to `last_seq`, but
    /// the session has numbered only those below `next_seq`: another endpoint uses the same
    /// session id (one reused after a restart, say), or the relay is broken. Nothing is counted
    /// as confirmed.
    RelayAhead {
        /// `Welcome.last_seq`.
        last_seq: u64,
        /// The sequence number the next publish gets.
        next_seq: u64,
    },
    /// The relay's first `Welcome` to this session says it handled publishes of it already
    /// (up to `last_seq`), before this endpoint ever connected: the session id is in use by
    /// another endpoint, or was reused after a restart. Taking it would count this endpoint's
    /// publishes up to `last_seq` as confirmed, and the relay would drop them as resends.
    SessionReused {
        /// `Welcome.last_seq`.
        last_seq: u64,
    },
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// Nothing was heard from the relay for `dead_after`.
    RelaySilent,
    /// The endpoint is not a member of this group (notify is for members only).
    NotMember,
    /// An acknowledgement for a delivery tag that was never received on this connection.
    AckUnknown {
        /// The tag acknowledged.
        tag: u64,
        /// The highest tag received.
        highest: u64,
    },
    /// More than [`MAX_GROUPS`] groups.
    TooManyGroups,
    /// A group name is empty or longer than [`MAX_GROUP_NAME`] bytes.
    BadGroupName,
    /// A publish addresses no group.
    NoGroup,
    /// The object is larger than the relay accepts.
    PayloadTooLarge {
        /// Size of the frame it would need.
        size: u64,
        /// The relay's limit.
        max: u32,
    },
    /// There is no open connection.
    NotConnected,
    /// The session was stopped.
    Stopped,
}

impl Error {
    /// Whether reconnecting cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Rejected(..) | Error::RelayProofInvalid | Error::Stopped
        )
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::Frame(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_detail = |f: &mut fmt::Formatter<'_>, code: &CloseCode, detail: &Detail| {
            if detail.is_empty() {
                write!(f, "{code}")
            } else {
                write!(f, "{code}: {detail}")
            }
        };
        match self {
            Error::Frame(e) => write!(f, "bad frame from the relay: {e}"),
            Error::Unexpected(k) => write!(f, "the relay sent an unexpected {k} frame"),
            Error::RelayProofInvalid => f.write_str(
                "the relay could not prove it knows the password (wrong relay or wrong password)",
            ),
            Error::Rejected(code, detail) => with_detail(f, code, detail),
            Error::Closed(code, detail) => {
                f.write_str("the relay closed the connection: ")?;
                with_detail(f, code, detail)
            }
            Error::RelayAhead { last_seq, next_seq } => write!(
                f,
                "the relay says it handled publishes up to {last_seq} for this session, which \
                 has published only {}: another endpoint uses the same session id",
                next_seq.saturating_sub(1)
            ),
            Error::SessionReused { last_seq } => write!(
                f,
                "the relay already has publishes up to {last_seq} from this session id, before \
                 its first connection: the id is reused (draw a fresh random one at each start)"
            ),
            Error::HandshakeTimeout => f.write_str("the handshake with the relay timed out"),
            Error::RelaySilent => f.write_str("nothing heard from the relay for too long"),
            Error::NotMember => f.write_str("this endpoint is not a member of that group"),
            Error::AckUnknown { tag, highest } => write!(
                f,
                "acknowledgement for delivery {tag}, but only {highest} were received"
            ),
            Error::TooManyGroups => write!(f, "more than {MAX_GROUPS} groups"),
            Error::BadGroupName => write!(
                f,
                "group name is empty or longer than {MAX_GROUP_NAME} bytes"
            ),
            Error::NoGroup => f.write_str("a publish needs at least one group"),
            Error::PayloadTooLarge { size, max } => write!(
                f,
                "object needs a {size}-byte frame but the relay accepts at most {max} bytes"
            ),
            Error::NotConnected => f.write_str("not connected to the relay"),
            Error::Stopped => f.write_str("the endpoint was stopped"),
        }
    }
}

impl core::error::Error for Error {}

/// What a received frame meant to the application. Borrows from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'b> {
    /// The handshake finished; the relay proved itself. Publishes with a sequence number above
    /// `last_seq` that are not confirmed must be sent (again) now, in order.
    Connected {
        /// The highest publish sequence number the relay already handled for this session.
        last_seq: u64,
    },
    /// An object for the application.
    Delivered {
        /// The group it was sent to.
        group: &'b str,
        /// Broadcast or produced (the tag is what [`EndpointSession::handed_over`] takes).
        delivery: Delivery,
        /// The serialized object.
        payload: &'b [u8],
    },
    /// Publishes up to `up_to` were handled by the relay; those not rejected were accepted.
    Confirmed {
        /// Highest handled sequence number.
        up_to: u64,
    },
    /// A publish was refused for one group.
    Rejected {
        /// The publish's sequence number.
        seq: u64,
        /// The group that refused it.
        group: &'b str,
        /// Why.
        reason: RejectReason,
    },
    /// A broadcast was too large for this endpoint's `max_frame` and was not sent.
    Skipped {
        /// The group.
        group: &'b str,
        /// The broadcast's sequence number.
        seq: u64,
        /// The frame size that did not fit.
        size: u32,
    },
    /// The graceful close finished: the relay has everything this endpoint sent.
    Stopped,
}

/// The result of [`EndpointSession::handle_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'b> {
    /// The buffer holds no whole frame yet; read more and call again with the bytes appended.
    NeedMore,
    /// One frame was consumed; drop `consumed` bytes from the front of the buffer.
    Frame {
        /// Bytes consumed.
        consumed: usize,
        /// What the frame meant, if anything for the application.
        event: Option<Event<'b>>,
    },
}

/// Where the current connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Phase {
    /// No connection.
    Idle,
    /// `Hello` is waiting for `poll_transmit`.
    SendHello,
    /// Waiting for the relay's `Challenge`.
    AwaitChallenge,
    /// `Proof` is waiting for `poll_transmit`.
    SendProof,
    /// Waiting for the relay's `Welcome`.
    AwaitWelcome,
    /// Authenticated both ways; objects flow.
    Open,
    /// A graceful close was requested; waiting for the relay's `Close`.
    Closing,
    /// The connection is over (closed by either side or failed).
    Closed,
}

#[derive(Debug, Clone, Default)]
struct GroupState {
    /// Credit granted and not yet used by a delivery: re-granted after a reconnect.
    outstanding: u32,
    /// Produced objects received on this connection and not yet handed to the application.
    unacked: u32,
    /// Credit to send in the next `Notify`.
    pending_credit: u32,
    /// A "everything queued now" notify to send.
    pending_drain: bool,
    /// The last broadcast sequence number seen, to drop the retained value seen again.
    last_broadcast: Option<u64>,
}

#[derive(Debug, Clone)]
struct Connection {
    phase: Phase,
    nonce: [u8; 32],
    relay_nonce: [u8; 32],
    /// When the current phase's deadline started (handshake or closing).
    phase_started: Instant,
    last_rx: Instant,
    ping_sent: bool,
    ping_due: bool,
    pongs_owed: u32,
    highest_tag: u64,
    acked_tag: u64,
    ack_sent: u64,
    close_to_send: Option<CloseCode>,
    error: Option<Error>,
}

impl Connection {
    fn idle() -> Self {
        Connection {
            phase: Phase::Idle,
            nonce: [0; 32],
            relay_nonce: [0; 32],
            phase_started: Instant::ZERO,
            last_rx: Instant::ZERO,
            ping_sent: false,
            ping_due: false,
            pongs_owed: 0,
            highest_tag: 0,
            acked_tag: 0,
            ack_sent: 0,
            close_to_send: None,
            error: None,
        }
    }
}

/// One endpoint's protocol state, across reconnects. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct EndpointSession {
    config: EndpointConfig,
    groups: heapless::Vec<GroupState, MAX_GROUPS>,
    next_seq: u64,
    confirmed: u64,
    /// The highest sequence number the application waits to see confirmed
    /// ([`request_confirm`](EndpointSession::request_confirm)): a `Ping` asks for it whenever
    /// none is out, across frames received and reconnects, until a `Confirm` covers it.
    confirm_wanted: u64,
    /// The highest sequence number the relay can still get (the last publish, unless the
    /// driver dropped it unsent: [`publishes_dropped`](EndpointSession::publishes_dropped)):
    /// confirm requests go no higher, or they would never be answered.
    confirmable: u64,
    relay_max_frame: u32,
    relay_epoch: Option<u64>,
    generation: u32,
    stopping: bool,
    conn: Connection,
    fatal: Option<Error>,
}

impl EndpointSession {
    /// A session that has not connected yet.
    pub fn new(config: EndpointConfig) -> Self {
        let mut groups = heapless::Vec::new();
        for _ in &config.groups {
            let _ = groups.push(GroupState::default());
        }
        EndpointSession {
            config,
            groups,
            next_seq: 1,
            confirmed: 0,
            confirm_wanted: 0,
            confirmable: 0,
            relay_max_frame: DEFAULT_RELAY_MAX_FRAME,
            relay_epoch: None,
            generation: 0,
            stopping: false,
            conn: Connection::idle(),
            fatal: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Where the current connection stands.
    pub fn phase(&self) -> Phase {
        self.conn.phase
    }

    /// Whether objects can flow now.
    pub fn is_open(&self) -> bool {
        self.conn.phase == Phase::Open
    }

    /// Counts connections started; a driver tags received objects with it so that objects of a
    /// lost connection (which the relay requeues) are not handed over twice.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The largest frame [`handle_input`](Self::handle_input) accepts now: the configured
    /// `max_frame`, and before `Welcome` at most
    /// [`RELAY_HANDSHAKE_MAX_FRAME`](frame::RELAY_HANDSHAKE_MAX_FRAME) (a relay that has proved
    /// nothing yet cannot make a driver buffer more). A driver sizes its read buffer by it.
    pub fn receive_limit(&self) -> u32 {
        match self.conn.phase {
            Phase::Open | Phase::Closing => self.config.max_frame,
            _ => self.config.max_frame.min(frame::RELAY_HANDSHAKE_MAX_FRAME),
        }
    }

    /// The largest frame the relay accepts (its default until the first `Welcome`).
    pub fn relay_max_frame(&self) -> u32 {
        self.relay_max_frame
    }

    /// The highest publish sequence number the relay has handled.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// The sequence number the next publish gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Credit granted for `group` and not yet used.
    pub fn outstanding_credit(&self, group: &str) -> Option<u32> {
        self.group_index(group).map(|i| self.groups[i].outstanding)
    }

    /// The error that ended the connection, or the permanent one that ended the session.
    pub fn error(&self) -> Option<&Error> {
        self.fatal.as_ref().or(self.conn.error.as_ref())
    }

    fn check(&self) -> Result<(), Error> {
        match self.error() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn group_index(&self, group: &str) -> Option<usize> {
        self.config.groups.iter().position(|g| g.as_str() == group)
    }

    /// Starts a new connection (the first, or a reconnect) with a fresh nonce from the driver's
    /// random source. Objects of the previous connection that were not handed over count as not
    /// received: their credit is granted again once the relay welcomes this connection.
    pub fn start_connection(&mut self, now: Instant, nonce: [u8; 32]) -> Result<(), Error> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        if self.stopping {
            return Err(Error::Stopped);
        }
        self.connection_lost();
        self.generation = self.generation.wrapping_add(1);
        self.conn = Connection {
            phase: Phase::SendHello,
            nonce,
            phase_started: now,
            last_rx: now,
            ..Connection::idle()
        };
        Ok(())
    }

    /// The transport failed or reached its end. Idempotent.
    pub fn connection_lost(&mut self) {
        for g in self.groups.iter_mut() {
            g.outstanding = g.outstanding.saturating_add(g.unacked);
            g.unacked = 0;
            g.pending_credit = 0;
        }
        if self.conn.phase != Phase::Idle {
            self.conn.phase = Phase::Closed;
        }
    }

    /// Begins a graceful stop: after what was written so far, a `Close` goes to the relay, and
    /// [`Event::Stopped`] arrives when the relay answers. Later publishes are refused.
    pub fn close(&mut self, now: Instant) {
        self.stopping = true;
        // During the handshake nothing is cut short: a `Close` before `Hello` is no valid first
        // frame, and `Welcome` (seeing `stopping`) moves to `Closing` by itself, so the buffered
        // publishes are still confirmed and `Event::Stopped` still arrives.
        if self.conn.phase == Phase::Open {
            self.conn.phase = Phase::Closing;
            self.conn.phase_started = now;
            self.conn.close_to_send = Some(CloseCode::Normal);
        }
    }

    /// The driver stopped reading the transport for a while (backpressure: its local queue was
    /// full) and reads again. Silence while it was not reading is not the relay's fault, so the
    /// keepalive and dead-relay timers count from `now`. A driver that pauses reading does not
    /// call [`handle_timeout`](Self::handle_timeout) while paused.
    pub fn reading_resumed(&mut self, now: Instant) {
        if self.conn.phase == Phase::Open {
            self.conn.last_rx = now;
            self.conn.ping_sent = false;
            self.conn.ping_due = false;
        }
    }

    /// Grants credit for produced objects of `group`: `n > 0` more objects, accumulating;
    /// `n < 0` everything queued right now, without standing credit. Sent with the next
    /// `poll_transmit` (at once if connected, else after the next handshake).
    pub fn notify(&mut self, group: &str, n: i32) -> Result<(), Error> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        let i = self.group_index(group).ok_or(Error::NotMember)?;
        let g = &mut self.groups[i];
        if n > 0 {
            g.outstanding = g.outstanding.saturating_add(n as u32);
            g.pending_credit = g.pending_credit.saturating_add(n as u32);
        } else if n < 0 {
            g.pending_drain = true;
        }
        Ok(())
    }

    /// Records that the produced object with delivery `tag` of `group` was handed to the
    /// application; the acknowledgement goes out (batched) with the next `poll_transmit`.
    pub fn handed_over(&mut self, group: &str, tag: u64) -> Result<(), Error> {
        self.check()?;
        let i = self.group_index(group).ok_or(Error::NotMember)?;
        if tag == 0 || tag > self.conn.highest_tag {
            return Err(Error::AckUnknown {
                tag,
                highest: self.conn.highest_tag,
            });
        }
        let g = &mut self.groups[i];
        g.unacked = g.unacked.saturating_sub(1);
        self.conn.acked_tag = self.conn.acked_tag.max(tag);
        Ok(())
    }

    /// Encodes the header of a publish of `payload_len` bytes into `out` and assigns it the next
    /// sequence number; the caller appends the payload (`out[n..n + payload_len]`) and keeps the
    /// whole frame until [`Event::Confirmed`] covers its sequence number. Works while
    /// disconnected. Returns `(seq, header_len)`.
    pub fn publish_header(
        &mut self,
        kind: PublishKind,
        groups: &[&str],
        payload_len: usize,
        out: &mut [u8],
    ) -> Result<(u64, usize), Error> {
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        if self.stopping {
            return Err(Error::Stopped);
        }
        if groups.is_empty() {
            return Err(Error::NoGroup);
        }
        let mut list = GroupList::new();
        for g in groups {
            frame::check_group_name(g).map_err(|_| Error::BadGroupName)?;
            // Naming a group twice means it once: each member gets the object once.
            if !list.contains(g) {
                list.push(g).map_err(|_| Error::TooManyGroups)?;
            }
        }
        let seq = self.next_seq;
        let frame = Frame::Publish(Publish {
            seq,
            kind,
            groups: list,
            payload: &[],
        });
        let size = (frame.encoded_len() + payload_len) as u64;
        if size > u64::from(self.relay_max_frame) {
            return Err(Error::PayloadTooLarge {
                size,
                max: self.relay_max_frame,
            });
        }
        let n = frame.encode_header(payload_len, out)?;
        self.confirmable = self.next_seq;
        self.next_seq += 1;
        Ok((seq, n))
    }

    /// Encodes a whole publish (header and payload) into `out`. Returns `(seq, frame_len)`.
    pub fn publish(
        &mut self,
        kind: PublishKind,
        groups: &[&str],
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(u64, usize), Error> {
        // Check the room first so that a failure does not use up a sequence number.
        let needed = Frame::Publish(Publish {
            seq: self.next_seq,
            kind,
            groups: GroupList::new(),
            payload,
        })
        .encoded_len()
            + groups.iter().map(|g| g.len() + 1).sum::<usize>();
        if out.len() < needed {
            return Err(Error::Frame(FrameError::BufferTooSmall { needed }));
        }
        let (seq, n) = self.publish_header(kind, groups, payload.len(), out)?;
        out[n..n + payload.len()].copy_from_slice(payload);
        Ok((seq, n + payload.len()))
    }

    /// Handles received bytes: consumes at most one whole frame from the front of `buf`. Call it
    /// when bytes arrived (with what is buffered), and again while it consumes frames: any call
    /// counts as a sign of life from the relay.
    pub fn handle_input<'b>(&mut self, now: Instant, buf: &'b [u8]) -> Result<Input<'b>, Error> {
        self.check()?;
        if matches!(self.conn.phase, Phase::Idle | Phase::Closed) {
            return Err(Error::NotConnected);
        }
        // Bytes of a frame still arriving are a sign of life: a large delivery on a slow link
        // must not make the relay look dead (it cannot answer a `Ping` in the middle of a
        // frame).
        if !buf.is_empty() && matches!(self.conn.phase, Phase::Open | Phase::Closing) {
            self.conn.last_rx = now;
        }
        let len = match frame::frame_len(buf, self.receive_limit()) {
            Ok(None) => return Ok(Input::NeedMore),
            Ok(Some(len)) => len,
            Err(e) => return Err(self.fail_with(Error::Frame(e))),
        };
        let frame = match frame::decode(&buf[..len]) {
            Ok(f) => f,
            Err(e) => return Err(self.fail_with(Error::Frame(e))),
        };
        self.conn.last_rx = now;
        self.conn.ping_sent = false;
        self.conn.ping_due = false;
        let event = self.handle_frame(now, frame)?;
        Ok(Input::Frame {
            consumed: len,
            event,
        })
    }

    /// Ends the connection with `error`, telling the relay why when the error is the relay's
    /// fault.
    fn fail_with(&mut self, error: Error) -> Error {
        let code = match &error {
            Error::Frame(FrameError::TooLarge { .. }) => Some(CloseCode::FrameTooLarge),
            Error::Frame(_)
            | Error::Unexpected(_)
            | Error::AckUnknown { .. }
            | Error::RelayAhead { .. }
            | Error::SessionReused { .. } => Some(CloseCode::ProtocolViolation),
            _ => None,
        };
        if code.is_some() && !matches!(self.conn.phase, Phase::Closed | Phase::Idle) {
            self.conn.close_to_send = code;
        }
        self.conn.phase = Phase::Closed;
        if error.is_permanent() {
            self.fatal = Some(error.clone());
        } else {
            self.conn.error = Some(error.clone());
        }
        error
    }

    fn handle_frame<'b>(
        &mut self,
        now: Instant,
        frame: Frame<'b>,
    ) -> Result<Option<Event<'b>>, Error> {
        let phase = self.conn.phase;
        match frame {
            Frame::Close(Close { code, detail }) => {
                let detail = short_detail(detail);
                if phase == Phase::Closing && code == CloseCode::Normal {
                    self.conn.phase = Phase::Closed;
                    return Ok(Some(Event::Stopped));
                }
                let error = if code.is_permanent() {
                    Error::Rejected(code, detail)
                } else {
                    Error::Closed(code, detail)
                };
                self.conn.close_to_send = None;
                Err(self.fail_with(error))
            }
            Frame::Challenge(c) if phase == Phase::AwaitChallenge => {
                self.conn.relay_nonce = c.nonce;
                self.conn.phase = Phase::SendProof;
                Ok(None)
            }
            Frame::Welcome(w) if phase == Phase::AwaitWelcome => {
                if !self.verify_relay(&w.mac) {
                    return Err(self.fail_with(Error::RelayProofInvalid));
                }
                // Like a `Confirm` beyond what was sent: taking it would count kept publishes
                // as confirmed, and the relay would drop later ones up to it as resends.
                // Before its first `Welcome` a session has sent the relay nothing at all.
                if self.relay_epoch.is_none() && w.last_seq > 0 {
                    return Err(self.fail_with(Error::SessionReused {
                        last_seq: w.last_seq,
                    }));
                }
                if w.last_seq >= self.next_seq {
                    return Err(self.fail_with(Error::RelayAhead {
                        last_seq: w.last_seq,
                        next_seq: self.next_seq,
                    }));
                }
                // A different epoch is a restarted relay: its broadcast numbers start again.
                if self.relay_epoch != Some(w.epoch) {
                    if self.relay_epoch.is_some() {
                        for g in self.groups.iter_mut() {
                            g.last_broadcast = None;
                        }
                    }
                    self.relay_epoch = Some(w.epoch);
                }
                self.relay_max_frame = w.max_frame;
                self.confirmed = self.confirmed.max(w.last_seq);
                for g in self.groups.iter_mut() {
                    g.pending_credit = g.outstanding;
                }
                self.conn.phase = if self.stopping {
                    Phase::Closing
                } else {
                    Phase::Open
                };
                if self.stopping {
                    self.conn.phase_started = now;
                    self.conn.close_to_send = Some(CloseCode::Normal);
                }
                Ok(Some(Event::Connected {
                    last_seq: w.last_seq,
                }))
            }
            Frame::Ping if matches!(phase, Phase::Open | Phase::Closing) => {
                self.conn.pongs_owed += 1;
                Ok(None)
            }
            Frame::Pong if matches!(phase, Phase::Open | Phase::Closing) => Ok(None),
            Frame::Deliver(d) if matches!(phase, Phase::Open | Phase::Closing) => {
                let Some(i) = self.group_index(d.group) else {
                    return Err(self.fail_with(Error::Unexpected(Kind::Deliver)));
                };
                match d.delivery {
                    Delivery::Broadcast { seq } => {
                        let g = &mut self.groups[i];
                        if g.last_broadcast.is_some_and(|last| seq <= last) {
                            return Ok(None);
                        }
                        g.last_broadcast = Some(seq);
                    }
                    Delivery::Produced { tag } => {
                        if tag != self.conn.highest_tag + 1 {
                            return Err(self.fail_with(Error::Unexpected(Kind::Deliver)));
                        }
                        self.conn.highest_tag = tag;
                        let g = &mut self.groups[i];
                        g.outstanding = g.outstanding.saturating_sub(1);
                        g.unacked += 1;
                    }
                }
                Ok(Some(Event::Delivered {
                    group: d.group,
                    delivery: d.delivery,
                    payload: d.payload,
                }))
            }
            Frame::Confirm(c) if matches!(phase, Phase::Open | Phase::Closing) => {
                if c.up_to >= self.next_seq {
                    return Err(self.fail_with(Error::Unexpected(Kind::Confirm)));
                }
                self.confirmed = self.confirmed.max(c.up_to);
                Ok(Some(Event::Confirmed { up_to: c.up_to }))
            }
            Frame::PublishRejected(r) if matches!(phase, Phase::Open | Phase::Closing) => {
                Ok(Some(Event::Rejected {
                    seq: r.seq,
                    group: r.group,
                    reason: r.reason,
                }))
            }
            Frame::Skipped(s) if matches!(phase, Phase::Open | Phase::Closing) => {
                if let Some(i) = self.group_index(s.group) {
                    let g = &mut self.groups[i];
                    g.last_broadcast = Some(g.last_broadcast.map_or(s.seq, |l| l.max(s.seq)));
                }
                Ok(Some(Event::Skipped {
                    group: s.group,
                    seq: s.seq,
                    size: s.size,
                }))
            }
            other => Err(self.fail_with(Error::Unexpected(other.kind()))),
        }
    }

    fn verify_relay(&self, mac: &[u8; 32]) -> bool {
        let names: heapless::Vec<&str, MAX_GROUPS> =
            self.config.groups.iter().map(|g| g.as_str()).collect();
        self.config
            .key
            .verify(Role::Relay, &self.transcript(&names), mac)
    }

    fn transcript<'a>(&'a self, groups: &'a [&'a str]) -> Transcript<'a> {
        Transcript {
            version: PROTOCOL_VERSION,
            endpoint_nonce: &self.conn.nonce,
            relay_nonce: &self.conn.relay_nonce,
            session: &self.config.session,
            groups,
        }
    }

    /// Writes pending control frames into `out` (as many as fit, so they leave in one write).
    /// `Ok(0)` when there is nothing to send.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        let mut written = 0;
        // Each step encodes one frame and commits the state change only once it fits.
        loop {
            let room = &mut out[written..];
            let step = self.next_control(room);
            match step {
                Ok(Some(n)) => written += n,
                Ok(None) => return Ok(written),
                Err(FrameError::BufferTooSmall { .. }) if written > 0 => return Ok(written),
                Err(e) => return Err(Error::Frame(e)),
            }
        }
    }

    fn next_control(&mut self, out: &mut [u8]) -> Result<Option<usize>, FrameError> {
        if let Some(code) = self.conn.close_to_send {
            // A graceful close leaves after the acknowledgements still owed: an object handed
            // over just before `close` must not be redelivered to someone else.
            if code == CloseCode::Normal
                && self.conn.phase == Phase::Closing
                && self.error().is_none()
                && let Some(n) = self.common_control(out)?
            {
                return Ok(Some(n));
            }
            let n = Frame::Close(Close { code, detail: "" }).encode(out)?;
            self.conn.close_to_send = None;
            return Ok(Some(n));
        }
        if self.fatal.is_some() || self.conn.error.is_some() {
            return Ok(None);
        }
        match self.conn.phase {
            Phase::SendHello => {
                let groups: GroupList<'_> = self.config.groups.iter().map(|g| g.as_str()).collect();
                let n = Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    nonce: self.conn.nonce,
                    session: self.config.session,
                    max_frame: self.config.max_frame,
                    keepalive_ms: self.config.keepalive.as_millis().min(u32::MAX as u128) as u32,
                    groups,
                })
                .encode(out)?;
                self.conn.phase = Phase::AwaitChallenge;
                Ok(Some(n))
            }
            Phase::SendProof => {
                let names: heapless::Vec<&str, MAX_GROUPS> =
                    self.config.groups.iter().map(|g| g.as_str()).collect();
                let mac = self
                    .config
                    .key
                    .proof(Role::Endpoint, &self.transcript(&names));
                let n = Frame::Proof(Proof { mac }).encode(out)?;
                self.conn.phase = Phase::AwaitWelcome;
                Ok(Some(n))
            }
            Phase::Open => {
                for (i, g) in self.groups.iter_mut().enumerate() {
                    let group = self.config.groups[i].as_str();
                    if g.pending_credit > 0 {
                        let credit = g.pending_credit.min(i32::MAX as u32);
                        let n = Frame::Notify(Notify {
                            group,
                            credit: credit as i32,
                        })
                        .encode(out)?;
                        g.pending_credit -= credit;
                        return Ok(Some(n));
                    }
                    if g.pending_drain {
                        let n = Frame::Notify(Notify { group, credit: -1 }).encode(out)?;
                        g.pending_drain = false;
                        return Ok(Some(n));
                    }
                }
                if let Some(n) = self.common_control(out)? {
                    return Ok(Some(n));
                }
                // Asked for a confirm the relay may hold back (never after a `Close`: a closing
                // relay confirms everything before its answer).
                if self.confirm_ping_pending() {
                    let n = Frame::Ping.encode(out)?;
                    self.conn.ping_sent = true;
                    self.conn.ping_due = false;
                    return Ok(Some(n));
                }
                Ok(None)
            }
            // `Closing` without a `Close` to send: it has left, as the last frame (the relay
            // reads nothing after it; what was owed went before it, above).
            _ => Ok(None),
        }
    }

    fn common_control(&mut self, out: &mut [u8]) -> Result<Option<usize>, FrameError> {
        if self.conn.acked_tag > self.conn.ack_sent {
            let up_to = self.conn.acked_tag;
            let n = Frame::Ack(Ack { up_to }).encode(out)?;
            self.conn.ack_sent = up_to;
            return Ok(Some(n));
        }
        if self.conn.pongs_owed > 0 {
            let n = Frame::Pong.encode(out)?;
            self.conn.pongs_owed -= 1;
            return Ok(Some(n));
        }
        if self.conn.ping_sent_pending() {
            let n = Frame::Ping.encode(out)?;
            self.conn.ping_sent = true;
            self.conn.ping_due = false;
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error().is_some() {
            return None;
        }
        let c = &self.conn;
        match c.phase {
            Phase::SendHello
            | Phase::AwaitChallenge
            | Phase::SendProof
            | Phase::AwaitWelcome
            | Phase::Closing => Some(c.phase_started + self.config.handshake_timeout),
            Phase::Open => {
                let dead = c.last_rx + self.config.dead_after;
                if c.ping_sent || c.ping_due {
                    Some(dead)
                } else {
                    Some(dead.min(c.last_rx + self.config.keepalive))
                }
            }
            Phase::Idle | Phase::Closed => None,
        }
    }

    /// Asks the relay to confirm now what it has handled, instead of within its confirm delay
    /// (PROTOCOL.md §9.6): a `Ping`, whose `Pong` the deferred `Confirm` travels with. For a
    /// driver whose application waits for a confirm (a receipt, a stop, a full outbox). Does
    /// nothing when everything is confirmed.
    ///
    /// The request holds until a `Confirm` covers everything published before it: a `Ping` goes
    /// (in `Open` only, one unanswered at a time) until then. A frame received in the meantime
    /// (one that crossed the `Ping`, or the `Pong` of a keepalive `Ping` that left before the
    /// publish), a reconnect, or a request made while no `Ping` could go does not cancel it.
    pub fn request_confirm(&mut self) {
        self.request_confirm_up_to(self.confirmable);
    }

    /// [`request_confirm`](Self::request_confirm) for the publishes up to `seq` only (one
    /// receipt): nothing when they are confirmed already, even if later ones are not.
    pub fn request_confirm_up_to(&mut self, seq: u64) {
        let seq = seq.min(self.confirmable);
        if seq > self.confirmed {
            self.confirm_wanted = self.confirm_wanted.max(seq);
        }
    }

    /// The driver dropped kept publishes it will never send (after a reconnect they no longer
    /// fit [`relay_max_frame`](Self::relay_max_frame)); `highest_kept` is the highest sequence
    /// number it still keeps (0: none). A confirm request above it no longer holds: the relay
    /// cannot confirm what it never got, and asking for it would ping after every `Pong`.
    pub fn publishes_dropped(&mut self, highest_kept: u64) {
        self.confirmable = highest_kept.max(self.confirmed);
        self.confirm_wanted = self.confirm_wanted.min(self.confirmable);
    }

    fn confirm_ping_pending(&self) -> bool {
        self.confirm_wanted > self.confirmed && !self.conn.ping_sent
    }

    /// Advances timers: handshake deadline, keepalive ping, dead relay. Extra calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.error().is_some() {
            return;
        }
        let c = &self.conn;
        match c.phase {
            Phase::SendHello | Phase::AwaitChallenge | Phase::SendProof | Phase::AwaitWelcome => {
                if now >= c.phase_started + self.config.handshake_timeout {
                    self.fail_with(Error::HandshakeTimeout);
                }
            }
            Phase::Closing => {
                if now >= c.phase_started + self.config.handshake_timeout {
                    self.fail_with(Error::RelaySilent);
                }
            }
            Phase::Open => {
                if now >= c.last_rx + self.config.dead_after {
                    self.fail_with(Error::RelaySilent);
                } else if now >= c.last_rx + self.config.keepalive && !c.ping_sent {
                    self.conn.ping_due = true;
                }
            }
            Phase::Idle | Phase::Closed => {}
        }
    }
}

impl Connection {
    fn ping_sent_pending(&self) -> bool {
        self.ping_due && !self.ping_sent
    }
}

fn short_detail(detail: &str) -> Detail {
    let mut out = Detail::new();
    for ch in detail.chars() {
        if out.push(ch).is_err() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests;
