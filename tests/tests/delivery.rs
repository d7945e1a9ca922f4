//! The delivery rules of DESIGN.md §1 and §4 over real TLS against the in-process relay:
//! broadcast (retained value on join and on reconnect, no double hand-over), produce (FIFO,
//! credit accumulation, negative credit, fairness, redelivery of what a killed consumer had not
//! handed over), several groups at once, both overflow policies, the endpoint's stated maximum
//! frame, and a flushing stop().

use std::time::Duration;

use tlsro::{Event, PublishError, ReceivedKind, RejectReason, Rejection, Wait};
use tlsro_relay::{GroupLimits, Overflow};
use tlsro_tests::*;

#[tokio::test]
async fn broadcast_reaches_every_member_the_sender_too() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let a = creds.connect::<String>(addr, &["news"]).await;
        let b = creds.connect::<String>(addr, &["news"]).await;
        let outsider = creds.connect::<String>(addr, &["other"]).await;

        // The sender is a member: it gets its own broadcast too. Sending needs no membership.
        a.broadcast(&"from a".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        outsider
            .broadcast(&"from outsider".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        for member in [&a, &b] {
            let got = recv_n(member, 2, PROMPTLY).await;
            assert_eq!(
                got.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
                ["from a", "from outsider"]
            );
            assert!(
                got.iter()
                    .all(|r| r.group == "news" && r.kind == ReceivedKind::Broadcast)
            );
        }
        expect_nothing(&outsider).await;

        // Nothing is coalesced: a burst arrives whole and in order.
        for i in 0..50 {
            a.broadcast(&format!("burst {i}"), "news").unwrap();
        }
        let want: Vec<String> = (0..50).map(|i| format!("burst {i}")).collect();
        assert_eq!(expect_values(&b, 50).await, want);
        assert_eq!(expect_values(&a, 50).await, want);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn retained_broadcast_on_join() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &[]).await;
        for v in ["v1", "v2", "v3"] {
            sender
                .broadcast(&v.to_owned(), "news")
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        // A member that joins later gets the last broadcast only, once.
        let late = creds.connect::<String>(addr, &["news"]).await;
        assert_eq!(expect_values(&late, 1).await, ["v3"]);
        expect_nothing(&late).await;
        // And then the stream.
        sender
            .broadcast(&"v4".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&late, 1).await, ["v4"]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn retained_broadcast_on_reconnect_is_not_handed_over_twice() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let proxy = Proxy::start(relay.local_addr()).await;
        let sender = creds.connect::<String>(relay.local_addr(), &[]).await;
        let member = creds.connect::<String>(proxy.addr(), &["news"]).await;
        let mut events = member.events();

        sender
            .broadcast(&"v1".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&member, 1).await, ["v1"]);

        // The connection dies; on reconnect the relay sends the retained v1 again, and the
        // endpoint recognises it by its sequence number.
        proxy.cut();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Connected).then_some(())
        })
        .await;
        expect_nothing(&member).await;

        // While it is away, two broadcasts: on reconnect it gets the retained (last) one.
        proxy.refuse(true);
        proxy.cut();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
        for v in ["v2", "v3"] {
            sender
                .broadcast(&v.to_owned(), "news")
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        proxy.refuse(false);
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Connected).then_some(())
        })
        .await;
        assert_eq!(expect_values(&member, 1).await, ["v3"]);
        expect_nothing(&member).await;

        // The stream goes on, each broadcast once.
        sender
            .broadcast(&"v4".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&member, 1).await, ["v4"]);
        expect_nothing(&member).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn produce_is_fifo_and_exactly_one_member_gets_each_object() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let c1 = creds.connect::<u32>(addr, &["jobs"]).await;
        let c2 = creds.connect::<u32>(addr, &["jobs"]).await;

        let mut receipts = Vec::new();
        for i in 0..20 {
            receipts.push(producer.produce(&i, "jobs").unwrap());
        }
        for r in receipts {
            r.wait().await.unwrap();
        }
        c1.notify("jobs", 20).unwrap();
        let got = recv_n(&c1, 20, PROMPTLY).await;
        assert!(
            got.iter()
                .all(|r| r.kind == ReceivedKind::Produced && r.group == "jobs")
        );
        assert_eq!(values(got), (0..20).collect::<Vec<_>>());
        // Nobody else got any of them.
        expect_nothing(&c2).await;

        // Interleaved: credit first, objects later, still in order.
        c2.notify("jobs", 5).unwrap();
        sync(&c2).await;
        for i in 100..105 {
            producer.produce(&i, "jobs").unwrap();
        }
        assert_eq!(expect_values(&c2, 5).await, (100..105).collect::<Vec<_>>());
        expect_nothing(&c1).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn credit_accumulates_and_waits_for_later_objects() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;

        // notify 2 then 1: three objects, produced after the credit was granted.
        consumer.notify("jobs", 2).unwrap();
        consumer.notify("jobs", 1).unwrap();
        sync(&consumer).await;
        for i in 0..5 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&consumer, 3).await, [0, 1, 2]);
        expect_nothing(&consumer).await;

        // The other two wait in the queue for the next credit.
        consumer.notify("jobs", 1).unwrap();
        assert_eq!(expect_values(&consumer, 1).await, [3]);
        consumer.notify("jobs", 1).unwrap();
        assert_eq!(expect_values(&consumer, 1).await, [4]);
        expect_nothing(&consumer).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn negative_credit_takes_everything_queued_now_and_nothing_later() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;

        for i in 0..7 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        consumer.notify("jobs", -1).unwrap();
        assert_eq!(
            expect_values(&consumer, 7).await,
            (0..7).collect::<Vec<_>>()
        );

        // No standing credit: a later object stays queued.
        producer.produce(&7, "jobs").unwrap().wait().await.unwrap();
        expect_nothing(&consumer).await;
        consumer.notify("jobs", 1).unwrap();
        assert_eq!(expect_values(&consumer, 1).await, [7]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn credit_is_served_in_the_order_it_was_granted() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        // Joined in the order a, b, c; credit granted in the order c, a, b.
        let a = creds.connect::<u32>(addr, &["jobs"]).await;
        let b = creds.connect::<u32>(addr, &["jobs"]).await;
        let c = creds.connect::<u32>(addr, &["jobs"]).await;
        for consumer in [&c, &a, &b] {
            consumer.notify("jobs", 1).unwrap();
            sync(consumer).await;
        }
        for i in 0..3 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&c, 1).await, [0]);
        assert_eq!(expect_values(&a, 1).await, [1]);
        assert_eq!(expect_values(&b, 1).await, [2]);

        // A larger grant does not jump the line: b(2) then a(1) → b, b, a.
        b.notify("jobs", 2).unwrap();
        sync(&b).await;
        a.notify("jobs", 1).unwrap();
        sync(&a).await;
        for i in 3..6 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&b, 2).await, [3, 4]);
        assert_eq!(expect_values(&a, 1).await, [5]);
        expect_nothing(&c).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn an_object_a_killed_consumer_did_not_hand_over_goes_to_another() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<String>(addr, &[]).await;
        let doomed = creds.connect::<String>(addr, &["jobs"]).await;
        let survivor = creds.connect::<String>(addr, &["jobs"]).await;

        doomed.notify("jobs", 2).unwrap();
        sync(&doomed).await;
        for job in ["job 1", "job 2", "job 3"] {
            producer
                .produce(&job.to_owned(), "jobs")
                .unwrap()
                .wait()
                .await
                .unwrap();
        }
        // Delivered to `doomed` (in its local queue), not handed over, not acknowledged.
        eventually("delivered to the doomed consumer", PROMPTLY, || {
            doomed.queued_bytes() >= 2 * postcard_len("job 1")
        })
        .await;
        // Killed: dropping the last handle aborts its task and its socket, no graceful stop.
        drop(doomed);
        // Once the relay has noticed, the two go back to the front of the queue.
        within("requeued", PROMPTLY, async {
            while relay.stats().await.redelivered < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;

        survivor.notify("jobs", 3).unwrap();
        // Redelivered first in line, in their original order, then the rest.
        assert_eq!(
            expect_values(&survivor, 3).await,
            ["job 1", "job 2", "job 3"]
        );
        expect_nothing(&survivor).await;
        assert_eq!(relay.stats().await.redelivered, 2);
        relay.stop().await;
    })
    .await
}

