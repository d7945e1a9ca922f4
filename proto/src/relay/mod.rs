//! The relay's group logic over many connections, without I/O (feature `alloc`).
//!
//! [`RelayState`] plays the part of quinn-proto's `Endpoint`: the driver accepts a connection
//! ([`RelayState::accept`]), feeds its bytes ([`RelayState::handle_input`]), writes what
//! [`RelayState::poll_transmit`] hands out for the connections [`RelayState::poll_dirty`] names,
//! reports what the socket took ([`RelayState::handle_written`]), acts on
//! [`RelayState::poll_event`] (log lines, closing sockets), calls
//! [`RelayState::handle_timeout`] now and then and [`RelayState::handle_confirm_timeout`] when
//! [`RelayState::poll_confirm_timeout`] says. Every rule lives here:
//!
//! - **handshake**: `Hello` → `Challenge` → `Proof` → `Welcome` (or `Close` with a reason);
//!   nothing else is accepted before `Welcome`; a deadline applies;
//! - **membership** is fixed at connect; joining delivers each group's retained broadcast;
//! - **broadcast** fans out to every member (the sender too, when it is one) with a per-group
//!   sequence number, encoded once and shared; the last one is retained; a member whose
//!   `max_frame` is too small gets a `Skipped` notice instead;
//! - **produce** appends to the group's FIFO (bounded, with an [`Overflow`] policy); objects go
//!   to members with credit, in the order credit was granted; `Notify` with negative credit takes
//!   everything queued now; an object too large for a consumer waits for one that can take it;
//! - **acknowledgements**: each produced delivery has a per-connection tag; `Ack` is cumulative;
//!   what a closing connection had not acknowledged goes back to the front of its queue;
//! - **producer confirms**: every `Publish` is confirmed, cumulatively. A batch of input with
//!   two or more publishes is confirmed at once; the `Confirm` of a publish that came alone waits
//!   (up to `confirm_delay`) for other output to the same endpoint and goes with it, so a
//!   request and its answer cost one write each way, not two; a resend of a sequence number the
//!   session already handled is dropped and confirmed again;
//! - **slow consumers**: a connection whose waiting output exceeds `outbound_limit` is closed;
//! - **keepalive**: `Ping` is answered; a connection silent for `idle_intervals` of its stated
//!   keepalive is closed, and so is one whose frame still arriving after that long has come at
//!   less than `min_frame_rate` on average (a peer only pretending to send).

mod config;
mod shared;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

pub use config::{
    DEFAULT_MAX_OBJECT, GroupLimits, MAX_CONFIRM_DELAY, MIN_KEEPALIVE, Overflow, RelayConfig,
};
pub use shared::SharedBytes;

use crate::auth::{Role, Transcript};
use crate::frame::{
    self, Challenge, Close, CloseCode, Confirm, Deliver, Delivery, Frame, FrameError, Publish,
    PublishKind, PublishRejected, RejectReason, Skipped, Welcome,
};
use crate::{Instant, PROTOCOL_VERSION};

/// Identifies one connection of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Bytes for one connection's socket. Broadcast frames and produced payloads are shared
/// between connections rather than copied.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes for this connection only.
    Owned(Vec<u8>),
    /// Bytes shared with other connections (a broadcast frame, a produced payload).
    Shared(SharedBytes),
}

impl core::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
        }
    }
}

/// What the driver must know about (log it; close sockets on `Closing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// An endpoint proved the password and joined its groups.
    Authenticated {
        /// The connection.
        conn: ConnId,
        /// The endpoint's session id.
        session: [u8; 16],
        /// The groups it joined.
        groups: Vec<String>,
        /// Whether this session was seen before (a reconnect).
        resumed: bool,
    },
    /// The connection ends: write what `poll_transmit` still has for it (the last chunk is the
    /// `Close` frame), then close the socket and call [`RelayState::connection_lost`].
    Closing {
        /// The connection.
        conn: ConnId,
        /// Why.
        code: CloseCode,
        /// Details for the log (from the endpoint when `by_endpoint`: untrusted text).
        detail: String,
        /// The endpoint asked to close (and gave `code` and `detail`).
        by_endpoint: bool,
    },
}

/// Counters for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Handshakes that failed (wrong password, refused groups, …).
    pub auth_failures: u64,
    /// Objects broadcast (counted once per broadcast).
    pub broadcasts: u64,
    /// Objects produced and queued.
    pub produced: u64,
    /// Produced objects dropped by a `DropOldest` queue.
    pub dropped_oldest: u64,
    /// Publishes rejected for a group.
    pub rejected: u64,
    /// Broadcasts skipped for a member because they exceed its `max_frame`.
    pub skipped: u64,
    /// Produced objects put back in line because their consumer left before acknowledging.
    pub redelivered: u64,
    /// Resent publishes recognised and dropped.
    pub duplicates: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
}

#[derive(Debug)]
enum Phase {
    AwaitHello,
    AwaitProof(Box<HelloInfo>),
    Open,
    Closed,
}

#[derive(Debug)]
struct HelloInfo {
    nonce: [u8; 32],
    session: [u8; 16],
    groups: Vec<String>,
}

#[derive(Debug)]
struct InFlight {
    tag: u64,
    group: Arc<str>,
    payload: SharedBytes,
}

/// Frames up to this size are copied into the receiving connection's output buffer (cheaper
/// than sharing, and many of them leave in one write); larger ones are shared.
const SMALL_FRAME: usize = 2048;

/// The largest header of a `Deliver` frame: length prefix, kind, group name with its length,
/// delivery kind and a sequence number or tag.
const DELIVER_HEAD_MAX: usize = frame::PREFIX_LEN + 1 + crate::MAX_GROUP_NAME + 1 + 1 + 10;

/// An output buffer grows to this size before a new one is started.
const OUTPUT_BUFFER: usize = 16 * 1024;

/// Output for one connection: whole frames, so that the slow-consumer rule never cuts one.
enum Out<'a> {
    /// One or more whole frames.
    Bytes(&'a [u8]),
    /// A frame's header and its payload: a small payload is copied after the header, a large
    /// one shared (its chunk then always follows the chunk that ends with its header).
    Frame {
        head: &'a [u8],
        payload: &'a SharedBytes,
    },
}

