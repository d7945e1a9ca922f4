//! What every benchmark shares: the command-line options common to all, credentials, the relay
//! (in-process or external), the payload type, and the output (human tables or JSON lines).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tlsro::{CaSource, Endpoint, RawBytes, Security};
use tlsro_relay::{Relay, RelayHandle, RelayStats};

/// Errors of the benchmarks: a message for the user.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The benchmarks' result type.
pub type Result<T> = std::result::Result<T, BoxError>;

/// The environment variable holding the password of an external relay.
pub use tlsro::credentials::PASSWORD_ENV;

/// Options every benchmark takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Plain TCP instead of TLS 1.3.
    #[arg(long)]
    pub plain: bool,
    /// Use the relay already running at ADDR instead of starting one in this process (its
    /// password comes from $TLSRO_PASSWORD, else DIR/password of --credentials).
    #[arg(long, value_name = "ADDR")]
    pub relay: Option<String>,
    /// Start the relay in a process of its own (this executable's built-in relay; its pid is
    /// printed on stderr, e.g. for `perf record -p PID`) instead of in this process.
    #[arg(long, conflicts_with = "relay")]
    pub relay_process: bool,
    /// Credentials directory of the external relay (ca.pem; relay.pem and relay.key for `raw`)
    /// [default with --relay: the directory `tlsro-relay run` uses by default].
    #[arg(long, value_name = "DIR")]
    pub credentials: Option<PathBuf>,
    /// One JSON object per line and per result instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The busy-poll window of `--busy-poll`, for every endpoint and relay of this run.
static BUSY_POLL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets the busy-poll window of this run (once, before anything connects).
pub fn set_busy_poll(window: Duration) {
    let _ = BUSY_POLL.set(window);
}

/// The busy-poll window of this run, if `--busy-poll` was given.
pub fn busy_poll() -> Option<Duration> {
    BUSY_POLL.get().copied()
}

/// A count that must be at least 1 (`--members 0` would measure nothing, or quietly 1).
pub fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// [`at_least_one`] for 64-bit counts (rounds, objects).
pub fn at_least_one_u64(text: &str) -> std::result::Result<u64, String> {
    at_least_one(text).map(|n| n as u64)
}

/// A run length: [`parse_duration`], never zero (a zero run prints a table of zeros).
pub fn run_length(text: &str) -> std::result::Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("a run must last longer than 0".to_owned()),
        d => Ok(d),
    }
}

/// Parses `5`, `2.5s`, `500ms`, `200us`, `1m` as a duration (plain numbers are seconds).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 5, 2.5s, 500ms)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses `100`, `64KiB`, `1MiB`, `2MB`, `1k` as a number of bytes.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 100, 64KiB, 1MiB)"))?;
    let bytes = (value * scale).round();
    // Frame lengths are 32-bit: no object, write or window here can be larger.
    if bytes > f64::from(u32::MAX) {
        return Err(format!(
            "{text:?} is too large: a size must be below 4GiB (frame lengths are 32-bit)"
        ));
    }
    Ok(bytes as u64)
}

/// A payload: bytes carried as they are by [`RawBytes`], encoded and decoded in one copy.
///
/// `Vec<u8>` works with `RawBytes` too, but serde hands it over one byte at a time (a sequence
/// of `u8`); this newtype asks for a byte string instead, as a real application would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct BlobVisitor;
        impl Visitor<'_> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> std::result::Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> std::result::Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(BlobVisitor)
    }
}

impl Blob {
    /// `size` bytes of a fixed pattern (not all zeros, not compressible to nothing).
    pub fn filled(size: usize) -> Blob {
        Blob((0..size).map(|i| (i * 31 % 251) as u8).collect())
    }

