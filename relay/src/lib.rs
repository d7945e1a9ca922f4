//! The tlsro relay: the centre every endpoint connects to.
//!
//! Start one in-process (as tlspyo's `Relay(...)` does) with [`Relay::builder`], or run the
//! `tlsro-relay` command. The relay never decodes objects: they are opaque bytes to it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let relay = tlsro_relay::Relay::builder(b"password".to_vec())
//!     .listen("127.0.0.1:0".parse()?)
//!     .tls_from_dir(&tlsro::credentials::default_dir())?
//!     .start()
//!     .await?;
//! println!("relay on {}", relay.local_addr());
//! relay.stop().await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod server;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use server::{RelayHandle, Security, StartError};
pub use tlsro_proto::relay::{GroupLimits, Overflow, RelayConfig, RelayStats};

use tlsro_proto::auth::AuthKey;

/// A deferred change to the protocol configuration.
type ConfigureFn = Box<dyn FnOnce(&mut RelayConfig) + Send>;

/// Builds and starts a relay.
pub struct RelayBuilder {
    password: Vec<u8>,
    listen: SocketAddr,
    security: Option<Security>,
    configure: Vec<ConfigureFn>,
    busy_poll: Option<std::time::Duration>,
}

/// Entry point: `Relay::builder(password)`.
pub struct Relay;

impl Relay {
    /// A relay with this password, listening on 127.0.0.1:7000 with TLS unless told otherwise.
    pub fn builder(password: impl Into<Vec<u8>>) -> RelayBuilder {
        RelayBuilder {
            password: password.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            security: None,
            configure: Vec::new(),
            busy_poll: None,
        }
    }
}

impl RelayBuilder {
    /// Where to listen (port 0: the OS picks one; read it from [`RelayHandle::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// TLS with this rustls configuration.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.security = Some(Security::Tls(config));
        self
    }

    /// TLS with `relay.pem` and `relay.key` from a credentials directory.
    pub fn tls_from_dir(self, dir: &Path) -> Result<Self, tlsro::tls::TlsSetupError> {
        let config = tlsro::tls::server_config_from_dir(dir)?;
        Ok(self.tls(config))
    }

    /// Plain TCP: the password proof still applies, but nothing after it is secret or protected.
    pub fn plain(mut self) -> Self {
        self.security = Some(Security::Plain);
        self
    }

    /// Adds `group` to the allow-list with these limits. Once any group is listed, only listed
    /// groups can be joined or published to.
    pub fn group(self, name: impl Into<String>, limits: GroupLimits) -> Self {
        let name = name.into();
        self.configure(move |c| {
            c.allowed_groups
                .get_or_insert_with(Default::default)
                .insert(name, limits);
        })
    }

    /// Adjusts any limit of the protocol configuration.
    pub fn configure(mut self, f: impl FnOnce(&mut RelayConfig) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Busy polling for lower latency: after each read or write the relay's runtime spins for
    /// `window` instead of sleeping, so the next bytes are taken at once rather than after a
    /// wake-up (tens of microseconds on virtual machines). It costs up to a core of CPU while
    /// traffic keeps coming. Needs a current-thread runtime; [`start`](Self::start) fails with
    /// [`StartError::BusyPoll`] on a multi-thread one. See [`tlsro::busy_poll`]. Default: off.
    pub fn busy_poll(mut self, window: std::time::Duration) -> Self {
        self.busy_poll = Some(window);
        self
    }

    /// Whether (and for how long) [`busy_poll`](Self::busy_poll) was asked for: the
    /// `tlsro-relay` command picks its runtime by it.
    pub fn busy_poll_window(&self) -> Option<std::time::Duration> {
        self.busy_poll
    }

    /// Binds the socket and starts serving.
    pub async fn start(self) -> Result<RelayHandle, StartError> {
        let security = self.security.ok_or(StartError::NoSecurity)?;
        let password = self.password;
        tlsro_proto::auth::check_password(&password)
            .map_err(|e| StartError::InvalidConfig(e.to_owned()))?;
        // PBKDF2 takes a few milliseconds: keep it off the async threads.
        let key = tokio::task::spawn_blocking(move || AuthKey::derive(&password))
            .await
            .expect("key derivation does not panic");
        let mut config = RelayConfig::new(key, server::random_epoch());
        for f in self.configure {
            f(&mut config);
        }
        server::start_with(self.listen, security, config, self.busy_poll).await
    }
}