/// The connections, with what output needs: which have output waiting (`dirty`), which went
/// over their backlog limit (`slow`), and that limit. Kept apart from the groups so that a group
/// can be read while its members' output is queued.
#[derive(Debug)]
struct Conns {
    map: BTreeMap<ConnId, Conn>,
    dirty: VecDeque<ConnId>,
    /// Connections found over their backlog limit, closed once the current input is handled
    /// (closing them at once would change groups while they are being iterated).
    slow: Vec<ConnId>,
    outbound_limit: usize,
}

impl core::ops::Deref for Conns {
    type Target = BTreeMap<ConnId, Conn>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl core::ops::DerefMut for Conns {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Conns {
    /// Lists `conn` for [`RelayState::poll_dirty`].
    fn mark_dirty(&mut self, conn: ConnId) {
        if let Some(c) = self.map.get_mut(&conn)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push_back(conn);
        }
    }

    /// Queues output for `conn`. A connection whose backlog is already over the limit gets
    /// nothing more and is listed in `slow`.
    fn queue(&mut self, conn: ConnId, out: Out<'_>) {
        let Some(c) = self.map.get_mut(&conn) else {
            return;
        };
        if matches!(c.phase, Phase::Closed) || c.slow {
            return;
        }
        if c.backlog > self.outbound_limit {
            c.slow = true;
            self.slow.push(conn);
            return;
        }
        match out {
            Out::Bytes(bytes) => append(c, &[bytes]),
            Out::Frame { head, payload } if payload.len() <= SMALL_FRAME => {
                append(c, &[head, payload])
            }
            Out::Frame { head, payload } => {
                append(c, &[head]);
                c.backlog += payload.len();
                c.out.push_back(Chunk::Shared(payload.clone()));
            }
        }
        self.mark_dirty(conn);
    }
}

/// Appends the pieces of whole frames (or of a header whose shared payload follows) to a
/// connection's output, all in its last buffer when there is room, else all in a new one: a
/// buffer never ends inside a frame except just before a shared payload, so the slow-consumer
/// drop can cut between buffers.
fn append(c: &mut Conn, pieces: &[&[u8]]) {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    c.backlog += len;
    let fits = matches!(c.out.back(), Some(Chunk::Owned(buf)) if buf.len() + len <= OUTPUT_BUFFER);
    if !fits {
        c.out
            .push_back(Chunk::Owned(Vec::with_capacity(len.max(OUTPUT_BUFFER))));
    }
    if let Some(Chunk::Owned(buf)) = c.out.back_mut() {
        for piece in pieces {
            buf.extend_from_slice(piece);
        }
    }
}

impl Conns {
    /// Queues a broadcast frame for one member, or a `Skipped` notice when the frame exceeds
    /// the member's `max_frame`.
    fn broadcast(
        &mut self,
        stats: &mut RelayStats,
        conn: ConnId,
        group: &str,
        seq: u64,
        frame: &Retained,
    ) {
        let Some(max) = self.map.get(&conn).map(|c| c.max_frame as usize) else {
            return;
        };
        let len = frame.len();
        if len <= max {
            match frame {
                Retained::Small(bytes) => self.queue(conn, Out::Bytes(bytes)),
                Retained::Shared { head, payload } => {
                    self.queue(conn, Out::Frame { head, payload })
                }
            }
            return;
        }
        stats.skipped += 1;
        let size = u32::try_from(len).unwrap_or(u32::MAX);
        let notice = Frame::Skipped(Skipped { group, seq, size });
        let mut buf = [0u8; 128];
        let n = notice.encode(&mut buf).expect("a Skipped frame is small");
        self.queue(conn, Out::Bytes(&buf[..n]));
    }
}

/// A broadcast frame (the retained one of a group): a small one whole, in a buffer the group
/// reuses; a large one as its header and the payload shared by every member.
#[derive(Debug)]
enum Retained {
    Small(Vec<u8>),
    Shared { head: Vec<u8>, payload: SharedBytes },
}

impl Retained {
    fn len(&self) -> usize {
        match self {
            Retained::Small(bytes) => bytes.len(),
            Retained::Shared { head, payload } => head.len() + payload.len(),
        }
    }
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    relay_nonce: [u8; 32],
    accepted_at: Instant,
    last_rx: Instant,
    session: [u8; 16],
    groups: Vec<String>,
    max_frame: u32,
    keepalive: Duration,
    out: VecDeque<Chunk>,
    /// Bytes queued in `out` plus bytes handed to the driver and not yet reported written.
    backlog: usize,
    dirty: bool,
    next_tag: u64,
    in_flight: VecDeque<InFlight>,
    /// The highest publish handled and not yet confirmed.
    confirm: Option<u64>,
    /// Publishes handled since the last `Confirm` (saturating).
    unconfirmed: u32,
    /// When the `Confirm` waiting for other output must go anyway (listed in `confirm_due`).
    confirm_due: Option<Instant>,
    /// When the first byte of the frame still arriving came (none arriving: `None`).
    partial_since: Option<Instant>,
    /// Bytes of that frame received so far.
    partial_bytes: usize,
    /// A ping went out since the endpoint was last heard.
    ping_sent: bool,
    /// Over its backlog limit: closing as a slow consumer.
    slow: bool,
    /// Has credit but its backlog is over the dispatch window: resumed by `handle_written`.
    paused: bool,
}

impl Conn {
    /// No `Confirm` is pending any more (sent, or never to be sent).
    fn forget_confirm(&mut self) {
        self.confirm = None;
        self.unconfirmed = 0;
        // A listed deadline is stale from now on.
        self.confirm_due = None;
    }
}

#[derive(Debug)]
struct Group {
    name: Arc<str>,
    members: Vec<ConnId>,
    next_seq: u64,
    /// The last broadcast, with its sequence number.
    retained: Option<(u64, Retained)>,
    queue: VecDeque<SharedBytes>,
    /// Credit in the order it was granted: (connection, objects still wanted).
    grants: VecDeque<(ConnId, u32)>,
}

#[derive(Debug)]
struct SessionRecord {
    last_seq: u64,
    conn: Option<ConnId>,
    /// When the session was last seen: its last connection's start or end (a tick).
    last_seen: u64,
}

/// The relay's state over all connections and groups. See the [module docs](self).
#[derive(Debug)]
pub struct RelayState {
    config: RelayConfig,
    conns: Conns,
    groups: BTreeMap<String, Group>,
    sessions: BTreeMap<[u8; 16], SessionRecord>,
    next_conn: u64,
    tick: u64,
    events: VecDeque<RelayEvent>,
    stats: RelayStats,
    /// Reused to encode frames before they are copied or shared.
    scratch: Vec<u8>,
    /// Deferred confirms in the order they fall due (all wait the same delay). An entry whose
    /// connection sent its `Confirm` since, or deferred a newer one, is stale and skipped.
    confirm_due: VecDeque<(Instant, ConnId)>,
}

impl RelayState {
    /// A relay with no connections and no groups.
    pub fn new(config: RelayConfig) -> Self {
        let outbound_limit = config.outbound_limit;
        RelayState {
            config,
            conns: Conns {
                map: BTreeMap::new(),
                dirty: VecDeque::new(),
                slow: Vec::new(),
                outbound_limit,
            },
            groups: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_conn: 1,
            tick: 0,
            events: VecDeque::new(),
            stats: RelayStats::default(),
            scratch: Vec::new(),
            confirm_due: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Connections known (in any phase).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Members of `group` now.
    pub fn member_count(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.members.len())
    }

    /// Produced objects waiting in `group`'s queue.
    pub fn queue_len(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.queue.len())
    }

