//! Hostile input at the relay and at the endpoint (DESIGN.md §2, §4, §5, §7; PROTOCOL.md).
//!
//! The rule under test: every malformed, oversized, unauthenticated or hostile input ends in a
//! typed error with a readable reason, and every other connection and queued object is
//! unaffected. Each relay test attacks a relay on 127.0.0.1 (plain TCP unless the attack is
//! about TLS) with raw sockets, checks how the offending socket ends (a `Close` frame with the
//! expected code, or EOF) and the relay's log line, then checks that legitimate endpoints still
//! connect, broadcast, produce and receive, and that objects queued earlier for another group
//! are all still there. The endpoint tests turn the tables: a fake relay sends hostile bytes to
//! a real `tlsro::Endpoint`.
//!
//! Every test runs on a current-thread runtime so that the relay's log lines (tracing) can be
//! captured per test, and every test is bounded in time. Tests marked `#[ignore = "bug: …"]`
//! assert what the design asks for and fail today; run them with
//! `cargo test -p tlsro-relay --test hostile -- --ignored`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tlsro::{Backoff, Builder, CaSource, Endpoint, Event, PublishError, Security, Status, Wait};
use tlsro_proto::auth::{AuthKey, Role, Transcript};
use tlsro_proto::frame::{
    self, Ack, Challenge, Close, CloseCode, Confirm, Deliver, Delivery, Frame, GroupList, Hello,
    Notify, Proof, PublishKind, RejectReason, Welcome,
};
use tlsro_relay::{GroupLimits, Overflow, Relay, RelayConfig, RelayHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

const PASSWORD: &[u8] = b"hostile test password";
/// The bound of a whole test body.
const TEST_LIMIT: Duration = Duration::from_secs(25);
/// How long something that should happen promptly on loopback may take.
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// The relays' handshake deadline, unless a test sets its own.
const HANDSHAKE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Time bounds
// ---------------------------------------------------------------------------------------------

async fn bounded<F: Future>(f: F) -> F::Output {
    match timeout(TEST_LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {TEST_LIMIT:?}"),
    }
}

async fn within<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match timeout(limit, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not within {limit:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Log capture: the relay's tracing output of this test only (current-thread runtime)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

impl Logs {
    /// Captures what this thread logs until the guard is dropped.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Fails unless a log line contains `needle` (waits a little: the line may be on its way).
    async fn expect(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.text().contains(needle) {
            if Instant::now() >= deadline {
                panic!("no log line contains {needle:?}; the log:\n{}", self.text());
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

// ---------------------------------------------------------------------------------------------
// Relays and legitimate endpoints
// ---------------------------------------------------------------------------------------------

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn key() -> &'static AuthKey {
    static KEY: OnceLock<AuthKey> = OnceLock::new();
    KEY.get_or_init(|| AuthKey::derive(PASSWORD))
}

/// A TLS relay with [`PASSWORD`] and the credentials in `creds`, adjusted by `configure`.
async fn tls_relay(
    creds: &TempCreds,
    configure: impl FnOnce(&mut RelayConfig) + Send + 'static,
) -> RelayHandle {
    Relay::builder(PASSWORD)
        .listen(any_port())
        .tls_from_dir(&creds.0)
        .expect("the credentials load")
        .configure(configure)
        .start()
        .await
        .expect("the relay starts")
}

/// The TLS handshake of a client that trusts the CA in `ca_dir`, over `tcp`, as `localhost`.
async fn tls_handshake(
    ca_dir: &std::path::Path,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = tlsro::tls::client_config_from_dir(ca_dir).unwrap();
    let name = tlsro::tls::server_name("localhost").unwrap();
    within(
        "a TLS handshake",
        PROMPTLY,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

/// A plain-TCP relay with [`PASSWORD`] and a [`HANDSHAKE`] deadline, adjusted by `configure`.
async fn plain_relay(configure: impl FnOnce(&mut RelayConfig) + Send + 'static) -> RelayHandle {
    Relay::builder(PASSWORD)
        .listen(any_port())
        .plain()
        .configure(|c| c.handshake_timeout = HANDSHAKE)
        .configure(configure)
        .start()
        .await
        .expect("the relay starts")
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.2,
    }
}

/// A plain endpoint of `addr` with short timers.
fn endpoint(addr: SocketAddr) -> Builder<String> {
    Endpoint::builder(addr.to_string(), PASSWORD)
        .security(Security::Plain)
        .connect_timeout(PROMPTLY)
        .reconnect(fast_backoff())
        .stop_timeout(PROMPTLY)
}

async fn member(addr: SocketAddr, groups: &[&str]) -> Endpoint<String> {
    within(
        "a legitimate endpoint connects",
        PROMPTLY,
        endpoint(addr).groups(groups.iter().copied()).connect(),
    )
    .await
    .expect("a legitimate endpoint connects")
}

/// Pops until `n` objects arrived or `limit` passed; returns their values.
async fn recv_n(endpoint: &Endpoint<String>, n: usize, limit: Duration) -> Vec<String> {
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
        got.extend(items.into_iter().map(|r| r.value));
    }
    got
}

async fn expect_nothing(endpoint: &Endpoint<String>) {
    let got = endpoint
        .pop(usize::MAX, Wait::Timeout(QUIET))
        .await
        .expect("pop");
    assert!(
        got.is_empty(),
        "expected nothing, got {:?}",
        got.iter().map(|r| &r.value).collect::<Vec<_>>()
    );
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Two fresh endpoints in a fresh group: a broadcast reaches both (the sender too) and a
/// produced object reaches the one with credit.
async fn assert_still_serving(addr: SocketAddr) {
    let group = unique("check");
    let a = member(addr, &[&group]).await;
    let b = member(addr, &[&group]).await;
    let receipt = a
        .broadcast(&"still serving".to_owned(), &group)
        .expect("broadcast");
    within("broadcast confirmed", PROMPTLY, receipt.wait())
        .await
        .expect("the relay confirms a legitimate broadcast");
    for e in [&a, &b] {
        assert_eq!(recv_n(e, 1, PROMPTLY).await, ["still serving"]);
    }
    b.notify(&group, 1).expect("notify");
    let receipt = a.produce(&"a job".to_owned(), &group).expect("produce");
    within("produce confirmed", PROMPTLY, receipt.wait())
        .await
        .expect("the relay confirms a legitimate produce");
    assert_eq!(recv_n(&b, 1, PROMPTLY).await, ["a job"]);
    expect_nothing(&a).await;
    let _ = within("stop", PROMPTLY, a.stop()).await;
    let _ = within("stop", PROMPTLY, b.stop()).await;
}

/// Objects produced to a group of their own before an attack, checked after it: all there, in
/// order, none twice.
struct Queued {
    group: String,
    values: Vec<String>,
}

impl Queued {
    async fn put(addr: SocketAddr, n: usize) -> Queued {
        let group = unique("kept");
        let producer = member(addr, &[]).await;
        let values: Vec<String> = (0..n).map(|i| format!("kept {i}")).collect();
        for v in &values {
            let receipt = producer.produce(v, &group).expect("produce");
            within("kept object confirmed", PROMPTLY, receipt.wait())
                .await
                .expect("kept object accepted");
        }
        let _ = within("stop", PROMPTLY, producer.stop()).await;
        Queued { group, values }
    }

    async fn check(self, addr: SocketAddr) {
        let consumer = member(addr, &[&self.group]).await;
        consumer
            .notify(&self.group, self.values.len() as i32 + 1)
            .expect("notify");
        let got = recv_n(&consumer, self.values.len(), PROMPTLY).await;
        assert_eq!(got, self.values, "objects queued before the attack");
        expect_nothing(&consumer).await;
        let _ = within("stop", PROMPTLY, consumer.stop()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw connections that speak the wire protocol by hand
// ---------------------------------------------------------------------------------------------

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How a raw connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The peer sent `Close` (code and detail), then closed.
    Close(CloseCode, String),
    /// The socket ended (EOF or reset) without a `Close` frame.
    Eof,
}

impl End {
    fn code(&self) -> Option<CloseCode> {
        match self {
            End::Close(code, _) => Some(*code),
            End::Eof => None,
        }
    }
}

struct Raw {
    io: Box<dyn Stream>,
    buf: Vec<u8>,
    session: [u8; 16],
    /// What its `Hello` states.
    keepalive_ms: u32,
}

fn fresh_session() -> [u8; 16] {
    static N: AtomicU64 = AtomicU64::new(1);
    let mut s = [0x5a; 16];
    s[..8].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    s
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let tcp = within("raw connect", PROMPTLY, TcpStream::connect(addr))
            .await
            .expect("raw connect");
        tcp.set_nodelay(true).expect("nodelay");
        Raw::over(tcp)
    }

    fn over(io: impl Stream + 'static) -> Raw {
        Raw {
            io: Box::new(io),
            buf: Vec::new(),
            session: fresh_session(),
            keepalive_ms: 5_000,
        }
    }

    /// Sends bytes; false when the peer is already gone.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.io.write_all(bytes).await.is_ok() && self.io.flush().await.is_ok()
    }

    async fn send_frame(&mut self, f: &Frame<'_>) -> bool {
        self.send(&f.to_vec()).await
    }

    /// The next whole frame (prefix included); `None` at the end of the stream.
    async fn next_frame(&mut self) -> Option<Vec<u8>> {
        loop {
            match frame::frame_len(&self.buf, u32::MAX) {
                Ok(Some(len)) => return Some(self.buf.drain(..len).collect()),
                Ok(None) => {}
                // A zero length: not a frame; report the end.
                Err(_) => return None,
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn expect_frame(&mut self, what: &str) -> Vec<u8> {
        within(what, PROMPTLY, self.next_frame())
            .await
            .unwrap_or_else(|| panic!("{what}: the connection ended"))
    }

    /// Reads until the peer closes; fails if it is still open after `limit`.
    async fn until_closed(&mut self, what: &str, limit: Duration) -> End {
        within(what, limit, async {
            let mut end = End::Eof;
            while let Some(bytes) = self.next_frame().await {
                if let Ok(Frame::Close(c)) = frame::decode(&bytes) {
                    end = End::Close(c.code, c.detail.to_owned());
                }
            }
            end
        })
        .await
    }

    /// Sends `Hello` and `Proof` for this connection's session; returns the relay's answer to
    /// the `Proof` (raw bytes).
    async fn handshake(&mut self, groups: &[&str], max_frame: u32) -> Vec<u8> {
        let nonce = [0x42; 32];
        let session = self.session;
        let mut list = GroupList::new();
        for g in groups {
            list.push(g).expect("at most 16 groups");
        }
        self.send_frame(&Frame::Hello(Hello {
            version: 1,
            nonce,
            session: self.session,
            max_frame,
            keepalive_ms: self.keepalive_ms,
            groups: list,
        }))
        .await;
        let challenge = self.expect_frame("challenge").await;
        let relay_nonce = match frame::decode(&challenge) {
            Ok(Frame::Challenge(c)) => c.nonce,
            other => panic!("expected a Challenge, got {other:?}"),
        };
        let transcript = Transcript {
            version: 1,
            endpoint_nonce: &nonce,
            relay_nonce: &relay_nonce,
            session: &session,
            groups,
        };
        let mac = key().proof(Role::Endpoint, &transcript);
        self.send_frame(&Frame::Proof(Proof { mac })).await;
        let answer = self.expect_frame("answer to Proof").await;
        if let Ok(Frame::Welcome(w)) = frame::decode(&answer) {
            assert!(
                key().verify(Role::Relay, &transcript, &w.mac),
                "the relay proves it knows the password"
            );
            assert_ne!(
                w.mac, mac,
                "the relay does not reflect the endpoint's proof"
            );
        }
        answer
    }

    /// Handshake that must succeed: returns the `Welcome`.
    async fn open(&mut self, groups: &[&str], max_frame: u32) -> Welcome {
        let answer = self.handshake(groups, max_frame).await;
        match frame::decode(&answer) {
            Ok(Frame::Welcome(w)) => w,
            other => panic!("expected a Welcome, got {other:?}"),
        }
    }

    /// Frames until one that `pick` maps to `Some` (others skipped), within [`PROMPTLY`].
    async fn until<R>(&mut self, what: &str, mut pick: impl FnMut(Frame<'_>) -> Option<R>) -> R {
        within(what, PROMPTLY, async {
            loop {
                let bytes = self
                    .next_frame()
                    .await
                    .unwrap_or_else(|| panic!("{what}: the connection ended"));
                if let Some(r) = pick(frame::decode(&bytes).expect("a valid frame")) {
                    return r;
                }
            }
        })
        .await
    }

    /// Frames that arrive within `quiet`, decoded kinds and payloads.
    async fn drain_for(&mut self, quiet: Duration) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Ok(Some(bytes)) = timeout(quiet, self.next_frame()).await {
            frames.push(bytes);
        }
        frames
    }
}

// Hand-made frames, for what the encoder refuses to make.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn raw_frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

fn group_list(groups: &[&[u8]], out: &mut Vec<u8>) {
    varint(groups.len() as u64, out);
    for g in groups {
        varint(g.len() as u64, out);
        out.extend_from_slice(g);
    }
}

fn raw_hello(version: u16, max_frame: u32, groups: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    varint(u64::from(version), &mut body);
    body.extend_from_slice(&[0x11; 32]);
    body.extend_from_slice(&fresh_session());
    varint(u64::from(max_frame), &mut body);
    varint(5_000, &mut body);
    group_list(groups, &mut body);
    raw_frame(0x01, &body)
}

fn raw_publish(seq: u64, kind: PublishKind, groups: &[&[u8]], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    varint(seq, &mut body);
    body.push(match kind {
        PublishKind::Broadcast => 0,
        PublishKind::Produce => 1,
    });
    group_list(groups, &mut body);
    body.extend_from_slice(payload);
    raw_frame(0x10, &body)
}

fn publish(seq: u64, kind: PublishKind, groups: &[&'static str], payload: &[u8]) -> Vec<u8> {
    let groups: Vec<&[u8]> = groups.iter().map(|g| g.as_bytes()).collect();
    raw_publish(seq, kind, &groups, payload)
}

fn notify(group: &str, credit: i32) -> Vec<u8> {
    Frame::Notify(Notify { group, credit }).to_vec()
}

fn close_frame(code: CloseCode, detail: &str) -> Vec<u8> {
    Frame::Close(Close { code, detail }).to_vec()
}

/// The payload of a `Deliver` frame, with its delivery.
fn delivered(bytes: &[u8]) -> Option<(String, Delivery, Vec<u8>)> {
    match frame::decode(bytes) {
        Ok(Frame::Deliver(d)) => Some((d.group.to_owned(), d.delivery, d.payload.to_vec())),
        _ => None,
    }
}

/// Groups of `n` names `prefix-i`.
fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Relay: before the handshake
// ---------------------------------------------------------------------------------------------

/// One attack: bytes a stranger sends, and how the relay must end the connection.
struct Attack {
    what: &'static str,
    bytes: Vec<u8>,
    code: Option<CloseCode>,
    log: String,
}

fn attack(what: &'static str, bytes: Vec<u8>, code: Option<CloseCode>, log: &str) -> Attack {
    Attack {
        what,
        bytes,
        code,
        log: log.to_owned(),
    }
}

#[tokio::test]
async fn strangers_bytes_before_the_handshake_close_that_socket_only() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 3).await;
        let bystander = member(addr, &["bystanders"]).await;
        let mut bystander_events = bystander.events();

        let pv = Some(CloseCode::ProtocolViolation);
        let too_large = Some(CloseCode::FrameTooLarge);
        let long_name = [b'n'; 65];
        let seventeen: Vec<Vec<u8>> = (0..17).map(|i| format!("g{i}").into_bytes()).collect();
        let seventeen: Vec<&[u8]> = seventeen.iter().map(Vec::as_slice).collect();
        let good_hello = raw_hello(1, 4096, &[b"a"]);
        let mut hello_twice = good_hello.clone();
        hello_twice.extend_from_slice(&good_hello);
        let mut hello_then_publish = good_hello.clone();
        hello_then_publish.extend(publish(1, PublishKind::Broadcast, &["bystanders"], b"x"));
        let mut hello_then_notify = good_hello.clone();
        hello_then_notify.extend(notify("a", 5));
        let mut hello_then_bad_proof = good_hello.clone();
        hello_then_bad_proof.extend(raw_frame(0x03, &[0u8; 33]));
        let mut trailing = good_hello.clone();
        trailing[3] += 1;
        trailing.push(0);
        // A TLS ClientHello record header and a little of its body.
        let client_hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];

        let attacks = [
            attack(
                "HTTP request",
                b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(),
                too_large,
                "closing: frame too large: frame of 1195725860 bytes exceeds the limit of 2048",
            ),
            attack(
                "length prefix 0xFFFFFFFF",
                vec![0xff; 4],
                too_large,
                "frame of 4294967299 bytes exceeds the limit of 2048 bytes",
            ),
            attack(
                "length 2045 (one byte over the handshake limit)",
                vec![0, 0, 0x07, 0xfd],
                too_large,
                "frame of 2049 bytes exceeds the limit of 2048 bytes",
            ),
            attack("zero length", vec![0; 4], pv, "closing: protocol violation"),
            attack(
                "unknown kind",
                raw_frame(0xee, &[]),
                pv,
                "unknown frame kind 0xee",
            ),
            attack(
                "Hello with 17 groups",
                raw_hello(1, 4096, &seventeen),
                pv,
                "malformed hello frame",
            ),
            attack(
                "Hello with a 65-byte group name",
                raw_hello(1, 4096, &[&long_name]),
                pv,
                "group name is empty or longer than 64 bytes",
            ),
            attack(
                "Hello with an empty group name",
                raw_hello(1, 4096, &[b""]),
                pv,
                "group name is empty or longer than 64 bytes",
            ),
            attack(
                "Hello with a non-UTF-8 group name",
                raw_hello(1, 4096, &[&[0xff, 0xfe, b'a']]),
                pv,
                "malformed hello frame",
            ),
            attack(
                "Hello with max_frame 0",
                raw_hello(1, 0, &[b"a"]),
                pv,
                "max_frame 0 is below the minimum of 1024",
            ),
            attack(
                "Hello with max_frame 1023",
                raw_hello(1, 1023, &[]),
                pv,
                "max_frame 1023 is below the minimum of 1024",
            ),
            attack(
                "Hello of version 2",
                raw_hello(2, 4096, &[]),
                Some(CloseCode::UnsupportedVersion),
                "endpoint speaks version 2, relay speaks 1",
            ),
            attack(
                "Hello of version 65535",
                raw_hello(u16::MAX, 4096, &[]),
                Some(CloseCode::UnsupportedVersion),
                "endpoint speaks version 65535",
            ),
            attack(
                "Hello with a trailing byte",
                trailing,
                pv,
                "malformed hello frame",
            ),
            attack(
                "Hello cut short (header ends early)",
                raw_frame(0x01, &[0x01, 0x11, 0x11]),
                pv,
                "malformed hello frame",
            ),
            attack(
                "Proof before Hello",
                Frame::Proof(Proof { mac: [7; 32] }).to_vec(),
                pv,
                "proof frame before the handshake finished",
            ),
            attack(
                "Welcome from an endpoint",
                Frame::Welcome(Welcome {
                    mac: [0; 32],
                    max_frame: 4096,
                    last_seq: 0,
                    epoch: 1,
                })
                .to_vec(),
                pv,
                "welcome frame before the handshake finished",
            ),
            attack(
                "Ping before Hello",
                raw_frame(0x06, &[]),
                pv,
                "ping frame before the handshake finished",
            ),
            attack(
                "Publish before Hello",
                publish(1, PublishKind::Produce, &["bystanders"], b"job"),
                pv,
                "publish frame before the handshake finished",
            ),
            attack(
                "Ack before Hello",
                Frame::Ack(Ack { up_to: 1 }).to_vec(),
                pv,
                "ack frame before the handshake finished",
            ),
            attack(
                "Close with a 10 KiB detail before Hello",
                close_frame(CloseCode::Normal, &"d".repeat(10 * 1024)),
                too_large,
                "exceeds the limit of 2048 bytes",
            ),
            attack(
                "two Hellos",
                hello_twice,
                pv,
                "hello frame before the handshake finished",
            ),
            attack(
                "Publish after Hello, before Welcome",
                hello_then_publish,
                pv,
                "publish frame before the handshake finished",
            ),
            attack(
                "Notify after Hello, before Welcome",
                hello_then_notify,
                pv,
                "notify frame before the handshake finished",
            ),
            attack(
                "Proof of 33 bytes",
                hello_then_bad_proof,
                pv,
                "malformed proof frame",
            ),
            attack(
                "TLS ClientHello on the plain port",
                client_hello.to_vec(),
                None,
                "a TLS client connected to this plain-TCP relay",
            ),
        ];
        for a in &attacks {
            let mut raw = Raw::connect(addr).await;
            raw.send(&a.bytes).await;
            let end = raw.until_closed(a.what, PROMPTLY).await;
            assert_eq!(end.code(), a.code, "{}: {end:?}", a.what);
            logs.expect(&a.log).await;
        }
        let stats = relay.stats().await;
        assert_eq!(stats.broadcasts, 0, "{stats:?}");

        // The largest legal Hello (16 names of 64 bytes, every varint at its longest form
        // would be 1,107 bytes) is accepted: the relay answers with a Challenge.
        let names: Vec<Vec<u8>> = (0..16)
            .map(|i| format!("{i:02}{}", "x".repeat(62)).into_bytes())
            .collect();
        let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let mut raw = Raw::connect(addr).await;
        raw.send(&raw_hello(1, u32::MAX, &names)).await;
        let answer = raw.expect_frame("challenge to the largest Hello").await;
        assert!(matches!(frame::decode(&answer), Ok(Frame::Challenge(_))));
        drop(raw);

        assert_still_serving(addr).await;
        kept.check(addr).await;
        assert!(
            never_disconnected(&mut bystander_events),
            "the bystander was not disturbed"
        );
        relay.stop().await;
    })
    .await
}

/// PROTOCOL.md §2: a zero length is "an error" of its own; the relay reports it as a truncated
/// stream, which it is not (the connection is still open).
#[tokio::test]
async fn a_zero_length_frame_is_reported_as_such() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let mut raw = Raw::connect(relay.local_addr()).await;
        raw.send(&[0, 0, 0, 0]).await;
        let end = raw.until_closed("zero length", PROMPTLY).await;
        let End::Close(code, detail) = end else {
            panic!("expected a Close, got {end:?}");
        };
        assert_eq!(code, CloseCode::ProtocolViolation);
        assert!(
            !detail.contains("stream ended"),
            "the reason says the stream ended: {detail:?}"
        );
        assert!(
            !logs.text().contains("stream ended inside a frame"),
            "{}",
            logs.text()
        );
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn forged_replayed_and_reflected_proofs_are_refused() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 2).await;

        // Recorded: a good handshake (its Hello and Proof bytes).
        let nonce = [0x33; 32];
        let session = fresh_session();
        let hello = Frame::Hello(Hello {
            version: 1,
            nonce,
            session,
            max_frame: 4096,
            keepalive_ms: 5_000,
            groups: GroupList::from_slice(&["jobs"]).unwrap(),
        })
        .to_vec();
        let mut recorded = Raw::connect(addr).await;
        recorded.send(&hello).await;
        let challenge = recorded.expect_frame("challenge").await;
        let Ok(Frame::Challenge(Challenge { nonce: relay_nonce })) = frame::decode(&challenge)
        else {
            panic!("expected a Challenge");
        };
        let transcript = Transcript {
            version: 1,
            endpoint_nonce: &nonce,
            relay_nonce: &relay_nonce,
            session: &session,
            groups: &["jobs"],
        };
        let good_proof = Frame::Proof(Proof {
            mac: key().proof(Role::Endpoint, &transcript),
        })
        .to_vec();
        recorded.send(&good_proof).await;
        let welcome = recorded.expect_frame("welcome").await;
        let Ok(Frame::Welcome(w)) = frame::decode(&welcome) else {
            panic!("expected a Welcome");
        };
        assert!(key().verify(Role::Relay, &transcript, &w.mac));
        drop(recorded);

        // Each forgery on a new connection, with its own fresh relay nonce.
        let forgeries: [(&str, Vec<u8>); 2] = [
            // 1. The recorded Hello and Proof, replayed byte for byte.
            ("replayed proof", good_proof.clone()),
            // 2. All zeros.
            ("zero proof", Frame::Proof(Proof { mac: [0; 32] }).to_vec()),
        ];
        for (what, proof) in forgeries {
            let mut raw = Raw::connect(addr).await;
            raw.send(&hello).await;
            let challenge = raw.expect_frame("challenge").await;
            let Ok(Frame::Challenge(c)) = frame::decode(&challenge) else {
                panic!("expected a Challenge");
            };
            assert_ne!(c.nonce, relay_nonce, "the relay's nonce is fresh");
            raw.send(&proof).await;
            let end = raw.until_closed(what, PROMPTLY).await;
            assert_eq!(end.code(), Some(CloseCode::BadPassword), "{what}: {end:?}");
        }

        // 3. The endpoint's mac made with the relay's label (a reflection of a relay proof),
        // 4. a proof over other groups than the Hello's, 5. a proof with another password.
        for what in ["relay-label proof", "other groups", "other password"] {
            let mut raw = Raw::connect(addr).await;
            let nonce = [0x44; 32];
            raw.send_frame(&Frame::Hello(Hello {
                version: 1,
                nonce,
                session: raw.session,
                max_frame: 4096,
                keepalive_ms: 5_000,
                groups: GroupList::from_slice(&["jobs"]).unwrap(),
            }))
            .await;
            let challenge = raw.expect_frame("challenge").await;
            let Ok(Frame::Challenge(c)) = frame::decode(&challenge) else {
                panic!("expected a Challenge");
            };
            let groups: &[&str] = if what == "other groups" {
                &["jobs", "admin"]
            } else {
                &["jobs"]
            };
            let t = Transcript {
                version: 1,
                endpoint_nonce: &nonce,
                relay_nonce: &c.nonce,
                session: &raw.session,
                groups,
            };
            let mac = match what {
                "relay-label proof" => key().proof(Role::Relay, &t),
                "other password" => AuthKey::derive(b"guess").proof(Role::Endpoint, &t),
                _ => key().proof(Role::Endpoint, &t),
            };
            raw.send_frame(&Frame::Proof(Proof { mac })).await;
            let end = raw.until_closed(what, PROMPTLY).await;
            assert_eq!(end.code(), Some(CloseCode::BadPassword), "{what}: {end:?}");
        }
        logs.expect("closing: wrong password").await;
        assert_eq!(
            logs.count("closing: wrong password"),
            5,
            "one log line per forgery:\n{}",
            logs.text()
        );
        assert_eq!(relay.stats().await.auth_failures, 5);

        assert_still_serving(addr).await;
        kept.check(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_the_auth_deadline() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let deadline = Duration::from_millis(700);
        let relay = plain_relay(move |c| c.handshake_timeout = deadline).await;
        let addr = relay.local_addr();
        let good_hello = raw_hello(1, 4096, &[b"a"]);
        let openings: [(&str, Vec<u8>); 4] = [
            ("2 bytes of a length prefix", vec![0, 0]),
            (
                "a length prefix announcing 100 bytes, then silence",
                vec![0, 0, 0, 100],
            ),
            ("half a Hello", good_hello[..good_hello.len() / 2].to_vec()),
            ("a whole Hello and no Proof", good_hello.clone()),
        ];
        let mut raws = Vec::new();
        for (what, bytes) in &openings {
            let mut raw = Raw::connect(addr).await;
            raw.send(bytes).await;
            raws.push((*what, raw));
        }
        let started = Instant::now();
        // Meanwhile a legitimate endpoint is served.
        assert_still_serving(addr).await;
        for (what, raw) in &mut raws {
            let end = raw.until_closed(what, deadline * 4).await;
            assert_eq!(end.code(), Some(CloseCode::AuthTimeout), "{what}: {end:?}");
        }
        assert!(
            started.elapsed() < deadline * 4,
            "closed after {:?}",
            started.elapsed()
        );
        logs.expect("closing: authentication deadline passed").await;
        assert_eq!(relay.stats().await.auth_failures, 4);
        relay.stop().await;
    })
    .await
}

/// Bytes trickled during the handshake are no sign of life: a Hello sent a byte at a time does
/// not push the authentication deadline back.
#[tokio::test]
async fn a_hello_trickled_past_the_auth_deadline_is_closed_at_it() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let deadline = Duration::from_millis(700);
        let relay = plain_relay(move |c| c.handshake_timeout = deadline).await;
        let mut raw = Raw::connect(relay.local_addr()).await;
        let started = Instant::now();
        let hello = raw_hello(1, 4096, &[b"a"]);
        for byte in &hello[..hello.len() / 2] {
            if started.elapsed() > deadline * 2 || !raw.send(&[*byte]).await {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let end = raw.until_closed("the trickled Hello", deadline * 4).await;
        assert_eq!(end.code(), Some(CloseCode::AuthTimeout), "{end:?}");
        assert!(
            started.elapsed() < deadline * 4,
            "closed after {:?}",
            started.elapsed()
        );
        relay.stop().await;
    })
    .await
}

/// Past `Welcome`, a peer that announces a frame and sends a byte now and then (slowloris) is
/// alive by the keepalive rule, but not by the minimum frame rate: once its idle window has
/// passed, it is closed, whether the relay gathers the frame (large) or not, and others are
/// served meanwhile.
#[tokio::test]
async fn a_frame_trickled_after_welcome_is_closed_under_the_minimum_rate() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        for payload_len in [20_000usize, 300 * 1024] {
            let mut raw = Raw::connect(addr).await;
            raw.keepalive_ms = 200;
            raw.open(&[], 4096).await;
            let payload = vec![1u8; payload_len];
            let mut frame = vec![0u8; payload_len + 64];
            let n = Frame::Publish(frame::Publish {
                seq: 1,
                kind: PublishKind::Broadcast,
                groups: ["g"].into_iter().collect(),
                payload: &payload,
            })
            .encode(&mut frame)
            .unwrap();
            let started = Instant::now();
            // The header and a few bytes, then a byte every 100 ms: never silent for the
            // 600 ms idle window, and about 10 B/s.
            let mut sent = 64;
            raw.send(&frame[..sent]).await;
            while sent < n && started.elapsed() < Duration::from_secs(4) {
                sleep(Duration::from_millis(100)).await;
                if !raw.send(&frame[sent..sent + 1]).await {
                    break;
                }
                sent += 1;
            }
            let end = raw.until_closed("the trickled frame", PROMPTLY).await;
            assert_eq!(end.code(), Some(CloseCode::IdleTimeout), "{end:?}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{payload_len}: closed after {:?}",
                started.elapsed()
            );
            assert_still_serving(addr).await;
        }
        relay.stop().await;
    })
    .await
}

