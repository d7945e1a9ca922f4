//! `lat`: round trips through the relay. A sends an object to B's group, B sends it back to A's
//! group; A times each round trip, one at a time.

use std::time::Duration;

use clap::{Args, ValueEnum};
use tlsro::Wait;
use tokio::time::Instant;

use crate::common::at_least_one_u64;
use crate::common::{
    BenchEndpoint, Blob, CommonArgs, Outcome, Result, Setup, Table, parse_size, size_name,
    thousands, unique_name,
};

/// How the objects travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `broadcast` both ways.
    Broadcast,
    /// `produce` both ways, each side with standing credit (`notify` once, up front).
    Produce,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Produce => "produce",
        }
    }
}

/// `lat` options.
#[derive(Debug, Clone, Args)]
pub struct LatArgs {
    /// Payload bytes per object.
    #[arg(long, default_value = "100", value_parser = parse_size)]
    pub size: u64,
    /// Timed round trips.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one_u64)]
    pub rounds: u64,
    /// Round trips before timing starts.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: u64,
    /// broadcast or produce (with standing credit).
    #[arg(long, value_enum, default_value_t = Mode::Broadcast)]
    pub mode: Mode,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Latency percentiles in microseconds.
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// From samples in nanoseconds (sorted in place).
    pub fn of(samples: &mut [u64]) -> Percentiles {
        samples.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] as f64 / 1000.0
        };
        let mean = if samples.is_empty() {
            0.0
        } else {
            samples.iter().map(|&s| s as f64).sum::<f64>() / samples.len() as f64 / 1000.0
        };
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
            mean,
        }
    }
}

/// Runs `lat` against `setup`.
pub async fn run(setup: &Setup<'_>, args: &LatArgs) -> Result<Outcome> {
    let ga = unique_name("lat-a");
    let gb = unique_name("lat-b");
    let a = setup.endpoint(&[ga.as_str()]).await?;
    let b = setup.endpoint(&[gb.as_str()]).await?;
    let total = args.warmup + args.rounds;
    if args.mode == Mode::Produce {
        let credit = total.min(i32::MAX as u64) as i32;
        a.notify(&ga, credit)?;
        b.notify(&gb, credit)?;
    }

    let echo = tokio::spawn(echo(b.clone(), ga.clone(), args.mode));
    let mut blob = Blob::filled(args.size as usize);
    let mut samples = Vec::with_capacity(args.rounds as usize);
    let mut failure = None;
    for round in 0..total {
        blob.put_u64(0, round);
        let t0 = Instant::now();
        let sent = match args.mode {
            Mode::Broadcast => a.broadcast(&blob, &gb),
            Mode::Produce => a.produce(&blob, &gb),
        };
        if let Err(e) = sent {
            failure = Some(format!("round {round}: sending failed: {e}"));
            break;
        }
        match a.pop(1, Wait::Timeout(Duration::from_secs(5))).await {
            Ok(got) if got.len() == 1 => {
                let elapsed = t0.elapsed();
                if args.size >= 8 && Blob::get_u64(&got[0].value.0, 0) != Some(round) {
                    failure = Some(format!("round {round}: a different object came back"));
                    break;
                }
                if round >= args.warmup {
                    samples.push(elapsed.as_nanos() as u64);
                }
            }
            Ok(_) => {
                failure = Some(format!("round {round}: no answer within 5 s"));
                break;
            }
            Err(e) => {
                failure = Some(format!("round {round}: {e}"));
                break;
            }
        }
    }
    let _ = a.stop().await;
    let _ = b.stop().await;
    echo.abort();

    let timed = samples.len() as u64;
    let p = Percentiles::of(&mut samples);
    let mut problems = Vec::new();
    if let Some(f) = failure {
        problems.push(format!("LOST: {f}"));
    }
    let busy_poll = crate::common::busy_poll().map(|w| w.as_micros() as u64);
    let json = serde_json::json!({
        "bench": "lat",
        "security": setup.creds.security_name(),
        "size": args.size,
        "mode": args.mode.name(),
        "rounds": timed,
        "warmup": args.warmup,
        "busy_poll_us": busy_poll,
        "relay_process": setup.relay_pid().is_some(),
        "p50_us": p.p50,
        "p90_us": p.p90,
        "p99_us": p.p99,
        "p999_us": p.p999,
        "max_us": p.max,
        "mean_us": p.mean,
        "lost": u64::from(!problems.is_empty()),
    });
    Ok(outcome(json, problems))
}

/// The outcome of a `lat` run from its JSON line (also used by `all` for a run it made in a
/// process of its own).
pub fn outcome(json: serde_json::Value, problems: Vec<String>) -> Outcome {
    let text = |key: &str| {
        json.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let num = |key: &str| json.get(key).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut setting = String::new();
    if let Some(us) = json.get("busy_poll_us").and_then(|v| v.as_u64()) {
        setting.push_str(&format!(", busy polling {us} µs"));
    }
    if json.get("relay_process").and_then(|v| v.as_bool()) == Some(true) {
        setting.push_str(", relay in its own process");
    }
    let mut table = Table::new(
        format!(
            "lat: round trip A → relay → B → relay → A ({}, {}, {}, {} rounds after {} warm-up{setting})",
            text("security"),
            size_name(num("size") as u64),
            text("mode"),
            thousands(num("rounds")),
            thousands(num("warmup"))
        ),
        &[
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "mean µs",
        ],
    );
    table.row(
        ["p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"]
            .iter()
            .map(|k| format!("{:.1}", num(k)))
            .collect(),
    );
    Outcome {
        json,
        table,
        problems,
    }
}

/// B: sends back everything it receives, until the endpoint stops.
async fn echo(b: BenchEndpoint, back_to: String, mode: Mode) {
    loop {
        let Ok(items) = b.receive_all(Wait::Forever).await else {
            return;
        };
        for item in items {
            let sent = match mode {
                Mode::Broadcast => b.broadcast(&item.value, &back_to),
                Mode::Produce => b.produce(&item.value, &back_to),
            };
            if sent.is_err() {
                return;
            }
        }
    }
}
