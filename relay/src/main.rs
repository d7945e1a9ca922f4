//! `tlsro-relay`: run the tlsro relay, and make the credentials it and its endpoints use.
//!
//! ```text
//! tlsro-relay run [--listen ADDR] [--credentials DIR] [--plain] [--config FILE] [--password-file FILE]
//! tlsro-relay credentials generate [--dir DIR] [--hostname NAME ...] [--ip ADDR ...] [--force]
//! tlsro-relay credentials show [--dir DIR]
//! ```
//!
//! The password is never given on the command line: it comes from the environment variable
//! `TLSRO_PASSWORD`, a `--password-file`, the `password` file of the credentials directory, or a
//! prompt, in that order. `tlsro-relay run` with nothing configured generates development
//! credentials in the default directory on first use and says where they are.
//!
//! Once listening, `run` prints `listening on ADDR` on stdout (one line, flushed). Logs go to
//! stderr (filter them with `RUST_LOG`, default `info`).

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tlsro::credentials::{self, GenerateOptions, Shown};
use tlsro::tls;
use tlsro_relay::Relay;
use tlsro_relay::config::RelayFileConfig;
use tracing_subscriber::EnvFilter;

/// The environment variable holding the relay's password.
use tlsro::credentials::PASSWORD_ENV;

/// Where the relay listens when neither the command line nor the configuration file says.
const DEFAULT_LISTEN: &str = "127.0.0.1:7000";

type BoxError = Box<dyn Error + Send + Sync>;

/// The tlsro relay: the centre every tlsro endpoint connects to.
#[derive(Debug, Parser)]
#[command(name = "tlsro-relay", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay until Ctrl-C or SIGTERM.
    ///
    /// The password comes from TLSRO_PASSWORD, else --password-file, else the `password` file
    /// of the credentials directory, else a prompt (when stdin is a terminal). With no
    /// --credentials and no --plain, development credentials are generated in the default
    /// directory on first use.
    Run(RunArgs),
    /// Generate or show the CA, the relay certificate and the password.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Address to listen on [default: 127.0.0.1:7000, or `listen` in the configuration file].
    #[arg(long, value_name = "ADDR", value_parser = tlsro_relay::config::parse_listen)]
    listen: Option<SocketAddr>,
    /// Credentials directory with relay.pem and relay.key (and usually password)
    /// [default: the platform's data directory, see `credentials show`].
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// Plain TCP instead of TLS: the password is still never sent, but nothing after the
    /// handshake is secret or protected.
    #[arg(long)]
    plain: bool,
    /// Configuration file (TOML) with limits and the group allow-list.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// File holding the password (trailing whitespace is ignored).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Busy polling for lower latency: spin this long (e.g. 200us) after each read or write
    /// instead of sleeping. The relay then runs on one thread, and uses up to a core while
    /// traffic flows [default: off, or `busy_poll` in the configuration file].
    #[arg(long, value_name = "DURATION", value_parser = parse_window)]
    busy_poll: Option<std::time::Duration>,
}

fn parse_window(text: &str) -> Result<std::time::Duration, String> {
    if !text.is_empty() && text.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit: write for example \"{}us\" (microseconds)",
            text.trim()
        ));
    }
    let window = tlsro_relay::config::parse_duration(text)?;
    tlsro::busy_poll::check_window(window).map_err(|e| e.to_string())?;
    Ok(window)
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Generate a CA, a relay certificate signed by it and a random password.
    Generate(GenerateArgs),
    /// Show which credential files exist and the CA's fingerprint.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Directory to write to [default: the platform's data directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// DNS name of the relay, repeatable, at most 3; microcontrollers use the first
    /// [default: localhost].
    #[arg(long = "hostname", value_name = "NAME")]
    hostnames: Vec<String>,
    /// IP address of the relay, repeatable [default: 127.0.0.1 and ::1].
    #[arg(long = "ip", value_name = "ADDR")]
    ips: Vec<IpAddr>,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// Credentials directory [default: the platform's data directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Credentials(CredentialsCommand::Generate(args)) => generate(args),
        Command::Credentials(CredentialsCommand::Show(args)) => show(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a line on stdout and flushes it, so that a reading process sees it at once.
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Where the password comes from, for the messages.
enum PasswordSource {
    Env,
    File(PathBuf),
    Prompt,
}

impl std::fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::Env => write!(f, "from ${PASSWORD_ENV}"),
            PasswordSource::File(path) => write!(f, "in {}", path.display()),
            PasswordSource::Prompt => f.write_str("as typed at the prompt"),
        }
    }
}

