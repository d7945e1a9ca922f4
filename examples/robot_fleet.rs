//! A training loop with real-sized objects, over TLS.
//!
//! A trainer broadcasts model weights (about 5 MB of `f32`) to the group "workers"; four workers
//! each answer every new model with trajectory batches (about 100 KB of observations each) that
//! they produce to the group "trainer"; the trainer consumes them with a credit window
//! (`notify`), as a learner pulls experience from a replay queue. At the end it prints
//! objects/s and MB/s for both directions, each over its own phase of every round: the weights
//! from the broadcast to the last worker's receipt (counted at the workers), the batches from
//! the first worker's receipt of the model they answer to the last batch the trainer takes. The
//! models are made before the clock starts.
//!
//! Run: `cargo run --release -p tlsro-examples --example robot_fleet`

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tlsro::{Endpoint, Wait};
use tlsro_examples::LocalCredentials;
use tlsro_relay::Relay;
use tokio::sync::mpsc;

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
    let (receipts_tx, mut receipts) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let endpoint = connect("workers").await?;
        workers.push(tokio::spawn(worker(
            w as u32,
            endpoint,
            receipts_tx.clone(),
        )));
    }
    drop(receipts_tx);
    // Every model made up front: the figures are the transport's, not the generator's.
    let models: Vec<Message> = (1..=ROUNDS)
        .map(|version| Message::Weights {
            version,
            values: (0..WEIGHTS)
                .map(|i| (i as f32 * 1e-6 * version as f32).sin())
                .collect(),
        })
        .collect();

    let started = Instant::now();
    let mut sent_at = Vec::new();
    let mut batches = 0usize;
    let mut batch_bytes = 0usize;
    let mut round_done = Vec::new();
    trainer.notify("trainer", CREDIT_WINDOW)?;
    for (round, weights) in models.iter().enumerate() {
        sent_at.push(Instant::now());
        trainer.broadcast(weights, "workers")?;
        // Learn from this round's experience before publishing the next model.
        let want = (round + 1) * WORKERS * BATCHES_PER_ROUND;
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
        round_done.push(Instant::now());
    }
    let elapsed = started.elapsed().as_secs_f64();
    for w in workers {
        w.abort();
    }

    // Each round's phases: the weights from the broadcast to the last worker's receipt, the
    // batches from the first worker's receipt (none can be made before) to the last batch.
    let mut receipt_span = vec![None::<(Instant, Instant)>; ROUNDS as usize];
    let (mut weights_delivered, mut weights_bytes) = (0usize, 0usize);
    while let Ok(r) = receipts.try_recv() {
        let span = &mut receipt_span[r.version as usize - 1];
        *span = Some(span.map_or((r.at, r.at), |(first, last)| {
            (first.min(r.at), last.max(r.at))
        }));
        weights_delivered += 1;
        weights_bytes += r.bytes;
    }
    let weights_time: Duration = receipt_span
        .iter()
        .zip(&sent_at)
        .filter_map(|(span, sent)| span.map(|(_, last)| last - *sent))
        .sum();
    let batch_time: Duration = receipt_span
        .iter()
        .zip(&round_done)
        .filter_map(|(span, done)| span.map(|(first, _)| *done - first))
        .sum();
    let (wt, bt) = (weights_time.as_secs_f64(), batch_time.as_secs_f64());

    println!("robot_fleet over TLS: 1 trainer, {WORKERS} workers, {ROUNDS} model versions");
    println!(
        "  weights  (trainer → workers, broadcast): {weights_delivered} of {} objects of {:.1} MB \
         received by the workers, {:.1} objects/s, {:.1} MB/s at the workers ({:.0} ms a round)",
        ROUNDS as usize * WORKERS,
        (WEIGHTS * 4) as f64 / 1e6,
        weights_delivered as f64 / wt,
        weights_bytes as f64 / 1e6 / wt,
        wt * 1000.0 / f64::from(ROUNDS)
    );
    println!(
        "  batches  (workers → trainer, produce/notify): {batches} objects of {:.1} KB, \
         {:.1} objects/s, {:.1} MB/s at the trainer ({:.0} ms a round)",
        (OBSERVATIONS * 4 + 64 * 4) as f64 / 1e3,
        batches as f64 / bt,
        batch_bytes as f64 / 1e6 / bt,
        bt * 1000.0 / f64::from(ROUNDS)
    );
    println!(
        "  total {:.1} MB through the relay in {elapsed:.2} s",
        (weights_bytes + batch_bytes) as f64 / 1e6
    );
    if weights_delivered != ROUNDS as usize * WORKERS {
        return Err(format!(
            "the workers received {weights_delivered} models, not {}",
            ROUNDS as usize * WORKERS
        )
        .into());
    }

    trainer.stop().await?;
    relay.stop().await;
    Ok(())
}

/// A worker's word that it has a model: which, when, and how many bytes of weights.
struct Receipt {
    version: u32,
    at: Instant,
    bytes: usize,
}

/// Waits for each new model, says so, and answers it with trajectory batches.
async fn worker(
    id: u32,
    endpoint: Endpoint<Message>,
    receipts: mpsc::UnboundedSender<Receipt>,
) -> Result<()> {
    let mut seen = 0;
    loop {
        // Only the newest model matters: older ones still waiting are skipped.
        for item in endpoint.get_last(1, Wait::Forever).await? {
            let at = Instant::now();
            let bytes = item.value.size();
            let Message::Weights { version, values } = item.value else {
                continue;
            };
            if version <= seen {
                continue;
            }
            seen = version;
            let _ = receipts.send(Receipt { version, at, bytes });
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
