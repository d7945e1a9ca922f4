//! The public API used carelessly: odd durations, odd group lists, odd relay limits, a blocking
//! endpoint dropped in async code. Every misuse must end in a typed error with a readable
//! reason, never a panic or a hang.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tlsro::{Backoff, Error, Json, Wait};
use tlsro_relay::StartError;
use tlsro_tests::*;

const PW: &[u8] = b"misuse password";

async fn relay() -> tlsro_relay::RelayHandle {
    plain_relay(PW).start().await.unwrap()
}

/// A wait "for ever, but bounded" written as `Duration::MAX` is an ordinary deadline: it used
/// to overflow `Instant + Duration` and panic in the caller.
#[tokio::test]
async fn receive_and_stop_with_duration_max_do_not_panic() {
    bounded(async {
        let relay = relay().await;
        let a = plain_endpoint::<u32>(relay.local_addr(), PW)
            .groups(["g"])
            .stop_timeout(Duration::MAX)
            .connect()
            .await
            .unwrap();
        for i in 0..3 {
            a.broadcast(&i, "g").unwrap().wait().await.unwrap();
        }
        let forever = Wait::Timeout(Duration::MAX);
        assert_eq!(values(a.pop(1, forever).await.unwrap()), [0]);
        assert_eq!(values(a.get_last(1, forever).await.unwrap()), [2]);
        a.broadcast(&3, "g").unwrap().wait().await.unwrap();
        assert_eq!(values(a.receive_all(forever).await.unwrap()), [3]);
        within("stop", PROMPTLY, a.stop()).await.unwrap();
    })
    .await
}

/// `connect_timeout(Duration::MAX)` and a backoff of `Duration::MAX` used to panic the
/// background task, and `connect` reported only "the endpoint's background task ended".
#[tokio::test]
async fn connect_with_duration_max_timeouts_does_not_panic() {
    bounded(async {
        let relay = relay().await;
        let a = plain_endpoint::<u32>(relay.local_addr(), PW)
            .connect_timeout(Duration::MAX)
            .connect()
            .await;
        assert!(a.is_ok(), "{a:?}");

        let e = plain_endpoint::<u32>(closed_addr(), PW)
            .connect_timeout(Duration::from_millis(500))
            .reconnect(Backoff {
                initial: Duration::MAX,
                max: Duration::MAX,
                multiplier: 2.0,
                jitter: 0.5,
            })
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::RelayUnreachable { .. }), "{e:?}");
    })
    .await
}

/// A zero connect timeout can never connect: it used to be reported as an unreachable relay
/// ("the handshake with the relay timed out") while the relay was up.
#[tokio::test]
async fn zero_connect_timeout_is_invalid_config() {
    bounded(async {
        let relay = relay().await;
        let e = plain_endpoint::<u32>(relay.local_addr(), PW)
            .connect_timeout(Duration::ZERO)
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig(m) if m.contains("connect timeout")),
            "{e:?}"
        );
    })
    .await
}

/// A refused group list names the offending group (or the count) instead of printing every
/// name given: 5,000 groups used to make a 40 KB error message.
#[tokio::test]
async fn a_bad_group_list_is_named_briefly() {
    bounded(async {
        let relay = relay().await;
        let addr = relay.local_addr();
        let many = (0..5000).map(|i| format!("group-{i}"));
        let e = plain_endpoint::<u32>(addr, PW)
            .groups(many)
            .connect()
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        assert!(m.len() < 200 && m.contains("5000"), "{m}");

        let long = "x".repeat(10_000);
        let e = plain_endpoint::<u32>(addr, PW)
            .groups(["ok", "", "fine"])
            .connect()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("group \"\""), "{e}");
        let e = plain_endpoint::<u32>(addr, PW)
            .groups(["ok", long.as_str()])
            .connect()
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(m.len() < 200 && m.contains("10000 bytes"), "{m}");
    })
    .await
}

/// Dropping a blocking endpoint in async code (a struct holding one, dropped by a task) used to
/// panic: "Cannot drop a runtime in a context where blocking is not allowed".
#[test]
fn a_blocking_endpoint_may_be_dropped_in_async_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = rt.block_on(relay());
    let addr = relay.local_addr();
    let ep = plain_endpoint::<u32>(addr, PW)
        .groups(["g"])
        .connect_blocking()
        .unwrap();
    ep.broadcast(&1, "g").unwrap().wait_blocking().unwrap();
    let clone = ep.clone();
    rt.block_on(async move { drop(ep) });
    // The clone still works; dropping the last one in async code ends it.
    assert_eq!(values(clone.pop(1, Wait::Timeout(PROMPTLY)).unwrap()), [1]);
    rt.block_on(async move { drop(clone) });
    rt.block_on(relay.stop());
}

