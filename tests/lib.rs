//! Helpers for the integration tests: throwaway credentials, an in-process relay over TLS (or
//! plain TCP), endpoints with short timers, bounded receives, a TCP proxy the test can cut, and a
//! raw socket that speaks the wire protocol by hand.
//!
//! Every helper is bounded in time: nothing here can hang a test.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tlsro::credentials::{self, GenerateOptions};
use tlsro::{
    Backoff, Builder, CaSource, Endpoint, Event, PublishError, Received, Security, Status, Wait,
};
use tlsro_proto::auth::{AuthKey, Role, Transcript};
use tlsro_proto::frame::{self, Frame, GroupList, Hello, Proof};
use tlsro_relay::{Relay, RelayBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, timeout};

/// The bound of a whole test body.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// How long a helper waits for something that should happen promptly on loopback (in
/// milliseconds when all is well; generous so that a loaded machine does not fail the suite).
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

/// Runs a whole test body, failing the test instead of letting it hang.
pub async fn bounded<F: Future>(f: F) -> F::Output {
    match timeout(TEST_LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {TEST_LIMIT:?}"),
    }
}

/// Runs `f`, failing with `what` if it takes longer than `within`.
pub async fn within<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match timeout(limit, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not within {limit:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds; fails after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    within(what, limit, async {
        while !cond() {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Throwaway credentials (a fresh CA, a relay certificate for `localhost`, 127.0.0.1 and ::1,
/// and a random password) in a directory of their own, removed on drop.
pub struct Creds {
    /// The credentials directory.
    pub dir: PathBuf,
    /// The relay password.
    pub password: Vec<u8>,
}

impl Creds {
    /// Generates a new set.
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tlsro-tests-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let generated =
            credentials::generate(&GenerateOptions::new(&dir)).expect("generate credentials");
        let password =
            credentials::read_password(&generated.credentials.password()).expect("read password");
        Creds { dir, password }
    }

    /// TLS trusting this set's CA, for the server name `localhost`.
    pub fn security(&self) -> Security {
        self.security_for(Some("localhost"))
    }

    /// TLS trusting this set's CA, checking `server_name` (`None`: the host of the address).
    pub fn security_for(&self, server_name: Option<&str>) -> Security {
        Security::Tls {
            ca: CaSource::Dir(self.dir.clone()),
            server_name: server_name.map(str::to_owned),
        }
    }

    /// A relay with these credentials on 127.0.0.1, port chosen by the OS, with a short
    /// handshake deadline.
    pub fn relay(&self) -> RelayBuilder {
        self.relay_on(loopback_any_port())
    }

    /// Like [`relay`](Self::relay), on a given address (to restart a relay on the same port).
    pub fn relay_on(&self, addr: SocketAddr) -> RelayBuilder {
        Relay::builder(self.password.clone())
            .listen(addr)
            .tls_from_dir(&self.dir)
            .expect("relay TLS configuration")
            .configure(|c| c.handshake_timeout = Duration::from_secs(3))
    }

    /// An endpoint of this relay over TLS, with short timers (see [`quick`]).
    pub fn endpoint<T>(&self, addr: impl ToString) -> Builder<T> {
        quick(Endpoint::builder(addr.to_string(), self.password.clone())).security(self.security())
    }

    /// Connects an endpoint over TLS with these groups.
    pub async fn connect<T>(&self, addr: impl ToString, groups: &[&str]) -> Endpoint<T> {
        let builder = self.endpoint::<T>(addr).groups(groups.iter().copied());
        within("connect", PROMPTLY, builder.connect())
            .await
            .expect("the endpoint connects")
    }
}

impl Drop for Creds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 127.0.0.1, port 0.
pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address nobody listens on (a port the OS gave out, then closed again).
pub fn closed_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback_any_port()).unwrap();
    listener.local_addr().unwrap()
}

/// A plain-TCP relay with this password on 127.0.0.1, port chosen by the OS.
pub fn plain_relay(password: &[u8]) -> RelayBuilder {
    Relay::builder(password.to_vec())
        .listen(loopback_any_port())
        .plain()
        .configure(|c| c.handshake_timeout = Duration::from_secs(3))
}

/// A plain-TCP endpoint of a plain relay, with short timers.
pub fn plain_endpoint<T>(addr: impl ToString, password: &[u8]) -> Builder<T> {
    quick(Endpoint::builder(addr.to_string(), password.to_vec())).security(Security::Plain)
}

/// Reconnect attempts 20 ms apart, growing to 200 ms.
pub fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.2,
    }
}

/// Short timers for tests: 5 s connect timeout, fast reconnects, 5 s stop timeout.
pub fn quick<T>(builder: Builder<T>) -> Builder<T> {
    builder
        .connect_timeout(Duration::from_secs(5))
        .reconnect(fast_backoff())
        .stop_timeout(Duration::from_secs(5))
}

/// Pops until `n` objects arrived or `limit` passed; returns what arrived (possibly fewer).
pub async fn recv_n<T: DeserializeOwned>(
    endpoint: &Endpoint<T>,
    n: usize,
    limit: Duration,
) -> Vec<Received<T>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let items = endpoint
            .pop(n - got.len(), Wait::Timeout(left))
            .await
            .expect("pop");
        got.extend(items);
    }
    got
}

