//! The wire format: one module for all framing.
//!
//! A frame on the wire is
//!
//! ```text
//! +----------------+---------+---------------------+--------------------+
//! | length: u32 BE | kind u8 | header (postcard)   | payload (raw)      |
//! +----------------+---------+---------------------+--------------------+
//!                  |<------------------ length bytes ----------------->|
//! ```
//!
//! The size of a frame is `4 + length`. [`frame_len`] reads the prefix and refuses a frame larger
//! than the receiver's limit *before* the rest is buffered. The header is a postcard encoding of
//! the kind's header struct; only [`Kind::Publish`] and [`Kind::Deliver`] carry a payload (the
//! bytes after the header, up to the end of the frame), so relaying a payload never re-encodes it.
//! Unknown kinds are a typed error ([`FrameError::UnknownKind`]), never a panic.

use core::fmt;

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{MAX_GROUP_NAME, MAX_GROUPS};

/// Bytes before the header: the length prefix and the kind byte.
pub const PREFIX_LEN: usize = 5;

/// The smallest limit a receiver may state: every control frame fits in it.
pub const MIN_MAX_FRAME: u32 = 1024;

/// The largest frame a relay accepts before the handshake is over: the largest `Hello`
/// (16 groups of 64 bytes: 1,107 bytes) with room to spare.
pub const HANDSHAKE_MAX_FRAME: u32 = 2048;

/// The largest frame an endpoint accepts before `Welcome`: the relay's handshake frames fit in
/// 128 bytes, a `Close` with a long detail in this.
pub const RELAY_HANDSHAKE_MAX_FRAME: u32 = 64 * 1024;

/// A list of group names as it travels in a frame.
pub type GroupList<'a> = heapless::Vec<&'a str, MAX_GROUPS>;

macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A code this version does not know; its value is kept.
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                match v {
                    $( $value => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v {
                    $( $name::$variant => $value, )*
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $name {
            /// A sentence a person can read.
            pub fn description(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown(_) => "unknown code",
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $name::Unknown(v) => write!(f, "unknown code {v}"),
                    other => f.write_str(other.description()),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u8((*self).into())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                u8::deserialize(d).map($name::from)
            }
        }
    };
}

code_enum! {
    /// The kind byte of a frame.
    pub enum Kind {
        /// Endpoint → relay, first frame: version, nonce, session, limits, groups.
        Hello = 0x01 => "hello",
        /// Relay → endpoint: the relay's nonce.
        Challenge = 0x02 => "challenge",
        /// Endpoint → relay: the endpoint's password proof.
        Proof = 0x03 => "proof",
        /// Relay → endpoint: accepted, with the relay's own proof.
        Welcome = 0x04 => "welcome",
        /// Either way: the connection ends, with a reason.
        Close = 0x05 => "close",
        /// Either way: are you there?
        Ping = 0x06 => "ping",
        /// Either way: yes.
        Pong = 0x07 => "pong",
        /// Endpoint → relay: broadcast or produce an object to one or more groups.
        Publish = 0x10 => "publish",
        /// Endpoint → relay: credit for produced objects of a group.
        Notify = 0x11 => "notify",
        /// Endpoint → relay: produced objects handed to the application, up to a tag.
        Ack = 0x12 => "ack",
        /// Relay → endpoint: an object for one of its groups.
        Deliver = 0x20 => "deliver",
        /// Relay → endpoint: publishes up to a sequence number were handled.
        Confirm = 0x21 => "confirm",
        /// Relay → endpoint: a publish was refused for one group.
        PublishRejected = 0x22 => "publish rejected",
        /// Relay → endpoint: a broadcast was too large for this endpoint's limit.
        Skipped = 0x23 => "skipped",
    }
}

code_enum! {
    /// Why a connection ends (carried by [`Close`]).
    pub enum CloseCode {
        /// Nothing went wrong.
        Normal = 0 => "closed normally",
        /// The endpoint's password proof did not verify.
        BadPassword = 1 => "wrong password: the relay did not accept the endpoint's proof",
        /// The peer speaks another protocol version.
        UnsupportedVersion = 2 => "unsupported protocol version",
        /// A group the endpoint asked to join is not on the relay's allow-list.
        GroupRefused = 3 => "group refused by the relay",
        /// A group the endpoint asked to join has reached its member limit.
        GroupFull = 4 => "group has reached its member limit",
        /// The handshake did not finish within the relay's deadline.
        AuthTimeout = 5 => "authentication deadline passed",
        /// The peer sent something the protocol does not allow here.
        ProtocolViolation = 6 => "protocol violation",
        /// The peer sent a frame larger than the stated limit.
        FrameTooLarge = 7 => "frame too large",
        /// The endpoint fell too far behind its outbound queue limit.
        SlowConsumer = 8 => "slow consumer: the endpoint fell too far behind",
        /// Nothing was heard from the peer for too long.
        IdleTimeout = 9 => "peer silent for too long",
        /// The relay is shutting down.
        Shutdown = 10 => "relay shutting down",
        /// A newer connection of the same session replaced this one.
        SessionTakenOver = 11 => "session taken over by a newer connection",
        /// The relay has reached its connection limit.
        TooManyConnections = 12 => "relay has too many connections",
        /// The relay has reached its limit on the number of groups (retrying later may help).
        TooManyGroups = 13 => "relay has too many groups",
    }
}

impl CloseCode {
    /// Whether retrying cannot help: the endpoint stops reconnecting and reports the error.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            CloseCode::BadPassword
                | CloseCode::UnsupportedVersion
                | CloseCode::GroupRefused
                | CloseCode::GroupFull
        )
    }
}

