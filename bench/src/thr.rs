//! `thr`: one broadcaster → K members of a group; objects/s and MB/s at the receivers.
//!
//! The sender pipelines: it never awaits a receipt before sending the next object (it keeps up
//! to [`RECEIPT_WINDOW`] receipts and checks the oldest ones as it goes). Broadcast has no
//! end-to-end backpressure (a member that falls 64 MiB behind is dropped as a slow consumer), so
//! by default the sender also keeps at most `--inflight` bytes between itself and the slowest
//! receiver: the figure is the rate the relay sustains without losing anything. `--inflight 0`
//! sends open loop (and reports what that loses).
//!
//! With `--stalled N`, N more members join the group and never read: the "consumer that stops
//! reading" of issue 4. They stop taking bytes once their receive queue (1 MiB) is full, and the
//! relay closes them as slow consumers when their backlog passes its outbound limit. A member
//! that does not read never sees that close, so it would stay gone: to keep stalled members
//! there for the whole run, N fresh ones join every [`STALL_EVERY`] while the sender runs. The
//! sender's window follows the healthy members only; their figures show whether they kept their
//! throughput, and with `--relay-process` the relay's peak memory (VmRSS, read every 20 ms)
//! shows whether it stayed bounded. At the end the stalled members read again and count the
//! closes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use tlsro::{Error, PublishError, Receipt, Wait};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::conns::RssSampler;

/// The receive queue of a stalled member: once that much is waiting it stops reading.
const STALLED_QUEUE: usize = 1024 * 1024;

/// How often fresh stalled members join while the sender runs: longer than the relay's grace
/// period for a closing connection (2 s, in which a slow consumer's output is still held so
/// that its `Close` can get through), so one stall at a time is measured, not a pile of them.
const STALL_EVERY: Duration = Duration::from_millis(2500);

/// Stalled members with their event watches (disconnects expected, so counted, not warned).
type Stalled = Vec<(BenchEndpoint, EventWatch)>;

/// Connects `n` members of `group` that never read.
async fn stall(connector: &crate::common::Connector, group: &str, n: usize) -> Result<Stalled> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ep = connector
            .endpoint_queueing(&[group], Some(STALLED_QUEUE))
            .await?;
        let watch = EventWatch::expecting_disconnects(&ep);
        out.push((ep, watch));
    }
    Ok(out)
}

use crate::common::{
    BenchEndpoint, Blob, CommonArgs, EventWatch, Outcome, Result, Setup, Table, mb_per_s,
    parse_size, rate, size_name, thousands, unique_name, wind_up,
};
use crate::common::{at_least_one, at_least_one_u64, run_length};

/// Receipts kept before the oldest is awaited.
pub const RECEIPT_WINDOW: usize = 65_536;

/// The sender yields to the runtime after this many objects or bytes, so that the endpoint's
/// driver and the receivers get to run even on a small runtime.
const YIELD_OBJECTS: u64 = 256;
const YIELD_BYTES: u64 = 256 * 1024;

/// How long receivers wait without progress, once the sender is done, before declaring the rest
/// lost.
pub const STALL: Duration = Duration::from_secs(5);