/// The size of a postcard-encoded string.
fn postcard_len(s: &str) -> usize {
    s.len() + 1
}

#[tokio::test]
async fn handed_over_objects_are_not_redelivered() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let first = creds.connect::<u32>(addr, &["jobs"]).await;
        let second = creds.connect::<u32>(addr, &["jobs"]).await;

        first.notify("jobs", 3).unwrap();
        sync(&first).await;
        for i in 0..3 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        // Two handed over (popped), the third still in the local queue.
        assert_eq!(expect_values(&first, 2).await, [0, 1]);
        eventually("third delivered", PROMPTLY, || first.queued_bytes() > 0).await;
        // Make sure the acknowledgement of the first two reached the relay, then kill it.
        sync(&first).await;
        drop(first);

        second.notify("jobs", 5).unwrap();
        assert_eq!(expect_values(&second, 1).await, [2]);
        expect_nothing(&second).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn several_groups_in_one_call() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &[]).await;
        let a = creds.connect::<String>(addr, &["a"]).await;
        let b = creds.connect::<String>(addr, &["b"]).await;
        let ab = creds.connect::<String>(addr, &["a", "b"]).await;

        sender
            .broadcast_to(&"to both".to_owned(), &["a", "b"])
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&a, 1).await, ["to both"]);
        assert_eq!(expect_values(&b, 1).await, ["to both"]);
        // A member of both groups gets it once per group.
        let got = recv_n(&ab, 2, PROMPTLY).await;
        let mut groups: Vec<_> = got.iter().map(|r| r.group.as_str()).collect();
        groups.sort();
        assert_eq!(groups, ["a", "b"]);

        // produce_to: each group's queue gets the object; notify_many covers both groups.
        sender
            .produce_to(&"job".to_owned(), &["a", "b"])
            .unwrap()
            .wait()
            .await
            .unwrap();
        ab.notify_many(&[("a", 1), ("b", 1)]).unwrap();
        let got = recv_n(&ab, 2, PROMPTLY).await;
        assert!(
            got.iter()
                .all(|r| r.kind == ReceivedKind::Produced && r.value == "job")
        );
        let mut groups: Vec<_> = got.iter().map(|r| r.group.as_str()).collect();
        groups.sort();
        assert_eq!(groups, ["a", "b"]);
        // notify is for members only.
        assert!(matches!(a.notify("b", 1), Err(tlsro::Error::NotMember(g)) if g == "b"));
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn overflow_reject_tells_the_producer() {
    bounded(async {
        let creds = Creds::generate();
        let limits = GroupLimits {
            max_members: None,
            max_queue: 2,
            overflow: Overflow::Reject,
        };
        let relay = creds.relay().group("jobs", limits).start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;
        let mut events = producer.events();

        producer.produce(&1, "jobs").unwrap().wait().await.unwrap();
        producer.produce(&2, "jobs").unwrap().wait().await.unwrap();
        let receipt = producer.produce(&3, "jobs").unwrap();
        let seq = receipt.seq();
        match receipt.wait().await {
            Err(PublishError::Rejected(rejections)) => assert_eq!(
                rejections,
                [Rejection {
                    group: "jobs".to_owned(),
                    reason: RejectReason::QueueFull
                }]
            ),
            other => panic!("expected a QueueFull rejection, got {other:?}"),
        }
        let (event_seq, group, reason) = next_event(&mut events, PROMPTLY, |e| match e {
            Event::Rejected { seq, group, reason } => Some((*seq, group.clone(), *reason)),
            _ => None,
        })
        .await;
        assert_eq!(
            (event_seq, group.as_str(), reason),
            (seq, "jobs", RejectReason::QueueFull)
        );

        // The queue kept the first two, and the connection keeps working.
        consumer.notify("jobs", -1).unwrap();
        assert_eq!(expect_values(&consumer, 2).await, [1, 2]);
        producer.produce(&4, "jobs").unwrap().wait().await.unwrap();
        consumer.notify("jobs", 1).unwrap();
        assert_eq!(expect_values(&consumer, 1).await, [4]);
        assert_eq!(relay.stats().await.rejected, 1);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn overflow_drop_oldest_counts_and_keeps_the_newest() {
    bounded(async {
        let creds = Creds::generate();
        let limits = GroupLimits {
            max_members: None,
            max_queue: 2,
            overflow: Overflow::DropOldest,
        };
        let relay = creds.relay().group("jobs", limits).start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;
        for i in 1..=5 {
            // Every publish is accepted under drop-oldest.
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(relay.stats().await.dropped_oldest, 3);
        consumer.notify("jobs", -1).unwrap();
        assert_eq!(expect_values(&consumer, 2).await, [4, 5]);
        expect_nothing(&consumer).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_broadcast_too_large_for_a_member_is_skipped_for_it_only() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &[]).await;
        let small = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<String>(addr)
                .groups(["news"])
                .max_frame(2048)
                .connect(),
        )
        .await
        .unwrap();
        let big = creds.connect::<String>(addr, &["news"]).await;
        let mut events = small.events();

        let large = "x".repeat(4096);
        sender
            .broadcast(&large, "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&big, 1).await, std::slice::from_ref(&large));
        let (group, size) = next_event(&mut events, PROMPTLY, |e| match e {
            Event::Skipped { group, size, .. } => Some((group.clone(), *size)),
            _ => None,
        })
        .await;
        assert_eq!(group, "news");
        assert!(size > 2048, "skipped size {size}");
        expect_nothing(&small).await;

        // The small member is still connected and gets what fits.
        sender
            .broadcast(&"small".to_owned(), "news")
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(expect_values(&small, 1).await, ["small"]);
        assert_eq!(expect_values(&big, 1).await, ["small"]);
        assert_eq!(relay.stats().await.skipped, 1);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_produced_object_too_large_for_a_consumer_waits_for_one_that_can_take_it() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<String>(addr, &[]).await;
        let small = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<String>(addr)
                .groups(["jobs"])
                .max_frame(2048)
                .connect(),
        )
        .await
        .unwrap();
        let big = creds.connect::<String>(addr, &["jobs"]).await;

        let large = "x".repeat(4096);
        producer
            .produce(&large, "jobs")
            .unwrap()
            .wait()
            .await
            .unwrap();
        producer
            .produce(&"small".to_owned(), "jobs")
            .unwrap()
            .wait()
            .await
            .unwrap();
        small.notify("jobs", 2).unwrap();
        // The small object goes ahead; the large one waits.
        assert_eq!(expect_values(&small, 1).await, ["small"]);
        expect_nothing(&small).await;
        big.notify("jobs", 1).unwrap();
        assert_eq!(expect_values(&big, 1).await, [large]);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn stop_flushes_what_was_published_right_before() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let subscriber = creds.connect::<u32>(addr, &["news"]).await;
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;
        consumer.notify("jobs", 100).unwrap();
        sync(&consumer).await;

        let producer = creds.connect::<u32>(addr, &[]).await;
        let mut receipts = Vec::new();
        for i in 0..100 {
            receipts.push(producer.broadcast(&i, "news").unwrap());
            receipts.push(producer.produce(&i, "jobs").unwrap());
        }
        within("stop", PROMPTLY, producer.stop()).await.unwrap();
        for r in receipts {
            r.wait().await.expect("confirmed before stop returned");
        }
        assert!(matches!(
            producer.produce(&0, "jobs"),
            Err(tlsro::Error::Stopped)
        ));

        assert_eq!(
            expect_values(&subscriber, 100).await,
            (0..100).collect::<Vec<_>>()
        );
        assert_eq!(
            expect_values(&consumer, 100).await,
            (0..100).collect::<Vec<_>>()
        );

        // A consumer that stops hands back what it did not take: it goes to the next one.
        let other = creds.connect::<u32>(addr, &["jobs"]).await;
        consumer.notify("jobs", 1).unwrap();
        sync(&consumer).await;
        producer_again(&creds, addr).await;
        eventually("delivered", PROMPTLY, || consumer.queued_bytes() > 0).await;
        within("stop", PROMPTLY, consumer.stop()).await.unwrap();
        other.notify("jobs", 1).unwrap();
        assert_eq!(expect_values(&other, 1).await, [1000]);
        assert!(consumer.pop(1, Wait::No).await.is_err());
        relay.stop().await;
    })
    .await
}

/// Produces 1000 to "jobs" from a fresh endpoint and stops it.
async fn producer_again(creds: &Creds, addr: std::net::SocketAddr) {
    let producer = creds.connect::<u32>(addr, &[]).await;
    producer.produce(&1000, "jobs").unwrap();
    within("stop", PROMPTLY, producer.stop()).await.unwrap();
}

#[tokio::test]
async fn get_last_and_receive_all() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<u32>(addr, &[]).await;
        let member = creds.connect::<u32>(addr, &["news"]).await;
        for i in 0..10 {
            sender.broadcast(&i, "news").unwrap().wait().await.unwrap();
        }
        sync(&sender).await;
        eventually("all ten arrived", PROMPTLY, || member.queued_bytes() >= 10).await;
        let last = member.get_last(3, Wait::No).await.unwrap();
        assert_eq!(values(last), [7, 8, 9]);
        assert!(member.receive_all(Wait::No).await.unwrap().is_empty());
        assert!(
            member
                .receive_all(Wait::Timeout(Duration::from_millis(50)))
                .await
                .unwrap()
                .is_empty()
        );
        for i in 10..13 {
            sender.broadcast(&i, "news").unwrap().wait().await.unwrap();
        }
        eventually("three more arrived", PROMPTLY, || {
            member.queued_bytes() >= 3
        })
        .await;
        assert_eq!(
            values(member.receive_all(Wait::Forever).await.unwrap()),
            [10, 11, 12]
        );
        relay.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_api_round_trip() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr().to_string();
        let security = creds.security();
        let password = creds.password.clone();
        // A synchronous robot loop, as in tlspyo.
        let result = tokio::task::spawn_blocking(move || {
            let connect = |groups: &[&str]| {
                quick(tlsro::blocking::Endpoint::<String>::builder(
                    addr.clone(),
                    password.clone(),
                ))
                .security(security.clone())
                .groups(groups.iter().copied())
                .connect_blocking()
                .expect("connect_blocking")
            };
            let robot = connect(&["robots"]);
            let controller = connect(&[]);
            controller
                .broadcast(&"go".to_owned(), "robots")
                .unwrap()
                .wait_blocking()
                .unwrap();
            controller
                .produce(&"task".to_owned(), "robots")
                .unwrap()
                .wait_blocking()
                .unwrap();
            robot.notify("robots", 1).unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                let items = robot.pop(2, Wait::Timeout(PROMPTLY)).unwrap();
                assert!(!items.is_empty(), "nothing within {PROMPTLY:?}");
                got.extend(items.into_iter().map(|r| (r.kind, r.value)));
            }
            robot.stop().unwrap();
            controller.stop().unwrap();
            got
        })
        .await
        .unwrap();
        assert_eq!(
            result,
            [
                (ReceivedKind::Broadcast, "go".to_owned()),
                (ReceivedKind::Produced, "task".to_owned())
            ]
        );
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_lost_connection_gives_back_what_was_not_handed_over_and_keeps_the_credit() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let proxy = Proxy::start(relay.local_addr()).await;
        let producer = creds.connect::<u32>(relay.local_addr(), &[]).await;
        let consumer = creds.connect::<u32>(proxy.addr(), &["jobs"]).await;
        let mut events = consumer.events();

        consumer.notify("jobs", 5).unwrap();
        sync(&consumer).await;
        for i in 0..3 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        // 0 handed over; 1 and 2 delivered but still in the local queue.
        assert_eq!(expect_values(&consumer, 1).await, [0]);
        eventually("1 and 2 delivered", PROMPTLY, || {
            consumer.queued_bytes() == 2
        })
        .await;
        sync(&consumer).await;

        proxy.cut();
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
        // What was not handed over is not the endpoint's any more: never handed over now.
        assert!(consumer.pop(10, Wait::No).await.unwrap().is_empty());
        next_event(&mut events, PROMPTLY, |e| {
            matches!(e, Event::Connected).then_some(())
        })
        .await;

        // The relay requeued 1 and 2; the endpoint re-granted 2 (them) + 2 (still outstanding).
        assert_eq!(expect_values(&consumer, 2).await, [1, 2]);
        for i in 3..6 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&consumer, 2).await, [3, 4]);
        expect_nothing(&consumer).await;
        assert_eq!(relay.stats().await.redelivered, 2);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn objects_get_last_discards_count_as_handed_over() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let first = creds.connect::<u32>(addr, &["jobs"]).await;
        let second = creds.connect::<u32>(addr, &["jobs"]).await;
        first.notify("jobs", 3).unwrap();
        sync(&first).await;
        for i in 0..3 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        eventually("three delivered", PROMPTLY, || first.queued_bytes() == 3).await;
        assert_eq!(values(first.get_last(1, Wait::No).await.unwrap()), [2]);
        sync(&first).await;
        drop(first);

        second.notify("jobs", 3).unwrap();
        expect_nothing(&second).await;
        assert_eq!(relay.stats().await.redelivered, 0);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_retained_broadcast_too_large_for_a_joining_member_is_reported_as_skipped() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &[]).await;
        let large = "x".repeat(4096);
        sender
            .broadcast(&large, "news")
            .unwrap()
            .wait()
            .await
            .unwrap();

        let small = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<String>(addr)
                .groups(["news"])
                .max_frame(2048)
                .connect(),
        )
        .await
        .unwrap();
        // The relay sends the notice right after Welcome; subscribing right after connect
        // returns is the earliest the API allows.
        let mut events = small.events();
        within("counted", PROMPTLY, async {
            while relay.stats().await.skipped == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let skipped = tokio::time::timeout(
            Duration::from_secs(1),
            next_event(&mut events, PROMPTLY, |e| match e {
                Event::Skipped { group, .. } => Some(group.clone()),
                _ => None,
            }),
        )
        .await;
        assert_eq!(
            skipped.ok().as_deref(),
            Some("news"),
            "the Skipped notice for the retained value on join never reached the application"
        );
        expect_nothing(&small).await;
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn stop_acknowledges_what_was_handed_over() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let producer = creds.connect::<u32>(addr, &[]).await;
        let consumer = creds.connect::<u32>(addr, &["jobs"]).await;
        let next = creds.connect::<u32>(addr, &["jobs"]).await;
        consumer.notify("jobs", 3).unwrap();
        sync(&consumer).await;
        for i in 0..3 {
            producer.produce(&i, "jobs").unwrap().wait().await.unwrap();
        }
        assert_eq!(expect_values(&consumer, 3).await, [0, 1, 2]);
        // Straight after taking them: the acknowledgement still owed goes out before Close.
        within("stop", PROMPTLY, consumer.stop()).await.unwrap();
        next.notify("jobs", 3).unwrap();
        expect_nothing(&next).await;
        assert_eq!(relay.stats().await.redelivered, 0);
        relay.stop().await;
    })
    .await
}

