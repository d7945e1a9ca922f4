//! Opening a connection to the relay: TCP (Nagle off), then TLS unless plain mode was asked for,
//! with every failure sorted by whether retrying can heal it.

use std::io;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, lookup_host};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// A tokio byte stream, TLS or plain.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for S {}

/// The connection to the relay as the driver sees it: `embedded_io_async::{Read, Write}`, the
/// transport traits the embassy endpoint drives its session through too (there over
/// embedded-tls on an embassy-net socket, here over tokio-rustls or a plain `TcpStream`).
///
/// Cancel safety: `read` and `write` are tokio's `poll_read` / `poll_write` behind a future;
/// dropping one that has not completed loses nothing (no byte was taken or written), so the
/// driver may race a read against its timers in `select!`.
pub(crate) struct Stream(Box<dyn Io>);

impl Stream {
    pub(crate) fn new(io: Box<dyn Io>) -> Self {
        Stream(io)
    }
}

impl embedded_io_async::ErrorType for Stream {
    type Error = io::Error;
}

impl embedded_io_async::Read for Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::io::AsyncReadExt::read(&mut self.0, buf).await
    }
}

impl embedded_io_async::Write for Stream {
    async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        tokio::io::AsyncWriteExt::write(&mut self.0, buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        tokio::io::AsyncWriteExt::flush(&mut self.0).await
    }
}

/// What a plain endpoint reports when TLS bytes arrive where a frame was expected.
pub(crate) const RELAY_SPEAKS_TLS: &str = "this endpoint uses plain TCP but the relay answered \
     with TLS: connect with TLS (Security::Tls), or run the relay in plain mode (--plain)";

/// What a TLS endpoint reports when the peer does not complete a TLS handshake.
const RELAY_SPEAKS_PLAIN: &str = "this endpoint uses TLS but the relay does not answer with \
     TLS: it probably runs in plain mode (--plain); connect with Security::Plain, or run the \
     relay with TLS (or no tlsro relay listens there: check the address and port)";

/// How the transport is secured, resolved from the builder's settings.
#[derive(Clone)]
pub(crate) enum Link {
    /// Plain TCP.
    Plain,
    /// TLS with this configuration and server name.
    Tls {
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    },
}

impl Link {
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Link::Plain)
    }
}

/// Whether a failed attempt is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heal {
    /// Retrying cannot help (password, certificate, relay proof, group, version).
    Never,
    /// The peer does not speak what we speak (TLS mismatch, garbage): the first connect fails
    /// fast, a reconnect keeps trying (a relay being replaced may answer oddly for a moment).
    NotOnFirstConnect,
    /// Unreachable, reset, timed out, closed: retry with backoff.
    Retry,
}

/// A failed connection attempt or a lost connection.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) heal: Heal,
    /// The connect deadline cut this attempt short (dialing, or in a handshake): that says only
    /// that time ran out (on a busy machine an attempt can start just before the deadline), so
    /// an earlier attempt's failure (a refused connection, a relay at its connection limit) is
    /// the better thing to report, unless this attempt got further.
    pub(crate) ran_out_of_time: bool,
}

impl Failure {
    pub(crate) fn new(error: Error, heal: Heal) -> Self {
        Failure {
            error,
            heal,
            ran_out_of_time: false,
        }
    }

    pub(crate) fn retry(error: Error) -> Self {
        Failure::new(error, Heal::Retry)
    }

    /// An attempt the connect deadline cut short (retried if time is left).
    pub(crate) fn out_of_time(error: Error) -> Self {
        Failure {
            ran_out_of_time: true,
            ..Failure::retry(error)
        }
    }
}

/// Whether `error` is [`open`]'s failure to resolve the relay's host name.
pub(crate) fn is_unresolved(error: &Error) -> bool {
    matches!(error, Error::Io(e) if e.kind() == io::ErrorKind::NotFound)
}

/// Dials `addr` and secures the connection, all before `deadline`.
pub(crate) async fn open(addr: &str, link: &Link, deadline: Instant) -> Result<Stream, Failure> {
    // Resolved first, so that a host name nobody knows is told apart from a relay that is not
    // there (both would otherwise be "unreachable").
    let resolved = match timeout_at(deadline, lookup_host(addr)).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => {
            let error = io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve {addr}: {e}"),
            );
            return Err(Failure::retry(Error::Io(Arc::new(error))));
        }
        Err(_) => {
            let error = io::Error::new(io::ErrorKind::TimedOut, "resolving the host timed out");
            return Err(Failure::out_of_time(Error::Io(Arc::new(error))));
        }
    };
    let tcp = match timeout_at(deadline, TcpStream::connect(&resolved[..])).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(Failure::retry(e.into())),
        Err(_) => {
            let error = Error::Io(Arc::new(io::Error::new(
                io::ErrorKind::TimedOut,
                "TCP connect timed out",
            )));
            return Err(Failure::out_of_time(error));
        }
    };
    tcp.set_nodelay(true)
        .map_err(|e| Failure::retry(e.into()))?;
    match link {
        Link::Plain => Ok(Stream::new(Box::new(tcp))),
        Link::Tls { config, name } => {
            let connector = TlsConnector::from(config.clone());
            match timeout_at(deadline, connector.connect(name.clone(), tcp)).await {
                Ok(Ok(tls)) => Ok(Stream::new(Box::new(tls))),
                Ok(Err(e)) => Err(tls_failure(e)),
                Err(_) => Err(Failure::out_of_time(Error::TlsHandshake(
                    "the TLS handshake timed out".to_owned(),
                ))),
            }
        }
    }
}

