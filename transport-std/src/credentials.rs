//! Credentials: the CA, the relay certificate and the shared password.
//!
//! `generate` makes an ECDSA P-256 certificate authority and a relay certificate signed directly by
//! it, both fit for embedded-tls (TLS 1.3, secp256r1, ECDSA-SHA256), plus a random 256-bit password.
//! Endpoints trust exactly one thing: the CA file (`ca.pem`). The CA's SHA-256 fingerprint is given
//! so that people can compare it across machines.
//!
//! Files in a credentials directory:
//!
//! | file        | content                                         | mode |
//! |-------------|-------------------------------------------------|------|
//! | `ca.pem`    | the CA certificate (what endpoints trust)       | 0644 |
//! | `ca.key`    | the CA private key (PKCS#8), to issue more      | 0600 |
//! | `relay.pem` | the relay certificate, signed by the CA         | 0644 |
//! | `relay.key` | the relay private key (PKCS#8)                  | 0600 |
//! | `password`  | 64 lowercase hex characters and a newline       | 0600 |

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the relay certificate.
pub const RELAY_CERT_FILE: &str = "relay.pem";
/// File name of the relay private key.
pub const RELAY_KEY_FILE: &str = "relay.key";
/// File name of the shared password.
pub const PASSWORD_FILE: &str = "password";

/// At most this many DNS names go into the relay certificate (embedded-tls checks only the first 3).
pub const MAX_DNS_NAMES: usize = 3;
/// Every DNS name in the relay certificate must be shorter than this (an embedded-tls limit).
pub const DNS_NAME_LIMIT: usize = 64;

/// Validity of generated certificates, in days from now (about 10 years).
const VALIDITY_DAYS: i64 = 3650;
/// Number of random bytes in a generated password (256 bits).
const PASSWORD_BYTES: usize = 32;
/// Number of bytes of a random certificate serial number.
const SERIAL_BYTES: usize = 16;

/// Errors from generating, reading or showing credentials. Every message names the file or the
/// value concerned.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file exists and overwriting was not asked for.
    #[error("{} already exists; refusing to overwrite it (ask for overwrite to replace it)", path.display())]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// More DNS names were given than microcontrollers check.
    #[error(
        "{count} DNS names given, at most {MAX_DNS_NAMES} allowed (embedded-tls checks only the first {MAX_DNS_NAMES})"
    )]
    TooManyDnsNames {
        /// How many names were given.
        count: usize,
    },
    /// A DNS name is too long for microcontrollers.
    #[error(
        "DNS name {name:?} is {len} characters long; it must be shorter than {DNS_NAME_LIMIT} characters"
    )]
    DnsNameTooLong {
        /// The name.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A DNS name is not a valid host name, or not one a certificate can carry.
    #[error("{name:?} is not a valid DNS name: {reason}")]
    InvalidDnsName {
        /// The name.
        name: String,
        /// Why, and what to write instead.
        reason: &'static str,
    },
    /// Neither a DNS name nor an IP address was given for the relay certificate.
    #[error("the relay certificate needs at least one DNS name or IP address")]
    NoNames,
    /// A PEM file holds no certificate.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file is malformed.
    #[error("{}: malformed PEM: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The password file is empty (or holds only whitespace).
    #[error("{}: the password file is empty", path.display())]
    EmptyPassword {
        /// The file.
        path: PathBuf,
    },
    /// [`PASSWORD_ENV`] is set but empty (or holds only whitespace).
    #[error(
        "${PASSWORD_ENV} is set but empty (or only whitespace): unset it, or put the password in it"
    )]
    EmptyPasswordEnv,
    /// A credentials directory holds some of the files but not all that are needed.
    #[error(
        "{}: incomplete credentials, missing {}; generate them again with overwrite, or restore the missing files",
        dir.display(),
        missing.join(", ")
    )]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// The names of the missing files.
        missing: Vec<String>,
    },
    /// Generating a key or a certificate failed.
    #[error("generating {what} failed: {source}")]
    Rcgen {
        /// What was being generated.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// The paths of the files in a credentials directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The directory holding the files.
    pub dir: PathBuf,
}