    /// Writes `value` little-endian at `offset` when it fits.
    pub fn put_u64(&mut self, offset: usize, value: u64) {
        if let Some(slot) = self.0.get_mut(offset..offset + 8) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Reads the little-endian `u64` at `offset`, when the payload is long enough.
    pub fn get_u64(bytes: &[u8], offset: usize) -> Option<u64> {
        bytes
            .get(offset..offset + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
}

/// The endpoint type every benchmark uses.
pub type BenchEndpoint = Endpoint<Blob, RawBytes>;

/// A name no earlier run used, so that an external relay's retained values do not interfere.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = getrandom::u32().unwrap_or(0);
    format!("bench-{prefix}-{}-{n}-{r:08x}", std::process::id())
}

/// The credentials of a run: generated in a temporary directory, or those of an external
/// relay.
pub struct Creds {
    /// TLS (with `dir`) or plain.
    pub tls: bool,
    /// The credentials directory (`ca.pem`, and `relay.pem` / `relay.key` when generated).
    pub dir: Option<PathBuf>,
    /// The relay password.
    pub password: Vec<u8>,
    _tmp: Option<tempfile::TempDir>,
}

impl Creds {
    /// Throwaway credentials (TLS) or a random password (plain), or an external relay's.
    pub fn new(common: &CommonArgs) -> Result<Creds> {
        if common.relay.is_some() {
            return Creds::external(common);
        }
        let tmp = tempfile::Builder::new().prefix("tlsro-bench-").tempdir()?;
        let generated =
            tlsro::credentials::generate(&tlsro::credentials::GenerateOptions::new(tmp.path()))?;
        let password = tlsro::credentials::read_password(&generated.credentials.password())?;
        Ok(Creds {
            tls: !common.plain,
            dir: Some(tmp.path().to_owned()),
            password,
            _tmp: Some(tmp),
        })
    }

    /// For benchmarks without a relay (`raw`): `--credentials DIR` (relay.pem, relay.key and
    /// ca.pem) when given, else throwaway ones.
    pub fn without_relay(common: &CommonArgs) -> Result<Creds> {
        match &common.credentials {
            Some(dir) => Ok(Creds {
                tls: !common.plain,
                dir: Some(dir.clone()),
                password: Vec::new(),
                _tmp: None,
            }),
            None => Creds::new(&CommonArgs {
                relay: None,
                ..common.clone()
            }),
        }
    }

    fn external(common: &CommonArgs) -> Result<Creds> {
        // As the endpoint example does: without --credentials, the directory `tlsro-relay run`
        // uses by default (where it put development credentials).
        let dir = common
            .credentials
            .clone()
            .unwrap_or_else(tlsro::credentials::default_dir);
        let password = match tlsro::credentials::password_from_env()? {
            Some(p) => p,
            None => tlsro::credentials::read_password(&dir.join("password")).map_err(|e| {
                format!(
                    "--relay needs the relay's password: no ${PASSWORD_ENV}, and {e} (pass \
                     --credentials DIR for another directory)"
                )
            })?,
        };
        Ok(Creds {
            tls: !common.plain,
            dir: Some(dir),
            password,
            _tmp: None,
        })
    }

    /// The endpoints' security.
    pub fn security(&self) -> Security {
        match (&self.dir, self.tls) {
            (Some(dir), true) => Security::Tls {
                ca: CaSource::Dir(dir.clone()),
                server_name: None,
            },
            _ => Security::Plain,
        }
    }

    /// The credentials directory, for what needs the relay's certificate and key.
    pub fn dir(&self) -> Result<&Path> {
        self.dir
            .as_deref()
            .ok_or_else(|| "no credentials directory (pass --credentials DIR)".into())
    }

    /// "TLS" or "plain", for the tables.
    pub fn security_name(&self) -> &'static str {
        if self.tls { "TLS" } else { "plain" }
    }
}

/// What it takes to connect an endpoint (cheap to clone, owned: fits in spawned tasks).
#[derive(Clone)]
pub struct Connector {
    /// Where endpoints connect.
    pub addr: String,
    password: Vec<u8>,
    security: Security,
}

impl Connector {
    /// Connects an endpoint in `groups`.
    pub async fn endpoint(&self, groups: &[&str]) -> Result<BenchEndpoint> {
        self.endpoint_queueing(groups, None).await
    }

