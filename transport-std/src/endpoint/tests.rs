//! The endpoint against a scripted fake relay on 127.0.0.1 (built from `tlsro_proto::frame` and
//! `tlsro_proto::auth`): every step the relay takes is written out in the test.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tlsro_proto::auth::{AuthKey, Role, Transcript};
use tlsro_proto::endpoint::Error as SessionError;
use tlsro_proto::frame::{
    self, Challenge, Close, CloseCode, Confirm, Deliver, Delivery, Frame, FrameError, Notify,
    PublishKind, PublishRejected, Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};

use super::*;
use crate::codec::Json;
use crate::error::Rejection;
use crate::transport::Io;

const PASSWORD: &str = "correct horse battery staple";
const LIMIT: Duration = Duration::from_secs(10);

/// Fails the test instead of hanging it.
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: did not finish within {LIMIT:?}"),
    }
}

/// Polls `cond` until it holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    bounded(what, async {
        while !cond() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn key(password: &str) -> AuthKey {
    AuthKey::derive(password.as_bytes())
}

struct FakeRelay {
    listener: TcpListener,
    addr: String,
    key: AuthKey,
}

impl FakeRelay {
    async fn new() -> Self {
        Self::with_password(PASSWORD).await
    }

    async fn with_password(password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        FakeRelay {
            listener,
            addr,
            key: key(password),
        }
    }

    async fn accept(&self) -> Conn {
        let (tcp, _) = bounded("accept", self.listener.accept()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Conn::new(Box::new(tcp))
    }

    /// Whether an endpoint connects within `within`.
    async fn connects_within(&self, within: Duration) -> bool {
        timeout(within, self.listener.accept()).await.is_ok()
    }

    fn builder<T>(&self) -> Builder<T> {
        Endpoint::builder(self.addr.clone(), PASSWORD)
            .security(Security::Plain)
            .connect_timeout(Duration::from_secs(5))
            .reconnect(Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                multiplier: 2.0,
                jitter: 0.1,
            })
    }

    /// An endpoint with `groups`, connected through a relay connection that is returned too.
    /// Ends `conn`, waits for the endpoint to report it, and answers its reconnect with
    /// `welcome`.
    async fn reconnect(
        &self,
        conn: Conn,
        events: &mut broadcast::Receiver<Event>,
        welcome: Welcomed,
    ) -> Conn {
        drop(conn);
        assert!(matches!(
            next_event(events).await,
            Event::Disconnected { .. }
        ));
        let mut conn = self.accept().await;
        assert!(conn.handshake(&self.key, welcome).await);
        conn
    }

    async fn connect<T>(&self, groups: &[&str]) -> (Endpoint<T>, Conn) {
        let builder = self.builder::<T>().groups(groups.iter().copied());
        self.connect_with(builder, Welcomed::default()).await
    }

    async fn connect_with<T, C: Codec>(
        &self,
        builder: Builder<T, C>,
        welcome: Welcomed,
    ) -> (Endpoint<T, C>, Conn) {
        let relay = async {
            let mut conn = self.accept().await;
            conn.handshake(&self.key, welcome).await;
            conn
        };
        let (endpoint, conn) =
            bounded("connect", async { tokio::join!(builder.connect(), relay) }).await;
        (endpoint.expect("connect"), conn)
    }
}

/// What the fake relay says in `Welcome`.
#[derive(Clone, Copy)]
struct Welcomed {
    last_seq: u64,
    max_frame: u32,
    bad_proof: bool,
}

impl Default for Welcomed {
    fn default() -> Self {
        Welcomed {
            last_seq: 0,
            max_frame: tlsro_proto::endpoint::DEFAULT_RELAY_MAX_FRAME,
            bad_proof: false,
        }
    }
}

/// What the endpoint said in `Hello`.
#[derive(Debug)]
struct HelloSeen {
    nonce: [u8; 32],
    session: [u8; 16],
    groups: Vec<String>,
    max_frame: u32,
}

/// One connection of the fake relay.
struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    hello: Option<HelloSeen>,
}

impl Conn {
    fn new(io: Box<dyn Io>) -> Self {
        Conn {
            io,
            buf: Vec::new(),
            hello: None,
        }
    }

    /// The next whole frame, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(n) = frame::frame_len(&self.buf, u32::MAX).unwrap() {
                return Some(self.buf.drain(..n).collect());
            }
            let mut chunk = vec![0; 64 * 1024];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame that is not a keepalive (pings are answered).
    async fn recv(&mut self) -> Vec<u8> {
        loop {
            let raw = bounded("relay waiting for a frame", self.next())
                .await
                .expect("the endpoint closed the connection");
            let kind = frame::decode(&raw).unwrap().kind();
            match kind {
                frame::Kind::Ping => self.send(&Frame::Pong).await,
                frame::Kind::Pong => {}
                _ => return raw,
            }
        }
    }

    async fn send(&mut self, frame: &Frame<'_>) {
        self.send_raw(&frame.to_vec()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    async fn deliver(&mut self, group: &str, delivery: Delivery, payload: &[u8]) {
        self.send(&Frame::Deliver(Deliver {
            group,
            delivery,
            payload,
        }))
        .await;
    }

    async fn read_hello(&mut self) -> &HelloSeen {
        let raw = self.recv().await;
        let Frame::Hello(hello) = frame::decode(&raw).unwrap() else {
            panic!("expected Hello, got {:?}", frame::decode(&raw));
        };
        assert_eq!(hello.version, tlsro_proto::PROTOCOL_VERSION);
        self.hello.insert(HelloSeen {
            nonce: hello.nonce,
            session: hello.session,
            groups: hello.groups.iter().map(|g| g.to_string()).collect(),
            max_frame: hello.max_frame,
        })
    }

    /// Hello → Challenge → Proof (checked; a wrong one gets `Close(BadPassword)`) → Welcome.
    /// Returns whether the endpoint's proof verified.
    async fn handshake(&mut self, key: &AuthKey, welcome: Welcomed) -> bool {
        self.read_hello().await;
        let relay_nonce = [7u8; 32];
        self.send(&Frame::Challenge(Challenge { nonce: relay_nonce }))
            .await;
        let raw = self.recv().await;
        let Frame::Proof(proof) = frame::decode(&raw).unwrap() else {
            panic!("expected Proof, got {:?}", frame::decode(&raw));
        };
        let hello = self.hello.as_ref().unwrap();
        let groups: Vec<&str> = hello.groups.iter().map(String::as_str).collect();
        let transcript = Transcript {
            version: tlsro_proto::PROTOCOL_VERSION,
            endpoint_nonce: &hello.nonce,
            relay_nonce: &relay_nonce,
            session: &hello.session,
            groups: &groups,
        };
        if !key.verify(Role::Endpoint, &transcript, &proof.mac) {
            self.send(&Frame::Close(Close {
                code: CloseCode::BadPassword,
                detail: "",
            }))
            .await;
            return false;
        }
        let mac = if welcome.bad_proof {
            [0x55; 32]
        } else {
            key.proof(Role::Relay, &transcript)
        };
        self.send(&Frame::Welcome(Welcome {
            mac,
            max_frame: welcome.max_frame,
            last_seq: welcome.last_seq,
            epoch: 1,
        }))
        .await;
        true
    }
}

/// Decodes a frame the test already holds.
fn decode(raw: &[u8]) -> Frame<'_> {
    frame::decode(raw).unwrap()
}

fn postcard<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    Postcard.encode(value, &mut out).unwrap();
    out
}

fn values<T: Clone>(received: &[Received<T>]) -> Vec<T> {
    received.iter().map(|r| r.value.clone()).collect()
}

