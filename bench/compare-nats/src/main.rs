//! nats-server vs tlsro on this machine: the same workloads, TLS 1.3 on 127.0.0.1, one run,
//! side by side with the ratio. Started by `run.sh`, which installs and starts nats-server.
//!
//! ```text
//! tlsro-compare-nats --nats tls://127.0.0.1:PORT --token T --ca ca.pem --tlsro-bench PATH
//!                    [--duration SECS] [--rounds R] [--warmup W] [--json]
//! ```
//!
//! The NATS side is measured the way `tlsro-bench` measures tlsro, and tlsro's relay runs in a
//! process of its own as nats-server does (`--relay-process`), so the two columns mean the same
//! thing:
//! - `thr`: one publisher connection → one subscriber connection, objects of 100 B or 1 MiB that
//!   carry their sequence number; objects/s and MB/s at the subscriber, from the first publish
//!   to the last object received. The publisher keeps at most 32 MiB (and at most 32,768
//!   messages, under the client's subscription buffer) ahead of the subscriber, as
//!   `tlsro-bench thr` does, so that nothing is lost; anything missing is counted.
//! - `queue`: one publisher → four subscribers of one queue group (NATS's queue groups are
//!   at-most-once: no acknowledgements; tlsro's produce/notify acknowledges every object);
//!   objects/s over all four.
//! - `lat`: request → reply through the server, one at a time (NATS request/reply; tlsro
//!   `lat`: A broadcasts to B's group, B answers to A's); p50 / p99 after a warm-up.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions};
use bytes::Bytes;
use futures_util::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Bytes the publisher may be ahead of the subscriber.
const INFLIGHT_BYTES: u64 = 32 << 20;
/// ... and messages (async-nats buffers this many per subscription before dropping).
const INFLIGHT_MESSAGES: u64 = 32_768;
/// How long a receiver may see nothing new before the rest counts as lost.
const STALL: Duration = Duration::from_secs(5);

struct Args {
    nats: String,
    nats_version: String,
    token: String,
    ca: String,
    tlsro_bench: String,
    duration: Duration,
    rounds: usize,
    warmup: usize,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nats: String::new(),
        nats_version: "?".to_owned(),
        token: String::new(),
        ca: String::new(),
        tlsro_bench: String::new(),
        duration: Duration::from_secs(5),
        rounds: 10_000,
        warmup: 1_000,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nats" => args.nats = value()?,
            "--nats-version" => args.nats_version = value()?,
            "--token" => args.token = value()?,
            "--ca" => args.ca = value()?,
            "--tlsro-bench" => args.tlsro_bench = value()?,
            "--duration" => args.duration = Duration::from_secs_f64(value()?.parse()?),
            "--rounds" => args.rounds = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--json" => args.json = true,
            other => return Err(format!("unknown option {other} (see run.sh)").into()),
        }
    }
    for (name, v) in [
        ("--nats", &args.nats),
        ("--ca", &args.ca),
        ("--tlsro-bench", &args.tlsro_bench),
    ] {
        if v.is_empty() {
            return Err(format!("{name} is required (run this through run.sh)").into());
        }
    }
    Ok(args)
}

async fn connect(args: &Args) -> Result<Client> {
    let client = ConnectOptions::new()
        .token(args.token.clone())
        .add_root_certificates(args.ca.clone().into())
        .require_tls(true)
        .subscription_capacity(INFLIGHT_MESSAGES as usize * 2)
        .connect(&args.nats)
        .await?;
    Ok(client)
}

/// One workload's result on one system.
#[derive(Default, Clone)]
struct Figures {
    objects_per_s: f64,
    mb_per_s: f64,
    lost: u64,
    count: u64,
    p50_us: f64,
    p99_us: f64,
}

fn payload(size: usize, seq: u64) -> Bytes {
    let mut v: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    if let Some(head) = v.get_mut(..8) {
        head.copy_from_slice(&seq.to_le_bytes());
    }
    Bytes::from(v)
}