    /// Connects an endpoint in `groups` whose receive queue holds at most `max_queued` bytes
    /// (the endpoint's default when `None`): past it the endpoint stops reading.
    pub async fn endpoint_queueing(
        &self,
        groups: &[&str],
        max_queued: Option<usize>,
    ) -> Result<BenchEndpoint> {
        let mut builder = Endpoint::<Blob>::builder(self.addr.clone(), self.password.clone());
        if let Some(bytes) = max_queued {
            builder = builder.max_queued_bytes(bytes);
        }
        if let Some(window) = busy_poll() {
            builder = builder.busy_poll(window);
        }
        let ep = builder
            .codec(RawBytes)
            .security(self.security.clone())
            .groups(groups.iter().copied())
            .stop_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("connecting to the relay at {}: {e}", self.addr))?;
        Ok(ep)
    }
}

/// A relay for one benchmark: started in this process (fresh for each benchmark) or external.
pub struct Setup<'a> {
    /// Connects endpoints to the relay.
    pub connector: Connector,
    /// The credentials.
    pub creds: &'a Creds,
    relay: Option<RelayHandle>,
    process: Option<crate::conns::RelayProcess>,
}

impl<'a> Setup<'a> {
    /// Starts an in-process relay on 127.0.0.1 (port chosen by the OS), or uses `--relay`.
    pub async fn new(common: &CommonArgs, creds: &'a Creds) -> Result<Setup<'a>> {
        if let Some(addr) = &common.relay {
            return Ok(Setup::external(addr.clone(), creds));
        }
        if common.relay_process {
            let process = crate::conns::spawn_relay(creds, 10_000, None)?;
            eprintln!(
                "relay process {} listening on {}",
                process.pid(),
                process.addr
            );
            let mut setup = Setup::external(process.addr.clone(), creds);
            setup.process = Some(process);
            return Ok(setup);
        }
        let mut builder = Relay::builder(creds.password.clone()).listen("127.0.0.1:0".parse()?);
        if let Some(window) = busy_poll() {
            builder = builder.busy_poll(window);
        }
        let builder = if creds.tls {
            builder.tls_from_dir(creds.dir()?)?
        } else {
            builder.plain()
        };
        let relay = builder.start().await?;
        let mut setup = Setup::external(relay.local_addr().to_string(), creds);
        setup.relay = Some(relay);
        Ok(setup)
    }

    /// A relay that runs elsewhere, at `addr`.
    pub fn external(addr: String, creds: &'a Creds) -> Setup<'a> {
        Setup {
            connector: Connector {
                addr,
                password: creds.password.clone(),
                security: creds.security(),
            },
            creds,
            relay: None,
            process: None,
        }
    }

    /// Connects an endpoint in `groups`.
    pub async fn endpoint(&self, groups: &[&str]) -> Result<BenchEndpoint> {
        self.connector.endpoint(groups).await
    }

    /// The process id of the relay when it runs in a process of its own (`--relay-process`).
    pub fn relay_pid(&self) -> Option<u32> {
        self.process.as_ref().map(crate::conns::RelayProcess::pid)
    }

    /// The in-process relay's counters.
    pub async fn stats(&self) -> Option<RelayStats> {
        match &self.relay {
            Some(relay) => Some(relay.stats().await),
            None => None,
        }
    }

    /// Stops the in-process relay.
    pub async fn finish(self) {
        if let Some(relay) = self.relay {
            relay.stop().await;
        }
        drop(self.process);
    }
}

/// The end of a run with receiving tasks: waits for their reports, then reads the relay's
/// counters and the events seen (disconnects, rejections, skipped) per watched endpoint, and
/// stops watching.
pub async fn wind_up<R: Send + 'static>(
    setup: &Setup<'_>,
    tasks: Vec<tokio::task::JoinHandle<R>>,
    watches: Vec<EventWatch>,
) -> Result<(Vec<R>, Option<RelayStats>, Vec<(u64, u64, u64)>)> {
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await?);
    }
    let stats = setup.stats().await;
    let events = watches.iter().map(EventWatch::counts).collect();
    Ok((reports, stats, events))
}

