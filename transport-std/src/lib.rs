//! tlsro: secure transport of Rust objects between machines through a central relay (the std
//! endpoint, codecs and credentials).

pub mod credentials;
pub mod tls;