    /// A new connection; `nonce` is fresh randomness from the driver for its `Challenge`.
    /// When the relay is full the connection is closed at once with `TooManyConnections`.
    pub fn accept(&mut self, now: Instant, nonce: [u8; 32]) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.stats.accepted += 1;
        let full = self.conns.len() >= self.config.max_connections;
        self.conns.insert(
            id,
            Conn {
                phase: Phase::AwaitHello,
                relay_nonce: nonce,
                accepted_at: now,
                last_rx: now,
                session: [0; 16],
                groups: Vec::new(),
                max_frame: frame::MIN_MAX_FRAME,
                keepalive: Duration::from_secs(5),
                out: VecDeque::new(),
                backlog: 0,
                dirty: false,
                next_tag: 1,
                in_flight: VecDeque::new(),
                confirm: None,
                unconfirmed: 0,
                confirm_due: None,
                partial_since: None,
                partial_bytes: 0,
                ping_sent: false,
                slow: false,
                paused: false,
            },
        );
        if full {
            self.close(id, CloseCode::TooManyConnections, "");
        }
        id
    }

    /// Handles bytes received on `conn`: consumes every whole frame at the front of `buf` and
    /// returns how many bytes that was (the rest is a partial frame: keep it and append). After
    /// an error the connection is closing (see [`RelayEvent::Closing`]) and everything is
    /// reported consumed. Call it when bytes arrived: any call counts as a sign of life.
    pub fn handle_input(&mut self, now: Instant, conn: ConnId, buf: &[u8]) -> usize {
        self.input(now, conn, buf, None)
    }

    /// [`handle_input`](Self::handle_input) for input the driver can hand over shared: a large
    /// published payload is then shared as a range of `buf` instead of being copied out of it
    /// (only when it is most of `buf`, so that a small object never keeps a large buffer
    /// alive). Hand over a buffer that holds one large frame, as assembled from several reads.
    pub fn handle_input_shared(&mut self, now: Instant, conn: ConnId, buf: &SharedBytes) -> usize {
        self.input(now, conn, buf, Some(buf))
    }

    /// More bytes of a frame still arriving were received on `conn`, `so_far` of it in all, and
    /// the driver keeps them itself until the frame is whole (then
    /// [`handle_input_shared`](Self::handle_input_shared) or
    /// [`handle_input`](Self::handle_input)): a sign of life, as any input is.
    pub fn input_progress(&mut self, now: Instant, conn: ConnId, so_far: usize) {
        self.seen_alive(now, conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.partial_since.get_or_insert(now);
            c.partial_bytes = so_far;
        }
    }

    fn seen_alive(&mut self, now: Instant, conn: ConnId) {
        // Bytes of a frame still arriving are a sign of life too: a large object on a slow link
        // must not look like silence (the endpoint cannot answer a `Ping` in the middle of a
        // frame); the minimum frame rate deals with a peer that only pretends to send one.
        // Before `Welcome` only the handshake deadline counts.
        if let Some(c) = self.conns.get_mut(&conn)
            && matches!(c.phase, Phase::Open)
        {
            c.last_rx = now;
        }
    }

