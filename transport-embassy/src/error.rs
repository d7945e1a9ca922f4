//! The one error type of the embassy endpoint: small, `Copy`, readable.

use core::fmt;

use tlsro_proto::endpoint::Error as SessionError;
use tlsro_proto::frame::{CloseCode, FrameError, RejectReason};

/// Everything that can go wrong. The same meanings as on the std endpoint.
///
/// [`is_permanent`](Error::is_permanent) tells whether retrying can help: after a permanent error
/// the [`Runner`](crate::Runner) stops and every [`Endpoint`](crate::Endpoint) call returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The relay did not accept this endpoint's password proof. Permanent.
    WrongPassword,
    /// The relay could not prove it knows the password: it is not our relay, or the password
    /// differs. Permanent.
    RelayNotAuthenticated,
    /// The relay's TLS certificate did not verify against the CA, or does not name the server
    /// name given to [`Security::tls`](crate::Security::tls). Permanent.
    CertificateRejected,
    /// The relay refused one of this endpoint's groups (not on its allow-list). Permanent.
    GroupRefused,
    /// One of this endpoint's groups has reached its member limit on the relay. Permanent.
    GroupFull,
    /// The relay speaks another protocol version. Permanent.
    UnsupportedVersion,
    /// The TCP connection to the relay could not be made (no route, refused, timed out).
    RelayUnreachable,
    /// TLS failed for a reason other than the certificate: the relay closed the handshake (is
    /// it in plain mode?) or the TLS parameters do not match; embedded-tls's own error is
    /// logged. Retried.
    Tls,
    /// A plain-TCP endpoint got TLS bytes back: the relay expects TLS on this port (use
    /// [`Security::tls`](crate::Security::tls), or start the relay with `--plain`). Retried.
    RelayExpectsTls,
    /// The connection broke (reset, closed by the peer, TLS record error).
    ConnectionLost,
    /// The relay closed the connection with a code after which reconnecting may help (shutting
    /// down, slow consumer, idle, session taken over…).
    Closed(CloseCode),
    /// The handshake with the relay did not finish in time.
    HandshakeTimeout,
    /// Nothing was heard from the relay for too long.
    RelaySilent,
    /// The relay sent something the protocol does not allow.
    Protocol,
    /// A frame does not fit: an object larger than the outbox or than the relay accepts, or a
    /// frame from the relay larger than this endpoint's buffers.
    FrameTooLarge,
    /// A buffer given by the caller is too small; `needed` bytes would do. Nothing was lost:
    /// call again with a larger buffer.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// `try_broadcast` / `try_produce`: the outbox has no room until the relay confirms more.
    OutboxFull,
    /// This endpoint is not a member of that group (credit is for members only).
    NotMember,
    /// A group name is empty or longer than 64 bytes.
    BadGroupName,
    /// More than 16 groups.
    TooManyGroups,
    /// A publish needs at least one group.
    NoGroup,
    /// A TLS server name must be a DNS name (embedded-tls never matches IP addresses).
    ServerNameNotDns,
    /// A PEM file holds no certificate, or its base64 is malformed.
    BadPem,
    /// An object could not be serialized with postcard.
    Encode,
    /// A received payload could not be deserialized with postcard as the type asked for.
    Decode,
    /// The endpoint was stopped.
    Stopped,
}

