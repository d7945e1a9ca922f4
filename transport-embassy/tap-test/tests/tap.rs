//! The embassy endpoint for real: embassy-net over a TAP device, embedded-tls with `rustpki`
//! verification, against the real relay (in-process, TLS) on the host side of the device.
//!
//! Everything happens inside a network namespace this test creates (and deletes), with the TAP
//! device and the private /24 10.77.0.0/24 inside it: nothing touches the host's interfaces.
//! The outer test makes the namespace and re-runs this test binary inside it (`ip netns exec`),
//! where [`inner_scenario`] starts the relay, a host-side peer (the std endpoint of `tlsro`)
//! and the embassy endpoint as a child process (`tap-endpoint`: embassy's
//! statics allow one embassy device per process).
//!
//! Without the rights to make a namespace and a TAP device the test skips with a loud message,
//! except under `CI=true`, where it fails. `TLSRO_TAP_VERBOSE=1` shows everything the scenario
//! and the embassy endpoint printed (`TLSRO_TAP_LOG=debug` or `trace` for more of the latter).

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tlsro_proto::frame::PublishKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const INNER_ENV: &str = "TLSRO_TAP_INNER";
const TAP: &str = "tap0";
const HOST_CIDR: &str = "10.77.0.1/24";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const EMBASSY_CIDR: &str = "10.77.0.2/24";
const PORT: u16 = 7000;
const SERVER_NAME: &str = "relay.tlsro.test";
const PASSWORD: &str = "tap test password";
/// The whole inner scenario must finish within this.
const INNER_DEADLINE: Duration = Duration::from_secs(240);
/// Produce round trips measured.
const RTT_ROUNDS: usize = 200;

/// Writes to the real stderr, past libtest's output capture, so the figures show in CI logs.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with the TAP device in it; removed on drop (also when the test panics).
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Result<Namespace, String> {
        if !Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun does not exist".into());
        }
        let name = format!("tlsro-tap-{}", std::process::id());
        // A namespace left over by a killed run of the same pid.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Namespace { name };
        ns.exec(&["link", "set", "lo", "up"])?;
        ns.exec(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ns.exec(&["addr", "add", HOST_CIDR, "dev", TAP])?;
        ns.exec(&["link", "set", TAP, "up"])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.exec(&["link", "del", TAP]);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            report(&format!("tap test: cleanup: {e}"));
        }
    }
}

