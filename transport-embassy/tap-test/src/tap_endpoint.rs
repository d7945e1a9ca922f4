//! The embassy side of the TAP test: one tlsro-embassy endpoint on embassy-executor's std
//! platform, with embassy-net over a TAP device. One embassy "device" per process (its statics),
//! so the test runs this as a child process and drives it over stdin/stdout.
//!
//! Usage: `tap-endpoint --tap NAME --ip 10.77.0.2/24 --relay 10.77.0.1:7000 --password P
//!         --groups a,b [--ca ca.pem --server-name relay.tlsro.test | --plain | --unverified NAME]
//!         [--small-records] [--tls-read N] [--tls-write N] [--socket N] [--frame N] [--inbox N]
//!         [--outbox N]`
//!
//! `--small-records` is the RAM-lean mode (the relay is asked for small TLS records); the other
//! flags set buffer sizes in bytes (`--socket`: each of the TCP socket's two buffers).
//!
//! Commands, one per line on stdin; each is answered by one line starting with `= `:
//!
//! ```text
//! broadcast GROUP TEXT      = ok SEQ | = err ERROR
//! produce GROUP TEXT        = ok SEQ | = err ERROR
//! notify GROUP N            = ok | = err ERROR
//! recv TIMEOUT_MS           = item GROUP broadcast|produced TEXT | = timeout | = err ERROR
//! echo N FROM TO            for N produced objects of FROM: produce the same bytes to TO and
//!                           grant FROM one more credit; then = ok
//! drain N                   receive N objects: = drained N first=TEXT last=TEXT ordered=BOOL
//!                           (ordered: each payload sorts after the one before)
//! status                    = status STATUS connects=N skipped=N dropped=N
//! stop                      = stopped
//! ```
//!
//! Events are printed as they happen, on lines starting with `! `: `! status STATUS` and
//! `! runner-ended ERROR`. Log lines go to stderr.

use std::io::BufRead;

use embassy_executor::Spawner;
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_time::{Duration, with_timeout};
use rand_core::{OsRng, RngCore};
use static_cell::StaticCell;
use tlsro_embassy::{Buffers, Config, Endpoint, ItemKind, Runner, Security, State, Status};

type M = CriticalSectionRawMutex;

static COMMANDS: Channel<M, String, 4> = Channel::new();

struct Args {
    tap: String,
    ip: Ipv4Cidr,
    relay: embassy_net::IpEndpoint,
    password: String,
    groups: Vec<String>,
    ca: Option<String>,
    server_name: String,
    plain: bool,
    unverified: bool,
    small_records: bool,
    sizes: Sizes,
}

