//! The sans-IO protocol core of tlsro.
//!
//! This crate owns every rule of the tlsro protocol and performs no I/O: it never reads a clock
//! (time is passed in as an [`Instant`]), never draws random numbers (nonces and session ids are
//! passed in by the driver) and never touches a socket. The drivers (`tlsro` on tokio + rustls,
//! `tlsro-embassy` on embassy-net + embedded-tls, the `tlsro-relay` server) move bytes and
//! timers; this crate decides what the bytes mean.
//!
//! - [`frame`]: the wire format — length-prefixed frames with a kind byte, a postcard header and
//!   an opaque payload; the size limit is checked from the length prefix before anything is
//!   buffered.
//! - [`auth`]: the password handshake of `PROTOCOL.md` — HMAC-SHA256 proofs over both nonces,
//!   one role label per side, constant-time comparison.
//! - [`endpoint`]: [`EndpointSession`](endpoint::EndpointSession), one endpoint's view of the
//!   protocol, usable without an allocator.
//! - [`relay`] (feature `alloc`): [`RelayState`](relay::RelayState), the relay's group logic over
//!   many connections: membership, broadcast fan-out with retained values, produce queues,
//!   notify credit, acknowledgements and redelivery.
//!
//! The shape follows quinn-proto: `handle_*` for input, commands that only change state,
//! `poll_*` for output. Errors are sticky.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod auth;
pub mod endpoint;
pub mod frame;
#[cfg(feature = "alloc")]
pub mod relay;
mod time;

pub use time::Instant;

/// The protocol version this crate speaks. A relay refuses any other version with
/// [`CloseCode::UnsupportedVersion`](frame::CloseCode::UnsupportedVersion).
pub const PROTOCOL_VERSION: u16 = 1;

/// The most groups one endpoint can belong to, and the most groups one publish can address.
pub const MAX_GROUPS: usize = 16;

/// The longest group name, in bytes of UTF-8.
pub const MAX_GROUP_NAME: usize = 64;

/// The ALPN protocol name a TLS endpoint offers.
pub const ALPN: &[u8] = b"tlsro/1";

/// The ALPN protocol name a RAM-lean TLS endpoint offers instead of [`ALPN`]: the same protocol,
/// but the relay sends that connection TLS records of at most [`SMALL_RECORD`] bytes, so a
/// microcontroller's TLS read buffer (which must hold a whole record) can be a few KiB instead
/// of 16,640 bytes. A relay that does not know it refuses the handshake (no common ALPN
/// protocol) rather than sending records that would not fit.
pub const ALPN_SMALL_RECORDS: &[u8] = b"tlsro/1-small";

/// The largest TLS record the relay sends to an endpoint that offered [`ALPN_SMALL_RECORDS`],
/// counted as rustls's `max_fragment_size` counts it: the 5-byte record header plus at most
/// 1,019 bytes of plaintext. Encrypted (TLS 1.3, AES-GCM: content type and tag), a record's body
/// is at most [`SMALL_RECORD_BODY`] bytes. Every handshake message of the relay (its
/// certificate in particular) must fit in one such record, because embedded-tls does not
/// reassemble handshake messages split across records.
pub const SMALL_RECORD: usize = 1024;

/// The largest body (after the 5-byte header) of an encrypted record of at most
/// [`SMALL_RECORD`] bytes of plaintext and header: what a lean endpoint's TLS read buffer must
/// hold.
pub const SMALL_RECORD_BODY: usize = SMALL_RECORD - 5 + 1 + 16;