    fn input(
        &mut self,
        now: Instant,
        conn: ConnId,
        buf: &[u8],
        source: Option<&SharedBytes>,
    ) -> usize {
        if !buf.is_empty() {
            self.seen_alive(now, conn);
        }
        let mut consumed = 0;
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return buf.len();
            };
            if matches!(c.phase, Phase::Closed) {
                return buf.len();
            }
            // Before the handshake is over the endpoint has proved nothing: keep its frames small.
            let limit = match c.phase {
                Phase::Open => self.config.max_frame,
                _ => frame::HANDSHAKE_MAX_FRAME,
            };
            let rest = &buf[consumed..];
            let len = match frame::frame_len(rest, limit) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    self.protocol_error(conn, e);
                    return buf.len();
                }
            };
            c.last_rx = now;
            c.ping_sent = false;
            match frame::decode(&rest[..len]) {
                Ok(f) => self.handle_frame(now, conn, f, source),
                Err(e) => {
                    self.protocol_error(conn, e);
                    return buf.len();
                }
            }
            consumed += len;
            // A connection this frame put past its backlog limit is closed now, as a slow
            // consumer: a later frame of the batch (its own `Close`, a malformed one) must not
            // close it otherwise, confirming a publish whose `PublishRejected` was refused at the
            // limit, and leaving it listed to have that `Close` dropped afterwards.
            self.close_slow_consumers();
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            // The rest is the start of the next frame; a new frame when one ended here.
            let rest = buf.len() - consumed;
            if rest == 0 {
                c.partial_since = None;
            } else if consumed > 0 || c.partial_since.is_none() {
                c.partial_since = Some(now);
            }
            c.partial_bytes = rest;
        }
        self.settle_confirm(now, conn);
        self.close_slow_consumers();
        consumed
    }

    fn protocol_error(&mut self, conn: ConnId, e: FrameError) {
        let code = match e {
            FrameError::TooLarge { .. } => CloseCode::FrameTooLarge,
            _ => CloseCode::ProtocolViolation,
        };
        self.close(conn, code, &e.to_string());
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        f: Frame<'_>,
        source: Option<&SharedBytes>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match (&c.phase, f) {
            (Phase::AwaitHello, Frame::Hello(h)) => {
                if h.version != PROTOCOL_VERSION {
                    let detail = alloc::format!(
                        "endpoint speaks version {}, relay speaks {}",
                        h.version,
                        PROTOCOL_VERSION
                    );
                    self.stats.auth_failures += 1;
                    self.close(conn, CloseCode::UnsupportedVersion, &detail);
                    return;
                }
                if h.max_frame < frame::MIN_MAX_FRAME {
                    let detail = alloc::format!(
                        "max_frame {} is below the minimum of {}",
                        h.max_frame,
                        frame::MIN_MAX_FRAME
                    );
                    self.close(conn, CloseCode::ProtocolViolation, &detail);
                    return;
                }
                c.max_frame = h.max_frame;
                // Honoured between 100 ms and `max_keepalive`: a peer stating a huge interval
                // would otherwise never be idle (the relay pings it at the cap instead, and a
                // live endpoint answers).
                c.keepalive = Duration::from_millis(u64::from(h.keepalive_ms))
                    .max(MIN_KEEPALIVE)
                    .min(self.config.max_keepalive.max(MIN_KEEPALIVE));
                let nonce = c.relay_nonce;
                c.phase = Phase::AwaitProof(Box::new(HelloInfo {
                    nonce: h.nonce,
                    session: h.session,
                    groups: h.groups.iter().map(|g| g.to_string()).collect(),
                }));
                self.send(conn, Frame::Challenge(Challenge { nonce }));
            }
            (Phase::AwaitProof(_), Frame::Proof(p)) => {
                let Phase::AwaitProof(hello) = core::mem::replace(&mut c.phase, Phase::AwaitHello)
                else {
                    unreachable!()
                };
                self.finish_handshake(now, conn, *hello, &p.mac);
            }
            (Phase::Open, Frame::Publish(p)) => self.publish(conn, p, source),
            (Phase::Open, Frame::Notify(n)) => {
                if !c.groups.iter().any(|g| g == n.group) {
                    let detail = alloc::format!(
                        "notify for group {:?}, which this endpoint has not joined",
                        n.group
                    );
                    self.close(conn, CloseCode::ProtocolViolation, &detail);
                    return;
                }
                let group = n.group.to_string();
                self.grant(conn, &group, n.credit);
            }
            (Phase::Open, Frame::Ack(a)) => {
                if a.up_to >= c.next_tag {
                    let detail = alloc::format!(
                        "ack for delivery {}, but only {} were sent",
                        a.up_to,
                        c.next_tag - 1
                    );
                    self.close(conn, CloseCode::ProtocolViolation, &detail);
                    return;
                }
                while c.in_flight.front().is_some_and(|f| f.tag <= a.up_to) {
                    c.in_flight.pop_front();
                }
            }
            (Phase::Open, Frame::Ping) => self.send(conn, Frame::Pong),
            (Phase::Open, Frame::Pong) => {}
            (_, Frame::Close(cl)) => {
                // The endpoint stops: answer `Normal` so it knows everything before arrived. Its
                // own code and detail are only reported (never echoed: they could be anything).
                let detail = cl.detail.to_string();
                self.close_as(conn, CloseCode::Normal, "", cl.code, &detail, true);
            }
            (phase, other) => {
                let detail = match phase {
                    Phase::Open => {
                        alloc::format!("{} frame not allowed from an endpoint", other.kind())
                    }
                    _ => alloc::format!("{} frame before the handshake finished", other.kind()),
                };
                self.close(conn, CloseCode::ProtocolViolation, &detail);
            }
        }
    }

    fn finish_handshake(&mut self, now: Instant, conn: ConnId, hello: HelloInfo, mac: &[u8; 32]) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let names: Vec<&str> = hello.groups.iter().map(String::as_str).collect();
        let transcript = Transcript {
            version: PROTOCOL_VERSION,
            endpoint_nonce: &hello.nonce,
            relay_nonce: &c.relay_nonce,
            session: &hello.session,
            groups: &names,
        };
        if !self.config.key.verify(Role::Endpoint, &transcript, mac) {
            self.stats.auth_failures += 1;
            self.close(conn, CloseCode::BadPassword, "");
            return;
        }
        let relay_mac = self.config.key.proof(Role::Relay, &transcript);
        let replaced = self
            .sessions
            .get(&hello.session)
            .and_then(|r| r.conn)
            .filter(|old| *old != conn);
        // Group rules are checked only after the proof, so they reveal nothing to strangers.
        // The new groups of this `Hello` count against the group limit together.
        let mut new_groups = 0;
        for group in &hello.groups {
            let refusal = match self.config.limits(group) {
                None => Some((
                    CloseCode::GroupRefused,
                    alloc::format!("group {group:?} is not on the relay's allow-list"),
                )),
                Some(limits) => {
                    // The connection this session replaces (a reconnect that overtook the old
                    // connection's death) does not count: it is about to leave.
                    let members = self.groups.get(group).map_or(0, |g| {
                        g.members.iter().filter(|m| Some(**m) != replaced).count()
                    });
                    if limits.max_members.is_some_and(|max| members >= max) {
                        Some((
                            CloseCode::GroupFull,
                            alloc::format!(
                                "group {group:?} already has {members} member{}",
                                if members == 1 { "" } else { "s" }
                            ),
                        ))
                    } else if !self.groups.contains_key(group)
                        && self.groups.len() + new_groups >= self.config.max_groups
                    {
                        Some((
                            CloseCode::TooManyGroups,
                            alloc::format!(
                                "joining would make more than the relay's {} groups",
                                self.config.max_groups
                            ),
                        ))
                    } else {
                        if !self.groups.contains_key(group) {
                            new_groups += 1;
                        }
                        None
                    }
                }
            };
            if let Some((code, detail)) = refusal {
                self.stats.auth_failures += 1;
                self.close(conn, code, &detail);
                return;
            }
        }
        // One session, one connection: a reconnect that overtakes the old connection's death
        // replaces it.
        self.tick += 1;
        let record = self.sessions.entry(hello.session).or_insert(SessionRecord {
            last_seq: 0,
            conn: None,
            last_seen: 0,
        });
        let resumed = record.last_seen != 0;
        let previous = record.conn.replace(conn);
        record.last_seen = self.tick;
        let last_seq = record.last_seq;
        if let Some(old) = previous.filter(|old| *old != conn) {
            self.close(old, CloseCode::SessionTakenOver, "");
        }
        self.forget_old_sessions();

        let c = self.conns.get_mut(&conn).expect("checked above");
        c.phase = Phase::Open;
        c.session = hello.session;
        c.last_rx = now;
        c.groups = hello.groups.clone();
        let max_frame = self.config.max_frame;
        let epoch = self.config.epoch;
        self.send(
            conn,
            Frame::Welcome(Welcome {
                mac: relay_mac,
                max_frame,
                last_seq,
                epoch,
            }),
        );
        for name in &hello.groups {
            let group = group_entry(&mut self.groups, name);
            group.members.push(conn);
            if let Some((seq, retained)) = &group.retained {
                self.conns
                    .broadcast(&mut self.stats, conn, name, *seq, retained);
            }
        }
        self.events.push_back(RelayEvent::Authenticated {
            conn,
            session: hello.session,
            groups: hello.groups,
            resumed,
        });
    }

    /// Keeps the session table bounded: forgets the disconnected sessions seen longest ago.
    fn forget_old_sessions(&mut self) {
        while self.sessions.len() > self.config.max_sessions {
            let oldest = self
                .sessions
                .iter()
                .filter(|(_, r)| r.conn.is_none())
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.sessions.remove(&k);
                }
                None => break,
            }
        }
    }

    fn publish(&mut self, conn: ConnId, p: Publish<'_>, source: Option<&SharedBytes>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Counted before it is handled: its rejections (queued below) precede its `Confirm`,
        // which `poll_dirty` appends after everything queued.
        c.confirm = Some(p.seq);
        c.unconfirmed = c.unconfirmed.saturating_add(1);
        let session = c.session;
        let record = self
            .sessions
            .get_mut(&session)
            .expect("open connections have a session");
        if p.seq <= record.last_seq {
            self.stats.duplicates += 1;
            return;
        }
        record.last_seq = p.seq;
        // A produced (or large broadcast) payload is taken once out of the input (a range of
        // it when the driver handed the input over shared, a copy otherwise) and shared from
        // then on.
        let mut shared: Option<SharedBytes> = None;
        for group in p.groups.iter().copied() {
            let result = match p.kind {
                PublishKind::Broadcast => self.broadcast(group, p.payload, source, &mut shared),
                PublishKind::Produce => {
                    let payload = shared
                        .get_or_insert_with(|| SharedBytes::take(p.payload, source))
                        .clone();
                    self.produce(group, payload)
                }
            };
            if let Err(reason) = result {
                self.stats.rejected += 1;
                self.send(
                    conn,
                    Frame::PublishRejected(PublishRejected {
                        seq: p.seq,
                        group,
                        reason,
                    }),
                );
            }
        }
    }

    /// Whether `name` may be used now; its limits if so.
    fn admit(&self, name: &str) -> Result<&GroupLimits, RejectReason> {
        let limits = self.config.limits(name).ok_or(RejectReason::GroupRefused)?;
        if !self.groups.contains_key(name) && self.groups.len() >= self.config.max_groups {
            return Err(RejectReason::TooManyGroups);
        }
        Ok(limits)
    }

    /// Sends a broadcast to every member of `name` and retains it. The frame is encoded once:
    /// small frames are copied into each member's output buffer; a large one is its header and
    /// the payload, copied once out of the input (into `shared`, which the publication's other
    /// groups reuse) and shared by every member.
    fn broadcast(
        &mut self,
        name: &str,
        payload: &[u8],
        source: Option<&SharedBytes>,
        shared: &mut Option<SharedBytes>,
    ) -> Result<(), RejectReason> {
        self.admit(name)?;
        self.stats.broadcasts += 1;
        let group = group_entry(&mut self.groups, name);
        group.next_seq += 1;
        let seq = group.next_seq;
        let frame = Frame::Deliver(Deliver {
            group: name,
            delivery: Delivery::Broadcast { seq },
            payload,
        });
        let len = frame.encoded_len();
        let mut buf = match group.retained.take() {
            Some((_, Retained::Small(buf) | Retained::Shared { head: buf, .. })) => buf,
            None => Vec::new(),
        };
        // The same rule as `Conns::queue`: a payload it would copy is kept in one small frame.
        let retained = if payload.len() <= SMALL_FRAME {
            buf.resize(len, 0);
            frame.encode(&mut buf).expect("sized by encoded_len");
            Retained::Small(buf)
        } else {
            buf.resize(DELIVER_HEAD_MAX, 0);
            let n = frame
                .encode_header(payload.len(), &mut buf)
                .expect("the largest header fits");
            buf.truncate(n);
            let payload = shared
                .get_or_insert_with(|| SharedBytes::take(payload, source))
                .clone();
            Retained::Shared { head: buf, payload }
        };
        for member in &group.members {
            self.conns
                .broadcast(&mut self.stats, *member, name, seq, &retained);
        }
        group.retained = Some((seq, retained));
        Ok(())
    }

    /// Adds a produced object to the queue of `name` (its overflow policy applies) and
    /// dispatches.
    fn produce(&mut self, name: &str, payload: SharedBytes) -> Result<(), RejectReason> {
        let limits = self.admit(name)?.clone();
        let group = group_entry(&mut self.groups, name);
        if group.queue.len() >= limits.max_queue {
            match limits.overflow {
                Overflow::Reject => return Err(RejectReason::QueueFull),
                Overflow::DropOldest => {
                    group.queue.pop_front();
                    self.stats.dropped_oldest += 1;
                }
            }
        }
        group.queue.push_back(payload);
        self.stats.produced += 1;
        self.dispatch(name);
        Ok(())
    }

    fn grant(&mut self, conn: ConnId, name: &str, credit: i32) {
        let max = self.conns.get(&conn).map_or(0, |c| c.max_frame as usize);
        let Some(group) = self.groups.get_mut(name) else {
            return;
        };
        if credit > 0 {
            match group.grants.back_mut() {
                // Consecutive grants of one connection merge; order is unchanged.
                Some((last, n)) if *last == conn => *n = n.saturating_add(credit as u32),
                _ => group.grants.push_back((conn, credit as u32)),
            }
        } else if credit < 0 {
            // Everything queued now that fits this endpoint, and no new standing credit: a grant
            // of exactly that many, served before any other. What it takes uses up the
            // endpoint's standing credit first, so both sides keep counting the same outstanding
            // credit (the endpoint subtracts every produced delivery from what it granted).
            let wanted = group
                .queue
                .iter()
                .filter(|p| produced_frame_len(name, p) <= max)
                .count() as u32;
            let mut to_use = wanted;
            for (m, n) in group.grants.iter_mut() {
                if *m == conn && to_use > 0 {
                    let used = (*n).min(to_use);
                    *n -= used;
                    to_use -= used;
                }
            }
            group.grants.retain(|(_, n)| *n > 0);
            if wanted > 0 {
                group.grants.push_front((conn, wanted));
            }
        }
        self.dispatch(name);
    }

    /// Hands queued objects of a group to members with credit, in the order credit was granted.
    ///
    /// Credit is a promise to take objects, not to take them all at once: a connection whose
    /// backlog is over half the outbound limit gets nothing more until its socket has taken
    /// some ([`handle_written`](Self::handle_written) resumes it), so the slow-consumer rule
    /// never fires on output the relay chose to queue.
    fn dispatch(&mut self, name: &str) {
        let window = self.config.outbound_limit / 2;
        let mut paused = Vec::new();
        while let Some(group) = self.groups.get_mut(name) {
            if group.queue.is_empty() || group.grants.is_empty() {
                break;
            }
            // The first grant whose endpoint can take some queued object gets the oldest such
            // object. `nothing_fits` remembers the largest limit for which no object fits, so a
            // crowd of small consumers waiting for large objects costs one scan, not one each.
            let mut pick = None;
            let mut nothing_fits = 0usize;
            let front = produced_frame_len(name, &group.queue[0]);
            for (gi, (conn, _)) in group.grants.iter().enumerate() {
                let Some(c) = self.conns.get(conn) else {
                    continue;
                };
                if c.backlog > window {
                    paused.push(*conn);
                    continue;
                }
                let max = c.max_frame as usize;
                if front <= max {
                    pick = Some((gi, 0));
                    break;
                }
                if max <= nothing_fits {
                    continue;
                }
                match group
                    .queue
                    .iter()
                    .position(|p| produced_frame_len(name, p) <= max)
                {
                    Some(qi) => {
                        pick = Some((gi, qi));
                        break;
                    }
                    None => nothing_fits = max,
                }
            }
            let Some((gi, qi)) = pick else {
                break;
            };
            let payload = group.queue.remove(qi).expect("index in range");
            let conn = group.grants[gi].0;
            group.grants[gi].1 -= 1;
            if group.grants[gi].1 == 0 {
                group.grants.remove(gi);
            }
            self.deliver_produced(conn, name, payload);
        }
        for conn in paused {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.paused = true;
            }
        }
    }

    fn deliver_produced(&mut self, conn: ConnId, group: &str, payload: SharedBytes) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(name) = self.groups.get(group).map(|g| g.name.clone()) else {
            return;
        };
        let tag = c.next_tag;
        c.next_tag += 1;
        // The header is small and built on the stack; the payload follows it.
        let mut head = [0u8; DELIVER_HEAD_MAX];
        let n = Frame::Deliver(Deliver {
            group,
            delivery: Delivery::Produced { tag },
            payload: &[],
        })
        .encode_header(payload.len(), &mut head)
        .expect("the largest header fits");
        c.in_flight.push_back(InFlight {
            tag,
            group: name,
            payload: payload.clone(),
        });
        self.conns.queue(
            conn,
            Out::Frame {
                head: &head[..n],
                payload: &payload,
            },
        );
    }

    /// After a batch of input from `conn`: its publishes are confirmed with the output it has
    /// anyway, at once when the batch had two or more, else within `confirm_delay`.
    fn settle_confirm(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.confirm.is_none() || !matches!(c.phase, Phase::Open) {
            return;
        }
        if c.dirty || !c.out.is_empty() || c.unconfirmed >= 2 {
            // `poll_dirty` appends the `Confirm` to whatever is queued.
            self.conns.mark_dirty(conn);
        } else if c.confirm_due.is_none() {
            let due = now + self.config.confirm_delay;
            c.confirm_due = Some(due);
            self.confirm_due.push_back((due, conn));
        }
    }

    /// Appends `c`'s pending `Confirm` to its output (after everything queued: the rejections
    /// of the publishes it covers come first).
    fn append_confirm(c: &mut Conn) {
        let Some(up_to) = c.confirm else {
            return;
        };
        c.forget_confirm();
        let mut buf = [0u8; 16];
        let n = Frame::Confirm(Confirm { up_to })
            .encode(&mut buf)
            .expect("a Confirm is small");
        append(c, &[&buf[..n]]);
    }

    /// When the next deferred `Confirm` falls due: call
    /// [`handle_confirm_timeout`](Self::handle_confirm_timeout) then. Cheap (no scan), unlike
    /// [`poll_timeout`](Self::poll_timeout), which includes it.
    pub fn poll_confirm_timeout(&mut self) -> Option<Instant> {
        // An entry whose confirm went with other output since is stale: dropped here, so that
        // the driver is not woken for it.
        while let Some(&(due, conn)) = self.confirm_due.front() {
            if self
                .conns
                .get(&conn)
                .is_some_and(|c| c.confirm_due == Some(due))
            {
                return Some(due);
            }
            self.confirm_due.pop_front();
        }
        None
    }

    /// Queues the deferred confirms that are due at `now`.
    pub fn handle_confirm_timeout(&mut self, now: Instant) {
        while let Some(&(due, conn)) = self.confirm_due.front() {
            if due > now {
                break;
            }
            self.confirm_due.pop_front();
            if let Some(c) = self.conns.get_mut(&conn)
                && c.confirm_due == Some(due)
            {
                c.confirm_due = None;
                self.conns.mark_dirty(conn);
            }
        }
    }

    /// Encodes a control frame for `conn`.
    fn send(&mut self, conn: ConnId, f: Frame<'_>) {
        let mut buf = core::mem::take(&mut self.scratch);
        buf.resize(f.encoded_len(), 0);
        let n = f.encode(&mut buf).expect("sized by encoded_len");
        self.conns.queue(conn, Out::Bytes(&buf[..n]));
        self.scratch = buf;
    }

    /// Closes the connections found over their backlog limit. Closing one can requeue its
    /// objects for others, so this runs until no new slow consumer appears.
    fn close_slow_consumers(&mut self) {
        while let Some(conn) = self.conns.slow.pop() {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if matches!(c.phase, Phase::Closed) {
                // Closed for another reason since: its `Close` is queued and must go out.
                continue;
            }
            // What is still queued for it is dropped; the Close frame goes out alone. Only the
            // rest of a frame already begun stays: a shared payload at the front follows a
            // header the driver has taken (`Out::Frame`), and cutting it would garble the
            // stream before the Close.
            let keep = usize::from(matches!(c.out.front(), Some(Chunk::Shared(_))));
            let dropped: usize = c.out.iter().skip(keep).map(|ch| ch.len()).sum();
            c.backlog -= dropped;
            c.out.truncate(keep);
            // The `PublishRejected` of a publish it had not confirmed may be among what was
            // dropped (or refused at the limit): no `Confirm` may cover it now. The endpoint
            // learns what was handled from `Welcome.last_seq` when it reconnects.
            c.forget_confirm();
            self.stats.slow_consumers += 1;
            let detail = alloc::format!("more than {} bytes waiting", self.config.outbound_limit);
            self.close(conn, CloseCode::SlowConsumer, &detail);
        }
    }

    /// Ends a connection: leaves its groups, puts what it had not acknowledged back at the front
    /// of their queues, sends `Close`, and reports [`RelayEvent::Closing`].
    fn close(&mut self, conn: ConnId, code: CloseCode, detail: &str) {
        self.close_as(conn, code, detail, code, detail, false);
    }

    /// [`close`](Self::close), sending one reason and reporting another.
    fn close_as(
        &mut self,
        conn: ConnId,
        code: CloseCode,
        detail: &str,
        reported_code: CloseCode,
        reported_detail: &str,
        by_endpoint: bool,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if matches!(c.phase, Phase::Closed) {
            return;
        }
        let was_open = matches!(c.phase, Phase::Open);
        if was_open {
            // What was handled is confirmed before the `Close` (even past the backlog limit,
            // as the `Close` is): the endpoint must not resend it.
            Self::append_confirm(c);
        }
        let close = Frame::Close(Close { code, detail }).to_vec();
        // The Close frame goes out even past the backlog limit.
        c.backlog += close.len();
        c.out.push_back(Chunk::Owned(close));
        c.phase = Phase::Closed;
        self.conns.mark_dirty(conn);
        self.events.push_back(RelayEvent::Closing {
            conn,
            code: reported_code,
            detail: reported_detail.to_string(),
            by_endpoint,
        });
        if was_open {
            self.leave(conn);
        }
    }

    /// Removes a connection from its groups and requeues its unacknowledged objects.
    fn leave(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let groups = core::mem::take(&mut c.groups);
        let in_flight = core::mem::take(&mut c.in_flight);
        if let Some(record) = self.sessions.get_mut(&c.session)
            && record.conn == Some(conn)
        {
            record.conn = None;
            // Seen until now: of the disconnected sessions, it is the last to be forgotten.
            self.tick += 1;
            record.last_seen = self.tick;
        }
        self.stats.redelivered += in_flight.len() as u64;
        // Back to the front, keeping their order.
        for item in in_flight.into_iter().rev() {
            if let Some(group) = self.groups.get_mut(&*item.group) {
                group.queue.push_front(item.payload);
            }
        }
        for name in &groups {
            if let Some(group) = self.groups.get_mut(name) {
                group.members.retain(|m| *m != conn);
                group.grants.retain(|(m, _)| *m != conn);
            }
        }
        for name in &groups {
            self.dispatch(name);
            // A group nobody uses any more does not count against `max_groups`.
            if self.groups.get(name).is_some_and(|g| {
                g.members.is_empty()
                    && g.queue.is_empty()
                    && g.grants.is_empty()
                    && g.retained.is_none()
            }) {
                self.groups.remove(name);
            }
        }
    }

    /// The socket of `conn` is gone (after a `Closing` event, or because it failed): forgets
    /// the connection. Unacknowledged objects go back in line.
    pub fn connection_lost(&mut self, conn: ConnId) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| matches!(c.phase, Phase::Open))
        {
            self.leave(conn);
        }
        self.conns.remove(&conn);
        self.close_slow_consumers();
    }

    /// Closes every connection with `Shutdown` (the relay is stopping).
    pub fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, CloseCode::Shutdown, "");
        }
    }

    /// The next connection with output waiting, if any.
    pub fn poll_dirty(&mut self) -> Option<ConnId> {
        let id = self.conns.dirty.pop_front()?;
        if let Some(c) = self.conns.get_mut(&id) {
            c.dirty = false;
            // A pending `Confirm` travels with the output (the whole point of deferring it).
            if matches!(c.phase, Phase::Open) && !c.slow {
                Self::append_confirm(c);
            }
        }
        Some(id)
    }

    /// The next chunk of output for `conn`. Report what the socket accepted with
    /// [`handle_written`](Self::handle_written).
    pub fn poll_transmit(&mut self, conn: ConnId) -> Option<Chunk> {
        self.conns.get_mut(&conn)?.out.pop_front()
    }

    /// The socket of `conn` took `bytes` bytes handed out by `poll_transmit`.
    pub fn handle_written(&mut self, conn: ConnId, bytes: usize) {
        let window = self.config.outbound_limit / 2;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.backlog = c.backlog.saturating_sub(bytes);
        if c.paused && c.backlog <= window {
            c.paused = false;
            let groups = c.groups.clone();
            for name in &groups {
                self.dispatch(name);
            }
            self.close_slow_consumers();
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next (a scan over connections:
    /// drivers with many connections may instead call `handle_timeout` on a fixed tick).
    pub fn poll_timeout(&self) -> Option<Instant> {
        // The first deferred confirm may be a stale entry, so possibly early: harmless.
        let confirm = self.confirm_due.front().map(|(due, _)| *due);
        self.conns
            .values()
            .filter_map(|c| self.deadline(c))
            .chain(confirm)
            .min()
    }

    fn deadline(&self, c: &Conn) -> Option<Instant> {
        match c.phase {
            Phase::AwaitHello | Phase::AwaitProof(_) => {
                Some(c.accepted_at + self.config.handshake_timeout)
            }
            Phase::Open => {
                let idle = c.last_rx + c.keepalive * self.config.idle_intervals;
                let idle = match self.too_slow_from(c) {
                    Some(slow) => idle.min(slow),
                    None => idle,
                };
                if c.ping_sent {
                    Some(idle)
                } else {
                    Some(idle.min(c.last_rx + c.keepalive))
                }
            }
            Phase::Closed => None,
        }
    }

    /// From when the frame `c` is receiving has come too slowly (PROTOCOL.md §9.10): after the
    /// idle window, once its average since the first byte is under `min_frame_rate`.
    fn too_slow_from(&self, c: &Conn) -> Option<Instant> {
        let since = c.partial_since?;
        let rate = u64::from(self.config.min_frame_rate);
        if rate == 0 {
            return None;
        }
        let window = c.keepalive * self.config.idle_intervals;
        // Under the rate when elapsed > bytes / rate.
        let at_rate = Duration::from_millis((c.partial_bytes as u64).saturating_mul(1000) / rate);
        Some(since + window.max(at_rate) + Duration::from_millis(1))
    }

    /// Sends the deferred confirms that are due, pings endpoints that were silent for their
    /// keepalive interval (an endpoint that only receives has nothing else to say) and closes
    /// connections past their handshake deadline or silent for `idle_intervals` keepalive
    /// intervals.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_confirm_timeout(now);
        let mut expired = Vec::new();
        let mut crawling = Vec::new();
        let mut ping = Vec::new();
        for (id, c) in self.conns.iter() {
            match c.phase {
                Phase::AwaitHello | Phase::AwaitProof(_) => {
                    if now >= c.accepted_at + self.config.handshake_timeout {
                        expired.push((*id, CloseCode::AuthTimeout));
                    }
                }
                Phase::Open => {
                    if now >= c.last_rx + c.keepalive * self.config.idle_intervals {
                        expired.push((*id, CloseCode::IdleTimeout));
                    } else if let Some(since) = c.partial_since
                        && self.too_slow_from(c).is_some_and(|t| now >= t)
                    {
                        crawling.push((*id, now.saturating_since(since), c.partial_bytes));
                    } else if !c.ping_sent && now >= c.last_rx + c.keepalive {
                        ping.push(*id);
                    }
                }
                Phase::Closed => {}
            }
        }
        for id in ping {
            if let Some(c) = self.conns.get_mut(&id) {
                c.ping_sent = true;
            }
            self.send(id, Frame::Ping);
        }
        for (id, code) in expired {
            if code == CloseCode::AuthTimeout {
                self.stats.auth_failures += 1;
            }
            self.close(id, code, "");
        }
        for (id, elapsed, bytes) in crawling {
            let ms = elapsed.as_millis().max(1) as u64;
            let detail = alloc::format!(
                "a frame has been arriving for {}.{} s at {} B/s, under the minimum of {} B/s",
                ms / 1000,
                ms % 1000 / 100,
                (bytes as u64).saturating_mul(1000) / ms,
                self.config.min_frame_rate
            );
            self.close(id, CloseCode::IdleTimeout, &detail);
        }
        self.close_slow_consumers();
    }
}

/// The group called `name`, created if it does not exist (without allocating when it does).
fn group_entry<'g>(groups: &'g mut BTreeMap<String, Group>, name: &str) -> &'g mut Group {
    if !groups.contains_key(name) {
        groups.insert(
            name.to_string(),
            Group {
                name: Arc::from(name),
                members: Vec::new(),
                next_seq: 0,
                retained: None,
                queue: VecDeque::new(),
                grants: VecDeque::new(),
            },
        );
    }
    groups.get_mut(name).expect("inserted above")
}

/// The size of the frame that delivers a produced payload of `group` (its tag varint taken at
/// the largest, so the check never underestimates).
fn produced_frame_len(group: &str, payload: &[u8]) -> usize {
    frame::PREFIX_LEN + 1 + group.len() + 1 + 10 + payload.len()
}

#[cfg(test)]
mod tests;
