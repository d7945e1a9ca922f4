//! The relay server: sockets, TLS and timers around [`tlsro_proto::relay::RelayState`].
//!
//! One task (the *core*) owns the relay state and is the only place where protocol decisions
//! are made. Each connection has a reader task (socket → core, through a bounded channel, so a
//! flooding endpoint is slowed down rather than buffered without limit) and a writer task (core →
//! socket). The writer coalesces whatever chunks are waiting into as few writes as possible and
//! reports the bytes written back to the core, which is how the slow-consumer rule sees a
//! backlog.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tlsro::busy_poll::{BusyPoll, BusyPollError};
use tlsro_proto::frame::{CloseCode, FrameError};
use tlsro_proto::relay::{
    Chunk, ConnId, RelayConfig, RelayEvent, RelayState, RelayStats, SharedBytes,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the core runs the relay's timers (handshake deadlines, idle endpoints).
const TICK: Duration = Duration::from_millis(100);

/// How long a closing connection's last bytes (its `Close` frame) may take to leave before the
/// socket is dropped anyway: a peer that stopped reading must not hold a task forever.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The longest endpoint-supplied text (a `Close` detail) that goes into a log line.
const LOGGED_DETAIL: usize = 200;

/// The read buffer of a connection: its size while idle, and the most it grows to when reads
/// fill it (a TLS read returns at most one record, 16 KiB, of plaintext).
const READ_MIN: usize = 2 * 1024;
const READ_MAX: usize = 64 * 1024;

/// How the relay talks to endpoints.
#[derive(Clone)]
pub enum Security {
    /// TLS 1.3 with this server configuration (see `tlsro::tls::server_config`). Endpoints that
    /// ask for small TLS records (RAM-lean microcontrollers) get a variant of it
    /// (`tlsro::tls::small_records_config`).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain TCP: the password proof still applies, but frames are neither secret nor protected.
    Plain,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Tls(_) => f.write_str("Tls"),
            Security::Plain => f.write_str("Plain"),
        }
    }
}

/// Errors starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Neither TLS nor plain TCP was chosen.
    #[error("no security chosen: call tls(..), tls_from_dir(..) or plain()")]
    NoSecurity,
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// Busy polling was asked for on a runtime where it cannot work.
    #[error("cannot busy-poll: {0}")]
    BusyPoll(#[from] BusyPollError),
    /// A limit set with [`RelayBuilder::configure`](crate::RelayBuilder::configure) would make
    /// the relay refuse or drop every endpoint.
    #[error("invalid relay configuration: {0}")]
    InvalidConfig(String),
}

/// A running relay. Dropping the handle does not stop it; call [`RelayHandle::stop`].
pub struct RelayHandle {
    addr: SocketAddr,
    commands: mpsc::UnboundedSender<CoreMsg>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// The address the relay listens on (with the port the OS chose when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's counters now.
    pub async fn stats(&self) -> RelayStats {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(CoreMsg::Stats(tx));
        rx.await.unwrap_or_default()
    }

