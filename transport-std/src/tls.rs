//! TLS configurations for the relay and for std endpoints (rustls with the ring provider).
//!
//! Both sides are restricted to what embedded-tls speaks, so that std and microcontroller endpoints
//! meet the same relay: TLS 1.3 only; cipher suites TLS13_AES_128_GCM_SHA256 (first), then
//! TLS13_AES_256_GCM_SHA384 and TLS13_CHACHA20_POLY1305_SHA256; key exchange secp256r1 (first),
//! then x25519. Both offer the ALPN protocol [`ALPN_PROTOCOL`]; a client that offers no ALPN at all
//! (embedded-tls by default) is still accepted by the relay. A RAM-lean microcontroller offers
//! [`ALPN_SMALL_RECORDS`] instead, and the relay serves it with [`small_records_config`].
//!
//! A client trusts exactly the certificates in the CA file written by
//! [`credentials::generate`](crate::credentials::generate), nothing from the system.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring as ring_provider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::credentials::{CA_CERT_FILE, RELAY_CERT_FILE, RELAY_KEY_FILE};

/// A PEM parse error in words (the library's own shows marker lines as byte lists).
fn explain_pem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "the file ends before its \"-----END {}-----\" line (cut short?)",
            text(end_marker)
        ),
        E::IllegalSectionStart { line } => {
            format!("{:?} is not a valid BEGIN line", text(line))
        }
        E::Base64Decode(detail) => format!(
            "a block is not valid base64 ({detail}); an encrypted key (Proc-Type: \
             4,ENCRYPTED) is not supported: give the key unencrypted"
        ),
        other => other.to_string(),
    }
}

/// The ALPN protocol name of tlsro, version 1.
pub const ALPN_PROTOCOL: &[u8] = b"tlsro/1";

/// Errors from building a TLS configuration. Every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file is malformed.
    #[error("{}: malformed PEM: {}", path.display(), explain_pem(source))]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{}: no certificate found", path.display())]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no private key.
    #[error(
        "{}: no private key found (an unencrypted PKCS#8, SEC1 or PKCS#1 PEM key expected; an \
         ENCRYPTED PRIVATE KEY is not supported)",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificates, the key or the configuration.
    #[error("{context}: {source}")]
    Rustls {
        /// What was being done, naming the files concerned.
        context: String,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
    /// A host name is neither a valid DNS name nor an IP address.
    #[error("{name:?} is neither a valid DNS name nor an IP address")]
    InvalidServerName {
        /// The name.
        name: String,
    },
}

/// The ring crypto provider restricted to what embedded-tls supports: AES-128-GCM first (then
/// AES-256-GCM and ChaCha20-Poly1305), TLS 1.3 suites only, secp256r1 first (then x25519).
pub fn crypto_provider() -> CryptoProvider {
    use ring_provider::{cipher_suite, kx_group};
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::X25519],
        ..ring_provider::default_provider()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    fs::read(path).map_err(|source| TlsSetupError::Io {
        path: path.to_owned(),
        source,
    })
}

