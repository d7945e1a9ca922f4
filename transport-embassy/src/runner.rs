//! The task that keeps the connection alive and moves the bytes.
//!
//! See [`Runner`] for how one connection carries reads and writes at once.

use core::cell::RefCell;
use core::future::poll_fn;
use core::task::Poll;

use embassy_futures::select::{Either, select};
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpEndpoint, Stack};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_time::{Duration, Timer, with_timeout};
use embedded_io_async::{ErrorType, Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, FlushPolicy, NoClock, TlsConfig, TlsConnection,
    TlsContext, TlsError, TlsReader, TlsVerifier, TlsWriter,
};
use rand_core::{CryptoRng, RngCore};

use crate::config::Link;
use crate::state::{State, Status, Step};
use crate::{Error, Security, now};

/// The size of the writer's staging buffer: control frames are encoded into it, publishes are
/// copied through it in pieces. The `Hello` of the endpoint's groups must fit.
pub(crate) const STAGE: usize = 512;

/// Room for the relay's certificate chain kept by the verifier during the handshake.
const CERT_CHAIN_MAX: usize = 1536;

/// The ALPN protocols offered: the normal one, or the one asking for small records.
const ALPN_PROTOCOLS: &[&[u8]] = &[tlsro_proto::ALPN];
const ALPN_SMALL_RECORDS: &[&[u8]] = &[tlsro_proto::ALPN_SMALL_RECORDS];

/// The task that connects, authenticates, moves bytes, and reconnects. Spawn a task that calls
/// [`run`](Self::run).
///
/// # One connection, reads and writes at once
///
/// `TlsConnection` cannot be split over an embassy `TcpSocket` directly (its `split` needs a
/// cloneable socket), and its `read` is not cancel-safe: it keeps a partly read record header
/// on its stack, so dropping a `read` future in a `select` can lose bytes of the stream. The
/// runner therefore never cancels a read or a write in flight. It splits the TCP socket into
/// its reader and writer halves, wraps them in a small copyable handle that borrows each half
/// through its own `RefCell` (only the TLS reader ever reads, only the TLS writer ever writes),
/// splits the TLS connection over that handle, and runs a read loop and a write
/// loop side by side in one task (`select` of two futures that each live as long as the
/// connection). The write loop waits on a wake flag and the session's timer, both of which are
/// safe to abandon; the read loop only ever waits in `read`. The two are dropped together only
/// when the connection is over.
pub struct Runner<'a, M: RawMutex, R> {
    pub(crate) state: &'a State<'a, M>,
    pub(crate) stack: Stack<'a>,
    pub(crate) relay: IpEndpoint,
    pub(crate) security: Security<'a>,
    pub(crate) socket_rx: &'a mut [u8],
    pub(crate) socket_tx: &'a mut [u8],
    pub(crate) tls_read: &'a mut [u8],
    pub(crate) tls_write: &'a mut [u8],
    pub(crate) frame: &'a mut [u8],
    pub(crate) rng: R,
    pub(crate) handshake_timeout: Duration,
    pub(crate) dead_after: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// How a connection that did not fail ended.
enum Ended {
    /// The graceful stop finished.
    Stopped,
}

