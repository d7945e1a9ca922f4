//! The relay state against real endpoint sessions on virtual time: a many-sided `Pair`.

use std::string::String;
use std::vec::Vec;

use super::*;
use crate::auth::AuthKey;
use crate::endpoint::{EndpointConfig, EndpointSession, Error as EpError, Event, Input, Phase};

/// What an endpoint saw, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Connected(u64),
    Broadcast(String, u64, Vec<u8>),
    Produced(String, u64, Vec<u8>),
    Confirmed(u64),
    Rejected(u64, String, RejectReason),
    Skipped(String, u64),
    Stopped,
}

struct Ep {
    session: EndpointSession,
    conn: Option<ConnId>,
    inbox: Vec<u8>,
    seen: Vec<Seen>,
    error: Option<EpError>,
    /// Publish frames encoded and not yet given to the relay.
    outbox: Vec<Vec<u8>>,
    /// (length, bytes of buffer kept alive) of each shared chunk the relay handed out for it.
    shared_chunks: Vec<(usize, usize)>,
}

struct Net {
    relay: RelayState,
    eps: Vec<Ep>,
    now: Instant,
    nonce: u8,
    /// Feed input with `handle_input_shared` (as the driver does with a large frame).
    share_input: bool,
}

fn key() -> AuthKey {
    AuthKey::from_bytes([7; 32])
}

impl Net {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut RelayConfig)) -> Self {
        let mut config = RelayConfig::new(key(), 42);
        f(&mut config);
        Net {
            relay: RelayState::new(config),
            eps: Vec::new(),
            now: Instant::from_millis(1000),
            nonce: 0,
            share_input: false,
        }
    }

    fn fresh(&mut self) -> [u8; 32] {
        self.nonce = self.nonce.wrapping_add(1);
        [self.nonce; 32]
    }

    /// Adds an endpoint and connects it (call `drive` to run the handshake).
    fn endpoint(&mut self, groups: &[&str]) -> usize {
        self.endpoint_with(key(), groups, |_| {})
    }

    fn endpoint_with(
        &mut self,
        key: AuthKey,
        groups: &[&str],
        f: impl FnOnce(&mut EndpointConfig),
    ) -> usize {
        let id = self.eps.len() as u8;
        let mut config = EndpointConfig::new(key, [id + 1; 16], groups).unwrap();
        f(&mut config);
        self.eps.push(Ep {
            session: EndpointSession::new(config),
            conn: None,
            inbox: Vec::new(),
            seen: Vec::new(),
            error: None,
            outbox: Vec::new(),
            shared_chunks: Vec::new(),
        });
        let i = self.eps.len() - 1;
        self.connect(i);
        i
    }

    fn connect(&mut self, i: usize) {
        let nonce = self.fresh();
        let relay_nonce = self.fresh();
        let now = self.now;
        let ep = &mut self.eps[i];
        ep.session.start_connection(now, nonce).unwrap();
        ep.inbox.clear();
        ep.error = None;
        ep.conn = Some(self.relay.accept(now, relay_nonce));
    }

    /// The endpoint's socket dies (no Close frame).
    fn kill(&mut self, i: usize) {
        let ep = &mut self.eps[i];
        if let Some(conn) = ep.conn.take() {
            self.relay.connection_lost(conn);
        }
        ep.session.connection_lost();
    }

    fn publish(&mut self, i: usize, kind: PublishKind, groups: &[&str], payload: &[u8]) -> u64 {
        let mut buf = std::vec![0; payload.len() + 512];
        let (seq, n) = self.eps[i]
            .session
            .publish(kind, groups, payload, &mut buf)
            .unwrap();
        buf.truncate(n);
        self.eps[i].outbox.push(buf);
        seq
    }

    fn broadcast(&mut self, i: usize, group: &str, payload: &[u8]) -> u64 {
        self.publish(i, PublishKind::Broadcast, &[group], payload)
    }

    fn produce(&mut self, i: usize, group: &str, payload: &[u8]) -> u64 {
        self.publish(i, PublishKind::Produce, &[group], payload)
    }

    fn notify(&mut self, i: usize, group: &str, n: i32) {
        self.eps[i].session.notify(group, n).unwrap();
    }

    /// Runs every side until nothing moves.
    fn drive(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the network did not settle");
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        let now = self.now;
        for ep in &mut self.eps {
            let Some(conn) = ep.conn else { continue };
            let mut buf = [0u8; 4096];
            let n = ep.session.poll_transmit(&mut buf).unwrap_or(0);
            let mut bytes = buf[..n].to_vec();
            if ep.session.is_open() {
                for frame in ep.outbox.drain(..) {
                    bytes.extend_from_slice(&frame);
                }
            }
            if !bytes.is_empty() {
                moved = true;
                let used = if self.share_input {
                    self.relay
                        .handle_input_shared(now, conn, &SharedBytes::new(bytes.clone()))
                } else {
                    self.relay.handle_input(now, conn, &bytes)
                };
                assert_eq!(used, bytes.len(), "whole frames were fed");
            }
        }
        while let Some(conn) = self.relay.poll_dirty() {
            // A connection nobody reads keeps its output (a consumer that stopped reading).
            let Some(ep) = self.eps.iter_mut().find(|e| e.conn == Some(conn)) else {
                continue;
            };
            while let Some(chunk) = self.relay.poll_transmit(conn) {
                moved = true;
                if let Chunk::Shared(shared) = &chunk {
                    ep.shared_chunks.push((shared.len(), shared.retained()));
                }
                ep.inbox.extend_from_slice(&chunk);
                self.relay.handle_written(conn, chunk.len());
            }
        }
        for ep in &mut self.eps {
            if ep.conn.is_none() || ep.inbox.is_empty() {
                continue;
            }
            loop {
                match ep.session.handle_input(now, &ep.inbox) {
                    Ok(Input::NeedMore) => break,
                    Ok(Input::Frame { consumed, event }) => {
                        if let Some(e) = event {
                            ep.seen.push(match e {
                                Event::Connected { last_seq } => Seen::Connected(last_seq),
                                Event::Delivered {
                                    group,
                                    delivery: Delivery::Broadcast { seq },
                                    payload,
                                } => Seen::Broadcast(group.into(), seq, payload.to_vec()),
                                Event::Delivered {
                                    group,
                                    delivery: Delivery::Produced { tag },
                                    payload,
                                } => Seen::Produced(group.into(), tag, payload.to_vec()),
                                Event::Confirmed { up_to } => Seen::Confirmed(up_to),
                                Event::Rejected { seq, group, reason } => {
                                    Seen::Rejected(seq, group.into(), reason)
                                }
                                Event::Skipped { group, seq, .. } => {
                                    Seen::Skipped(group.into(), seq)
                                }
                                Event::Stopped => Seen::Stopped,
                            });
                        }
                        ep.inbox.drain(..consumed);
                        moved = true;
                    }
                    Err(e) => {
                        ep.error = Some(e);
                        ep.inbox.clear();
                        break;
                    }
                }
            }
        }
        // Sockets of connections the relay closed go away once their output is written.
        while let Some(ev) = self.relay.poll_event() {
            if let RelayEvent::Closing { conn, .. } = ev {
                if let Some(ep) = self.eps.iter_mut().find(|e| e.conn == Some(conn)) {
                    self.relay.connection_lost(conn);
                    ep.conn = None;
                    ep.session.connection_lost();
                }
                moved = true;
            }
        }
        moved
    }

    /// A member of "g" on a slow link (1 s keepalive, so a 3 s idle window, and patient), connected,
    /// with the frame of a 20,000-byte broadcast to "g" encoded but not sent: (endpoint, its
    /// connection, payload, frame).
    fn slow_link_publisher(&mut self) -> (usize, ConnId, Vec<u8>, Vec<u8>) {
        let e = self.endpoint_with(key(), &["g"], |c| {
            c.keepalive = Duration::from_secs(1);
            c.dead_after = Duration::from_secs(1000);
        });
        self.drive();
        let conn = self.eps[e].conn.unwrap();
        let payload = std::vec![7u8; 20_000];
        let mut frame = std::vec![0; payload.len() + 512];
        let (_, n) = self.eps[e]
            .session
            .publish(PublishKind::Broadcast, &["g"], &payload, &mut frame)
            .unwrap();
        frame.truncate(n);
        (e, conn, payload, frame)
    }

    /// The relay's confirm delay passes: its deferred confirms go out.
    fn confirm_delay_passes(&mut self) {
        self.now = self.now + self.relay.config().confirm_delay;
        self.relay.handle_confirm_timeout(self.now);
        self.drive();
    }

    /// Only the confirms `i` saw (taking them).
    fn confirms(&mut self, i: usize) -> Vec<u64> {
        let seen = core::mem::take(&mut self.eps[i].seen);
        let (confirms, rest): (Vec<Seen>, Vec<Seen>) = seen
            .into_iter()
            .partition(|s| matches!(s, Seen::Confirmed(_)));
        self.eps[i].seen = rest;
        confirms
            .into_iter()
            .map(|s| match s {
                Seen::Confirmed(up_to) => up_to,
                _ => unreachable!(),
            })
            .collect()
    }

    fn seen(&mut self, i: usize) -> Vec<Seen> {
        core::mem::take(&mut self.eps[i].seen)
            .into_iter()
            .filter(|s| !matches!(s, Seen::Confirmed(_) | Seen::Connected(_)))
            .collect()
    }

    /// The application takes every produced object seen so far (acks go out on the next drive).
    fn hand_over(&mut self, i: usize, items: &[Seen]) {
        for s in items {
            if let Seen::Produced(g, tag, _) = s {
                self.eps[i].session.handed_over(g, *tag).unwrap();
            }
        }
    }
}