/// All certificates in the PEM file at `path`, in order; at least one.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(TlsSetupError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(source) => Err(TlsSetupError::Pem {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The relay's TLS configuration: the certificate chain in `cert_chain_pem` (the relay
/// certificate first) with the private key in `key_pem`, no client certificates, TLS 1.3 with the
/// suites and groups of [`crypto_provider`], ALPN [`ALPN_PROTOCOL`].
///
/// The result can be cloned (`(*config).clone()`) to make variants, e.g. the one with a small
/// `max_fragment_size` for RAM-lean microcontrollers ([`small_records_config`]).
pub fn server_config(
    cert_chain_pem: &Path,
    key_pem: &Path,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let certs = load_certificates(cert_chain_pem)?;
    let key = load_private_key(key_pem)?;
    crate::credentials::warn_if_others_can_read(key_pem, "the relay's private key");
    let mut config = ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsSetupError::Rustls {
            context: "building the relay's TLS configuration".to_owned(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsSetupError::Rustls {
            context: format!(
                "certificate {} with key {}",
                cert_chain_pem.display(),
                key_pem.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(Arc::new(config))
}

/// The ALPN protocol a RAM-lean endpoint offers to be sent small TLS records
/// ([`tlsro_proto::ALPN_SMALL_RECORDS`]; see [`small_records_config`]).
pub const ALPN_SMALL_RECORDS: &[u8] = tlsro_proto::ALPN_SMALL_RECORDS;

/// The variant of a relay configuration (from [`server_config`]) that the relay uses for a
/// connection whose ClientHello offers [`ALPN_SMALL_RECORDS`]: TLS records of at most
/// [`tlsro_proto::SMALL_RECORD`] bytes (so a microcontroller needs a read buffer of a few KiB,
/// not 16,640 bytes) and that ALPN protocol only. Everything else (certificate, suites, groups)
/// is `config`'s.
pub fn small_records_config(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut small = config.clone();
    let limit = tlsro_proto::SMALL_RECORD;
    small.max_fragment_size = Some(config.max_fragment_size.map_or(limit, |m| m.min(limit)));
    small.alpn_protocols = vec![ALPN_SMALL_RECORDS.to_vec()];
    Arc::new(small)
}

/// [`server_config`] with `relay.pem` and `relay.key` in the credentials directory `dir`.
pub fn server_config_from_dir(dir: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    check_dir(dir)?;
    // The relay never reads the CA's key, but whoever reads it can mint relays.
    crate::credentials::warn_if_others_can_read(
        &dir.join(crate::credentials::CA_KEY_FILE),
        "the CA's private key",
    );
    server_config(&dir.join(RELAY_CERT_FILE), &dir.join(RELAY_KEY_FILE))
}

/// Checks that endpoints trusting `ca_pem` would accept the relay certificate in
/// `cert_chain_pem`: signed by that CA (through the rest of the chain, if any) and valid now.
/// The names are not checked (they depend on how endpoints address the relay).
///
/// A relay started with a certificate that fails this serves nobody who trusts its `ca.pem`:
/// every handshake ends in the endpoint's `CertificateRejected`.
pub fn check_relay_certificate(cert_chain_pem: &Path, ca_pem: &Path) -> Result<(), TlsSetupError> {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::{CertificateError, Error};

    let certs = load_certificates(cert_chain_pem)?;
    let roots = trusted_roots(ca_pem)?;
    let context = || {
        format!(
            "endpoints that trust {} would refuse the relay certificate {}",
            ca_pem.display(),
            cert_chain_pem.display()
        )
    };
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(crypto_provider()))
            .build()
            .map_err(|e| TlsSetupError::Rustls {
                context: context(),
                source: Error::General(e.to_string()),
            })?;
    // Any valid name: a name mismatch is reported apart and ignored here.
    let name = ServerName::try_from("tlsro-check.invalid").expect("a valid DNS name");
    match verifier.verify_server_cert(
        &certs[0],
        &certs[1..],
        &name,
        &[],
        rustls_pki_types::UnixTime::now(),
    ) {
        Ok(_)
        | Err(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => Ok(()),
        Err(source) => Err(TlsSetupError::Rustls {
            context: context(),
            source,
        }),
    }
}

/// The certificates in `ca_pem`, as the only roots of trust.
fn trusted_roots(ca_pem: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(ca_pem)? {
        roots.add(cert).map_err(|source| TlsSetupError::Rustls {
            context: format!("CA certificate in {}", ca_pem.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// An endpoint's TLS configuration: trusts exactly the certificates in `ca_pem` (nothing from
/// the system), no client certificate, TLS 1.3 with the suites and groups of [`crypto_provider`],
/// ALPN [`ALPN_PROTOCOL`].
pub fn client_config(ca_pem: &Path) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = trusted_roots(ca_pem)?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsSetupError::Rustls {
            context: "building the endpoint's TLS configuration".to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(Arc::new(config))
}

/// [`client_config`] with `ca.pem` in the credentials directory `dir`.
pub fn client_config_from_dir(dir: &Path) -> Result<Arc<ClientConfig>, TlsSetupError> {
    check_dir(dir)?;
    client_config(&dir.join(CA_CERT_FILE))
}

/// A file given where a credentials directory was asked for, said so.
fn check_dir(dir: &Path) -> Result<(), TlsSetupError> {
    match crate::credentials::not_a_directory(dir) {
        Some(source) => Err(TlsSetupError::Io {
            path: dir.to_owned(),
            source,
        }),
        None => Ok(()),
    }
}

/// The TLS server name for `host`: an IP address (matched against the certificate's IP
/// addresses) or a DNS name. Brackets around an IPv6 address (`[::1]`) are accepted.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let trimmed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(trimmed.to_owned()).map_err(|_| TlsSetupError::InvalidServerName {
        name: host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tests::TestDir;
    use crate::credentials::{GenerateOptions, generate};
    use rustls::{CertificateError, CipherSuite, NamedGroup, ProtocolVersion};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const LIMIT: Duration = Duration::from_secs(10);

    /// Runs one TLS server accept on a loopback port and one client connect to it; returns the
    /// client's outcome (after echoing a few bytes, on success) and the server's.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (
        std::io::Result<(CipherSuite, NamedGroup, ProtocolVersion, Option<Vec<u8>>)>,
        std::io::Result<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });

        let connector = TlsConnector::from(client);
        let server_name = server_name(name).unwrap();
        let client_result = async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut tls = connector.connect(server_name, tcp).await?;
            let conn = tls.get_ref().1;
            let suite = conn.negotiated_cipher_suite().unwrap().suite();
            let group = conn.negotiated_key_exchange_group().unwrap().name();
            let version = conn.protocol_version().unwrap();
            let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"hello").await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"hello");
            Ok((suite, group, version, alpn))
        }
        .await;
        let server_result = server_task.await.unwrap();
        (client_result, server_result)
    }

    fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
    }

    #[tokio::test]
    async fn handshake_negotiates_aes128_and_p256() {
        let dir = TestDir::new("tls-ok");
        generate(&GenerateOptions::new(dir.path())).unwrap();
        let server = server_config_from_dir(dir.path()).unwrap();
        let client = client_config_from_dir(dir.path()).unwrap();

        for name in ["localhost", "127.0.0.1", "[::1]"] {
            let (client_result, server_result) =
                tokio::time::timeout(LIMIT, handshake(server.clone(), client.clone(), name))
                    .await
                    .expect("handshake timed out");
            let (suite, group, version, alpn) = client_result.unwrap();
            server_result.unwrap();
            assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256, "{name}");
            assert_eq!(group, NamedGroup::secp256r1, "{name}");
            assert_eq!(version, ProtocolVersion::TLSv1_3, "{name}");
            assert_eq!(alpn.as_deref(), Some(ALPN_PROTOCOL), "{name}");
        }
    }

    #[tokio::test]
    async fn foreign_ca_is_refused() {
        let relay_dir = TestDir::new("tls-relay");
        let other_dir = TestDir::new("tls-other");
        generate(&GenerateOptions::new(relay_dir.path())).unwrap();
        generate(&GenerateOptions::new(other_dir.path())).unwrap();
        let server = server_config_from_dir(relay_dir.path()).unwrap();
        let client = client_config_from_dir(other_dir.path()).unwrap();

        let (client_result, server_result) =
            tokio::time::timeout(LIMIT, handshake(server, client, "localhost"))
                .await
                .expect("handshake timed out");
        let err = client_result.expect_err("a foreign CA was accepted");
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                ))
            ),
            "unexpected error: {err:?}"
        );
        assert!(server_result.is_err());
    }

    #[tokio::test]
    async fn wrong_server_name_is_refused() {
        let dir = TestDir::new("tls-name");
        generate(&GenerateOptions::new(dir.path())).unwrap();
        let server = server_config_from_dir(dir.path()).unwrap();
        let client = client_config_from_dir(dir.path()).unwrap();

        let (client_result, server_result) =
            tokio::time::timeout(LIMIT, handshake(server, client, "wrong.example"))
                .await
                .expect("handshake timed out");
        let err = client_result.expect_err("a wrong server name was accepted");
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "unexpected error: {err:?}"
        );
        assert!(server_result.is_err());
    }

    /// A reader that keeps a copy of every byte it passes on, to look at the TLS records.
    struct Sniff<S> {
        inner: S,
        seen: Vec<u8>,
    }

    impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Sniff<S> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let this = &mut *self;
            let result = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
            this.seen.extend_from_slice(&buf.filled()[before..]);
            result
        }
    }

    impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Sniff<S> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn small_records_config_sends_small_records() {
        let dir = TestDir::new("tls-small");
        generate(&GenerateOptions::new(dir.path())).unwrap();
        let server = server_config_from_dir(dir.path()).unwrap();
        let small = small_records_config(&server);
        assert_eq!(server.max_fragment_size, None, "the original is unchanged");
        let mut client = (*client_config_from_dir(dir.path()).unwrap()).clone();
        client.alpn_protocols = vec![ALPN_SMALL_RECORDS.to_vec()];

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = TlsAcceptor::from(small).accept(tcp).await?;
            // One write far larger than a small record.
            tls.write_all(&[7u8; 20_000]).await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let sniff = Sniff {
            inner: tcp,
            seen: Vec::new(),
        };
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(server_name("localhost").unwrap(), sniff)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_SMALL_RECORDS));
        let mut all = Vec::new();
        tls.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 20_000);
        server_task.await.unwrap().unwrap();

        // Walk the records the relay sent: every body fits a lean endpoint's read buffer.
        let seen = &tls.get_ref().0.seen;
        let (mut at, mut records, mut largest) = (0, 0, 0);
        while at + 5 <= seen.len() {
            let body = usize::from(u16::from_be_bytes([seen[at + 3], seen[at + 4]]));
            largest = largest.max(body);
            records += 1;
            at += 5 + body;
        }
        assert_eq!(at, seen.len(), "whole records");
        assert!(records > 20, "{records} records");
        assert!(
            largest <= tlsro_proto::SMALL_RECORD_BODY,
            "a record body of {largest} bytes"
        );
        assert_eq!(largest, tlsro_proto::SMALL_RECORD_BODY);
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("10.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        for bad in ["", "not a host", "a..b"] {
            match server_name(bad) {
                Err(e @ TlsSetupError::InvalidServerName { .. }) => {
                    assert!(e.to_string().contains(&format!("{bad:?}")));
                }
                other => panic!("{bad:?}: expected InvalidServerName, got {other:?}"),
            }
        }
    }

    #[test]
    fn setup_errors_name_the_file() {
        let dir = TestDir::new("tls-errors");
        let generated = generate(&GenerateOptions::new(dir.path())).unwrap();
        let creds = &generated.credentials;
        let text = |e: TlsSetupError| e.to_string();

        let missing = dir.path().join("absent.pem");
        let e = client_config(&missing).unwrap_err();
        assert!(matches!(e, TlsSetupError::Io { .. }));
        assert!(text(e).contains(&*missing.to_string_lossy()));

        // A key file holds no certificate, a certificate file holds no key.
        let e = server_config(&creds.relay_key(), &creds.relay_key()).unwrap_err();
        assert!(matches!(e, TlsSetupError::NoCertificates { .. }));
        assert!(text(e).contains(&*creds.relay_key().to_string_lossy()));
        let e = server_config(&creds.relay_cert(), &creds.relay_cert()).unwrap_err();
        assert!(matches!(e, TlsSetupError::NoPrivateKey { .. }));
        let e = text(e);
        assert!(e.contains(&*creds.relay_cert().to_string_lossy()), "{e}");
        assert!(e.contains("ENCRYPTED PRIVATE KEY is not supported"), "{e}");
        // A legacy encrypted key: its header lines are no base64, and the error says why.
        let encrypted = dir.path().join("encrypted.key");
        fs::write(
            &encrypted,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n\
             AAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = text(server_config(&creds.relay_cert(), &encrypted).unwrap_err());
        assert!(
            e.contains("encrypted key") && e.contains("unencrypted"),
            "{e}"
        );

        // The CA key does not match the relay certificate.
        let e = server_config(&creds.relay_cert(), &creds.ca_key()).unwrap_err();
        assert!(matches!(e, TlsSetupError::Rustls { .. }), "{e:?}");
        assert!(text(e).contains(&*creds.ca_key().to_string_lossy()));

        // Malformed PEM.
        let broken = dir.path().join("broken.pem");
        fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!!\n").unwrap();
        let e = client_config(&broken).unwrap_err();
        assert!(matches!(e, TlsSetupError::Pem { .. }), "{e:?}");
        assert!(text(e).contains(&*broken.to_string_lossy()));
        // Cut short: the missing line is named as text, not as a list of bytes.
        let pem = fs::read_to_string(creds.relay_cert()).unwrap();
        fs::write(&broken, &pem[..pem.len() / 2]).unwrap();
        let e = text(client_config(&broken).unwrap_err());
        assert!(
            e.contains("\"-----END CERTIFICATE-----\"") && e.contains("cut short"),
            "{e}"
        );
    }

    /// A relay certificate its own ca.pem does not accept is caught before any endpoint tries.
    #[test]
    fn relay_certificate_is_checked_against_its_ca() {
        let dir = TestDir::new("tls-check");
        let other = TestDir::new("tls-check-other");
        generate(&GenerateOptions::new(dir.path())).unwrap();
        generate(&GenerateOptions::new(other.path())).unwrap();
        let creds = crate::credentials::Credentials::new(dir.path());
        let foreign = crate::credentials::Credentials::new(other.path());
        check_relay_certificate(&creds.relay_cert(), &creds.ca_cert()).unwrap();

        let e = check_relay_certificate(&creds.relay_cert(), &foreign.ca_cert()).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("would refuse the relay certificate"), "{e}");
        assert!(e.contains(&*foreign.ca_cert().to_string_lossy()), "{e}");

        // An expired one: `run_warns_about_a_relay_certificate_outside_its_dates` (relay cli).
    }

    #[test]
    fn provider_is_restricted() {
        let provider = crypto_provider();
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [NamedGroup::secp256r1, NamedGroup::X25519]);
    }
}