/// Limits set with `configure` that would serve no endpoint at all are refused at start, as the
/// configuration file refuses them. `outbound_limit = 0` used to start a relay on which every
/// connect hung until its timeout.
#[tokio::test]
async fn relay_refuses_limits_that_serve_nobody() {
    bounded(async {
        type Set = fn(&mut tlsro_relay::RelayConfig);
        let cases: [(&str, Set); 5] = [
            ("outbound_limit", |c| c.outbound_limit = 0),
            ("max_frame", |c| c.max_frame = 0),
            ("max_connections", |c| c.max_connections = 0),
            ("max_groups", |c| c.max_groups = 0),
            ("idle_intervals", |c| c.idle_intervals = 0),
        ];
        for (key, set) in cases {
            match plain_relay(PW).configure(set).start().await {
                Err(StartError::InvalidConfig(m)) => assert!(m.contains(key), "{key}: {m}"),
                Err(e) => panic!("{key}: {e:?}"),
                Ok(relay) => {
                    relay.stop().await;
                    panic!("{key} = 0: the relay started");
                }
            }
        }
    })
    .await
}

/// An empty password proves nothing: a relay and an endpoint that both forgot to set one would
/// "authenticate" each other. Both refuse it before doing anything.
#[tokio::test]
async fn an_empty_password_is_refused_on_both_sides() {
    bounded(async {
        match plain_relay(b"").start().await {
            Err(StartError::InvalidConfig(m)) => assert!(m.contains("password is empty"), "{m}"),
            Err(e) => panic!("{e:?}"),
            Ok(relay) => {
                relay.stop().await;
                panic!("a relay started with an empty password");
            }
        }
        let relay = relay().await;
        match plain_endpoint::<u32>(relay.local_addr(), b"")
            .connect()
            .await
        {
            Err(Error::InvalidConfig(m)) => assert!(m.contains("password is empty"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(relay.stats().await.accepted, 0, "refused before dialling");
        relay.stop().await;
    })
    .await
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Reading {
    x: f64,
}

/// JSON has no NaN: serde_json would write `null` and every receiver would get null where a
/// number was sent. The sender gets the error instead.
#[tokio::test]
async fn json_refuses_nan_at_the_sender() {
    bounded(async {
        let relay = relay().await;
        let a = plain_endpoint::<Reading>(relay.local_addr(), PW)
            .codec(Json)
            .groups(["j"])
            .connect()
            .await
            .unwrap();
        match a.broadcast(&Reading { x: f64::NAN }, "j") {
            Err(Error::Codec(e)) => assert!(e.to_string().contains("x is NaN"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Nothing was sent, and the endpoint goes on: the next object arrives whole.
        a.broadcast(&Reading { x: 1.5 }, "j")
            .unwrap()
            .wait()
            .await
            .unwrap();
        let got = a.pop(1, Wait::Timeout(PROMPTLY)).await.unwrap();
        assert_eq!(values(got), [Reading { x: 1.5 }]);
    })
    .await
}

/// An object of the wrong type is reported and dropped; the objects already queued after it are
/// returned at once, and a produced one that did not decode is not redelivered.
#[tokio::test]
async fn an_undecodable_object_does_not_hold_back_the_next() {
    bounded(async {
        let relay = relay().await;
        let addr = relay.local_addr();
        let strings = plain_endpoint::<String>(addr, PW).connect().await.unwrap();
        let numbers = plain_endpoint::<u32>(addr, PW).connect().await.unwrap();
        let rx = plain_endpoint::<u32>(addr, PW)
            .groups(["m"])
            .connect()
            .await
            .unwrap();
        rx.notify("m", 10).unwrap();
        numbers.produce(&1, "m").unwrap().wait().await.unwrap();
        strings
            .produce(&"not a number".to_owned(), "m")
            .unwrap()
            .wait()
            .await
            .unwrap();
        numbers.produce(&2, "m").unwrap().wait().await.unwrap();
        // All three queued locally (1 + 13 + 1 payload bytes).
        eventually("all queued", PROMPTLY, || rx.queued_bytes() == 15).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            // `pop(1)` meets the undecodable object first; it used to wait for the next
            // arrival (for ever here) although 2 was already queued.
            let next = within("pop", Duration::from_secs(2), rx.pop(1, Wait::Forever));
            got.extend(values(next.await.unwrap()));
        }
        assert_eq!(got, [1, 2]);
        assert_eq!(rx.decode_failures(), 1);
        expect_nothing(&rx).await;
    })
    .await
}