/// A connection that sends nothing at all is held for a fixed 10 s (the TLS sniff of the plain
/// relay, the TLS handshake of the TLS relay) instead of the configured handshake deadline,
/// and before that it is invisible to the relay's connection limit.
#[tokio::test]
async fn two_thousand_silent_connections_are_closed_at_the_auth_deadline() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let deadline = Duration::from_millis(500);
        let relay = plain_relay(move |c| c.handshake_timeout = deadline).await;
        let addr = relay.local_addr();
        let n = connection_budget(2000);
        let mut raws = Vec::with_capacity(n);
        for _ in 0..n {
            raws.push(Raw::connect(addr).await);
        }
        let opened = Instant::now();
        assert_still_serving(addr).await;
        for raw in &mut raws {
            let _ = raw
                .until_closed("a silent connection", Duration::from_secs(3))
                .await;
        }
        assert!(
            opened.elapsed() < deadline + Duration::from_secs(2),
            "closed only after {:?}",
            opened.elapsed()
        );
        relay.stop().await;
    })
    .await
}

/// How many connections a test may open: `wanted`, or fewer when the process may not open
/// two file descriptors per connection (the test's end and the relay's) with room to spare.
fn connection_budget(wanted: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    let n = wanted.min(soft.saturating_sub(256) / 2);
    if n < wanted {
        eprintln!("RLIMIT_NOFILE is {soft}: opening {n} connections instead of {wanted}");
    }
    n
}