fn seq_of(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(..8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// What one subscriber saw.
#[derive(Default)]
struct Report {
    count: u64,
    bytes: u64,
    last: Option<Instant>,
    /// The sequence number expected next.
    next: Option<u64>,
    duplicates: u64,
    out_of_order: u64,
}

/// One publisher → `consumers` subscribers (a queue group when `queue`), for `duration`.
async fn nats_flow(
    args: &Args,
    size: usize,
    consumers: usize,
    queue: bool,
    subject: &str,
) -> Result<Figures> {
    let received = Arc::new(AtomicU64::new(0));
    // The end marker goes to a plain subject every member also subscribes to: in a queue group
    // only one member would get it on the data subject.
    let end_subject = format!("{subject}.end");
    let mut subs = Vec::new();
    for _ in 0..consumers {
        let client = connect(args).await?;
        let data = if queue {
            client
                .queue_subscribe(subject.to_owned(), "workers".to_owned())
                .await?
        } else {
            client.subscribe(subject.to_owned()).await?
        };
        let end = client.subscribe(end_subject.clone()).await?;
        client.flush().await?;
        let received = received.clone();
        subs.push(tokio::spawn(async move {
            let _keep = client;
            let mut report = Report::default();
            let mut stream = futures_util::stream::select(data, end);
            loop {
                match tokio::time::timeout(STALL, stream.next()).await {
                    Ok(Some(msg)) => {
                        let Some(seq) = seq_of(&msg.payload) else {
                            continue;
                        };
                        if seq == u64::MAX {
                            return report;
                        }
                        // Numbered objects: order and duplicates are checked as tlsro-bench
                        // checks them (in a queue group each member sees a rising subsequence).
                        match report.next {
                            Some(next) if seq < next => report.duplicates += 1,
                            Some(next) if seq > next && !queue => report.out_of_order += 1,
                            _ => {}
                        }
                        report.next = Some(report.next.map_or(seq + 1, |n| n.max(seq + 1)));
                        report.count += 1;
                        report.bytes += msg.payload.len() as u64;
                        report.last = Some(Instant::now());
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) | Err(_) => return report,
                }
            }
        }));
    }
    let publisher = connect(args).await?;
    let window = (INFLIGHT_BYTES / size as u64).clamp(4, INFLIGHT_MESSAGES);
    let template = payload(size, 0);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < args.duration {
        for _ in 0..64 {
            // The window: one subscriber gets each message in a queue group, every one
            // otherwise.
            let behind = (sent * if queue { 1 } else { consumers as u64 })
                .saturating_sub(received.load(Ordering::Relaxed));
            if behind >= window {
                publisher.flush().await?;
                tokio::time::sleep(Duration::from_micros(50)).await;
                break;
            }
            let mut msg = template.to_vec();
            msg[..8.min(size)].copy_from_slice(&sent.to_le_bytes()[..8.min(size)]);
            publisher.publish(subject.to_owned(), msg.into()).await?;
            sent += 1;
        }
    }
    publisher.flush().await?;
    // NATS keeps one publisher's order per subject, not across subjects: wait until the
    // subscribers have everything (or stalled) before the end marker.
    let expected = if queue { sent } else { sent * consumers as u64 };
    let waiting = Instant::now();
    while received.load(Ordering::Relaxed) < expected && waiting.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.publish(end_subject, payload(8, u64::MAX)).await?;
    publisher.flush().await?;
    let (mut count, mut bytes, mut last, mut disorder) = (0u64, 0u64, start, 0u64);
    for s in subs {
        let r = s.await?;
        count += r.count;
        bytes += r.bytes;
        disorder += r.duplicates + r.out_of_order;
        if let Some(l) = r.last {
            last = last.max(l);
        }
    }
    if disorder > 0 {
        eprintln!("!!! NATS delivered {disorder} objects out of order or twice");
    }
    let secs = (last - start).as_secs_f64();
    Ok(Figures {
        objects_per_s: count as f64 / secs,
        mb_per_s: bytes as f64 / 1e6 / secs,
        lost: expected.saturating_sub(count),
        count,
        ..Figures::default()
    })
}

/// Request → reply through nats-server, one at a time.
async fn nats_lat(args: &Args, size: usize) -> Result<Figures> {
    let responder = connect(args).await?;
    let mut requests = responder.subscribe("bench.lat").await?;
    responder.flush().await?;
    let answering = tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                if responder.publish(reply, msg.payload).await.is_err() {
                    return;
                }
                let _ = responder.flush().await;
            }
        }
    });
    let requester = connect(args).await?;
    let body = payload(size, 0);
    let mut rtts = Vec::with_capacity(args.rounds);
    for i in 0..args.warmup + args.rounds {
        let t0 = Instant::now();
        requester.request("bench.lat", body.clone()).await?;
        if i >= args.warmup {
            rtts.push(t0.elapsed());
        }
    }
    answering.abort();
    rtts.sort();
    // Nearest rank, as tlsro-bench computes its percentiles.
    let at = |q: f64| {
        let rank = ((q * rtts.len() as f64).ceil() as usize).clamp(1, rtts.len().max(1));
        rtts.get(rank - 1)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    };
    Ok(Figures {
        p50_us: at(0.5),
        p99_us: at(0.99),
        count: rtts.len() as u64,
        ..Figures::default()
    })
}