fn run(args: RunArgs) -> Result<(), BoxError> {
    let file_config = match &args.config {
        Some(path) => RelayFileConfig::load(path)?,
        None => RelayFileConfig::default(),
    };

    // Where to listen: the command line, else the file, else the default. Tried first when
    // development credentials may be generated below, so that a busy port fails before any
    // file is written.
    let listen = match args.listen.or(file_config.listen) {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse().expect("a valid address"),
    };
    if !args.plain && args.credentials.is_none() {
        std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    }

    // The credentials directory: given, or the default one (generated there on first use when
    // TLS is wanted and nothing else is configured).
    let dir = args
        .credentials
        .clone()
        .unwrap_or_else(credentials::default_dir);
    let shown = if args.plain {
        None
    } else if args.credentials.is_none() {
        let (shown, created) = credentials::ensure_dev_credentials(&dir).map_err(|e| {
            format!("{e}\n(use --credentials DIR for credentials elsewhere, or --plain)")
        })?;
        if created {
            say(format!(
                "generated development credentials in {}",
                dir.display()
            ));
            say(
                "note: they name only localhost, 127.0.0.1 and ::1; for endpoints on other \
                 machines, make credentials with `tlsro-relay credentials generate --dir DIR \
                 --hostname NAME --ip ADDR` and run with --credentials DIR",
            );
        }
        Some(shown)
    } else {
        Some(credentials::show(&dir)?)
    };

    let tls = if args.plain {
        None
    } else {
        Some(tls::server_config_from_dir(&dir).map_err(|e| {
            format!(
                "cannot load the relay's TLS certificate and key: {e}\n(generate them with {}, \
                 or run with --plain)",
                generate_command(&dir)
            )
        })?)
    };

    // The CA endpoints are told to trust must accept the certificate the relay shows them.
    // A certificate outside its validity period only warns: it is the endpoints' clocks that
    // judge, and this machine's may be the one that is wrong.
    if let Some(shown) = shown.as_ref().filter(|s| s.ca_fingerprint.is_some()) {
        let creds = &shown.credentials;
        match tls::check_relay_certificate(&creds.relay_cert(), &creds.ca_cert()) {
            Ok(()) => {}
            Err(e) if is_about_time(&e) => tracing::warn!(
                "{e} (by this machine's clock: endpoints whose clocks agree will refuse the \
                 relay; generate new credentials with {})",
                generate_command(&dir)
            ),
            Err(e) => {
                return Err(format!(
                    "{e}\n(every endpoint would refuse this relay: generate new credentials with \
                     {}, or put the ca.pem that signed relay.pem beside it)",
                    generate_command(&dir)
                )
                .into());
            }
        }
    }

    let (password, source) = password(&args, &dir)?;

    let mut builder = file_config.apply(Relay::builder(password)).listen(listen);
    builder = match tls {
        Some(config) => builder.tls(config),
        None => builder.plain(),
    };

    match &shown {
        Some(shown) => print_tls_summary(shown, &source),
        None => {
            say(
                "security: plain TCP (the password is never sent, but frames are neither secret nor protected)",
            );
            say(format!("endpoints: connect without TLS, password {source}"));
        }
    }
    if let Some(path) = &args.config {
        say(format!("configuration: {}", path.display()));
    }

    if let Some(window) = args.busy_poll {
        builder = builder.busy_poll(window);
    }
    // Busy polling keeps one thread from sleeping; other workers would still sleep, and would
    // compete with it for the cores, so it comes with a single-threaded runtime.
    let runtime = match builder.busy_poll_window() {
        Some(window) => {
            say(format!(
                "busy polling: one thread, spinning {} µs after traffic",
                window.as_micros()
            ));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        }
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        let handle = builder.start().await?;
        say(format!("listening on {}", handle.local_addr()));
        let signal = shutdown.await;
        tracing::info!("{signal}: stopping");
        handle.stop().await;
        say("stopped");
        Ok(())
    })
}

/// What the user needs to point endpoints at a TLS relay.
fn print_tls_summary(shown: &Shown, source: &PasswordSource) {
    let creds = &shown.credentials;
    say(format!(
        "security: TLS 1.3 with {} and {}",
        creds.relay_cert().display(),
        creds.relay_key().display()
    ));
    let ca = creds.ca_cert();
    match &shown.ca_fingerprint {
        Some(fingerprint) => {
            say(format!("CA fingerprint (SHA-256): {fingerprint}"));
            say(format!(
                "endpoints: trust {}, password {source}",
                ca.display()
            ));
        }
        None => say(format!(
            "endpoints: trust the CA that signed {} ({} is not here), password {source}",
            creds.relay_cert().display(),
            ca.display()
        )),
    }
}

/// The command that makes credentials in `dir`, with `--force` when some are there already
/// (broken or refused ones, which generate would not overwrite otherwise).
fn generate_command(dir: &Path) -> String {
    let present = [credentials::RELAY_CERT_FILE, credentials::RELAY_KEY_FILE]
        .iter()
        .any(|file| dir.join(file).exists());
    let force = if present { " --force" } else { "" };
    format!(
        "`tlsro-relay credentials generate --dir {}{force}`",
        dir.display()
    )
}

