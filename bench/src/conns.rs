//! `conns`: N endpoints connect to a relay running in its own process and sit idle; the
//! connection rate and the relay's memory per connection (VmRSS from /proc/PID/status, before
//! and after).
//!
//! The relay process is this executable again (the hidden `relay` subcommand, which is the
//! relay library behind the same options as `tlsro-relay run`), or with `--relay-bin` the
//! `tlsro-relay` binary itself. With `--relay ADDR` the relay is external and its memory is
//! read only when `--relay-pid` says which process it is.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Args;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::common::at_least_one;
use crate::common::{
    BenchEndpoint, CommonArgs, Creds, Outcome, PASSWORD_ENV, Result, Setup, Table, parse_duration,
    raise_nofile, rate, thousands, unique_name,
};
use crate::lat::Percentiles;

/// `conns` options.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    /// Endpoints to connect.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub count: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    pub parallel: usize,
    /// How long the endpoints sit idle before the relay's memory is read again.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Run the `tlsro-relay` binary (PATH, or `auto`: next to this executable) instead of this
    /// executable's built-in relay.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "auto")]
    pub relay_bin: Option<PathBuf>,
    /// With --relay: the external relay's process id, to read its memory.
    #[arg(long, value_name = "PID", requires = "relay")]
    pub relay_pid: Option<u32>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A relay in a child process; killed when dropped.
pub struct RelayProcess {
    child: Child,
    /// Where it listens.
    pub addr: String,
    _config: tempfile::TempDir,
}

impl RelayProcess {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a relay process for `creds` allowing `max_connections`, and waits for its
/// `listening on ADDR` line.
pub fn spawn_relay(
    creds: &Creds,
    max_connections: usize,
    relay_bin: Option<&Path>,
) -> Result<RelayProcess> {
    let config = tempfile::Builder::new()
        .prefix("tlsro-bench-relay-")
        .tempdir()?;
    let config_file = config.path().join("relay.toml");
    let mut toml = format!(
        "max_connections = {max_connections}\nmax_sessions = {}\n",
        max_connections * 2
    );
    if let Some(window) = crate::common::busy_poll() {
        toml.push_str(&format!(
            "busy_poll = \"{}us\"\n",
            window.as_micros().max(1)
        ));
    }
    std::fs::write(&config_file, toml)?;
    let mut cmd = match relay_bin {
        None => {
            let mut c = Command::new(std::env::current_exe()?);
            c.arg("relay");
            c
        }
        Some(path) => {
            let path = if path == Path::new("auto") {
                let exe = std::env::current_exe()?;
                let dir = exe.parent().ok_or("the executable has no directory")?;
                dir.join(format!("tlsro-relay{}", std::env::consts::EXE_SUFFIX))
            } else {
                path.to_owned()
            };
            if !path.exists() {
                return Err(format!(
                    "{} does not exist: build it with `cargo build --release -p tlsro-relay` \
                     (or leave out --relay-bin to use this executable's built-in relay)",
                    path.display()
                )
                .into());
            }
            let mut c = Command::new(path);
            c.arg("run");
            c
        }
    };
    cmd.arg("--listen").arg("127.0.0.1:0");
    cmd.arg("--config").arg(&config_file);
    if creds.tls {
        cmd.arg("--credentials").arg(creds.dir()?);
    } else {
        cmd.arg("--plain");
    }
    cmd.env(PASSWORD_ENV, String::from_utf8(creds.password.clone())?)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let mut process = RelayProcess {
        child,
        addr: String::new(),
        _config: config,
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => process.addr = addr,
        Err(_) => {
            let status = process.child.try_wait()?;
            return Err(format!(
                "the relay process did not say `listening on ADDR` within 30 s (exit status: {status:?})"
            )
            .into());
        }
    }
    Ok(process)
}

/// VmRSS of process `pid` in bytes (`None` when unreadable).
pub fn rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Follows a process's VmRSS while a benchmark runs: the peak and the last reading.
pub struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    pid: String,
}

impl RssSampler {
    /// How often the memory is read.
    const EVERY: Duration = Duration::from_millis(20);

    /// Starts reading the memory of process `pid` every 20 ms.
    pub fn start(pid: u32) -> RssSampler {
        use std::sync::atomic::Ordering;
        let pid = pid.to_string();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (p, id) = (peak.clone(), pid.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::EVERY);
            loop {
                tick.tick().await;
                if let Some(rss) = rss_of(&id) {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
            }
        });
        RssSampler { peak, task, pid }
    }

    /// Stops; returns (peak, now) in bytes.
    pub fn finish(self) -> (u64, u64) {
        self.task.abort();
        let now = rss_of(&self.pid).unwrap_or(0);
        let peak = self
            .peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(now);
        (peak, now)
    }
}

