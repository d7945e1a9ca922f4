//! tlspyo's README scenario, over TLS, in one process.
//!
//! A producer broadcasts one object and produces another to the group "consumers". Consumer 1
//! notifies that it is ready for one produced object and gets both; consumer 2 gets only the
//! broadcast (exactly one member gets each produced object).
//!
//! Run: `cargo run --release -p tlsro-examples --example quickstart`

use std::time::Duration;

use tlsro::{Endpoint, Wait};
use tlsro_examples::LocalCredentials;
use tlsro_relay::Relay;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    // A CA, a relay certificate and a random password, made for this run.
    let creds = LocalCredentials::generate("quickstart")?;
    let relay = Relay::builder(creds.password.clone())
        .listen("127.0.0.1:0".parse()?)
        .tls_from_dir(&creds.dir)?
        .start()
        .await?;
    let addr = relay.local_addr().to_string();
    println!("relay listening on {addr} (TLS 1.3, certificate signed by a fresh CA)");

    let connect = |groups: &'static [&'static str]| {
        Endpoint::<String>::builder(addr.clone(), creds.password.clone())
            .security(creds.security())
            .groups(groups.iter().copied())
            .connect()
    };
    let producer = connect(&["producers"]).await?;
    let consumer_1 = connect(&["consumers"]).await?;
    let consumer_2 = connect(&["consumers"]).await?;

    // Sending needs no membership: a "producers" endpoint sends to "consumers".
    producer
        .broadcast(&"I HAVE BROADCASTED".to_string(), "consumers")?
        .wait()
        .await?;
    producer
        .produce(&"I HAVE PRODUCED".to_string(), "consumers")?
        .wait()
        .await?;

    // Consumer 1 is ready for one produced object.
    consumer_1.notify("consumers", 1)?;

    let got_1 = receive(&consumer_1, 2).await?;
    let got_2 = receive(&consumer_2, 1).await?;
    // Give consumer 2 a moment: it must not get the produced object.
    let extra_2 = consumer_2
        .pop(10, Wait::Timeout(Duration::from_millis(200)))
        .await?;

    println!("consumer 1 received: {got_1:?}");
    println!(
        "consumer 2 received: {:?}",
        [got_2, values(extra_2)].concat()
    );

    for endpoint in [producer, consumer_1, consumer_2] {
        endpoint.stop().await?;
    }
    relay.stop().await;
    Ok(())
}

/// Pops until `n` objects arrived (or five seconds passed).
async fn receive(endpoint: &Endpoint<String>, n: usize) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(values(
            endpoint.pop(n - got.len(), Wait::Timeout(left)).await?,
        ));
    }
    Ok(got)
}

fn values(items: Vec<tlsro::Received<String>>) -> Vec<String> {
    items.into_iter().map(|r| r.value).collect()
}
