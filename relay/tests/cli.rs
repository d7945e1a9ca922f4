//! The `tlsro-relay` binary, run for real: credentials, `run` with and without configuration,
//! configuration errors. Every child runs with HOME and XDG_DATA_HOME in a temporary directory,
//! so the real default credentials directory is never touched, and is killed if it overstays.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tlsro-relay");
/// Bound on any one command, and on waiting for a line of output.
const TIMEOUT: Duration = Duration::from_secs(60);
const FINGERPRINT_PREFIX: &str = "CA fingerprint (SHA-256): ";
const LISTENING_PREFIX: &str = "listening on ";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tlsro-relay-cli-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a private home (`home`), no inherited password, no stdin, default logging.
fn command(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("TLSRO_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The default credentials directory the child sees with this `home` (Linux layout).
fn child_default_dir(home: &Path) -> PathBuf {
    home.join("data").join("tlsro").join("credentials")
}

/// What a finished command printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs `cmd` to completion, killing it (and failing) after [`TIMEOUT`].
fn finish(mut cmd: Command) -> Finished {
    let mut child = cmd.spawn().expect("spawn tlsro-relay");
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tlsro-relay did not finish within {TIMEOUT:?}");
    });
    Finished {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn fingerprint_in(stdout: &str) -> String {
    let fingerprint = stdout
        .lines()
        .find_map(|l| l.strip_prefix(FINGERPRINT_PREFIX))
        .unwrap_or_else(|| panic!("no fingerprint line in:\n{stdout}"));
    let pairs: Vec<&str> = fingerprint.split(':').collect();
    assert_eq!(pairs.len(), 32, "{fingerprint}");
    assert!(
        pairs
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())),
        "{fingerprint}"
    );
    fingerprint.to_owned()
}

/// `credentials generate --dir HOME/creds`, which must succeed: the directory and its output.
fn generate_credentials(home: &TempDir) -> (PathBuf, Finished) {
    let dir = home.path().join("creds");
    let generated = finish(command(
        home.path(),
        &["credentials", "generate", "--dir", dir.to_str().unwrap()],
    ));
    assert!(generated.status.success(), "{}", generated.stderr);
    (dir, generated)
}

/// A running `tlsro-relay run`, killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("spawn tlsro-relay");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(read_all(child.stderr.take().unwrap()));
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns the rest of it.
    fn line_after(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap());
                    panic!(
                        "no line starting with {prefix:?}; stdout so far:\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        stderr.unwrap_or_default()
                    );
                }
            }
        }
    }

    fn listening(&mut self) -> SocketAddr {
        let addr = self.line_after(LISTENING_PREFIX);
        addr.parse()
            .unwrap_or_else(|e| panic!("{addr:?} is not an address: {e}"))
    }

    /// Asks the relay to stop with SIGTERM (with the system's `kill`); returns its exit status,
    /// or `None` when `kill` is not available.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            return None;
        }
        let status = wait_bounded(&mut self.child, TIMEOUT);
        assert!(status.is_some(), "the relay ignored SIGTERM");
        status
    }
}

impl Running {
    /// Stops the relay and returns what it wrote on stderr (its log).
    fn stop_and_read_log(mut self) -> String {
        let _ = self.child.kill();
        let _ = wait_bounded(&mut self.child, TIMEOUT);
        self.stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects with TLS, trusting only `ca_dir`'s CA, as `localhost`.
fn tls_handshake(addr: SocketAddr, ca_dir: &Path) {
    let config = tlsro::tls::client_config_from_dir(ca_dir).expect("client config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = tlsro::tls::server_name("localhost").unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
        };
        tokio::time::timeout(TIMEOUT, connect)
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake with the relay");
    });
}

