//! [`Builder`]: every setting of an endpoint, with its default, and `connect`.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tlsro_proto::auth::AuthKey;
use tlsro_proto::endpoint::{EndpointConfig, EndpointSession};
use tlsro_proto::frame::MIN_MAX_FRAME;
use tokio::sync::oneshot;

use super::driver::{Driver, DriverConfig};
use super::state::{Limits, Shared};
use super::{Backoff, Endpoint, Inner};
use crate::busy_poll::BusyPoll;
use crate::codec::{Codec, Postcard};
use crate::error::Error;
use crate::transport::{self, Link};

/// The default largest frame the endpoint accepts: a 16 MiB object plus its header (the relay's
/// default object limit).
pub const DEFAULT_MAX_FRAME: u32 = tlsro_proto::endpoint::DEFAULT_RELAY_MAX_FRAME;

/// How the connection to the relay is secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS 1.3, trusting exactly the given CA (the default, with the CA of
    /// [`credentials::default_dir`](crate::credentials::default_dir)).
    Tls {
        /// The certificate authority the relay's certificate must be signed by.
        ca: CaSource,
        /// The name the relay's certificate must carry; `None`: the host part of the relay
        /// address (an IP address is matched against the certificate's IP addresses).
        server_name: Option<String>,
    },
    /// Plain TCP. The password still never crosses the wire, but frames are neither secret
    /// nor protected, and a recorded handshake allows offline guessing of the password.
    Plain,
}

impl Default for Security {
    fn default() -> Self {
        Security::Tls {
            ca: CaSource::Dir(crate::credentials::default_dir()),
            server_name: None,
        }
    }
}

/// Where the CA certificate that authenticates the relay comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// A PEM file holding the CA certificate (`ca.pem`).
    File(PathBuf),
    /// A credentials directory holding `ca.pem` (as written by `tlsro-relay credentials
    /// generate`).
    Dir(PathBuf),
    /// A ready rustls configuration (it should offer the ALPN protocol
    /// [`tls::ALPN_PROTOCOL`](crate::tls::ALPN_PROTOCOL)).
    Config(Arc<ClientConfig>),
}

/// The error for a group list `EndpointConfig::new` refused: names the offending group (or
/// counts them), rather than printing a list that may hold thousands of names.
fn bad_groups(groups: &[&str], e: tlsro_proto::endpoint::Error) -> Error {
    use tlsro_proto::endpoint::Error as E;
    let detail = match e {
        E::BadGroupName => match groups
            .iter()
            .find(|g| tlsro_proto::frame::check_group_name(g).is_err())
        {
            Some(g) if g.len() > 80 => {
                let start: String = g.chars().take(40).collect();
                format!("group {start:?}… ({} bytes): {e}", g.len())
            }
            Some(g) => format!("group {g:?}: {e}"),
            None => e.to_string(),
        },
        E::TooManyGroups => format!("{} groups given: {e}", groups.len()),
        e => e.to_string(),
    };
    Error::InvalidConfig(detail)
}

/// Configures and connects an [`Endpoint`]; made by [`Endpoint::builder`].
pub struct Builder<T, C = Postcard> {
    addr: String,
    password: Vec<u8>,
    groups: Vec<String>,
    security: Security,
    codec: C,
    max_frame: u32,
    keepalive: Duration,
    connect_timeout: Duration,
    backoff: Backoff,
    max_buffered: usize,
    max_queued: usize,
    stop_timeout: Duration,
    busy_poll: Option<Duration>,
    _type: PhantomData<fn(T) -> T>,
}

impl<T, C: fmt::Debug> fmt::Debug for Builder<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("addr", &self.addr)
            .field("password", &"..")
            .field("groups", &self.groups)
            .field("security", &self.security)
            .field("codec", &self.codec)
            .field("max_frame", &self.max_frame)
            .field("keepalive", &self.keepalive)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("max_buffered_bytes", &self.max_buffered)
            .field("max_queued_bytes", &self.max_queued)
            .field("stop_timeout", &self.stop_timeout)
            .field("busy_poll", &self.busy_poll)
            .finish()
    }
}

