//! tlsro: secure transport of Rust objects between machines and robots through a central relay.
//!
//! This crate is the std side: the [`Endpoint`] (tokio + rustls, with a [`blocking`] twin), the
//! [`Codec`]s, and the [`tls`] and [`credentials`] helpers. The relay is the `tlsro-relay` crate
//! (a library to embed, and the `tlsro-relay` command); the protocol itself lives in the
//! `no_std` crate `tlsro-proto`.
//!
//! ```no_run
//! use std::time::Duration;
//! use tlsro::{Endpoint, Wait};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The relay: `tlsro-relay run` (on first use it writes a CA, a certificate and a password
//! // into `tlsro::credentials::default_dir()`, which endpoints use by default).
//! let password = tlsro::credentials::read_password(
//!     &tlsro::credentials::default_dir().join("password"),
//! )?;
//! let robot = Endpoint::<String>::builder("127.0.0.1:7000", password.clone())
//!     .groups(["robots"])
//!     .connect()
//!     .await?;
//! let controller = Endpoint::<String>::builder("127.0.0.1:7000", password)
//!     .connect()
//!     .await?;
//!
//! controller.broadcast(&"go".to_string(), "robots")?.wait().await?; // to every member
//! controller.produce(&"task 1".to_string(), "robots")?;            // to exactly one member
//! robot.notify("robots", 1)?;                                        // ready for one task
//! for item in robot.pop(10, Wait::Timeout(Duration::from_secs(1))).await? {
//!     println!("{:?} from {}: {}", item.kind, item.group, item.value);
//! }
//! robot.stop().await?;
//! controller.stop().await?;
//! # Ok(()) }
//! ```
//!
//! See the README for the delivery contract (at-least-once for produced objects, confirms,
//! reconnects) and the security model.

pub mod blocking;
pub mod busy_poll;
pub mod codec;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod tls;
mod transport;

pub use codec::{Codec, CodecError, Json, Postcard, RawBytes};
pub use endpoint::{
    Backoff, Builder, CaSource, Endpoint, Event, Receipt, Received, ReceivedKind, Security, Status,
    Wait,
};
pub use error::{Error, PublishError, Rejection};
pub use tlsro_proto::frame::RejectReason;