#[tokio::test]
async fn two_thousand_half_open_connections_time_out_and_the_relay_keeps_serving() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let deadline = Duration::from_millis(1500);
        let relay = plain_relay(move |c| c.handshake_timeout = deadline).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 2).await;
        let n = connection_budget(2000);
        let mut raws = Vec::with_capacity(n);
        let first = Instant::now();
        for _ in 0..n {
            let mut raw = Raw::connect(addr).await;
            // Two bytes: past the TLS sniff, never a whole length prefix.
            raw.send(&[0, 0]).await;
            raws.push(raw);
        }
        let opened = first.elapsed();
        eprintln!("{n} connections opened in {opened:?}");
        // While they hang, legitimate endpoints are served.
        assert_still_serving(addr).await;
        let mut auth_timeouts = 0;
        for raw in &mut raws {
            let end = raw
                .until_closed("a half-open connection", deadline + Duration::from_secs(8))
                .await;
            if end.code() == Some(CloseCode::AuthTimeout) {
                auth_timeouts += 1;
            }
        }
        let all_closed = first.elapsed();
        assert_eq!(auth_timeouts, n, "every one gets AuthTimeout");
        assert!(
            all_closed < opened + deadline + Duration::from_secs(2),
            "the last closed {all_closed:?} after the first opened (opening took {opened:?})"
        );
        assert!(logs.count("closing: authentication deadline passed") >= n);
        assert_still_serving(addr).await;
        kept.check(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn unauthenticated_connections_past_the_limit_are_told_so() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| {
            c.max_connections = 20;
            c.handshake_timeout = Duration::from_millis(800);
        })
        .await;
        let addr = relay.local_addr();
        let mut raws = Vec::new();
        for _ in 0..40 {
            let mut raw = Raw::connect(addr).await;
            raw.send(&[0]).await;
            raws.push(raw);
        }
        let mut too_many = 0;
        let mut timed_out = 0;
        for raw in &mut raws {
            match raw
                .until_closed("over the limit", Duration::from_secs(3))
                .await
                .code()
            {
                Some(CloseCode::TooManyConnections) => too_many += 1,
                Some(CloseCode::AuthTimeout) => timed_out += 1,
                other => panic!("unexpected end {other:?}"),
            }
        }
        assert_eq!((too_many, timed_out), (20, 20));
        logs.expect("closing: relay has too many connections").await;
        // The slots are free again once the strangers are gone.
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Relay: after the handshake
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_frames_after_welcome_close_that_connection_only() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.max_frame = 64 * 1024).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 3).await;
        let bystander = member(addr, &["bystanders"]).await;
        let mut bystander_events = bystander.events();

        let pv = Some(CloseCode::ProtocolViolation);
        let seventeen: Vec<Vec<u8>> = (0..17).map(|i| format!("g{i}").into_bytes()).collect();
        let seventeen: Vec<&[u8]> = seventeen.iter().map(Vec::as_slice).collect();
        let attacks = [
            attack(
                "Ack for tag 2^64-1",
                Frame::Ack(Ack { up_to: u64::MAX }).to_vec(),
                pv,
                "ack for delivery 18446744073709551615, but only 0 were sent",
            ),
            attack(
                "Notify for a group not joined",
                notify("elsewhere", 1),
                pv,
                "notify for group \"elsewhere\", which this endpoint has not joined",
            ),
            attack(
                "a second Hello",
                raw_hello(1, 4096, &[b"jobs"]),
                pv,
                "hello frame not allowed from an endpoint",
            ),
            attack(
                "a second Proof",
                Frame::Proof(Proof { mac: [0; 32] }).to_vec(),
                pv,
                "proof frame not allowed from an endpoint",
            ),
            attack(
                "a Deliver from the endpoint",
                Frame::Deliver(Deliver {
                    group: "jobs",
                    delivery: Delivery::Produced { tag: 1 },
                    payload: b"x",
                })
                .to_vec(),
                pv,
                "deliver frame not allowed from an endpoint",
            ),
            attack(
                "a Confirm from the endpoint",
                Frame::Confirm(Confirm { up_to: 1 }).to_vec(),
                pv,
                "confirm frame not allowed from an endpoint",
            ),
            attack(
                "Publish to 17 groups",
                raw_publish(1, PublishKind::Broadcast, &seventeen, b"x"),
                pv,
                "malformed publish frame",
            ),
            attack(
                "Publish to no group",
                raw_publish(1, PublishKind::Broadcast, &[], b"x"),
                pv,
                "malformed publish frame",
            ),
            attack(
                "Publish to a 65-byte group name",
                raw_publish(1, PublishKind::Produce, &[&[b'g'; 65]], b"x"),
                pv,
                "group name is empty or longer than 64 bytes",
            ),
            attack(
                "Publish of kind 2",
                {
                    let mut f = publish(1, PublishKind::Produce, &["jobs"], b"");
                    f[5 + 1] = 2;
                    f
                },
                pv,
                "malformed publish frame",
            ),
            attack(
                "Ping with a body",
                raw_frame(0x06, &[0]),
                pv,
                "malformed ping frame",
            ),
            attack(
                "Notify with a non-UTF-8 group",
                raw_frame(0x11, &[2, 0xc3, 0x28, 2]),
                pv,
                "malformed notify frame",
            ),
            attack(
                "a frame over the relay's max_frame",
                vec![0, 0x10, 0, 0, 0x10],
                Some(CloseCode::FrameTooLarge),
                "frame of 1048580 bytes exceeds the limit of 65536 bytes",
            ),
            attack(
                "unknown kind 0x99",
                raw_frame(0x99, &[1, 2, 3]),
                pv,
                "unknown frame kind 0x99",
            ),
        ];
        for a in &attacks {
            let mut raw = Raw::connect(addr).await;
            raw.open(&["jobs"], 4096).await;
            raw.send(&a.bytes).await;
            let end = raw.until_closed(a.what, PROMPTLY).await;
            assert_eq!(end.code(), a.code, "{}: {end:?}", a.what);
            logs.expect(&a.log).await;
        }

        // Positive controls on a raw connection: Ping is answered with Pong, a Publish to 16
        // groups is accepted and confirmed.
        let mut raw = Raw::connect(addr).await;
        raw.open(&[], 4096).await;
        raw.send(&raw_frame(0x06, &[])).await;
        raw.until("pong", |f| matches!(f, Frame::Pong).then_some(()))
            .await;
        let sixteen = names("sixteen", 16);
        let sixteen: Vec<&[u8]> = sixteen.iter().map(|s| s.as_bytes()).collect();
        raw.send(&raw_publish(1, PublishKind::Broadcast, &sixteen, b"x"))
            .await;
        let up_to = raw
            .until("confirm", |f| match f {
                Frame::Confirm(c) => Some(c.up_to),
                _ => None,
            })
            .await;
        assert_eq!(up_to, 1);
        drop(raw);

        assert_still_serving(addr).await;
        kept.check(addr).await;
        assert!(
            never_disconnected(&mut bystander_events),
            "bystander undisturbed"
        );
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn extreme_credit_neither_overflows_nor_disturbs_anyone() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 2).await;
        let mut raw = Raw::connect(addr).await;
        raw.open(&["jobs"], 4096).await;
        let mut burst = Vec::new();
        for credit in [
            i32::MAX,
            i32::MAX,
            i32::MAX,
            i32::MIN,
            i32::MIN,
            i32::MAX,
            -1,
            1,
        ] {
            burst.extend(notify("jobs", credit));
        }
        for _ in 0..1000 {
            burst.extend(notify("jobs", i32::MAX));
        }
        raw.send(&burst).await;
        // Another consumer interleaves its own grants, so grants cannot merge.
        let mut other = Raw::connect(addr).await;
        other.open(&["jobs"], 4096).await;
        other.send(&notify("jobs", 1)).await;
        raw.send(&notify("jobs", i32::MAX)).await;

        let producer = member(addr, &[]).await;
        for i in 0..5 {
            let receipt = producer.produce(&format!("job {i}"), "jobs").unwrap();
            within("confirmed", PROMPTLY, receipt.wait())
                .await
                .expect("produce accepted");
        }
        // The raw consumer had standing credit (granted first): it gets all five, tags 1..=5.
        let mut tags = Vec::new();
        while tags.len() < 5 {
            let tag = raw
                .until("deliveries", |f| match f {
                    Frame::Deliver(Deliver {
                        delivery: Delivery::Produced { tag },
                        ..
                    }) => Some(tag),
                    _ => None,
                })
                .await;
            tags.push(tag);
        }
        assert_eq!(tags, [1, 2, 3, 4, 5]);
        raw.send(&Frame::Ack(Ack { up_to: 5 }).to_vec()).await;
        raw.send(&notify("jobs", i32::MIN)).await;
        raw.send(&raw_frame(0x06, &[])).await;
        raw.until("pong", |f| matches!(f, Frame::Pong).then_some(()))
            .await;
        assert!(
            other
                .drain_for(QUIET)
                .await
                .iter()
                .all(|f| delivered(f).is_none())
        );
        let _ = producer.stop().await;
        assert_still_serving(addr).await;
        kept.check(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn out_of_order_and_repeated_publish_numbers() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let mut raw = Raw::connect(addr).await;
        raw.open(&["seqs"], 4096).await;
        // 5, 3 (lower: taken for a resend), 5 again (a resend), 6.
        let mut burst = Vec::new();
        for (seq, what) in [(5, "five"), (3, "three"), (5, "five again"), (6, "six")] {
            burst.extend(publish(
                seq,
                PublishKind::Broadcast,
                &["seqs"],
                what.as_bytes(),
            ));
        }
        raw.send(&burst).await;
        let frames = raw.drain_for(QUIET).await;
        let got: Vec<String> = frames
            .iter()
            .filter_map(|f| delivered(f))
            .map(|(_, _, p)| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(got, ["five", "six"], "only increasing numbers are handled");
        let confirmed: Vec<u64> = frames
            .iter()
            .filter_map(|f| match frame::decode(f) {
                Ok(Frame::Confirm(c)) => Some(c.up_to),
                _ => None,
            })
            .collect();
        assert!(!confirmed.is_empty(), "the resends are confirmed too");
        let stats = relay.stats().await;
        assert_eq!(stats.duplicates, 2, "{stats:?}");
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_flood_of_tiny_publishes_is_bounded_and_others_keep_their_latency() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        const N: u64 = 20_000;
        const MAX_QUEUE: usize = 1_000;
        let relay = plain_relay(|c| c.default_limits.max_queue = MAX_QUEUE).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 3).await;
        let a = member(addr, &["chat"]).await;
        let b = member(addr, &["chat"]).await;

        let mut raw = Raw::connect(addr).await;
        raw.open(&[], 4096).await;
        let mut burst = Vec::with_capacity(N as usize * 16);
        for seq in 1..=N {
            burst.extend(publish(seq, PublishKind::Produce, &["flood"], b"."));
        }
        let leftover = std::mem::take(&mut raw.buf);
        let (mut reader, mut writer) = tokio::io::split(raw.io);
        let flood = async move {
            writer.write_all(&burst).await.expect("flood written");
            writer
        };
        let verdicts = async move {
            let mut buf = leftover;
            let mut rejected = 0u64;
            let mut confirmed = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            while confirmed < N {
                match frame::frame_len(&buf, u32::MAX) {
                    Ok(Some(len)) => {
                        let bytes: Vec<u8> = buf.drain(..len).collect();
                        match frame::decode(&bytes).expect("a valid frame") {
                            Frame::PublishRejected(r) => {
                                assert_eq!(r.reason, RejectReason::QueueFull);
                                rejected += 1;
                            }
                            Frame::Confirm(c) => confirmed = c.up_to,
                            other => panic!("unexpected {other:?}"),
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => panic!("{e}"),
                }
                let n = reader.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the relay closed the flooding connection");
                buf.extend_from_slice(&chunk[..n]);
            }
            rejected
        };
        // While the flood is handled, a broadcast round trip of the others stays quick.
        let latency = async {
            let started = Instant::now();
            let receipt = a.broadcast(&"ping".to_owned(), "chat").unwrap();
            within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
            assert_eq!(recv_n(&b, 1, PROMPTLY).await, ["ping"]);
            started.elapsed()
        };
        let (_writer, rejected, took) = within("flood handled", Duration::from_secs(15), async {
            tokio::join!(flood, verdicts, latency)
        })
        .await;
        eprintln!("broadcast round trip during the flood: {took:?}");
        assert!(took < Duration::from_secs(2), "round trip took {took:?}");
        assert_eq!(rejected, N - MAX_QUEUE as u64);
        let stats = relay.stats().await;
        assert_eq!(stats.produced, MAX_QUEUE as u64 + 3, "{stats:?}");
        assert_still_serving(addr).await;
        kept.check(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_session_id_used_by_two_live_connections() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let producer = member(addr, &[]).await;
        let mut first = Raw::connect(addr).await;
        first.open(&["jobs"], 4096).await;
        first.send(&notify("jobs", 2)).await;
        first
            .send(&publish(1, PublishKind::Broadcast, &["scratch"], b""))
            .await;
        first
            .until("confirm", |f| matches!(f, Frame::Confirm(_)).then_some(()))
            .await;
        for job in ["job 1", "job 2"] {
            let receipt = producer.produce(&job.to_owned(), "jobs").unwrap();
            within("confirmed", PROMPTLY, receipt.wait()).await.unwrap();
        }
        let mut got = 0;
        while got < 2 {
            first
                .until("delivery", |f| matches!(f, Frame::Deliver(_)).then_some(()))
                .await;
            got += 1;
        }
        // A second connection with the same session id (and the password) takes over; the
        // first learns why, and its two unacknowledged jobs go back in line.
        let mut second = Raw::connect(addr).await;
        second.session = first.session;
        let welcome = second.open(&["jobs"], 4096).await;
        assert_eq!(
            welcome.last_seq, 1,
            "the session's publish numbers carry over"
        );
        let end = first.until_closed("taken over", PROMPTLY).await;
        assert_eq!(end.code(), Some(CloseCode::SessionTakenOver), "{end:?}");
        logs.expect("closing: session taken over by a newer connection")
            .await;
        second.send(&notify("jobs", 2)).await;
        let mut jobs = Vec::new();
        while jobs.len() < 2 {
            let job = second
                .until("redelivery", |f| match f {
                    // A postcard string: a length byte, then the text.
                    Frame::Deliver(d) => Some(String::from_utf8(d.payload[1..].to_vec()).unwrap()),
                    _ => None,
                })
                .await;
            jobs.push(job);
        }
        assert_eq!(jobs, ["job 1", "job 2"]);
        assert_eq!(relay.stats().await.redelivered, 2);

        // Two handshakes of one session interleaved: the one that finishes last wins.
        let mut x = Raw::connect(addr).await;
        let mut y = Raw::connect(addr).await;
        let session = fresh_session();
        x.session = session;
        y.session = session;
        x.open(&[], 4096).await;
        y.open(&[], 4096).await;
        assert_eq!(
            x.until_closed("x taken over", PROMPTLY).await.code(),
            Some(CloseCode::SessionTakenOver)
        );
        y.send(&raw_frame(0x06, &[])).await;
        y.until("pong", |f| matches!(f, Frame::Pong).then_some(()))
            .await;
        let _ = producer.stop().await;
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn frames_after_close_are_ignored() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let watcher = member(addr, &["after"]).await;
        let mut raw = Raw::connect(addr).await;
        raw.open(&["after"], 4096).await;
        let mut burst = close_frame(CloseCode::Normal, "");
        burst.extend(publish(1, PublishKind::Broadcast, &["after"], b"ghost"));
        burst.extend(publish(2, PublishKind::Produce, &["after"], b"ghost job"));
        burst.extend(vec![0xff; 64]);
        raw.send(&burst).await;
        let end = raw.until_closed("graceful close", PROMPTLY).await;
        assert_eq!(end, End::Close(CloseCode::Normal, String::new()));
        logs.expect("closing: the endpoint says: closed normally")
            .await;
        expect_nothing(&watcher).await;
        let stats = relay.stats().await;
        assert_eq!((stats.broadcasts, stats.produced), (0, 0), "{stats:?}");
        let _ = watcher.stop().await;
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// PROTOCOL.md §2: "The relay never sends an endpoint a frame larger than it said"; §9.11: an
/// endpoint's `Close` "ends the connection with that code" — the relay echoes the endpoint's own
/// code and detail back, whatever their size, so an endpoint that says it takes 1,024 bytes
/// gets a 10 KiB frame, and an endpoint's `Close { BadPassword }` is logged as "wrong password"
/// for a connection that proved the password.
#[tokio::test]
async fn an_endpoints_close_is_not_echoed_past_its_max_frame() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let mut raw = Raw::connect(addr).await;
        raw.open(&[], 1024).await;
        raw.send(&close_frame(CloseCode::BadPassword, &"d".repeat(10 * 1024)))
            .await;
        let mut largest = 0;
        while let Some(bytes) = within("answer", PROMPTLY, raw.next_frame()).await {
            largest = largest.max(bytes.len());
        }
        assert!(
            largest <= 1024,
            "the relay sent a {largest}-byte frame to an endpoint that takes 1,024"
        );
        assert!(
            !logs.text().contains("closing: wrong password"),
            "an authenticated endpoint's Close is logged as a wrong password:\n{}",
            logs.text()
        );
        relay.stop().await;
    })
    .await
}

/// PROTOCOL.md §9.11: "An endpoint's `Close { Normal }` is answered with `Close { Normal }`"
/// and the relay "handles everything the endpoint sent before its `Close`". A peer that sends a
/// publish and its `Close`, then shuts down its writing half (as `nc -N`, or any client that
/// half-closes after its last request), loses both about one time in three: the reader task
/// reports the bytes on the input channel and then `Lost` on the command channel, and the core's
/// unbiased `select!` often takes `Lost` first, forgets the connection and drops the input.
#[tokio::test]
async fn what_a_peer_sent_before_half_closing_is_handled() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        const N: usize = 100;
        let mut answered = 0;
        for i in 0..N {
            let mut raw = Raw::connect(addr).await;
            raw.open(&[], 4096).await;
            let mut burst = publish(
                1,
                PublishKind::Broadcast,
                &["halfclose"],
                format!("{i}").as_bytes(),
            );
            burst.extend(close_frame(CloseCode::Normal, ""));
            raw.send(&burst).await;
            let _ = raw.io.shutdown().await;
            if raw.until_closed("half-closed", PROMPTLY).await.code() == Some(CloseCode::Normal) {
                answered += 1;
            }
        }
        let stats = relay.stats().await;
        assert_eq!(
            (answered, stats.broadcasts),
            (N, N as u64),
            "Close answered, publishes handled, of {N} half-closed connections"
        );
        relay.stop().await;
    })
    .await
}