impl Credentials {
    /// Credentials in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<dir>/ca.pem`: the CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// `<dir>/ca.key`: the CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    /// `<dir>/relay.pem`: the relay certificate.
    pub fn relay_cert(&self) -> PathBuf {
        self.dir.join(RELAY_CERT_FILE)
    }

    /// `<dir>/relay.key`: the relay private key.
    pub fn relay_key(&self) -> PathBuf {
        self.dir.join(RELAY_KEY_FILE)
    }

    /// `<dir>/password`: the shared password.
    pub fn password(&self) -> PathBuf {
        self.dir.join(PASSWORD_FILE)
    }

    /// All five paths, in the order ca.pem, ca.key, relay.pem, relay.key, password.
    pub fn all(&self) -> [PathBuf; 5] {
        [
            self.ca_cert(),
            self.ca_key(),
            self.relay_cert(),
            self.relay_key(),
            self.password(),
        ]
    }
}

/// The default credentials directory: `<platform data dir>/tlsro/credentials`, or
/// `./tlsro-credentials` when the platform has no data directory.
pub fn default_dir() -> PathBuf {
    match dirs::data_dir() {
        Some(data) => data.join("tlsro").join("credentials"),
        None => PathBuf::from("./tlsro-credentials"),
    }
}

/// What [`generate`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// The directory to write to (created with mode 0700 if missing).
    pub dir: PathBuf,
    /// DNS names of the relay, the one microcontrollers use first; at most 3, each under 64
    /// characters.
    pub hostnames: Vec<String>,
    /// IP addresses of the relay (used by std endpoints only; embedded-tls ignores them).
    pub ips: Vec<IpAddr>,
    /// Replace existing files instead of refusing.
    pub overwrite: bool,
}

impl GenerateOptions {
    /// The defaults (`localhost`, 127.0.0.1 and ::1, no overwrite) for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            hostnames: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            overwrite: false,
        }
    }
}

impl Default for GenerateOptions {
    /// The defaults in [`default_dir`].
    fn default() -> Self {
        Self::new(default_dir())
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The paths of the files written.
    pub credentials: Credentials,
    /// The CA's SHA-256 fingerprint (uppercase hex pairs joined by `:`).
    pub ca_fingerprint: String,
    /// The DNS names in the relay certificate, in order.
    pub hostnames: Vec<String>,
    /// The IP addresses in the relay certificate, in order.
    pub ips: Vec<IpAddr>,
}

/// The result of [`show`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The paths of the files (present or not).
    pub credentials: Credentials,
    /// The files that exist, in the order of [`Credentials::all`].
    pub present: Vec<PathBuf>,
    /// The files that do not exist, in the same order.
    pub missing: Vec<PathBuf>,
    /// The CA's SHA-256 fingerprint, if `ca.pem` exists.
    pub ca_fingerprint: Option<String>,
}