code_enum! {
    /// Why the relay refused a publish for one group (carried by [`PublishRejected`]).
    pub enum RejectReason {
        /// The group is not on the relay's allow-list.
        GroupRefused = 1 => "group refused by the relay",
        /// The group's produce queue is full and its overflow policy is `reject`.
        QueueFull = 2 => "the group's queue is full",
        /// The object is larger than the relay accepts.
        TooLarge = 3 => "object too large",
        /// The relay has reached its limit on the number of groups.
        TooManyGroups = 4 => "the relay has too many groups",
    }
}

/// Whether a publish is a broadcast (every member) or a produce (one member, via credit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PublishKind {
    /// To every current member; the relay retains the last one.
    Broadcast,
    /// Into the group's queue; exactly one member gets it.
    Produce,
}

/// How a delivered object reached the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Delivery {
    /// A broadcast, with the relay's per-group sequence number.
    Broadcast {
        /// Per-group sequence number, increasing by one per broadcast.
        seq: u64,
    },
    /// A produced object, with the connection's delivery tag (acknowledged with [`Ack`]).
    Produced {
        /// Per-connection delivery tag, increasing by one per produced object.
        tag: u64,
    },
}

/// Endpoint → relay: the first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// The protocol version the endpoint speaks.
    pub version: u16,
    /// The endpoint's fresh nonce.
    pub nonce: [u8; 32],
    /// The endpoint's session id, the same across reconnects.
    pub session: [u8; 16],
    /// The largest frame the endpoint can receive, in bytes.
    pub max_frame: u32,
    /// How often the endpoint pings when it hears nothing, in milliseconds.
    pub keepalive_ms: u32,
    /// The groups to join.
    #[serde(borrow)]
    pub groups: GroupList<'a>,
}

/// Relay → endpoint: the relay's fresh nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The relay's fresh nonce.
    pub nonce: [u8; 32],
}

/// Endpoint → relay: the endpoint's proof that it knows the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// HMAC-SHA256 over the endpoint role label and the transcript.
    pub mac: [u8; 32],
}

/// Relay → endpoint: the endpoint is in; the relay's own proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// HMAC-SHA256 over the relay role label and the transcript.
    pub mac: [u8; 32],
    /// The largest frame the relay accepts, in bytes.
    pub max_frame: u32,
    /// The highest publish sequence number the relay has handled for this session (0: none).
    pub last_seq: u64,
    /// Drawn by the relay when it starts: a new epoch means broadcast numbers start again.
    pub epoch: u64,
}

/// Either way: the connection ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close<'a> {
    /// Why.
    pub code: CloseCode,
    /// Details for a person (may be empty).
    pub detail: &'a str,
}