/// DESIGN.md §7: a readable reason on the relay, not one a peer can write for it.
#[tokio::test]
async fn a_close_detail_cannot_forge_relay_log_lines() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let mut raw = Raw::connect(relay.local_addr()).await;
        raw.open(&[], 4096).await;
        let forged = "bye\n2099-01-01T00:00:00.000000Z  INFO tlsro_relay::server: FORGED \
                      endpoint authenticated\x1b[2J";
        raw.send(&close_frame(CloseCode::ProtocolViolation, forged))
            .await;
        let _ = raw.until_closed("close", PROMPTLY).await;
        logs.expect("the endpoint says: protocol violation").await;
        let text = logs.text();
        assert!(
            !text.lines().any(|l| l.starts_with("2099-01-01")),
            "a peer forged a log line:\n{text}"
        );
        assert!(
            !text.contains('\x1b'),
            "a peer wrote an escape code into the log"
        );
        relay.stop().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Relay: duplicates in group lists
// ---------------------------------------------------------------------------------------------

/// PROTOCOL.md §4: `Hello.groups` is "without duplicates"; produce means "exactly one member of
/// the group will get it". The relay accepts duplicates in `Hello.groups` (the member is added
/// twice and gets every broadcast twice) and in `Publish.groups` (a broadcast is sent twice with
/// two numbers, a produced object is queued twice); the std endpoint's `broadcast_to` /
/// `produce_to` pass duplicates through.
#[tokio::test]
async fn duplicate_group_names_count_once() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        // A raw member that lists its group twice is refused before the handshake goes on.
        let mut raw = Raw::connect(addr).await;
        let hello = Frame::Hello(Hello {
            version: 1,
            nonce: [1; 32],
            session: [2; 16],
            max_frame: 4096,
            keepalive_ms: 5_000,
            groups: ["dup", "dup"].into_iter().collect(),
        });
        let mut buf = vec![0u8; hello.encoded_len()];
        let n = hello.encode(&mut buf).unwrap();
        raw.send(&buf[..n]).await;
        let answer = raw.expect_frame("answer").await;
        // The std endpoint's API with a duplicate target.
        let consumer = member(addr, &["jobs", "news"]).await;
        consumer.notify("jobs", 10).unwrap();
        let producer = member(addr, &[]).await;
        let receipt = producer
            .produce_to(&"one job".to_owned(), &["jobs", "jobs"])
            .unwrap();
        within("confirmed", PROMPTLY, receipt.wait()).await.unwrap();
        let receipt = producer
            .broadcast_to(&"one news".to_owned(), &["news", "news"])
            .unwrap();
        within("confirmed", PROMPTLY, receipt.wait()).await.unwrap();
        let mut got = recv_n(&consumer, 4, Duration::from_millis(800)).await;
        got.sort();
        // A Hello naming a group twice is refused as a protocol violation (joining once would
        // be fine too); the endpoint API merges duplicate targets.
        assert!(
            matches!(
                frame::decode(&answer),
                Ok(Frame::Close(c)) if c.code == CloseCode::ProtocolViolation
            ),
            "{answer:?}"
        );
        assert_eq!(got, vec!["one job".to_owned(), "one news".to_owned()]);
        relay.stop().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Relay: resource exhaustion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_producer_flooding_a_group_without_consumers_meets_the_queue_bound() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        for overflow in [Overflow::Reject, Overflow::DropOldest] {
            let relay = plain_relay(move |c| {
                c.default_limits = GroupLimits {
                    max_members: None,
                    max_queue: 50,
                    overflow,
                }
            })
            .await;
            let addr = relay.local_addr();
            let kept = Queued::put(addr, 3).await;
            let producer = member(addr, &[]).await;
            let mut rejected = 0;
            for i in 0..200 {
                let receipt = producer.produce(&format!("{i}"), "flood").unwrap();
                match within("verdict", PROMPTLY, receipt.wait()).await {
                    Ok(()) => {}
                    Err(PublishError::Rejected(r)) => {
                        assert_eq!(r.len(), 1);
                        assert_eq!(r[0].group, "flood");
                        assert_eq!(r[0].reason, RejectReason::QueueFull);
                        rejected += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let stats = relay.stats().await;
            let expected: Vec<String> = match overflow {
                Overflow::Reject => {
                    assert_eq!((rejected, stats.dropped_oldest), (150, 0), "{stats:?}");
                    (0..50).map(|i| i.to_string()).collect()
                }
                Overflow::DropOldest => {
                    assert_eq!((rejected, stats.dropped_oldest), (0, 150), "{stats:?}");
                    (150..200).map(|i| i.to_string()).collect()
                }
            };
            let consumer = member(addr, &["flood"]).await;
            consumer.notify("flood", 200).unwrap();
            assert_eq!(recv_n(&consumer, 50, PROMPTLY).await, expected);
            expect_nothing(&consumer).await;
            let _ = producer.stop().await;
            let _ = consumer.stop().await;
            assert_still_serving(addr).await;
            kept.check(addr).await;
            relay.stop().await;
        }
    })
    .await
}