    /// Closes every connection (endpoints see "relay shutting down" and reconnect later) and
    /// stops listening. Returns when the sockets are closed or after two seconds.
    pub async fn stop(self) {
        let _ = self.commands.send(CoreMsg::Shutdown);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}

/// Starts a relay on `listen` (port 0: the OS picks one) with the given protocol configuration.
pub async fn start(
    listen: SocketAddr,
    security: Security,
    config: RelayConfig,
) -> Result<RelayHandle, StartError> {
    start_with(listen, security, config, None).await
}

/// [`start`], and with `busy_poll` the relay's runtime spins for that window after each read or
/// write (see [`tlsro::busy_poll`]; it needs a current-thread runtime).
pub async fn start_with(
    listen: SocketAddr,
    security: Security,
    config: RelayConfig,
    busy_poll: Option<Duration>,
) -> Result<RelayHandle, StartError> {
    config.check().map_err(StartError::InvalidConfig)?;
    let busy = busy_poll.map(BusyPoll::start).transpose()?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (input_tx, input_rx) = mpsc::channel(1024);
    let state = RelayState::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = AcceptLimits {
        handshake_timeout: state.config().handshake_timeout,
        max_pending: state.config().max_connections,
    };
    let acceptor = tokio::spawn(accept_loop(
        listener,
        security,
        limits,
        tx.clone(),
        input_tx,
        stop_rx,
        busy,
    ));
    let core = Core {
        state,
        conns: HashMap::new(),
        commands: rx,
        input: input_rx,
        clock: tokio::time::Instant::now(),
        acceptor,
        stop: stop_tx,
    };
    info!(%addr, "relay listening");
    let task = tokio::spawn(core.run());
    Ok(RelayHandle {
        addr,
        commands: tx,
        task,
    })
}

enum CoreMsg {
    Accepted {
        peer: SocketAddr,
        /// When the TCP connection was accepted: the handshake deadline runs from here, TLS
        /// handshake included.
        at: tokio::time::Instant,
        writer: mpsc::UnboundedSender<WriterMsg>,
        closing_signal: watch::Sender<bool>,
        reply: oneshot::Sender<ConnId>,
    },
    Written(ConnId, usize),
    Lost(ConnId),
    Stats(oneshot::Sender<RelayStats>),
    Shutdown,
}

/// From a connection's reader. The end of the stream travels the same way as its bytes, so the
/// core handles everything a peer sent before it learns the peer is gone.
enum Input {
    Bytes { conn: ConnId, bytes: Vec<u8> },
    End(ConnId),
}

enum WriterMsg {
    Data(Chunk),
    /// Write what came before, then close the socket.
    Close,
}

struct ConnEntry {
    peer: SocketAddr,
    writer: mpsc::UnboundedSender<WriterMsg>,
    /// Set when the connection is closing: its writer gets `CLOSE_GRACE` to finish.
    closing_signal: watch::Sender<bool>,
    /// Bytes of a frame not yet whole.
    pending: Vec<u8>,
    /// A large frame not yet whole, as its reads came (`pending` is then empty).
    large: Option<LargeFrame>,
    /// Bytes handed to the writer that it has not reported written.
    in_writer: usize,
    closing: bool,
}

/// At most this much output is handed to a connection's writer ahead of what it wrote: enough
/// to keep a socket busy between progress reports.
const WRITER_WINDOW: usize = 4 * 1024 * 1024;

/// Frames at least this large are gathered as a [`LargeFrame`].
const LARGE_FRAME: usize = 256 * 1024;

/// Reads smaller than this are appended to a [`LargeFrame`]'s last read rather than kept apart.
const SMALL_READ: usize = 4 * 1024;

/// A large frame arriving over many reads. The reads are kept as they came and put together
/// once, when the last one is in, into the buffer the core then shares the payload from
/// ([`RelayState::handle_input_shared`]). Growing one buffer as the bytes come would copy them
/// again at each doubling, and the core would copy the payload out once more; reserving the
/// announced size up front would trust a peer's word (connections that announce large frames
/// and leave fragmented the heap).
struct LargeFrame {
    /// The frame's whole length, as its prefix announced (the core accepted it).
    need: usize,
    have: usize,
    reads: Vec<Vec<u8>>,
}

impl LargeFrame {
    fn push(&mut self, bytes: Vec<u8>) {
        self.have += bytes.len();
        match self.reads.last_mut() {
            // Small reads (a peer trickling its frame) are joined onto the last one: each read
            // kept as its own buffer would cost tens of bytes of bookkeeping per byte.
            Some(last) if bytes.len() < SMALL_READ => last.extend_from_slice(&bytes),
            _ => self.reads.push(bytes),
        }
    }