#[test]
fn generate_writes_five_files_and_show_agrees() {
    let home = TempDir::new("generate");
    let (dir, generated) = generate_credentials(&home);
    let dir_arg = dir.to_str().unwrap();
    let fingerprint = fingerprint_in(&generated.stdout);
    for name in ["ca.pem", "ca.key", "relay.pem", "relay.key", "password"] {
        let path = dir.join(name);
        assert!(path.is_file(), "{} missing", path.display());
        assert!(
            generated
                .stdout
                .contains(&format!("wrote {}", path.display())),
            "{} not reported:\n{}",
            path.display(),
            generated.stdout
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("relay.key"), 0o600);
        assert_eq!(mode("password"), 0o600);
    }
    assert!(generated.stdout.contains("endpoints: copy"));

    let shown = finish(command(
        home.path(),
        &["credentials", "show", "--dir", dir_arg],
    ));
    assert!(shown.status.success(), "{}", shown.stderr);
    assert_eq!(fingerprint_in(&shown.stdout), fingerprint);
    assert_eq!(
        shown
            .stdout
            .lines()
            .filter(|l| l.starts_with("present "))
            .count(),
        5,
        "{}",
        shown.stdout
    );

    // A second generation is refused, naming the way out, and changes nothing.
    let again = finish(command(
        home.path(),
        &["credentials", "generate", "--dir", dir_arg],
    ));
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stderr.starts_with("error: "), "{}", again.stderr);
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    let shown = finish(command(
        home.path(),
        &["credentials", "show", "--dir", dir_arg],
    ));
    assert_eq!(fingerprint_in(&shown.stdout), fingerprint);

    // With --force: a new CA.
    let forced = finish(command(
        home.path(),
        &[
            "credentials",
            "generate",
            "--dir",
            dir_arg,
            "--force",
            "--hostname",
            "relay.example",
            "--ip",
            "192.0.2.7",
        ],
    ));
    assert!(forced.status.success(), "{}", forced.stderr);
    assert_ne!(fingerprint_in(&forced.stdout), fingerprint);
    assert!(
        forced.stdout.contains("relay.example, 192.0.2.7"),
        "{}",
        forced.stdout
    );
}

#[test]
fn show_and_generate_report_problems() {
    let home = TempDir::new("show-missing");
    let dir = home.path().join("nothing");
    let shown = finish(command(
        home.path(),
        &["credentials", "show", "--dir", dir.to_str().unwrap()],
    ));
    assert!(shown.status.success(), "{}", shown.stderr);
    assert_eq!(
        shown
            .stdout
            .lines()
            .filter(|l| l.starts_with("missing "))
            .count(),
        5,
        "{}",
        shown.stdout
    );
    assert!(!shown.stdout.contains(FINGERPRINT_PREFIX));

    let too_many = finish(command(
        home.path(),
        &[
            "credentials",
            "generate",
            "--dir",
            dir.to_str().unwrap(),
            "--hostname",
            "a.example",
            "--hostname",
            "b.example",
            "--hostname",
            "c.example",
            "--hostname",
            "d.example",
        ],
    ));
    assert_eq!(too_many.status.code(), Some(1));
    assert!(too_many.stderr.contains("at most 3"), "{}", too_many.stderr);
    assert!(!dir.exists());

    // A file where the directory should be.
    let file = home.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let generated = finish(command(
        home.path(),
        &["credentials", "generate", "--dir", file.to_str().unwrap()],
    ));
    assert_eq!(generated.status.code(), Some(1));
    assert!(
        generated.stderr.contains("is not a directory"),
        "{}",
        generated.stderr
    );
    let show = command(
        home.path(),
        &["credentials", "show", "--dir", file.to_str().unwrap()],
    );
    for (what, cmd) in [("show", show), ("run", run_tls_command(home.path(), &file))] {
        let run = finish(cmd);
        assert_eq!(run.status.code(), Some(1), "{what}");
        assert!(
            run.stderr.contains("is not a directory"),
            "{what}: {}",
            run.stderr
        );
    }
    // A configuration file that is not there says which file it is.
    let run = finish(run_plain(home.path(), &["--config", "absent.toml"]));
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains("configuration file absent.toml"),
        "{}",
        run.stderr
    );
}