/// Endpoint → relay: an object to broadcast or produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish<'a> {
    /// The endpoint's publish sequence number (per session, from 1).
    pub seq: u64,
    /// Broadcast or produce.
    pub kind: PublishKind,
    /// The target groups.
    #[serde(borrow)]
    pub groups: GroupList<'a>,
    /// The serialized object; travels raw after the header.
    #[serde(skip)]
    pub payload: &'a [u8],
}

/// Endpoint → relay: credit for produced objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify<'a> {
    /// The group (one the endpoint is a member of).
    pub group: &'a str,
    /// More objects wanted; negative: everything queued now, without standing credit.
    pub credit: i32,
}

/// Endpoint → relay: produced objects up to `up_to` were handed to the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest delivery tag handed over (cumulative).
    pub up_to: u64,
}

/// Relay → endpoint: an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver<'a> {
    /// The group it was sent to.
    pub group: &'a str,
    /// Broadcast or produced, with its number.
    pub delivery: Delivery,
    /// The serialized object; travels raw after the header.
    #[serde(skip)]
    pub payload: &'a [u8],
}

/// Relay → endpoint: every publish up to `up_to` was handled (accepted, or rejected with a
/// [`PublishRejected`] sent before this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    /// Highest publish sequence number handled (cumulative).
    pub up_to: u64,
}

/// Relay → endpoint: a publish was refused for one of its groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRejected<'a> {
    /// The publish's sequence number.
    pub seq: u64,
    /// The group that refused it.
    pub group: &'a str,
    /// Why.
    pub reason: RejectReason,
}

/// Relay → endpoint: a broadcast was not sent because it exceeds the endpoint's limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped<'a> {
    /// The group.
    pub group: &'a str,
    /// The broadcast's sequence number.
    pub seq: u64,
    /// The size of the frame that was skipped, in bytes.
    pub size: u32,
}

/// One decoded frame, borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    Challenge(Challenge),
    Proof(Proof),
    Welcome(Welcome),
    Close(Close<'a>),
    Ping,
    Pong,
    Publish(Publish<'a>),
    Notify(Notify<'a>),
    Ack(Ack),
    Deliver(Deliver<'a>),
    Confirm(Confirm),
    PublishRejected(PublishRejected<'a>),
    Skipped(Skipped<'a>),
}

/// What is wrong with bytes on the wire, or with a buffer given to the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FrameError {
    /// The length prefix announces a frame larger than the receiver accepts.
    TooLarge {
        /// Size of the announced frame, prefix included.
        size: u64,
        /// The receiver's limit.
        max: u32,
    },
    /// The kind byte is not one this version knows.
    UnknownKind(u8),
    /// The header of a known kind does not parse, or bytes follow a frame that has no payload.
    Malformed(Kind),
    /// A group name is empty or longer than [`MAX_GROUP_NAME`] bytes.
    BadGroupName,
    /// A list names the same group twice.
    DuplicateGroup,
    /// The length prefix is zero: a frame must at least carry its kind byte.
    ZeroLength,
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needed (0 if the prefix itself was cut).
        need: usize,
    },
    /// The output buffer cannot hold the frame.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::TooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the limit of {max} bytes")
            }
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            FrameError::Malformed(k) => write!(f, "malformed {k} frame"),
            FrameError::BadGroupName => write!(
                f,
                "group name is empty or longer than {MAX_GROUP_NAME} bytes"
            ),
            FrameError::DuplicateGroup => write!(f, "the same group is named twice"),
            FrameError::ZeroLength => write!(f, "frame of length zero (no kind byte)"),
            FrameError::Truncated { have, need } => {
                write!(f, "stream ended inside a frame ({have} of {need} bytes)")
            }
            FrameError::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the frame needs {needed} bytes")
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// Checks a group name: non-empty and at most [`MAX_GROUP_NAME`] bytes.
pub fn check_group_name(name: &str) -> Result<(), FrameError> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        Err(FrameError::BadGroupName)
    } else {
        Ok(())
    }
}

/// Checks a list of group names: each valid, none twice.
pub fn check_group_list(groups: &[&str]) -> Result<(), FrameError> {
    for (i, g) in groups.iter().enumerate() {
        check_group_name(g)?;
        if groups[..i].contains(g) {
            return Err(FrameError::DuplicateGroup);
        }
    }
    Ok(())
}

/// Looks at the start of a receive buffer: `Ok(None)` when more bytes are needed, `Ok(Some(n))`
/// when a whole frame of `n` bytes is there. A frame larger than `max_frame` is an error as soon
/// as its length prefix is readable, so the caller never buffers it.
pub fn frame_len(buf: &[u8], max_frame: u32) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let size = 4 + u64::from(len);
    if size > u64::from(max_frame) {
        return Err(FrameError::TooLarge {
            size,
            max: max_frame,
        });
    }
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    let size = size as usize;
    Ok((buf.len() >= size).then_some(size))
}

