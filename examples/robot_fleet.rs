//! A training loop with real-sized objects, over TLS.
//!
//! A trainer broadcasts model weights (about 5 MB of `f32`) to the group "workers"; four workers
//! each answer every new model with trajectory batches (about 100 KB of observations each) that
//! they produce to the group "trainer"; the trainer consumes them with a credit window
//! (`notify`), as a learner pulls experience from a replay queue. At the end it prints
//! objects/s and MB/s for both directions.
//!
//! Run: `cargo run --release -p tlsro-examples --example robot_fleet`

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tlsro::{Endpoint, Wait};
use tlsro_examples::LocalCredentials;
use tlsro_relay::Relay;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WORKERS: usize = 4;
const ROUNDS: u32 = 5;
const BATCHES_PER_ROUND: usize = 25;
const WEIGHTS: usize = 1_250_000; // 5 MB of f32
const OBSERVATIONS: usize = 25_000; // 100 KB of f32
const CREDIT_WINDOW: i32 = 32;

#[derive(Serialize, Deserialize, Debug, Clone)]
enum Message {
    Weights {
        version: u32,
        values: Vec<f32>,
    },
    Trajectories {
        worker: u32,
        model_version: u32,
        observations: Vec<f32>,
        rewards: Vec<f32>,
    },
}

impl Message {
    fn size(&self) -> usize {
        match self {
            Message::Weights { values, .. } => values.len() * 4,
            Message::Trajectories {
                observations,
                rewards,
                ..
            } => (observations.len() + rewards.len()) * 4,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let creds = LocalCredentials::generate("robot-fleet").map_err(|e| e.to_string())?;
    let relay = Relay::builder(creds.password.clone())
        .listen("127.0.0.1:0".parse()?)
        .tls_from_dir(&creds.dir)?
        .start()
        .await?;
    let addr = relay.local_addr().to_string();
    let connect = |group: &'static str| {
        Endpoint::<Message>::builder(addr.clone(), creds.password.clone())
            .security(creds.security())
            .groups([group])
            .connect()
    };

    let trainer = connect("trainer").await?;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let endpoint = connect("workers").await?;
        workers.push(tokio::spawn(worker(w as u32, endpoint)));
    }

    let started = Instant::now();
    let mut weights_sent = 0usize;
    let mut batches = 0usize;
    let mut batch_bytes = 0usize;
    trainer.notify("trainer", CREDIT_WINDOW)?;
    for version in 1..=ROUNDS {
        let weights = Message::Weights {
            version,
            values: (0..WEIGHTS).map(|i| (i as f32 * 1e-6).sin()).collect(),
        };
        weights_sent += weights.size();
        trainer.broadcast(&weights, "workers")?;
        // Learn from this round's experience before publishing the next model.
        let want = (version as usize) * WORKERS * BATCHES_PER_ROUND;
        while batches < want {
            let got = trainer
                .pop(64, Wait::Timeout(Duration::from_secs(30)))
                .await?;
            if got.is_empty() {
                return Err("no trajectories for 30 s".into());
            }
            // Keep the credit window full: one new credit per object taken.
            trainer.notify("trainer", got.len() as i32)?;
            for item in got {
                batch_bytes += item.value.size();
                batches += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let weights_delivered = weights_sent * WORKERS;

    println!("robot_fleet over TLS: 1 trainer, {WORKERS} workers, {ROUNDS} model versions");
    println!(
        "  weights  (trainer → workers, broadcast): {} objects of {:.1} MB delivered, {:.1} objects/s, {:.1} MB/s",
        ROUNDS as usize * WORKERS,
        (WEIGHTS * 4) as f64 / 1e6,
        (ROUNDS as usize * WORKERS) as f64 / elapsed,
        weights_delivered as f64 / 1e6 / elapsed
    );
    println!(
        "  batches  (workers → trainer, produce/notify): {batches} objects of {:.1} KB, {:.1} objects/s, {:.1} MB/s",
        (OBSERVATIONS * 4 + 64 * 4) as f64 / 1e3,
        batches as f64 / elapsed,
        batch_bytes as f64 / 1e6 / elapsed
    );
    println!(
        "  total {:.1} MB through the relay in {elapsed:.2} s",
        (weights_delivered + batch_bytes) as f64 / 1e6
    );

    for w in workers {
        w.abort();
    }
    trainer.stop().await?;
    relay.stop().await;
    Ok(())
}

/// Waits for each new model and answers it with trajectory batches.
async fn worker(id: u32, endpoint: Endpoint<Message>) -> Result<()> {
    let mut seen = 0;
    loop {
        // Only the newest model matters: older ones still waiting are skipped.
        for item in endpoint.get_last(1, Wait::Forever).await? {
            let Message::Weights { version, values } = item.value else {
                continue;
            };
            if version <= seen {
                continue;
            }
            seen = version;
            let bias = values[id as usize];
            for step in 0..BATCHES_PER_ROUND {
                let batch = Message::Trajectories {
                    worker: id,
                    model_version: version,
                    observations: (0..OBSERVATIONS)
                        .map(|i| bias + (i + step) as f32)
                        .collect(),
                    rewards: vec![1.0; 64],
                };
                endpoint.produce(&batch, "trainer")?;
            }
        }
    }
}