/// `tlsro-relay run` with the credentials in `dir` on a port of the OS's choosing, the password
/// from the environment.
fn run_tls(home: &Path, dir: &Path) -> Running {
    Running::spawn(run_tls_command(home, dir))
}

/// The command of [`run_tls`].
fn run_tls_command(home: &Path, dir: &Path) -> Command {
    let mut cmd = command(
        home,
        &[
            "run",
            "--credentials",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    cmd.env("TLSRO_PASSWORD", "correct horse battery staple");
    cmd
}

#[test]
fn run_with_credentials_listens_serves_tls_and_stops_on_sigterm() {
    let home = TempDir::new("run-tls");
    let (dir, generated) = generate_credentials(&home);
    let fingerprint = fingerprint_in(&generated.stdout);

    let mut relay = run_tls(home.path(), &dir);
    assert_eq!(relay.line_after(FINGERPRINT_PREFIX), fingerprint);
    let endpoints = relay.line_after("endpoints: ");
    assert_eq!(
        endpoints,
        format!(
            "trust {}, password from $TLSRO_PASSWORD",
            dir.join("ca.pem").display()
        )
    );
    let addr = relay.listening();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    assert!(
        !child_default_dir(home.path()).exists(),
        "the default credentials directory was created"
    );

    tls_handshake(addr, &dir);

    if let Some(status) = relay.terminate() {
        assert!(status.success(), "exit status after SIGTERM: {status}");
        relay.line_after("stopped");
    }
}

/// A relay whose ca.pem did not sign relay.pem would tell endpoints to trust a CA that makes
/// them refuse it: it does not start.
#[test]
fn run_refuses_a_relay_certificate_its_ca_did_not_sign() {
    let home = TempDir::new("run-foreign-ca");
    let (dir, _) = generate_credentials(&home);
    let other = home.path().join("other");
    let generated = finish(command(
        home.path(),
        &["credentials", "generate", "--dir", other.to_str().unwrap()],
    ));
    assert!(generated.status.success(), "{}", generated.stderr);
    std::fs::copy(other.join("ca.pem"), dir.join("ca.pem")).unwrap();

    let run = finish(run_tls_command(home.path(), &dir));
    assert!(!run.status.success(), "started:\n{}", run.stdout);
    assert!(
        run.stderr.contains("would refuse the relay certificate")
            && run.stderr.contains("credentials generate")
            && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains(LISTENING_PREFIX), "{}", run.stdout);

    // A relay.pem cut short: the advice to generate again must work over the files there.
    let pem = std::fs::read_to_string(dir.join("relay.pem")).unwrap();
    std::fs::write(dir.join("relay.pem"), &pem[..pem.len() / 2]).unwrap();
    let run = finish(run_tls_command(home.path(), &dir));
    assert!(!run.status.success(), "started:\n{}", run.stdout);
    assert!(
        run.stderr.contains("cut short") && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
}

/// An expired relay certificate starts the relay with a warning (the endpoints' clocks judge,
/// and this machine's may be the wrong one) that says how to make new credentials.
#[test]
fn run_warns_about_a_relay_certificate_outside_its_dates() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let home = TempDir::new("run-expired");
    let (dir, _) = generate_credentials(&home);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let relay_key = KeyPair::generate().unwrap();
    let mut relay_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    relay_params.not_before = now - time::Duration::days(30);
    relay_params.not_after = now - time::Duration::days(1);
    let relay_cert = relay_params
        .signed_by(&relay_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    for (file, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("relay.pem", relay_cert.pem()),
        ("relay.key", relay_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
    #[cfg(unix)]
    for file in ["ca.key", "relay.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let mut relay = run_tls(home.path(), &dir);
    relay.listening();
    let log = relay.stop_and_read_log();
    assert!(log.contains("expired"), "{log}");
    assert!(log.contains("by this machine's clock"), "{log}");
    assert!(
        log.contains("credentials generate") && log.contains("--force"),
        "{log}"
    );
}

/// Private keys that other users can read are used, with a warning each (as for the password
/// file).
#[cfg(unix)]
#[test]
fn run_warns_about_keys_that_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let home = TempDir::new("run-key-modes");
    let (dir, _) = generate_credentials(&home);
    for file in ["relay.key", "ca.key"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut relay = run_tls(home.path(), &dir);
    relay.listening();
    let log = relay.stop_and_read_log();
    for what in ["the relay's private key", "the CA's private key"] {
        assert!(
            log.contains(&format!("{what} can be read by other users")),
            "no warning for {what}:\n{log}"
        );
    }
}

#[test]
fn run_with_nothing_configured_generates_development_credentials() {
    let home = TempDir::new("run-dev");
    let dir = child_default_dir(home.path());

    let mut relay = Running::spawn(command(home.path(), &["run", "--listen", "127.0.0.1:0"]));
    assert_eq!(
        relay.line_after("generated development credentials in "),
        dir.display().to_string()
    );
    let fingerprint = relay.line_after(FINGERPRINT_PREFIX);
    assert_eq!(
        relay.line_after("endpoints: "),
        format!(
            "trust {}, password in {}",
            dir.join("ca.pem").display(),
            dir.join("password").display()
        )
    );
    let addr = relay.listening();
    tls_handshake(addr, &dir);
    drop(relay);
    for name in ["ca.pem", "ca.key", "relay.pem", "relay.key", "password"] {
        assert!(dir.join(name).is_file(), "{name} missing");
    }

    // The second time they are reused, not regenerated.
    let mut relay = Running::spawn(command(home.path(), &["run", "--listen", "127.0.0.1:0"]));
    assert_eq!(relay.line_after(FINGERPRINT_PREFIX), fingerprint);
    relay.listening();
    assert!(
        !relay.seen.iter().any(|l| l.starts_with("generated")),
        "{:?}",
        relay.seen
    );
}

#[test]
fn run_applies_the_configuration_file_and_the_command_line_wins() {
    let home = TempDir::new("run-config");
    let config = home.path().join("relay.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nmax_object_size = \"1MiB\"\nhandshake_timeout = \"5s\"\n\
         [groups.consumers]\nmax_members = 2\noverflow = \"drop-oldest\"\n",
    )
    .unwrap();
    let password = home.path().join("pw");
    std::fs::write(&password, "s3cret\n").unwrap();

    let mut relay = Running::spawn(command(
        home.path(),
        &[
            "run",
            "--plain",
            "--config",
            config.to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        relay.line_after("endpoints: "),
        format!("connect without TLS, password in {}", password.display())
    );
    let addr = relay.listening();
    assert!(addr.ip().is_loopback());
    assert_ne!(
        addr.port(),
        7000,
        "the configuration file's listen was ignored"
    );
    drop(relay);

    // An address that cannot be bound in the file, a good one on the command line.
    std::fs::write(&config, "listen = \"192.0.2.1:9\"\n").unwrap();
    let cmd = run_plain(home.path(), &["--config", config.to_str().unwrap()]);
    let mut relay = Running::spawn(cmd);
    assert!(relay.listening().ip().is_loopback());
    drop(relay);
    assert!(!child_default_dir(home.path()).exists());
}

/// `run --plain --listen 127.0.0.1:0 EXTRA...`, with the password in the environment.
fn run_plain(home: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["run", "--plain", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut cmd = command(home, &args);
    cmd.env("TLSRO_PASSWORD", "s3cret");
    cmd
}

/// `run --plain --listen 127.0.0.1:0 --config FILE` with `toml` in FILE, to its end; the
/// outcome and FILE.
fn run_plain_with_config(home: &TempDir, toml: &str) -> (Finished, PathBuf) {
    let config = home.path().join("relay.toml");
    std::fs::write(&config, toml).unwrap();
    let cmd = run_plain(home.path(), &["--config", config.to_str().unwrap()]);
    (finish(cmd), config)
}

#[test]
fn run_refuses_a_configuration_file_with_an_unknown_key() {
    let home = TempDir::new("run-bad-config");
    let (run, config) =
        run_plain_with_config(&home, "listen = \"127.0.0.1:0\"\nmax_conections = 5\n");
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.contains("max_conections"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&*config.to_string_lossy()),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains(LISTENING_PREFIX));
}

#[test]
fn run_without_credentials_or_password_fails_clearly() {
    let home = TempDir::new("run-missing");
    let empty = home.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty_arg = empty.to_str().unwrap();

    // TLS asked for, no certificate.
    let mut cmd = command(
        home.path(),
        &["run", "--credentials", empty_arg, "--listen", "127.0.0.1:0"],
    );
    cmd.env("TLSRO_PASSWORD", "s3cret");
    let run = finish(cmd);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("relay.pem"), "{}", run.stderr);
    assert!(
        run.stderr.contains("credentials generate"),
        "{}",
        run.stderr
    );

    // Plain, and no password anywhere (stdin is not a terminal: no prompt).
    let run = finish(command(
        home.path(),
        &[
            "run",
            "--plain",
            "--credentials",
            empty_arg,
            "--listen",
            "127.0.0.1:0",
        ],
    ));
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains("no password") && run.stderr.contains("TLSRO_PASSWORD"),
        "{}",
        run.stderr
    );

    // An empty TLSRO_PASSWORD is a mistake, not "no password".
    let mut cmd = command(
        home.path(),
        &[
            "run",
            "--plain",
            "--credentials",
            empty_arg,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    cmd.env("TLSRO_PASSWORD", "");
    let run = finish(cmd);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("empty"), "{}", run.stderr);
    // So is one of only whitespace: it is read as a password file is (trailing whitespace
    // dropped), which would leave nothing.
    let mut cmd = run_plain(home.path(), &["--credentials", empty_arg]);
    cmd.env("TLSRO_PASSWORD", " \n");
    let run = finish(cmd);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("set but empty"), "{}", run.stderr);
    assert!(!child_default_dir(home.path()).exists());
}

/// With no password in the environment, a file or the credentials directory, `run` asks for
/// one at a terminal. The terminal is a pseudo-terminal made by util-linux's `script`; without
/// `script` the test says so and checks nothing (`CI=true` makes that a failure).
#[test]
fn run_asks_for_the_password_at_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`script` (util-linux) is needed for this test"
        );
        eprintln!("SKIPPED: no `script` command for a pseudo-terminal");
        return;
    }
    let home = TempDir::new("run-prompt");
    let (dir, _) = generate_credentials(&home);
    let dir_arg = dir.to_str().unwrap();
    // No password file: the prompt is the only source left.
    std::fs::remove_file(dir.join("password")).unwrap();

    // `script` runs the relay on a pseudo-terminal, with the environment `command` sets up.
    let relay_line = format!("{BIN} run --credentials {dir_arg} --listen 127.0.0.1:0");
    let template = command(home.path(), &[]);
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &relay_line, "/dev/null"]);
    for (key, value) in template.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().expect("spawn script"));
    let child = &mut child.0;
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _stderr = read_all(child.stderr.take().unwrap());
    // The terminal's output so far, byte by byte: the prompt ends without a newline.
    let (tx, output) = mpsc::channel();
    thread::spawn(move || {
        let (mut reader, mut text, mut byte) = (BufReader::new(stdout), Vec::new(), [0u8; 1]);
        while reader.read(&mut byte).is_ok_and(|n| n == 1) {
            text.push(byte[0]);
            if tx
                .send(String::from_utf8_lossy(&text).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let wait_until = |done: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match output.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(text) if done(&text) => return text,
                Ok(_) => {}
                Err(_) => panic!("the relay's terminal did not show what was expected"),
            }
        }
    };
    wait_until(&|t| t.ends_with("relay password: "));
    use std::io::Write as _;
    stdin.write_all(b"typed at the prompt\n").unwrap();
    stdin.flush().unwrap();
    // A whole `listening on ADDR` line.
    let listening = |t: &str| {
        t.split_once(LISTENING_PREFIX)
            .and_then(|(_, rest)| rest.split_once('\n'))
            .map(|(addr, _)| addr.trim().to_owned())
    };
    let text = wait_until(&|t| listening(t).is_some());
    assert!(
        text.contains("password as typed at the prompt"),
        "the relay did not say where its password came from:\n{text}"
    );
    let addr: SocketAddr = listening(&text).unwrap().parse().expect("an address");
    tls_handshake(addr, &dir);
}

/// A child process killed when this goes out of scope, also when a test fails (`script`'s
/// child, the relay, goes with its terminal).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_bounded(&mut self.0, TIMEOUT);
    }
}

