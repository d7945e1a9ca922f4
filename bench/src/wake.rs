//! `wake`: what it costs this machine to wake a sleeping thread, the floor under every round
//! trip. Two threads ping-pong one byte over a pair of Unix sockets, first sleeping in `read`
//! between turns, then spinning on non-blocking reads. No TLS, no tlsro: the difference between
//! the two is what busy polling can win back.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use clap::Args;

use crate::common::{Outcome, Result, Table, thousands};
use crate::lat::Percentiles;

/// `wake` options.
#[derive(Debug, Clone, Args)]
pub struct WakeArgs {
    /// Round trips per mode.
    #[arg(long, default_value_t = 20_000, value_parser = crate::common::at_least_one_u64)]
    pub rounds: u64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One byte there and back `rounds` times; the samples in nanoseconds.
fn ping_pong(rounds: u64, spin: bool) -> std::io::Result<Vec<u64>> {
    let (mut a, mut a_far) = UnixStream::pair()?;
    let (mut b_far, mut b) = UnixStream::pair()?;
    if spin {
        a_far.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
    }
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        for _ in 0..rounds {
            read_one(&mut a_far, &mut byte, spin)?;
            b_far.write_all(&byte)?;
        }
        Ok(())
    });
    let mut samples = Vec::with_capacity(rounds as usize);
    let mut byte = [7u8; 1];
    for _ in 0..rounds {
        let t0 = Instant::now();
        a.write_all(&byte)?;
        read_one(&mut b, &mut byte, spin)?;
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    echo.join()
        .map_err(|_| std::io::Error::other("the echo thread panicked"))??;
    Ok(samples)
}

fn read_one(s: &mut UnixStream, byte: &mut [u8; 1], spin: bool) -> std::io::Result<()> {
    loop {
        match s.read(byte) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(ErrorKind::UnexpectedEof.into()),
            Err(e) if spin && e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
}

/// Runs `wake` (on a blocking thread: it does blocking I/O).
pub async fn run(args: &WakeArgs) -> Result<Outcome> {
    let rounds = args.rounds.max(1);
    let (sleeping, spinning) = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((ping_pong(rounds, false)?, ping_pong(rounds, true)?))
    })
    .await??;
    let mut table = Table::new(
        format!(
            "wake: one byte ping-pong between two threads over Unix sockets, {} round trips per mode",
            thousands(rounds as f64)
        ),
        &["mode", "p50 µs", "p99 µs", "max µs"],
    );
    let mut json = serde_json::json!({"bench": "wake", "rounds": rounds, "lost": 0});
    for (mode, mut samples) in [("sleeping", sleeping), ("spinning", spinning)] {
        let p = Percentiles::of(&mut samples);
        table.row(vec![
            mode.to_owned(),
            format!("{:.1}", p.p50),
            format!("{:.1}", p.p99),
            format!("{:.1}", p.max),
        ]);
        json[format!("{mode}_p50_us")] = p.p50.into();
        json[format!("{mode}_p99_us")] = p.p99.into();
    }
    Ok(Outcome {
        json,
        table,
        problems: Vec::new(),
    })
}