/// Buffer sizes, in bytes.
struct Sizes {
    socket: usize,
    tls_read: usize,
    tls_write: usize,
    frame: usize,
    inbox: usize,
    outbox: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        tap: "tap0".into(),
        ip: "10.77.0.2/24".parse().expect("cidr"),
        relay: embassy_net::IpEndpoint::new(embassy_net::IpAddress::v4(10, 77, 0, 1), 7000),
        password: String::new(),
        groups: Vec::new(),
        ca: None,
        server_name: "relay.tlsro.test".into(),
        plain: false,
        unverified: false,
        small_records: false,
        sizes: Sizes {
            socket: 8 * 1024,
            tls_read: 16_640,
            tls_write: 4 * 1024,
            frame: 4 * 1024,
            inbox: 16 * 1024,
            outbox: 8 * 1024,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tap" => args.tap = value(),
            "--ip" => args.ip = value().parse().expect("--ip: a CIDR like 10.77.0.2/24"),
            "--relay" => {
                let v = value();
                let (ip, port) = v.split_once(':').expect("--relay: IP:PORT");
                let ip: std::net::Ipv4Addr = ip.parse().expect("--relay IP");
                let o = ip.octets();
                args.relay = embassy_net::IpEndpoint::new(
                    embassy_net::IpAddress::v4(o[0], o[1], o[2], o[3]),
                    port.parse().expect("--relay PORT"),
                );
            }
            "--password" => args.password = value(),
            "--groups" => {
                args.groups = value()
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--ca" => args.ca = Some(value()),
            "--server-name" => args.server_name = value(),
            "--plain" => args.plain = true,
            "--unverified" => args.unverified = true,
            "--small-records" => args.small_records = true,
            "--socket" => args.sizes.socket = value().parse().expect("--socket N"),
            "--tls-read" => args.sizes.tls_read = value().parse().expect("--tls-read N"),
            "--tls-write" => args.sizes.tls_write = value().parse().expect("--tls-write N"),
            "--frame" => args.sizes.frame = value().parse().expect("--frame N"),
            "--inbox" => args.sizes.inbox = value().parse().expect("--inbox N"),
            "--outbox" => args.sizes.outbox = value().parse().expect("--outbox N"),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Leaks a value for the `'static` the embassy tasks need (one endpoint per process).
fn leak<T>(v: T) -> &'static mut T {
    Box::leak(Box::new(v))
}

fn buffer(len: usize) -> &'static mut [u8] {
    Box::leak(vec![0u8; len].into_boxed_slice())
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn tlsro_task(mut runner: Runner<'static, M, OsRng>) {
    let error = runner.run().await;
    println!("! runner-ended {error:?}");
}

#[embassy_executor::task]
async fn status_task(endpoint: Endpoint<'static, M>) {
    let mut seen = endpoint.status();
    println!("! status {}", status_text(seen));
    loop {
        seen = endpoint.status_changed(seen).await;
        println!("! status {}", status_text(seen));
    }
}

fn status_text(s: Status) -> String {
    match s {
        Status::Retrying(e) => format!("Retrying({e:?})"),
        Status::Failed(e) => format!("Failed({e:?})"),
        other => format!("{other:?}"),
    }
}

#[embassy_executor::task]
async fn command_task(endpoint: Endpoint<'static, M>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let line = COMMANDS.receive().await;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["broadcast", group, text] => match endpoint.broadcast(&[group], text.as_bytes()).await
            {
                Ok(seq) => format!("ok {seq}"),
                Err(e) => format!("err {e:?}"),
            },
            ["produce", group, text] => match endpoint.produce(&[group], text.as_bytes()).await {
                Ok(seq) => format!("ok {seq}"),
                Err(e) => format!("err {e:?}"),
            },
            ["notify", group, n] => match endpoint.notify(group, n.parse().expect("notify N")) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("err {e:?}"),
            },
            ["recv", timeout_ms] => {
                let timeout = Duration::from_millis(timeout_ms.parse().expect("recv TIMEOUT_MS"));
                match with_timeout(timeout, endpoint.receive(&mut buf)).await {
                    Ok(Ok(item)) => format!(
                        "item {} {} {}",
                        item.group,
                        match item.kind {
                            ItemKind::Broadcast { .. } => "broadcast",
                            ItemKind::Produced => "produced",
                        },
                        String::from_utf8_lossy(item.payload)
                    ),
                    Ok(Err(e)) => format!("err {e:?}"),
                    Err(_) => "timeout".to_owned(),
                }
            }
            ["echo", n, from, to] => {
                let n: usize = n.parse().expect("echo N");
                let mut result = "ok".to_owned();
                for _ in 0..n {
                    let len = match endpoint.receive(&mut buf).await {
                        Ok(item) => item.payload.len(),
                        Err(e) => {
                            result = format!("err {e:?}");
                            break;
                        }
                    };
                    if let Err(e) = endpoint.produce(&[to], &buf[..len]).await {
                        result = format!("err {e:?}");
                        break;
                    }
                    if let Err(e) = endpoint.notify(from, 1) {
                        result = format!("err {e:?}");
                        break;
                    }
                }
                result
            }
            ["drain", n] => {
                let n: usize = n.parse().expect("drain N");
                let (mut first, mut last, mut ordered) = (String::new(), String::new(), true);
                let mut result = None;
                for k in 0..n {
                    match with_timeout(Duration::from_secs(10), endpoint.receive(&mut buf)).await {
                        Ok(Ok(item)) => {
                            let text = String::from_utf8_lossy(item.payload).into_owned();
                            if k == 0 {
                                first = text.clone();
                            } else if text <= last {
                                ordered = false;
                            }
                            last = text;
                        }
                        Ok(Err(e)) => {
                            result = Some(format!("err {e:?} after {k}"));
                            break;
                        }
                        Err(_) => {
                            result = Some(format!("timeout after {k}"));
                            break;
                        }
                    }
                }
                result.unwrap_or_else(|| {
                    format!("drained {n} first={first} last={last} ordered={ordered}")
                })
            }
            ["status"] => format!(
                "status {} connects={} skipped={} dropped={}",
                status_text(endpoint.status()),
                endpoint.stats().connects,
                endpoint.stats().skipped,
                endpoint.stats().publishes_dropped
            ),
            ["stop"] => {
                endpoint.stop().await;
                "stopped".to_owned()
            }
            _ => format!("err unknown command {line:?}"),
        };
        println!("= {answer}");
    }
}