/// `thr` options.
#[derive(Debug, Clone, Args)]
pub struct ThrArgs {
    /// Payload bytes per object (100, 64KiB, 1MiB, …).
    #[arg(long, default_value = "100", value_parser = parse_size)]
    pub size: u64,
    /// Members of the group (receivers).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub members: usize,
    /// Objects to send (instead of --duration).
    #[arg(long, conflicts_with = "duration", value_parser = at_least_one_u64)]
    pub count: Option<u64>,
    /// How long to send [default: 5s].
    #[arg(long, value_parser = run_length)]
    pub duration: Option<Duration>,
    /// Payload bytes the sender may have ahead of the slowest receiver (0: open loop).
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub inflight: u64,
    /// More members that join the group and never read (consumers that stop reading).
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What the receivers report, shared with the sender.
struct Progress {
    received: Vec<AtomicU64>,
    advanced: Notify,
    /// Objects sent, once the sender is done (u64::MAX before).
    sent_final: AtomicU64,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

struct ReceiverReport {
    received: u64,
    bytes: u64,
    out_of_order: u64,
    duplicates: u64,
    last_at: Option<Instant>,
    error: Option<String>,
}

/// Runs `thr` against `setup`.
pub async fn run(setup: &Setup<'_>, args: &ThrArgs) -> Result<Outcome> {
    let size = args.size as usize;
    let members = args.members.max(1);
    let duration = match (args.count, args.duration) {
        (Some(_), _) => None,
        (None, Some(d)) => Some(d),
        (None, None) => Some(Duration::from_secs(5)),
    };
    let window = if args.inflight == 0 {
        u64::MAX
    } else {
        (args.inflight / args.size.max(1)).max(4)
    };

    let group = unique_name("thr");
    let mut receivers = Vec::with_capacity(members);
    for _ in 0..members {
        receivers.push(setup.endpoint(&[group.as_str()]).await?);
    }
    let mut stalled = stall(&setup.connector, &group, args.stalled).await?;
    let sender = setup.endpoint(&[]).await?;
    let watches: Vec<EventWatch> = receivers
        .iter()
        .chain(std::iter::once(&sender))
        .map(EventWatch::new)
        .collect();
    let sampler = setup.relay_pid().map(RssSampler::start);

    let progress = Arc::new(Progress {
        received: (0..members).map(|_| AtomicU64::new(0)).collect(),
        advanced: Notify::new(),
        sent_final: AtomicU64::new(u64::MAX),
    });

    let mut tasks = Vec::with_capacity(members);
    for (index, ep) in receivers.iter().enumerate() {
        tasks.push(tokio::spawn(receive(ep.clone(), index, progress.clone())));
    }

    // Fresh stalled members keep joining while the sender runs.
    let (stop_stalling, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stalling = (args.stalled > 0).then(|| {
        let (connector, group, n) = (setup.connector.clone(), group.clone(), args.stalled);
        tokio::spawn(async move {
            let mut more = Stalled::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => return more,
                    _ = tokio::time::sleep(STALL_EVERY) => {}
                }
                match stall(&connector, &group, n).await {
                    Ok(s) => more.extend(s),
                    Err(e) => {
                        eprintln!("warning: a stalled member could not join: {e}");
                        return more;
                    }
                }
            }
        })
    });

    let start = Instant::now();
    let sent = send(
        &sender, &group, size, args.count, duration, window, &progress,
    )
    .await;
    let _ = stop_stalling.send(());
    if let Some(task) = stalling {
        stalled.extend(task.await?);
    }
    let send_secs = start.elapsed().as_secs_f64();
    let (sent, refused, send_error) = match sent {
        Ok((sent, refused)) => (sent, refused, None),
        Err((sent, refused, e)) => (sent, refused, Some(e)),
    };
    progress.sent_final.store(sent, Ordering::Release);
    progress.advanced.notify_one();

    let (reports, stats, events) = wind_up(setup, tasks, watches).await?;
    let relay_rss = sampler.map(RssSampler::finish);
    let stalled_disconnects = resume(&stalled).await;
    let _ = sender.stop().await;
    for ep in &receivers {
        let _ = ep.stop().await;
    }
    let stalled_members = stalled.len();
    drop(stalled);

    // Figures at the receivers, from the first send to the last object received.
    let last = reports
        .iter()
        .filter_map(|r| r.last_at)
        .max()
        .unwrap_or(start);
    let secs = (last - start).as_secs_f64();
    let received: u64 = reports.iter().map(|r| r.received).sum();
    let bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    let expected = sent.saturating_sub(refused) * members as u64;
    let lost = expected.saturating_sub(received);
    let slowest = reports
        .iter()
        .map(|r| {
            let s = r.last_at.map(|t| (t - start).as_secs_f64()).unwrap_or(0.0);
            rate(r.received, s)
        })
        .fold(f64::INFINITY, f64::min);
    let out_of_order: u64 = reports.iter().map(|r| r.out_of_order).sum();
    let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
    let disconnects: u64 = events.iter().map(|e| e.0).sum();
    let skipped: u64 = events.iter().map(|e| e.2).sum();