impl<M: RawMutex, R: RngCore + CryptoRng> Runner<'_, M, R> {
    /// Keeps the endpoint connected: dials the relay, secures the link, authenticates, then
    /// moves objects both ways; after a failure it waits (exponential backoff with jitter) and
    /// tries again, rejoining the groups, granting the outstanding credit again and resending
    /// unconfirmed publishes.
    ///
    /// Returns only when the endpoint can do no more: [`Error::Stopped`] after
    /// [`Endpoint::stop`](crate::Endpoint::stop), or a permanent error (wrong password,
    /// certificate rejected, group refused, …), which every `Endpoint` call then returns too.
    ///
    /// Cancelling this future (dropping it) is safe: the connection is dropped with it, and
    /// calling `run` again starts a new one.
    pub async fn run(&mut self) -> Error {
        // A previous `run` that was cancelled mid-connection left that connection behind.
        self.state.with(|i| {
            if i.live.is_some() {
                i.end_connection();
            }
        });
        let mut backoff = self.backoff_min;
        loop {
            let stop = self.state.with(|i| {
                if i.fatal.is_none() && i.stop_requested {
                    // Stopped while no connection is up: nothing can be flushed.
                    i.fail(Error::Stopped);
                }
                i.fatal
            });
            if let Some(e) = stop {
                return e;
            }
            self.stack.wait_config_up().await;
            let result = self.connect_once().await;
            let welcomed = self.state.with(|i| i.end_connection());
            let error = match result {
                Ok(Ended::Stopped) => Error::Stopped,
                Err(e) => e,
            };
            if error.is_permanent() {
                if error == Error::Stopped {
                    info!("tlsro: stopped");
                } else {
                    error!("tlsro: giving up: {}", error);
                }
                self.state.with(|i| i.fail(error));
                return error;
            }
            if welcomed {
                backoff = self.backoff_min;
            }
            self.state.with(|i| i.set_status(Status::Retrying(error)));
            let wait = jittered_ms(backoff, self.rng.next_u32());
            warn!(
                "tlsro: connection to {} failed: {}; retrying in {} ms",
                self.relay, error, wait
            );
            // `Endpoint::stop` cuts the wait short.
            let stop = poll_fn(|cx| {
                self.state.with(|i| {
                    if i.stop_requested {
                        Poll::Ready(())
                    } else {
                        i.runner_waker.register(cx.waker());
                        Poll::Pending
                    }
                })
            });
            select(Timer::after_millis(wait), stop).await;
            backoff = doubled(backoff, self.backoff_max);
        }
    }

    async fn connect_once(&mut self) -> Result<Ended, Error> {
        let mut socket = TcpSocket::new(self.stack, &mut *self.socket_rx, &mut *self.socket_tx);
        socket.set_nagle_enabled(false);
        // Data not acknowledged for this long ends the connection (the relay is gone).
        socket.set_timeout(Some(self.dead_after));
        debug!("tlsro: dialling {}", self.relay);
        let connected = with_timeout(self.handshake_timeout, socket.connect(self.relay)).await;
        let result = match connected {
            Ok(Ok(())) => {
                let (reader, writer) = socket.split();
                let (reader, writer) = (RefCell::new(reader), RefCell::new(writer));
                let link = SharedSocket {
                    reader: &reader,
                    writer: &writer,
                };
                let session = Session {
                    state: self.state,
                    frame: &mut *self.frame,
                };
                let alpn = if self.security.small_records() {
                    ALPN_SMALL_RECORDS
                } else {
                    ALPN_PROTOCOLS
                };
                let tls = match self.security.link {
                    Link::Plain => None,
                    Link::Tls {
                        ca_der,
                        server_name,
                    } => Some((server_name, Some(ca_der))),
                    Link::TlsUnverified { server_name } => Some((server_name, None)),
                };
                match tls {
                    None => {
                        let nonce = nonce(&mut self.rng);
                        let reader: ConnReader<'_, '_, '_> = PlainOrTls::Plain(link);
                        let writer: ConnWriter<'_, '_, '_> = PlainOrTls::Plain(link);
                        session.drive(nonce, reader, writer).await
                    }
                    Some((server_name, ca_der)) => {
                        // One provider type for both TLS modes, so that embedded-tls's handshake
                        // is compiled once (it is the largest piece of code in a firmware).
                        // Without a CA (only `dangerous_tls_without_verification`) it has no
                        // verifier, which embedded-tls takes as "skip verification".
                        let provider = Provider {
                            rng: &mut self.rng,
                            verifier: ca_der.map(|ca| CertVerifier::new(Certificate::X509(ca))),
                        };
                        let tls = TlsLink {
                            read: &mut *self.tls_read,
                            write: &mut *self.tls_write,
                            server_name,
                            alpn,
                            timeout: self.handshake_timeout,
                        };
                        tls.drive(link, provider, session).await
                    }
                }
            }
            Ok(Err(e)) => {
                debug!("tlsro: connect failed: {:?}", e);
                Err(Error::RelayUnreachable)
            }
            Err(_) => Err(Error::RelayUnreachable),
        };
        match result {
            Ok(Ended::Stopped) => socket.close(),
            Err(_) => socket.abort(),
        }
        // Let the FIN or RST leave before the socket is dropped.
        let _ = with_timeout(Duration::from_millis(500), socket.flush()).await;
        result
    }
}