    /// The frame, and what the last read held beyond it.
    fn assemble(self) -> (Vec<u8>, Vec<u8>) {
        let mut frame = Vec::with_capacity(self.need);
        let mut rest = Vec::new();
        for read in self.reads {
            let room = self.need - frame.len();
            if read.len() <= room {
                frame.extend_from_slice(&read);
            } else {
                frame.extend_from_slice(&read[..room]);
                rest.extend_from_slice(&read[room..]);
            }
        }
        (frame, rest)
    }
}

struct Core {
    state: RelayState,
    conns: HashMap<ConnId, ConnEntry>,
    commands: mpsc::UnboundedReceiver<CoreMsg>,
    input: mpsc::Receiver<Input>,
    clock: tokio::time::Instant,
    acceptor: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Core {
    fn now(&self) -> tlsro_proto::Instant {
        self.proto_instant(tokio::time::Instant::now())
    }

    fn proto_instant(&self, at: tokio::time::Instant) -> tlsro_proto::Instant {
        tlsro_proto::Instant::from_millis(
            at.saturating_duration_since(self.clock).as_millis() as u64
        )
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutting_down: Option<tokio::time::Instant> = None;
        loop {
            // A deferred confirm falls due (proto holds it back for output to travel with).
            let confirm_at = self.state.poll_confirm_timeout().and_then(|due| {
                self.clock
                    .checked_add(Duration::from_millis(due.as_millis()))
            });
            tokio::select! {
                Some(input) = self.input.recv() => {
                    self.handle_input(input);
                    // Drain what else is ready before writing, so output coalesces.
                    while let Ok(input) = self.input.try_recv() {
                        self.handle_input(input);
                    }
                }
                Some(msg) = self.commands.recv() => {
                    match msg {
                        CoreMsg::Shutdown => {
                            info!("relay shutting down");
                            let _ = self.stop.send(true);
                            self.acceptor.abort();
                            self.state.shutdown();
                            shutting_down = Some(tokio::time::Instant::now());
                        }
                        other => self.handle_command(other),
                    }
                }
                _ = tick.tick() => {
                    let now = self.now();
                    self.state.handle_timeout(now);
                }
                _ = tokio::time::sleep_until(confirm_at.unwrap_or_else(tokio::time::Instant::now)),
                    if confirm_at.is_some() =>
                {
                    let now = self.now();
                    self.state.handle_confirm_timeout(now);
                }
            }
            self.flush();
            if let Some(since) = shutting_down
                && (self.conns.is_empty() || since.elapsed() > Duration::from_secs(2))
            {
                return;
            }
        }
    }

    fn handle_input(&mut self, input: Input) {
        let (conn, bytes) = match input {
            Input::Bytes { conn, bytes } => (conn, bytes),
            Input::End(conn) => {
                self.reader_ended(conn);
                return;
            }
        };
        let now = self.now();
        let Some(entry) = self.conns.get_mut(&conn) else {
            return;
        };
        if entry.closing {
            return;
        }
        let Some(large) = entry.large.as_mut() else {
            self.handle_bytes(now, conn, bytes);
            return;
        };
        large.push(bytes);
        if large.have < large.need {
            // Not whole yet: the core only learns that bytes arrived.
            self.state.input_progress(now, conn, large.have);
            return;
        }
        let Some(large) = entry.large.take() else {
            return;
        };
        let (frame, rest) = large.assemble();
        let frame = SharedBytes::new(frame);
        let used = self.state.handle_input_shared(now, conn, &frame);
        debug_assert_eq!(used, frame.len(), "a whole frame is consumed");
        if !rest.is_empty() {
            self.handle_bytes(now, conn, rest);
        }
    }

    /// Input when no large frame is being gathered.
    fn handle_bytes(&mut self, now: tlsro_proto::Instant, conn: ConnId, bytes: Vec<u8>) {
        let Some(entry) = self.conns.get_mut(&conn) else {
            return;
        };
        if entry.pending.is_empty() {
            let used = self.state.handle_input(now, conn, &bytes);
            if used < bytes.len() {
                // The start of a frame that is not whole yet. No room is made up front for
                // what its prefix announces: the buffer grows as the bytes come (reserving on a
                // peer's word, then giving the room back, fragmented the heap).
                if used == 0 {
                    entry.pending = bytes;
                } else {
                    entry.pending.extend_from_slice(&bytes[used..]);
                }
            }
        } else {
            entry.pending.extend_from_slice(&bytes);
            let used = self.state.handle_input(now, conn, &entry.pending);
            entry.pending.drain(..used);
            if entry.pending.is_empty() {
                // Nothing partial left: an idle connection keeps no buffer.
                entry.pending = Vec::new();
            } else if entry.pending.capacity() > READ_MAX && entry.pending.len() < READ_MAX / 4 {
                // A large frame went through: do not keep its room.
                entry.pending.shrink_to_fit();
            }
        }
        // The start of a large frame that the core accepted: gather the rest read by read.
        if let Some(need) = tlsro_proto::frame::announced_len(&entry.pending)
            && need >= LARGE_FRAME
            && need > entry.pending.len()
        {
            let first = std::mem::take(&mut entry.pending);
            entry.large = Some(LargeFrame {
                need,
                have: first.len(),
                reads: vec![first],
            });
        }
    }

    /// The peer will send nothing more. What it sent before was handled; output that caused
    /// (its `Close` answered, say) still goes out: the writer closes the socket when done.
    fn reader_ended(&mut self, conn: ConnId) {
        self.flush();
        // All of it, not just a writer's window: the state forgets the rest when it learns the
        // connection is lost (below).
        self.push_output(conn, true);
        let Some(entry) = self.conns.get_mut(&conn) else {
            return;
        };
        if !entry.closing {
            let cut = match &entry.large {
                Some(large) => Some(FrameError::Truncated {
                    have: large.have,
                    need: large.need,
                }),
                None if entry.pending.is_empty() => None,
                None => Some(tlsro_proto::frame::truncated(&entry.pending)),
            };
            match cut {
                None => info!(conn = %conn, peer = %entry.peer, "connection lost"),
                Some(cut) => {
                    info!(conn = %conn, peer = %entry.peer, "connection lost in the middle of a frame: {cut}")
                }
            }
            entry.large = None;
            entry.closing = true;
            let _ = entry.writer.send(WriterMsg::Close);
            let _ = entry.closing_signal.send(true);
            self.state.connection_lost(conn);
        }
    }

    fn lost(&mut self, conn: ConnId) {
        self.state.connection_lost(conn);
        if let Some(entry) = self.conns.remove(&conn)
            && !entry.closing
        {
            info!(conn = %conn, peer = %entry.peer, "connection lost");
        }
    }

    fn handle_command(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Accepted {
                peer,
                at,
                writer,
                closing_signal,
                reply,
            } => {
                let nonce = match random_nonce() {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(%peer, "refusing connection: {e}");
                        return;
                    }
                };
                // The deadline to authenticate counts from the TCP accept, not from here
                // (after the TLS handshake, which had the same budget).
                let id = self.state.accept(self.proto_instant(at), nonce);
                info!(conn = %id, %peer, "connection accepted");
                self.conns.insert(
                    id,
                    ConnEntry {
                        peer,
                        writer,
                        closing_signal,
                        pending: Vec::new(),
                        large: None,
                        in_writer: 0,
                        closing: false,
                    },
                );
                let _ = reply.send(id);
            }
            CoreMsg::Written(conn, n) => {
                self.state.handle_written(conn, n);
                if let Some(entry) = self.conns.get_mut(&conn) {
                    entry.in_writer = entry.in_writer.saturating_sub(n);
                }
                self.push_output(conn, false);
            }
            CoreMsg::Lost(conn) => self.lost(conn),
            CoreMsg::Stats(reply) => {
                let _ = reply.send(self.state.stats().clone());
            }
            CoreMsg::Shutdown => {}
        }
    }

