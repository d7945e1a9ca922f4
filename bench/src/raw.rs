//! `raw`: one rustls connection (the relay's TLS configuration) moving bulk data over loopback,
//! both ends in this process: the ceiling for relayed throughput on the same machine and run.
//! With `--plain`, one plain TCP connection.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::common::run_length;
use crate::common::{CommonArgs, Creds, Outcome, Result, Table, mb_per_s, parse_size, size_name};

/// `raw` options.
#[derive(Debug, Clone, Args)]
pub struct RawArgs {
    /// Bytes per write.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub size: u64,
    /// How long to write.
    #[arg(long, default_value = "3s", value_parser = run_length)]
    pub duration: Duration,
    /// (`--relay` is ignored: this measures TLS alone; with `--credentials DIR` it uses that
    /// directory's relay.pem, relay.key and ca.pem.)
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The reading end's task: bytes read and seconds from the first byte to the last.
type Reader = tokio::task::JoinHandle<std::io::Result<(u64, f64)>>;
/// The writing end's task: bytes written.
type Writer = tokio::task::JoinHandle<std::io::Result<u64>>;

/// Runs `raw`: TLS when `creds.tls`, with the certificate and key in `creds.dir`.
pub async fn run(creds: &Creds, size: u64, duration: Duration) -> Result<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let write_size = size.max(1) as usize;

    let (server, client): (Reader, Writer) = if creds.tls {
        let dir = creds.dir()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tlsro::tls::server_config_from_dir(dir)?);
        let connector = tokio_rustls::TlsConnector::from(tlsro::tls::client_config_from_dir(dir)?);
        let name = tlsro::tls::server_name("127.0.0.1")?;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let tls = acceptor.accept(tcp).await?;
            drain(tls).await
        });
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            pour(tls, write_size, duration).await
        });
        (server, client)
    } else {
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            drain(tcp).await
        });
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            pour(tcp, write_size, duration).await
        });
        (server, client)
    };
    let written = client.await??;
    let (read, secs) = server.await??;
    let mb = mb_per_s(read, secs);
    let security = creds.security_name();
    let what = if creds.tls {
        "one rustls connection (the relay's TLS configuration)"
    } else {
        "one plain TCP connection"
    };
    let mut table = Table::new(
        format!("raw: {what} over loopback, both ends in this process"),
        &["write size", "MB moved", "seconds", "MB/s"],
    );
    table.row(vec![
        size_name(size),
        format!("{:.0}", read as f64 / 1e6),
        format!("{secs:.2}"),
        format!("{mb:.1}"),
    ]);
    let mut problems = Vec::new();
    if read != written {
        problems.push(format!("LOST: wrote {written} bytes, read {read}"));
    }
    let json = serde_json::json!({
        "bench": "raw",
        "security": security,
        "write_size": size,
        "bytes": read,
        "seconds": secs,
        "mb_per_s": mb,
        "lost": written.saturating_sub(read),
    });
    Ok(Outcome {
        json,
        table,
        problems,
    })
}

/// Reads until the end; returns the bytes read and the seconds from the first byte to the last.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<(u64, f64)> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        total += n as u64;
    }
    let secs = first.map(|f| (last - f).as_secs_f64()).unwrap_or(0.0);
    // Our end of the close, so the writer sees a clean end too.
    let _ = stream.shutdown().await;
    Ok((total, secs))
}

/// Writes `write_size` bytes at a time for `duration`, then closes; returns the bytes written.
async fn pour<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    write_size: usize,
    duration: Duration,
) -> std::io::Result<u64> {
    let buf: Arc<[u8]> = (0..write_size).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut total = 0u64;
    while start.elapsed() < duration {
        stream.write_all(&buf).await?;
        total += buf.len() as u64;
    }
    stream.flush().await?;
    stream.shutdown().await?;
    // Read what the other end sent (TLS 1.3 session tickets, its close) until it closes:
    // closing a socket with unread bytes would reset the connection under the reader.
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    Ok(total)
}