impl<T> Builder<T, Postcard> {
    pub(super) fn new(addr: String, password: Vec<u8>) -> Self {
        Builder {
            addr,
            password,
            groups: Vec::new(),
            security: Security::default(),
            codec: Postcard,
            max_frame: DEFAULT_MAX_FRAME,
            keepalive: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_buffered: 64 * 1024 * 1024,
            max_queued: 64 * 1024 * 1024,
            stop_timeout: Duration::from_secs(5),
            busy_poll: None,
            _type: PhantomData,
        }
    }
}

impl<T, C: Codec> Builder<T, C> {
    /// The groups this endpoint is a member of (at most 16 names of 1 to 64 bytes). It receives
    /// their broadcasts and may `notify` for their produced objects. Sending needs no
    /// membership. Default: none.
    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// How the connection is secured. Default: TLS, trusting the CA in
    /// [`credentials::default_dir`](crate::credentials::default_dir).
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The codec objects are encoded with; every endpoint of a group must use the same one.
    /// Default: [`Postcard`].
    pub fn codec<C2: Codec>(self, codec: C2) -> Builder<T, C2> {
        Builder {
            addr: self.addr,
            password: self.password,
            groups: self.groups,
            security: self.security,
            codec,
            max_frame: self.max_frame,
            keepalive: self.keepalive,
            connect_timeout: self.connect_timeout,
            backoff: self.backoff,
            max_buffered: self.max_buffered,
            max_queued: self.max_queued,
            stop_timeout: self.stop_timeout,
            busy_poll: self.busy_poll,
            _type: PhantomData,
        }
    }