#[test]
fn run_with_busy_poll_serves_on_one_thread_and_refuses_bad_windows() {
    let home = TempDir::new("run-busy-poll");
    let cmd = run_plain(home.path(), &["--busy-poll", "200us"]);
    let mut relay = Running::spawn(cmd);
    assert_eq!(
        relay.line_after("busy polling: "),
        "one thread, spinning 200 µs after traffic"
    );
    let addr = relay.listening();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let exchange = async {
            let ep = tlsro::Endpoint::<String>::builder(addr.to_string(), "s3cret")
                .security(tlsro::Security::Plain)
                .groups(["g"])
                .busy_poll(Duration::from_micros(200))
                .connect()
                .await
                .expect("connect to the busy-polling relay");
            ep.broadcast(&"spun".to_owned(), "g").unwrap();
            let got = ep.pop(1, tlsro::Wait::Forever).await.unwrap();
            assert_eq!(got[0].value, "spun");
            ep.stop().await.unwrap();
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .expect("the exchange timed out");
    });
    drop(relay);

    // Zero, absurdly long (a wrong unit, most likely) and unit-less windows are refused.
    for (window, says) in [
        ("0us", "never spin"),
        ("999999m", "longer than"),
        ("200", "has no unit"),
    ] {
        let run = finish(run_plain(home.path(), &["--busy-poll", window]));
        assert_eq!(run.status.code(), Some(2), "{window}: {}", run.stdout);
        assert!(run.stderr.contains(says), "{window}: {}", run.stderr);
        assert!(!run.stdout.contains(LISTENING_PREFIX));
    }
    // In the file too.
    let (run, _) = run_plain_with_config(&home, "busy_poll = \"10s\"\n");
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);
    assert!(run.stderr.contains("longer than"), "{}", run.stderr);
    assert!(!run.stdout.contains(LISTENING_PREFIX));
}

#[test]
fn run_on_a_busy_port_fails_before_generating_credentials() {
    let home = TempDir::new("run-busy-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = finish(command(home.path(), &["run", "--listen", &addr]));
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        run.stderr
    );
    assert!(
        !child_default_dir(home.path()).exists(),
        "credentials were written for a relay that could not start"
    );
    drop(taken);
}

/// Command-line values that cannot work are refused with what to write instead: a host name
/// for `--listen`, a password file that is not there (named as the option's).
#[test]
fn run_refuses_bad_flags_clearly() {
    let home = TempDir::new("run-bad-flags");
    let run = finish(command(
        home.path(),
        &["run", "--plain", "--listen", "localhost:7000"],
    ));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("IP:PORT") && run.stderr.contains("127.0.0.1:7000"),
        "{}",
        run.stderr
    );
    let mut cmd = run_plain(home.path(), &["--password-file", "absent-password"]);
    cmd.env_remove("TLSRO_PASSWORD");
    let run = finish(cmd);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("--password-file: absent-password"),
        "{}",
        run.stderr
    );
}