    let mut problems = Vec::new();
    if lost > 0 {
        problems.push(format!(
            "LOST {} of {} objects ({} sent × {members} members; received {})",
            thousands(lost as f64),
            thousands(expected as f64),
            thousands(sent as f64),
            thousands(received as f64)
        ));
    }
    if refused > 0 {
        problems.push(format!(
            "the relay refused {} broadcasts",
            thousands(refused as f64)
        ));
    }
    if out_of_order > 0 || duplicates > 0 {
        problems.push(format!(
            "{out_of_order} objects out of order, {duplicates} duplicates"
        ));
    }
    if disconnects > 0 {
        problems.push(format!("{disconnects} disconnects during the run"));
    }
    if skipped > 0 {
        problems.push(format!("{skipped} broadcasts skipped (too large)"));
    }
    // (With stalled members, slow-consumer closes are theirs; a healthy member's disconnect is
    // counted above.)
    if let Some(s) = &stats
        && args.stalled == 0
        && s.slow_consumers > 0
    {
        problems.push(format!(
            "the relay dropped {} slow consumers",
            s.slow_consumers
        ));
    }
    if let Some(e) = &send_error {
        problems.push(format!("the sender stopped early: {e}"));
    }
    for r in &reports {
        if let Some(e) = &r.error {
            problems.push(format!("a receiver failed: {e}"));
        }
    }

    let agg_rate = rate(received, secs);
    let agg_mb = mb_per_s(bytes, secs);
    let security = setup.creds.security_name();
    let mut table = Table::new(
        format!(
            "thr: 1 broadcaster → {members} member{}{} ({security}, {})",
            if members == 1 { "" } else { "s" },
            match args.stalled {
                0 => String::new(),
                1 => " + 1 that stops reading".to_owned(),
                n => format!(" + {n} that stop reading"),
            },
            size_name(args.size)
        ),
        &[
            "size",
            "fan-out",
            "sent",
            "received",
            "lost",
            "seconds",
            "objects/s (all receivers)",
            "MB/s (all receivers)",
            "objects/s (slowest)",
            "sent/s",
            "stalled closed",
            "relay peak RSS MiB",
        ],
    );
    table.row(vec![
        size_name(args.size),
        format!("1→{members}"),
        thousands(sent as f64),
        thousands(received as f64),
        thousands(lost as f64),
        format!("{secs:.2}"),
        thousands(agg_rate),
        format!("{agg_mb:.1}"),
        thousands(slowest),
        thousands(rate(sent, send_secs)),
        if args.stalled == 0 {
            "-".to_owned()
        } else {
            thousands(stalled_disconnects as f64)
        },
        relay_rss.map_or("-".to_owned(), |(peak, _)| {
            format!("{:.1}", peak as f64 / 1048576.0)
        }),
    ]);
    let json = serde_json::json!({
        "bench": "thr",
        "security": security,
        "size": args.size,
        "members": members,
        "inflight_bytes": args.inflight,
        "sent": sent,
        "refused": refused,
        "received": received,
        "expected": expected,
        "lost": lost,
        "out_of_order": out_of_order,
        "duplicates": duplicates,
        "disconnects": disconnects,
        "slow_consumers": stats.as_ref().map(|s| s.slow_consumers),
        "seconds": secs,
        "objects_per_s": agg_rate,
        "mb_per_s": agg_mb,
        "slowest_receiver_objects_per_s": slowest,
        "sent_per_s": rate(sent, send_secs),
        "stalled": args.stalled,
        "stalled_members": stalled_members,
        "stalled_disconnects": stalled_disconnects,
        "relay_peak_rss_bytes": relay_rss.map(|r| r.0),
        "relay_end_rss_bytes": relay_rss.map(|r| r.1),
    });
    Ok(Outcome {
        json,
        table,
        problems,
    })
}

type SendResult = std::result::Result<(u64, u64), (u64, u64, String)>;

/// Sends until `count` objects or `duration`; returns (sent, refused by the relay).
async fn send(
    sender: &BenchEndpoint,
    group: &str,
    size: usize,
    count: Option<u64>,
    duration: Option<Duration>,
    window: u64,
    progress: &Progress,
) -> SendResult {
    let mut blob = Blob::filled(size);
    let mut receipts: VecDeque<Receipt> = VecDeque::with_capacity(RECEIPT_WINDOW.min(1 << 16));
    let mut refused = 0u64;
    let start = Instant::now();
    let deadline = duration.map(|d| start + d);
    let limit = count.unwrap_or(u64::MAX);
    let mut allowed = 0u64;
    let mut since_yield = (0u64, 0u64);
    let mut i = 0u64;
    while i < limit {
        if i.is_multiple_of(64)
            && let Some(deadline) = deadline
            && Instant::now() >= deadline
        {
            break;
        }
        // End-to-end window: wait for the slowest receiver.
        while i >= allowed {
            let advanced = progress.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let slowest = progress.slowest();
            allowed = slowest.saturating_add(window);
            if i < allowed {
                break;
            }
            if tokio::time::timeout(STALL, advanced).await.is_err() && progress.slowest() == slowest
            {
                return Err((
                    i,
                    refused,
                    format!("no receiver progress for {STALL:?} (at {slowest} objects)"),
                ));
            }
        }
        blob.put_u64(0, i);
        loop {
            match sender.broadcast(&blob, group) {
                Ok(receipt) => {
                    receipts.push_back(receipt);
                    break;
                }
                Err(Error::BufferFull { .. }) => match receipts.pop_front() {
                    Some(oldest) => {
                        refused += check(oldest.wait().await).map_err(|e| (i, refused, e))?
                    }
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                },
                Err(e) => return Err((i, refused, e.to_string())),
            }
        }
        i += 1;
        if receipts.len() > RECEIPT_WINDOW
            && let Some(oldest) = receipts.pop_front()
        {
            refused += check(oldest.wait().await).map_err(|e| (i, refused, e))?;
        }
        since_yield.0 += 1;
        since_yield.1 += size as u64;
        if since_yield.0 >= YIELD_OBJECTS || since_yield.1 >= YIELD_BYTES {
            since_yield = (0, 0);
            tokio::task::yield_now().await;
        }
    }
    // The last receipts: everything sent is confirmed (or refused).
    for receipt in receipts {
        refused += check(receipt.wait().await).map_err(|e| (i, refused, e))?;
    }
    Ok((i, refused))
}

/// The stalled members read again: an endpoint that does not read cannot see that the relay
/// closed its connection, so it learns only now. Returns how many were disconnected (each at
/// most once is seen: the reconnect that follows is not waited for).
async fn resume(stalled: &Stalled) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    for (ep, watch) in stalled {
        while watch.counts().0 == 0 && Instant::now() < deadline {
            let _ = ep
                .receive_all(Wait::Timeout(Duration::from_millis(50)))
                .await;
        }
    }
    stalled.iter().map(|(_, w)| w.counts().0).sum()
}

