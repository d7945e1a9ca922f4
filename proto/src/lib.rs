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
