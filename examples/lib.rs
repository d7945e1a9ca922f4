//! What the examples share: throwaway credentials, so every example runs over real TLS with
//! nothing to configure.

use std::path::PathBuf;

use tlsro::credentials::{self, GenerateOptions};

/// Credentials made for one run of an example: a fresh CA, a relay certificate for
/// `localhost` / `127.0.0.1`, and a random password, in a directory of their own.
pub struct LocalCredentials {
    /// The credentials directory (`ca.pem`, `relay.pem`, `relay.key`, `password`, …).
    pub dir: PathBuf,
    /// The relay password, as read from `dir/password`.
    pub password: Vec<u8>,
}

impl LocalCredentials {
    /// Generates credentials in a new directory under the system's temporary directory.
    pub fn generate(name: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!(
            "tlsro-example-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        let generated = credentials::generate(&GenerateOptions::new(&dir))?;
        let password = credentials::read_password(&generated.credentials.password())?;
        Ok(LocalCredentials { dir, password })
    }

    /// TLS trusting this run's CA.
    pub fn security(&self) -> tlsro::Security {
        tlsro::Security::Tls {
            ca: tlsro::CaSource::Dir(self.dir.clone()),
            server_name: Some("localhost".into()),
        }
    }
}

impl Drop for LocalCredentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
