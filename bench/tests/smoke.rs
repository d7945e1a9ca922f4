//! Smoke test of `tlsro-bench`: every subcommand runs with tiny counts, prints one JSON line per
//! result that parses, and loses nothing. The figures themselves are not checked (timed tests
//! on a shared machine are noise); `cargo run --release -p tlsro-bench -- all` measures.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `tlsro-bench ARGS --json`; returns the JSON objects it printed.
fn bench(args: &[&str]) -> Vec<serde_json::Value> {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tlsro-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("tlsro-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tlsro-bench {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "tlsro-bench {args:?} took {:?}",
        start.elapsed()
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    assert!(
        !results.is_empty(),
        "no result from {args:?}; stderr:\n{stderr}"
    );
    for r in &results {
        assert_eq!(r["lost"].as_u64(), Some(0), "{args:?} lost something: {r}");
    }
    results
}

fn one(args: &[&str], name: &str) -> serde_json::Value {
    let mut results = bench(args);
    assert_eq!(results.len(), 1, "{results:?}");
    let r = results.remove(0);
    assert_eq!(r["bench"], name, "{r}");
    r
}

#[test]
fn thr_plain_and_tls() {
    let r = one(&["thr", "--plain", "--count", "2000"], "thr");
    assert_eq!(r["received"].as_u64(), Some(2000), "{r}");
    assert_eq!(r["security"], "plain");
    let r = one(
        &["thr", "--count", "100", "--members", "2", "--size", "64KiB"],
        "thr",
    );
    assert_eq!(r["received"].as_u64(), Some(200), "{r}");
    assert_eq!(r["security"], "TLS");
    assert!(r["mb_per_s"].as_f64().unwrap() > 0.0, "{r}");
}

/// A member that never reads: the others get everything, and the relay (in a process of its
/// own) has its memory read. (Whether the stalled one is closed as a slow consumer depends on
/// volume: the integration tests check that rule.)
#[test]
fn thr_with_a_stalled_member() {
    let r = one(
        &[
            "thr",
            "--count",
            "100",
            "--members",
            "2",
            "--stalled",
            "1",
            "--size",
            "64KiB",
            "--relay-process",
        ],
        "thr",
    );
    assert_eq!(r["received"].as_u64(), Some(200), "{r}");
    assert_eq!(r["stalled"].as_u64(), Some(1), "{r}");
    assert!(r["relay_peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn queue_splits_and_loses_nothing() {
    let r = one(
        &[
            "queue",
            "--count",
            "2000",
            "--consumers",
            "2",
            "--window",
            "64",
        ],
        "queue",
    );
    assert_eq!(r["received"].as_u64(), Some(2000), "{r}");
    assert_eq!(r["duplicates"].as_u64(), Some(0), "{r}");
    let split: Vec<u64> = r["split"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(split.len(), 2);
    assert_eq!(split.iter().sum::<u64>(), 2000);
}

#[test]
fn lat_reports_percentiles() {
    for mode in ["broadcast", "produce"] {
        let r = one(
            &["lat", "--rounds", "50", "--warmup", "5", "--mode", mode],
            "lat",
        );
        assert_eq!(r["rounds"].as_u64(), Some(50), "{r}");
        let p50 = r["p50_us"].as_f64().unwrap();
        let max = r["max_us"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= max, "{r}");
    }
}

#[test]
fn raw_moves_bytes() {
    let r = one(&["raw", "--duration", "200ms"], "raw");
    assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn conns_reads_relay_memory() {
    let r = one(&["conns", "--count", "20", "--idle", "100ms"], "conns");
    assert_eq!(r["connected"].as_u64(), Some(20), "{r}");
    assert!(r["relay_rss_after"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn lat_with_busy_polling_and_a_relay_process() {
    let r = one(
        &[
            "--busy-poll",
            "200us",
            "lat",
            "--relay-process",
            "--rounds",
            "50",
            "--warmup",
            "5",
        ],
        "lat",
    );
    assert_eq!(r["rounds"].as_u64(), Some(50), "{r}");
    assert_eq!(r["busy_poll_us"].as_u64(), Some(200), "{r}");
    assert_eq!(r["relay_process"].as_bool(), Some(true), "{r}");
}

#[test]
fn wake_measures_both_modes() {
    let r = one(&["wake", "--rounds", "200"], "wake");
    for key in ["sleeping_p50_us", "spinning_p50_us"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// A size past what a frame can carry is refused with a message, not a panic.
#[test]
fn a_huge_size_is_refused_before_anything_runs() {
    let stderr = refused(&["thr", "--plain", "--count", "1", "--size", "99999999999GiB"]);
    assert!(stderr.contains("too large"), "{stderr}");
}

/// Counts and run lengths of zero would measure nothing (a table of zeros) or quietly become 1.
#[test]
fn zero_counts_and_run_lengths_are_refused() {
    for args in [
        &["thr", "--members", "0"][..],
        &["thr", "--count", "0"],
        &["thr", "--duration", "0s"],
        &["queue", "--consumers", "0"],
        &["queue", "--window", "0"],
        &["lat", "--rounds", "0"],
        &["raw", "--duration", "0ms"],
        &["--threads", "0", "thr"],
    ] {
        let stderr = refused(args);
        assert!(
            stderr.contains("at least 1")
                || stderr.contains("longer than 0")
                || stderr.contains("0 is not in 1.."),
            "{args:?}: {stderr}"
        );
    }
}

/// Runs the bench with `args`, expects clap's refusal (exit 2, no panic), returns stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tlsro-bench"))
        .args(args)
        .output()
        .expect("tlsro-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

/// `--relay` without `--credentials` looks where `tlsro-relay run` keeps its credentials by
/// default, as the endpoint example does, and says so when nothing is there.
#[test]
fn an_external_relay_defaults_to_the_relays_credentials_directory() {
    let data = std::env::temp_dir().join(format!("tlsro-bench-smoke-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_tlsro-bench"))
        .args(["lat", "--relay", "127.0.0.1:9", "--rounds", "1"])
        .env("XDG_DATA_HOME", &data)
        .env_remove("TLSRO_PASSWORD")
        .output()
        .expect("tlsro-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&*data.join("tlsro").to_string_lossy()) && stderr.contains("--credentials"),
        "{stderr}"
    );
}