/// A 64 KiB-ish produced object whose first 8 characters are its number.
fn job(i: usize, size: usize) -> String {
    format!("{i:08}{}", "j".repeat(size))
}

/// A consumer that grants huge credit and then never reads is paced, not fed without bound: the
/// relay stops dispatching to it once its backlog passes half the outbound limit (so relay
/// memory stays bounded and it is not taken for a slow consumer: it asked for the objects), and
/// when it goes away, what it never acknowledged goes to a consumer that reads: every object
/// once, in order.
#[tokio::test]
async fn a_consumer_with_huge_credit_that_never_reads_is_paced_and_loses_nothing() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.outbound_limit = 256 * 1024).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 2).await;
        let mut hog = Raw::connect(addr).await;
        hog.open(&["jobs"], 1 << 20).await;
        hog.send(&notify("jobs", i32::MAX)).await;
        hog.send(&raw_frame(0x06, &[])).await;
        hog.until("pong", |f| matches!(f, Frame::Pong).then_some(()))
            .await;
        // The hog never reads again; 4 MiB of objects (16 times the outbound limit) follow.
        let producer = member(addr, &[]).await;
        let n = 128;
        for i in 0..n {
            let receipt = producer.produce(&job(i, 32 * 1024), "jobs").unwrap();
            within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
        }
        let stats = relay.stats().await;
        assert_eq!(stats.slow_consumers, 0, "{stats:?}");
        drop(hog);
        sleep(QUIET).await;
        // Every object reaches a consumer that reads, in order, once.
        let consumer = within(
            "connect",
            PROMPTLY,
            endpoint(addr)
                .groups(["jobs"])
                .max_queued_bytes(64 << 20)
                .connect(),
        )
        .await
        .unwrap();
        let got = consume_in_steps(&consumer, "jobs", n, 4).await;
        let numbers: Vec<usize> = got.iter().map(|v| v[..8].parse().unwrap()).collect();
        assert_eq!(numbers, (0..n).collect::<Vec<_>>());
        expect_nothing(&consumer).await;
        let _ = producer.stop().await;
        let _ = consumer.stop().await;
        assert_still_serving(addr).await;
        kept.check(addr).await;
        relay.stop().await;
    })
    .await
}

/// Takes `n` produced objects of `group`, granting `step` credits at a time (so that no grant
/// asks for more than the relay's outbound limit at once).
async fn consume_in_steps(
    consumer: &Endpoint<String>,
    group: &str,
    n: usize,
    step: usize,
) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let want = step.min(n - got.len());
        consumer.notify(group, want as i32).unwrap();
        let batch = recv_n(consumer, want, PROMPTLY).await;
        let done = batch.len() < want;
        got.extend(batch);
        if done {
            break;
        }
    }
    got
}

/// DESIGN.md §4: produced objects are pulled with credit; the slow-consumer rule is for a member
/// that "falls behind". A consumer that grants credit for (or drains with `Notify { -1 }`) more
/// queued bytes than `outbound_limit` is closed as a slow consumer before a byte was written,
/// its objects go back, and on its automatic reconnect it re-grants the same credit: it is
/// closed again, for ever (a reconnect loop every ~25 ms that delivers nothing). With the
/// defaults this is five queued 16 MiB objects and `notify(g, 5)`, or `notify(g, -1)` on any
/// queue holding more than 64 MiB.
#[tokio::test]
async fn granting_credit_for_more_than_the_outbound_limit_is_not_slowness() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.outbound_limit = 256 * 1024).await;
        let addr = relay.local_addr();
        const N: usize = 20;
        let producer = member(addr, &[]).await;
        for i in 0..N {
            let receipt = producer.produce(&job(i, 32 * 1024), "backlog").unwrap();
            within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
        }
        // 20 × 32 KiB = 640 KiB queued; the consumer asks for all of it at once.
        let consumer = within(
            "connect",
            PROMPTLY,
            endpoint(addr)
                .groups(["backlog"])
                .max_queued_bytes(64 << 20)
                .connect(),
        )
        .await
        .unwrap();
        consumer.notify("backlog", N as i32).unwrap();
        let got = recv_n(&consumer, N, PROMPTLY).await;
        let stats = relay.stats().await;
        eprintln!(
            "{} objects received, {} slow-consumer closes, {} log lines about it",
            got.len(),
            stats.slow_consumers,
            logs.count("closing: slow consumer")
        );
        assert_eq!(got.len(), N, "{stats:?}");
        assert_eq!(stats.slow_consumers, 0, "{stats:?}");
        relay.stop().await;
    })
    .await
}

/// At-least-once (DESIGN.md §4) must hold when the slow-consumer rule fires in the middle of a
/// `Notify { credit: -1 }`: the relay takes everything queued out of the queue and hands it to
/// the consumer one by one. (Before fc5ddc7 the objects handed after the close were recorded in
/// flight on a closed connection and lost; slow consumers are now closed after the input is
/// handled. This guards that.)
#[tokio::test]
async fn draining_into_a_slow_consumer_loses_nothing() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.outbound_limit = 64 * 1024).await;
        let addr = relay.local_addr();
        const N: usize = 100;
        let producer = member(addr, &[]).await;
        for i in 0..N {
            let receipt = producer.produce(&job(i, 8 * 1024), "drain").unwrap();
            within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
        }
        let mut greedy = Raw::connect(addr).await;
        greedy.open(&["drain"], 1 << 20).await;
        greedy.send(&notify("drain", -1)).await;
        // 800 KiB for a 64 KiB outbound limit: paced, every object arrives, nobody is closed.
        for _ in 0..N {
            greedy
                .until("a delivery", |f| {
                    matches!(f, Frame::Deliver(_)).then_some(())
                })
                .await;
        }
        assert_eq!(relay.stats().await.slow_consumers, 0);
        // It never acknowledges and goes away: everything goes back in line, in order.
        drop(greedy);
        sleep(QUIET).await;
        let _ = &logs;
        let consumer = member(addr, &["drain"]).await;
        let got = consume_in_steps(&consumer, "drain", N, 4).await;
        let numbers: Vec<usize> = got.iter().map(|v| v[..8].parse().unwrap()).collect();
        assert_eq!(
            numbers,
            (0..N).collect::<Vec<_>>(),
            "{:?}",
            relay.stats().await
        );
        relay.stop().await;
    })
    .await
}

/// Groups are created by a join or a publish and never forgotten, so a relay that has seen
/// `max_groups` group names refuses every new one forever — even once nobody is in them and
/// nothing is queued or retained — with the *permanent* close code `GroupRefused`: an endpoint
/// with a fresh group stops for good. Any authenticated endpoint (or merely many robots with
/// groups of their own over the relay's lifetime) exhausts the table.
#[tokio::test]
async fn groups_nobody_uses_any_more_do_not_count_against_max_groups() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.max_groups = 8).await;
        let addr = relay.local_addr();
        for name in names("passing", 8) {
            let e = member(addr, &[&name]).await;
            let _ = e.stop().await;
        }
        sleep(QUIET).await;
        let result = within(
            "connect",
            PROMPTLY,
            endpoint(addr).groups(["fresh"]).connect(),
        )
        .await;
        match result {
            Ok(e) => {
                let _ = e.stop().await;
            }
            Err(e) => panic!(
                "a new group is refused although no group has a member, a queue or a retained \
                 value (permanent: {}): {e}",
                e.is_permanent()
            ),
        }
        relay.stop().await;
    })
    .await
}

/// §9.8 ("a produced object too large for an endpoint waits for a consumer that can take it")
/// meets §9.4 (grants in order): every produce and every Notify makes `dispatch` try each grant
/// against each queued object, O(grants × queue) on the relay's single core task, and grants of
/// different connections never merge. Small consumers (microcontrollers with a few KiB of
/// `max_frame`) waiting on a queue of larger objects — or anyone with the password opening many
/// connections that each grant 1 — make every produce of that group stall the whole relay
/// (in this test, 150 grants × 3,000 waiting objects: ~20 ms per produce in a debug build; with
/// the default `max_queue` of 100,000 and 1,000 grants, ~10⁸ steps per produce).
#[tokio::test]
async fn small_consumers_waiting_on_large_objects_do_not_stall_the_relay() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        const Q: u64 = 3000;
        const G: usize = 150;
        const MORE: u64 = 20;
        let mut producer = Raw::connect(addr).await;
        producer.open(&[], 4096).await;
        let mut seq = 0;
        let mut produce = async |producer: &mut Raw, n: u64| {
            let started = Instant::now();
            let mut burst = Vec::new();
            for _ in 0..n {
                seq += 1;
                burst.extend(publish(seq, PublishKind::Produce, &["big"], &[7u8; 2048]));
            }
            producer.send(&burst).await;
            let last = seq;
            producer
                .until("confirm", |f| match f {
                    Frame::Confirm(c) if c.up_to == last => Some(()),
                    _ => None,
                })
                .await;
            started.elapsed()
        };
        // 2 KiB objects nobody with a 1 KiB limit can take.
        produce(&mut producer, Q).await;
        let mut before = Duration::ZERO;
        for _ in 0..MORE {
            before += produce(&mut producer, 1).await;
        }
        let started = Instant::now();
        let mut small = Vec::new();
        for _ in 0..G {
            let mut raw = Raw::connect(addr).await;
            raw.open(&["big"], 1024).await;
            raw.send(&notify("big", 1)).await;
            small.push(raw);
        }
        let granting = started.elapsed();
        let mut after = Duration::ZERO;
        for _ in 0..MORE {
            after += produce(&mut producer, 1).await;
        }
        eprintln!(
            "{MORE} produces one by one: {before:?} before, {after:?} with {G} small grants \
             waiting ({granting:?} to grant)"
        );
        assert!(
            after < before * 3 + Duration::from_millis(50),
            "{MORE} produces took {after:?} with {G} small grants waiting, {before:?} without"
        );
        relay.stop().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// TLS relay
// ---------------------------------------------------------------------------------------------