async fn next_event(events: &mut broadcast::Receiver<Event>) -> Event {
    bounded("waiting for an event", events.recv())
        .await
        .unwrap()
}

#[tokio::test]
async fn handshake_publish_confirm_and_deliver() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<String>(&["chat"]).await;
    let hello = conn.hello.as_ref().unwrap();
    assert_eq!(hello.groups, ["chat"]);
    assert_eq!(hello.max_frame, DEFAULT_MAX_FRAME);
    assert!(matches!(endpoint.status(), Status::Connected));
    assert_eq!(endpoint.groups(), ["chat"]);

    let receipt = endpoint.broadcast(&"hello".to_owned(), "chat").unwrap();
    assert_eq!(receipt.seq(), 1);
    let receipt2 = endpoint
        .produce_to(&"work".to_owned(), &["q1", "q2"])
        .unwrap();
    assert_eq!(receipt2.seq(), 2);

    let raw = conn.recv().await;
    let Frame::Publish(p) = decode(&raw) else {
        panic!("expected Publish")
    };
    assert_eq!((p.seq, p.kind), (1, PublishKind::Broadcast));
    assert_eq!(p.groups.as_slice(), ["chat"]);
    assert_eq!(p.payload, postcard("hello"));
    let raw = conn.recv().await;
    let Frame::Publish(p) = decode(&raw) else {
        panic!("expected Publish")
    };
    assert_eq!((p.seq, p.kind), (2, PublishKind::Produce));
    assert_eq!(p.groups.as_slice(), ["q1", "q2"]);
    assert_eq!(p.payload, postcard("work"));
    assert!(endpoint.buffered_bytes() > 0);

    conn.deliver("chat", Delivery::Broadcast { seq: 1 }, &postcard("hello"))
        .await;
    conn.send(&Frame::Confirm(Confirm { up_to: 2 })).await;
    bounded("receipt", receipt.wait()).await.unwrap();
    bounded("receipt", receipt2.wait()).await.unwrap();
    assert_eq!(endpoint.buffered_bytes(), 0);

    let got = bounded("pop", endpoint.pop(10, Wait::Forever))
        .await
        .unwrap();
    assert_eq!(
        got,
        [Received {
            group: "chat".to_owned(),
            kind: ReceivedKind::Broadcast,
            value: "hello".to_owned()
        }]
    );
}

