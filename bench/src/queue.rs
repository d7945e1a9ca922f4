//! `queue`: P producers → C consumers through `produce` / `notify`, with acknowledgements.
//!
//! Each consumer opens a credit window of `--window` objects and tops it up by what it took
//! (taking is what acknowledges, in batches). Producers pipeline (receipts checked as they come)
//! and keep at most `--max-queued` objects produced but not yet consumed, below the relay's
//! default queue limit (100,000, overflow `reject`), so that nothing is refused. Every object
//! carries its producer and sequence number; at the end the tool counts what was missing and
//! what came twice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use tlsro::{Error, Receipt, Wait};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::common::{
    BenchEndpoint, Blob, CommonArgs, EventWatch, Outcome, Result, Setup, Table, parse_size, rate,
    size_name, thousands, unique_name, wind_up,
};
use crate::common::{at_least_one, at_least_one_u64, run_length};
use crate::thr::{RECEIPT_WINDOW, STALL};

/// `queue` options.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Producers.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub producers: usize,
    /// Consumers (members of the group, each with a credit window).
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub consumers: usize,
    /// Payload bytes per object (at least 12: producer and sequence number).
    #[arg(long, default_value = "100", value_parser = parse_size)]
    pub size: u64,
    /// Credit each consumer keeps open (topped up by what it took).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub window: u32,
    /// Objects to produce in all (instead of --duration).
    #[arg(long, conflicts_with = "duration", value_parser = at_least_one_u64)]
    pub count: Option<u64>,
    /// How long to produce [default: 5s].
    #[arg(long, value_parser = run_length)]
    pub duration: Option<Duration>,
    /// Objects produced but not yet consumed, at most (stays under the relay's queue limit).
    #[arg(long, default_value_t = 50_000)]
    pub max_queued: u64,
    #[command(flatten)]
    pub common: CommonArgs,
}

struct Shared {
    produced: AtomicU64,
    consumed: AtomicU64,
    refused: AtomicU64,
    /// Objects that should arrive, once every producer is done (u64::MAX before).
    expected: AtomicU64,
    consumed_advanced: Notify,
}

struct ConsumerReport {
    taken: u64,
    keys: Vec<u64>,
    last_at: Option<Instant>,
    error: Option<String>,
}