/// Pops exactly `n` objects within [`PROMPTLY`] and returns their values; fails otherwise.
pub async fn expect_values<T: DeserializeOwned + std::fmt::Debug>(
    endpoint: &Endpoint<T>,
    n: usize,
) -> Vec<T> {
    let got = recv_n(endpoint, n, PROMPTLY).await;
    assert_eq!(
        got.len(),
        n,
        "expected {n} objects within {PROMPTLY:?}, got {:?}",
        got
    );
    values(got)
}

/// Asserts that nothing arrives for [`QUIET`].
pub async fn expect_nothing<T: DeserializeOwned + std::fmt::Debug>(endpoint: &Endpoint<T>) {
    let got = endpoint
        .pop(usize::MAX, Wait::Timeout(QUIET))
        .await
        .expect("pop");
    assert!(got.is_empty(), "expected nothing, got {got:?}");
}

/// The values of received objects.
pub fn values<T>(received: Vec<Received<T>>) -> Vec<T> {
    received.into_iter().map(|r| r.value).collect()
}

/// Makes sure the relay has handled everything this endpoint sent so far (notifies, acks,
/// publishes): publishes an empty object to a scratch group and waits for the relay's verdict.
/// The relay confirms after handling a whole batch of input, and the endpoint sends control
/// frames no later than publishes queued after them, so the verdict comes after the rest.
pub async fn sync<T: Serialize + Default + DeserializeOwned>(endpoint: &Endpoint<T>) {
    let receipt = endpoint
        .broadcast(&T::default(), "tlsro-tests-sync")
        .expect("sync publish");
    match within("sync", PROMPTLY, receipt.wait()).await {
        Ok(()) | Err(PublishError::Rejected(_)) => {}
        Err(e) => panic!("sync publish not confirmed: {e}"),
    }
}

/// Waits until the endpoint reports `Connected`.
pub async fn until_connected<T, C: tlsro::Codec>(endpoint: &Endpoint<T, C>, limit: Duration) {
    eventually("status Connected", limit, || {
        matches!(endpoint.status(), Status::Connected)
    })
    .await
}

/// Waits for the first event that `pick` maps to `Some`, skipping the others.
pub async fn next_event<R>(
    events: &mut broadcast::Receiver<Event>,
    limit: Duration,
    mut pick: impl FnMut(&Event) -> Option<R>,
) -> R {
    within("event", limit, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(r) = pick(&event) {
                        return r;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events ended"),
            }
        }
    })
    .await
}

/// A TCP proxy between endpoints and a relay that the test controls: it can cut every
/// connection (the endpoint sees its relay vanish without a `Close`), refuse new connections,
/// and hold back what the relay sends.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept_task: AbortHandle,
}

struct ProxyConn {
    task: AbortHandle,
    /// Stops forwarding in both directions for good, sockets left open.
    stalled: Arc<tokio::sync::watch::Sender<bool>>,
}

struct ProxyShared {
    upstream: Mutex<SocketAddr>,
    /// New connections are closed at once.
    refusing: AtomicBool,
    /// Bytes from the relay are not forwarded (they stay in the socket buffers).
    holding_down: tokio::sync::watch::Sender<bool>,
    /// Bytes from the endpoint are not forwarded (they stay in the socket buffers).
    holding_up: tokio::sync::watch::Sender<bool>,
    conns: Mutex<Vec<ProxyConn>>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 (port chosen by the OS) to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(loopback_any_port())
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream: Mutex::new(upstream),
            refusing: AtomicBool::new(false),
            holding_down: tokio::sync::watch::channel(false).0,
            holding_up: tokio::sync::watch::channel(false).0,
            conns: Mutex::new(Vec::new()),
        });
        let accept_task = tokio::spawn(proxy_accept(listener, shared.clone())).abort_handle();
        Proxy {
            addr,
            shared,
            accept_task,
        }
    }

    /// Where endpoints connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every current connection at once (both directions, no `Close` frame).
    pub fn cut(&self) {
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.task.abort();
        }
    }

    /// Turns every current connection into a dead link: nothing is forwarded any more in either
    /// direction, and no socket is closed (no FIN, no reset), as when a cable is pulled. New
    /// connections work normally.
    pub fn stall(&self) {
        for conn in self.shared.conns.lock().unwrap().iter() {
            conn.stalled.send_replace(true);
        }
    }

    /// Refuses (accepts and closes at once) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::SeqCst);
    }

    /// Stops forwarding what the relay sends while `on`.
    pub fn hold_downstream(&self, on: bool) {
        self.shared.holding_down.send_replace(on);
    }

    /// Stops forwarding what endpoints send while `on`.
    pub fn hold_upstream(&self, on: bool) {
        self.shared.holding_up.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut();
    }
}