#[test]
fn embassy_endpoint_over_tap_against_the_real_relay() {
    if std::env::var_os(INNER_ENV).is_some() {
        return;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let ns = match Namespace::create() {
        Ok(ns) => ns,
        Err(why) => {
            let msg = format!(
                "tap test: cannot create a network namespace with a TAP device ({why}); \
                 it needs root (CAP_NET_ADMIN), /dev/net/tun and iproute2"
            );
            if in_ci {
                panic!("{msg} — failing because CI=true");
            }
            report(&format!("\n!!!!! SKIPPED: {msg} !!!!!\n"));
            return;
        }
    };
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args([
            "--exact",
            "inner_scenario",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the inner scenario");
    // Collect the output on threads so a full pipe never blocks the child.
    let collect = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the inner scenario") {
            break Some(status);
        }
        if started.elapsed() > INNER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    for line in stdout.lines().filter(|l| l.starts_with("tap test:")) {
        report(line);
    }
    let ok = status.is_some_and(|s| s.success());
    if std::env::var_os("TLSRO_TAP_VERBOSE").is_some() {
        report(&format!(
            "----- inner stdout -----\n{stdout}\n----- inner stderr -----\n{stderr}"
        ));
    }
    if !ok {
        println!("----- inner stdout -----\n{stdout}\n----- inner stderr -----\n{stderr}");
        match status {
            None => panic!("the TAP scenario did not finish within {INNER_DEADLINE:?}"),
            Some(s) => panic!("the TAP scenario failed ({s})"),
        }
    }
}

/// The scenario, run inside the namespace by the test above.
#[test]
#[ignore = "run by embassy_endpoint_over_tap_against_the_real_relay inside its network namespace"]
fn inner_scenario() {
    if std::env::var_os(INNER_ENV).is_none() {
        eprintln!("inner_scenario runs only inside the namespace made by the outer test");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(scenario());
}

async fn scenario() {
    let dir = std::env::temp_dir().join(format!("tlsro-tap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let good = dir.join("good");
    let other = dir.join("other");
    for d in [&good, &other] {
        let mut opts = tlsro::credentials::GenerateOptions::new(d);
        opts.hostnames = vec![SERVER_NAME.to_owned()];
        opts.ips = vec![IpAddr::V4(HOST_IP)];
        tlsro::credentials::generate(&opts).expect("credentials");
    }
    let ca = good.join("ca.pem");
    let addr = SocketAddr::from((HOST_IP, PORT));
    let relay = start_relay(&good, addr).await;

    // A wrong password and a wrong CA fail fast, with their errors.
    let mut e = Embassy::spawn(&["--password", "not the password", "--ca", path(&ca)]).await;
    e.event("runner-ended WrongPassword", 30).await;
    println!("tap test: wrong password -> WrongPassword");
    e.finish().await;
    let other_ca = other.join("ca.pem");
    let mut e = Embassy::spawn(&["--password", PASSWORD, "--ca", path(&other_ca)]).await;
    e.event("runner-ended CertificateRejected", 30).await;
    println!("tap test: wrong CA -> CertificateRejected");
    e.finish().await;
    // The right CA, but a name the relay's certificate does not carry.
    let mut e = Embassy::spawn(&[
        "--password",
        PASSWORD,
        "--ca",
        path(&ca),
        "--server-name",
        "not-the-relay.tlsro.test",
    ])
    .await;
    e.event("runner-ended CertificateRejected", 30).await;
    println!("tap test: wrong server name -> CertificateRejected");
    e.finish().await;

    // The host peer leaves a retained broadcast before the embassy endpoint joins.
    let mut h = Peer::connect(addr, &ca, &["hosts", "to-host"]).await;
    h.publish(PublishKind::Broadcast, "robots", b"retained-1")
        .await;

    let started = Instant::now();
    let mut e = Embassy::spawn(&[
        "--password",
        PASSWORD,
        "--ca",
        path(&ca),
        "--groups",
        "robots,to-robot",
    ])
    .await;
    e.event("status Connected", 30).await;
    println!(
        "tap test: verified TLS + password handshake in {} ms (process start included)",
        started.elapsed().as_millis()
    );
    e.expect("recv 5000", "item robots broadcast retained-1")
        .await;
    println!("tap test: retained broadcast on join");

    // Broadcast both ways.
    h.publish(PublishKind::Broadcast, "robots", b"b-host-1")
        .await;
    e.expect("recv 5000", "item robots broadcast b-host-1")
        .await;
    e.expect_prefix("broadcast hosts b-robot-1", "ok").await;
    assert_eq!(h.recv(5).await, got("hosts", false, "b-robot-1"));
    println!("tap test: broadcast host -> embassy and embassy -> host");

    // Produce and notify both ways.
    e.expect("notify to-robot 1", "ok").await;
    h.publish(PublishKind::Produce, "to-robot", b"job-1").await;
    e.expect("recv 5000", "item to-robot produced job-1").await;
    h.notify("to-host", 1).await;
    e.expect_prefix("produce to-host res-1", "ok").await;
    assert_eq!(h.recv(5).await, got("to-host", true, "res-1"));
    println!("tap test: produce/notify host -> embassy and embassy -> host");

    // Round trip of a small produced object: host produces to the robot, the robot produces the
    // same bytes back, the host receives them.
    let rtt = produce_round_trips(&mut h, &mut e, "to-robot", "to-host", RTT_ROUNDS).await;
    println!(
        "tap test: produce round trip host -> relay -> embassy -> relay -> host, {RTT_ROUNDS} \
         objects of 8 bytes: {rtt}"
    );
    // The echo granted one more credit after the last object: it is outstanding now.

    // More than the inbox holds (16 KiB): the runner stops reading instead of dropping, and
    // everything arrives, in order, once the application receives.
    let burst = 200;
    for i in 0..burst {
        let payload = format!("burst-{i:04}-{}", "x".repeat(200));
        h.publish(PublishKind::Broadcast, "robots", payload.as_bytes())
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.expect_prefix(
        &format!("drain {burst}"),
        &format!("drained {burst} first=burst-0000-x"),
    )
    .await;
    let answer = e.last_answer.clone();
    assert!(
        answer.contains("last=burst-0199-x") && answer.ends_with("ordered=true"),
        "{answer}"
    );
    println!("tap test: {burst} broadcasts of 212 bytes into a 16 KiB inbox: none lost, in order");

    // The relay restarts: the embassy endpoint reconnects by itself and resumes.
    drop(h);
    relay.stop().await;
    e.event("status Retrying", 30).await;
    // Published while the relay is away: kept in the outbox, sent after the reconnect.
    e.expect_prefix("broadcast hosts while-down", "ok").await;
    let restarted = Instant::now();
    let relay = start_relay(&good, addr).await;
    e.event("status Connected", 30).await;
    println!(
        "tap test: relay restarted -> reconnected in {} ms",
        restarted.elapsed().as_millis()
    );
    e.expect_prefix("status", "status Connected connects=2 ")
        .await;
    let mut h = Peer::connect(addr, &ca, &["hosts", "to-host"]).await;
    // Live or as the retained value on join, depending on who was first: exactly once.
    assert_eq!(h.recv(10).await, got("hosts", false, "while-down"));
    // The credit outstanding before the restart was granted again without a new notify.
    h.publish(PublishKind::Produce, "to-robot", b"after-restart")
        .await;
    e.expect("recv 5000", "item to-robot produced after-restart")
        .await;
    e.expect_prefix("broadcast hosts b-robot-2", "ok").await;
    assert_eq!(h.recv(5).await, got("hosts", false, "b-robot-2"));
    println!("tap test: resumed after the restart (outbox resent, credit restored)");

    // A graceful stop.
    e.expect("stop", "stopped").await;
    e.event("runner-ended Stopped", 10).await;
    e.finish().await;
    drop(h);

    lean_mode(addr, &ca).await;

    // TLS without verification (the dangerous constructor) still runs the password proof.
    let mut e =
        Embassy::spawn(&["--password", PASSWORD, "--unverified", "--groups", "robots"]).await;
    e.event("status Connected", 30).await;
    e.expect_prefix("broadcast robots unverified-1", "ok").await;
    e.expect("recv 5000", "item robots broadcast unverified-1")
        .await;
    e.finish().await;
    // Mismatched modes are named, not reported as garbage: plain endpoint, TLS relay…
    let mut e = Embassy::spawn(&["--password", PASSWORD, "--plain"]).await;
    e.event("status Retrying(RelayExpectsTls)", 30).await;
    e.finish().await;
    relay.stop().await;

    // Plain TCP against a plain relay: the password proof still applies.
    let plain = tlsro_relay::Relay::builder(PASSWORD.as_bytes().to_vec())
        .listen(SocketAddr::from((HOST_IP, PORT + 1)))
        .plain()
        .start()
        .await
        .expect("plain relay");
    let plain_addr = format!("{HOST_IP}:{}", PORT + 1);
    let mut e = Embassy::spawn(&[
        "--relay",
        &plain_addr,
        "--password",
        "not the password",
        "--plain",
    ])
    .await;
    e.event("runner-ended WrongPassword", 30).await;
    e.finish().await;
    // … and TLS endpoint, plain relay.
    let mut e = Embassy::spawn(&[
        "--relay",
        &plain_addr,
        "--password",
        PASSWORD,
        "--ca",
        path(&ca),
    ])
    .await;
    e.event("status Retrying(Tls)", 30).await;
    e.finish().await;
    let mut e = Embassy::spawn(&[
        "--relay",
        &plain_addr,
        "--password",
        PASSWORD,
        "--plain",
        "--groups",
        "robots",
    ])
    .await;
    e.event("status Connected", 30).await;
    e.expect_prefix("broadcast robots plain-1", "ok").await;
    e.expect("recv 5000", "item robots broadcast plain-1").await;
    // The relay comes back with a lower frame limit than a kept publish needs: that one is
    // dropped (logged, counted), the others before and after it are sent, in order.
    plain.stop().await;
    e.event("status Retrying", 30).await;
    e.expect_prefix("broadcast robots small-1", "ok").await;
    let big = format!("big-{}", "x".repeat(3000));
    e.expect_prefix(&format!("broadcast robots {big}"), "ok")
        .await;
    e.expect_prefix("broadcast robots small-2", "ok").await;
    let plain = tlsro_relay::Relay::builder(PASSWORD.as_bytes().to_vec())
        .listen(SocketAddr::from((HOST_IP, PORT + 1)))
        .plain()
        .configure(|c| c.max_frame = 2048)
        .start()
        .await
        .expect("plain relay, restarted");
    e.event("status Connected", 30).await;
    e.expect("recv 5000", "item robots broadcast small-1").await;
    e.expect("recv 5000", "item robots broadcast small-2").await;
    e.expect("status", "status Connected connects=2 skipped=0 dropped=1")
        .await;
    println!("tap test: a relay back with a lower frame limit: the publish too large dropped");
    e.finish().await;
    plain.stop().await;
    println!("tap test: unverified TLS and plain TCP modes; mismatched modes named");
    let _ = std::fs::remove_dir_all(&dir);
    println!("tap test: all assertions passed");
}

/// The RAM-lean mode: the endpoint asks for small TLS records, with the smallest TLS read buffer
/// that allows (`SMALL_RECORD_BODY`, 1,036 bytes; a full-size record needs 16,640), a 1 KiB TLS
/// write buffer, 2 KiB socket buffers and a 1 KiB frame buffer (so its `Hello` states a largest
/// frame of 1,024 bytes).
async fn lean_mode(addr: SocketAddr, ca: &Path) {
    const FRAME: usize = 1024;
    let tls_read = tlsro_proto::SMALL_RECORD_BODY.to_string();
    let mut h = Peer::connect(addr, ca, &["lean-hosts", "lean-to-host"]).await;
    let started = Instant::now();
    let mut e = Embassy::spawn(&[
        "--password",
        PASSWORD,
        "--ca",
        path(ca),
        "--groups",
        "lean,to-lean",
        "--small-records",
        "--tls-read",
        &tls_read,
        "--tls-write",
        "1024",
        "--socket",
        "2048",
        "--frame",
        &FRAME.to_string(),
        "--inbox",
        "2048",
        "--outbox",
        "2048",
    ])
    .await;
    e.event("status Connected", 30).await;
    println!(
        "tap test: lean mode (small TLS records, {tls_read}-byte TLS read buffer): verified TLS + \
         password handshake in {} ms",
        started.elapsed().as_millis()
    );

    // Broadcast both ways.
    h.publish(PublishKind::Broadcast, "lean", b"lean-b-1").await;
    e.expect("recv 5000", "item lean broadcast lean-b-1").await;
    e.expect_prefix("broadcast lean-hosts lean-e-1", "ok").await;
    assert_eq!(h.recv(5).await, got("lean-hosts", false, "lean-e-1"));
    // An object larger than the TLS write buffer goes out in several records.
    let big_out = format!("lean-e-2-{}", "y".repeat(1500));
    e.expect_prefix(&format!("broadcast lean-hosts {big_out}"), "ok")
        .await;
    assert_eq!(h.recv(5).await, got("lean-hosts", false, &big_out));
    println!("tap test: lean mode: broadcast host -> embassy and embassy -> host (1.5 KB out)");

    // A broadcast larger than the endpoint's stated largest frame is skipped for it (the relay
    // sends a Skipped notice instead); the next one arrives.
    let too_big = vec![b'x'; 3 * FRAME];
    h.publish(PublishKind::Broadcast, "lean", &too_big).await;
    h.publish(PublishKind::Broadcast, "lean", b"lean-b-2").await;
    e.expect("recv 5000", "item lean broadcast lean-b-2").await;
    e.expect("status", "status Connected connects=1 skipped=1 dropped=0")
        .await;
    println!("tap test: lean mode: a 3 KB broadcast is skipped for the 1 KiB endpoint (Skipped)");

    // Produce and notify both ways.
    e.expect("notify to-lean 1", "ok").await;
    h.publish(PublishKind::Produce, "to-lean", b"lean-job-1")
        .await;
    e.expect("recv 5000", "item to-lean produced lean-job-1")
        .await;
    h.notify("lean-to-host", 1).await;
    e.expect_prefix("produce lean-to-host lean-res-1", "ok")
        .await;
    assert_eq!(h.recv(5).await, got("lean-to-host", true, "lean-res-1"));
    println!("tap test: lean mode: produce/notify host -> embassy and embassy -> host");

    // Many objects close to the frame limit at once: the relay coalesces them into large
    // writes, which rustls must cut into small records; one record too large for the TLS read
    // buffer would break the connection (and lose these broadcasts).
    let burst = 100;
    for i in 0..burst {
        let payload = format!("lean-burst-{i:04}-{}", "z".repeat(880));
        h.publish(PublishKind::Broadcast, "lean", payload.as_bytes())
            .await;
    }
    e.expect_prefix(
        &format!("drain {burst}"),
        &format!("drained {burst} first=lean-burst-0000-z"),
    )
    .await;
    let answer = e.last_answer.clone();
    assert!(
        answer.contains("last=lean-burst-0099-z") && answer.ends_with("ordered=true"),
        "{answer}"
    );
    println!(
        "tap test: lean mode: {burst} broadcasts of 896 bytes through the {tls_read}-byte TLS read \
         buffer: none lost, in order"
    );

    let rounds = RTT_ROUNDS / 2;
    let rtt = produce_round_trips(&mut h, &mut e, "to-lean", "lean-to-host", rounds).await;
    println!("tap test: lean mode: produce round trip, {rounds} objects of 8 bytes: {rtt}");
    // Never reconnected: every record fitted.
    e.expect("status", "status Connected connects=1 skipped=1 dropped=0")
        .await;
    e.expect("stop", "stopped").await;
    e.event("runner-ended Stopped", 10).await;
    e.finish().await;
}

/// Produced objects echoed by the embassy endpoint: the host produces to `to_robot`, the robot
/// produces the same bytes to `to_host`, the host receives them; one at a time. Returns a
/// summary of the round-trip times. Leaves one credit of `to_robot` outstanding.
async fn produce_round_trips(
    h: &mut Peer,
    e: &mut Embassy,
    to_robot: &str,
    to_host: &str,
    rounds: usize,
) -> String {
    e.expect(&format!("notify {to_robot} 1"), "ok").await;
    h.notify(to_host, rounds as i32).await;
    e.send(&format!("echo {rounds} {to_robot} {to_host}")).await;
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let payload = format!("rtt-{i:04}");
        let t0 = Instant::now();
        h.publish(PublishKind::Produce, to_robot, payload.as_bytes())
            .await;
        assert_eq!(h.recv(5).await, got(to_host, true, &payload));
        rtts.push(t0.elapsed());
    }
    e.answer("ok").await;
    rtts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, p90 {:.2} ms, min {:.2} ms, max {:.2} ms",
        ms(rtts[rounds / 2]),
        ms(rtts[rounds * 9 / 10]),
        ms(rtts[0]),
        ms(rtts[rounds - 1])
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

async fn start_relay(credentials: &Path, addr: SocketAddr) -> tlsro_relay::RelayHandle {
    // The previous relay's socket may still be closing.
    for _ in 0..50 {
        let started = tlsro_relay::Relay::builder(PASSWORD.as_bytes().to_vec())
            .listen(addr)
            .tls_from_dir(credentials)
            .expect("relay TLS configuration")
            .start()
            .await;
        match started {
            Ok(relay) => return relay,
            Err(e) => {
                eprintln!("relay not started yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("the relay could not listen on {addr}");
}

/// What a peer received: group, produced (else broadcast), payload.
type Got = (String, bool, Vec<u8>);

fn got(group: &str, produced: bool, payload: &str) -> Option<Got> {
    Some((group.to_owned(), produced, payload.as_bytes().to_vec()))
}

/// The embassy endpoint, a child process driven over stdin/stdout.
struct Embassy {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    events: VecDeque<String>,
    last_answer: String,
}

impl Embassy {
    async fn spawn(extra: &[&str]) -> Embassy {
        let relay = format!("{HOST_IP}:{PORT}");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tap-endpoint"))
            .args([
                "--tap",
                TAP,
                "--ip",
                EMBASSY_CIDR,
                "--relay",
                &relay,
                "--server-name",
                SERVER_NAME,
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start tap-endpoint");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut e = Embassy {
            child,
            stdin,
            lines,
            events: VecDeque::new(),
            last_answer: String::new(),
        };
        e.event("ready", 10).await;
        e
    }

    /// Ends the process and waits for it, so the next one can open the TAP device.
    async fn finish(mut self) {
        let _ = self.child.kill().await;
    }

    async fn next_line(&mut self, secs: u64) -> String {
        match tokio::time::timeout(Duration::from_secs(secs), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                println!("embassy: {line}");
                line
            }
            Ok(Ok(None)) => panic!("the embassy endpoint exited"),
            Ok(Err(e)) => panic!("reading the embassy endpoint: {e}"),
            Err(_) => panic!("the embassy endpoint said nothing for {secs} s"),
        }
    }

    /// Waits for an event line `! <prefix>…` (events seen earlier count).
    async fn event(&mut self, prefix: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        if let Some(i) = self.events.iter().position(|e| e.starts_with(prefix)) {
            let found = self.events.remove(i).unwrap_or_default();
            self.events.drain(..i);
            return found;
        }
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1);
            if Instant::now() >= deadline {
                panic!("no event {prefix:?} within {secs} s; saw {:?}", self.events);
            }
            let line = self.next_line(left).await;
            if let Some(event) = line.strip_prefix("! ") {
                if event.starts_with(prefix) {
                    return event.to_owned();
                }
                self.events.push_back(event.to_owned());
            }
        }
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to the embassy endpoint");
        self.stdin.flush().await.expect("flush");
    }

    /// The next answer line (`= …`), events set aside.
    async fn answer(&mut self, expected: &str) {
        let answer = self.read_answer().await;
        assert_eq!(answer, expected);
    }

    async fn read_answer(&mut self) -> String {
        loop {
            let line = self.next_line(30).await;
            if let Some(answer) = line.strip_prefix("= ") {
                return answer.to_owned();
            }
            if let Some(event) = line.strip_prefix("! ") {
                self.events.push_back(event.to_owned());
            }
        }
    }

    async fn expect(&mut self, command: &str, expected: &str) {
        self.send(command).await;
        let answer = self.read_answer().await;
        assert_eq!(answer, expected, "answer to {command:?}");
    }

    async fn expect_prefix(&mut self, command: &str, expected: &str) {
        self.send(command).await;
        let answer = self.read_answer().await;
        assert!(
            answer.starts_with(expected),
            "answer to {command:?}: {answer:?}, expected {expected:?}…"
        );
        self.last_answer = answer;
    }
}

/// The host-side peer: the std endpoint of `tlsro`, carrying raw bytes.
struct Peer {
    ep: tlsro::Endpoint<Vec<u8>, tlsro::RawBytes>,
}

impl Peer {
    async fn connect(addr: SocketAddr, ca: &Path, groups: &[&str]) -> Peer {
        let ep = tlsro::Endpoint::<Vec<u8>>::builder(addr.to_string(), PASSWORD)
            .codec(tlsro::RawBytes)
            .security(tlsro::Security::Tls {
                ca: tlsro::CaSource::File(ca.to_owned()),
                server_name: Some(SERVER_NAME.to_owned()),
            })
            .groups(groups.iter().copied())
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("peer: connect");
        Peer { ep }
    }

    /// Publishes and waits for the relay's confirmation.
    async fn publish(&mut self, kind: PublishKind, group: &str, payload: &[u8]) {
        let value = payload.to_vec();
        let receipt = match kind {
            PublishKind::Broadcast => self.ep.broadcast(&value, group),
            PublishKind::Produce => self.ep.produce(&value, group),
        }
        .expect("peer: publish");
        receipt.wait().await.expect("peer: confirmed by the relay");
    }

    async fn notify(&mut self, group: &str, n: i32) {
        self.ep.notify(group, n).expect("peer: notify");
    }

    async fn recv(&mut self, secs: u64) -> Option<Got> {
        let mut items = self
            .ep
            .pop(1, tlsro::Wait::Timeout(Duration::from_secs(secs)))
            .await
            .expect("peer: pop");
        let item = items.pop()?;
        let produced = item.kind == tlsro::ReceivedKind::Produced;
        Some((item.group, produced, item.value))
    }
}