/// A fresh nonce for a connection.
fn nonce(rng: &mut impl RngCore) -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    nonce
}

/// The TLS layer of one connection attempt.
struct TlsLink<'t> {
    read: &'t mut [u8],
    write: &'t mut [u8],
    server_name: &'t str,
    alpn: &'static [&'static [u8]],
    timeout: Duration,
}

impl TlsLink<'_> {
    async fn drive<M: RawMutex, P>(
        self,
        link: SharedSocket<'_, '_>,
        mut provider: P,
        session: Session<'_, '_, M>,
    ) -> Result<Ended, Error>
    where
        P: CryptoProvider<CipherSuite = Aes128GcmSha256>,
    {
        let mut tls: TlsConnection<'_, _, Aes128GcmSha256> =
            TlsConnection::new(link, self.read, self.write);
        // Never wait for the relay's TCP acknowledgements after a record: a record is in the
        // socket's buffer once written, and smoltcp sends it.
        tls.set_flush_policy(FlushPolicy::Relaxed);
        let config = TlsConfig::new()
            .with_server_name(self.server_name)
            .with_alpn(self.alpn);
        let mut rng_nonce = [0u8; 32];
        provider.rng().fill_bytes(&mut rng_nonce);
        match with_timeout(self.timeout, tls.open(TlsContext::new(&config, provider))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!("tlsro: TLS handshake failed: {:?}", e);
                return Err(Error::from_tls_handshake(e));
            }
            Err(_) => return Err(Error::HandshakeTimeout),
        }
        let (reader, writer) = tls.split();
        let reader: ConnReader<'_, '_, '_> = PlainOrTls::Tls(reader);
        let writer: ConnWriter<'_, '_, '_> = PlainOrTls::Tls(writer);
        session.drive(rng_nonce, reader, writer).await
    }
}

/// The reading or the writing half of a connection, plain TCP or TLS: one type for both modes,
/// so that the session's read and write loops are compiled once (1 KiB less flash in a
/// firmware that never uses plain mode).
enum PlainOrTls<P, T> {
    Plain(P),
    Tls(T),
}

/// The reading half of a connection.
type ConnReader<'t, 'r, 's> =
    PlainOrTls<SharedSocket<'r, 's>, TlsReader<'t, SharedSocket<'r, 's>, Aes128GcmSha256>>;

/// The writing half of a connection.
type ConnWriter<'t, 'r, 's> =
    PlainOrTls<SharedSocket<'r, 's>, TlsWriter<'t, SharedSocket<'r, 's>, Aes128GcmSha256>>;

/// An error of either kind of half, already translated into the endpoint's error.
#[derive(Debug)]
struct HalfError(Error);

impl core::fmt::Display for HalfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.0, f)
    }
}

impl core::error::Error for HalfError {}

impl embedded_io_async::Error for HalfError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        embedded_io_async::ErrorKind::Other
    }
}

impl From<HalfError> for Error {
    fn from(e: HalfError) -> Self {
        e.0
    }
}

impl<P, T> ErrorType for PlainOrTls<P, T> {
    type Error = HalfError;
}

impl<P: Read, T: Read> Read for PlainOrTls<P, T>
where
    Error: From<P::Error> + From<T::Error>,
{
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, HalfError> {
        match self {
            PlainOrTls::Plain(p) => p.read(buf).await.map_err(|e| HalfError(e.into())),
            PlainOrTls::Tls(t) => t.read(buf).await.map_err(|e| HalfError(e.into())),
        }
    }
}

impl<P: Write, T: Write> Write for PlainOrTls<P, T>
where
    Error: From<P::Error> + From<T::Error>,
{
    async fn write(&mut self, buf: &[u8]) -> Result<usize, HalfError> {
        match self {
            PlainOrTls::Plain(p) => p.write(buf).await.map_err(|e| HalfError(e.into())),
            PlainOrTls::Tls(t) => t.write(buf).await.map_err(|e| HalfError(e.into())),
        }
    }

    async fn flush(&mut self) -> Result<(), HalfError> {
        match self {
            PlainOrTls::Plain(p) => p.flush().await.map_err(|e| HalfError(e.into())),
            PlainOrTls::Tls(t) => t.flush().await.map_err(|e| HalfError(e.into())),
        }
    }
}