/// Counts the disconnects and rejections an endpoint reports while a benchmark runs.
pub struct EventWatch {
    disconnects: std::sync::Arc<AtomicU64>,
    rejected: std::sync::Arc<AtomicU64>,
    skipped: std::sync::Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl EventWatch {
    /// Starts watching `ep`'s events; a disconnect is also a warning on stderr.
    pub fn new(ep: &BenchEndpoint) -> EventWatch {
        EventWatch::start(ep, true)
    }

    /// Starts watching an endpoint whose disconnects are expected (counted, not warned about).
    pub fn expecting_disconnects(ep: &BenchEndpoint) -> EventWatch {
        EventWatch::start(ep, false)
    }

    fn start(ep: &BenchEndpoint, warn: bool) -> EventWatch {
        let mut events = ep.events();
        let disconnects = std::sync::Arc::new(AtomicU64::new(0));
        let rejected = std::sync::Arc::new(AtomicU64::new(0));
        let skipped = std::sync::Arc::new(AtomicU64::new(0));
        let (d, r, s) = (disconnects.clone(), rejected.clone(), skipped.clone());
        let task = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(tlsro::Event::Disconnected { reason }) => {
                        if warn {
                            eprintln!("warning: an endpoint was disconnected: {reason}");
                        }
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(tlsro::Event::Rejected { .. }) => {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(tlsro::Event::Skipped { .. }) => {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(tlsro::Event::Stopped)
                    | Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                }
            }
        });
        EventWatch {
            disconnects,
            rejected,
            skipped,
            task,
        }
    }

    /// (disconnects, rejections, skipped broadcasts) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.disconnects.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One benchmark's outcome: a JSON object and a table for people.
pub struct Outcome {
    /// The JSON line (`"bench"` says which benchmark).
    pub json: serde_json::Value,
    /// The table.
    pub table: Table,
    /// Something was lost, refused or disconnected: said loudly after the table.
    pub problems: Vec<String>,
}

impl Outcome {
    /// Prints the outcome as a JSON line or as a table with its problems.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json);
        } else {
            self.table.print();
            for p in &self.problems {
                println!("!!! {p}");
            }
            println!();
        }
        if json {
            for p in &self.problems {
                eprintln!("!!! {p}");
            }
        }
    }
}

/// A table with a title, aligned columns and a header row.
#[derive(Debug, Clone)]
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width - cell.chars().count();
                // Numbers to the right, words to the left.
                if is_number(cell) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
                if i + 1 < widths.len() {
                    out.push_str("  ");
                }
            }
            out.trim_end().to_owned()
        };
        println!("== {}", self.title);
        println!("{}", line(&self.header));
        println!(
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ")
        );
        for row in &self.rows {
            println!("{}", line(row));
        }
    }
}

/// Whether a cell holds a number (`1,234`, `12.5`, `40 %`): those are aligned to the right.
fn is_number(cell: &str) -> bool {
    let bare = cell.trim_end_matches(" %").replace(',', "");
    !bare.is_empty() && bare.parse::<f64>().is_ok()
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(value: f64) -> String {
    let n = value.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A payload size for people: `100 B`, `64 KiB`, `1 MiB`.
pub fn size_name(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    }
}

/// Per second.
pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Raises the soft RLIMIT_NOFILE to at least `want` (and the hard limit too when allowed);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if soft >= want {
            return soft;
        }
        if hard < want {
            // Only a privileged process may raise the hard limit; try, and fall back.
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, want, want);
        }
    }
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}
