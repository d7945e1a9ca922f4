//! Many endpoints at once. In a test binary of its own: the TLS handshakes of a hundred
//! endpoints keep both cores busy for a moment, which would slow down the timing-sensitive
//! tests running beside it.

use std::time::Duration;

use tlsro_tests::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_endpoints_at_once() {
    bounded(async {
        let creds = Creds::generate();
        let relay = creds.relay().start().await.unwrap();
        let addr = relay.local_addr();
        let started = Instant::now();
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..100 {
            connecting.spawn(
                creds
                    .endpoint::<String>(addr)
                    .groups(["all"])
                    .connect_timeout(Duration::from_secs(20))
                    .connect(),
            );
        }
        let mut endpoints = Vec::new();
        while let Some(result) = connecting.join_next().await {
            endpoints.push(result.unwrap().expect("every endpoint connects"));
        }
        eprintln!("100 endpoints connected in {:?}", started.elapsed());
        assert_eq!(endpoints.len(), 100);

        let sender = creds.connect::<String>(addr, &[]).await;
        sender
            .broadcast(&"to all".to_owned(), "all")
            .unwrap()
            .wait()
            .await
            .unwrap();
        let mut receiving = tokio::task::JoinSet::new();
        for endpoint in endpoints {
            receiving.spawn(async move {
                let got = recv_n(&endpoint, 1, Duration::from_secs(10)).await;
                (values(got), endpoint)
            });
        }
        let mut reached = 0;
        while let Some(result) = receiving.join_next().await {
            let (got, _endpoint) = result.unwrap();
            assert_eq!(got, ["to all"]);
            reached += 1;
        }
        assert_eq!(reached, 100);
        assert!(relay.stats().await.accepted >= 101);
        relay.stop().await;
    })
    .await
}
