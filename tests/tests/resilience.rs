//! When things go wrong: a relay restart (reconnect, rejoin, re-granted credit, resent
//! publishes), a lost confirmation (a recognised resend), slow consumers, and hostile bytes at
//! the relay (DESIGN.md §2, §4, §7).

use std::time::Duration;

use tlsro::{Event, Status, Wait};
use tlsro_proto::frame::{CloseCode, Frame, Notify};
use tlsro_tests::*;

#[tokio::test]
async fn relay_restart_on_the_same_port() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let subscriber = creds.connect::<String>(addr, &["news"]).await;
        let consumer = creds.connect::<String>(addr, &["jobs"]).await;
        let mut consumer_events = consumer.events();
        // The producers go through proxies, so that the test can hold them back until the
        // members are back: a broadcast reaches the members present when the relay handles it.
        let producer_proxy = Proxy::start(addr).await;
        let producer = creds.connect::<String>(producer_proxy.addr(), &[]).await;
        // Another producer: its last publish before the restart is sent but lost on the way,
        // so it is never confirmed.
        let proxy = Proxy::start(addr).await;
        let proxied = creds.connect::<String>(proxy.addr(), &[]).await;

        // Outstanding credit before the restart: 3 granted, 1 received.
        consumer.notify("jobs", 3).unwrap();
        sync(&consumer).await;
        producer
            .produce(&"before".to_owned(), "jobs")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&consumer, 1).await, ["before"]);

        proxy.hold_upstream(true);
        let in_flight = proxied.broadcast(&"in flight".to_owned(), "news").unwrap();

        // Broadcast numbers 1..=3 seen before the restart; the new relay numbers from 1 again.
        for i in 1..=3 {
            producer
                .broadcast(&format!("before {i}"), "news")
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        assert_eq!(
            expect_values(&subscriber, 3).await,
            ["before 1", "before 2", "before 3"]
        );

        producer_proxy.refuse(true);
        proxy.refuse(true);
        relay.stop().await;
        proxy.hold_upstream(false);
        next_event(&mut consumer_events, PROMPTLY, |e| match e {
            Event::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
        for endpoint in [&subscriber, &consumer, &producer, &proxied] {
            eventually("status Reconnecting", PROMPTLY, || {
                matches!(endpoint.status(), Status::Reconnecting { .. })
            })
            .await;
        }

        // Published while the relay is down: buffered, sent after the restart.
        let while_down_b = producer
            .broadcast(&"while down".to_owned(), "news")
            .unwrap();
        let while_down_p = producer
            .produce(&"job while down".to_owned(), "jobs")
            .unwrap();
        assert!(producer.buffered_bytes() > 0);

        // A new relay on the same port, same credentials.
        let relay = creds.relay_on(addr).start().await.unwrap();
        assert_eq!(relay.local_addr(), addr);
        for endpoint in [&subscriber, &consumer] {
            until_connected(endpoint, PROMPTLY).await;
        }
        producer_proxy.refuse(false);
        proxy.refuse(false);
        for endpoint in [&producer, &proxied] {
            until_connected(endpoint, PROMPTLY).await;
        }
        within("receipt", PROMPTLY, in_flight.wait()).await.unwrap();
        within("receipt", PROMPTLY, while_down_b.wait())
            .await
            .unwrap();
        within("receipt", PROMPTLY, while_down_p.wait())
            .await
            .unwrap();
        assert_eq!(producer.buffered_bytes(), 0);

        // Rejoined its group: gets the broadcasts sent while the relay was down (in the order
        // the new relay got them).
        let mut got = expect_values(&subscriber, 2).await;
        got.sort();
        assert_eq!(got, ["in flight", "while down"]);
        // Credit re-granted (2 left): the buffered job and one more, without a new notify.
        assert_eq!(expect_values(&consumer, 1).await, ["job while down"]);
        producer
            .produce(&"after".to_owned(), "jobs")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&consumer, 1).await, ["after"]);
        // And no more than that.
        producer
            .produce(&"one too many".to_owned(), "jobs")
            .unwrap()
            .wait()
            .await
            .unwrap();
        expect_nothing(&consumer).await;

        // The broadcast stream goes on after the restart (numbering restarted with the epoch).
        producer
            .broadcast(&"after restart".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&subscriber, 1).await, ["after restart"]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_relay_restart_loses_no_credit_while_a_consumer_is_between_connections() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;
        consumer.notify("jobs", 2).unwrap();
        sync(&consumer).await;
        relay.stop().await;
        // Credit granted while disconnected is sent after the reconnect too.
        eventually("disconnected", PROMPTLY, || {
            !matches!(consumer.status(), Status::Connected)
        })
        .await;
        consumer.notify("jobs", 1).unwrap();

        let relay = creds.relay_on(addr).start().await.unwrap();
        until_connected(&consumer, PROMPTLY).await;
        let producer = creds.connect::<u32>(addr, &[]).await;
        for i in 0..4 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&consumer, 3).await, [0, 1, 2]);
        expect_nothing(&consumer).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn unconfirmed_publishes_are_resent_once() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let proxy = Proxy::start(relay.local_addr()).await;
        let subscriber = creds.connect::<u32>(relay.local_addr(), &["news"]).await;
        let consumer = creds.connect::<u32>(relay.local_addr(), &["jobs"]).await;
        consumer.notify("jobs", 10).unwrap();
        sync(&consumer).await;
        let producer = creds.connect::<u32>(proxy.addr(), &[]).await;

        // Sent, but lost on the way: the relay never sees them before the connection dies.
        proxy.hold_upstream(true);
        let b = producer.broadcast(&1, "news").unwrap();
        let p = producer.produce(&2, "jobs").unwrap();
        expect_nothing(&subscriber).await;
        proxy.cut();
        proxy.hold_upstream(false);
        within("receipt", PROMPTLY, b.wait()).await.unwrap();
        within("receipt", PROMPTLY, p.wait()).await.unwrap();
        assert_eq!(expect_values(&subscriber, 1).await, [1]);
        assert_eq!(expect_values(&consumer, 1).await, [2]);

        // Handled by the relay, but the confirmation is lost: after the reconnect the relay's
        // Welcome says what it handled, and nothing is delivered twice.
        proxy.hold_downstream(true);
        let b = producer.broadcast(&3, "news").unwrap();
        let p = producer.produce(&4, "jobs").unwrap();
        assert_eq!(expect_values(&subscriber, 1).await, [3]);
        assert_eq!(expect_values(&consumer, 1).await, [4]);
        assert!(producer.buffered_bytes() > 0, "not confirmed yet");
        proxy.cut();
        proxy.hold_downstream(false);
        within("receipt", PROMPTLY, b.wait()).await.unwrap();
        within("receipt", PROMPTLY, p.wait()).await.unwrap();
        expect_nothing(&subscriber).await;
        expect_nothing(&consumer).await;
        assert_eq!(producer.buffered_bytes(), 0);
        relay.stop().await;
    })
    .await
}