    /// Hands waiting output to the writers and acts on events.
    fn flush(&mut self) {
        while let Some(event) = self.state.poll_event() {
            match event {
                RelayEvent::Authenticated {
                    conn,
                    groups,
                    resumed,
                    ..
                } => {
                    let peer = self.peer(conn);
                    info!(conn = %conn, %peer, ?groups, resumed, "endpoint authenticated");
                }
                RelayEvent::Closing {
                    conn,
                    code,
                    detail,
                    by_endpoint,
                } => {
                    let peer = self.peer(conn);
                    // Details can hold text an endpoint chose: control characters are escaped
                    // and the length is cut, so a peer cannot forge or flood log lines.
                    let detail = loggable(&detail);
                    let by = if by_endpoint {
                        "the endpoint says: "
                    } else {
                        ""
                    };
                    match code {
                        CloseCode::Normal | CloseCode::Shutdown => {
                            info!(conn = %conn, %peer, "closing: {by}{code}")
                        }
                        _ if detail.is_empty() => warn!(conn = %conn, %peer, "closing: {by}{code}"),
                        _ => warn!(conn = %conn, %peer, "closing: {by}{code}: {detail}"),
                    }
                    // Output queued before the Close frame is sent first (flushed below).
                    self.push_output(conn, true);
                    if let Some(entry) = self.conns.get_mut(&conn) {
                        entry.closing = true;
                        // Nothing more is read from it: what was partial is of no use.
                        entry.pending = Vec::new();
                        entry.large = None;
                        let _ = entry.writer.send(WriterMsg::Close);
                        let _ = entry.closing_signal.send(true);
                    }
                }
            }
        }
        while let Some(conn) = self.state.poll_dirty() {
            self.push_output(conn, false);
        }
    }