async fn proxy_accept(listener: TcpListener, shared: Arc<ProxyShared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let upstream = *shared.upstream.lock().unwrap();
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let stalled = Arc::new(tokio::sync::watch::channel(false).0);
        let up = pump(
            client_read,
            server_write,
            shared.holding_up.subscribe(),
            stalled.subscribe(),
        );
        let down = pump(
            server_read,
            client_write,
            shared.holding_down.subscribe(),
            stalled.subscribe(),
        );
        let task = tokio::spawn(async move {
            // Either direction ending ends both (drops both sockets).
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
        shared.conns.lock().unwrap().push(ProxyConn {
            task: task.abort_handle(),
            stalled,
        });
    }
}

/// Returns once the flag is on (never if its sender is gone first).
async fn until_on(flag: &mut tokio::sync::watch::Receiver<bool>) {
    if flag.wait_for(|on| *on).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut holding: tokio::sync::watch::Receiver<bool>,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = until_on(&mut stalled) => std::future::pending().await,
        };
        // Bytes read while holding are kept here (and lost if the connection is cut).
        if holding.wait_for(|on| !*on).await.is_err() {
            return;
        }
        if *stalled.borrow() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// How a raw connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    /// The relay sent `Close` with this code, then closed.
    Close(u8),
    /// The socket ended (EOF or reset) without a `Close` frame.
    Eof,
}

/// A raw TCP connection to a plain relay that speaks the wire protocol by hand.
pub struct Raw {
    /// The socket.
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects to a plain relay.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let tcp = within("raw connect", PROMPTLY, TcpStream::connect(addr))
            .await
            .expect("raw connect");
        tcp.set_nodelay(true).expect("nodelay");
        Raw {
            tcp,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("raw write");
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, frame: &Frame<'_>) {
        self.send(&frame.to_vec()).await;
    }

    /// Reads the next whole frame (its bytes, prefix included); `None` at end of stream.
    pub async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Ok(Some(len)) = frame::frame_len(&self.buf, u32::MAX) {
                return Some(self.buf.drain(..len).collect());
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the relay closes: returns the `Close` code it sent, if any. Fails if the
    /// connection is still open after `limit`.
    pub async fn until_closed(&mut self, limit: Duration) -> RawEnd {
        within("the relay closes the raw connection", limit, async {
            let mut code = None;
            while let Some(bytes) = self.next_frame().await {
                if let Ok(Frame::Close(close)) = frame::decode(&bytes) {
                    code = Some(u8::from(close.code));
                }
            }
            code.map_or(RawEnd::Eof, RawEnd::Close)
        })
        .await
    }

    /// Performs the handshake with `password`, joining `groups`; returns the relay's answer to
    /// `Proof` (the raw bytes of a `Welcome`, or of a `Close`).
    pub async fn handshake(&mut self, password: &[u8], groups: &[&str]) -> Vec<u8> {
        let key = AuthKey::derive(password);
        let nonce = [7u8; 32];
        let session = [9u8; 16];
        let mut list = GroupList::new();
        for g in groups {
            list.push(g).expect("at most 16 groups");
        }
        self.send_frame(&Frame::Hello(Hello {
            version: 1,
            nonce,
            session,
            max_frame: 1 << 20,
            keepalive_ms: 5_000,
            groups: list,
        }))
        .await;
        let challenge = within("challenge", PROMPTLY, self.next_frame())
            .await
            .expect("a Challenge");
        let relay_nonce = match frame::decode(&challenge).expect("a frame") {
            Frame::Challenge(c) => c.nonce,
            other => panic!("expected a Challenge, got {other:?}"),
        };
        let transcript = Transcript {
            version: 1,
            endpoint_nonce: &nonce,
            relay_nonce: &relay_nonce,
            session: &session,
            groups,
        };
        let mac = key.proof(Role::Endpoint, &transcript);
        self.send_frame(&Frame::Proof(Proof { mac })).await;
        within("welcome", PROMPTLY, self.next_frame())
            .await
            .expect("an answer to Proof")
    }
}

/// Whether nothing in `events` (drained now) says the endpoint was disconnected. The first
/// `events()` receiver also holds what happened since the endpoint was built (its `Connected`).
pub fn never_disconnected(events: &mut broadcast::Receiver<Event>) -> bool {
    let mut clean = true;
    while let Ok(event) = events.try_recv() {
        clean &= !matches!(event, Event::Disconnected { .. });
    }
    clean
}