#[tokio::test]
async fn large_objects() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &[]).await;
        let a = creds.connect::<String>(addr, &["big"]).await;
        let b = creds.connect::<String>(addr, &["big"]).await;
        let large = "0123456789abcdef".repeat(512 * 1024); // 8 MiB
        sender
            .broadcast(&large, "big")
            .unwrap()
            .wait()
            .await
            .unwrap();
        sender.produce(&large, "big").unwrap().wait().await.unwrap();
        b.notify("big", 1).unwrap();
        let got_a = recv_n(&a, 1, PROMPTLY).await;
        let got_b = recv_n(&b, 2, PROMPTLY).await;
        assert_eq!(got_a.len(), 1);
        assert_eq!(got_b.len(), 2);
        assert!(got_a.iter().chain(&got_b).all(|r| r.value == large));
        relay.stop().await;
    })
    .await
}

/// Large objects (gathered by the relay read by read and shared without a copy, queued by the
/// endpoint in the buffer they arrived in) mixed with small ones: every member gets every
/// object whole and in order, the produced ones too, and a late joiner the last one retained.
#[tokio::test]
async fn large_and_small_objects_mixed_keep_order_and_content() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let sender = creds.connect::<String>(addr, &[]).await;
        let a = creds.connect::<String>(addr, &["mix"]).await;
        let b = creds.connect::<String>(addr, &["mix"]).await;
        let sizes = [10, 700_000, 3, 300_000, 20, 1_000_000, 5, 400_000];
        let objects: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut s = format!("{i}:");
                s.extend(std::iter::repeat_n(char::from(b'a' + i as u8), n));
                s
            })
            .collect();
        let mut receipts = Vec::new();
        for o in &objects {
            receipts.push(sender.broadcast(o, "mix").unwrap());
        }
        for o in &objects {
            receipts.push(sender.produce(o, "mix").unwrap());
        }
        for r in receipts {
            r.wait().await.unwrap();
        }
        let n = objects.len();
        let got_a = recv_n(&a, n, PROMPTLY).await;
        b.notify("mix", n as i32).unwrap();
        let got_b = recv_n(&b, 2 * n, PROMPTLY).await;
        assert!(values(got_a) == objects, "a: broadcasts differ");
        let got_b = values(got_b);
        assert!(got_b[..n] == objects[..], "b: broadcasts differ");
        assert!(got_b[n..] == objects[..], "b: produced objects differ");
        let late = creds.connect::<String>(addr, &["mix"]).await;
        let retained = values(recv_n(&late, 1, PROMPTLY).await);
        assert!(retained[0] == objects[n - 1], "the retained object differs");
        relay.stop().await;
    })
    .await
}