    /// The peer address of a connection, for log lines.
    fn peer(&self, conn: ConnId) -> String {
        self.conns
            .get(&conn)
            .map_or_else(|| "?".to_owned(), |e| e.peer.to_string())
    }

    /// Hands `conn`'s output to its writer, up to [`WRITER_WINDOW`] bytes not yet written (all
    /// of it with `all`: a closing connection's last frames). The rest waits in the core, where
    /// the slow-consumer rule can drop it at once, and follows as the writer reports progress.
    fn push_output(&mut self, conn: ConnId, all: bool) {
        let Some(entry) = self.conns.get_mut(&conn) else {
            // Nobody will write it: drain so the state does not hold it.
            while self.state.poll_transmit(conn).is_some() {}
            return;
        };
        if entry.closing {
            while self.state.poll_transmit(conn).is_some() {}
            return;
        }
        while all || entry.in_writer < WRITER_WINDOW {
            let Some(chunk) = self.state.poll_transmit(conn) else {
                break;
            };
            entry.in_writer += chunk.len();
            let _ = entry.writer.send(WriterMsg::Data(chunk));
        }
    }
}

/// `text` made safe for one log line: control characters escaped, at most `LOGGED_DETAIL`
/// characters.
fn loggable(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(LOGGED_DETAIL) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn random_nonce() -> Result<[u8; 32], String> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    Ok(nonce)
}

/// A fresh epoch for a relay that is starting.
pub fn random_epoch() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    u64::from_le_bytes(b)
}

/// Limits applied before a connection reaches the core.
#[derive(Clone, Copy)]
struct AcceptLimits {
    /// The TLS handshake (or the first bytes of a plain connection) must arrive within this.
    handshake_timeout: Duration,
    /// At most this many connections may be in their TLS handshake at once.
    max_pending: usize,
}

async fn accept_loop(
    listener: TcpListener,
    security: Security,
    limits: AcceptLimits,
    core: mpsc::UnboundedSender<CoreMsg>,
    input: mpsc::Sender<Input>,
    stop: watch::Receiver<bool>,
    busy: Option<BusyPoll>,
) {
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tls = match &security {
        Security::Tls(config) => Some(Arc::new(TlsConfigs {
            normal: config.clone(),
            small: tlsro::tls::small_records_config(config),
        })),
        Security::Plain => None,
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if *stop.borrow() {
            return;
        }
        use std::sync::atomic::Ordering;
        if pending.load(Ordering::Relaxed) >= limits.max_pending {
            warn!(%peer, "refusing connection: {} connections are still in their handshake", limits.max_pending);
            continue;
        }
        let accepted = tokio::time::Instant::now();
        let _ = tcp.set_nodelay(true);
        let core = core.clone();
        let input = input.clone();
        let busy = busy.clone();
        let tls = tls.clone();
        let pending = pending.clone();
        pending.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // Counts this connection as pending until its handshake is over, however it ends.
            struct Pending(Arc<std::sync::atomic::AtomicUsize>);
            impl Drop for Pending {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let guard = Pending(pending);
            match tls {
                Some(configs) => {
                    // One deadline for reading the ClientHello and the rest of the handshake.
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, configs.accept(tcp, peer))
                            .await;
                    drop(guard);
                    match handshake {
                        // A task of its own: this one, sized for the handshake, ends.
                        Ok(Ok(stream)) => drop(tokio::spawn(serve(
                            stream, peer, accepted, core, input, busy,
                        ))),
                        Ok(Err(e)) => {
                            warn!(%peer, "TLS handshake failed: {}", explain_tls_error(&e))
                        }
                        Err(_) => warn!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    let tls_client = looks_like_tls(&tcp, limits.handshake_timeout).await;
                    drop(guard);
                    if tls_client {
                        warn!(%peer, "a TLS client connected to this plain-TCP relay; closing (start the endpoint with plain security, or the relay without --plain)");
                        return;
                    }
                    drop(tokio::spawn(serve(tcp, peer, accepted, core, input, busy)));
                }
            }
        });
    }
}