/// A broadcast object of about 64 KiB whose first 8 characters are its number.
fn big_object(i: usize) -> String {
    format!("{i:08}{}", "x".repeat(64 * 1024))
}

fn number_of(object: &str) -> usize {
    object[..8].parse().expect("a numbered object")
}

#[tokio::test]
async fn a_member_that_stops_reading_is_disconnected_as_a_slow_consumer() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds
            .relay()
            .configure(|c| c.outbound_limit = 256 * 1024)
            .start()
            .await
            .unwrap();
        let addr = relay.local_addr();
        // Stops reading from the relay once 64 KiB wait in its local queue (nobody pops).
        let slow = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<String>(addr)
                .groups(["firehose"])
                .max_queued_bytes(64 * 1024)
                .connect(),
        )
        .await
        .unwrap();
        let mut slow_events = slow.events();
        let fast = creds.connect::<String>(addr, &["firehose"]).await;
        let sender = creds.connect::<String>(addr, &[]).await;

        // 400 × 64 KiB = 25 MiB: far more than the slow member's local queue, the kernel's
        // socket buffers and the relay's outbound limit together.
        const N: usize = 400;
        let receiving = tokio::spawn({
            let fast = fast.clone();
            async move { recv_n(&fast, N, Duration::from_secs(20)).await }
        });
        let sending = async {
            // One at a time: a member that keeps up is never more than one object behind.
            for i in 0..N {
                let receipt = sender.broadcast(&big_object(i), "firehose").unwrap();
                within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
            }
        };
        // When the slow member reads again, it gets what was on the way, learns why it was
        // disconnected, reconnects, and gets the retained (last) broadcast. It reads again as
        // soon as the relay has judged it slow: the relay gives a closing connection 2 s to take
        // its `Close` and then drops it, and on a loaded machine the rest of the sending loop
        // takes longer than that.
        let catching_up = async {
            let judged = within(
                "the relay judges the member slow",
                Duration::from_secs(20),
                async {
                    loop {
                        match relay.stats().await.slow_consumers {
                            0 => tokio::time::sleep(Duration::from_millis(10)).await,
                            n => return n,
                        }
                    }
                },
            )
            .await;
            assert_eq!(judged, 1, "one slow member, judged once");
            let mut numbers = Vec::new();
            within(
                "the slow member catches up",
                Duration::from_secs(20),
                async {
                    while numbers.last() != Some(&(N - 1)) {
                        let got = slow.pop(usize::MAX, Wait::Forever).await.unwrap();
                        numbers.extend(got.iter().map(|r| number_of(&r.value)));
                    }
                },
            )
            .await;
            numbers
        };
        let ((), numbers) = tokio::join!(sending, catching_up);
        let got = receiving.await.unwrap();
        assert_eq!(
            got.len(),
            N,
            "the fast member gets everything; {:?}",
            relay.stats().await
        );
        for (i, r) in got.iter().enumerate() {
            assert_eq!(number_of(&r.value), i, "in order");
        }
        // Judged once above; reconnected, it reads along with the rest of the loop, and on a
        // very loaded machine it may fall behind and be judged again.
        let stats = relay.stats().await;
        assert!(stats.slow_consumers >= 1, "{stats:?}");
        assert!(
            numbers.len() < N,
            "the slow member missed some: {}",
            numbers.len()
        );
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "in order, none twice: {numbers:?}"
        );
        let reason = next_event(&mut slow_events, PROMPTLY, |e| match e {
            Event::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        })
        .await;
        assert!(reason.contains("slow consumer"), "{reason}");
        until_connected(&slow, PROMPTLY).await;
        expect_nothing(&slow).await;
        relay.stop().await;
    })
    .await
}