/// Reads stdin on a plain thread and hands lines to the executor (its wakers are thread-safe).
fn spawn_stdin_reader() {
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines() {
            let Ok(mut line) = line else { break };
            loop {
                match COMMANDS.try_send(line) {
                    Ok(()) => break,
                    Err(embassy_sync::channel::TrySendError::Full(back)) => {
                        line = back;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
        }
        // The test closed stdin: it is done with us.
        std::process::exit(0);
    });
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[embassy {}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let level = match std::env::var("TLSRO_TAP_LOG").as_deref() {
        Ok("trace") => log::LevelFilter::Trace,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    log::set_logger(&StderrLogger).expect("one logger");
    log::set_max_level(level);
    let args = parse_args();

    let device = TunTapDevice::new(&args.tap).expect("open the TAP device");
    let net_config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: args.ip,
        gateway: None,
        dns_servers: Default::default(),
    });
    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        device,
        net_config,
        RESOURCES.init(StackResources::new()),
        OsRng.next_u64(),
    );
    spawner.spawn(net_task(net_runner).unwrap());

    let groups: &'static [&'static str] = Vec::leak(
        args.groups
            .iter()
            .map(|g| &*String::leak(g.clone()))
            .collect(),
    );
    let config = Config::new(args.password.as_bytes(), groups);
    let security = if args.plain {
        Security::plain()
    } else if args.unverified {
        Security::dangerous_tls_without_verification(String::leak(args.server_name.clone()))
    } else {
        let path = args
            .ca
            .as_deref()
            .expect("--ca PATH (or --plain / --unverified)");
        let pem = std::fs::read(path).expect("read the CA PEM");
        let der = tlsro_embassy::pem_to_der(&pem, buffer(4096)).expect("CA PEM");
        Security::tls(der, String::leak(args.server_name.clone())).expect("server name")
    };
    let security = if args.small_records {
        security.with_small_records()
    } else {
        security
    };
    let sizes = &args.sizes;
    let buffers = Buffers {
        socket_rx: buffer(sizes.socket),
        socket_tx: buffer(sizes.socket),
        tls_read: buffer(sizes.tls_read),
        tls_write: buffer(sizes.tls_write),
        frame: buffer(sizes.frame),
        inbox: buffer(sizes.inbox),
        outbox: buffer(sizes.outbox),
    };
    let state: &'static mut State<'static, M> = leak(State::new());
    let (endpoint, runner) =
        tlsro_embassy::new(stack, args.relay, state, config, security, buffers, OsRng)
            .expect("endpoint");
    spawner.spawn(status_task(endpoint).unwrap());
    spawner.spawn(tlsro_task(runner).unwrap());
    spawner.spawn(command_task(endpoint).unwrap());
    spawn_stdin_reader();
    println!("! ready");
}