    /// The largest frame (object plus about 100 bytes of header) this endpoint accepts; the
    /// relay skips broadcasts that are larger (reported as [`Event::Skipped`](super::Event)) and
    /// keeps larger produced objects for other consumers. At least 1024. Default: 16 MiB + 1 KiB.
    pub fn max_frame(mut self, bytes: u32) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Ping the relay after this much silence; the relay is considered gone after three times
    /// as much. Default: 5 s.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.keepalive = interval;
        self
    }

    /// How long the first connect keeps trying an unreachable relay (and the deadline of each
    /// handshake). Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The delays between connection attempts. Default: [`Backoff::default`].
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Bytes of published objects kept until the relay confirms them (so they can be sent
    /// again after a reconnect). A publish that would exceed it fails with
    /// [`Error::BufferFull`]. Default: 64 MiB.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.max_buffered = bytes;
        self
    }

    /// Bytes of received objects waiting in the local queue above which the endpoint stops
    /// reading from the relay until the application takes some. The relay then holds them (and
    /// disconnects the endpoint as a slow consumer if it falls too far behind) instead of the
    /// endpoint growing without bound. Default: 64 MiB.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued = bytes;
        self
    }

    /// How long [`Endpoint::stop`] waits for the relay to confirm every publish and to answer
    /// the `Close`. Default: 5 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Busy polling for lower latency: after each read or write, the runtime is kept from
    /// sleeping for `window` (it spins, polling the socket), so the relay's next bytes are taken
    /// at once instead of after a wake-up, which costs tens of microseconds on virtual machines.
    /// It costs CPU: the thread runs flat out until `window` passes with no traffic. Needs a
    /// current-thread runtime (`#[tokio::main(flavor = "current_thread")]`, or the blocking
    /// endpoint); `connect` fails with [`Error::InvalidConfig`] on a multi-thread one. See
    /// [`busy_poll`](crate::busy_poll). Default: off.
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = Some(window);
        self
    }

    /// Connects to the relay and authenticates.
    ///
    /// Fails fast when retrying cannot help: [`Error::WrongPassword`],
    /// [`Error::CertificateRejected`], [`Error::RelayNotAuthenticated`],
    /// [`Error::GroupRefused`], [`Error::GroupFull`], [`Error::UnsupportedVersion`],
    /// [`Error::TlsMismatch`], [`Error::InvalidConfig`], or a relay that sends garbage
    /// ([`Error::Protocol`]). An unreachable relay is retried with backoff until the connect
    /// timeout, then [`Error::RelayUnreachable`]. Must be called within a tokio runtime with
    /// the time and I/O drivers enabled.
    pub async fn connect(self) -> Result<Endpoint<T, C>, Error> {
        let host = transport::host_of(&self.addr)?;
        let link = match &self.security {
            Security::Plain => Link::Plain,
            Security::Tls { ca, server_name } => {
                let config = match ca {
                    CaSource::File(path) => crate::tls::client_config(path),
                    CaSource::Dir(dir) => crate::tls::client_config_from_dir(dir),
                    CaSource::Config(config) => Ok(config.clone()),
                }
                .map_err(|e| {
                    Error::InvalidConfig(format!(
                        "cannot load the CA certificate that authenticates the relay \
                         (copy ca.pem from the relay's credentials directory): {e}"
                    ))
                })?;
                let name = crate::tls::server_name(server_name.as_deref().unwrap_or(host))
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                Link::Tls { config, name }
            }
        };
        tlsro_proto::auth::check_password(&self.password)
            .map_err(|e| Error::InvalidConfig(e.to_owned()))?;
        if self.max_frame < MIN_MAX_FRAME {
            return Err(Error::InvalidConfig(format!(
                "max_frame must be at least {MIN_MAX_FRAME} bytes, not {}",
                self.max_frame
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "the connect timeout must not be zero (no handshake can finish in no time)"
                    .to_owned(),
            ));
        }
        if self.keepalive.is_zero() {
            return Err(Error::InvalidConfig(
                "the keepalive interval must not be zero".to_owned(),
            ));
        }

        let busy_poll = self
            .busy_poll
            .map(BusyPoll::start)
            .transpose()
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;

        let mut session_id = [0; 16];
        getrandom::fill(&mut session_id).map_err(|e| {
            Error::Io(Arc::new(std::io::Error::other(format!(
                "no random numbers from the OS: {e}"
            ))))
        })?;
        // PBKDF2 takes a few milliseconds: not on the runtime's threads.
        let password = self.password;
        let key = tokio::task::spawn_blocking(move || AuthKey::derive(&password))
            .await
            .map_err(|e| Error::Closed(format!("key derivation failed: {e}")))?;
        let groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        let mut config =
            EndpointConfig::new(key, session_id, &groups).map_err(|e| bad_groups(&groups, e))?;
        config.max_frame = self.max_frame;
        config.keepalive = self.keepalive;
        config.dead_after = self.keepalive.saturating_mul(3);
        config.handshake_timeout = self.connect_timeout;

        let limits = Limits {
            max_buffered: self.max_buffered,
            max_queued: self.max_queued,
            stop_timeout: self.stop_timeout,
        };
        let shared = Arc::new(Shared::new(EndpointSession::new(config), limits));
        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver::new(
            shared.clone(),
            DriverConfig {
                addr: self.addr.clone(),
                link,
                backoff: self.backoff,
                connect_timeout: self.connect_timeout,
                write_stall: self.keepalive.saturating_mul(3),
                busy_poll,
            },
            first_tx,
        );
        let task = tokio::spawn(driver.run());
        // From here on, dropping the future (or the endpoint) stops the task.
        let inner = Arc::new(Inner {
            shared,
            task: task.abort_handle(),
            addr: self.addr,
            groups: self.groups,
            encoded_hint: Default::default(),
        });
        match first_rx.await {
            Ok(Ok(())) => Ok(Endpoint {
                inner,
                codec: self.codec,
                _type: PhantomData,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed(
                "the endpoint's background task ended".to_owned(),
            )),
        }
    }

    /// Connects like [`connect`](Self::connect) and returns a
    /// [`blocking::Endpoint`](crate::blocking::Endpoint) that owns a small tokio runtime (one
    /// worker thread) for its background task. Must not be called from async code.
    pub fn connect_blocking(self) -> Result<crate::blocking::Endpoint<T, C>, Error> {
        crate::blocking::Endpoint::connect(self)
    }
}