/// The TCP states of the relay's side of connections from `peer` (Linux: /proc/net/tcp).
#[cfg(target_os = "linux")]
fn relay_side_states(relay: std::net::SocketAddr, peer: std::net::SocketAddr) -> Vec<String> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => unreachable!("the tests use IPv4"),
    };
    let (local, remote) = (hex(relay), hex(peer));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 3 && fields[1] == local && fields[2] == remote)
                .then(|| fields[3].to_owned())
        })
        .collect()
}

/// A peer that never reads must not keep its connection (and the relay's writer task) alive
/// after the relay decided it is a slow consumer.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_slow_consumer_that_never_reads_is_closed_by_the_relay() {
    bounded(async {
        let password = b"password".to_vec();
        let relay = plain_relay(&password)
            .configure(|c| c.outbound_limit = 256 * 1024)
            .start()
            .await
            .unwrap();
        let addr = relay.local_addr();
        let mut raw = Raw::connect(addr).await;
        let welcome = raw.handshake(&password, &["firehose"]).await;
        assert!(matches!(
            tlsro_proto::frame::decode(&welcome),
            Ok(Frame::Welcome(_))
        ));
        let peer = raw.tcp.local_addr().unwrap();
        const ESTABLISHED: &str = "01";
        assert_eq!(relay_side_states(addr, peer), [ESTABLISHED]);

        // The raw peer never reads again.
        let sender = within(
            "connect",
            PROMPTLY,
            plain_endpoint::<String>(addr, &password).connect(),
        )
        .await
        .unwrap();
        // One at a time, so that the relay's writes first fill the kernel's socket buffers and
        // only then the relay's own outbound queue.
        let mut sent = 0;
        while relay.stats().await.slow_consumers == 0 {
            assert!(
                sent < 1000,
                "no slow consumer detected after {sent} objects"
            );
            let receipt = sender.broadcast(&big_object(sent), "firehose").unwrap();
            within("receipt", PROMPTLY, receipt.wait()).await.unwrap();
            sent += 1;
        }
        eprintln!("slow consumer detected after {sent} objects");
        within("sender stops", PROMPTLY, sender.stop())
            .await
            .unwrap();
        // The relay closes its side (FIN or reset) within a bounded time, read or not.
        let closed = within("relay-side close", Duration::from_secs(3), async {
            loop {
                let states = relay_side_states(addr, peer);
                if states.iter().all(|s| s != ESTABLISHED) {
                    return states;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        eprintln!("relay side after the slow-consumer close: {closed:?}");
        drop(raw);
        relay.stop().await;
    })
    .await
}

/// Connects a raw socket to a plain relay, sends `bytes`, and returns how the relay ended it.
async fn relay_answer(addr: std::net::SocketAddr, bytes: &[u8]) -> RawEnd {
    let mut raw = Raw::connect(addr).await;
    raw.send(bytes).await;
    raw.until_closed(PROMPTLY).await
}

#[tokio::test]
async fn hostile_bytes_close_that_socket_only() {
    bounded(async {
        let password = b"password".to_vec();
        let relay = plain_relay(&password).start().await.unwrap();
        let addr = relay.local_addr();
        let a = within(
            "connect",
            PROMPTLY,
            plain_endpoint::<String>(addr, &password)
                .groups(["chat"])
                .connect(),
        )
        .await
        .unwrap();
        let b = within(
            "connect",
            PROMPTLY,
            plain_endpoint::<String>(addr, &password)
                .groups(["chat"])
                .connect(),
        )
        .await
        .unwrap();
        let mut a_events = a.events();
        let mut b_events = b.events();

        let protocol_violation = RawEnd::Close(CloseCode::ProtocolViolation.into());
        let too_large = RawEnd::Close(CloseCode::FrameTooLarge.into());
        // Garbage: read as a length prefix of about 1.2 GB.
        assert_eq!(
            relay_answer(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
            too_large
        );
        // An oversize length prefix before the handshake (the limit is 2,048 there).
        assert_eq!(
            relay_answer(addr, &[0x00, 0x01, 0x00, 0x00, 0x01]).await,
            too_large
        );
        assert_eq!(
            relay_answer(addr, &[0xff, 0xff, 0xff, 0xff]).await,
            too_large
        );
        // A zero length (a frame without its kind byte).
        assert_eq!(
            relay_answer(addr, &[0, 0, 0, 0, 0]).await,
            protocol_violation
        );
        // An unknown frame kind.
        assert_eq!(
            relay_answer(addr, &[0, 0, 0, 1, 0xee]).await,
            protocol_violation
        );
        // Frames before the handshake: Ping, Notify, Publish.
        assert_eq!(
            relay_answer(addr, &[0, 0, 0, 1, 0x06]).await,
            protocol_violation
        );
        let notify = Frame::Notify(Notify {
            group: "chat",
            credit: 3,
        })
        .to_vec();
        assert_eq!(relay_answer(addr, &notify).await, protocol_violation);
        assert_eq!(
            relay_answer(
                addr,
                &[0, 0, 0, 7, 0x10, 0x01, 0x00, 0x01, 0x04, b'c', b'h']
            )
            .await,
            protocol_violation
        );
        // A Hello with a malformed header.
        assert_eq!(
            relay_answer(addr, &[0, 0, 0, 3, 0x01, 0xff, 0xff]).await,
            protocol_violation
        );

        // After a good handshake: an Ack for a delivery never sent, a Notify for a group the
        // endpoint is not in, random bytes.
        for bad in [
            vec![0, 0, 0, 2, 0x12, 0x05],
            Frame::Notify(Notify {
                group: "other",
                credit: 1,
            })
            .to_vec(),
            vec![0, 0, 0, 4, 0x99, 1, 2, 3],
        ] {
            let mut raw = Raw::connect(addr).await;
            let welcome = raw.handshake(&password, &["chat"]).await;
            assert!(
                matches!(tlsro_proto::frame::decode(&welcome), Ok(Frame::Welcome(_))),
                "the raw handshake works"
            );
            raw.send(&bad).await;
            assert_eq!(
                raw.until_closed(PROMPTLY).await,
                protocol_violation,
                "{bad:?}"
            );
        }

        // The real endpoints were not disturbed.
        a.broadcast(&"still here".to_owned(), "chat")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&b, 1).await, ["still here"]);
        assert_eq!(expect_values(&a, 1).await, ["still here"]);
        assert!(never_disconnected(&mut a_events), "a was not disconnected");
        assert!(never_disconnected(&mut b_events), "b was not disconnected");
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_raw_client_with_the_wrong_password_gets_bad_password() {
    bounded(async {
        let relay = plain_relay(b"right").start().await.unwrap();
        let mut raw = Raw::connect(relay.local_addr()).await;
        let answer = raw.handshake(b"wrong", &[]).await;
        match tlsro_proto::frame::decode(&answer) {
            Ok(Frame::Close(close)) => assert_eq!(close.code, CloseCode::BadPassword),
            other => panic!("expected Close(BadPassword), got {other:?}"),
        }
        assert_eq!(raw.until_closed(PROMPTLY).await, RawEnd::Eof);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    bounded(async {
        let creds = Creds::generate();
        let deadline = Duration::from_millis(500);
        let plain = plain_relay(b"password")
            .configure(move |c| c.handshake_timeout = deadline)
            .start()
            .await
            .unwrap();
        let tls = creds
            .relay()
            .configure(move |c| c.handshake_timeout = deadline)
            .start()
            .await
            .unwrap();
        for addr in [plain.local_addr(), tls.local_addr()] {
            // Connects and says nothing at all (or only 2 bytes: not enough to sniff TLS).
            for opening in [&[][..], &[0u8, 0][..]] {
                let mut raw = Raw::connect(addr).await;
                raw.send(opening).await;
                let started = tokio::time::Instant::now();
                let end = raw.until_closed(Duration::from_secs(3)).await;
                let took = started.elapsed();
                assert!(
                    took < deadline * 4,
                    "{addr}: closed only after {took:?} ({end:?})"
                );
                if addr == plain.local_addr() {
                    assert_eq!(end, RawEnd::Close(CloseCode::AuthTimeout.into()));
                }
            }
        }
        plain.stop().await;
        tls.stop().await;
    })
    .await
}

#[tokio::test]
async fn keepalive_keeps_quiet_and_receive_only_connections_open() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let keepalive = Duration::from_millis(250);
        let connect = |groups: &'static [&'static str]| {
            creds
                .endpoint::<u32>(addr)
                .groups(groups.iter().copied())
                .keepalive(keepalive)
                .connect()
        };
        // One endpoint that only receives broadcasts, one that does nothing at all.
        let listener = within("connect", PROMPTLY, connect(&["ticks"]))
            .await
            .unwrap();
        let idle = within("connect", PROMPTLY, connect(&[])).await.unwrap();
        let mut listener_events = listener.events();
        let mut idle_events = idle.events();
        let sender = creds.connect::<u32>(addr, &[]).await;

        // Six keepalive intervals: three silent intervals would close either of them.
        for i in 0..12 {
            sender.broadcast(&i, "ticks").unwrap().wait().await.unwrap();
            tokio::time::sleep(keepalive / 2).await;
        }
        assert_eq!(
            expect_values(&listener, 12).await,
            (0..12).collect::<Vec<_>>()
        );
        for events in [&mut listener_events, &mut idle_events] {
            if let Ok(event) = events.try_recv() {
                panic!("unexpected event {event:?}");
            }
        }
        assert!(matches!(idle.status(), Status::Connected));
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_relay_that_goes_silent_is_detected_and_replaced() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let proxy = Proxy::start(relay.local_addr()).await;
        let keepalive = Duration::from_millis(100);
        let member = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<u32>(proxy.addr())
                .groups(["news"])
                .keepalive(keepalive)
                .connect(),
        )
        .await
        .unwrap();
        let mut events = member.events();
        let sender = creds.connect::<u32>(relay.local_addr(), &[]).await;

        // The relay's side goes silent (a dead link, no FIN): after 3 keepalive intervals the
        // endpoint gives up on this connection by itself and connects again.
        proxy.hold_downstream(true);
        let reason = next_event(&mut events, PROMPTLY, |e| match e {
            Event::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
        eprintln!("disconnected: {reason}");
        proxy.cut();
        proxy.hold_downstream(false);
        until_connected(&member, PROMPTLY).await;
        sender.broadcast(&7, "news").unwrap().wait().await.unwrap();
        assert_eq!(expect_values(&member, 1).await, [7]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_dead_link_to_a_full_group_reconnects_in_place_of_itself() {
    bounded(async {
        let creds = Creds::generate();
        let limits = tlsro_relay::GroupLimits {
            max_members: Some(1),
            ..Default::default()
        };
        // The relay notices silence late (30 intervals); the endpoint early (3 intervals).
        let relay = creds
            .relay()
            .group("solo", limits)
            .configure(|c| c.idle_intervals = 30)
            .start()
            .await
            .unwrap();
        let proxy = Proxy::start(relay.local_addr()).await;
        let member = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<u32>(proxy.addr())
                .groups(["solo"])
                .keepalive(Duration::from_millis(300))
                .connect(),
        )
        .await
        .unwrap();
        let mut events = member.events();

        // A pulled cable: the relay still believes in the old connection when the endpoint
        // comes back. The same session must take its own place, not find the group full.
        proxy.stall();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
        let outcome = next_event(&mut events, PROMPTLY, |e| match e {
            Event::Connected => Some(Ok(())),
            Event::Stopped => Some(Err(member.status())),
            _ => None,
        })
        .await;
        assert!(outcome.is_ok(), "the endpoint gave up: {outcome:?}");
        let sender = creds.connect::<u32>(relay.local_addr(), &[]).await;
        sender.broadcast(&1, "solo").unwrap().wait().await.unwrap();
        assert_eq!(expect_values(&member, 1).await, [1]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn stop_while_the_relay_is_down_is_bounded() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let idle = creds.connect::<u32>(addr, &[]).await;
        let busy = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<u32>(addr)
                .stop_timeout(Duration::from_millis(300))
                .connect(),
        )
        .await
        .unwrap();
        relay.stop().await;
        eventually("disconnected", PROMPTLY, || {
            matches!(busy.status(), Status::Reconnecting { .. })
        })
        .await;
        // Nothing to deliver: stop returns at once.
        within("stop", Duration::from_secs(1), idle.stop())
            .await
            .unwrap();
        // Something unconfirmed: stop gives up at its timeout and says so, and so does the receipt.
        let receipt = busy.produce(&1, "jobs").unwrap();
        let started = tokio::time::Instant::now();
        let result = within("stop", PROMPTLY, busy.stop()).await;
        assert!(matches!(result, Err(tlsro::Error::Timeout)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(
            receipt.wait().await,
            Err(tlsro::PublishError::Unconfirmed(_))
        ));
        assert!(matches!(busy.status(), Status::Stopped | Status::Failed(_)));
    })
    .await
}

#[tokio::test]
async fn a_reconnect_to_a_relay_with_another_password_stops_the_endpoint() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let endpoint = creds.connect::<u32>(addr, &["news"]).await;
        let mut events = endpoint.events();
        relay.stop().await;
        let relay = tlsro_relay::Relay::builder(b"another password".to_vec())
            .listen(addr)
            .tls_from_dir(&creds.dir)
            .unwrap()
            .start()
            .await
            .unwrap();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Stopped).then_some(())
        })
        .await;
        assert!(
            matches!(
                endpoint.status(),
                Status::Failed(tlsro::Error::WrongPassword)
            ),
            "{:?}",
            endpoint.status()
        );
        assert!(matches!(
            endpoint.pop(1, Wait::No).await,
            Err(tlsro::Error::WrongPassword)
        ));
        assert!(matches!(
            endpoint.broadcast(&1, "news"),
            Err(tlsro::Error::WrongPassword)
        ));
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_reconnect_to_a_relay_with_another_certificate_stops_the_endpoint() {
    bounded(async {
        let creds = Creds::generate();
        let impostor = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let endpoint = creds.connect::<u32>(addr, &["news"]).await;
        let mut events = endpoint.events();
        relay.stop().await;
        // Same password, a certificate from another CA.
        let relay = tlsro_relay::Relay::builder(creds.password.clone())
            .listen(addr)
            .tls_from_dir(&impostor.dir)
            .unwrap()
            .start()
            .await
            .unwrap();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Stopped).then_some(())
        })
        .await;
        assert!(
            matches!(
                endpoint.status(),
                Status::Failed(tlsro::Error::CertificateRejected(_))
            ),
            "{:?}",
            endpoint.status()
        );
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_dead_link_is_taken_over_by_the_reconnect_and_nothing_is_lost() {
    bounded(async {
        let creds = Creds::generate();
        // The relay notices silence late (30 intervals): the reconnect arrives first and
        // replaces the old connection of the same session.
        let relay = creds
            .relay()
            .configure(|c| c.idle_intervals = 30)
            .start()
            .await
            .unwrap();
        let proxy = Proxy::start(relay.local_addr()).await;
        let producer = creds.connect::<u32>(relay.local_addr(), &[]).await;
        let consumer = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<u32>(proxy.addr())
                .groups(["jobs"])
                .keepalive(Duration::from_millis(300))
                .connect(),
        )
        .await
        .unwrap();
        let mut events = consumer.events();
        consumer.notify("jobs", 3).unwrap();
        sync(&consumer).await;
        producer.produce(&1, "jobs").unwrap().wait().await.unwrap();
        eventually("delivered", PROMPTLY, || consumer.queued_bytes() == 1).await;

        // The cable is pulled with object 1 delivered but not handed over.
        proxy.stall();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Connected).then_some(())
        })
        .await;
        // The takeover closed the old connection: object 1 comes again, once, and the credit
        // (3 granted, object 1 not handed over) still covers two more.
        assert_eq!(expect_values(&consumer, 1).await, [1]);
        for i in 2..5 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&consumer, 2).await, [2, 3]);
        expect_nothing(&consumer).await;
        assert_eq!(relay.stats().await.redelivered, 1);
        relay.stop().await;
    })
    .await
}