/// Runs `tlsro-bench ARGS --json` and reads the figures of its one result.
fn tlsro(args: &Args, bench_args: &[&str]) -> Result<Figures> {
    // The relay in a process of its own, as nats-server is.
    let out = Command::new(&args.tlsro_bench)
        .args(bench_args)
        .args(["--relay-process", "--json"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| {
            format!(
                "tlsro-bench {bench_args:?} printed no result: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(Figures {
        objects_per_s: num("objects_per_s"),
        mb_per_s: num("mb_per_s"),
        lost: v.get("lost").and_then(|x| x.as_u64()).unwrap_or(0),
        count: v
            .get("received")
            .or(v.get("rounds"))
            .and_then(|x| x.as_u64())
            .unwrap_or(0),
        p50_us: num("p50_us"),
        p99_us: num("p99_us"),
    })
}

fn thousands(value: f64) -> String {
    let digits = (value.round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A row of the table: (workload, unit, nats, tlsro, higher is better, lost nats/tlsro).
struct Row {
    workload: &'static str,
    unit: &'static str,
    nats: f64,
    tlsro: f64,
    higher_better: bool,
    lost: (u64, u64),
    count: (u64, u64),
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let secs = format!("{}s", args.duration.as_secs_f64());
    let (rounds, warmup) = (args.rounds.to_string(), args.warmup.to_string());
    let mut rows = Vec::new();

    let thr = |size: &'static str| ["thr", "--size", size, "--duration", &secs].map(str::to_owned);
    for (workload, bytes, size) in [
        ("thr 100 B 1 -> 1", 100usize, "100"),
        ("thr 1 MiB 1 -> 1", 1 << 20, "1MiB"),
    ] {
        eprintln!("... {workload}: NATS");
        let n = nats_flow(&args, bytes, 1, false, "bench.thr").await?;
        eprintln!("... {workload}: tlsro");
        let a = thr(size);
        let t = tlsro(&args, &a.iter().map(String::as_str).collect::<Vec<_>>())?;
        let (unit, nats, tlsro) = if bytes > 1000 {
            ("MB/s", n.mb_per_s, t.mb_per_s)
        } else {
            ("objects/s", n.objects_per_s, t.objects_per_s)
        };
        rows.push(Row {
            workload,
            unit,
            nats,
            tlsro,
            higher_better: true,
            lost: (n.lost, t.lost),
            count: (n.count, t.count),
        });
    }

    eprintln!("... queue 100 B 1 -> 4: NATS (queue group, at-most-once)");
    let n = nats_flow(&args, 100, 4, true, "bench.queue").await?;
    eprintln!("... queue 100 B 1 -> 4: tlsro (produce/notify, window 256, acknowledged)");
    let t = tlsro(
        &args,
        &[
            "queue",
            "--consumers",
            "4",
            "--window",
            "256",
            "--duration",
            &secs,
        ],
    )?;
    rows.push(Row {
        workload: "queue 100 B 1 -> 4",
        unit: "objects/s",
        nats: n.objects_per_s,
        tlsro: t.objects_per_s,
        higher_better: true,
        lost: (n.lost, t.lost),
        count: (n.count, t.count),
    });

    eprintln!("... lat 100 B: NATS (request/reply)");
    let n = nats_lat(&args, 100).await?;
    eprintln!("... lat 100 B: tlsro");
    let t = tlsro(&args, &["lat", "--rounds", &rounds, "--warmup", &warmup])?;
    // tlsro's opt-in busy polling (README, "Latency: busy polling") against the same NATS run:
    // NATS has no such setting.
    eprintln!("... lat 100 B: tlsro with --busy-poll 200us");
    let b = tlsro(
        &args,
        &[
            "--busy-poll",
            "200us",
            "lat",
            "--rounds",
            &rounds,
            "--warmup",
            &warmup,
        ],
    )?;
    for (workload, nats, tlsro, run) in [
        ("lat 100 B p50", n.p50_us, t.p50_us, &t),
        ("lat 100 B p99", n.p99_us, t.p99_us, &t),
        ("lat 100 B p50, tlsro busy-polling", n.p50_us, b.p50_us, &b),
        ("lat 100 B p99, tlsro busy-polling", n.p99_us, b.p99_us, &b),
    ] {
        rows.push(Row {
            workload,
            unit: "µs",
            nats,
            tlsro,
            higher_better: false,
            lost: (0, run.lost),
            count: (n.count, run.count),
        });
    }

    print_rows(
        &rows,
        &format!("nats-server {}", args.nats_version),
        args.json,
    );
    Ok(())
}

fn print_rows(rows: &[Row], nats_name: &str, json: bool) {
    let fmt = |v: f64| {
        if v >= 1000.0 {
            thousands(v)
        } else {
            format!("{v:.1}")
        }
    };
    let header = [
        "workload",
        "unit",
        nats_name,
        "tlsro",
        "tlsro advantage",
        "lost (nats / tlsro)",
        "objects or rounds (nats / tlsro)",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let advantage = if r.higher_better {
            r.tlsro / r.nats
        } else {
            r.nats / r.tlsro
        };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": "compare-nats",
                    "workload": r.workload,
                    "unit": r.unit,
                    "nats": r.nats,
                    "tlsro": r.tlsro,
                    "tlsro_advantage": advantage,
                    "lost_nats": r.lost.0,
                    "lost_tlsro": r.lost.1,
                })
            );
        }
        table.push(vec![
            r.workload.to_owned(),
            r.unit.to_owned(),
            fmt(r.nats),
            fmt(r.tlsro),
            format!("{advantage:.2}x"),
            format!(
                "{} / {}",
                thousands(r.lost.0 as f64),
                thousands(r.lost.1 as f64)
            ),
            format!(
                "{} / {}",
                thousands(r.count.0 as f64),
                thousands(r.count.1 as f64)
            ),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (n, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                let pad = " ".repeat(w - cell.chars().count());
                if (2..=4).contains(&i) {
                    format!("{pad}{cell}")
                } else {
                    format!("{cell}{pad}")
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("{}", rule.join("  "));
        }
    }
}