#[tokio::test]
async fn wrong_password_fails_fast() {
    let relay = FakeRelay::with_password("another password").await;
    let started = Instant::now();
    let relay_side = async {
        let mut conn = relay.accept().await;
        assert!(!conn.handshake(&relay.key, Welcomed::default()).await);
    };
    let (result, ()) = bounded("connect", async {
        tokio::join!(relay.builder::<u32>().connect(), relay_side)
    })
    .await;
    assert!(matches!(result, Err(Error::WrongPassword)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(result.unwrap_err().to_string().contains("wrong password"));
    // No retry.
    assert!(!relay.connects_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn relay_with_a_bad_proof_is_not_trusted() {
    let relay = FakeRelay::new().await;
    let relay_side = async {
        let mut conn = relay.accept().await;
        let welcome = Welcomed {
            bad_proof: true,
            ..Welcomed::default()
        };
        assert!(conn.handshake(&relay.key, welcome).await);
        // The endpoint sends nothing after a bad Welcome.
        bounded("end of stream", conn.next()).await
    };
    let (result, after) = bounded("connect", async {
        tokio::join!(relay.builder::<u32>().connect(), relay_side)
    })
    .await;
    assert!(
        matches!(result, Err(Error::RelayNotAuthenticated)),
        "{result:?}"
    );
    assert_eq!(after, None);
    assert!(!relay.connects_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn refused_and_full_groups_fail_fast() {
    for (code, detail) in [
        (CloseCode::GroupRefused, "group \"x\" is not allowed"),
        (CloseCode::GroupFull, "group \"x\" has 2 members"),
        (CloseCode::UnsupportedVersion, ""),
    ] {
        let relay = FakeRelay::new().await;
        let relay_side = async {
            let mut conn = relay.accept().await;
            conn.read_hello().await;
            conn.send(&Frame::Close(Close { code, detail })).await;
        };
        let (result, ()) = bounded("connect", async {
            tokio::join!(relay.builder::<u32>().groups(["x"]).connect(), relay_side)
        })
        .await;
        match (code, result) {
            (CloseCode::GroupRefused, Err(Error::GroupRefused(d)))
            | (CloseCode::GroupFull, Err(Error::GroupFull(d)))
            | (CloseCode::UnsupportedVersion, Err(Error::UnsupportedVersion(d))) => {
                assert_eq!(d, detail)
            }
            (code, other) => panic!("{code:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn unreachable_relay_is_retried_until_the_connect_timeout() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let started = Instant::now();
    let result = bounded(
        "connect",
        Endpoint::<u32>::builder(addr.clone(), PASSWORD)
            .security(Security::Plain)
            .connect_timeout(Duration::from_millis(600))
            .connect(),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Err(Error::RelayUnreachable { addr: a, reason }) => {
            assert_eq!(a, addr);
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
            assert!(!reason.contains("accepts TCP"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    // Something accepts the connection and says nothing: not "is the relay running?" alone.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let result = bounded(
        "connect",
        Endpoint::<u32>::builder(addr, PASSWORD)
            .security(Security::Plain)
            .connect_timeout(Duration::from_millis(600))
            .connect(),
    )
    .await;
    silent.abort();
    match result {
        Err(Error::RelayUnreachable { reason, .. }) => {
            assert!(reason.contains("accepts TCP connections there"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_relay_that_sends_garbage_gets_a_typed_error() {
    // An unknown frame kind.
    let relay = FakeRelay::new().await;
    let relay_side = async {
        let mut conn = relay.accept().await;
        conn.read_hello().await;
        conn.send_raw(&[0, 0, 0, 3, 0x7f, 1, 2]).await;
        bounded("end of stream", conn.next()).await
    };
    let (result, after) = bounded("connect", async {
        tokio::join!(relay.builder::<u32>().connect(), relay_side)
    })
    .await;
    // The first thing the peer sent is no frame: most likely not a tlsro relay at all.
    match &result {
        Err(e @ Error::NotARelay(detail)) => {
            assert!(detail.contains("unknown frame kind 0x7f"), "{e}");
            assert!(e.to_string().contains("address and port"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // The endpoint tells the relay why before hanging up.
    let after = after.expect("a Close frame");
    assert!(matches!(
        decode(&after),
        Frame::Close(Close {
            code: CloseCode::ProtocolViolation,
            ..
        })
    ));
    // A length prefix beyond the endpoint's limit: refused without buffering.
    let relay = FakeRelay::new().await;
    let started = Instant::now();
    let relay_side = async {
        let mut conn = relay.accept().await;
        conn.read_hello().await;
        conn.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    };
    let (result, ()) = bounded("connect", async {
        tokio::join!(relay.builder::<u32>().max_frame(4096).connect(), relay_side)
    })
    .await;
    // The peer's fault, reported as such (not as an object of ours that is too large).
    match &result {
        Err(Error::NotARelay(detail)) => assert!(detail.contains("4096"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Garbage after a proper Challenge is the relay breaking the protocol.
    let relay = FakeRelay::new().await;
    let relay_side = async {
        let mut conn = relay.accept().await;
        conn.read_hello().await;
        conn.send(&Frame::Challenge(Challenge { nonce: [3; 32] }))
            .await;
        conn.send_raw(&[0, 0, 0, 3, 0x7f, 1, 2]).await;
    };
    let (result, ()) = bounded("connect", async {
        tokio::join!(relay.builder::<u32>().connect(), relay_side)
    })
    .await;
    assert!(
        matches!(
            result,
            Err(Error::Protocol(SessionError::Frame(
                FrameError::UnknownKind(0x7f)
            )))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn receive_calls_with_every_wait_mode() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&["g"]).await;

    // Nothing there.
    let started = Instant::now();
    assert!(endpoint.pop(5, Wait::No).await.unwrap().is_empty());
    assert!(endpoint.get_last(5, Wait::No).await.unwrap().is_empty());
    assert!(endpoint.receive_all(Wait::No).await.unwrap().is_empty());
    // Returned without waiting (a generous bound: a loaded machine may not run us for a while).
    assert!(started.elapsed() < Duration::from_secs(1));
    let started = Instant::now();
    let got = bounded(
        "pop",
        endpoint.pop(5, Wait::Timeout(Duration::from_millis(150))),
    )
    .await
    .unwrap();
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Waiting forever returns as soon as one object arrives.
    let waiter = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.pop(5, Wait::Forever).await })
    };
    sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    conn.deliver("g", Delivery::Broadcast { seq: 1 }, &postcard(&1u32))
        .await;
    let got = bounded("waiter", waiter).await.unwrap().unwrap();
    assert_eq!(values(&got), [1]);

    // Five queued: pop takes the oldest, get_last the newest (dropping the rest).
    for seq in 2..=6u64 {
        conn.deliver("g", Delivery::Broadcast { seq }, &postcard(&(seq as u32)))
            .await;
    }
    eventually("five queued", || endpoint.queued_bytes() == 5).await;
    // Asking for none takes, discards and waits for nothing, whatever the wait.
    for wait in [
        Wait::No,
        Wait::Forever,
        Wait::Timeout(Duration::from_secs(5)),
    ] {
        assert!(
            bounded("pop(0)", endpoint.pop(0, wait))
                .await
                .unwrap()
                .is_empty()
        );
        let none = bounded("get_last(0)", endpoint.get_last(0, wait)).await;
        assert!(none.unwrap().is_empty());
    }
    assert_eq!(endpoint.queued_bytes(), 5);
    assert_eq!(values(&endpoint.pop(2, Wait::No).await.unwrap()), [2, 3]);
    assert_eq!(values(&endpoint.get_last(1, Wait::No).await.unwrap()), [6]);
    assert!(endpoint.receive_all(Wait::No).await.unwrap().is_empty());
    assert_eq!(endpoint.queued_bytes(), 0);

    // get_last and receive_all wait for the first object too.
    let waiter = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            endpoint
                .get_last(3, Wait::Timeout(Duration::from_secs(5)))
                .await
        })
    };
    sleep(Duration::from_millis(30)).await;
    conn.deliver("g", Delivery::Broadcast { seq: 7 }, &postcard(&7u32))
        .await;
    assert_eq!(
        values(&bounded("waiter", waiter).await.unwrap().unwrap()),
        [7]
    );
    for seq in 8..=10u64 {
        conn.deliver("g", Delivery::Broadcast { seq }, &postcard(&(seq as u32)))
            .await;
    }
    eventually("three queued", || endpoint.queued_bytes() == 3).await;
    let got = endpoint.receive_all(Wait::Forever).await.unwrap();
    assert_eq!(values(&got), [8, 9, 10]);
    assert!(
        got.iter()
            .all(|r| r.kind == ReceivedKind::Broadcast && r.group == "g")
    );

    // A retained broadcast seen again (same sequence number) is not handed over twice.
    conn.deliver("g", Delivery::Broadcast { seq: 10 }, &postcard(&10u32))
        .await;
    let got = endpoint
        .pop(5, Wait::Timeout(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn produced_objects_are_acknowledged_when_handed_over() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&["work"]).await;

    endpoint.notify("work", 4).unwrap();
    let raw = conn.recv().await;
    assert_eq!(
        decode(&raw),
        Frame::Notify(Notify {
            group: "work",
            credit: 4
        })
    );
    for tag in 1..=4u64 {
        conn.deliver(
            "work",
            Delivery::Produced { tag },
            &postcard(&(tag as u32 * 10)),
        )
        .await;
    }
    eventually("four queued", || {
        endpoint.queued_bytes() > 0 && endpoint.queued_bytes() == 4
    })
    .await;

    let got = endpoint.pop(2, Wait::No).await.unwrap();
    assert_eq!(values(&got), [10, 20]);
    assert!(got.iter().all(|r| r.kind == ReceivedKind::Produced));
    let raw = conn.recv().await;
    assert_eq!(decode(&raw), Frame::Ack(frame::Ack { up_to: 2 }));

    // get_last discards tag 3, which counts as handed over too.
    assert_eq!(values(&endpoint.get_last(1, Wait::No).await.unwrap()), [40]);
    let raw = conn.recv().await;
    assert_eq!(decode(&raw), Frame::Ack(frame::Ack { up_to: 4 }));

    // "Everything queued now".
    endpoint.notify("work", -1).unwrap();
    let raw = conn.recv().await;
    assert_eq!(
        decode(&raw),
        Frame::Notify(Notify {
            group: "work",
            credit: -1
        })
    );
}

#[tokio::test]
async fn notify_is_for_members_only() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&["a", "b"]).await;

    match endpoint.notify("other", 1) {
        Err(e @ Error::NotMember(_)) => {
            assert!(e.to_string().contains("\"other\""), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // All or nothing.
    assert!(matches!(
        endpoint.notify_many(&[("a", 1), ("other", 1)]),
        Err(Error::NotMember(g)) if g == "other"
    ));
    endpoint.notify_many(&[("a", 2), ("b", 3)]).unwrap();
    let raw = conn.recv().await;
    assert_eq!(
        decode(&raw),
        Frame::Notify(Notify {
            group: "a",
            credit: 2
        })
    );
    let raw = conn.recv().await;
    assert_eq!(
        decode(&raw),
        Frame::Notify(Notify {
            group: "b",
            credit: 3
        })
    );
}

#[tokio::test]
async fn rejections_reach_the_receipt_and_the_events() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&[]).await;
    let mut events = endpoint.events();

    let rejected = endpoint.produce_to(&1, &["full", "fine"]).unwrap();
    let accepted = endpoint.produce(&2, "fine").unwrap();
    conn.recv().await;
    conn.recv().await;
    conn.send(&Frame::PublishRejected(PublishRejected {
        seq: 1,
        group: "full",
        reason: RejectReason::QueueFull,
    }))
    .await;
    conn.send(&Frame::Confirm(Confirm { up_to: 2 })).await;

    match bounded("receipt", rejected.wait()).await {
        Err(e @ PublishError::Rejected(_)) => {
            let PublishError::Rejected(list) = &e else {
                unreachable!()
            };
            assert_eq!(
                list,
                &[Rejection {
                    group: "full".to_owned(),
                    reason: RejectReason::QueueFull
                }]
            );
            assert!(e.to_string().contains("\"full\""), "{e}");
        }
        other => panic!("{other:?}"),
    }
    bounded("receipt", accepted.wait()).await.unwrap();
    match next_event(&mut events).await {
        Event::Rejected { seq, group, reason } => {
            assert_eq!(
                (seq, group.as_str(), reason),
                (1, "full", RejectReason::QueueFull)
            );
        }
        other => panic!("{other:?}"),
    }
}

/// An object's encode buffer starts with the room the previous one took (no growing by
/// reallocation), but a small object after a large one does not keep that room: the outbox
/// limit counts bytes, so room it kept would be memory nobody accounts for.
#[tokio::test]
async fn small_objects_after_a_large_one_do_not_keep_its_room() {
    let relay = FakeRelay::new().await;
    let (endpoint, _conn) = relay.connect::<Vec<u8>>(&[]).await;
    let _large = endpoint.broadcast(&vec![1; 300_000], "g").unwrap();
    let large_room = endpoint.inner.shared.lock().outbox.room();
    assert!(large_room >= 300_000);
    for _ in 0..100 {
        let _ = endpoint.broadcast(&vec![2; 8], "g").unwrap();
    }
    let st = endpoint.inner.shared.lock();
    let small_room = st.outbox.room() - large_room;
    assert!(
        small_room < 100 * 256,
        "100 small frames keep {small_room} bytes of room for {} bytes",
        st.outbox.bytes
    );
}

#[tokio::test]
async fn send_limits_are_checked_at_the_call() {
    let relay = FakeRelay::new().await;
    let builder = relay.builder::<Vec<u8>>().max_buffered_bytes(200);
    let welcome = Welcomed {
        max_frame: 1024,
        ..Welcomed::default()
    };
    let (endpoint, mut conn) = relay.connect_with(builder, welcome).await;

    let _first = endpoint.broadcast(&vec![1; 120], "g").unwrap();
    match endpoint.broadcast(&vec![2; 120], "g") {
        Err(Error::BufferFull { buffered, max, .. }) => {
            assert_eq!(max, 200);
            assert!(buffered > 120);
        }
        other => panic!("{other:?}"),
    }
    conn.recv().await;
    conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    eventually("confirmed", || endpoint.buffered_bytes() == 0).await;
    // The refused publish used no sequence number.
    assert_eq!(endpoint.broadcast(&vec![3; 120], "g").unwrap().seq(), 2);

    // Larger than the relay's limit from Welcome.
    let (endpoint, _conn) = relay
        .connect_with(relay.builder::<Vec<u8>>(), welcome)
        .await;
    match endpoint.produce(&vec![0; 2000], "g") {
        Err(Error::FrameTooLarge { size, max }) => {
            assert_eq!(max, 1024);
            assert!(size > 2000);
        }
        other => panic!("{other:?}"),
    }
    // Bad group names are refused too.
    assert!(endpoint.produce(&vec![0], "").is_err());
    assert!(endpoint.produce_to(&vec![0], &[]).is_err());
}

#[tokio::test]
async fn undecodable_objects_are_acknowledged_counted_and_reported() {
    let relay = FakeRelay::new().await;
    let builder = relay.builder::<Vec<u32>>().groups(["work"]).codec(Json);
    let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
    let mut events = endpoint.events();
    endpoint.notify("work", 2).unwrap();
    conn.recv().await;

    conn.deliver("work", Delivery::Produced { tag: 1 }, b"not json")
        .await;
    conn.deliver("work", Delivery::Produced { tag: 2 }, b"[1,2]")
        .await;
    eventually("two queued", || endpoint.queued_bytes() == 13).await;
    let got = endpoint.pop(10, Wait::No).await.unwrap();
    assert_eq!(values(&got), [vec![1, 2]]);
    assert_eq!(endpoint.decode_failures(), 1);
    match next_event(&mut events).await {
        Event::DecodeFailed { group, error } => {
            assert_eq!(group, "work");
            assert_eq!(error.codec(), "json");
        }
        other => panic!("{other:?}"),
    }
    let raw = conn.recv().await;
    assert_eq!(decode(&raw), Frame::Ack(frame::Ack { up_to: 2 }));

    // Only an undecodable object arrived: a waiting call keeps waiting.
    conn.deliver("work", Delivery::Produced { tag: 3 }, b"{")
        .await;
    let got = endpoint
        .pop(10, Wait::Timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert_eq!(endpoint.decode_failures(), 2);
    let raw = conn.recv().await;
    assert_eq!(decode(&raw), Frame::Ack(frame::Ack { up_to: 3 }));
}

#[tokio::test]
async fn reconnect_resends_unconfirmed_regrants_credit_and_drops_stale_objects() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&["work", "news"]).await;
    let mut events = endpoint.events();
    let session = conn.hello.as_ref().unwrap().session;

    endpoint.notify("work", 3).unwrap();
    conn.recv().await;
    conn.deliver("work", Delivery::Produced { tag: 1 }, &postcard(&11u32))
        .await;
    conn.deliver("news", Delivery::Broadcast { seq: 5 }, &postcard(&55u32))
        .await;
    eventually("two queued", || endpoint.queued_bytes() == 2).await;

    let first = endpoint.produce(&1, "jobs").unwrap();
    let second = endpoint.produce(&2, "jobs").unwrap();
    conn.recv().await;
    conn.recv().await;
    let both = endpoint.buffered_bytes();
    conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    // Confirmed before `wait`, which then asks for nothing (a `Ping` this fake relay did not
    // read would make dropping it a reset rather than a close).
    eventually("first confirmed", || endpoint.buffered_bytes() < both).await;
    bounded("first receipt", first.wait()).await.unwrap();

    // The relay goes away.
    drop(conn);
    match next_event(&mut events).await {
        Event::Disconnected { reason } => assert!(matches!(reason, Error::Closed(_)), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Published while disconnected: buffered.
    let third = endpoint.produce(&3, "jobs").unwrap();
    // The produced object of the lost connection is gone (the relay requeues it); the
    // broadcast stays.
    eventually("stale object dropped", || endpoint.queued_bytes() == 1).await;

    let mut conn = relay.accept().await;
    let welcome = Welcomed {
        last_seq: 1,
        ..Welcomed::default()
    };
    assert!(conn.handshake(&relay.key, welcome).await);
    assert_eq!(
        conn.hello.as_ref().unwrap().session,
        session,
        "same session"
    );
    // Unconfirmed publishes again, in order, with their sequence numbers.
    for (seq, value) in [(2, 2u32), (3, 3)] {
        let raw = conn.recv().await;
        let Frame::Publish(p) = decode(&raw) else {
            panic!("expected Publish, got {:?}", decode(&raw))
        };
        assert_eq!(p.seq, seq);
        assert_eq!(p.payload, postcard(&value));
    }
    // All credit not used by a handed-over object is granted again.
    let raw = conn.recv().await;
    assert_eq!(
        decode(&raw),
        Frame::Notify(Notify {
            group: "work",
            credit: 3
        })
    );
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    assert!(matches!(endpoint.status(), Status::Connected));

    conn.send(&Frame::Confirm(Confirm { up_to: 3 })).await;
    bounded("second receipt", second.wait()).await.unwrap();
    bounded("third receipt", third.wait()).await.unwrap();

    // Tags restart on the new connection; acknowledgements follow them.
    conn.deliver("work", Delivery::Produced { tag: 1 }, &postcard(&11u32))
        .await;
    eventually("redelivered", || endpoint.queued_bytes() == 2).await;
    let got = endpoint.receive_all(Wait::No).await.unwrap();
    assert_eq!(values(&got), [55, 11]);
    let raw = conn.recv().await;
    assert_eq!(decode(&raw), Frame::Ack(frame::Ack { up_to: 1 }));
}

#[tokio::test]
async fn wrong_password_on_reconnect_stops_the_endpoint() {
    let relay = FakeRelay::new().await;
    let (endpoint, conn) = relay.connect::<u32>(&[]).await;
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    drop(conn);

    // The relay's password changed meanwhile.
    let mut conn = relay.accept().await;
    assert!(!conn.handshake(&key("changed"), Welcomed::default()).await);
    eventually("failed", || matches!(endpoint.status(), Status::Failed(_))).await;
    assert!(matches!(
        endpoint.status(),
        Status::Failed(Error::WrongPassword)
    ));
    assert!(matches!(
        endpoint.broadcast(&2, "g"),
        Err(Error::WrongPassword)
    ));
    assert!(matches!(
        endpoint.pop(1, Wait::Forever).await,
        Err(Error::WrongPassword)
    ));
    assert!(matches!(endpoint.notify("g", 1), Err(Error::WrongPassword)));
    assert!(matches!(
        bounded("receipt", receipt.wait()).await,
        Err(PublishError::Unconfirmed(Error::WrongPassword))
    ));
    assert!(matches!(endpoint.stop().await, Err(Error::WrongPassword)));
    assert!(!relay.connects_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn a_silent_relay_is_detected_and_replaced() {
    let relay = FakeRelay::new().await;
    let builder = relay.builder::<u32>().keepalive(Duration::from_millis(100));
    let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
    let mut events = endpoint.events();

    // The endpoint pings after 100 ms of silence.
    let started = Instant::now();
    let raw = bounded("ping", conn.next()).await.unwrap();
    assert_eq!(decode(&raw), Frame::Ping);
    assert!(started.elapsed() >= Duration::from_millis(80));

    // Unanswered, the relay counts as gone after 300 ms; the endpoint reconnects.
    match next_event(&mut events).await {
        Event::Disconnected { reason } => {
            assert!(
                matches!(reason, Error::Protocol(SessionError::RelaySilent)),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(endpoint.status(), Status::Reconnecting { .. }));
    let mut conn = relay.accept().await;
    assert!(conn.handshake(&relay.key, Welcomed::default()).await);
    assert!(matches!(next_event(&mut events).await, Event::Connected));
}

#[tokio::test]
async fn stop_flushes_acknowledges_and_closes() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&["work"]).await;
    endpoint.notify("work", 1).unwrap();
    conn.recv().await;
    conn.deliver("work", Delivery::Produced { tag: 1 }, &postcard(&7u32))
        .await;
    eventually("queued", || endpoint.queued_bytes() == 1).await;

    let receipt = endpoint.broadcast(&1, "g").unwrap();
    let got = endpoint.pop(1, Wait::No).await.unwrap();
    assert_eq!(values(&got), [7]);
    let stopper = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.stop().await })
    };
    // The publish and the acknowledgement go out before the Close, and the Close waits for
    // the confirmation.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let raw = conn.recv().await;
        seen.push(decode(&raw).kind());
    }
    seen.sort_by_key(|k| u8::from(*k));
    assert_eq!(seen, [frame::Kind::Publish, frame::Kind::Ack]);
    assert!(matches!(endpoint.broadcast(&2, "g"), Err(Error::Stopped)));
    sleep(Duration::from_millis(50)).await;
    assert!(!stopper.is_finished());
    conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    let raw = conn.recv().await;
    assert_eq!(
        decode(&raw),
        Frame::Close(Close {
            code: CloseCode::Normal,
            detail: ""
        })
    );
    conn.send(&Frame::Close(Close {
        code: CloseCode::Normal,
        detail: "",
    }))
    .await;
    bounded("stop", stopper).await.unwrap().unwrap();
    bounded("receipt", receipt.wait()).await.unwrap();
    assert_eq!(bounded("end of stream", conn.next()).await, None);
    assert!(matches!(endpoint.status(), Status::Stopped));
    assert!(matches!(
        endpoint.pop(1, Wait::Forever).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(endpoint.stop().await, Ok(())));
}

/// The relay may hold back the confirm of a lone publish for output to travel with (PROTOCOL.md
/// §9.6): waiting on the receipt asks for it with a `Ping`, and the relay's `Pong` brings it.
#[tokio::test]
async fn waiting_on_a_receipt_asks_for_its_confirm() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&[]).await;
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    let raw = bounded("publish", conn.next()).await.unwrap();
    assert_eq!(decode(&raw).kind(), frame::Kind::Publish);
    let waiter = tokio::spawn(receipt.wait());
    // Well before the keepalive's `Ping` (5 s), which would bring the confirm too.
    let raw = timeout(Duration::from_secs(1), conn.next())
        .await
        .expect("a Ping asking for the confirm")
        .unwrap();
    assert_eq!(decode(&raw), Frame::Ping);
    conn.send(&Frame::Pong).await;
    conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    bounded("receipt", waiter).await.unwrap().unwrap();

    // Confirmed already: waiting asks for nothing.
    let receipt = endpoint.broadcast(&2, "g").unwrap();
    conn.recv().await;
    conn.send(&Frame::Confirm(Confirm { up_to: 2 })).await;
    eventually("confirmed", || endpoint.buffered_bytes() == 0).await;
    bounded("receipt", receipt.wait()).await.unwrap();
    // What followed the confirm: only the stop's `Close` (no `Ping`).
    stop_answering_its_close(&endpoint, &mut conn).await;
}

/// Stops `endpoint`, expects the next frame on `conn` to be its `Close`, answers it, and
/// checks that the stop succeeds.
async fn stop_answering_its_close<T: Serialize + Send + Sync + 'static>(
    endpoint: &Endpoint<T>,
    conn: &mut Conn,
) {
    let stopper = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.stop().await })
    };
    let raw = bounded("close", conn.next()).await.unwrap();
    assert_eq!(decode(&raw).kind(), frame::Kind::Close);
    conn.send(&Frame::Close(Close {
        code: CloseCode::Normal,
        detail: "",
    }))
    .await;
    bounded("stop", stopper).await.unwrap().unwrap();
}

#[tokio::test]
async fn stop_is_bounded_when_the_relay_does_not_confirm() {
    let relay = FakeRelay::new().await;
    let builder = relay
        .builder::<u32>()
        .stop_timeout(Duration::from_millis(300));
    let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    conn.recv().await;
    let started = Instant::now();
    let result = bounded("stop", endpoint.stop()).await;
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(matches!(
        receipt.wait().await,
        Err(PublishError::Unconfirmed(Error::Stopped))
    ));
    assert!(matches!(endpoint.status(), Status::Stopped));
}

/// A relay that stops reading leaves the endpoint's write stuck (socket buffers full): `stop`
/// still ends at its deadline, not after the much longer write-stall timeout.
#[tokio::test]
async fn stop_is_bounded_when_the_relay_stops_reading() {
    let relay = FakeRelay::new().await;
    let builder = relay
        .builder::<Vec<u8>>()
        .stop_timeout(Duration::from_millis(300))
        .max_buffered_bytes(64 << 20);
    let (endpoint, conn) = relay.connect_with(builder, Welcomed::default()).await;
    // Far more than loopback socket buffers hold; `conn` never reads.
    let big = vec![7u8; 1 << 20];
    let receipts: Vec<Receipt> = (0..32)
        .map(|_| endpoint.broadcast(&big, "g").unwrap())
        .collect();
    sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let result = bounded("stop", endpoint.stop()).await;
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
    for receipt in receipts {
        assert!(receipt.wait().await.is_err());
    }
    drop(conn);
}

/// Credit granted while the driver is stuck in a write (the relay is not reading) goes out as
/// soon as the write finishes, not at the next unrelated event: the wake-up must not be lost
/// to the write's wait for a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_made_during_a_pending_write_is_sent_after_it() {
    let relay = FakeRelay::new().await;
    let builder = relay
        .builder::<Vec<u8>>()
        .groups(["work"])
        .keepalive(Duration::from_secs(60))
        .max_buffered_bytes(64 << 20);
    let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
    let _receipt = endpoint.broadcast(&vec![7u8; 8 << 20], "g").unwrap();
    // The write is stuck now: `conn` does not read yet.
    sleep(Duration::from_millis(200)).await;
    endpoint.notify("work", 1).unwrap();
    sleep(Duration::from_millis(50)).await;
    let mut notify = None;
    while let Ok(Some(raw)) = timeout(Duration::from_secs(2), conn.next()).await {
        if let Frame::Notify(n) = decode(&raw) {
            notify = Some(n.credit);
            break;
        }
    }
    assert_eq!(
        notify,
        Some(1),
        "no Notify within 2 s of the write finishing"
    );
}

/// A stop whose deadline passes with its `Close` just written into the buffer still sends the
/// `Close` (the relay then sees a stop, not a lost connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_of_a_stop_that_reached_its_deadline_is_sent() {
    for round in 0..20 {
        let relay = FakeRelay::new().await;
        let builder = relay
            .builder::<u32>()
            .stop_timeout(Duration::from_millis(100));
        let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
        // Never confirmed: the stop runs to its deadline.
        let _receipt = endpoint.broadcast(&1, "g").unwrap();
        conn.recv().await;
        let stopper = {
            let endpoint = endpoint.clone();
            tokio::spawn(async move { endpoint.stop().await })
        };
        let mut closed = false;
        while let Ok(Some(raw)) = timeout(Duration::from_secs(3), conn.next()).await {
            if decode(&raw).kind() == frame::Kind::Close {
                closed = true;
                break;
            }
        }
        let _ = bounded("stop", stopper).await;
        assert!(closed, "stop {round}: no Close frame");
    }
}

#[tokio::test]
async fn stop_while_disconnected() {
    // Unconfirmed publishes: stop keeps trying until its deadline.
    let relay = FakeRelay::new().await;
    let builder = relay
        .builder::<u32>()
        .stop_timeout(Duration::from_millis(300));
    let (endpoint, conn) = relay.connect_with(builder, Welcomed::default()).await;
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    drop(conn);
    eventually("reconnecting", || {
        matches!(endpoint.status(), Status::Reconnecting { .. })
    })
    .await;
    let started = Instant::now();
    let result = bounded("stop", endpoint.stop()).await;
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        receipt.wait().await,
        Err(PublishError::Unconfirmed(Error::Stopped))
    ));

    // Nothing to deliver: stop returns at once, even with the relay gone for good.
    let relay = FakeRelay::new().await;
    let (endpoint, conn) = relay.connect::<u32>(&[]).await;
    drop(conn);
    drop(relay);
    eventually("reconnecting", || {
        matches!(endpoint.status(), Status::Reconnecting { .. })
    })
    .await;
    let started = Instant::now();
    bounded("stop", endpoint.stop()).await.unwrap();
    // Not the stop timeout (5 s by default): at once, with room for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(endpoint.status(), Status::Stopped));
}

#[tokio::test]
async fn a_full_receive_queue_stops_reading_until_the_application_catches_up() {
    const OBJECTS: u32 = 400;
    const SIZE: usize = 1000;
    let relay = FakeRelay::new().await;
    let builder = relay
        .builder::<Vec<u8>>()
        .groups(["g"])
        .max_queued_bytes(10_000);
    let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
    let sender = tokio::spawn(async move {
        for seq in 1..=OBJECTS {
            let payload = postcard(&vec![(seq % 251) as u8; SIZE]);
            conn.deliver("g", Delivery::Broadcast { seq: seq.into() }, &payload)
                .await;
        }
        conn
    });
    sleep(Duration::from_millis(300)).await;
    let queued = endpoint.queued_bytes();
    assert!(queued >= 10_000, "{queued}");
    // At most one read beyond the limit.
    assert!(queued <= 10_000 + 70 * 1024, "{queued}");

    let mut got = Vec::new();
    while got.len() < OBJECTS as usize {
        let batch = bounded("receive", endpoint.receive_all(Wait::Forever))
            .await
            .unwrap();
        got.extend(batch.into_iter().map(|r| r.value[0]));
    }
    let expected: Vec<u8> = (1..=OBJECTS).map(|seq| (seq % 251) as u8).collect();
    assert_eq!(got, expected);
    bounded("sender", sender).await.unwrap();
    assert!(matches!(endpoint.status(), Status::Connected));
}

#[tokio::test]
async fn dropping_the_endpoint_closes_the_connection() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<u32>(&[]).await;
    let mut events = endpoint.events();
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    conn.recv().await;
    let clone = endpoint.clone();
    drop(endpoint);
    clone.notify_many(&[]).unwrap();
    drop(clone);
    assert_eq!(bounded("end of stream", conn.next()).await, None);
    assert!(matches!(
        bounded("receipt", receipt.wait()).await,
        Err(PublishError::Unconfirmed(Error::Stopped))
    ));
    assert!(matches!(next_event(&mut events).await, Event::Stopped));
}

/// A TLS relay made with freshly generated credentials.
struct TlsRelay {
    relay: FakeRelay,
    acceptor: tokio_rustls::TlsAcceptor,
    dir: TempDir,
}

impl TlsRelay {
    async fn new() -> Self {
        let dir = TempDir::new("tls");
        crate::credentials::generate(&crate::credentials::GenerateOptions::new(dir.path()))
            .unwrap();
        let config = crate::tls::server_config_from_dir(dir.path()).unwrap();
        TlsRelay {
            relay: FakeRelay::new().await,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            dir,
        }
    }

    fn builder<T>(&self, server_name: Option<&str>) -> Builder<T> {
        self.relay.builder().security(Security::Tls {
            ca: CaSource::File(self.dir.path().join("ca.pem")),
            server_name: server_name.map(str::to_owned),
        })
    }

    async fn accept(&self) -> std::io::Result<Conn> {
        let (tcp, _) = self.relay.listener.accept().await?;
        let tls = self.acceptor.accept(tcp).await?;
        Ok(Conn::new(Box::new(tls)))
    }
}

#[tokio::test]
async fn tls_handshake_then_protocol() {
    let relay = TlsRelay::new().await;
    let relay_side = async {
        let mut conn = relay.accept().await.unwrap();
        assert!(conn.handshake(&relay.relay.key, Welcomed::default()).await);
        conn
    };
    let (endpoint, mut conn) = bounded("connect", async {
        tokio::join!(
            relay.builder::<String>(Some("localhost")).connect(),
            relay_side
        )
    })
    .await;
    let endpoint = endpoint.unwrap();
    let receipt = endpoint.broadcast(&"over tls".to_owned(), "g").unwrap();
    let raw = conn.recv().await;
    let Frame::Publish(p) = decode(&raw) else {
        panic!()
    };
    assert_eq!(p.payload, postcard("over tls"));
    conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    bounded("receipt", receipt.wait()).await.unwrap();
}

#[tokio::test]
async fn a_certificate_for_another_name_is_rejected() {
    let relay = TlsRelay::new().await;
    let (result, server) = bounded("connect", async {
        tokio::join!(
            relay.builder::<u32>(Some("wrong.example")).connect(),
            relay.accept()
        )
    })
    .await;
    match result {
        Err(Error::CertificateRejected(why)) => {
            assert!(why.contains("wrong.example"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(server.is_err());
    assert!(
        !relay
            .relay
            .connects_within(Duration::from_millis(300))
            .await
    );
}

#[tokio::test]
async fn plain_endpoint_at_a_tls_relay_names_the_mismatch() {
    let relay = TlsRelay::new().await;
    let (result, _server) = bounded("connect", async {
        tokio::join!(relay.relay.builder::<u32>().connect(), relay.accept())
    })
    .await;
    match result {
        Err(Error::TlsMismatch(why)) => assert!(why.contains("answered with TLS"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tls_endpoint_at_a_plain_relay_names_the_mismatch() {
    let relay = TlsRelay::new().await;
    // What a plain relay does with a ClientHello: the length prefix is absurd, so it says so
    // and hangs up.
    let relay_side = async {
        let mut conn = relay.relay.accept().await;
        let mut head = [0u8; 5];
        conn.io.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x16, "a TLS handshake record");
        conn.send(&Frame::Close(Close {
            code: CloseCode::FrameTooLarge,
            detail: "",
        }))
        .await;
    };
    let (result, ()) = bounded("connect", async {
        tokio::join!(
            relay.builder::<u32>(Some("localhost")).connect(),
            relay_side
        )
    })
    .await;
    match result {
        Err(e @ Error::TlsMismatch(_)) => {
            assert!(e.to_string().contains("--plain"), "{e}")
        }
        other => panic!("{other:?}"),
    }

    // A plain relay that just hangs up.
    let relay_side = async {
        let mut conn = relay.relay.accept().await;
        let mut head = [0u8; 5];
        conn.io.read_exact(&mut head).await.unwrap();
    };
    let (result, ()) = bounded("connect", async {
        tokio::join!(
            relay.builder::<u32>(Some("localhost")).connect(),
            relay_side
        )
    })
    .await;
    assert!(matches!(result, Err(Error::TlsMismatch(_))), "{result:?}");
}

#[tokio::test]
async fn bad_settings_are_refused_before_dialling() {
    let relay = FakeRelay::new().await;
    let cases = [
        relay.builder::<u32>().groups([""]).connect().await,
        relay
            .builder::<u32>()
            .groups(["x".repeat(65)])
            .connect()
            .await,
        relay.builder::<u32>().max_frame(100).connect().await,
        Endpoint::<u32>::builder("no-port", PASSWORD)
            .security(Security::Plain)
            .connect()
            .await,
        Endpoint::<u32>::builder(relay.addr.clone(), PASSWORD)
            .security(Security::Tls {
                ca: CaSource::File(PathBuf::from("/nonexistent/ca.pem")),
                server_name: None,
            })
            .connect()
            .await,
    ];
    for result in cases {
        match result {
            Err(e @ Error::InvalidConfig(_)) => assert!(!e.to_string().is_empty()),
            other => panic!("{other:?}"),
        }
    }
    assert!(!relay.connects_within(Duration::from_millis(100)).await);
}

#[test]
fn blocking_endpoint_round_trip() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let relay = runtime.block_on(FakeRelay::new());
    let addr = relay.addr.clone();
    let relay_thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut conn = relay.accept().await;
            assert!(conn.handshake(&relay.key, Welcomed::default()).await);
            let raw = conn.recv().await;
            let Frame::Publish(p) = decode(&raw) else {
                panic!()
            };
            assert_eq!(p.payload, postcard("ping"));
            conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
            conn.deliver("g", Delivery::Broadcast { seq: 1 }, &postcard("pong"))
                .await;
            let raw = conn.recv().await;
            assert!(matches!(decode(&raw), Frame::Close(_)));
            conn.send(&Frame::Close(Close {
                code: CloseCode::Normal,
                detail: "",
            }))
            .await;
        })
    });

    let endpoint = crate::blocking::Endpoint::<String>::builder(addr, PASSWORD)
        .security(Security::Plain)
        .groups(["g"])
        .connect_timeout(Duration::from_secs(5))
        .connect_blocking()
        .unwrap();
    assert!(matches!(endpoint.status(), Status::Connected));
    endpoint
        .broadcast(&"ping".to_owned(), "g")
        .unwrap()
        .wait_blocking()
        .unwrap();
    let got = endpoint
        .pop(1, Wait::Timeout(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(values(&got), ["pong"]);
    assert!(
        endpoint
            .receive_all(Wait::Timeout(Duration::from_millis(50)))
            .unwrap()
            .is_empty()
    );
    endpoint.stop().unwrap();
    relay_thread.join().unwrap();
}

#[test]
fn backoff_grows_caps_and_jitters() {
    let backoff = Backoff::default();
    for _ in 0..100 {
        let first = backoff.delay(1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        let capped = backoff.delay(30);
        assert!(capped >= Duration::from_millis(2500) && capped <= Duration::from_millis(7500));
    }
    let exact = Backoff {
        jitter: 0.0,
        ..Backoff::default()
    };
    assert_eq!(exact.delay(1), Duration::from_millis(100));
    assert_eq!(exact.delay(3), Duration::from_millis(400));
    assert_eq!(exact.delay(100), Duration::from_secs(5));
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tlsro-endpoint-test-{name}-{}",
            u64::from_le_bytes(random)
        ));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn check<X: Send + Sync>() {}
    check::<Endpoint<std::rc::Rc<u8>>>();
    check::<crate::blocking::Endpoint<u32>>();
    check::<Arc<Receipt>>();
}

/// Large objects are queued in the read buffer they arrived in and large publishes are written
/// from the outbox without gathering: mixed with small frames in the same reads and writes,
/// everything arrives whole and in order, and what follows a large frame in a read is kept.
#[tokio::test]
async fn large_and_small_objects_mixed_arrive_whole_and_in_order() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn) = relay.connect::<Vec<u8>>(&["mix"]).await;
    let big = |n: usize, fill: u8| vec![fill; n];
    let objects: Vec<Vec<u8>> = vec![
        big(10, 1),
        big(700_000, 2),
        big(3, 3),
        big(300_000, 4),
        big(600_000, 5),
        big(20, 6),
    ];

    // Relay → endpoint: every frame in one write, so reads hold a large frame's end and what
    // follows it.
    let mut wire = Vec::new();
    for (seq, object) in objects.iter().enumerate() {
        wire.extend_from_slice(
            &Frame::Deliver(Deliver {
                group: "mix",
                delivery: Delivery::Broadcast {
                    seq: seq as u64 + 1,
                },
                payload: &postcard(object),
            })
            .to_vec(),
        );
    }
    conn.send_raw(&wire).await;
    let mut got = Vec::new();
    while got.len() < objects.len() {
        let items = bounded("pop", endpoint.pop(10, Wait::Forever))
            .await
            .unwrap();
        got.extend(values(&items));
    }
    assert!(got == objects, "objects differ");
    assert_eq!(endpoint.queued_bytes(), 0);

    // Endpoint → relay: large publishes between small ones keep their order.
    let receipts: Vec<_> = objects
        .iter()
        .map(|o| endpoint.broadcast(o, "mix").unwrap())
        .collect();
    for (i, object) in objects.iter().enumerate() {
        let raw = conn.recv().await;
        let Frame::Publish(p) = decode(&raw) else {
            panic!("expected Publish")
        };
        assert_eq!(p.seq, i as u64 + 1);
        assert!(p.payload == postcard(object), "publish {} differs", i + 1);
    }
    conn.send(&Frame::Confirm(Confirm {
        up_to: objects.len() as u64,
    }))
    .await;
    for r in receipts {
        bounded("receipt", r.wait()).await.unwrap();
    }
}

/// A receipt waited on while disconnected: after the reconnect its publish is resent alone
/// (the relay holds back that confirm), and the wait must still ask for it with a `Ping`.
#[tokio::test]
async fn a_receipt_waited_on_while_disconnected_asks_after_the_reconnect() {
    let relay = FakeRelay::new().await;
    let (endpoint, conn) = relay.connect::<u32>(&[]).await;
    let mut events = endpoint.events();
    drop(conn);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    let waiter = tokio::spawn(receipt.wait());
    sleep(Duration::from_millis(50)).await;
    let mut conn = relay.accept().await;
    assert!(conn.handshake(&relay.key, Welcomed::default()).await);
    let raw = bounded("resend", conn.next()).await.unwrap();
    assert_eq!(decode(&raw).kind(), frame::Kind::Publish);
    let raw = timeout(Duration::from_secs(1), conn.next())
        .await
        .expect("a Ping asking for the confirm the receipt waits for")
        .unwrap();
    assert_eq!(decode(&raw), Frame::Ping);
    conn.send(&Frame::Pong).await;
    conn.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    bounded("receipt", waiter).await.unwrap().unwrap();
}

/// No room for the next publish (§7.1): the endpoint asks for the confirm that frees it.
#[tokio::test]
async fn a_full_buffer_asks_for_the_confirm_that_frees_it() {
    let relay = FakeRelay::new().await;
    let builder = relay.builder::<Vec<u8>>().max_buffered_bytes(200);
    let (endpoint, mut conn) = relay.connect_with(builder, Welcomed::default()).await;
    let _first = endpoint.broadcast(&vec![1; 120], "g").unwrap();
    let raw = bounded("publish", conn.next()).await.unwrap();
    assert_eq!(decode(&raw).kind(), frame::Kind::Publish);
    assert!(matches!(
        endpoint.broadcast(&vec![2; 120], "g"),
        Err(Error::BufferFull { .. })
    ));
    let raw = timeout(Duration::from_secs(1), conn.next())
        .await
        .expect("a Ping asking for the confirm that makes room")
        .unwrap();
    assert_eq!(decode(&raw), Frame::Ping);
}

/// An endpoint connected to `relay` that has published an 8,000-byte object, which the relay
/// has received but not confirmed; with its event stream and the object's receipt.
async fn with_a_big_publish(
    relay: &FakeRelay,
) -> (Endpoint<Vec<u8>>, Conn, broadcast::Receiver<Event>, Receipt) {
    let (endpoint, mut conn) = relay
        .connect_with(relay.builder::<Vec<u8>>(), Welcomed::default())
        .await;
    let events = endpoint.events();
    let big = endpoint.broadcast(&vec![1; 8000], "g").unwrap();
    conn.recv().await;
    (endpoint, conn, events, big)
}

/// A relay that comes back with a smaller `max_frame` (restarted with a lower object limit):
/// a kept publish that no longer fits must not be resent (the relay would close with
/// `FrameTooLarge` on its prefix, and every reconnect would resend it again, forever, with
/// every later publish stuck behind it). Its receipt reports the limit; the others go on.
#[tokio::test]
async fn a_kept_publish_too_large_for_the_relay_after_a_reconnect_fails_alone() {
    let relay = FakeRelay::new().await;
    let (endpoint, mut conn, mut events, big) = with_a_big_publish(&relay).await;
    let small = endpoint.broadcast(&vec![2; 10], "g").unwrap();
    conn.recv().await;
    let welcome = Welcomed {
        max_frame: 4096,
        ..Welcomed::default()
    };
    let mut conn = relay.reconnect(conn, &mut events, welcome).await;
    let raw = conn.recv().await;
    assert!(
        raw.len() <= 4096,
        "resent a {}-byte frame to a relay that accepts 4096",
        raw.len()
    );
    let Frame::Publish(p) = decode(&raw) else {
        panic!("expected Publish, got {:?}", decode(&raw))
    };
    assert_eq!(p.seq, 2);
    match bounded("big receipt", big.wait()).await {
        Err(PublishError::Unconfirmed(Error::FrameTooLarge { size, max: 4096 })) => {
            assert!(size > 8000)
        }
        other => panic!("{other:?}"),
    }
    conn.send(&Frame::Confirm(Confirm { up_to: 2 })).await;
    bounded("small receipt", small.wait()).await.unwrap();
    assert_eq!(endpoint.buffered_bytes(), 0);
}

/// The dropped publish was the last one and its receipt was waited on before the reconnect:
/// the relay cannot confirm what it never got, so the wait must not keep asking (one `Ping`
/// after every `Pong`, for ever).
#[tokio::test]
async fn a_dropped_publish_is_not_asked_to_be_confirmed() {
    let relay = FakeRelay::new().await;
    let (endpoint, conn, mut events, big) = with_a_big_publish(&relay).await;
    drop(conn);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let waiter = tokio::spawn(big.wait());
    sleep(Duration::from_millis(50)).await;

    let mut conn = relay.accept().await;
    let welcome = Welcomed {
        max_frame: 4096,
        ..Welcomed::default()
    };
    assert!(conn.handshake(&relay.key, welcome).await);
    assert!(matches!(
        bounded("receipt", waiter).await.unwrap(),
        Err(PublishError::Unconfirmed(Error::FrameTooLarge {
            max: 4096,
            ..
        }))
    ));
    // Every Ping is answered at once; a healthy endpoint with nothing to confirm sends none
    // (its keepalive is 5 s).
    let mut pings = 0;
    let quiet = async {
        while let Some(raw) = conn.next().await {
            assert_eq!(decode(&raw), Frame::Ping);
            pings += 1;
            conn.send(&Frame::Pong).await;
        }
    };
    let _ = timeout(Duration::from_millis(300), quiet).await;
    assert_eq!(
        pings, 0,
        "pinged {pings} times for a confirm that cannot come"
    );
    stop_answering_its_close(&endpoint, &mut conn).await;
}

/// A `Welcome` claiming more publishes than this session made (a relay bug, or another
/// endpoint with the same session id) must not resolve receipts: the object was never handled.
/// The connection fails with a typed error and the publish is kept for the next relay.
#[tokio::test]
async fn a_welcome_claiming_publishes_never_made_confirms_nothing() {
    let relay = FakeRelay::new().await;
    let (endpoint, conn) = relay.connect::<u32>(&[]).await;
    let mut events = endpoint.events();
    let receipt = endpoint.broadcast(&1, "g").unwrap();
    let ahead = Welcomed {
        last_seq: 7,
        ..Welcomed::default()
    };
    let mut conn = relay.reconnect(conn, &mut events, ahead).await;
    let mut next = relay.accept().await;
    match endpoint.status() {
        Status::Reconnecting { last_error, .. } => assert!(
            matches!(
                last_error,
                Error::Protocol(SessionError::RelayAhead {
                    last_seq: 7,
                    next_seq: 2
                })
            ),
            "{last_error}"
        ),
        other => panic!("{other:?}"),
    }
    let raw = bounded("close", conn.next()).await.unwrap();
    assert!(matches!(
        decode(&raw),
        Frame::Close(Close {
            code: CloseCode::ProtocolViolation,
            ..
        })
    ));
    assert!(endpoint.buffered_bytes() > 0, "the publish is kept");

    assert!(next.handshake(&relay.key, Welcomed::default()).await);
    let raw = next.recv().await;
    let Frame::Publish(p) = decode(&raw) else {
        panic!("expected Publish, got {:?}", decode(&raw))
    };
    assert_eq!(p.seq, 1);
    next.send(&Frame::Confirm(Confirm { up_to: 1 })).await;
    bounded("receipt", receipt.wait()).await.unwrap();
}

/// An application that let go of the receipt (receipts are "to await or to drop") still hears
/// of a kept publish dropped unsent for a relay's lower limit, as it hears of a rejection: an
/// event, not only a log line.
#[tokio::test]
async fn a_dropped_publish_is_reported_as_an_event_too() {
    let relay = FakeRelay::new().await;
    let (_endpoint, conn, mut events, big) = with_a_big_publish(&relay).await;
    let seq = big.seq();
    drop(big);
    let welcome = Welcomed {
        max_frame: 4096,
        ..Welcomed::default()
    };
    let _conn = relay.reconnect(conn, &mut events, welcome).await;
    match next_event(&mut events).await {
        Event::PublishDropped {
            seq: dropped,
            size,
            max: 4096,
        } => {
            assert_eq!(dropped, seq);
            assert!(size > 8000, "{size}");
        }
        other => panic!("expected PublishDropped, got {other:?}"),
    }
    assert!(matches!(next_event(&mut events).await, Event::Connected));
}