struct TempCreds(PathBuf);

impl TempCreds {
    fn generate() -> TempCreds {
        let dir =
            std::env::temp_dir().join(unique(&format!("tlsro-hostile-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir);
        tlsro::credentials::generate(&tlsro::credentials::GenerateOptions::new(&dir))
            .expect("credentials");
        TempCreds(dir)
    }
}

impl Drop for TempCreds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn bytes_at_the_tls_port() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let creds = TempCreds::generate();
        let relay = tls_relay(&creds, |c| c.handshake_timeout = Duration::from_millis(800)).await;
        let addr = relay.local_addr();

        // Not TLS at all: a plain Hello, garbage, an oversize prefix.
        for (what, bytes) in [
            ("a plain Hello on the TLS port", raw_hello(1, 4096, &[b"a"])),
            ("an HTTP request", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("0xFF bytes", vec![0xff; 16]),
        ] {
            let mut raw = Raw::connect(addr).await;
            raw.send(&bytes).await;
            let end = raw.until_closed(what, PROMPTLY).await;
            assert_eq!(end, End::Eof, "{what}");
        }
        logs.expect("TLS handshake failed").await;
        logs.expect("(not a TLS client: a plain endpoint on the TLS port?)")
            .await;

        // Real TLS, hostile frames inside it.
        let tls_raw = || async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            Raw::over(tls_handshake(&creds.0, tcp).await.expect("TLS handshake"))
        };
        let mut raw = tls_raw().await;
        raw.send(&[0xff; 4]).await;
        let end = raw.until_closed("oversize inside TLS", PROMPTLY).await;
        assert_eq!(end.code(), Some(CloseCode::FrameTooLarge), "{end:?}");
        let mut raw = tls_raw().await;
        raw.send(&Frame::Proof(Proof { mac: [1; 32] }).to_vec())
            .await;
        let end = raw.until_closed("proof first inside TLS", PROMPTLY).await;
        assert_eq!(end.code(), Some(CloseCode::ProtocolViolation), "{end:?}");
        // TLS done, then silence: the relay's own deadline applies.
        let mut raw = tls_raw().await;
        let end = raw
            .until_closed("silent inside TLS", Duration::from_secs(3))
            .await;
        assert_eq!(end.code(), Some(CloseCode::AuthTimeout), "{end:?}");
        let mut raw = tls_raw().await;
        let welcome = raw.open(&["tls"], 4096).await;
        assert_eq!(welcome.last_seq, 0);

        // A legitimate TLS endpoint.
        let security = Security::Tls {
            ca: CaSource::Dir(creds.0.clone()),
            server_name: Some("localhost".to_owned()),
        };
        let e = within(
            "connect",
            PROMPTLY,
            Endpoint::<String>::builder(addr.to_string(), PASSWORD)
                .security(security)
                .groups(["tls"])
                .connect(),
        )
        .await
        .expect("a legitimate TLS endpoint connects");
        let receipt = e.broadcast(&"over TLS".to_owned(), "tls").unwrap();
        within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
        assert_eq!(recv_n(&e, 1, PROMPTLY).await, ["over TLS"]);
        let got = raw
            .until("broadcast to the raw TLS member", |f| match f {
                Frame::Deliver(d) => Some(d.payload.to_vec()),
                _ => None,
            })
            .await;
        assert_eq!(got.len(), 1 + "over TLS".len(), "postcard string");
        let _ = e.stop().await;
        relay.stop().await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Endpoint: a hostile relay
// ---------------------------------------------------------------------------------------------

const FAKE_NONCE: [u8; 32] = [0x77; 32];

/// One connection of an endpoint to the fake relay, after its `Hello`.
struct Fake {
    raw: Raw,
    nonce: [u8; 32],
    session: [u8; 16],
    groups: Vec<String>,
}

impl Fake {
    async fn accept(listener: &TcpListener) -> Fake {
        let (tcp, _) = within("the endpoint dials", PROMPTLY, listener.accept())
            .await
            .unwrap();
        let mut raw = Raw::over(tcp);
        let hello = raw.expect_frame("hello").await;
        let Ok(Frame::Hello(h)) = frame::decode(&hello) else {
            panic!("expected a Hello");
        };
        Fake {
            nonce: h.nonce,
            session: h.session,
            groups: h.groups.iter().map(|g| g.to_string()).collect(),
            raw,
        }
    }

    async fn challenge(&mut self) {
        self.raw
            .send_frame(&Frame::Challenge(Challenge { nonce: FAKE_NONCE }))
            .await;
    }

    async fn proof(&mut self) -> [u8; 32] {
        let bytes = self.raw.expect_frame("proof").await;
        let Ok(Frame::Proof(p)) = frame::decode(&bytes) else {
            panic!("expected a Proof");
        };
        let names: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        let t = Transcript {
            version: 1,
            endpoint_nonce: &self.nonce,
            relay_nonce: &FAKE_NONCE,
            session: &self.session,
            groups: &names,
        };
        assert!(key().verify(Role::Endpoint, &t, &p.mac));
        p.mac
    }

    async fn welcome(&mut self, max_frame: u32) {
        let names: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        let t = Transcript {
            version: 1,
            endpoint_nonce: &self.nonce,
            relay_nonce: &FAKE_NONCE,
            session: &self.session,
            groups: &names,
        };
        self.raw
            .send_frame(&Frame::Welcome(Welcome {
                mac: key().proof(Role::Relay, &t),
                max_frame,
                last_seq: 0,
                epoch: 7,
            }))
            .await;
    }

    /// A whole handshake, as a real relay does it.
    async fn accept_fully(listener: &TcpListener) -> Fake {
        let mut fake = Fake::accept(listener).await;
        fake.challenge().await;
        fake.proof().await;
        fake.welcome(1 << 20).await;
        fake
    }
}

/// What a hostile relay does during the handshake, and what the endpoint must report.
#[derive(Debug, Clone, Copy)]
enum BeforeWelcome {
    HttpAnswer,
    DeliverForChallenge,
    PingForWelcome,
    ReflectedProof,
    LongRefusal,
    NonUtf8Close,
    Trickle,
}

#[tokio::test]
async fn a_hostile_relay_during_the_handshake_fails_the_first_connect_fast() {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        use BeforeWelcome::*;
        for case in [
            HttpAnswer,
            DeliverForChallenge,
            PingForWelcome,
            ReflectedProof,
            LongRefusal,
            NonUtf8Close,
            Trickle,
        ] {
            let listener = TcpListener::bind(any_port()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let started = Instant::now();
            let connect = Endpoint::<String>::builder(addr.to_string(), PASSWORD)
                .security(Security::Plain)
                .groups(["g"])
                .connect_timeout(CONNECT_TIMEOUT)
                .reconnect(fast_backoff())
                .connect();
            let connect = async {
                let result = connect.await;
                (result, started.elapsed())
            };
            let fake = async {
                let mut f = Fake::accept(&listener).await;
                match case {
                    HttpAnswer => {
                        f.raw.send(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    }
                    DeliverForChallenge => {
                        f.raw
                            .send_frame(&Frame::Deliver(Deliver {
                                group: "g",
                                delivery: Delivery::Broadcast { seq: 1 },
                                payload: b"early",
                            }))
                            .await;
                    }
                    PingForWelcome => {
                        f.challenge().await;
                        f.proof().await;
                        f.raw.send(&raw_frame(0x06, &[])).await;
                    }
                    ReflectedProof => {
                        f.challenge().await;
                        let mac = f.proof().await;
                        f.raw
                            .send_frame(&Frame::Welcome(Welcome {
                                mac,
                                max_frame: 1 << 20,
                                last_seq: 0,
                                epoch: 1,
                            }))
                            .await;
                    }
                    LongRefusal => {
                        f.raw
                            .send(&close_frame(CloseCode::GroupRefused, &"é".repeat(5000)))
                            .await;
                    }
                    NonUtf8Close => {
                        f.raw.send(&raw_frame(0x05, &[3, 2, 0xc3, 0x28])).await;
                    }
                    Trickle => {
                        // All but its last byte, 300 ms apart: 10.8 s, far past the deadline.
                        let challenge = Frame::Challenge(Challenge { nonce: FAKE_NONCE }).to_vec();
                        for b in &challenge[..challenge.len() - 1] {
                            if !f.raw.send(&[*b]).await {
                                break;
                            }
                            sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
                f.raw.until_closed("the endpoint hangs up", PROMPTLY).await
            };
            let ((result, took), fake_end) = tokio::join!(connect, fake);
            let Err(error) = result else {
                panic!("{case:?}: the endpoint connected to a hostile relay");
            };
            eprintln!("{case:?}: {error} ({took:?}); the endpoint sent {fake_end:?}");
            // A trickle ends at the deadline, not when the trickle does; the others end at once,
            // long before it. (Generous bounds: on a loaded machine timers fire late.)
            let limit = if matches!(case, Trickle) {
                CONNECT_TIMEOUT + Duration::from_secs(3)
            } else {
                CONNECT_TIMEOUT - Duration::from_secs(2)
            };
            assert!(took < limit, "{case:?}: failed only after {took:?}");
            let text = error.to_string();
            match case {
                HttpAnswer => {
                    // The peer's oversize "frame" is its fault, not the object's: something
                    // other than a tlsro relay answers there.
                    assert!(matches!(error, tlsro::Error::NotARelay(_)), "{error:?}");
                    assert!(text.contains("exceeds"), "{text}");
                    assert_eq!(fake_end.code(), Some(CloseCode::FrameTooLarge));
                }
                DeliverForChallenge | PingForWelcome => {
                    assert!(matches!(error, tlsro::Error::Protocol(_)), "{error:?}");
                    assert!(text.contains("unexpected"), "{text}");
                    assert_eq!(fake_end.code(), Some(CloseCode::ProtocolViolation));
                }
                ReflectedProof => {
                    assert!(
                        matches!(error, tlsro::Error::RelayNotAuthenticated),
                        "{error:?}"
                    );
                    assert!(error.is_permanent());
                    assert_eq!(fake_end, End::Eof);
                }
                LongRefusal => {
                    let tlsro::Error::GroupRefused(detail) = &error else {
                        panic!("{error:?}");
                    };
                    assert!(detail.len() <= 96 && detail.starts_with('é'), "{detail:?}");
                    assert!(error.is_permanent());
                    assert_eq!(fake_end, End::Eof, "no answer to a Close");
                }
                NonUtf8Close => {
                    assert!(text.contains("malformed close frame"), "{text}");
                    assert_eq!(fake_end.code(), Some(CloseCode::ProtocolViolation));
                }
                Trickle => {
                    assert!(!error.is_permanent(), "{error:?}");
                    assert!(took >= CONNECT_TIMEOUT, "before the deadline: {took:?}");
                }
            }
        }
    })
    .await
}

/// DESIGN.md §7 "a typed error with a reason the user can read": an HTTP server (or anything
/// else) answering on the relay's port makes the endpoint report that *its object* is too large.
#[tokio::test]
async fn an_oversize_frame_from_the_relay_is_not_blamed_on_the_object() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = endpoint(addr).connect();
        let fake = async {
            let mut f = Fake::accept(&listener).await;
            f.raw.send(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            f.raw.until_closed("hang up", PROMPTLY).await
        };
        let (result, _) = tokio::join!(connect, fake);
        let text = result.expect_err("no connection").to_string();
        assert!(
            text.contains("relay") && !text.contains("object"),
            "the error blames the object: {text:?}"
        );
    })
    .await
}

#[tokio::test]
async fn a_hostile_relay_after_welcome_is_left_and_the_endpoint_reconnects() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = Endpoint::<String>::builder(addr.to_string(), PASSWORD)
            .security(Security::Plain)
            .groups(["g"])
            .max_frame(4096)
            .connect_timeout(PROMPTLY)
            .reconnect(fast_backoff());
        let (endpoint, mut fake) = tokio::join!(connect.connect(), Fake::accept_fully(&listener));
        let endpoint = endpoint.expect("connects to the fake relay");
        let mut events = endpoint.events();

        let pv = Some(CloseCode::ProtocolViolation);
        let cases: Vec<(&str, Vec<u8>, Option<CloseCode>, &str)> = vec![
            (
                "Confirm of a publish never sent",
                Frame::Confirm(Confirm { up_to: u64::MAX }).to_vec(),
                pv,
                "confirm",
            ),
            (
                "Deliver for a group not joined",
                Frame::Deliver(Deliver {
                    group: "other",
                    delivery: Delivery::Broadcast { seq: 1 },
                    payload: b"x",
                })
                .to_vec(),
                pv,
                "deliver",
            ),
            (
                "Deliver with tag 5 first",
                Frame::Deliver(Deliver {
                    group: "g",
                    delivery: Delivery::Produced { tag: 5 },
                    payload: b"x",
                })
                .to_vec(),
                pv,
                "deliver",
            ),
            (
                "a frame over the endpoint's max_frame",
                vec![0, 1, 0, 0, 0x20],
                Some(CloseCode::FrameTooLarge),
                "frame",
            ),
            (
                "0xFFFFFFFF",
                vec![0xff; 4],
                Some(CloseCode::FrameTooLarge),
                "frame",
            ),
            (
                "unknown kind",
                raw_frame(0xee, &[]),
                pv,
                "unknown frame kind",
            ),
            ("zero length", vec![0; 4], pv, "frame"),
            (
                "a Hello from the relay",
                raw_hello(1, 4096, &[]),
                pv,
                "hello",
            ),
            (
                "a second Challenge",
                Frame::Challenge(Challenge { nonce: [0; 32] }).to_vec(),
                pv,
                "challenge",
            ),
            (
                "Close with a long detail",
                close_frame(CloseCode::SlowConsumer, &"s".repeat(900)),
                None,
                "slow consumer",
            ),
        ];
        for (what, bytes, code, reason) in cases {
            fake.raw.send(&bytes).await;
            let end = fake.raw.until_closed(what, PROMPTLY).await;
            assert_eq!(end.code(), code, "{what}: {end:?}");
            let got = within(what, PROMPTLY, async {
                loop {
                    match events.recv().await {
                        Ok(Event::Disconnected { reason }) => return reason,
                        Ok(_) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
            .await;
            let text = got.to_string();
            eprintln!("{what}: {text}");
            assert!(text.to_lowercase().contains(reason), "{what}: {text:?}");
            if what == "Close with a long detail" {
                assert!(text.len() < 300, "the detail is cut: {} bytes", text.len());
            }
            // It reconnects (to the same fake relay) and works there.
            fake = Fake::accept_fully(&listener).await;
            within("reconnected", PROMPTLY, async {
                while !matches!(endpoint.status(), Status::Connected) {
                    sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }
        // Still a working endpoint: a publish reaches the fake relay.
        let _receipt = endpoint.broadcast(&"alive".to_owned(), "g").unwrap();
        let payload = fake
            .raw
            .until("publish", |f| match f {
                Frame::Publish(p) => Some(p.payload.to_vec()),
                _ => None,
            })
            .await;
        assert!(payload.ends_with(b"alive"));
        // A relay that says it takes 0 bytes: publishing is refused locally, nothing panics.
        drop(fake);
        let mut fake = Fake::accept(&listener).await;
        fake.challenge().await;
        fake.proof().await;
        fake.welcome(0).await;
        within("reconnected", PROMPTLY, async {
            while !matches!(endpoint.status(), Status::Connected) {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let refused = endpoint.broadcast(&"too big".to_owned(), "g");
        assert!(
            matches!(refused, Err(tlsro::Error::FrameTooLarge { max: 0, .. })),
            "{refused:?}"
        );
        drop(endpoint);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Random frames
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Valid frames to start mutations from (from either side of the protocol).
fn sample_frames() -> Vec<Vec<u8>> {
    vec![
        raw_hello(1, 4096, &[b"fuzz", b"other"]),
        Frame::Proof(Proof { mac: [3; 32] }).to_vec(),
        Frame::Challenge(Challenge { nonce: [4; 32] }).to_vec(),
        Frame::Welcome(Welcome {
            mac: [5; 32],
            max_frame: 4096,
            last_seq: 3,
            epoch: 9,
        })
        .to_vec(),
        publish(1, PublishKind::Broadcast, &["fuzz"], b"\x03abc"),
        publish(2, PublishKind::Produce, &["fuzz", "other"], b"\x03abc"),
        notify("fuzz", 3),
        notify("fuzz", -1),
        Frame::Ack(Ack { up_to: 0 }).to_vec(),
        close_frame(CloseCode::Normal, "x"),
        raw_frame(0x06, &[]),
        raw_frame(0x07, &[]),
        Frame::Deliver(Deliver {
            group: "fuzz",
            delivery: Delivery::Produced { tag: 1 },
            payload: b"\x03abc",
        })
        .to_vec(),
        Frame::Confirm(Confirm { up_to: 1 }).to_vec(),
    ]
}

/// A frame with a consistent length prefix and random content: random bytes of a known kind,
/// or a valid frame with one bit flipped or its end cut.
fn random_frame(rng: &mut Rng, samples: &[Vec<u8>], skip_kinds: &[u8]) -> Vec<u8> {
    const KINDS: [u8; 16] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x10, 0x11, 0x12, 0x20, 0x21, 0x22, 0x23, 0x00,
        0x99,
    ];
    loop {
        let frame = match rng.below(3) {
            0 => {
                let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
                let len = rng.below(48) as usize;
                raw_frame(kind, &rng.bytes(len))
            }
            1 => {
                let mut f = samples[rng.below(samples.len() as u64) as usize].clone();
                let i = 4 + rng.below(f.len() as u64 - 4) as usize;
                f[i] ^= 1 << rng.below(8);
                f
            }
            _ => {
                let f = &samples[rng.below(samples.len() as u64) as usize];
                let keep = 5 + rng.below(f.len() as u64 - 4) as usize;
                raw_frame(f[4], &f[5..keep.min(f.len())])
            }
        };
        if !skip_kinds.contains(&frame[4]) {
            return frame;
        }
    }
}

#[tokio::test]
async fn random_frames_never_kill_the_relay() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let kept = Queued::put(addr, 3).await;
        let watcher = member(addr, &["fuzz"]).await;
        let samples = sample_frames();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut closes = 0;
        for round in 0..300 {
            let mut raw = Raw::connect(addr).await;
            let authenticated = round % 2 == 0;
            if authenticated {
                raw.open(&["fuzz", "other"], 4096).await;
            }
            let mut burst = Vec::new();
            for _ in 0..1 + rng.below(3) {
                burst.extend(random_frame(&mut rng, &samples, &[]));
            }
            raw.send(&burst).await;
            // A probe the relay must answer (Pong, Challenge) or a Close: either way the burst
            // was handled.
            raw.send(&raw_frame(0x06, &[])).await;
            let answered = within(&format!("round {round}: an answer"), PROMPTLY, async {
                loop {
                    match raw.next_frame().await {
                        None => return "eof",
                        Some(f) => match frame::decode(&f) {
                            Ok(Frame::Pong) | Ok(Frame::Challenge(_)) => return "answer",
                            Ok(Frame::Close(_)) => return "close",
                            _ => {}
                        },
                    }
                }
            })
            .await;
            if answered != "answer" {
                closes += 1;
            }
        }
        eprintln!("{closes} of 300 random connections were closed by the relay");
        assert!(closes > 100, "most random input is refused");
        assert!(!logs.text().contains("panicked"), "{}", logs.text());
        // The watcher may have received random broadcasts; it is still connected.
        let _ = watcher.pop(usize::MAX, Wait::No).await.unwrap();
        assert!(matches!(watcher.status(), Status::Connected));
        assert_still_serving(addr).await;
        // Random produces may have landed in the kept group only if its name was hit, which a
        // random generator does not do.
        kept.check(addr).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn random_frames_from_a_relay_never_kill_the_endpoint() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let builder = Endpoint::<String>::builder(addr.to_string(), PASSWORD)
            .security(Security::Plain)
            .groups(["fuzz", "other"])
            .max_frame(4096)
            .connect_timeout(PROMPTLY)
            .reconnect(fast_backoff());
        let (endpoint, mut fake) = tokio::join!(builder.connect(), Fake::accept_fully(&listener));
        let endpoint = endpoint.expect("connects to the fake relay");
        let samples = sample_frames();
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for round in 0..60 {
            // No Close: a permanent close code would stop the endpoint for good, as it should.
            let mut burst = Vec::new();
            for _ in 0..1 + rng.below(3) {
                burst.extend(random_frame(&mut rng, &samples, &[0x05]));
            }
            // Then a frame it must refuse, so that every round ends in a reconnect.
            burst.extend(raw_frame(0xee, &[]));
            fake.raw.send(&burst).await;
            let _ = fake
                .raw
                .until_closed(&format!("round {round}"), PROMPTLY)
                .await;
            match endpoint.status() {
                Status::Failed(e) => panic!("round {round}: the endpoint failed: {e}"),
                Status::Stopped => panic!("round {round}: the endpoint stopped"),
                _ => {}
            }
            fake = Fake::accept_fully(&listener).await;
        }
        within("connected again", PROMPTLY, async {
            while !matches!(endpoint.status(), Status::Connected) {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        // Whatever random Deliver frames got through are plain objects or decode failures.
        let _ = endpoint.pop(usize::MAX, Wait::No).await;
        drop(fake);
    })
    .await
}

/// Whether nothing in `events` (drained now) says the endpoint was disconnected. The first
/// `events()` receiver also holds what happened since the endpoint was built (its `Connected`).
fn never_disconnected(events: &mut tokio::sync::broadcast::Receiver<Event>) -> bool {
    let mut clean = true;
    while let Ok(event) = events.try_recv() {
        clean &= !matches!(event, Event::Disconnected { .. });
    }
    clean
}

/// An endpoint that vanishes in the middle of a frame: the relay says so in its log (how much
/// of the frame came), handles none of it, and keeps serving.
#[tokio::test]
async fn a_connection_lost_mid_frame_is_logged_as_such() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        // A small frame (kept in one buffer) and a large one (gathered read by read).
        for (size, sent) in [(10_000, 100), (1 << 20, 300_000)] {
            let mut raw = Raw::connect(addr).await;
            raw.open(&[], 4096).await;
            let frame = publish(1, PublishKind::Broadcast, &["g"], &vec![5u8; size]);
            assert!(raw.send(&frame[..sent]).await);
            drop(raw);
            let line = format!("({sent} of {} bytes)", frame.len());
            let deadline = Instant::now() + PROMPTLY;
            while !logs.text().contains(&line) {
                assert!(
                    Instant::now() < deadline,
                    "no mid-frame line with {line:?}:\n{}",
                    logs.text()
                );
                sleep(Duration::from_millis(20)).await;
            }
            assert!(
                logs.text()
                    .contains("connection lost in the middle of a frame")
            );
        }
        assert_eq!(relay.stats().await.broadcasts, 0);
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// a consumer with credit for small produced objects (2000 bytes) stops reading and
/// then falls behind on broadcasts: it is closed as a slow consumer. When it reads again it
/// must get whole frames and then a `Close` "slow consumer", never half a frame.
#[tokio::test]
async fn a_slow_consumer_of_small_objects_reads_whole_frames_then_close() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.outbound_limit = 16 << 20).await;
        let addr = relay.local_addr();
        let mut consumer = Raw::connect(addr).await;
        consumer.open(&["g"], 4 << 20).await;
        consumer.send(&notify("g", i32::MAX)).await;
        consumer.send(&raw_frame(0x06, &[])).await;
        consumer
            .until("pong", |f| matches!(f, Frame::Pong).then_some(()))
            .await;
        // From here the consumer does not read.
        let mut producer = Raw::connect(addr).await;
        producer.open(&[], 4096).await;
        let mut seq = 0;
        for _ in 0..12 {
            let mut batch = Vec::new();
            for _ in 0..500 {
                seq += 1;
                batch.extend(publish(seq, PublishKind::Produce, &["g"], &[7u8; 2000]));
            }
            assert!(producer.send(&batch).await);
        }
        sleep(QUIET).await;
        for _ in 0..20 {
            seq += 1;
            let frame = publish(seq, PublishKind::Broadcast, &["g"], &vec![9u8; 512 * 1024]);
            assert!(producer.send(&frame).await);
        }
        let deadline = Instant::now() + PROMPTLY;
        while relay.stats().await.slow_consumers == 0 {
            assert!(Instant::now() < deadline, "no slow consumer");
            sleep(Duration::from_millis(20)).await;
        }
        // The consumer reads again: whole frames, then the Close.
        let mut kinds = Vec::new();
        let end = within("the consumer reads to the end", PROMPTLY, async {
            while let Some(bytes) = consumer.next_frame().await {
                match frame::decode(&bytes) {
                    Ok(Frame::Close(c)) => return Some((c.code, c.detail.to_owned())),
                    Ok(f) => kinds.push(f.kind()),
                    Err(e) => panic!(
                        "garbage after {} whole frames: {e} (a frame of {} bytes starting {:02x?})",
                        kinds.len(),
                        bytes.len(),
                        &bytes[..bytes.len().min(16)]
                    ),
                }
            }
            None
        })
        .await;
        let (code, detail) = end.unwrap_or_else(|| {
            panic!(
                "the stream ended without a Close after {} frames ({} bytes left over)",
                kinds.len(),
                consumer.buf.len()
            )
        });
        assert_eq!(code, CloseCode::SlowConsumer, "{detail}");
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// output caused by what a peer sent before half-closing still goes out (the relay's
/// own rule, `reader_ended`): here its own large broadcasts echoed back, and the `Confirm`.
#[tokio::test]
async fn half_close_after_more_than_the_writer_window_of_output() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let mut raw = Raw::connect(addr).await;
        raw.open(&["echo"], 16 << 20).await;
        let mut burst = Vec::new();
        for seq in 1..=3 {
            burst.extend(publish(
                seq,
                PublishKind::Broadcast,
                &["echo"],
                &vec![1u8; 2 << 20],
            ));
        }
        assert!(raw.send(&burst).await);
        let _ = raw.io.shutdown().await;
        let mut delivered = 0;
        let mut confirmed = 0;
        within("until EOF", PROMPTLY, async {
            while let Some(bytes) = raw.next_frame().await {
                match frame::decode(&bytes) {
                    Ok(Frame::Deliver(_)) => delivered += 1,
                    Ok(Frame::Confirm(c)) => confirmed = c.up_to,
                    _ => {}
                }
            }
        })
        .await;
        assert_eq!(relay.stats().await.broadcasts, 3);
        assert_eq!(
            (delivered, confirmed),
            (3, 3),
            "deliveries and confirm after half-close"
        );
        relay.stop().await;
    })
    .await
}

/// a large frame and, in the same write, a bad one: the large one is handled, the bad
/// one closes with its own reason.
#[tokio::test]
async fn a_large_frame_then_a_bad_one_in_the_same_write() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.max_frame = 4 << 20).await;
        let addr = relay.local_addr();
        let cases: [(&str, Vec<u8>, CloseCode, &str); 4] = [
            (
                "unknown kind",
                raw_frame(0x99, &[1, 2, 3]),
                CloseCode::ProtocolViolation,
                "unknown frame kind 0x99",
            ),
            (
                "oversize",
                vec![0, 0x50, 0, 0, 0x10],
                CloseCode::FrameTooLarge,
                "exceeds the limit of 4194304 bytes",
            ),
            (
                "zero length",
                vec![0, 0, 0, 0],
                CloseCode::ProtocolViolation,
                "zero",
            ),
            (
                "oversize after a large gathered frame and a second large one",
                {
                    let mut v = publish(2, PublishKind::Broadcast, &["big"], &vec![4u8; 300_000]);
                    v.extend([0xff, 0xff, 0xff, 0xff, 0x10]);
                    v
                },
                CloseCode::FrameTooLarge,
                "frame of 4294967299 bytes",
            ),
        ];
        for (what, bad, code, log) in cases {
            let mut raw = Raw::connect(addr).await;
            raw.open(&["big"], 16 << 20).await;
            let mut bytes = publish(1, PublishKind::Broadcast, &["big"], &vec![3u8; 1 << 20]);
            bytes.extend(&bad);
            assert!(raw.send(&bytes).await, "{what}");
            let mut got = Vec::new();
            let end = within(what, PROMPTLY, async {
                while let Some(b) = raw.next_frame().await {
                    match frame::decode(&b) {
                        Ok(Frame::Close(c)) => return Some((c.code, c.detail.to_owned())),
                        Ok(f) => got.push(f.kind()),
                        Err(e) => panic!("{what}: garbage {e}"),
                    }
                }
                None
            })
            .await;
            let (c, detail) = end.unwrap_or_else(|| panic!("{what}: no Close after {got:?}"));
            assert_eq!(c, code, "{what}: {detail} after {got:?}");
            logs.expect(log).await;
            assert!(
                got.contains(&frame::Kind::Deliver),
                "{what}: the large frame went through: {got:?}"
            );
        }
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// two large frames and a small one in one write, the second large one starting in
/// the read that ends the first.
#[tokio::test]
async fn back_to_back_large_frames_in_one_write() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let mut rx = Raw::connect(addr).await;
        rx.open(&["bb"], 16 << 20).await;
        let mut tx = Raw::connect(addr).await;
        tx.open(&[], 4096).await;
        let sizes = [300_000usize, 1 << 20, 10, 262_140, 262_150, 5];
        let mut bytes = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8).collect();
            bytes.extend(publish(
                i as u64 + 1,
                PublishKind::Broadcast,
                &["bb"],
                &payload,
            ));
        }
        assert!(tx.send(&bytes).await);
        for (i, n) in sizes.iter().enumerate() {
            let (_, _, payload) = rx
                .until("delivery", |f| match f {
                    Frame::Deliver(d) => Some((d.group.to_owned(), d.delivery, d.payload.to_vec())),
                    _ => None,
                })
                .await;
            let want: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8).collect();
            assert!(
                payload == want,
                "payload {i} differs ({} vs {n} bytes)",
                payload.len()
            );
        }
        relay.stop().await;
    })
    .await
}

/// a 16 MiB frame cut off at every interesting point: the relay logs the cut, handles
/// nothing of it, and keeps serving.
#[tokio::test]
async fn a_16_mib_frame_cut_at_every_point() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let frame = publish(1, PublishKind::Broadcast, &["cut"], &vec![5u8; 16 << 20]);
        let len = frame.len();
        for sent in [4, 5, 64 * 1024, 256 * 1024, len / 2, len - 1] {
            let mut raw = Raw::connect(addr).await;
            raw.open(&[], 4096).await;
            // Trickle the start, then the rest in one go.
            let head = sent.min(100);
            for b in &frame[..head] {
                assert!(raw.send(std::slice::from_ref(b)).await);
            }
            assert!(raw.send(&frame[head..sent]).await);
            drop(raw);
            logs.expect(&format!("({sent} of {len} bytes)")).await;
        }
        assert_eq!(relay.stats().await.broadcasts, 0);
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// stop() while several 16 MiB frames are half gathered returns promptly and every
/// connection gets its Close "relay shutting down".
#[tokio::test]
async fn stop_while_large_frames_are_gathered() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let frame = publish(1, PublishKind::Broadcast, &["g"], &vec![5u8; 16 << 20]);
        let mut raws = Vec::new();
        for _ in 0..4 {
            let mut raw = Raw::connect(addr).await;
            raw.open(&[], 4096).await;
            assert!(raw.send(&frame[..frame.len() / 2]).await);
            raws.push(raw);
        }
        sleep(QUIET).await;
        let t = Instant::now();
        within("stop", Duration::from_secs(4), relay.stop()).await;
        eprintln!("stop took {:?}", t.elapsed());
        for mut raw in raws {
            let end = raw.until_closed("closed at stop", PROMPTLY).await;
            assert_eq!(end.code(), Some(CloseCode::Shutdown), "{end:?}");
        }
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    })
    .await
}

