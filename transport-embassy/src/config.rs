//! What the caller decides: password and groups, timings, how the link is secured, and the
//! memory the endpoint works in.

use embassy_time::Duration;
use tlsro_proto::auth::AuthKey;

use crate::Error;

/// How the endpoint behaves. Build it with [`Config::new`] (derives the key from the password:
/// PBKDF2, 4096 rounds, a fraction of a second on a Cortex-M4) or [`Config::with_key`], then
/// adjust the public fields.
#[derive(Clone)]
pub struct Config<'a> {
    pub(crate) key: AuthKey,
    pub(crate) groups: &'a [&'a str],
    /// The session id: random, the same across reconnects. `None`: drawn from the runner's RNG.
    /// Draw a new one at every boot: numbering starts again at 1, and a relay that still
    /// remembers the old session would take the new boot's publishes up to the old one's last
    /// as resends. The endpoint refuses such a relay (a relay that knows the session at its
    /// first connect: `Error::Protocol`, logged, at every connect until the relay forgets the
    /// session), so nothing is lost, but nothing is sent either.
    pub session: Option<[u8; 16]>,
    /// Ping the relay after this much silence (default 5 s).
    pub keepalive: Duration,
    /// Consider the relay dead after this much silence (default 15 s).
    pub dead_after: Duration,
    /// TCP connect, TLS handshake and password handshake must each finish within this
    /// (default 10 s).
    pub handshake_timeout: Duration,
    /// First wait before reconnecting (default 250 ms); doubled after every failed attempt.
    pub backoff_min: Duration,
    /// Longest wait before reconnecting (default 30 s). Each wait is drawn at random between half
    /// the current backoff and the full backoff (jitter), so many robots do not reconnect in step.
    pub backoff_max: Duration,
}

impl<'a> Config<'a> {
    /// A configuration for `password` and the groups this endpoint joins (may be empty).
    pub fn new(password: &[u8], groups: &'a [&'a str]) -> Self {
        Self::with_key(AuthKey::derive(password), groups)
    }

    /// A configuration with an already derived key (see
    /// [`AuthKey::derive`](tlsro_proto::auth::AuthKey::derive)), to skip the key derivation at
    /// boot.
    pub fn with_key(key: AuthKey, groups: &'a [&'a str]) -> Self {
        Config {
            key,
            groups,
            session: None,
            keepalive: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }

    /// The groups this endpoint joins.
    pub fn groups(&self) -> &'a [&'a str] {
        self.groups
    }
}

/// How the link to the relay is secured.
///
/// # RAM-lean mode
///
/// embedded-tls must hold a whole TLS record in its read buffer ([`Buffers::tls_read`]), and a
/// full-size record needs 16,640 bytes. [`with_small_records`](Self::with_small_records) asks
/// the relay for small records instead (by the ALPN protocol
/// [`ALPN_SMALL_RECORDS`](tlsro_proto::ALPN_SMALL_RECORDS) in the ClientHello; the relay
/// then sends records of at most [`SMALL_RECORD`](tlsro_proto::SMALL_RECORD) bytes), so the read
/// buffer needs only [`SMALL_RECORD_BODY`](tlsro_proto::SMALL_RECORD_BODY) (1,036) bytes.
/// Objects are independent of records: the largest frame the relay sends is the one the
/// endpoint states in its `Hello`, which is what [`Buffers::frame`] and [`Buffers::inbox`] hold
/// (a lean build makes those small too; a larger broadcast is skipped for this endpoint and
/// counted in [`Stats::skipped`](crate::Stats::skipped), a larger produced object waits for a
/// consumer that can take it).
#[derive(Debug, Clone, Copy)]
pub struct Security<'a> {
    pub(crate) link: Link<'a>,
    /// Ask the relay for small TLS records (RAM-lean mode).
    pub(crate) small_records: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Link<'a> {
    Tls {
        ca_der: &'a [u8],
        server_name: &'a str,
    },
    TlsUnverified {
        server_name: &'a str,
    },
    Plain,
}

impl<'a> Security<'a> {
    /// TLS 1.3, the relay verified: its certificate must be signed by the CA in `ca_der` (the
    /// DER form of `ca.pem` from `tlsro-relay credentials generate`; see [`pem_to_der`]) and
    /// name `server_name` among its first three DNS names. `server_name` must be a DNS name even
    /// when the relay is dialled by IP address: embedded-tls never matches IP addresses.
    ///
    /// Certificate validity dates are not checked (a microcontroller has no trusted clock).
    pub fn tls(ca_der: &'a [u8], server_name: &'a str) -> Result<Self, Error> {
        check_dns_name(server_name)?;
        Ok(Security::over(Link::Tls {
            ca_der,
            server_name,
        }))
    }

    /// TLS 1.3 **without verifying the relay**: anyone on the path can pose as the relay and
    /// read everything. The password proof still protects the password and still makes the
    /// relay prove it knows it, but nothing else is protected. For bring-up only.
    pub fn dangerous_tls_without_verification(server_name: &'a str) -> Self {
        Security::over(Link::TlsUnverified { server_name })
    }

    /// Plain TCP, for a relay started in plain mode: the password proof still applies (the
    /// password never crosses the wire), but frames after it are neither secret nor protected.
    pub fn plain() -> Self {
        Security::over(Link::Plain)
    }

    /// RAM-lean mode (see above): the relay is asked for TLS records of at most
    /// [`SMALL_RECORD`](tlsro_proto::SMALL_RECORD) bytes, so [`Buffers::tls_read`] may be as
    /// small as [`SMALL_RECORD_BODY`](tlsro_proto::SMALL_RECORD_BODY) bytes. A relay that does
    /// not support it refuses the TLS handshake ([`Error::Tls`]) instead of sending records that
    /// do not fit. No effect in plain mode.
    pub fn with_small_records(mut self) -> Self {
        self.small_records = true;
        self
    }

