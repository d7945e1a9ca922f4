//! Busy polling (`busy_poll` on the relay and the endpoint): objects still flow both ways, the
//! spinning stops when traffic does, and a runtime where it cannot work is refused with the
//! reason.

use std::time::Duration;

use tlsro::{Error, Wait};
use tlsro_relay::StartError;
use tlsro_tests::*;

const WINDOW: Duration = Duration::from_micros(200);

/// On one current-thread runtime, a busy-polling relay and two busy-polling endpoints exchange
/// broadcasts and produced objects, and stop cleanly.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_polling_relay_and_endpoints_exchange_objects() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().busy_poll(WINDOW).start().await.unwrap();
        let addr = relay.local_addr();
        let spinning = |group: &'static str| {
            creds
                .endpoint::<String>(addr)
                .groups([group])
                .busy_poll(WINDOW)
                .connect()
        };
        let a = spinning("ping").await.unwrap();
        let b = spinning("pong").await.unwrap();
        b.notify("pong", 100).unwrap();
        for round in 0..100 {
            a.produce(&format!("q{round}"), "pong").unwrap();
            let got = b.pop(1, Wait::Timeout(PROMPTLY)).await.unwrap();
            assert_eq!(values(got), [format!("q{round}")]);
            b.broadcast(&format!("a{round}"), "ping").unwrap();
            let got = a.pop(1, Wait::Timeout(PROMPTLY)).await.unwrap();
            assert_eq!(values(got), [format!("a{round}")]);
        }
        a.stop().await.unwrap();
        b.stop().await.unwrap();
        relay.stop().await;
    })
    .await;
}

/// A relay asked to busy-poll on a multi-thread runtime does not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_relay_refuses_a_multi_thread_runtime() {
    let creds = Creds::generate();
    let Err(err) = creds.relay().busy_poll(WINDOW).start().await else {
        panic!("the relay started on a multi-thread runtime");
    };
    assert!(matches!(err, StartError::BusyPoll(_)), "{err:?}");
    assert!(err.to_string().contains("current-thread"), "{err}");
}

/// An endpoint asked to busy-poll on a multi-thread runtime fails to connect with
/// `InvalidConfig`, and the relay goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_polling_endpoint_refuses_a_multi_thread_runtime() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let err = creds
            .endpoint::<String>(addr)
            .busy_poll(WINDOW)
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains("current-thread"), "{err}");
        let a = creds.connect::<String>(addr, &["g"]).await;
        a.broadcast(&"still here".to_owned(), "g").unwrap();
        let got = a.pop(1, Wait::Timeout(PROMPTLY)).await.unwrap();
        assert_eq!(values(got), ["still here"]);
        a.stop().await.unwrap();
        relay.stop().await;
    })
    .await;
}

/// A blocking endpoint (its runtime has one worker) can busy-poll.
#[test]
fn a_blocking_endpoint_can_busy_poll() {
    let creds = Creds::generate();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = rt.block_on(creds.relay().start()).unwrap();
    let addr = relay.local_addr();
    let ep = creds
        .endpoint::<String>(addr)
        .groups(["g"])
        .busy_poll(WINDOW)
        .connect_blocking()
        .unwrap();
    ep.broadcast(&"blocking".to_owned(), "g").unwrap();
    let got = ep.pop(1, Wait::Timeout(PROMPTLY)).unwrap();
    assert_eq!(values(got), ["blocking"]);
    ep.stop().unwrap();
    rt.block_on(relay.stop());
}