/// a large broadcast and a large produce (gathered) to a group whose members have a
/// small max_frame: Skipped notices; the produced object waits for a consumer it fits.
#[tokio::test]
async fn large_publishes_to_small_members() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|_| {}).await;
        let addr = relay.local_addr();
        let mut small = Raw::connect(addr).await;
        small.open(&["sm"], 4096).await;
        small.send(&notify("sm", 5)).await;
        let mut tx = Raw::connect(addr).await;
        tx.open(&[], 4096).await;
        let mut bytes = publish(1, PublishKind::Broadcast, &["sm"], &vec![1u8; 1 << 20]);
        bytes.extend(publish(
            2,
            PublishKind::Produce,
            &["sm"],
            &vec![2u8; 1 << 20],
        ));
        bytes.extend(publish(3, PublishKind::Produce, &["sm"], b"tiny"));
        // Trickled in odd-sized pieces.
        for piece in bytes.chunks(4095) {
            assert!(tx.send(piece).await);
        }
        let size = small
            .until("skipped", |f| match f {
                Frame::Skipped(s) => Some(s.size),
                _ => None,
            })
            .await;
        assert!(size as usize > 1 << 20);
        let p = small
            .until("tiny", |f| match f {
                Frame::Deliver(d) => Some(d.payload.to_vec()),
                _ => None,
            })
            .await;
        assert_eq!(p, b"tiny");
        let mut big = Raw::connect(addr).await;
        big.open(&["sm"], 4 << 20).await;
        big.send(&notify("sm", 1)).await;
        let p = big
            .until("large produced", |f| match f {
                Frame::Deliver(d) if matches!(d.delivery, Delivery::Produced { .. }) => {
                    Some(d.payload.to_vec())
                }
                _ => None,
            })
            .await;
        assert!(p == vec![2u8; 1 << 20]);
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// one member never reads (its writer window never drains) while another reads at
/// full speed; the stuck one is closed as a slow consumer and, reading again, gets whole
/// frames and the Close; the reader gets everything.
///
/// The relay gives a closing connection two seconds (`CLOSE_GRACE`) to take its last frames
/// and then drops it, so the stuck member starts reading as soon as the relay has declared it
/// a slow consumer, while the reader goes on: on a loaded machine the reader's last delivery
/// can come more than two seconds after that verdict.
#[tokio::test]
async fn a_stuck_writer_window_beside_a_full_speed_reader() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let relay = plain_relay(|c| c.outbound_limit = 12 << 20).await;
        let addr = relay.local_addr();
        let mut stuck = Raw::connect(addr).await;
        stuck.open(&["tp"], 4 << 20).await;
        let mut reader = Raw::connect(addr).await;
        reader.open(&["tp"], 4 << 20).await;
        let mut tx = Raw::connect(addr).await;
        tx.open(&[], 4096).await;
        const N: usize = 60;
        let reader_done = std::cell::Cell::new(false);
        let read_everything = async {
            let started = Instant::now();
            // Paced: the reader is never more than two objects behind.
            for i in 0..N {
                let payload = vec![i as u8; (1 << 20) + i * 3];
                assert!(
                    tx.send(&publish(
                        i as u64 + 1,
                        PublishKind::Broadcast,
                        &["tp"],
                        &payload
                    ))
                    .await
                );
                let p = reader
                    .until("delivery", |f| match f {
                        Frame::Deliver(d) => Some(d.payload.to_vec()),
                        Frame::Close(c) => panic!("reader closed: {:?} {}", c.code, c.detail),
                        _ => None,
                    })
                    .await;
                assert!(
                    p.len() == (1 << 20) + i * 3 && p.iter().all(|b| *b == i as u8),
                    "delivery {i}"
                );
            }
            eprintln!("{N} MiB to the reader in {:?}", started.elapsed());
            reader_done.set(true);
        };
        // Stuck (never reading) until the relay's verdict, then reading again.
        let stuck_reads = async {
            while relay.stats().await.slow_consumers == 0 {
                if reader_done.get() {
                    // The assertion on the count below says what went wrong.
                    return (None, 0);
                }
                sleep(Duration::from_millis(10)).await;
            }
            let mut n = 0;
            let end = within("stuck reads", PROMPTLY, async {
                while let Some(b) = stuck.next_frame().await {
                    match frame::decode(&b) {
                        Ok(Frame::Close(c)) => return Some(c.code),
                        Ok(_) => n += 1,
                        Err(e) => panic!("garbage after {n}: {e}"),
                    }
                }
                None
            })
            .await;
            (end, n)
        };
        let ((), (end, n)) = tokio::join!(read_everything, stuck_reads);
        assert_eq!(relay.stats().await.slow_consumers, 1);
        assert_eq!(end, Some(CloseCode::SlowConsumer), "after {n} frames");
        assert_still_serving(addr).await;
        relay.stop().await;
    })
    .await
}