impl Error {
    /// Whether reconnecting cannot help.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Error::WrongPassword
                | Error::RelayNotAuthenticated
                | Error::CertificateRejected
                | Error::GroupRefused
                | Error::GroupFull
                | Error::UnsupportedVersion
                | Error::Stopped
        )
    }

    pub(crate) fn from_close(code: CloseCode) -> Self {
        match code {
            CloseCode::BadPassword => Error::WrongPassword,
            CloseCode::GroupRefused => Error::GroupRefused,
            CloseCode::GroupFull => Error::GroupFull,
            CloseCode::UnsupportedVersion => Error::UnsupportedVersion,
            CloseCode::FrameTooLarge => Error::FrameTooLarge,
            other => Error::Closed(other),
        }
    }

    /// A failed TLS handshake: verification failures are the certificate's fault.
    pub(crate) fn from_tls_handshake(e: embedded_tls::TlsError) -> Self {
        use embedded_tls::TlsError as T;
        match e {
            T::InvalidCertificate
            | T::InvalidCertificateEntry
            | T::InvalidSignature
            | T::InvalidSignatureScheme
            | T::DecodeError => Error::CertificateRejected,
            // Closed in the middle of the handshake: most often a plain-mode relay.
            _ => Error::Tls,
        }
    }
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Frame(FrameError::TooLarge { .. }) => Error::FrameTooLarge,
            SessionError::Frame(FrameError::BufferTooSmall { needed }) => {
                Error::BufferTooSmall { needed }
            }
            SessionError::Frame(_)
            | SessionError::Unexpected(_)
            | SessionError::AckUnknown { .. }
            | SessionError::RelayAhead { .. }
            | SessionError::SessionReused { .. } => Error::Protocol,
            SessionError::RelayProofInvalid => Error::RelayNotAuthenticated,
            SessionError::Rejected(code, _) | SessionError::Closed(code, _) => {
                Error::from_close(code)
            }
            SessionError::HandshakeTimeout => Error::HandshakeTimeout,
            SessionError::RelaySilent => Error::RelaySilent,
            SessionError::NotMember => Error::NotMember,
            SessionError::TooManyGroups => Error::TooManyGroups,
            SessionError::BadGroupName => Error::BadGroupName,
            SessionError::NoGroup => Error::NoGroup,
            SessionError::PayloadTooLarge { .. } => Error::FrameTooLarge,
            SessionError::NotConnected => Error::ConnectionLost,
            SessionError::Stopped => Error::Stopped,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongPassword => {
                f.write_str("wrong password: the relay did not accept this endpoint's proof")
            }
            Error::RelayNotAuthenticated => f.write_str(
                "the relay could not prove it knows the password (wrong relay or wrong password)",
            ),
            Error::CertificateRejected => f.write_str(
                "the relay's certificate was rejected (wrong CA, or the server name is not in it)",
            ),
            Error::GroupRefused => f.write_str("group refused by the relay"),
            Error::GroupFull => f.write_str("group has reached its member limit"),
            Error::UnsupportedVersion => f.write_str("the relay speaks another protocol version"),
            Error::RelayUnreachable => f.write_str("the relay is unreachable"),
            Error::Tls => f.write_str("TLS failed (is the relay in plain mode?)"),
            Error::RelayExpectsTls => f.write_str(
                "the relay answered with TLS: it expects TLS on this port (use Security::tls, or run the relay with --plain)",
            ),
            Error::ConnectionLost => f.write_str("the connection to the relay was lost"),
            Error::Closed(code) => write!(f, "the relay closed the connection: {code}"),
            Error::HandshakeTimeout => f.write_str("the handshake with the relay timed out"),
            Error::RelaySilent => f.write_str("nothing heard from the relay for too long"),
            Error::Protocol => f.write_str("the relay broke the protocol"),
            Error::FrameTooLarge => f.write_str("frame too large for the buffers or the relay"),
            Error::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} bytes needed")
            }
            Error::OutboxFull => f.write_str("the outbox is full until the relay confirms more"),
            Error::NotMember => f.write_str("this endpoint is not a member of that group"),
            Error::BadGroupName => f.write_str("group name is empty or longer than 64 bytes"),
            Error::TooManyGroups => f.write_str("more than 16 groups"),
            Error::NoGroup => f.write_str("a publish needs at least one group"),
            Error::ServerNameNotDns => {
                f.write_str("the TLS server name must be a DNS name, not an IP address")
            }
            Error::BadPem => f.write_str("no certificate in the PEM text, or malformed base64"),
            Error::Encode => f.write_str("the object could not be serialized"),
            Error::Decode => f.write_str("the payload could not be deserialized"),
            Error::Stopped => f.write_str("the endpoint was stopped"),
        }
    }
}

impl core::error::Error for Error {}

/// A publish the relay refused for one of its groups (see
/// [`Endpoint::next_rejection`](crate::Endpoint::next_rejection)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rejection {
    /// The sequence number the publish call returned.
    pub seq: u64,
    /// Why.
    pub reason: RejectReason,
}
