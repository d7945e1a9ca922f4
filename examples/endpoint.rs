//! An endpoint in its own process, for the README's two-process walk-through.
//!
//! ```text
//! endpoint [--relay HOST:PORT] [--credentials DIR] [--plain] listen GROUP [--notify N]
//! endpoint [--relay HOST:PORT] [--credentials DIR] [--plain] broadcast GROUP TEXT
//! endpoint [--relay HOST:PORT] [--credentials DIR] [--plain] produce GROUP TEXT
//! ```
//!
//! The relay address defaults to 127.0.0.1:7000 (what `tlsro-relay run` listens on), the
//! credentials directory to the one `tlsro-relay` uses by default: the CA is `DIR/ca.pem`, the
//! password `DIR/password` (or the `TLSRO_PASSWORD` environment variable). `listen` prints every
//! object of GROUP as it arrives (granting N credits for produced objects, 100 by default) until
//! Ctrl-C; `broadcast` and `produce` send one text and wait for the relay's verdict. The
//! library's warnings go to stderr; `RUST_LOG=debug` shows every connection attempt too.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tlsro::{CaSource, Endpoint, Security, Wait};

#[derive(Parser)]
#[command(about = "A tlsro endpoint in its own process")]
struct Args {
    /// The relay's address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    relay: String,
    /// The credentials directory (ca.pem, password).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Plain TCP instead of TLS (the relay must run with --plain).
    #[arg(long)]
    plain: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every object of GROUP as it arrives.
    Listen {
        group: String,
        /// Credit for produced objects.
        #[arg(long, default_value_t = 100)]
        notify: i32,
    },
    /// Broadcast TEXT to GROUP.
    Broadcast { group: String, text: String },
    /// Produce TEXT into GROUP's queue.
    Produce { group: String, text: String },
}

#[tokio::main]
async fn main() {
    // The library reports through `tracing`: warnings (a password file others can read, a lost
    // connection) by default, each failed connection attempt with RUST_LOG=debug.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let dir = args
        .credentials
        .unwrap_or_else(tlsro::credentials::default_dir);
    let password = match tlsro::credentials::password_from_env()? {
        Some(p) => p,
        None => tlsro::credentials::read_password(&dir.join("password"))?,
    };
    let security = if args.plain {
        Security::Plain
    } else {
        Security::Tls {
            ca: CaSource::Dir(dir),
            server_name: None,
        }
    };
    let groups: Vec<String> = match &args.command {
        Command::Listen { group, .. } => vec![group.clone()],
        _ => Vec::new(),
    };
    let endpoint = Endpoint::<String>::builder(args.relay.clone(), password)
        .security(security)
        .groups(groups)
        .connect()
        .await?;
    match args.command {
        Command::Listen { group, notify } => {
            eprintln!(
                "connected to {}; listening to {group:?} (Ctrl-C to stop)",
                args.relay
            );
            endpoint.notify(&group, notify)?;
            loop {
                tokio::select! {
                    items = endpoint.pop(100, Wait::Forever) => {
                        for item in items? {
                            println!("{:?} {:?}: {}", item.kind, item.group, item.value);
                        }
                    }
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        Command::Broadcast { group, text } => {
            endpoint.broadcast(&text, &group)?.wait().await?;
            println!("broadcast to {group:?}: confirmed by the relay");
        }
        Command::Produce { group, text } => {
            endpoint.produce(&text, &group)?.wait().await?;
            println!("produced to {group:?}: confirmed by the relay");
        }
    }
    tokio::time::timeout(Duration::from_secs(5), endpoint.stop()).await??;
    Ok(())
}