/// The crypto provider: the runner's RNG and embedded-tls's `rustpki` verifier holding the CA,
/// or no verifier at all for `Security::dangerous_tls_without_verification` (embedded-tls then
/// skips the certificate and signature checks).
struct Provider<'v, R> {
    rng: &'v mut R,
    verifier: Option<CertVerifier<'v, Aes128GcmSha256, NoClock, CERT_CHAIN_MAX>>,
}

impl<R: RngCore + CryptoRng> CryptoProvider for Provider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut *self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        self.verifier.as_mut().ok_or(TlsError::Unimplemented)
    }
}

/// One connection of the protocol session, over any reader and writer.
struct Session<'s, 'a, M: RawMutex> {
    state: &'a State<'a, M>,
    frame: &'s mut [u8],
}

impl<M: RawMutex> Session<'_, '_, M> {
    async fn drive<Rd, Wr>(
        self,
        nonce: [u8; 32],
        mut reader: Rd,
        mut writer: Wr,
    ) -> Result<Ended, Error>
    where
        Rd: Read,
        Wr: Write,
        Error: From<Rd::Error> + From<Wr::Error>,
    {
        let state = self.state;
        state.with(|i| i.start_connection(now(), nonce))?;
        let read = read_loop(state, &mut reader, self.frame);
        let write = write_loop(state, &mut writer);
        match select(read, write).await {
            Either::First(r) | Either::Second(r) => r,
        }
    }
}

async fn read_loop<M: RawMutex, Rd>(
    state: &State<'_, M>,
    reader: &mut Rd,
    buf: &mut [u8],
) -> Result<Ended, Error>
where
    Rd: Read,
    Error: From<Rd::Error>,
{
    let mut filled = 0usize;
    loop {
        loop {
            match state.with(|i| i.take_frame(now(), &buf[..filled]))? {
                Step::NeedMore => break,
                Step::Consumed(n, stopped) => {
                    buf.copy_within(n..filled, 0);
                    filled -= n;
                    if stopped {
                        return Ok(Ended::Stopped);
                    }
                }
                Step::NoRoom => {
                    poll_fn(|cx| {
                        state.with(|i| {
                            if core::mem::take(&mut i.room_freed) {
                                Poll::Ready(())
                            } else {
                                i.reader_waker.register(cx.waker());
                                Poll::Pending
                            }
                        })
                    })
                    .await
                }
            }
        }
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(Error::ConnectionLost);
        }
        filled += n;
    }
}

async fn write_loop<M: RawMutex, Wr>(state: &State<'_, M>, writer: &mut Wr) -> Result<Ended, Error>
where
    Wr: Write,
    Error: From<Wr::Error>,
{
    let mut stage = [0u8; STAGE];
    let mut unflushed = false;
    loop {
        let n = state.with(|i| {
            i.tx_wake = false;
            i.next_output(&mut stage)
        })?;
        if n > 0 {
            writer.write_all(&stage[..n]).await?;
            unflushed = true;
            continue;
        }
        if unflushed {
            // One TLS record (or nothing, in plain mode) for everything written in a row.
            writer.flush().await?;
            unflushed = false;
            continue;
        }
        // Nothing to send: sleep until woken or until the session's next timer. While the
        // reader is paused (inbox full) the relay's silence is not its fault: no timers.
        let deadline = state.with(|i| {
            if i.paused {
                None
            } else {
                i.session.poll_timeout()
            }
        });
        let wake = poll_fn(|cx| {
            state.with(|i| {
                if i.tx_wake {
                    Poll::Ready(())
                } else {
                    i.runner_waker.register(cx.waker());
                    Poll::Pending
                }
            })
        });
        let timer_fired = match deadline {
            Some(t) => {
                let at = embassy_time::Instant::from_millis(t.as_millis());
                matches!(select(wake, Timer::at(at)).await, Either::Second(()))
            }
            None => {
                wake.await;
                false
            }
        };
        if timer_fired {
            state.with(|i| i.session.handle_timeout(now()));
        }
    }
}

/// A copyable handle to the two halves of one TCP socket, so that embedded-tls can split a
/// connection over it. Only the TLS reader reads and only the TLS writer writes, so each
/// `RefCell` has one user at a time; a second one gets an error, not a panic.
#[derive(Clone, Copy)]
struct SharedSocket<'r, 's> {
    reader: &'r RefCell<embassy_net::tcp::TcpReader<'s>>,
    writer: &'r RefCell<embassy_net::tcp::TcpWriter<'s>>,
}

/// An error of the TCP link.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum LinkError {
    Tcp(embassy_net::tcp::Error),
    Busy,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinkError::Tcp(e) => write!(f, "TCP error: {e:?}"),
            LinkError::Busy => f.write_str("socket half already in use"),
        }
    }
}