/// The whole length (prefix included) that the frame starting `buf` announces, once its length
/// prefix is there. It says nothing about whether that length is acceptable: see [`frame_len`].
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let p = buf.get(..4)?;
    // Saturating: on a 32-bit target 4 + u32::MAX does not fit a usize.
    Some((u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize).saturating_add(4))
}

/// What to report when a stream ends with `pending` bytes of an unfinished frame buffered.
pub fn truncated(pending: &[u8]) -> FrameError {
    FrameError::Truncated {
        have: pending.len(),
        need: announced_len(pending).unwrap_or(0),
    }
}

/// Where `part` lies within `outer`, if it is a part of it. Addresses are compared as integers:
/// `part` is then only ever read through `outer`.
pub fn range_within(outer: &[u8], part: &[u8]) -> Option<core::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// Decodes one whole frame (as delimited by [`frame_len`]).
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, FrameError> {
    if frame.len() < PREFIX_LEN {
        return Err(truncated(frame));
    }
    let kind = Kind::from(frame[4]);
    let body = &frame[PREFIX_LEN..];
    fn header<'a, T: Deserialize<'a>>(
        kind: Kind,
        body: &'a [u8],
    ) -> Result<(T, &'a [u8]), FrameError> {
        postcard::take_from_bytes(body).map_err(|_| FrameError::Malformed(kind))
    }
    fn only<'a, T: Deserialize<'a>>(kind: Kind, body: &'a [u8]) -> Result<T, FrameError> {
        match header(kind, body)? {
            (value, []) => Ok(value),
            _ => Err(FrameError::Malformed(kind)),
        }
    }
    let frame = match kind {
        Kind::Hello => {
            let hello: Hello<'_> = only(kind, body)?;
            check_group_list(&hello.groups)?;
            Frame::Hello(hello)
        }
        Kind::Challenge => Frame::Challenge(only(kind, body)?),
        Kind::Proof => Frame::Proof(only(kind, body)?),
        Kind::Welcome => Frame::Welcome(only(kind, body)?),
        Kind::Close => Frame::Close(only(kind, body)?),
        Kind::Ping => {
            if !body.is_empty() {
                return Err(FrameError::Malformed(kind));
            }
            Frame::Ping
        }
        Kind::Pong => {
            if !body.is_empty() {
                return Err(FrameError::Malformed(kind));
            }
            Frame::Pong
        }
        Kind::Publish => {
            let (mut publish, payload): (Publish<'_>, _) = header(kind, body)?;
            if publish.groups.is_empty() {
                return Err(FrameError::Malformed(kind));
            }
            check_group_list(&publish.groups)?;
            publish.payload = payload;
            Frame::Publish(publish)
        }
        Kind::Notify => {
            let notify: Notify<'_> = only(kind, body)?;
            check_group_name(notify.group)?;
            Frame::Notify(notify)
        }
        Kind::Ack => Frame::Ack(only(kind, body)?),
        Kind::Deliver => {
            let (mut deliver, payload): (Deliver<'_>, _) = header(kind, body)?;
            check_group_name(deliver.group)?;
            deliver.payload = payload;
            Frame::Deliver(deliver)
        }
        Kind::Confirm => Frame::Confirm(only(kind, body)?),
        Kind::PublishRejected => {
            let rejected: PublishRejected<'_> = only(kind, body)?;
            check_group_name(rejected.group)?;
            Frame::PublishRejected(rejected)
        }
        Kind::Skipped => {
            let skipped: Skipped<'_> = only(kind, body)?;
            check_group_name(skipped.group)?;
            Frame::Skipped(skipped)
        }
        Kind::Unknown(k) => return Err(FrameError::UnknownKind(k)),
    };
    Ok(frame)
}

impl Frame<'_> {
    /// The frame's kind byte.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Challenge(_) => Kind::Challenge,
            Frame::Proof(_) => Kind::Proof,
            Frame::Welcome(_) => Kind::Welcome,
            Frame::Close(_) => Kind::Close,
            Frame::Ping => Kind::Ping,
            Frame::Pong => Kind::Pong,
            Frame::Publish(_) => Kind::Publish,
            Frame::Notify(_) => Kind::Notify,
            Frame::Ack(_) => Kind::Ack,
            Frame::Deliver(_) => Kind::Deliver,
            Frame::Confirm(_) => Kind::Confirm,
            Frame::PublishRejected(_) => Kind::PublishRejected,
            Frame::Skipped(_) => Kind::Skipped,
        }
    }

    /// The payload carried after the header (empty for kinds without one).
    pub fn payload(&self) -> &[u8] {
        match self {
            Frame::Publish(p) => p.payload,
            Frame::Deliver(d) => d.payload,
            _ => &[],
        }
    }

    /// Runs `f` with the header value, typed, so one generic function can size or write it.
    fn with_header<R>(&self, f: impl FnOnce(&dyn ErasedHeader) -> R) -> R {
        match self {
            Frame::Hello(h) => f(h),
            Frame::Challenge(h) => f(h),
            Frame::Proof(h) => f(h),
            Frame::Welcome(h) => f(h),
            Frame::Close(h) => f(h),
            Frame::Ping | Frame::Pong => f(&()),
            Frame::Publish(h) => f(h),
            Frame::Notify(h) => f(h),
            Frame::Ack(h) => f(h),
            Frame::Deliver(h) => f(h),
            Frame::Confirm(h) => f(h),
            Frame::PublishRejected(h) => f(h),
            Frame::Skipped(h) => f(h),
        }
    }

    /// The size of the encoded frame, prefix and payload included.
    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + self.with_header(|h| h.size()) + self.payload().len()
    }

    /// Encodes the frame into `out`, returning the number of bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        let payload = self.payload();
        let needed = self.encoded_len();
        if out.len() < needed {
            return Err(FrameError::BufferTooSmall { needed });
        }
        let start = self.encode_header(payload.len(), out)?;
        out[start..start + payload.len()].copy_from_slice(payload);
        Ok(start + payload.len())
    }

    /// Encodes everything but the payload, with the length prefix counting `payload_len` payload
    /// bytes that the caller writes (or sends) right after; returns the bytes written. The
    /// frame's own payload field is ignored. This lets a driver serialize an object straight
    /// after the header, and a relay share one payload between many receivers.
    pub fn encode_header(&self, payload_len: usize, out: &mut [u8]) -> Result<usize, FrameError> {
        let header_len = PREFIX_LEN + self.with_header(|h| h.size());
        let needed = header_len + payload_len;
        if needed - 4 > u32::MAX as usize {
            return Err(FrameError::TooLarge {
                size: needed as u64,
                max: u32::MAX,
            });
        }
        if out.len() < header_len {
            return Err(FrameError::BufferTooSmall { needed });
        }
        self.with_header(|h| h.write(&mut out[PREFIX_LEN..header_len]))?;
        out[..4].copy_from_slice(&((needed - 4) as u32).to_be_bytes());
        out[4] = self.kind().into();
        Ok(header_len)
    }

    /// Encodes the frame into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = alloc::vec![0; self.encoded_len()];
        let n = self.encode(&mut out).expect("sized by encoded_len");
        out.truncate(n);
        out
    }
}

/// Object-safe view of a header type, so sizing and writing are written once.
trait ErasedHeader {
    fn size(&self) -> usize;
    fn write(&self, out: &mut [u8]) -> Result<usize, FrameError>;
}

impl<T: Serialize> ErasedHeader for T {
    fn size(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default()).unwrap_or(0)
    }

    fn write(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        postcard::to_slice(self, out)
            .map(|used| used.len())
            .map_err(|_| FrameError::BufferTooSmall {
                needed: PREFIX_LEN + self.size(),
            })
    }
}

#[cfg(test)]
mod tests;