/// 0 when confirmed, 1 when refused; an error when the endpoint gave up.
fn check(r: std::result::Result<(), PublishError>) -> std::result::Result<u64, String> {
    match r {
        Ok(()) => Ok(0),
        Err(PublishError::Rejected(_)) => Ok(1),
        Err(e) => Err(e.to_string()),
    }
}

async fn receive(ep: BenchEndpoint, index: usize, progress: Arc<Progress>) -> ReceiverReport {
    let mut report = ReceiverReport {
        received: 0,
        bytes: 0,
        out_of_order: 0,
        duplicates: 0,
        last_at: None,
        error: None,
    };
    let mut next = 0u64;
    let mut last_progress = Instant::now();
    loop {
        let sent = progress.sent_final.load(Ordering::Acquire);
        if report.received >= sent {
            return report;
        }
        if sent != u64::MAX && last_progress.elapsed() > STALL {
            return report;
        }
        match ep
            .receive_all(Wait::Timeout(Duration::from_millis(100)))
            .await
        {
            Ok(items) if items.is_empty() => {}
            Ok(items) => {
                let now = Instant::now();
                last_progress = now;
                report.last_at = Some(now);
                for item in &items {
                    let bytes = &item.value.0;
                    report.bytes += bytes.len() as u64;
                    if let Some(seq) = Blob::get_u64(bytes, 0) {
                        if seq < next {
                            report.duplicates += 1;
                        } else {
                            if seq > next {
                                report.out_of_order += 1;
                            }
                            next = seq + 1;
                        }
                    }
                }
                report.received += items.len() as u64;
                progress.received[index].store(report.received, Ordering::Release);
                progress.advanced.notify_one();
            }
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        }
    }
}
