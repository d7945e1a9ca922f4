//! `tlsro-bench`: throughput, queue, latency, idle-connection and raw-TLS benchmarks of tlsro,
//! in the spirit of `nats bench` and Zenoh's `z_pub_thr` / `z_ping`.
//!
//! ```text
//! tlsro-bench thr   [--size 100|64KiB|1MiB] [--members K] [--count N | --duration D] [--inflight BYTES] [--stalled N]
//! tlsro-bench queue [--producers P] [--consumers C] [--size 100] [--window 256] [--count N | --duration D]
//! tlsro-bench lat   [--size 100] [--rounds R] [--warmup W] [--mode broadcast|produce]
//! tlsro-bench conns [--count N] [--parallel P] [--idle D] [--relay-bin [PATH]] [--relay-pid PID]
//! tlsro-bench raw   [--size WRITE] [--duration D]
//! tlsro-bench wake  [--rounds R]
//! tlsro-bench all   [--duration D] [--rounds R] [--warmup W] [--conns N] [--quick]
//! ```
//!
//! Every subcommand takes `--plain` (default: TLS 1.3 with throwaway credentials), `--relay ADDR`
//! (an external relay; then `--credentials DIR` and `$TLSRO_PASSWORD`) and `--json` (one JSON
//! object per line and per result). See `bench/README.md`.

mod all;
mod common;
mod conns;
mod lat;
mod queue;
mod raw;
mod thr;
mod wake;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::{Creds, Outcome, Result, Setup};

/// Benchmarks of tlsro: throughput, queues, latency, idle connections, and the raw TLS ceiling.
#[derive(Debug, Parser)]
#[command(name = "tlsro-bench", version, about, long_about = None)]
struct Cli {
    /// Worker threads of this process's tokio runtime (endpoints and the in-process relay)
    /// [default: one per CPU].
    #[arg(long, global = true, value_name = "N", value_parser = common::at_least_one)]
    threads: Option<usize>,
    /// Busy polling (e.g. 200us) for every endpoint and relay of the run: they spin this long
    /// after traffic instead of sleeping. This process then runs on one thread (a relay in its
    /// own process too) [default: off].
    #[arg(long, global = true, value_name = "DURATION", value_parser = common::parse_duration, conflicts_with = "threads")]
    busy_poll: Option<std::time::Duration>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One broadcaster → K members: objects/s and MB/s at the receivers, received vs sent.
    Thr(thr::ThrArgs),
    /// P producers → C consumers with produce/notify and acknowledgements.
    Queue(queue::QueueArgs),
    /// Round trips through the relay: p50 / p99 / p99.9 / max.
    Lat(lat::LatArgs),
    /// N idle endpoints on a relay in its own process: connection rate, relay memory per connection.
    Conns(conns::ConnsArgs),
    /// One rustls connection moving bulk data over loopback: the ceiling.
    Raw(raw::RawArgs),
    /// What waking a sleeping thread costs here: one-byte ping-pong, sleeping vs spinning.
    Wake(wake::WakeArgs),
    /// The target matrix of issue 4, with the targets next to the figures.
    All(all::AllArgs),
    /// The relay library as a process (used by `conns`).
    #[command(hide = true)]
    Relay(conns::RelayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Relay(args) = cli.command {
        return match conns::relay_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = match cli.busy_poll {
        Some(window) => {
            if let Err(e) = tlsro::busy_poll::check_window(window) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            common::set_busy_poll(window);
            tokio::runtime::Builder::new_current_thread()
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker thread, like the endpoints' tasks (`block_on` would run it on the main
    // thread, one more thread than `--threads` says).
    let result = runtime.block_on(async move {
        tokio::spawn(run(cli.command))
            .await
            .unwrap_or_else(|e| Err(format!("the benchmark panicked: {e}").into()))
    });
    match result {
        // Something lost, refused or disconnected: a distinct exit status for scripts.
        Ok(outcomes) if outcomes.iter().any(|o| !o.problems.is_empty()) => ExitCode::from(3),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<Vec<Outcome>> {
    let (outcome, json) = match command {
        Command::All(args) => return all::run(&args).await,
        Command::Thr(args) => {
            let creds = Creds::new(&args.common)?;
            let setup = Setup::new(&args.common, &creds).await?;
            let o = thr::run(&setup, &args).await;
            setup.finish().await;
            (o?, args.common.json)
        }
        Command::Queue(args) => {
            let creds = Creds::new(&args.common)?;
            let setup = Setup::new(&args.common, &creds).await?;
            let o = queue::run(&setup, &args).await;
            setup.finish().await;
            (o?, args.common.json)
        }
        Command::Lat(args) => {
            let creds = Creds::new(&args.common)?;
            let setup = Setup::new(&args.common, &creds).await?;
            let o = lat::run(&setup, &args).await;
            setup.finish().await;
            (o?, args.common.json)
        }
        Command::Conns(args) => {
            let creds = Creds::new(&args.common)?;
            (
                conns::run(&args.common, &creds, &args).await?,
                args.common.json,
            )
        }
        Command::Raw(args) => {
            let creds = Creds::without_relay(&args.common)?;
            (
                raw::run(&creds, args.size, args.duration).await?,
                args.common.json,
            )
        }
        Command::Wake(args) => (wake::run(&args).await?, args.json),
        Command::Relay(_) => unreachable!("handled before the runtime starts"),
    };
    outcome.print(json);
    Ok(vec![outcome])
}