/// The relay's TLS configurations; which one serves a connection is decided by its ClientHello.
struct TlsConfigs {
    /// The configuration the relay was given.
    normal: Arc<rustls::ServerConfig>,
    /// The same with small TLS records (`tlsro::tls::small_records_config`), for RAM-lean
    /// microcontroller endpoints, which ask for it by offering the ALPN protocol
    /// `tlsro_proto::ALPN_SMALL_RECORDS`: their TLS read buffer holds only a small record.
    small: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    /// Reads the ClientHello (rustls's `Acceptor`), picks the configuration by the ALPN
    /// protocols it offers, and finishes the handshake with it.
    async fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = rustls::server::Acceptor::default();
        let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, tcp).await?;
        let small = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == tlsro_proto::ALPN_SMALL_RECORDS));
        let config = if small {
            debug!(%peer, "small TLS records (a RAM-lean endpoint)");
            self.small.clone()
        } else {
            self.normal.clone()
        };
        start.into_stream(config).await
    }
}

/// Whether the endpoint ended the handshake with an alert that means it refused the relay's
/// certificate (rustls sends `DecryptError` for a signature of an unknown CA).
fn refused_our_certificate(e: &std::io::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            A::DecryptError | A::BadCertificate | A::UnknownCA | A::CertificateUnknown
        ))
    )
}

fn explain_tls_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("InvalidContentType")
        || text.contains("corrupt message")
        || text.contains("InvalidMessage")
    {
        format!("{text} (not a TLS client: a plain endpoint on the TLS port?)")
    } else if refused_our_certificate(e) {
        // The endpoint's verdict on our certificate; its own error says more.
        format!(
            "{text} (the endpoint refused this relay's certificate: does it trust this relay's \
             ca.pem (`tlsro-relay credentials show` gives its fingerprint), and connect with a name \
             the certificate carries?)"
        )
    } else {
        text
    }
}

/// Whether the first bytes waiting on a plain connection are a TLS handshake record.
async fn looks_like_tls(tcp: &TcpStream, within: Duration) -> bool {
    let mut head = [0u8; 3];
    match tokio::time::timeout(within, tcp.peek(&mut head)).await {
        Ok(Ok(n)) if n >= 3 => head[0] == 0x16 && head[1] == 0x03,
        _ => false,
    }
}