/// Runs `conns`.
pub async fn run(common: &CommonArgs, creds: &Creds, args: &ConnsArgs) -> Result<Outcome> {
    let count = args.count;
    let limit = raise_nofile(count as u64 + 512);
    if limit < count as u64 + 64 {
        return Err(format!(
            "RLIMIT_NOFILE is {limit} and cannot be raised to {} for {count} connections \
             (raise the hard limit: ulimit -Hn)",
            count + 512
        )
        .into());
    }

    let (process, addr, pid) = match &common.relay {
        Some(addr) => (None, addr.clone(), args.relay_pid.map(|p| p.to_string())),
        None => {
            let p = spawn_relay(creds, count + 64, args.relay_bin.as_deref())?;
            let addr = p.addr.clone();
            let pid = p.pid().to_string();
            (Some(p), addr, Some(pid))
        }
    };
    let setup = Setup::external(addr.clone(), creds);

    // The relay settles before the first reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay_before = pid.as_deref().and_then(rss_of);
    let self_before = rss_of("self");

    // What every endpoint pays before it dials: PBKDF2 of the password.
    let t = std::time::Instant::now();
    let _ = tlsro_proto::auth::AuthKey::derive(&creds.password);
    let pbkdf2_ms = t.elapsed().as_secs_f64() * 1000.0;

    let group = unique_name("conns");
    let start = Instant::now();
    let mut endpoints: Vec<BenchEndpoint> = Vec::with_capacity(count);
    let mut connect_ns: Vec<u64> = Vec::with_capacity(count);
    let mut failures: Vec<String> = Vec::new();
    let mut set = JoinSet::new();
    let mut launched = 0usize;
    let parallel = args.parallel.max(1);
    while launched < count || !set.is_empty() {
        while launched < count && set.len() < parallel {
            let connector = setup.connector.clone();
            let group = group.clone();
            set.spawn(async move {
                let t0 = Instant::now();
                let ep = connector.endpoint(&[group.as_str()]).await;
                (ep, t0.elapsed())
            });
            launched += 1;
        }
        if let Some(done) = set.join_next().await {
            match done {
                Ok((Ok(ep), took)) => {
                    endpoints.push(ep);
                    connect_ns.push(took.as_nanos() as u64);
                }
                Ok((Err(e), _)) => failures.push(e.to_string()),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let connected = endpoints.len();

    tokio::time::sleep(args.idle).await;
    let relay_after = pid.as_deref().and_then(rss_of);
    let self_after = rss_of("self");
    let still_up = endpoints
        .iter()
        .filter(|e| matches!(e.status(), tlsro::Status::Connected))
        .count();

    let per_conn = match (relay_before, relay_after) {
        (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) as f64 / connected as f64),
        _ => None,
    };
    let per_endpoint = match (self_before, self_after) {
        (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) as f64 / connected as f64),
        _ => None,
    };
    drop(endpoints);
    drop(process);

    let p = Percentiles::of(&mut connect_ns);
    let conn_rate = rate(connected as u64, connect_secs);
    let security = creds.security_name();
    let kib = |v: Option<u64>| {
        v.map(|b| format!("{:.0}", b as f64 / 1024.0))
            .unwrap_or("n/a".into())
    };
    let mut table = Table::new(
        format!(
            "conns: {} idle endpoints on a relay in its own process ({security}, {parallel} connects in flight)",
            thousands(count as f64)
        ),
        &[
            "connected",
            "connects/s",
            "connect p50 ms",
            "connect p99 ms",
            "relay RSS before KiB",
            "relay RSS after KiB",
            "relay KiB/conn",
            "bench KiB/endpoint",
        ],
    );
    table.row(vec![
        thousands(connected as f64),
        thousands(conn_rate),
        format!("{:.1}", p.p50 / 1000.0),
        format!("{:.1}", p.p99 / 1000.0),
        kib(relay_before),
        kib(relay_after),
        per_conn
            .map(|v| format!("{:.1}", v / 1024.0))
            .unwrap_or("n/a".into()),
        per_endpoint
            .map(|v| format!("{:.1}", v / 1024.0))
            .unwrap_or("n/a".into()),
    ]);
    let mut problems = Vec::new();
    if connected < count {
        problems.push(format!(
            "only {connected} of {count} endpoints connected; first error: {}",
            failures.first().map(String::as_str).unwrap_or("?")
        ));
    }
    if still_up < connected {
        problems.push(format!(
            "{} endpoints were no longer connected after sitting idle",
            connected - still_up
        ));
    }
    let json = serde_json::json!({
        "bench": "conns",
        "security": security,
        "count": count,
        "connected": connected,
        "still_connected": still_up,
        "parallel": parallel,
        "seconds": connect_secs,
        "connects_per_s": conn_rate,
        "connect_p50_ms": p.p50 / 1000.0,
        "connect_p99_ms": p.p99 / 1000.0,
        "endpoint_pbkdf2_ms": pbkdf2_ms,
        "relay_rss_before": relay_before,
        "relay_rss_after": relay_after,
        "relay_bytes_per_conn": per_conn,
        "bench_bytes_per_endpoint": per_endpoint,
        "lost": count - connected,
    });
    Ok(Outcome {
        json,
        table,
        problems,
    })
}

/// The hidden `relay` subcommand: the relay library with `tlsro-relay run`'s options, for
/// `conns`. Stops when its standard input closes (the benchmark ended or died).
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Credentials directory (relay.pem, relay.key).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Plain TCP.
    #[arg(long)]
    pub plain: bool,
    /// A `tlsro-relay` configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the built-in relay until stdin closes.
pub fn relay_main(args: RelayArgs) -> Result<()> {
    let password = std::env::var(PASSWORD_ENV)
        .map_err(|_| format!("the relay needs its password in ${PASSWORD_ENV}"))?;
    let file = match &args.config {
        Some(path) => tlsro_relay::config::RelayFileConfig::load(path)?,
        None => Default::default(),
    };
    // As `tlsro-relay run` does: busy polling comes with a single-threaded runtime.
    let runtime = if file.busy_poll.is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let builder = file
            .apply(tlsro_relay::Relay::builder(password.into_bytes()))
            .listen(args.listen);
        let builder = match (&args.credentials, args.plain) {
            (_, true) => builder.plain(),
            (Some(dir), false) => builder.tls_from_dir(dir)?,
            (None, false) => return Err("--credentials DIR or --plain".into()),
        };
        let handle = builder.start().await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}", handle.local_addr())?;
            out.flush()?;
        }
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                line.clear();
            }
        })
        .await;
        handle.stop().await;
        Ok::<_, crate::common::BoxError>(())
    })
}