/// Runs `queue` against `setup`.
pub async fn run(setup: &Setup<'_>, args: &QueueArgs) -> Result<Outcome> {
    let size = args.size.max(12) as usize;
    let producers = args.producers.max(1);
    let consumers = args.consumers.max(1);
    let window = args.window.clamp(1, i32::MAX as u32) as i32;
    let duration = match (args.count, args.duration) {
        (Some(_), _) => None,
        (None, Some(d)) => Some(d),
        (None, None) => Some(Duration::from_secs(5)),
    };

    let group = unique_name("queue");
    let mut cons = Vec::with_capacity(consumers);
    for _ in 0..consumers {
        let ep = setup.endpoint(&[group.as_str()]).await?;
        ep.notify(&group, window)?;
        cons.push(ep);
    }
    let mut prods = Vec::with_capacity(producers);
    for _ in 0..producers {
        prods.push(setup.endpoint(&[]).await?);
    }
    let watches: Vec<EventWatch> = cons
        .iter()
        .chain(prods.iter())
        .map(EventWatch::new)
        .collect();

    let shared = Arc::new(Shared {
        produced: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        expected: AtomicU64::new(u64::MAX),
        consumed_advanced: Notify::new(),
    });

    let mut consumer_tasks = Vec::with_capacity(consumers);
    for ep in &cons {
        consumer_tasks.push(tokio::spawn(consume(
            ep.clone(),
            group.clone(),
            shared.clone(),
        )));
    }

    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let mut producer_tasks = Vec::with_capacity(producers);
    for (index, ep) in prods.iter().enumerate() {
        let quota = args
            .count
            .map(|c| c / producers as u64 + u64::from((index as u64) < c % producers as u64));
        producer_tasks.push(tokio::spawn(produce(
            ep.clone(),
            group.clone(),
            index as u32,
            size,
            quota,
            deadline,
            args.max_queued.max(1),
            shared.clone(),
        )));
    }
    let mut produced_each = Vec::with_capacity(producers);
    let mut producer_errors = Vec::new();
    for task in producer_tasks {
        let (n, error) = task.await?;
        produced_each.push(n);
        if let Some(e) = error {
            producer_errors.push(e);
        }
    }
    let produce_secs = start.elapsed().as_secs_f64();
    let produced: u64 = produced_each.iter().sum();
    let refused = shared.refused.load(Ordering::Acquire);
    shared
        .expected
        .store(produced.saturating_sub(refused), Ordering::Release);
    shared.consumed_advanced.notify_waiters();

    let (mut reports, stats, events) = wind_up(setup, consumer_tasks, watches).await?;
    for ep in prods.iter().chain(cons.iter()) {
        let _ = ep.stop().await;
    }

    // Exactly which objects arrived.
    let mut keys: Vec<u64> = Vec::new();
    for r in &mut reports {
        keys.append(&mut r.keys);
    }
    keys.sort_unstable();
    let total_taken = keys.len() as u64;
    keys.dedup();
    let unique = keys.len() as u64;
    let duplicates = total_taken - unique;
    let expected = produced.saturating_sub(refused);
    let missing = expected.saturating_sub(unique);

    let last = reports
        .iter()
        .filter_map(|r| r.last_at)
        .max()
        .unwrap_or(start);
    let secs = (last - start).as_secs_f64();
    let total_rate = rate(total_taken, secs);
    let disconnects: u64 = events.iter().map(|e| e.0).sum();

    let mut problems = Vec::new();
    if missing > 0 {
        problems.push(format!(
            "LOST {} of {} produced objects",
            thousands(missing as f64),
            thousands(expected as f64)
        ));
    }
    if refused > 0 {
        problems.push(format!(
            "the relay refused {} produced objects (queue full?)",
            thousands(refused as f64)
        ));
    }
    if duplicates > 0 {
        problems.push(format!(
            "{} objects delivered twice (at-least-once after a reconnect)",
            thousands(duplicates as f64)
        ));
    }
    if disconnects > 0 {
        problems.push(format!("{disconnects} disconnects during the run"));
    }
    for e in producer_errors {
        problems.push(format!("a producer stopped early: {e}"));
    }
    for r in &reports {
        if let Some(e) = &r.error {
            problems.push(format!("a consumer failed: {e}"));
        }
    }

    let security = setup.creds.security_name();
    let mut table = Table::new(
        format!(
            "queue: {producers} producer{} → {consumers} consumer{} ({security}, {}, credit window {window})",
            if producers == 1 { "" } else { "s" },
            if consumers == 1 { "" } else { "s" },
            size_name(size as u64)
        ),
        &["consumer", "objects", "share", "objects/s"],
    );
    let split: Vec<u64> = reports.iter().map(|r| r.taken).collect();
    for (i, r) in reports.iter().enumerate() {
        let s = r.last_at.map(|t| (t - start).as_secs_f64()).unwrap_or(0.0);
        table.row(vec![
            format!("#{i}"),
            thousands(r.taken as f64),
            format!(
                "{:.1} %",
                100.0 * r.taken as f64 / total_taken.max(1) as f64
            ),
            thousands(rate(r.taken, s)),
        ]);
    }
    table.row(vec![
        "total".into(),
        thousands(total_taken as f64),
        format!(
            "produced {}, lost {}, dup {}",
            thousands(produced as f64),
            thousands(missing as f64),
            thousands(duplicates as f64)
        ),
        format!("{} in {secs:.2} s", thousands(total_rate)),
    ]);
    let json = serde_json::json!({
        "bench": "queue",
        "security": security,
        "size": size,
        "producers": producers,
        "consumers": consumers,
        "window": window,
        "produced": produced,
        "refused": refused,
        "received": total_taken,
        "lost": missing,
        "duplicates": duplicates,
        "disconnects": disconnects,
        "redelivered": stats.as_ref().map(|s| s.redelivered),
        "seconds": secs,
        "objects_per_s": total_rate,
        "produced_per_s": rate(produced, produce_secs),
        "split": split,
    });
    Ok(Outcome {
        json,
        table,
        problems,
    })
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    ep: BenchEndpoint,
    group: String,
    index: u32,
    size: usize,
    quota: Option<u64>,
    deadline: Option<Instant>,
    max_queued: u64,
    shared: Arc<Shared>,
) -> (u64, Option<String>) {
    let mut blob = Blob::filled(size);
    blob.0[..4].copy_from_slice(&index.to_le_bytes());
    let mut receipts: VecDeque<Receipt> = VecDeque::new();
    let limit = quota.unwrap_or(u64::MAX);
    let mut seq = 0u64;
    let settle = |r: std::result::Result<(), tlsro::PublishError>| match r {
        Ok(()) => Ok(()),
        Err(tlsro::PublishError::Rejected(_)) => {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    while seq < limit {
        if seq.is_multiple_of(64) {
            if let Some(deadline) = deadline
                && Instant::now() >= deadline
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Keep the relay's queue short of its limit.
        loop {
            let advanced = shared.consumed_advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let in_queue = shared.produced.load(Ordering::Acquire)
                - shared
                    .consumed
                    .load(Ordering::Acquire)
                    .min(shared.produced.load(Ordering::Acquire));
            if in_queue < max_queued {
                break;
            }
            if tokio::time::timeout(STALL, advanced).await.is_err() {
                return (seq, Some(format!("no consumer progress for {STALL:?}")));
            }
        }
        blob.put_u64(4, seq);
        shared.produced.fetch_add(1, Ordering::AcqRel);
        loop {
            match ep.produce(&blob, &group) {
                Ok(r) => {
                    receipts.push_back(r);
                    break;
                }
                Err(Error::BufferFull { .. }) => match receipts.pop_front() {
                    Some(r) => {
                        if let Err(e) = settle(r.wait().await) {
                            return (seq, Some(e));
                        }
                    }
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                },
                Err(e) => {
                    shared.produced.fetch_sub(1, Ordering::AcqRel);
                    return (seq, Some(e.to_string()));
                }
            }
        }
        seq += 1;
        if receipts.len() > RECEIPT_WINDOW
            && let Some(r) = receipts.pop_front()
            && let Err(e) = settle(r.wait().await)
        {
            return (seq, Some(e));
        }
    }
    for r in receipts {
        if let Err(e) = settle(r.wait().await) {
            return (seq, Some(e));
        }
    }
    (seq, None)
}

async fn consume(ep: BenchEndpoint, group: String, shared: Arc<Shared>) -> ConsumerReport {
    let mut report = ConsumerReport {
        taken: 0,
        keys: Vec::new(),
        last_at: None,
        error: None,
    };
    let mut last_progress = Instant::now();
    loop {
        let expected = shared.expected.load(Ordering::Acquire);
        if expected != u64::MAX {
            if shared.consumed.load(Ordering::Acquire) >= expected {
                return report;
            }
            if last_progress.elapsed() > STALL {
                return report;
            }
        }
        match ep
            .receive_all(Wait::Timeout(Duration::from_millis(100)))
            .await
        {
            Ok(items) if items.is_empty() => {
                // Another consumer may have finished the run.
                let other = shared.consumed.load(Ordering::Acquire);
                if other > 0 && expected != u64::MAX && other >= expected {
                    return report;
                }
            }
            Ok(items) => {
                let now = Instant::now();
                last_progress = now;
                report.last_at = Some(now);
                let n = items.len();
                for item in &items {
                    let bytes = &item.value.0;
                    let producer = u32::from_le_bytes(bytes[..4].try_into().unwrap_or([0; 4]));
                    let seq = Blob::get_u64(bytes, 4).unwrap_or(u64::MAX);
                    report
                        .keys
                        .push((u64::from(producer) << 40) | (seq & ((1 << 40) - 1)));
                }
                report.taken += n as u64;
                if let Err(e) = ep.notify(&group, n as i32) {
                    report.error = Some(e.to_string());
                    return report;
                }
                shared.consumed.fetch_add(n as u64, Ordering::AcqRel);
                shared.consumed_advanced.notify_waiters();
            }
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        }
    }
}
