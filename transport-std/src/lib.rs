//! tlsro: secure transport of Rust objects between machines through a central relay (the std
//! endpoint, codecs and credentials).

pub mod blocking;
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