/// Checks the relay's DNS names against what embedded-tls can use.
fn check_hostnames(hostnames: &[String], ips: &[IpAddr]) -> Result<(), CredentialsError> {
    if hostnames.is_empty() && ips.is_empty() {
        return Err(CredentialsError::NoNames);
    }
    if hostnames.len() > MAX_DNS_NAMES {
        return Err(CredentialsError::TooManyDnsNames {
            count: hostnames.len(),
        });
    }
    for name in hostnames {
        if name.len() >= DNS_NAME_LIMIT {
            return Err(CredentialsError::DnsNameTooLong {
                name: name.clone(),
                len: name.len(),
            });
        }
        let reason = if name.parse::<IpAddr>().is_ok() {
            Some("it is an IP address; give it as an IP address instead")
        } else if name.ends_with('.') && name.len() > 1 {
            // A client may connect to "relay.example." but a certificate naming it so matches
            // nothing (webpki refuses such a presented name).
            Some("a certificate's name cannot end with a dot; write it without the dot")
        } else if name.contains('*') {
            Some("wildcard names are not supported; name the relay itself")
        } else if !name.is_ascii() {
            Some("only ASCII is allowed; write an internationalised name in its xn-- form")
        } else if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() {
            Some(
                "a host name is dot-separated labels of letters, digits and hyphens, the last \
                 not all digits",
            )
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(CredentialsError::InvalidDnsName {
                name: name.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// A random positive serial number (126 random bits, no leading zero byte).
fn random_serial() -> Result<SerialNumber, CredentialsError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    getrandom::fill(&mut bytes).map_err(CredentialsError::Random)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // nonzero and of full length
    Ok(SerialNumber::from_slice(&bytes))
}

/// Lowercase hex of `bytes`.
fn hex_lower(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The SHA-256 fingerprint of a DER-encoded certificate, as uppercase hex pairs joined by `:`
/// (the format `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint_der(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let pairs: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    pairs.join(":")
}

/// The SHA-256 fingerprint of the first certificate in the PEM file at `path`, as uppercase hex
/// pairs joined by `:`.
pub fn fingerprint_pem(path: &Path) -> Result<String, CredentialsError> {
    let pem = fs::read(path).map_err(|source| CredentialsError::Io {
        path: path.to_owned(),
        source,
    })?;
    match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(der)) => Ok(fingerprint_der(&der)),
        Some(Err(source)) => Err(CredentialsError::Pem {
            path: path.to_owned(),
            source,
        }),
        None => Err(CredentialsError::NoCertificate {
            path: path.to_owned(),
        }),
    }
}

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as it is.
fn create_dir(dir: &Path) -> Result<(), CredentialsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CredentialsError::Io {
        path: dir.to_owned(),
        // "File exists" alone does not say that the path is a file, not a directory.
        source: not_a_directory(dir).unwrap_or(source),
    })
}

/// When `dir` exists but is not a directory (a file given where the credentials directory
/// was asked for), the error that says so: the system's own would name `dir/ca.pem` "not a
/// directory", or say "File exists".
pub(crate) fn not_a_directory(dir: &Path) -> Option<io::Error> {
    (dir.exists() && !dir.is_dir()).then(|| {
        io::Error::new(
            io::ErrorKind::NotADirectory,
            "it exists and is not a directory: give the credentials directory",
        )
    })
}

/// Opens `path` for writing with `mode` (on Unix), failing if it exists.
fn open_new(path: &Path, mode: u32) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Writes `contents` to `path` with `mode`. Without `overwrite` the file must not exist; with it,
/// the contents go to a temporary file first, which then replaces `path` (so the mode is right
/// even when an older file had another one).
fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), CredentialsError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CredentialsError::Io { path, source }
    };
    let write_all = |target: &Path| -> io::Result<()> {
        let mut file = open_new(target, mode)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    if !overwrite {
        return write_all(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                CredentialsError::Exists {
                    path: path.to_owned(),
                }
            } else {
                CredentialsError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        });
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(format!(".{}", tmp_name.to_string_lossy()));
    // A leftover from an interrupted run is ours to replace.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    if let Err(e) = write_all(&tmp) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Validity period of a new certificate: from a day ago (tolerating clock skew) to about 10 years
/// from now.
fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(VALIDITY_DAYS),
    )
}