/// The handshake deadline runs from the TCP accept: the TLS handshake (or, on a plain relay,
/// the wait for a TLS ClientHello) spends from the same budget, so a peer cannot stay
/// unauthenticated for twice the deadline (it could: each stage had the whole of it).
#[tokio::test]
async fn the_handshake_deadline_counts_from_the_accept() {
    let (_logs, _guard) = Logs::capture();
    bounded(async {
        let deadline = Duration::from_secs(3);
        // Counted twice, the plain relay would close after 2 deadlines and the TLS one after
        // 1.5 deadlines: a third of a deadline (1 s) of slack for timers that fire late on a
        // loaded machine, and as much again before the TLS case's wrong answer.
        let limit = deadline + deadline / 3;

        // Plain: silent from the start (the sniff for TLS waits the whole deadline).
        let relay = plain_relay(move |c| c.handshake_timeout = deadline).await;
        // The relay's AuthTimeout comes within `limit` of the accept at `opened`.
        let closed_in_time = |mut raw: Raw, opened: Instant, what: &'static str| async move {
            let end = raw.until_closed(what, deadline * 3).await;
            let took = opened.elapsed();
            assert_eq!(end.code(), Some(CloseCode::AuthTimeout), "{what}: {end:?}");
            assert!(took < limit, "{what}: closed {took:?} after the accept");
        };
        let raw = Raw::connect(relay.local_addr()).await;
        closed_in_time(raw, Instant::now(), "a silent plain connection").await;
        relay.stop().await;

        // TLS: the ClientHello comes half the deadline late (leaving the TLS handshake 1.5 s on
        // a loaded machine), then nothing.
        let creds = TempCreds::generate();
        let relay = tls_relay(&creds, move |c| c.handshake_timeout = deadline).await;
        let tcp = TcpStream::connect(relay.local_addr()).await.unwrap();
        let opened = Instant::now();
        sleep(deadline / 2).await;
        let tls = tls_handshake(&creds.0, tcp)
            .await
            .expect("a late TLS handshake");
        closed_in_time(Raw::over(tls), opened, "silent after a late TLS handshake").await;
        relay.stop().await;
    })
    .await
}

/// An endpoint that refuses the relay's certificate (it trusts another CA) leaves the relay's
/// operator a log line that says so, not only the bare TLS alert.
#[tokio::test]
async fn a_refused_certificate_is_explained_in_the_relay_log() {
    let (logs, _guard) = Logs::capture();
    bounded(async {
        let creds = TempCreds::generate();
        let other = TempCreds::generate();
        let relay = tls_relay(&creds, |_| {}).await;
        let tcp = TcpStream::connect(relay.local_addr()).await.unwrap();
        let refused = tls_handshake(&other.0, tcp).await;
        assert!(
            refused.is_err(),
            "the endpoint trusted a certificate of another CA"
        );
        logs.expect("the endpoint refused this relay's certificate")
            .await;
        relay.stop().await;
    })
    .await
}