/// Only `groups` may be used on this relay, with the default limits.
fn allow_only(c: &mut RelayConfig, groups: &[&str]) {
    let list = groups
        .iter()
        .map(|g| (g.to_string(), GroupLimits::default()))
        .collect();
    c.allowed_groups = Some(list);
}

fn b(group: &str, seq: u64, p: &[u8]) -> Seen {
    Seen::Broadcast(group.into(), seq, p.to_vec())
}

fn payloads(seen: &[Seen]) -> Vec<Vec<u8>> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Produced(_, _, p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn handshake_and_broadcast_fan_out_including_sender() {
    let mut net = Net::new();
    let a = net.endpoint(&["g"]);
    let c = net.endpoint(&["g"]);
    let outsider = net.endpoint(&[]);
    net.drive();
    assert!(net.eps.iter().all(|e| e.session.is_open()));
    net.broadcast(a, "g", b"one");
    net.broadcast(outsider, "g", b"two");
    net.drive();
    assert_eq!(net.seen(a), [b("g", 1, b"one"), b("g", 2, b"two")]);
    assert_eq!(net.seen(c), [b("g", 1, b"one"), b("g", 2, b"two")]);
    assert_eq!(net.seen(outsider), []);
    assert!(net.eps[outsider].seen.is_empty());
}

#[test]
fn retained_broadcast_on_join_and_not_twice_after_reconnect() {
    let mut net = Net::new();
    let p = net.endpoint(&[]);
    net.drive();
    net.broadcast(p, "g", b"v1");
    net.broadcast(p, "g", b"v2");
    net.drive();
    let late = net.endpoint(&["g"]);
    net.drive();
    assert_eq!(net.seen(late), [b("g", 2, b"v2")]);
    net.kill(late);
    net.connect(late);
    net.drive();
    assert_eq!(
        net.seen(late),
        [],
        "the retained value seen again is dropped"
    );
    net.broadcast(p, "g", b"v3");
    net.drive();
    assert_eq!(net.seen(late), [b("g", 3, b"v3")]);
}

#[test]
fn several_groups_in_one_publish() {
    let mut net = Net::new();
    let x = net.endpoint(&["x"]);
    let y = net.endpoint(&["y"]);
    let p = net.endpoint(&[]);
    net.drive();
    net.publish(p, PublishKind::Broadcast, &["x", "y"], b"hi");
    net.drive();
    assert_eq!(net.seen(x), [b("x", 1, b"hi")]);
    assert_eq!(net.seen(y), [b("y", 1, b"hi")]);
}

#[test]
fn produce_fifo_credit_accumulates_and_waits_for_objects() {
    let mut net = Net::new();
    let c = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    net.notify(c, "q", 2);
    net.notify(c, "q", 1);
    net.drive();
    for i in 0..5u8 {
        net.produce(p, "q", &[i]);
    }
    net.drive();
    let seen = net.seen(c);
    assert_eq!(payloads(&seen), [[0], [1], [2]]);
    assert_eq!(net.relay.queue_len("q"), 2);
    net.notify(c, "q", 5);
    net.drive();
    assert_eq!(payloads(&net.seen(c)), [[3], [4]]);
    assert_eq!(net.eps[c].session.outstanding_credit("q"), Some(3));
}

#[test]
fn negative_credit_takes_everything_queued_now_and_leaves_no_credit() {
    let mut net = Net::new();
    let c = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    for i in 0..3u8 {
        net.produce(p, "q", &[i]);
    }
    net.drive();
    net.notify(c, "q", -1);
    net.drive();
    assert_eq!(payloads(&net.seen(c)), [[0], [1], [2]]);
    net.produce(p, "q", &[9]);
    net.drive();
    assert_eq!(net.seen(c), []);
    assert_eq!(net.relay.queue_len("q"), 1);
}

#[test]
fn credit_is_served_in_the_order_it_was_granted() {
    let mut net = Net::new();
    let c1 = net.endpoint(&["q"]);
    let c2 = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    // c2 joined later but asks first: it is served first.
    net.notify(c2, "q", 1);
    net.drive();
    net.notify(c1, "q", 1);
    net.drive();
    net.produce(p, "q", b"first");
    net.produce(p, "q", b"second");
    net.drive();
    assert_eq!(payloads(&net.seen(c2)), [b"first".to_vec()]);
    assert_eq!(payloads(&net.seen(c1)), [b"second".to_vec()]);
}

#[test]
fn unacknowledged_objects_go_back_to_the_front_for_the_next_consumer() {
    let mut net = Net::new();
    let c1 = net.endpoint(&["q"]);
    let c2 = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    for i in 0..4u8 {
        net.produce(p, "q", &[i]);
    }
    net.notify(c1, "q", 2);
    net.drive();
    let got = net.seen(c1);
    assert_eq!(payloads(&got), [[0], [1]]);
    // c1 hands over the first, then dies before acknowledging the second.
    net.hand_over(c1, &got[..1]);
    net.drive();
    net.kill(c1);
    net.drive();
    net.notify(c2, "q", 3);
    net.drive();
    assert_eq!(payloads(&net.seen(c2)), [[1], [2], [3]]);
    assert_eq!(net.relay.stats().redelivered, 1);
}

#[test]
fn reconnect_regrants_outstanding_credit() {
    let mut net = Net::new();
    let c = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    net.notify(c, "q", 3);
    net.produce(p, "q", b"a");
    net.drive();
    let got = net.seen(c);
    assert_eq!(payloads(&got), [b"a".to_vec()]);
    // Not handed over: after the reconnect the relay redelivers it and credit is 3 again.
    net.kill(c);
    net.connect(c);
    net.drive();
    assert_eq!(payloads(&net.seen(c)), [b"a".to_vec()]);
    net.produce(p, "q", b"b");
    net.produce(p, "q", b"c");
    net.produce(p, "q", b"d");
    net.drive();
    assert_eq!(payloads(&net.seen(c)), [b"b".to_vec(), b"c".to_vec()]);
}

#[test]
fn producer_confirms_and_resend_is_recognised() {
    let mut net = Net::new();
    let c = net.endpoint(&["g"]);
    let p = net.endpoint(&[]);
    net.drive();
    let s1 = net.broadcast(p, "g", b"x");
    net.drive();
    net.confirm_delay_passes();
    assert!(net.eps[p].seen.contains(&Seen::Confirmed(s1)));
    // The producer did not see the confirm (say) and resends the same frame after reconnect.
    let mut buf = [0u8; 64];
    let frame_len = Frame::Publish(Publish {
        seq: s1,
        kind: PublishKind::Broadcast,
        groups: ["g"].into_iter().collect(),
        payload: b"x",
    })
    .encode(&mut buf)
    .unwrap();
    net.kill(p);
    net.connect(p);
    net.drive();
    assert!(
        net.eps[p].seen.contains(&Seen::Connected(s1)),
        "Welcome says what was handled"
    );
    net.eps[p].outbox.push(buf[..frame_len].to_vec());
    net.drive();
    assert_eq!(net.seen(c), [b("g", 1, b"x")]);
    assert_eq!(net.relay.stats().duplicates, 1);
}

#[test]
fn allow_list_refuses_unknown_groups_at_join_and_publish() {
    let mut net = Net::with(|c| {
        allow_only(c, &["ok"]);
    });
    let bad = net.endpoint(&["nope"]);
    let p = net.endpoint(&["ok"]);
    net.drive();
    assert!(
        matches!(&net.eps[bad].error, Some(EpError::Rejected(CloseCode::GroupRefused, d)) if d.contains("nope"))
    );
    let seq = net.broadcast(p, "nope", b"x");
    net.drive();
    assert!(net.eps[p].seen.contains(&Seen::Rejected(
        seq,
        "nope".into(),
        RejectReason::GroupRefused
    )));
}

#[test]
fn a_hello_of_several_new_groups_stays_under_max_groups() {
    // PROTOCOL.md §9.1: a new group must fit under the group limit. Two new groups in one
    // `Hello`, with room for one, must not make three groups of a limit of two.
    let mut net = Net::with(|c| c.max_groups = 2);
    let a = net.endpoint(&["one"]);
    net.drive();
    let b2 = net.endpoint(&["two", "three"]);
    net.drive();
    assert!(net.eps[a].session.is_open());
    assert!(
        matches!(
            &net.eps[b2].error,
            Some(EpError::Closed(CloseCode::TooManyGroups, d))
                if d.contains("more than the relay's 2 groups")
        ),
        "{:?}",
        net.eps[b2].error
    );
    assert_eq!(net.relay.member_count("two"), 0);
    assert!(net.relay.groups.len() <= 2, "{:?}", net.relay.groups.keys());
}

#[test]
fn the_session_forgotten_first_is_the_one_gone_longest() {
    // PROTOCOL.md §9.6: past `max_sessions`, the session unseen the longest is forgotten. One
    // that stayed connected until a moment ago was seen a moment ago, however early it
    // connected: it is the likeliest to come back and resend.
    let mut net = Net::with(|c| c.max_sessions = 2);
    let long = net.endpoint(&["g"]);
    net.drive();
    let brief = net.endpoint(&["g"]);
    net.drive();
    net.kill(brief);
    net.broadcast(long, "g", b"x");
    net.drive();
    net.kill(long);
    let _newcomer = net.endpoint(&["g"]);
    net.drive();
    assert!(
        net.relay.sessions.contains_key(&[long as u8 + 1; 16]),
        "the session that left last is remembered"
    );
    assert!(!net.relay.sessions.contains_key(&[brief as u8 + 1; 16]));
    // So it learns on reconnecting that its publish arrived.
    net.connect(long);
    net.drive();
    assert!(net.eps[long].seen.contains(&Seen::Connected(1)));
}

#[test]
fn max_members_refuses_the_next_member() {
    let mut net = Net::with(|c| c.default_limits.max_members = Some(1));
    let a = net.endpoint(&["g"]);
    net.drive();
    let b2 = net.endpoint(&["g"]);
    net.drive();
    assert!(net.eps[a].session.is_open());
    assert!(
        matches!(
            &net.eps[b2].error,
            Some(EpError::Rejected(CloseCode::GroupFull, d)) if d.ends_with("has 1 member")
        ),
        "{:?}",
        net.eps[b2].error
    );
}

#[test]
fn overflow_reject_and_drop_oldest() {
    let mut net = Net::with(|c| c.default_limits.max_queue = 2);
    let p = net.endpoint(&[]);
    net.drive();
    net.produce(p, "q", b"1");
    net.produce(p, "q", b"2");
    let s3 = net.produce(p, "q", b"3");
    net.drive();
    assert!(
        net.eps[p]
            .seen
            .contains(&Seen::Rejected(s3, "q".into(), RejectReason::QueueFull))
    );
    assert_eq!(net.relay.queue_len("q"), 2);

    let mut net = Net::with(|c| {
        c.default_limits.max_queue = 2;
        c.default_limits.overflow = Overflow::DropOldest;
    });
    let p = net.endpoint(&[]);
    let c = net.endpoint(&["q"]);
    net.drive();
    for x in [b"1", b"2", b"3"] {
        net.produce(p, "q", x);
    }
    net.drive();
    assert!(
        !net.eps[p]
            .seen
            .iter()
            .any(|s| matches!(s, Seen::Rejected(..)))
    );
    assert_eq!(net.relay.stats().dropped_oldest, 1);
    net.notify(c, "q", 10);
    net.drive();
    assert_eq!(payloads(&net.seen(c)), [b"2".to_vec(), b"3".to_vec()]);
}

#[test]
fn wrong_password_is_rejected_and_others_keep_working() {
    let mut net = Net::new();
    let good = net.endpoint(&["g"]);
    let bad = net.endpoint_with(AuthKey::from_bytes([8; 32]), &["g"], |_| {});
    net.drive();
    assert!(matches!(
        net.eps[bad].error,
        Some(EpError::Rejected(CloseCode::BadPassword, _))
    ));
    assert_eq!(net.relay.member_count("g"), 1);
    net.broadcast(good, "g", b"still here");
    net.drive();
    assert_eq!(net.seen(good), [b("g", 1, b"still here")]);
}

#[test]
fn a_broadcast_too_large_for_a_member_is_skipped_for_it_only() {
    let mut net = Net::new();
    let small = net.endpoint_with(key(), &["g"], |c| c.max_frame = 1024);
    let big = net.endpoint(&["g"]);
    let p = net.endpoint(&[]);
    net.drive();
    net.broadcast(p, "g", &[1; 2000]);
    net.broadcast(p, "g", b"small");
    net.drive();
    assert_eq!(
        net.seen(small),
        [Seen::Skipped("g".into(), 1), b("g", 2, b"small")]
    );
    assert_eq!(net.seen(big), [b("g", 1, &[1; 2000]), b("g", 2, b"small")]);
}

#[test]
fn a_produced_object_too_large_waits_for_a_consumer_that_can_take_it() {
    let mut net = Net::new();
    let small = net.endpoint_with(key(), &["q"], |c| c.max_frame = 1024);
    let big = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    net.notify(small, "q", 5);
    net.drive();
    net.produce(p, "q", &[1; 2000]);
    net.produce(p, "q", b"fits");
    net.drive();
    assert_eq!(payloads(&net.seen(small)), [b"fits".to_vec()]);
    net.notify(big, "q", 1);
    net.drive();
    assert_eq!(payloads(&net.seen(big)), [std::vec![1; 2000]]);
}

#[test]
fn slow_consumer_is_disconnected_and_others_keep_receiving() {
    let mut net = Net::with(|c| c.outbound_limit = 4096);
    let slow = net.endpoint(&["g"]);
    let fast = net.endpoint(&["g"]);
    let p = net.endpoint(&[]);
    net.drive();
    // The slow one never lets its socket take anything: stop reading its output.
    let slow_conn = net.eps[slow].conn.unwrap();
    net.eps[slow].conn = None;
    for i in 0..20u8 {
        net.broadcast(p, "g", &[i; 500]);
        net.drive();
    }
    assert_eq!(net.seen(fast).len(), 20);
    let mut closed = false;
    while let Some(chunk) = net.relay.poll_transmit(slow_conn) {
        closed |= matches!(
            frame::decode(&chunk),
            Ok(Frame::Close(Close {
                code: CloseCode::SlowConsumer,
                ..
            }))
        );
    }
    assert!(
        closed,
        "the last thing queued for the slow consumer is its Close"
    );
    assert_eq!(net.relay.member_count("g"), 1);
    assert_eq!(net.relay.stats().slow_consumers, 1);
}

#[test]
fn notify_for_a_group_not_joined_closes_with_a_reason() {
    let mut net = Net::new();
    let e = net.endpoint(&["g"]);
    net.drive();
    let conn = net.eps[e].conn.unwrap();
    let bytes = Frame::Notify(frame::Notify {
        group: "other",
        credit: 1,
    })
    .to_vec();
    net.relay.handle_input(net.now, conn, &bytes);
    let ev = net.relay.poll_event();
    assert!(
        matches!(&ev, Some(RelayEvent::Closing { code: CloseCode::ProtocolViolation, detail, .. }) if detail.contains("other")),
        "{ev:?}"
    );
}

#[test]
fn ack_for_an_unknown_delivery_closes_with_a_reason() {
    let mut net = Net::new();
    let e = net.endpoint(&["g"]);
    net.drive();
    let conn = net.eps[e].conn.unwrap();
    let bytes = Frame::Ack(frame::Ack { up_to: 5 }).to_vec();
    net.relay.handle_input(net.now, conn, &bytes);
    assert!(matches!(
        net.relay.poll_event(),
        Some(RelayEvent::Closing {
            code: CloseCode::ProtocolViolation,
            ..
        })
    ));
}

#[test]
fn frames_before_the_handshake_garbage_and_oversize_are_refused() {
    let mut net = Net::new();
    let other = net.endpoint(&["g"]);
    net.drive();
    let cases: [(Vec<u8>, CloseCode); 3] = [
        (
            Frame::Notify(frame::Notify {
                group: "g",
                credit: 1,
            })
            .to_vec(),
            CloseCode::ProtocolViolation,
        ),
        (
            std::vec![0, 0, 0, 3, 0xee, 1, 2],
            CloseCode::ProtocolViolation,
        ),
        (std::vec![0x7f, 0, 0, 0], CloseCode::FrameTooLarge),
    ];
    for (bytes, code) in cases {
        let nonce = net.fresh();
        let conn = net.relay.accept(net.now, nonce);
        net.relay.handle_input(net.now, conn, &bytes);
        match net.relay.poll_event() {
            Some(RelayEvent::Closing {
                conn: c, code: got, ..
            }) => {
                assert_eq!((c, got), (conn, code));
            }
            other => panic!("{other:?}"),
        }
        net.relay.connection_lost(conn);
    }
    assert!(net.eps[other].session.is_open());
    assert_eq!(net.relay.member_count("g"), 1);
}

#[test]
fn a_replayed_proof_fails_on_a_new_connection() {
    let mut net = Net::new();
    let e = net.endpoint(&["g"]);
    net.drive();
    // Record the endpoint's Hello and Proof by replaying the handshake of a fresh session.
    let mut s = EndpointSession::new(EndpointConfig::new(key(), [9; 16], &["g"]).unwrap());
    s.start_connection(net.now, [5; 32]).unwrap();
    let mut buf = [0u8; 512];
    let n = s.poll_transmit(&mut buf).unwrap();
    let hello = buf[..n].to_vec();
    let conn = net.relay.accept(net.now, [6; 32]);
    net.relay.handle_input(net.now, conn, &hello);
    let challenge = net.relay.poll_transmit(conn).unwrap();
    assert!(matches!(
        s.handle_input(net.now, &challenge),
        Ok(Input::Frame { .. })
    ));
    let n = s.poll_transmit(&mut buf).unwrap();
    let proof = buf[..n].to_vec();
    net.relay.handle_input(net.now, conn, &proof);
    assert!(matches!(
        net.relay.poll_event(),
        Some(RelayEvent::Authenticated { .. })
    ));
    // The same Hello and Proof on a new connection with another relay nonce fail.
    let conn2 = net.relay.accept(net.now, [7; 32]);
    net.relay.handle_input(net.now, conn2, &hello);
    net.relay.handle_input(net.now, conn2, &proof);
    assert!(matches!(
        net.relay.poll_event(),
        Some(RelayEvent::Closing {
            code: CloseCode::BadPassword,
            ..
        })
    ));
    assert!(net.eps[e].session.is_open());
}

#[test]
fn handshake_deadline_and_idle_timeout() {
    let mut net = Net::new();
    let e = net.endpoint_with(key(), &["g"], |c| {
        c.keepalive = Duration::from_secs(1);
        c.dead_after = Duration::from_secs(100);
    });
    net.drive();
    let silent = net.relay.accept(net.now, [1; 32]);
    net.now = net.now + Duration::from_secs(11);
    net.relay.handle_timeout(net.now);
    let mut codes = Vec::new();
    while let Some(ev) = net.relay.poll_event() {
        if let RelayEvent::Closing { conn, code, .. } = ev {
            codes.push((conn, code));
        }
    }
    assert!(codes.contains(&(silent, CloseCode::AuthTimeout)));
    assert!(codes.contains(&(net.eps[e].conn.unwrap(), CloseCode::IdleTimeout)));
}

/// A large publish trickling in over far longer than the idle window is not silence: the
/// endpoint cannot answer a ping in the middle of a frame, but its bytes keep coming.
#[test]
fn a_slow_upload_of_a_large_frame_is_not_idle() {
    // Fed as the relay driver does for frames of any size: the growing buffer to
    // `handle_input`, or (`gathered`) `input_progress` at each arrival and the whole frame to
    // `handle_input_shared` at the end.
    for gathered in [false, true] {
        let mut net = Net::new();
        let (e, conn, payload, frame) = net.slow_link_publisher();
        // 100 bytes every 500 ms: 100 s for the frame, against an idle window of a few seconds.
        let mut fed = 0;
        while fed < frame.len() {
            fed = (fed + 100).min(frame.len());
            net.now = net.now + Duration::from_millis(500);
            let used = match (gathered, fed == frame.len()) {
                (false, _) => net.relay.handle_input(net.now, conn, &frame[..fed]),
                (true, false) => {
                    net.relay.input_progress(net.now, conn, fed);
                    0
                }
                (true, true) => {
                    let whole = SharedBytes::new(frame.clone());
                    net.relay.handle_input_shared(net.now, conn, &whole)
                }
            };
            net.relay.handle_timeout(net.now);
            while let Some(ev) = net.relay.poll_event() {
                assert!(
                    !matches!(ev, RelayEvent::Closing { .. }),
                    "gathered {gathered}: closed after {fed} of {} bytes: {ev:?}",
                    frame.len()
                );
            }
            assert_eq!(used, if fed == frame.len() { fed } else { 0 });
        }
        net.drive();
        assert!(
            net.eps[e]
                .seen
                .iter()
                .any(|s| matches!(s, Seen::Broadcast(g, _, p) if g == "g" && *p == payload)),
            "gathered {gathered}"
        );
    }
}

/// A peer that only pretends to send a frame, a byte now and then (slowloris), keeps no
/// connection: once the idle window has passed, the frame must have come at `min_frame_rate`.
#[test]
fn a_frame_trickled_below_the_minimum_rate_closes_the_connection() {
    for (gathered, rate) in [(false, 128), (true, 128), (false, 0)] {
        let mut net = Net::with(|c| c.min_frame_rate = rate);
        let other = net.endpoint(&["g"]);
        let (e, conn, _, frame) = net.slow_link_publisher();
        // Ten bytes a second: alive by the keepalive rule, far under 128 B/s. (`other`, silent
        // meanwhile, has the default 15 s idle window.)
        let mut closed = None;
        for second in 1..=12usize {
            net.now = net.now + Duration::from_secs(1);
            let fed = 10 * second;
            if gathered && second > 1 {
                net.relay.input_progress(net.now, conn, fed);
            } else {
                assert_eq!(net.relay.handle_input(net.now, conn, &frame[..fed]), 0);
            }
            assert!(net.relay.poll_timeout().is_some());
            net.relay.handle_timeout(net.now);
            while let Some(ev) = net.relay.poll_event() {
                if let RelayEvent::Closing {
                    conn: c,
                    code,
                    detail,
                    ..
                } = ev
                    && c == conn
                {
                    closed = Some((second, code, detail));
                }
            }
            if closed.is_some() {
                break;
            }
        }
        if rate == 0 {
            assert!(closed.is_none(), "no minimum: {closed:?}");
            continue;
        }
        let (second, code, detail) = closed.expect("closed");
        // The idle window is 3 s (3 intervals of 1 s); the first check after it closes it.
        assert!((3..=5).contains(&second), "closed after {second} s");
        assert_eq!(code, CloseCode::IdleTimeout);
        assert!(
            detail.contains(" B/s, under the minimum of 128 B/s"),
            "{detail}"
        );
        // Nothing else is affected.
        net.relay.connection_lost(conn);
        net.eps[e].conn = None;
        net.eps[e].session.connection_lost();
        net.broadcast(other, "g", b"still here");
        net.drive();
        assert_eq!(net.seen(other), [b("g", 1, b"still here")]);
    }
}

/// The mirror case at the endpoint: a large delivery trickling in is not a silent relay.
#[test]
fn a_slow_delivery_of_a_large_frame_is_not_a_silent_relay() {
    let mut net = Net::new();
    let e = net.endpoint_with(key(), &["g"], |c| {
        c.keepalive = Duration::from_secs(1);
        c.dead_after = Duration::from_secs(3);
    });
    net.drive();
    let payload = std::vec![9u8; 20_000];
    let frame = Frame::Deliver(Deliver {
        group: "g",
        delivery: Delivery::Broadcast { seq: 1 },
        payload: &payload,
    })
    .to_vec();
    let session = &mut net.eps[e].session;
    let mut fed = 0;
    let mut delivered = false;
    while fed < frame.len() {
        fed = (fed + 100).min(frame.len());
        net.now = net.now + Duration::from_millis(500);
        match session.handle_input(net.now, &frame[..fed]) {
            Ok(Input::NeedMore) => {}
            Ok(Input::Frame { consumed, event }) => {
                assert_eq!(consumed, frame.len());
                delivered = matches!(event, Some(Event::Delivered { .. }));
            }
            Err(e) => panic!("after {fed} of {} bytes: {e}", frame.len()),
        }
        session.handle_timeout(net.now);
        assert!(
            session.is_open(),
            "gave up after {fed} of {} bytes",
            frame.len()
        );
    }
    assert!(delivered);
}

#[test]
fn keepalive_pings_keep_a_quiet_endpoint_connected() {
    let mut net = Net::new();
    let e = net.endpoint_with(key(), &["g"], |c| c.keepalive = Duration::from_secs(1));
    net.drive();
    for _ in 0..10 {
        net.now = net.now + Duration::from_millis(1100);
        net.eps[e].session.handle_timeout(net.now);
        net.relay.handle_timeout(net.now);
        net.drive();
    }
    assert!(net.eps[e].session.is_open());
    assert_eq!(net.eps[e].session.phase(), Phase::Open);
}

#[test]
fn graceful_close_is_answered() {
    let mut net = Net::new();
    let e = net.endpoint(&["g"]);
    net.drive();
    net.eps[e].session.close(net.now);
    net.drive();
    assert!(net.eps[e].seen.contains(&Seen::Stopped));
    assert_eq!(net.relay.member_count("g"), 0);
}

#[test]
fn a_new_connection_of_the_same_session_takes_over() {
    let mut net = Net::new();
    let e = net.endpoint(&["g"]);
    net.drive();
    let old = net.eps[e].conn.unwrap();
    // The endpoint thinks its connection died; the relay has not noticed yet.
    net.eps[e].session.connection_lost();
    net.connect(e);
    net.drive();
    assert!(net.eps[e].session.is_open());
    assert_eq!(net.relay.member_count("g"), 1);
    assert!(
        net.relay
            .conns
            .get(&old)
            .is_none_or(|c| matches!(c.phase, super::Phase::Closed))
    );
}

#[test]
fn unsupported_version_is_refused() {
    let mut net = Net::new();
    let conn = net.relay.accept(net.now, [1; 32]);
    let hello = Frame::Hello(frame::Hello {
        version: 99,
        nonce: [0; 32],
        session: [0; 16],
        max_frame: 4096,
        keepalive_ms: 1000,
        groups: frame::GroupList::new(),
    })
    .to_vec();
    net.relay.handle_input(net.now, conn, &hello);
    assert!(matches!(
        net.relay.poll_event(),
        Some(RelayEvent::Closing {
            code: CloseCode::UnsupportedVersion,
            ..
        })
    ));
}

#[test]
fn the_relay_pings_an_endpoint_that_only_receives() {
    let mut net = Net::new();
    let e = net.endpoint_with(key(), &["g"], |c| {
        c.keepalive = Duration::from_secs(1);
        c.dead_after = Duration::from_secs(100);
    });
    let p = net.endpoint_with(key(), &[], |c| c.keepalive = Duration::from_secs(1000));
    net.drive();
    for i in 0..10u8 {
        net.now = net.now + Duration::from_millis(700);
        net.broadcast(p, "g", &[i]);
        net.relay.handle_timeout(net.now);
        net.drive();
    }
    assert!(net.eps[e].session.is_open(), "{:?}", net.eps[e].error);
    assert_eq!(net.seen(e).len(), 10);
}

#[test]
fn the_largest_hello_is_accepted_and_a_tiny_max_frame_refused() {
    let names: Vec<String> = (0..16).map(|i| std::format!("{i:0>64}")).collect();
    let groups: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut net = Net::new();
    let big = net.endpoint(&groups);
    let tiny = net.endpoint_with(key(), &["g"], |c| c.max_frame = 512);
    net.drive();
    assert!(net.eps[big].session.is_open(), "{:?}", net.eps[big].error);
    assert!(matches!(
        net.eps[tiny].error,
        Some(EpError::Closed(CloseCode::ProtocolViolation, _))
    ));
}

#[test]
fn draining_uses_standing_credit_first() {
    let mut net = Net::new();
    let c = net.endpoint(&["q"]);
    let p = net.endpoint(&[]);
    net.drive();
    net.notify(c, "q", 2);
    net.drive();
    net.produce(p, "q", b"a");
    net.drive();
    for x in [b"b", b"c", b"d"] {
        net.eps[c].session.notify("q", 0).unwrap();
        net.produce(p, "q", x);
    }
    // One grant is left; queue: c, d (b went to the grant).
    net.drive();
    net.notify(c, "q", -1);
    net.drive();
    assert_eq!(
        payloads(&net.seen(c)),
        [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    assert_eq!(net.eps[c].session.outstanding_credit("q"), Some(0));
    net.produce(p, "q", b"e");
    net.drive();
    assert_eq!(net.seen(c), [], "the drain used the standing credit up");
}

/// Input handed over shared: a large payload is shared as a range of the input itself (no
/// copy); a small one in the same input is copied out, so that it never keeps the large buffer
/// alive; plain input is copied. What members receive is the same either way.
#[test]
fn shared_input_is_shared_where_large_and_copied_where_small() {
    for share in [false, true] {
        let mut net = Net::new();
        net.share_input = share;
        let sender = net.endpoint(&[]);
        let member = net.endpoint(&["g"]);
        net.drive();
        net.notify(member, "g", 1);
        net.drive();
        let large = std::vec![9u8; 50_000];
        let smaller = std::vec![1u8; 20_000];
        // Both frames in one input: the produced payload is under half of it, the broadcast
        // most of it (both are large enough to be shared between connections).
        net.produce(sender, "g", &smaller);
        net.broadcast(sender, "g", &large);
        net.drive();
        let seen = net.seen(member);
        assert!(
            seen.contains(&b("g", 1, &large)),
            "{share}: the broadcast arrived"
        );
        assert_eq!(payloads(&seen), core::slice::from_ref(&smaller), "{share}");
        let chunks = &net.eps[member].shared_chunks;
        let produced = chunks
            .iter()
            .find(|(len, _)| *len == smaller.len())
            .expect("produced chunk");
        assert_eq!(
            produced.1,
            smaller.len(),
            "{share}: a payload under half of the input is a copy of its own"
        );
        let broadcast = chunks
            .iter()
            .find(|(len, _)| *len == large.len())
            .expect("broadcast chunk");
        if share {
            assert!(
                broadcast.1 > large.len(),
                "the payload is a range of the input ({} bytes kept)",
                broadcast.1
            );
        } else {
            assert_eq!(broadcast.1, large.len(), "plain input: a copy");
        }
    }
}

/// A slow consumer's queued output is dropped at its close, but never in the middle of a
/// frame: when the driver has taken a large frame's header, its payload still goes out before
/// the `Close`, and what the member gets decodes frame by frame.
#[test]
fn a_slow_consumer_is_never_cut_in_the_middle_of_a_frame() {
    let mut net = Net::with(|c| c.outbound_limit = 100_000);
    let sender = net.endpoint(&[]);
    let slow = net.endpoint(&["g"]);
    net.drive();
    // From here on nobody reads the slow member's output but this test.
    let conn = net.eps[slow].conn.take().unwrap();
    let payload = std::vec![3u8; 30_000];
    net.broadcast(sender, "g", &payload);
    net.drive();
    // The driver takes the chunk that ends with the frame's header, not yet its payload.
    let wire = net.relay.poll_transmit(conn).unwrap().to_vec();
    for _ in 0..6 {
        net.broadcast(sender, "g", &payload);
    }
    let frames = slow_close_output(&mut net, conn, wire);
    let delivered = frames
        .iter()
        .filter(|k| **k == frame::Kind::Deliver)
        .count();
    assert!(
        (1..=4).contains(&delivered),
        "the begun frame, and at most what fits the limit: {frames:?}"
    );
}

/// A small produced payload (<= SMALL_FRAME) is copied after its header into the same output
/// buffer, never into the next one: the driver may take a buffer at any time, and the
/// slow-consumer drop, which cuts between buffers, must not leave a header without its payload
/// before the Close (it did: 374 of 375 buffers ended in a header with 2000-byte payloads).
#[test]
fn a_slow_consumer_is_never_cut_between_a_small_payload_and_its_header() {
    let mut net = Net::with(|c| c.outbound_limit = 100_000);
    let sender = net.endpoint(&[]);
    let slow = net.endpoint(&["g"]);
    net.drive();
    net.notify(slow, "g", 40);
    net.drive();
    let conn = net.eps[slow].conn.take().unwrap();
    for i in 0..40u8 {
        net.produce(sender, "g", &std::vec![i; 2000]);
    }
    net.drive();
    // The driver takes one chunk (as WRITER_WINDOW allows), then the member falls behind.
    let wire = net.relay.poll_transmit(conn).unwrap().to_vec();
    for _ in 0..6 {
        net.broadcast(sender, "g", &std::vec![3u8; 30_000]);
    }
    slow_close_output(&mut net, conn, wire);
}

/// Settles `net`, checks that `conn` was closed as a slow consumer, and reads the rest of its
/// output after `wire` (what the driver took before): the kinds of its frames, which must all
/// be whole and end with the `Close`.
fn slow_close_output(net: &mut Net, conn: ConnId, mut wire: Vec<u8>) -> Vec<frame::Kind> {
    net.drive();
    assert_eq!(net.relay.stats().slow_consumers, 1);
    while let Some(chunk) = net.relay.poll_transmit(conn) {
        wire.extend_from_slice(&chunk);
    }
    let mut frames = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let len = frame::frame_len(rest, u32::MAX)
            .unwrap()
            .expect("only whole frames");
        match frame::decode(&rest[..len]) {
            Ok(f) => frames.push(f.kind()),
            Err(e) => panic!("garbage after {} frames {frames:?}: {e}", frames.len()),
        }
        rest = &rest[len..];
    }
    assert_eq!(
        frames.last(),
        Some(&frame::Kind::Close),
        "the Close comes last: {frames:?}"
    );
    frames
}

/// A relay with a member of "g" and a sender that is a member of nothing, connected.
fn member_and_sender() -> (Net, usize, usize) {
    let mut net = Net::new();
    let member = net.endpoint(&["g"]);
    let sender = net.endpoint(&[]);
    net.drive();
    (net, member, sender)
}

#[test]
fn a_lone_publish_is_confirmed_within_the_confirm_delay() {
    let (mut net, c, p) = member_and_sender();
    let s1 = net.broadcast(p, "g", b"x");
    net.drive();
    // Delivered at once; its confirm waits for output to go with.
    assert_eq!(net.seen(c), [b("g", 1, b"x")]);
    assert!(net.confirms(p).is_empty());
    let due = net.now + net.relay.config().confirm_delay;
    assert_eq!(net.relay.poll_confirm_timeout(), Some(due));
    assert!(net.relay.poll_timeout().is_some_and(|t| t <= due));
    net.relay
        .handle_confirm_timeout(due - Duration::from_millis(1));
    net.drive();
    assert!(net.confirms(p).is_empty(), "not before it is due");
    net.confirm_delay_passes();
    assert_eq!(net.confirms(p), [s1]);
    assert_eq!(net.relay.poll_confirm_timeout(), None);
}

#[test]
fn a_batch_of_two_publishes_is_confirmed_at_once() {
    let (mut net, _c, p) = member_and_sender();
    net.broadcast(p, "g", b"x");
    let s2 = net.broadcast(p, "g", b"y");
    net.drive();
    assert_eq!(net.confirms(p), [s2]);
    // A lone publish after a lone publish: the second makes two unconfirmed.
    let s3 = net.broadcast(p, "g", b"z");
    net.drive();
    assert!(net.confirms(p).is_empty());
    let s4 = net.broadcast(p, "g", b"w");
    net.drive();
    assert_eq!(net.confirms(p), [s4]);
    assert!(s4 > s3);
    // The stale deadline of the third sends nothing more.
    net.confirm_delay_passes();
    assert!(net.confirms(p).is_empty());
}

#[test]
fn a_deferred_confirm_travels_with_the_next_output_in_one_write() {
    let mut net = Net::new();
    let a = net.endpoint(&["back"]);
    let b_ = net.endpoint(&["g"]);
    net.drive();
    // A asks, B answers: A's confirm goes with the answer, not in a write of its own.
    let s1 = net.broadcast(a, "g", b"ask");
    net.drive();
    assert!(net.confirms(a).is_empty());
    net.broadcast(b_, "back", b"answer");
    let conn_b = net.eps[b_].conn.unwrap();
    let mut bytes = [0u8; 4096];
    let n = net.eps[b_].session.poll_transmit(&mut bytes).unwrap_or(0);
    assert_eq!(n, 0, "nothing but the publish to send");
    let frame = net.eps[b_].outbox.remove(0);
    net.relay.handle_input(net.now, conn_b, &frame);
    let conn_a = net.eps[a].conn.unwrap();
    let chunks = take_chunks(&mut net, conn_a);
    assert_eq!(chunks.len(), 1, "one chunk: the answer and the confirm");
    net.eps[a].inbox.extend_from_slice(&chunks[0]);
    net.drive();
    assert_eq!(net.confirms(a), [s1]);
    assert_eq!(net.seen(a), [b("back", 1, b"answer")]);
    // Its deadline is stale now.
    net.confirm_delay_passes();
    assert!(net.confirms(a).is_empty());
}

#[test]
fn an_endpoint_asking_for_its_confirm_gets_it_at_once() {
    let (mut net, _c, p) = member_and_sender();
    // Nothing to confirm: asking sends nothing.
    net.eps[p].session.request_confirm();
    let mut buf = [0u8; 64];
    assert_eq!(net.eps[p].session.poll_transmit(&mut buf).unwrap_or(0), 0);
    let s1 = net.broadcast(p, "g", b"x");
    net.drive();
    assert!(net.confirms(p).is_empty());
    // A `Ping`, whose `Pong` brings the confirm.
    net.eps[p].session.request_confirm();
    net.drive();
    assert_eq!(net.confirms(p), [s1]);
}

#[test]
fn a_close_is_preceded_by_the_deferred_confirm() {
    // By the endpoint.
    let (mut net, _c, p) = member_and_sender();
    let s1 = net.broadcast(p, "g", b"x");
    net.drive();
    net.eps[p].session.close(net.now);
    net.drive();
    let seen = core::mem::take(&mut net.eps[p].seen);
    let tail: Vec<&Seen> = seen.iter().rev().take(2).rev().collect();
    assert_eq!(tail, [&Seen::Confirmed(s1), &Seen::Stopped]);

    // By the relay.
    let (mut net, _c, p) = member_and_sender();
    let s1 = net.broadcast(p, "g", b"x");
    net.drive();
    net.relay.shutdown();
    net.drive();
    assert_eq!(net.confirms(p), [s1]);
    assert!(matches!(
        net.eps[p].error,
        Some(EpError::Closed(CloseCode::Shutdown, _))
    ));
    // No confirm is due for a connection that is gone.
    assert_eq!(net.relay.poll_confirm_timeout(), None);
    net.confirm_delay_passes();
    assert!(net.confirms(p).is_empty());
}

#[test]
fn a_rejected_lone_publish_is_confirmed_after_its_rejection() {
    let mut net = Net::with(|c| {
        allow_only(c, &["ok"]);
    });
    let p = net.endpoint(&[]);
    net.drive();
    let s1 = net.broadcast(p, "nope", b"x");
    net.drive();
    assert_eq!(
        net.eps[p].seen,
        [
            Seen::Connected(0),
            Seen::Rejected(s1, "nope".into(), RejectReason::GroupRefused),
            Seen::Confirmed(s1)
        ]
    );
}

/// Feeds `bytes` to endpoint `i`'s session directly (a read that happens before its next write).
fn read_now(net: &mut Net, i: usize, bytes: &[u8]) {
    let now = net.now;
    let mut rest = bytes;
    while !rest.is_empty() {
        match net.eps[i].session.handle_input(now, rest).unwrap() {
            Input::Frame { consumed, .. } => rest = &rest[consumed..],
            Input::NeedMore => panic!("partial frame"),
        }
    }
}

/// The relay's output for `conn`, taken off the wire chunk by chunk, one write each (other
/// connections' output is dropped).
fn take_chunks(net: &mut Net, conn: ConnId) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while let Some(c) = net.relay.poll_dirty() {
        while let Some(chunk) = net.relay.poll_transmit(c) {
            net.relay.handle_written(c, chunk.len());
            if c == conn {
                chunks.push(chunk.to_vec());
            }
        }
    }
    chunks
}

/// [`take_chunks`], as one stream of bytes.
fn take_output(net: &mut Net, conn: ConnId) -> Vec<u8> {
    take_chunks(net, conn).concat()
}

/// A frame that crossed the request (sent by the relay before it had the publish) must not
/// cancel the `Ping` the application asked for.
#[test]
fn a_request_for_the_confirm_survives_a_frame_that_crossed_it() {
    let mut net = Net::new();
    let p = net.endpoint(&["g"]);
    let other = net.endpoint(&[]);
    net.drive();
    let (conn_p, conn_o) = (net.eps[p].conn.unwrap(), net.eps[other].conn.unwrap());
    // A broadcast to p is on the wire.
    net.broadcast(other, "g", b"crossing");
    let frame = net.eps[other].outbox.remove(0);
    net.relay.handle_input(net.now, conn_o, &frame);
    let to_p = take_output(&mut net, conn_p);
    assert!(!to_p.is_empty());
    // p publishes alone (the relay defers its confirm); its application waits and asks.
    let s1 = net.broadcast(p, "h", b"x");
    let frame = net.eps[p].outbox.remove(0);
    net.relay.handle_input(net.now, conn_p, &frame);
    assert!(take_output(&mut net, conn_p).is_empty(), "deferred");
    net.eps[p].session.request_confirm();
    // p reads the crossing broadcast before its driver writes again.
    read_now(&mut net, p, &to_p);
    let mut buf = [0u8; 64];
    let n = net.eps[p].session.poll_transmit(&mut buf).unwrap();
    assert!(n > 0, "the Ping asked for is still sent");
    net.relay.handle_input(net.now, conn_p, &buf[..n]);
    net.drive();
    assert_eq!(net.confirms(p), [s1]);
    assert_eq!(
        net.eps[p].session.poll_transmit(&mut buf).unwrap(),
        0,
        "asked once"
    );
}

/// An application that starts waiting while a keepalive `Ping` is unanswered gets its
/// confirm without the relay's delay: that `Pong` may have left before the publish arrived.
#[test]
fn a_request_while_a_keepalive_ping_is_out_is_not_lost() {
    let (mut net, _c, p) = member_and_sender();
    let conn_p = net.eps[p].conn.unwrap();
    // p's keepalive Ping; the relay answers before p's publish arrives.
    net.now = net.now + net.eps[p].session.config().keepalive;
    net.eps[p].session.handle_timeout(net.now);
    let mut buf = [0u8; 64];
    let n = net.eps[p].session.poll_transmit(&mut buf).unwrap();
    net.relay.handle_input(net.now, conn_p, &buf[..n]);
    let pong = take_output(&mut net, conn_p);
    let s1 = net.broadcast(p, "g", b"x");
    let frame = net.eps[p].outbox.remove(0);
    net.relay.handle_input(net.now, conn_p, &frame);
    assert!(take_output(&mut net, conn_p).is_empty(), "deferred");
    net.eps[p].session.request_confirm(); // the application waits
    read_now(&mut net, p, &pong);
    net.drive();
    assert_eq!(
        net.confirms(p),
        [s1],
        "confirmed without waiting confirm_delay"
    );
}

/// Publish while disconnected, wait, reconnect: the resend comes alone, and the wait asked for
/// a confirm that only the relay's timer brings.
#[test]
fn a_request_made_while_disconnected_is_not_lost() {
    let (mut net, _c, p) = member_and_sender();
    net.kill(p);
    let s1 = net.broadcast(p, "g", b"x");
    net.eps[p].session.request_confirm(); // the application waits
    net.connect(p);
    net.drive();
    assert_eq!(
        net.confirms(p),
        [s1],
        "confirmed without waiting confirm_delay"
    );
}

/// A relay with only group "g" allowed and a 100,000-byte outbound limit, and a member of "g"
/// that reads nothing (its connection taken out of the network) with 120,000 bytes of
/// broadcasts waiting: past its limit. (net, the sender of those, the member, its connection.)
fn slow_member_past_its_limit() -> (Net, usize, usize, ConnId) {
    let mut net = Net::with(|c| {
        c.outbound_limit = 100_000;
        allow_only(c, &["g"]);
    });
    let sender = net.endpoint(&[]);
    let slow = net.endpoint(&["g"]);
    net.drive();
    let conn = net.eps[slow].conn.take().unwrap();
    for _ in 0..4 {
        net.broadcast(sender, "g", &std::vec![3u8; 30_000]);
    }
    net.drive();
    (net, sender, slow, conn)
}

/// The frames the relay has queued for `conn` (taken, as the driver would), one `Vec` each.
fn queued_frames(net: &mut Net, conn: ConnId) -> Vec<Vec<u8>> {
    let mut wire = Vec::new();
    while let Some(chunk) = net.relay.poll_transmit(conn) {
        wire.extend_from_slice(&chunk);
    }
    let mut frames = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let len = frame::frame_len(rest, u32::MAX).unwrap().unwrap();
        frames.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    frames
}

/// A slow consumer's close drops the `PublishRejected` of its own publish: it must not confirm
/// that publish after it (§9.6: a rejection always precedes its confirm).
#[test]
fn a_slow_close_does_not_confirm_a_publish_whose_rejection_it_dropped() {
    let (mut net, _sender, slow, conn) = slow_member_past_its_limit();
    // The slow member publishes to a refused group.
    let s1 = net.broadcast(slow, "nope", b"x");
    let frame = net.eps[slow].outbox.remove(0);
    net.relay.handle_input(net.now, conn, &frame);
    let mut kinds = Vec::new();
    for raw in queued_frames(&mut net, conn) {
        let f = frame::decode(&raw).unwrap();
        if let Frame::Confirm(c) = &f {
            assert!(
                kinds.contains(&frame::Kind::PublishRejected),
                "Confirm {{ up_to: {} }} (s1 = {s1}) without the rejection before it: {kinds:?}",
                c.up_to
            );
        }
        kinds.push(f.kind());
    }
}

/// A slow consumer (past its backlog limit) whose last batch holds a publish the relay refuses
/// and then its own `Close` (an endpoint that stops at once, as the embassy one does): the
/// `PublishRejected` was refused at the limit, so no `Confirm` may cover that publish, and the
/// `Close` the connection got must still go out, also when other input makes the relay close
/// its slow consumers before the driver writes (it drains its input channel first).
#[test]
fn a_slow_consumer_that_closes_in_the_same_batch_gets_no_confirm_of_a_dropped_rejection() {
    for other_input in [false, true] {
        let (mut net, sender, slow, conn) = slow_member_past_its_limit();
        // One batch: a publish to a refused group, then the endpoint's `Close`.
        let s1 = net.broadcast(slow, "nope", b"x");
        let mut batch = net.eps[slow].outbox.remove(0);
        batch.extend_from_slice(
            &Frame::Close(Close {
                code: CloseCode::Normal,
                detail: "",
            })
            .to_vec(),
        );
        net.relay.handle_input(net.now, conn, &batch);
        if other_input {
            net.broadcast(sender, "g", b"more");
            net.drive();
        }
        let mut kinds = Vec::new();
        for raw in queued_frames(&mut net, conn) {
            let f = frame::decode(&raw).unwrap();
            if let Frame::Confirm(c) = &f {
                assert!(
                    c.up_to < s1 || kinds.contains(&frame::Kind::PublishRejected),
                    "other input {other_input}: Confirm {{ up_to: {} }} (s1 = {s1}) without \
                     the rejection before it",
                    c.up_to
                );
            }
            kinds.push(f.kind());
        }
        assert_eq!(
            kinds.last(),
            Some(&frame::Kind::Close),
            "other input {other_input}: the Close is gone"
        );
    }
}

/// A peer stating a huge keepalive is held to the relay's `max_keepalive`: pinged after it, and
/// closed as idle after `idle_intervals` of it when it does not answer (else it could sit
/// silent for weeks).
#[test]
fn a_huge_stated_keepalive_is_capped_by_the_relay() {
    let mut net = Net::with(|c| c.max_keepalive = Duration::from_secs(1));
    let e = net.endpoint_with(key(), &["g"], |c| {
        c.keepalive = Duration::from_secs(40 * 24 * 3600);
        c.dead_after = Duration::from_secs(80 * 24 * 3600);
    });
    net.drive();
    let conn = net.eps[e].conn.unwrap();
    // It answers the relay's pings: still connected after a minute.
    for _ in 0..60 {
        net.now = net.now + Duration::from_secs(1);
        net.relay.handle_timeout(net.now);
        net.drive();
    }
    assert_eq!(net.eps[e].conn, Some(conn));
    // It stops answering: closed as idle within the capped window.
    let mut closed = None;
    for second in 1..=5 {
        net.now = net.now + Duration::from_secs(1);
        net.relay.handle_timeout(net.now);
        while let Some(ev) = net.relay.poll_event() {
            if let RelayEvent::Closing { code, .. } = ev {
                closed = Some((second, code));
            }
        }
        if closed.is_some() {
            break;
        }
    }
    assert_eq!(closed, Some((3, CloseCode::IdleTimeout)));
}

/// A request for the confirm of one publish (a receipt) asks nothing once that one is
/// confirmed, even while a later one waits for its confirm.
#[test]
fn a_request_up_to_a_confirmed_publish_asks_nothing() {
    let (mut net, _c, p) = member_and_sender();
    let s1 = net.broadcast(p, "g", b"x");
    net.drive();
    net.confirm_delay_passes();
    assert_eq!(net.confirms(p), [s1]);
    let s2 = net.broadcast(p, "g", b"y");
    net.drive();
    assert!(net.confirms(p).is_empty(), "deferred");
    let mut buf = [0u8; 64];
    net.eps[p].session.request_confirm_up_to(s1);
    assert_eq!(net.eps[p].session.poll_transmit(&mut buf).unwrap(), 0);
    net.eps[p].session.request_confirm_up_to(s2);
    net.drive();
    assert_eq!(net.confirms(p), [s2], "asked, and answered at once");
}