/// A relay restarted with a lower object limit: a kept publish that no longer fits its
/// `max_frame` is not resent (the relay would close the connection on its length prefix, at
/// every reconnect, and nothing behind it would ever be confirmed). Its receipt says why; the
/// publish behind it goes through.
#[tokio::test]
async fn a_kept_publish_too_large_for_the_restarted_relay_does_not_block_the_rest() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let proxy = Proxy::start(addr).await;
        let producer = creds.connect::<String>(proxy.addr(), &[]).await;
        // Sent but held on the way: never handled by this relay.
        proxy.hold_upstream(true);
        let big = producer.broadcast(&"x".repeat(8000), "news").unwrap();
        let small = producer.broadcast(&"small".to_owned(), "news").unwrap();
        proxy.refuse(true);
        relay.stop().await;
        proxy.hold_upstream(false);

        let relay = creds
            .relay_on(addr)
            .configure(|c| c.max_frame = 4096)
            .start()
            .await
            .unwrap();
        proxy.refuse(false);
        match within("big receipt", PROMPTLY, big.wait()).await {
            Err(tlsro::PublishError::Unconfirmed(tlsro::Error::FrameTooLarge {
                max: 4096,
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        within("small receipt", PROMPTLY, small.wait())
            .await
            .unwrap();
        assert_eq!(producer.buffered_bytes(), 0);
        let subscriber = creds.connect::<String>(addr, &["news"]).await;
        assert_eq!(expect_values(&subscriber, 1).await, ["small"]);
        relay.stop().await;
    })
    .await
}
