//! The errors of the std endpoint.

use std::sync::Arc;

use tlsro_proto::endpoint::Error as SessionError;
use tlsro_proto::frame::{CloseCode, RejectReason};

use crate::codec::CodecError;

/// Everything that can go wrong on an [`Endpoint`](crate::Endpoint). Cheap to clone: the same
/// error is reported by the status, by events and by every call after a failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The relay did not accept this endpoint's password proof. Retrying cannot help.
    #[error(
        "wrong password: the relay did not accept this endpoint's proof (use the password the \
         relay uses: its credentials directory's password file or TLSRO_PASSWORD)"
    )]
    WrongPassword,
    /// The relay's TLS certificate was refused (unknown CA, wrong host name, expired, …).
    #[error("the relay's certificate was rejected: {0}")]
    CertificateRejected(String),
    /// The relay could not prove that it knows the password: it is not the relay you meant, or
    /// the two sides have different passwords.
    #[error(
        "the relay could not prove it knows the password (wrong relay, or the relay has another password)"
    )]
    RelayNotAuthenticated,
    /// The relay could not be reached within the connect timeout.
    #[error("relay at {addr} unreachable: {reason}")]
    RelayUnreachable {
        /// The address dialled.
        addr: String,
        /// The last failure that says something about the relay (an attempt the deadline cut
        /// short says less than a refusal before it), with what to check.
        reason: String,
    },
    /// The relay refused a group this endpoint asked to join (not on its allow-list).
    #[error("the relay refused a group{}", detail_suffix(.0))]
    GroupRefused(String),
    /// A group this endpoint asked to join has reached its member limit.
    #[error("a group has reached its member limit{}", detail_suffix(.0))]
    GroupFull(String),
    /// The relay speaks another protocol version.
    #[error("the relay speaks another protocol version{}", detail_suffix(.0))]
    UnsupportedVersion(String),
    /// One side speaks TLS and the other does not.
    #[error("TLS mismatch: {0}")]
    TlsMismatch(String),
    /// What answered at the relay's address is not a tlsro relay: its first bytes are not a
    /// tlsro frame (another service on that port, say).
    #[error(
        "the peer at the relay's address does not speak tlsro: {0} (is this the relay's address \
         and port?)"
    )]
    NotARelay(String),
    /// The TLS handshake failed for another reason than the certificate.
    #[error("TLS handshake with the relay failed: {0}")]
    TlsHandshake(String),
    /// The configuration given to the builder is unusable (bad address, group name, CA file).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An object needs a larger frame than the relay accepts.
    #[error(
        "the object needs a {size}-byte frame, the relay accepts at most {max} bytes (its \
         max_object_size plus 1 KiB of framing)"
    )]
    FrameTooLarge {
        /// Size of the frame, prefix included.
        size: u64,
        /// The relay's limit (`Welcome.max_frame`).
        max: u32,
    },
    /// `notify` for a group this endpoint is not a member of.
    #[error("this endpoint is not a member of group {0:?} (notify is for members only)")]
    NotMember(String),
    /// Keeping this object for resend would exceed `max_buffered_bytes`.
    #[error(
        "send buffer full: {buffered} bytes wait for the relay's confirmation, \
         this object needs {size} more and the limit is {max}"
    )]
    BufferFull {
        /// Bytes of the frame that did not fit.
        size: usize,
        /// Bytes already waiting for confirmation.
        buffered: usize,
        /// The limit (`max_buffered_bytes`).
        max: usize,
    },
    /// The relay closed the connection.
    #[error("the relay closed the connection: {0}")]
    Closed(String),
    /// The endpoint was stopped.
    #[error("the endpoint was stopped")]
    Stopped,
    /// A bounded wait ran out (for example `stop` while publishes were unconfirmed).
    #[error("timed out")]
    Timeout,
    /// An object could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The relay broke the protocol, or the session refused an operation.
    #[error(transparent)]
    Protocol(SessionError),
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Rejected(code, detail) => {
                let detail = detail.as_str().to_owned();
                match code {
                    CloseCode::BadPassword => Error::WrongPassword,
                    CloseCode::GroupRefused => Error::GroupRefused(detail),
                    CloseCode::GroupFull => Error::GroupFull(detail),
                    CloseCode::UnsupportedVersion => Error::UnsupportedVersion(detail),
                    code => Error::Closed(format!("{code}{}", detail_suffix(&detail))),
                }
            }
            SessionError::Closed(code, detail) => {
                Error::Closed(format!("{code}{}", detail_suffix(&detail)))
            }
            SessionError::RelayProofInvalid => Error::RelayNotAuthenticated,
            SessionError::Stopped => Error::Stopped,
            SessionError::PayloadTooLarge { size, max } => Error::FrameTooLarge { size, max },
            // A frame too large *from the relay* is the relay's fault, not the object's.
            other => Error::Protocol(other),
        }
    }
}

impl Error {
    /// Whether retrying the connection cannot help: the password, the certificate, the
    /// relay's proof, a group or the protocol version is wrong, or the endpoint was stopped.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::WrongPassword
                | Error::CertificateRejected(_)
                | Error::RelayNotAuthenticated
                | Error::GroupRefused(_)
                | Error::GroupFull(_)
                | Error::UnsupportedVersion(_)
                | Error::InvalidConfig(_)
                | Error::Stopped
        )
    }
}

/// One group that refused a published object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The group.
    pub group: String,
    /// Why.
    pub reason: RejectReason,
}

/// Why a publish was not confirmed; returned by [`Receipt::wait`](crate::Receipt::wait).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The relay refused the object for these groups (it accepted it for the others).
    #[error("the relay refused the object for {}", describe(.0))]
    Rejected(Vec<Rejection>),
    /// The endpoint stopped or failed before the relay confirmed the object; it may or may not
    /// have reached the relay.
    #[error("not confirmed by the relay: {0}")]
    Unconfirmed(Error),
}

fn describe(rejections: &[Rejection]) -> String {
    rejections
        .iter()
        .map(|r| format!("group {:?} ({})", r.group, r.reason))
        .collect::<Vec<_>>()
        .join(", ")
}