/// Whether a refused relay certificate is refused only for the date (expired, not valid yet).
fn is_about_time(e: &tls::TlsSetupError) -> bool {
    use rustls::{CertificateError as C, Error as E};
    matches!(
        e,
        tls::TlsSetupError::Rustls {
            source: E::InvalidCertificate(
                C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. }
            ),
            ..
        }
    )
}

/// The password: `$TLSRO_PASSWORD`, else `--password-file`, else `<dir>/password`, else a prompt
/// when stdin is a terminal.
fn password(args: &RunArgs, dir: &Path) -> Result<(Vec<u8>, PasswordSource), BoxError> {
    if let Some(value) = credentials::password_from_env()? {
        return Ok((value, PasswordSource::Env));
    }
    if let Some(path) = &args.password_file {
        return Ok((
            credentials::read_password(path).map_err(|e| format!("--password-file: {e}"))?,
            PasswordSource::File(path.clone()),
        ));
    }
    let path = credentials::Credentials::new(dir).password();
    if path.exists() {
        return Ok((
            credentials::read_password(&path)?,
            PasswordSource::File(path),
        ));
    }
    if std::io::stdin().is_terminal() {
        let typed = rpassword::prompt_password("relay password: ")
            .map_err(|e| format!("reading the password: {e}"))?;
        if typed.is_empty() {
            return Err("the password is empty".into());
        }
        return Ok((typed.into_bytes(), PasswordSource::Prompt));
    }
    Err(format!(
        "no password: set {PASSWORD_ENV}, pass --password-file FILE, or put one in {} \
         (`tlsro-relay credentials generate` writes one)",
        path.display()
    )
    .into())
}

/// Listens for Ctrl-C and, on Unix, SIGTERM from now on; the future completes with which came.
/// Registered before the relay starts, so that a signal right after `listening on` is not lost.
fn shutdown_signal() -> Result<impl Future<Output = &'static str>, BoxError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => "interrupted",
                _ = terminate.recv() => "terminated",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "interrupted",
                Err(e) => {
                    tracing::warn!("cannot wait for Ctrl-C ({e}); stop the relay otherwise");
                    std::future::pending().await
                }
            }
        })
    }
}

fn generate(args: GenerateArgs) -> Result<(), BoxError> {
    let dir = args.dir.unwrap_or_else(credentials::default_dir);
    let mut opts = GenerateOptions::new(&dir);
    if !args.hostnames.is_empty() {
        opts.hostnames = args.hostnames;
    }
    if !args.ips.is_empty() {
        opts.ips = args.ips;
    }
    opts.overwrite = args.force;
    let generated = credentials::generate(&opts).map_err(|e| match e {
        credentials::CredentialsError::Exists { path } => format!(
            "{} already exists; refusing to overwrite it (add --force to replace all five files)",
            path.display()
        )
        .into(),
        other => BoxError::from(other),
    })?;

    let creds = &generated.credentials;
    let names: Vec<String> = generated
        .hostnames
        .iter()
        .cloned()
        .chain(generated.ips.iter().map(IpAddr::to_string))
        .collect();
    say(format!(
        "wrote {} (CA certificate: endpoints trust this)",
        creds.ca_cert().display()
    ));
    say(format!(
        "wrote {} (CA private key: keep it secret, it can issue more certificates)",
        creds.ca_key().display()
    ));
    say(format!(
        "wrote {} (relay certificate for {})",
        creds.relay_cert().display(),
        names.join(", ")
    ));
    say(format!(
        "wrote {} (relay private key)",
        creds.relay_key().display()
    ));
    say(format!(
        "wrote {} (shared password)",
        creds.password().display()
    ));
    say(format!(
        "CA fingerprint (SHA-256): {}",
        generated.ca_fingerprint
    ));
    say(format!(
        "endpoints: copy {} and {} to each endpoint over a channel you trust, and compare the \
         fingerprint there (`tlsro-relay credentials show`)",
        creds.ca_cert().display(),
        creds.password().display()
    ));
    Ok(())
}

fn show(args: ShowArgs) -> Result<(), BoxError> {
    let dir = args.dir.unwrap_or_else(credentials::default_dir);
    let shown = credentials::show(&dir)?;
    say(format!("credentials in {}", dir.display()));
    for path in shown.credentials.all() {
        let state = if shown.present.contains(&path) {
            "present"
        } else {
            "missing"
        };
        say(format!("{state} {}", path.display()));
    }
    match &shown.ca_fingerprint {
        Some(fingerprint) => say(format!("CA fingerprint (SHA-256): {fingerprint}")),
        None => say(format!(
            "no CA certificate, so no fingerprint (generate credentials with {})",
            generate_command(&dir)
        )),
    }
    Ok(())
}