/// Generates a CA and a relay certificate signed by it, and a random password, into `opts.dir`.
///
/// The CA: ECDSA P-256 with SHA-256, `CN=tlsro CA`, basic constraints CA with path length 0, key
/// usages keyCertSign and cRLSign. The relay certificate: ECDSA P-256, signed directly by the CA,
/// subject alternative names the DNS names (in the order given) then the IP addresses, extended key
/// usage serverAuth. Both have random serial numbers and are valid from a day ago for 10 years.
///
/// Nothing is written if a name is refused or, without `overwrite`, if any of the five files
/// exists.
pub fn generate(opts: &GenerateOptions) -> Result<Generated, CredentialsError> {
    check_hostnames(&opts.hostnames, &opts.ips)?;
    let paths = Credentials::new(&opts.dir);
    if !opts.overwrite {
        for path in paths.all() {
            // symlink_metadata: a dangling symlink counts as existing too.
            if fs::symlink_metadata(&path).is_ok() {
                return Err(CredentialsError::Exists { path });
            }
        }
    }

    let rcgen_err = |what| move |source| CredentialsError::Rcgen { what, source };
    let (not_before, not_after) = validity();

    // The certificate authority.
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("the CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tlsro CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.serial_number = Some(random_serial()?);
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(rcgen_err("the CA certificate"))?;

    // The relay certificate, signed directly by the CA.
    let relay_key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("the relay key"))?;
    let mut relay_params = CertificateParams::default();
    relay_params.distinguished_name = DistinguishedName::new();
    let common_name = opts.hostnames.first().map_or("tlsro relay", String::as_str);
    relay_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    relay_params.is_ca = IsCa::ExplicitNoCa;
    relay_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    relay_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    relay_params.use_authority_key_identifier_extension = true;
    relay_params.serial_number = Some(random_serial()?);
    relay_params.not_before = not_before;
    relay_params.not_after = not_after;
    for name in &opts.hostnames {
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(rcgen_err("the relay certificate's DNS names"))?;
        relay_params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    relay_params
        .subject_alt_names
        .extend(opts.ips.iter().copied().map(SanType::IpAddress));
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let relay_cert = relay_params
        .signed_by(&relay_key, &issuer)
        .map_err(rcgen_err("the relay certificate"))?;

    // The password: 256 random bits as lowercase hex.
    let mut secret = [0u8; PASSWORD_BYTES];
    getrandom::fill(&mut secret).map_err(CredentialsError::Random)?;
    let password = format!("{}\n", hex_lower(&secret));

    create_dir(&opts.dir)?;
    let overwrite = opts.overwrite;
    // Private files first: if writing stops halfway, no certificate points to a missing key.
    write_file(
        &paths.ca_key(),
        ca_key.serialize_pem().as_bytes(),
        0o600,
        overwrite,
    )?;
    write_file(
        &paths.relay_key(),
        relay_key.serialize_pem().as_bytes(),
        0o600,
        overwrite,
    )?;
    write_file(&paths.password(), password.as_bytes(), 0o600, overwrite)?;
    write_file(&paths.ca_cert(), ca_cert.pem().as_bytes(), 0o644, overwrite)?;
    write_file(
        &paths.relay_cert(),
        relay_cert.pem().as_bytes(),
        0o644,
        overwrite,
    )?;

    tracing::debug!(dir = %opts.dir.display(), "generated tlsro credentials");
    Ok(Generated {
        credentials: paths,
        ca_fingerprint: fingerprint_der(ca_cert.der()),
        hostnames: opts.hostnames.clone(),
        ips: opts.ips.clone(),
    })
}

/// Which credential files exist in `dir`, and the CA's fingerprint if `ca.pem` is there.
pub fn show(dir: &Path) -> Result<Shown, CredentialsError> {
    if let Some(source) = not_a_directory(dir) {
        return Err(CredentialsError::Io {
            path: dir.to_owned(),
            source,
        });
    }
    let credentials = Credentials::new(dir);
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for path in credentials.all() {
        match fs::metadata(&path) {
            Ok(_) => present.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(path),
            Err(source) => return Err(CredentialsError::Io { path, source }),
        }
    }
    let ca_cert = credentials.ca_cert();
    let ca_fingerprint = if present.contains(&ca_cert) {
        Some(fingerprint_pem(&ca_cert)?)
    } else {
        None
    };
    Ok(Shown {
        credentials,
        present,
        missing,
        ca_fingerprint,
    })
}

/// Logs a warning when `path` (a secret: `what` names it) can be read by other users of the
/// machine, as OpenSSH does for its keys (here a warning, not a refusal: the file is still
/// used).
pub fn warn_if_others_can_read(path: &Path, what: &str) {
    #[cfg(unix)]
    if let Ok(meta) = fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "{what} can be read by other users; `chmod 600` it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
}

/// Reads a password file: its content without trailing whitespace (the newline). An empty
/// password is refused.
pub fn read_password(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    let content = fs::read(path).map_err(|source| CredentialsError::Io {
        path: path.to_owned(),
        source,
    })?;
    warn_if_others_can_read(path, "the password file");
    trimmed_password(content).ok_or_else(|| CredentialsError::EmptyPassword {
        path: path.to_owned(),
    })
}

/// The environment variable the relay binary, the examples and the bench read the password
/// from, before any file.
pub const PASSWORD_ENV: &str = "TLSRO_PASSWORD";

/// The password in [`PASSWORD_ENV`], read as a password file is (trailing whitespace dropped,
/// the bytes as they are): `None` when it is not set, an error when nothing is left of it.
/// The same rules for both, so that a relay reading one and an endpoint the other agree.
pub fn password_from_env() -> Result<Option<Vec<u8>>, CredentialsError> {
    let Some(value) = std::env::var_os(PASSWORD_ENV) else {
        return Ok(None);
    };
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStringExt::into_vec(value);
    #[cfg(not(unix))]
    let bytes = value.to_string_lossy().into_owned().into_bytes();
    trimmed_password(bytes)
        .map(Some)
        .ok_or(CredentialsError::EmptyPasswordEnv)
}

/// `bytes` without trailing whitespace; `None` when nothing is left.
fn trimmed_password(mut bytes: Vec<u8>) -> Option<Vec<u8>> {
    let len = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |last| last + 1);
    bytes.truncate(len);
    (!bytes.is_empty()).then_some(bytes)
}