async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
    core: mpsc::UnboundedSender<CoreMsg>,
    input: mpsc::Sender<Input>,
    busy: Option<BusyPoll>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let (closing_tx, mut closing_rx) = watch::channel(false);
    if core
        .send(CoreMsg::Accepted {
            peer,
            at: accepted,
            writer: writer_tx,
            closing_signal: closing_tx,
            reply: reply_tx,
        })
        .is_err()
    {
        return;
    }
    let Ok(conn) = reply_rx.await else {
        return;
    };
    let reader_busy = busy.clone();
    let reader_task = tokio::spawn(async move {
        // Each read lands in a buffer of its own that goes to the core as it is (no copy).
        // An idle connection waits with a small one (what it gets are pings and notifies);
        // reads that fill it double it for the next read, up to READ_MAX, and a small read
        // shrinks it back.
        let mut size = READ_MIN;
        loop {
            let mut bytes = Vec::with_capacity(size);
            match reader.read_buf(&mut bytes).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(busy) = &reader_busy {
                        busy.activity();
                    }
                    if n == size {
                        size = (size * 2).min(READ_MAX);
                    } else if n <= READ_MIN {
                        size = READ_MIN;
                    }
                    if n < bytes.capacity() / 2 {
                        // Queued input should not hold room it does not use.
                        bytes.shrink_to_fit();
                    }
                    if input.send(Input::Bytes { conn, bytes }).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = input.send(Input::End(conn)).await;
    });
    // A peer that stopped reading would keep the writer blocked forever: once the connection
    // is closing, it gets CLOSE_GRACE to finish.
    tokio::select! {
        _ = write_loop(writer, writer_rx, conn, &core, busy.as_ref()) => {}
        _ = async {
            let _ = closing_rx.wait_for(|closing| *closing).await;
            tokio::time::sleep(CLOSE_GRACE).await;
        } => {}
    }
    reader_task.abort();
    let _ = core.send(CoreMsg::Lost(conn));
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<WriterMsg>,
    conn: ConnId,
    core: &mpsc::UnboundedSender<CoreMsg>,
    busy: Option<&BusyPoll>,
) {
    // Small chunks are gathered into one buffer so many frames leave in one TLS record and one
    // syscall; large ones are written as they are.
    const GATHER: usize = 64 * 1024;
    // Both grow on first use and are given back when the connection goes idle: an idle
    // connection holds neither.
    let mut batch: Vec<u8> = Vec::new();
    let mut msgs = Vec::new();
    loop {
        if rx.recv_many(&mut msgs, 256).await == 0 {
            return;
        }
        let mut close = false;
        let mut written = 0usize;
        for msg in msgs.drain(..) {
            match msg {
                WriterMsg::Data(chunk) => {
                    written += chunk.len();
                    if chunk.len() >= GATHER {
                        if !batch.is_empty() && writer.write_all(&batch).await.is_err() {
                            return;
                        }
                        batch.clear();
                        if writer.write_all(&chunk).await.is_err() {
                            return;
                        }
                    } else {
                        batch.extend_from_slice(&chunk);
                        if batch.len() >= GATHER {
                            if writer.write_all(&batch).await.is_err() {
                                return;
                            }
                            batch.clear();
                        }
                    }
                }
                WriterMsg::Close => close = true,
            }
        }
        if !batch.is_empty() {
            if writer.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        if writer.flush().await.is_err() {
            return;
        }
        if let Some(busy) = busy {
            busy.activity();
        }
        let _ = core.send(CoreMsg::Written(conn, written));
        if rx.is_empty() {
            // Nothing more waiting: a connection gone idle does not keep the gathering room.
            if batch.capacity() > GATHER / 4 {
                batch = Vec::new();
            }
            msgs = Vec::new();
        }
        if close {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large frame trickled in one byte at a time costs about a byte per byte (not a buffer
    /// per byte), large reads are kept as they are, and the frame and what follows it come out
    /// whole.
    #[test]
    fn a_large_frame_gathers_reads_without_a_buffer_per_byte() {
        let frame: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut large = LargeFrame {
            need: frame.len(),
            have: 0,
            reads: Vec::new(),
        };
        large.push(frame[..100].to_vec());
        for b in &frame[100..50_100] {
            large.push(vec![*b]);
        }
        assert_eq!(large.reads.len(), 1, "single bytes are joined");
        large.push(frame[50_100..150_100].to_vec());
        large.push(frame[150_100..250_100].to_vec());
        assert_eq!(large.reads.len(), 3, "large reads are kept as they are");
        let mut last = frame[250_100..].to_vec();
        last.extend_from_slice(b"next frame");
        large.push(last);
        assert!(large.have >= large.need);
        let kept: usize = large.reads.iter().map(Vec::capacity).sum();
        assert!(
            kept < 3 * frame.len(),
            "{kept} bytes kept for {}",
            frame.len()
        );
        let (whole, rest) = large.assemble();
        assert!(whole == frame, "the frame differs");
        assert_eq!(rest, b"next frame");
    }

    /// The ALPN protocols a client offers pick the configuration: small records when it offers
    /// `ALPN_SMALL_RECORDS`, the configuration as given otherwise (also without any ALPN).
    #[tokio::test]
    async fn small_records_are_chosen_by_alpn() {
        let dir = std::env::temp_dir().join(format!("tlsro-relay-alpn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        tlsro::credentials::generate(&tlsro::credentials::GenerateOptions::new(&dir)).unwrap();
        let server = tlsro::tls::server_config_from_dir(&dir).unwrap();
        let key = tlsro_proto::auth::AuthKey::derive(b"password");
        let relay = start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Security::Tls(server),
            RelayConfig::new(key, 1),
        )
        .await
        .unwrap();
        let (small, normal) = (tlsro_proto::ALPN_SMALL_RECORDS, tlsro_proto::ALPN);
        // (the protocols offered, the one the relay chooses)
        type Case<'a> = (&'a [&'a [u8]], Option<&'a [u8]>);
        let cases: [Case; 4] = [
            (&[small], Some(small)),
            (&[normal, small], Some(small)),
            (&[normal], Some(normal)),
            (&[], None),
        ];
        for (offered, chosen) in cases {
            let mut client = (*tlsro::tls::client_config_from_dir(&dir).unwrap()).clone();
            client.alpn_protocols = offered.iter().map(|p| p.to_vec()).collect();
            let tcp = TcpStream::connect(relay.local_addr()).await.unwrap();
            let name = tlsro::tls::server_name("localhost").unwrap();
            let tls = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp),
            )
            .await
            .expect("handshake in time")
            .expect("handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), chosen, "{offered:?}");
        }
        relay.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