/// The relay holds back the confirm of a publish that came alone (PROTOCOL.md §9.6) for output
/// to travel with; with none, its timer sends it. Waiting on a receipt asks for it at once.
#[tokio::test]
async fn a_lone_publish_is_confirmed_without_anyone_asking() {
    bounded(async {
        // A confirm delay of 1 s, so that 20 waits without the asking `Ping` would take 20 s;
        // a keepalive of a minute, so that no keepalive `Ping` brings the confirm instead.
        let creds = Creds::generate();
        let relay = creds
            .relay()
            .configure(|c| c.confirm_delay = Duration::from_secs(1))
            .start()
            .await
            .unwrap();
        let addr = relay.local_addr();
        let member = creds.connect::<String>(addr, &["news"]).await;
        let sender = within(
            "connect",
            PROMPTLY,
            creds
                .endpoint::<String>(addr)
                .keepalive(Duration::from_secs(60))
                .connect(),
        )
        .await
        .unwrap();

        let _receipt = sender.broadcast(&"one".to_owned(), "news").unwrap();
        assert_eq!(expect_values(&member, 1).await, ["one"]);
        // Nobody waits on the receipt and the sender gets no other output: the relay's timer.
        eventually(
            "confirmed by the relay's timer",
            Duration::from_secs(5),
            || sender.buffered_bytes() == 0,
        )
        .await;

        // Someone waits: asked for, and answered with the relay's `Pong`.
        within("20 waited receipts", Duration::from_secs(5), async {
            for i in 0..20 {
                sender
                    .broadcast(&format!("{i}"), "news")
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
            }
        })
        .await;
        assert_eq!(expect_values(&member, 20).await.len(), 20);
        relay.stop().await;
    })
    .await
}