/// Makes sure `dir` holds usable credentials, for a relay started with nothing configured.
///
/// If none of the five files exists, development credentials are generated with the defaults
/// (`localhost`, 127.0.0.1, ::1) and `true` is returned. If `ca.pem`, `relay.pem`, `relay.key`
/// and `password` exist (`ca.key` may have been moved elsewhere), they are kept and `false` is
/// returned. Anything in between is an [`CredentialsError::Incomplete`] error: nothing is
/// overwritten.
pub fn ensure_dev_credentials(dir: &Path) -> Result<(Shown, bool), CredentialsError> {
    let shown = show(dir)?;
    let credentials = &shown.credentials;
    let needed = [
        credentials.ca_cert(),
        credentials.relay_cert(),
        credentials.relay_key(),
        credentials.password(),
    ];
    if needed.iter().all(|p| shown.present.contains(p)) {
        return Ok((shown, false));
    }
    if !shown.present.is_empty() {
        let missing = needed
            .iter()
            .filter(|p| !shown.present.contains(p))
            .map(|p| {
                p.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            })
            .collect();
        return Err(CredentialsError::Incomplete {
            dir: dir.to_owned(),
            missing,
        });
    }
    generate(&GenerateOptions::new(dir))?;
    Ok((show(dir)?, true))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir, removed on drop.
    pub(crate) struct TestDir(pub(crate) PathBuf);

    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = std::env::temp_dir().join(format!(
                "tlsro-test-{}-{name}-{n}-{nanos}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn is_fingerprint(s: &str) -> bool {
        s.len() == 32 * 3 - 1
            && s.split(':').count() == 32
            && s.split(':').all(|pair| {
                pair.len() == 2
                    && pair
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
            })
    }

    #[test]
    fn default_options() {
        let opts = GenerateOptions::default();
        assert_eq!(opts.hostnames, ["localhost"]);
        assert_eq!(
            opts.ips,
            [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
        assert!(!opts.overwrite);
        assert!(opts.dir.ends_with("credentials") || opts.dir.ends_with("tlsro-credentials"));
    }

    #[test]
    fn generate_writes_files_with_modes_and_fingerprint() {
        let dir = TestDir::new("generate");
        let opts = GenerateOptions::new(dir.path().join("nested").join("creds"));
        let generated = generate(&opts).expect("generate");
        let creds = &generated.credentials;
        for path in creds.all() {
            assert!(path.is_file(), "{} missing", path.display());
        }
        assert!(is_fingerprint(&generated.ca_fingerprint));
        assert_eq!(
            fingerprint_pem(&creds.ca_cert()).unwrap(),
            generated.ca_fingerprint
        );
        assert_ne!(
            fingerprint_pem(&creds.relay_cert()).unwrap(),
            generated.ca_fingerprint
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&opts.dir), 0o700);
            assert_eq!(mode(&creds.ca_key()), 0o600);
            assert_eq!(mode(&creds.relay_key()), 0o600);
            assert_eq!(mode(&creds.password()), 0o600);
            assert_eq!(mode(&creds.ca_cert()) & 0o600, 0o600);
        }

        let raw = fs::read_to_string(creds.password()).unwrap();
        assert_eq!(raw.len(), 65);
        assert!(raw.ends_with('\n'));
        let password = read_password(&creds.password()).unwrap();
        assert_eq!(password.len(), 64);
        assert!(
            password
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        );

        let ca_key = fs::read_to_string(creds.ca_key()).unwrap();
        assert!(ca_key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let ca_pem = fs::read_to_string(creds.ca_cert()).unwrap();
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let shown = show(&opts.dir).unwrap();
        assert_eq!(shown.present.len(), 5);
        assert!(shown.missing.is_empty());
        assert_eq!(
            shown.ca_fingerprint.as_deref(),
            Some(generated.ca_fingerprint.as_str())
        );
    }

    #[test]
    fn two_generations_differ() {
        let a = TestDir::new("differ-a");
        let b = TestDir::new("differ-b");
        let ga = generate(&GenerateOptions::new(a.path())).unwrap();
        let gb = generate(&GenerateOptions::new(b.path())).unwrap();
        assert_ne!(ga.ca_fingerprint, gb.ca_fingerprint);
        assert_ne!(
            read_password(&ga.credentials.password()).unwrap(),
            read_password(&gb.credentials.password()).unwrap()
        );
    }

    #[test]
    fn overwrite_is_refused_unless_asked() {
        let dir = TestDir::new("overwrite");
        let mut opts = GenerateOptions::new(dir.path());
        let first = generate(&opts).unwrap();
        match generate(&opts) {
            Err(CredentialsError::Exists { path }) => {
                assert_eq!(path, first.credentials.ca_cert());
                let msg = CredentialsError::Exists { path: path.clone() }.to_string();
                assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
            }
            other => panic!("expected Exists, got {other:?}"),
        }
        // Nothing was changed by the refused attempt.
        assert_eq!(
            fingerprint_pem(&first.credentials.ca_cert()).unwrap(),
            first.ca_fingerprint
        );

        // A single existing file is enough to refuse, and is named.
        let lone = TestDir::new("overwrite-lone");
        fs::create_dir_all(lone.path()).unwrap();
        fs::write(lone.path().join(PASSWORD_FILE), "hunter2\n").unwrap();
        match generate(&GenerateOptions::new(lone.path())) {
            Err(CredentialsError::Exists { path }) => {
                assert_eq!(path, lone.path().join(PASSWORD_FILE))
            }
            other => panic!("expected Exists, got {other:?}"),
        }
        assert!(!lone.path().join(CA_CERT_FILE).exists());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(
                first.credentials.relay_key(),
                fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
        opts.overwrite = true;
        let second = generate(&opts).unwrap();
        assert_ne!(second.ca_fingerprint, first.ca_fingerprint);
        assert_eq!(
            fingerprint_pem(&second.credentials.ca_cert()).unwrap(),
            second.ca_fingerprint
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(second.credentials.relay_key())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 5);
    }

    #[test]
    fn dns_names_are_checked() {
        let dir = TestDir::new("names");
        let mut opts = GenerateOptions::new(dir.path());

        opts.hostnames = vec!["a.example".into(), "b.example".into(), "c.example".into()];
        opts.hostnames.push("d.example".into());
        assert!(matches!(
            generate(&opts),
            Err(CredentialsError::TooManyDnsNames { count: 4 })
        ));

        let long = format!("{}.example", "a".repeat(DNS_NAME_LIMIT - 8));
        assert_eq!(long.len(), DNS_NAME_LIMIT);
        opts.hostnames = vec!["relay.example".into(), long.clone()];
        match generate(&opts) {
            Err(CredentialsError::DnsNameTooLong { name, len }) => {
                assert_eq!(name, long);
                assert_eq!(len, DNS_NAME_LIMIT);
            }
            other => panic!("expected DnsNameTooLong, got {other:?}"),
        }

        // Each refused with its own reason (a trailing dot or a wildcard would make a
        // certificate that no endpoint can match).
        for (bad, reason) in [
            ("", "dot-separated labels"),
            ("not a name", "dot-separated labels"),
            ("127.0.0.1", "give it as an IP address"),
            ("bad_ä.example", "xn--"),
            ("relay.example.", "without the dot"),
            ("*.example", "wildcard"),
        ] {
            opts.hostnames = vec![bad.into()];
            match generate(&opts) {
                Err(e @ CredentialsError::InvalidDnsName { .. }) => {
                    assert!(e.to_string().contains(reason), "{bad:?}: {e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }

        opts.hostnames = vec![];
        opts.ips = vec![];
        assert!(matches!(generate(&opts), Err(CredentialsError::NoNames)));
        assert!(!dir.path().exists(), "a refused generation wrote something");

        // Exactly 3 names, the longest allowed, are fine.
        let longest = format!("{}.example", "b".repeat(DNS_NAME_LIMIT - 9));
        assert_eq!(longest.len(), DNS_NAME_LIMIT - 1);
        opts.hostnames = vec!["relay.example".into(), longest, "localhost".into()];
        generate(&opts).expect("3 names under 64 characters");
    }

    #[test]
    fn read_password_trims_and_refuses_empty() {
        let dir = TestDir::new("password");
        fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join("pw");
        fs::write(&path, b"  secret words \r\n\n").unwrap();
        assert_eq!(read_password(&path).unwrap(), b"  secret words");
        fs::write(&path, b" \n").unwrap();
        match read_password(&path) {
            Err(e @ CredentialsError::EmptyPassword { .. }) => {
                assert!(e.to_string().contains(&*path.to_string_lossy()));
            }
            other => panic!("expected EmptyPassword, got {other:?}"),
        }
        let missing = dir.path().join("absent");
        match read_password(&missing) {
            Err(e @ CredentialsError::Io { .. }) => {
                assert!(e.to_string().contains(&*missing.to_string_lossy()));
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn fingerprint_errors_name_the_file() {
        let dir = TestDir::new("fingerprint");
        fs::create_dir_all(dir.path()).unwrap();
        let path = dir.path().join("empty.pem");
        fs::write(&path, "no pem here\n").unwrap();
        match fingerprint_pem(&path) {
            Err(e @ CredentialsError::NoCertificate { .. }) => {
                assert!(e.to_string().contains(&*path.to_string_lossy()));
            }
            other => panic!("expected NoCertificate, got {other:?}"),
        }
        // Known answer: SHA-256 of the empty string.
        assert_eq!(
            fingerprint_der(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:\
             27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }

    #[test]
    fn show_lists_missing_files() {
        let dir = TestDir::new("show");
        let shown = show(dir.path()).unwrap();
        assert!(shown.present.is_empty());
        assert_eq!(shown.missing.len(), 5);
        assert_eq!(shown.ca_fingerprint, None);
    }

    #[test]
    fn ensure_dev_credentials_creates_once() {
        let dir = TestDir::new("ensure");
        let (first, created) = ensure_dev_credentials(dir.path()).unwrap();
        assert!(created);
        assert_eq!(first.present.len(), 5);
        let (second, created) = ensure_dev_credentials(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(second.ca_fingerprint, first.ca_fingerprint);

        // The CA key may live elsewhere.
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let (_, created) = ensure_dev_credentials(dir.path()).unwrap();
        assert!(!created);

        // A missing relay key is not papered over.
        fs::remove_file(dir.path().join(RELAY_KEY_FILE)).unwrap();
        match ensure_dev_credentials(dir.path()) {
            Err(CredentialsError::Incomplete { missing, .. }) => {
                assert_eq!(missing, [RELAY_KEY_FILE]);
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
    }
}