    /// Whether the relay is asked for small TLS records.
    pub fn small_records(&self) -> bool {
        self.small_records && self.is_tls()
    }

    /// The smallest [`Buffers::tls_read`] this security allows: a whole TLS record, small
    /// (1,036 bytes) or full-size (16,640 bytes); 0 in plain mode.
    pub fn tls_read_min(&self) -> usize {
        if !self.is_tls() {
            0
        } else if self.small_records {
            crate::TLS_READ_SMALL
        } else {
            crate::TLS_READ_FULL
        }
    }

    fn over(link: Link<'a>) -> Self {
        Security {
            link,
            small_records: false,
        }
    }

    /// Whether this is TLS (verified or not).
    pub fn is_tls(&self) -> bool {
        !matches!(self.link, Link::Plain)
    }
}

fn check_dns_name(name: &str) -> Result<(), Error> {
    let looks_like_ip = name.contains(':') || name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let valid = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if looks_like_ip || !valid {
        return Err(Error::ServerNameNotDns);
    }
    Ok(())
}

/// The memory the endpoint works in, all owned by the caller (typically `static` buffers from
/// `static_cell`).
pub struct Buffers<'a> {
    /// The TCP socket's receive buffer (e.g. 2 KiB or more).
    pub socket_rx: &'a mut [u8],
    /// The TCP socket's transmit buffer (e.g. 2 KiB or more).
    pub socket_tx: &'a mut [u8],
    /// embedded-tls's record read buffer: it must hold a whole TLS record, so at least 16,640
    /// bytes, or 1,036 bytes in RAM-lean mode ([`Security::with_small_records`]; see
    /// [`Security::tls_read_min`]). Empty in plain mode.
    pub tls_read: &'a mut [u8],
    /// embedded-tls's record write buffer (at least 1 KiB; larger writes are split into
    /// records, so it need not hold a whole frame). Empty in plain mode.
    pub tls_write: &'a mut [u8],
    /// Holds one received frame: its length is the largest frame the relay may send this
    /// endpoint (at least 1,024 bytes; an object of `n` bytes needs about `n` + 80).
    pub frame: &'a mut [u8],
    /// Received objects waiting for [`Endpoint::receive`](crate::Endpoint::receive), each with
    /// an 18-byte header. At least as large as `frame`.
    pub inbox: &'a mut [u8],
    /// Publishes kept until the relay confirms them, resent after a reconnect. Its size bounds
    /// how much can be published while the relay is away; an object larger than it is refused
    /// with [`Error::FrameTooLarge`].
    pub outbox: &'a mut [u8],
}

/// Decodes the first certificate of a PEM text (such as `ca.pem`) into `out`, returning the DER
/// bytes; works without an allocator, e.g. on `include_bytes!("ca.pem")` at boot.
pub fn pem_to_der<'o>(pem: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], Error> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let start = find(pem, BEGIN).ok_or(Error::BadPem)? + BEGIN.len();
    let len = find(&pem[start..], END).ok_or(Error::BadPem)?;
    let body = &pem[start..start + len];
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut n = 0usize;
    let mut padding = false;
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            b'\r' | b'\n' | b' ' | b'\t' => continue,
            _ => return Err(Error::BadPem),
        };
        if padding {
            return Err(Error::BadPem);
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let byte = (acc >> bits) as u8;
            *out.get_mut(n)
                .ok_or(Error::BufferTooSmall { needed: n + 1 })? = byte;
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::BadPem);
    }
    Ok(&out[..n])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_decodes_to_the_der_bytes() {
        // "hello, tlsro!" in base64, with the usual armour and line breaks.
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\naGVsbG8s\nIHRsc3JvIQ==\n-----END CERTIFICATE-----\n";
        let mut out = [0u8; 32];
        assert_eq!(pem_to_der(pem, &mut out).unwrap(), b"hello, tlsro!");
        let mut small = [0u8; 4];
        assert_eq!(
            pem_to_der(pem, &mut small),
            Err(Error::BufferTooSmall { needed: 5 })
        );
        assert_eq!(pem_to_der(b"no pem", &mut out), Err(Error::BadPem));
        assert_eq!(
            pem_to_der(
                b"-----BEGIN CERTIFICATE-----\n*\n-----END CERTIFICATE-----",
                &mut out
            ),
            Err(Error::BadPem)
        );
    }

    #[test]
    fn small_records_shrink_the_tls_read_buffer() {
        let tls = Security::tls(b"ca", "relay.example").unwrap();
        assert!(!tls.small_records());
        assert_eq!(tls.tls_read_min(), 16_640);
        let lean = tls.with_small_records();
        assert!(lean.small_records());
        assert_eq!(lean.tls_read_min(), 1036);
        let unverified = Security::dangerous_tls_without_verification("relay.example");
        assert_eq!(unverified.with_small_records().tls_read_min(), 1036);
        let plain = Security::plain().with_small_records();
        assert!(!plain.small_records());
        assert_eq!(plain.tls_read_min(), 0);
    }

    #[test]
    fn server_names_must_be_dns_names() {
        assert!(Security::tls(b"", "relay.example").is_ok());
        assert!(Security::tls(b"", "relay").is_ok());
        for bad in ["10.0.0.1", "::1", "fe80::1", "", "bad name", "x/y"] {
            assert_eq!(
                Security::tls(b"", bad).map(|_| ()),
                Err(Error::ServerNameNotDns),
                "{bad}"
            );
        }
    }
}