impl core::error::Error for LinkError {}

impl embedded_io_async::Error for LinkError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        match self {
            LinkError::Tcp(e) => embedded_io_async::Error::kind(e),
            LinkError::Busy => embedded_io_async::ErrorKind::Other,
        }
    }
}

impl ErrorType for SharedSocket<'_, '_> {
    type Error = LinkError;
}

// Holding the borrow across the `.await` is the point: it is what makes the half exclusive to
// its one user while an operation is in flight; a second user gets `Busy`, never a panic.
#[allow(clippy::await_holding_refcell_ref)]
impl Read for SharedSocket<'_, '_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        let mut reader = self.reader.try_borrow_mut().map_err(|_| LinkError::Busy)?;
        reader.read(buf).await.map_err(LinkError::Tcp)
    }
}

#[allow(clippy::await_holding_refcell_ref)]
impl Write for SharedSocket<'_, '_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, LinkError> {
        let mut writer = self.writer.try_borrow_mut().map_err(|_| LinkError::Busy)?;
        writer.write(buf).await.map_err(LinkError::Tcp)
    }

    /// Written bytes are in the socket's buffer and smoltcp sends them; waiting for the peer's
    /// acknowledgement (what `TcpWriter::flush` does) would cost a round trip per batch.
    async fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

impl From<LinkError> for Error {
    fn from(e: LinkError) -> Self {
        debug!("tlsro: link error: {:?}", e);
        Error::ConnectionLost
    }
}

impl From<TlsError> for Error {
    /// A TLS error after the handshake: the connection is lost, never a certificate problem.
    fn from(e: TlsError) -> Self {
        warn!("tlsro: TLS error: {:?}", e);
        match e {
            TlsError::ConnectionClosed | TlsError::IoError | TlsError::Io(_) => {
                Error::ConnectionLost
            }
            _ => Error::Tls,
        }
    }
}

/// The wait before a reconnect, in ms, with equal jitter: half of `backoff`, plus the share
/// `random` picks of the other half (so between `backoff / 2` and `backoff`, never 0).
fn jittered_ms(backoff: Duration, random: u32) -> u64 {
    let ms = backoff.as_millis().max(2);
    ms / 2 + u64::from(random) % (ms / 2 + 1)
}

/// The next backoff: twice this one, at most `max`.
fn doubled(backoff: Duration, max: Duration) -> Duration {
    Duration::from_millis((backoff.as_millis() * 2).min(max.as_millis()))
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let max = Duration::from_secs(30);
        let mut b = Duration::from_millis(250);
        let mut seen = [0u64; 10];
        for s in &mut seen {
            *s = b.as_millis();
            b = doubled(b, max);
        }
        assert_eq!(
            seen,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_stays_within_half_to_whole_and_varies() {
        let b = Duration::from_millis(1000);
        let waits = [0, 1, 250, 499, 500, 501, u32::MAX].map(|r| jittered_ms(b, r));
        assert!(waits.iter().all(|w| (500..=1000).contains(w)), "{waits:?}");
        assert_eq!(jittered_ms(b, 0), 500);
        assert_eq!(jittered_ms(b, 500), 1000);
        assert!(waits.windows(2).any(|w| w[0] != w[1]));
        // A zero backoff still waits a little, never spinning.
        assert!(jittered_ms(Duration::from_millis(0), 7) >= 1);
    }
}
