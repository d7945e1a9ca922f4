//! A codec of your own: postcard behind a schema tag.
//!
//! Both ends of a group must use the same codec and the same types. When robots in a fleet run
//! different firmware versions, a peer with an older struct layout would decode garbage or fail
//! with an obscure error. `Versioned` puts a 4-byte schema tag in front of each payload and
//! refuses, with a clear message, objects of another schema. The relay never looks inside
//! payloads, so it does not care which codec endpoints use.
//!
//! Run: `cargo run --release -p tlsro-examples --example custom_codec`

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tlsro::{Codec, CodecError, Endpoint, Event, Postcard, Wait};
use tlsro_examples::LocalCredentials;
use tlsro_relay::Relay;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Postcard, tagged with a schema version.
#[derive(Debug, Clone, Copy)]
struct Versioned {
    schema: u32,
}

impl Codec for Versioned {
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), CodecError> {
        out.extend_from_slice(&self.schema.to_le_bytes());
        Postcard.encode(value, out)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> std::result::Result<T, CodecError> {
        let (tag, body) = bytes.split_first_chunk::<4>().ok_or_else(|| {
            CodecError::decode("versioned", "payload shorter than its schema tag")
        })?;
        let schema = u32::from_le_bytes(*tag);
        if schema != self.schema {
            return Err(CodecError::decode(
                "versioned",
                format!(
                    "object of schema {schema}, this endpoint speaks schema {}",
                    self.schema
                ),
            ));
        }
        Postcard.decode(body)
    }
}

#[derive(Serialize, Deserialize, Debug)]
struct Telemetry {
    robot: String,
    battery: f32,
    position: (f32, f32),
}

#[tokio::main]
async fn main() -> Result<()> {
    let creds = LocalCredentials::generate("custom-codec")?;
    let relay = Relay::builder(creds.password.clone())
        .listen("127.0.0.1:0".parse()?)
        .tls_from_dir(&creds.dir)?
        .start()
        .await?;
    let addr = relay.local_addr().to_string();
    let connect = |schema: u32, groups: &'static [&'static str]| {
        Endpoint::<Telemetry>::builder(addr.clone(), creds.password.clone())
            .security(creds.security())
            .groups(groups.iter().copied())
            .codec(Versioned { schema })
            .connect()
    };

    let robot = connect(2, &[]).await?;
    let monitor = connect(2, &["telemetry"]).await?;
    let old_monitor = connect(1, &["telemetry"]).await?;
    let mut old_events = old_monitor.events();

    let reading = Telemetry {
        robot: "rover-7".into(),
        battery: 0.83,
        position: (12.5, -3.0),
    };
    robot.broadcast(&reading, "telemetry")?.wait().await?;

    let got = monitor
        .pop(1, Wait::Timeout(Duration::from_secs(5)))
        .await?;
    println!(
        "monitor (schema 2) received: {:?}",
        got.first().map(|r| &r.value)
    );

    // The schema-1 monitor cannot read it: the object is not lost silently, it is reported.
    let none = old_monitor
        .pop(1, Wait::Timeout(Duration::from_millis(500)))
        .await?;
    assert!(none.is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, old_events.recv()).await {
            Ok(Ok(Event::DecodeFailed { group, error })) => {
                println!("monitor (schema 1) refused an object of group {group:?}: {error}");
                break;
            }
            Ok(Ok(_)) => continue,
            _ => return Err("the schema-1 monitor reported nothing".into()),
        }
    }

    for endpoint in [robot, monitor, old_monitor] {
        endpoint.stop().await?;
    }
    relay.stop().await;
    Ok(())
}