/// Sorts a failed TLS handshake: a refused certificate is final; a peer that answers with
/// something other than TLS (or hangs up mid-handshake) is most likely a plain relay.
fn tls_failure(e: io::Error) -> Failure {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert)) => Failure::new(
            Error::CertificateRejected(explain_certificate(cert)),
            Heal::Never,
        ),
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => Failure::new(
            Error::TlsMismatch(format!("{RELAY_SPEAKS_PLAIN} [{e}]")),
            Heal::NotOnFirstConnect,
        ),
        Some(other) => Failure::new(
            Error::TlsHandshake(other.to_string()),
            Heal::NotOnFirstConnect,
        ),
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Failure::new(
                Error::TlsMismatch(format!(
                    "{RELAY_SPEAKS_PLAIN} [the relay hung up during the TLS handshake: {e}]"
                )),
                Heal::NotOnFirstConnect,
            ),
            _ => Failure::retry(e.into()),
        },
    }
}

/// Says what a refused certificate means for the person who has to fix it.
fn explain_certificate(cert: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match cert {
        E::BadSignature | E::UnknownIssuer => format!(
            "{cert:?}: the relay's certificate is not signed by the CA this endpoint trusts; \
             copy ca.pem from the relay's credentials directory and compare the fingerprints \
             (`tlsro-relay credentials show`)"
        ),
        E::NotValidForName | E::NotValidForNameContext { .. } => format!(
            "{cert}; connect with a name the certificate carries (server_name), or generate the \
             relay's certificate for this name (`tlsro-relay credentials generate --hostname \
             NAME --ip ADDR`)"
        ),
        E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. } => {
            format!("{cert}; check both clocks, or generate new credentials")
        }
        other => other.to_string(),
    }
}

/// Whether `bytes` (the first bytes received where a frame was expected) start a TLS record:
/// an alert (0x15) or handshake (0x16) record of protocol version 3.x. A frame that starts this
/// way would announce more than 350 MB.
pub(crate) fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

/// Splits `"host:port"` (or `"[v6]:port"`) and returns the host part.
pub(crate) fn host_of(addr: &str) -> Result<&str, Error> {
    let bad = || {
        Error::InvalidConfig(format!(
            "relay address {addr:?} is not \"host:port\" (IPv6: \"[addr]:port\")"
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        assert_eq!(host_of("localhost:4000").unwrap(), "localhost");
        assert_eq!(host_of("10.0.0.1:1").unwrap(), "10.0.0.1");
        assert_eq!(host_of("[::1]:4000").unwrap(), "[::1]");
        for bad in ["localhost", ":4000", "host:port", "::1:4000", "host:70000"] {
            assert!(
                matches!(host_of(bad), Err(Error::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn tls_records_are_recognised() {
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls(&[0x00, 0x00, 0x00, 0x24, 0x02]));
        assert!(!looks_like_tls(&[0x15]));
    }

    /// Only a deadline that runs out while dialing is marked as saying nothing about the relay
    /// (the first connect then reports an earlier attempt's reason).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn running_out_dialing_is_marked() {
        use std::time::Duration;
        // A listener that never accepts, with its queue full: Linux drops further SYNs, so a
        // connect hangs until the deadline.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        let cut = loop {
            let deadline = Instant::now() + Duration::from_millis(300);
            match open(&addr.to_string(), &Link::Plain, deadline).await {
                Ok(stream) => queued.push(stream),
                Err(failure) => break failure,
            }
            assert!(queued.len() < 16, "the listener's queue never filled");
        };
        assert!(cut.ran_out_of_time, "{}", cut.error);
        assert!(cut.error.to_string().contains("TCP connect timed out"));
        drop((queued, listener));

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let deadline = Instant::now() + Duration::from_secs(10);
        let Err(refused) = open(&addr, &Link::Plain, deadline).await else {
            panic!("connected to a closed port");
        };
        assert!(!refused.ran_out_of_time, "{}", refused.error);
    }
}
