//! The tlsro endpoint for microcontrollers: `no_std`, no allocator, over embassy-net and
//! embedded-tls.
//!
//! It drives the same sans-IO session as the std endpoint ([`tlsro_proto::endpoint`]) over an
//! embassy-net [`TcpSocket`](embassy_net::tcp::TcpSocket), wrapped in embedded-tls's
//! `TlsConnection` (TLS 1.3, AES-128-GCM, secp256r1) with the relay's certificate verified
//! against the CA from `tlsro-relay credentials generate` by embedded-tls's `rustpki` verifier.
//!
//! The shape is embassy's: the caller owns every buffer ([`Buffers`]) and the shared
//! [`State`]; [`new`] returns an [`Endpoint`] handle (copyable, usable from any task) and a
//! [`Runner`] whose [`run`](Runner::run) is the task you spawn.
//!
//! ```ignore
//! static STATE: StaticCell<State<'static, CriticalSectionRawMutex>> = StaticCell::new();
//! let config = Config::new(b"password", &["robots"]);
//! let security = Security::tls(CA_DER, "relay.example")?; // a DNS name, even when dialling an IP
//! let (endpoint, mut runner) = tlsro_embassy::new(
//!     stack, relay_addr, STATE.init(State::new()), config, security, buffers, rng,
//! )?;
//! spawner.spawn(tlsro_task(runner).unwrap()); // the task calls runner.run().await
//! endpoint.notify("robots", 1)?;
//! endpoint.broadcast_value(&["telemetry"], &Telemetry { battery: 87 }).await?;
//! let item = endpoint.receive(&mut buf).await?;
//! let command: Command = item.decode()?;
//! ```
//!
//! What the endpoint guarantees (publishes kept until confirmed, acknowledgements, the
//! retained broadcast) is documented on [`Endpoint`]; how one connection carries reads and
//! writes at once, cancel-safely, on [`Runner`].
//!
//! Features: `defmt` or `log` route the crate's log lines (never both).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[macro_use]
mod fmt;

mod config;
mod endpoint;
mod error;
mod queue;
mod runner;
mod state;

use embassy_net::{IpEndpoint, Stack};
use embassy_sync::blocking_mutex::raw::RawMutex;
use rand_core::{CryptoRng, RngCore};
use tlsro_proto::endpoint::{EndpointConfig, EndpointSession};
use tlsro_proto::frame::{self, Frame, GroupList, Hello};

pub use config::{Buffers, Config, Security, pem_to_der};
pub use endpoint::{Endpoint, Item, ItemKind};
pub use error::{Error, Rejection};
pub use runner::Runner;
pub use state::{State, Stats, Status};
pub use tlsro_proto::auth::AuthKey;
pub use tlsro_proto::frame::{CloseCode, RejectReason};

/// The bytes in front of each object in the inbox.
pub const INBOX_ENTRY_OVERHEAD: usize = queue::EntryHeader::LEN;

/// The smallest TLS read buffer ([`Buffers::tls_read`]) for full-size TLS records: 16,640 bytes
/// (2^14 bytes of plaintext and 256 of expansion).
pub const TLS_READ_FULL: usize = 16_640;

/// The smallest TLS read buffer in RAM-lean mode ([`Security::with_small_records`]): 1,036
/// bytes, a whole record of at most [`SMALL_RECORD`](tlsro_proto::SMALL_RECORD) bytes once
/// encrypted.
pub const TLS_READ_SMALL: usize = tlsro_proto::SMALL_RECORD_BODY;

/// Builds an endpoint that talks to the relay at `relay` through `stack`.
///
/// `state` and every buffer in `buffers` are the caller's (usually `static`). The session id
/// (unless [`Config::session`] sets one) and every handshake nonce come from `rng`, which must
/// be a cryptographic RNG (the chip's TRNG, or a CSPRNG seeded from it).
///
/// Fails when a buffer is too small ([`Error::BufferTooSmall`]: the frame buffer must hold at
/// least 1,024 bytes, the inbox a frame plus [`INBOX_ENTRY_OVERHEAD`]; in TLS mode the read
/// buffer a whole record, [`Security::tls_read_min`], and the write buffer at least 1,024
/// bytes), or when the groups are invalid.
///
/// The largest frame the relay may send this endpoint (stated in its `Hello`; larger broadcasts
/// are skipped for it, larger produced objects wait for another consumer) is what both the frame
/// buffer and the inbox hold.
pub fn new<'a, M: RawMutex, R: RngCore + CryptoRng>(
    stack: Stack<'a>,
    relay: IpEndpoint,
    state: &'a mut State<'a, M>,
    config: Config<'a>,
    security: Security<'a>,
    buffers: Buffers<'a>,
    mut rng: R,
) -> Result<(Endpoint<'a, M>, Runner<'a, M, R>), Error> {
    let min_frame = frame::MIN_MAX_FRAME as usize;
    if buffers.frame.len() < min_frame {
        return Err(Error::BufferTooSmall { needed: min_frame });
    }
    if buffers.inbox.len() < min_frame + INBOX_ENTRY_OVERHEAD {
        return Err(Error::BufferTooSmall {
            needed: min_frame + INBOX_ENTRY_OVERHEAD,
        });
    }
    if security.is_tls() {
        // embedded-tls must hold a whole record of the relay: full-size, or small ones in
        // RAM-lean mode (the relay is asked for those by ALPN).
        let needed = security.tls_read_min();
        if buffers.tls_read.len() < needed {
            return Err(Error::BufferTooSmall { needed });
        }
        if buffers.tls_write.len() < 1024 {
            return Err(Error::BufferTooSmall { needed: 1024 });
        }
    }
    if let config::Link::Tls { ca_der: [], .. } = security.link {
        return Err(Error::BadPem);
    }
    // The largest frame the relay may send: it must fit the frame buffer and the inbox.
    let max_frame = buffers
        .frame
        .len()
        .min(buffers.inbox.len() - INBOX_ENTRY_OVERHEAD)
        .min(u32::MAX as usize) as u32;

    let session_id = config.session.unwrap_or_else(|| {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        id
    });
    let mut session_config = EndpointConfig::new(config.key.clone(), session_id, config.groups)?;
    session_config.max_frame = max_frame;
    session_config.keepalive = core_duration(config.keepalive);
    session_config.dead_after = core_duration(config.dead_after);
    session_config.handshake_timeout = core_duration(config.handshake_timeout);
    let hello_len = {
        let groups: GroupList<'_> = session_config.groups.iter().map(|g| g.as_str()).collect();
        Frame::Hello(Hello {
            version: tlsro_proto::PROTOCOL_VERSION,
            nonce: [0; 32],
            session: session_id,
            max_frame,
            keepalive_ms: u32::MAX,
            groups,
        })
        .encoded_len()
    };
    if hello_len > runner::STAGE {
        // Group names this long do not fit the writer's staging buffer.
        return Err(Error::TooManyGroups);
    }

    let inner = state::Inner::new(
        EndpointSession::new(session_config),
        config.groups,
        queue::Inbox::new(buffers.inbox),
        queue::Outbox::new(buffers.outbox),
    );
    state.init(inner);
    let state: &'a State<'a, M> = state;
    let endpoint = Endpoint { state };
    let runner = Runner {
        state,
        stack,
        relay,
        security,
        socket_rx: buffers.socket_rx,
        socket_tx: buffers.socket_tx,
        tls_read: buffers.tls_read,
        tls_write: buffers.tls_write,
        frame: buffers.frame,
        rng,
        handshake_timeout: config.handshake_timeout,
        dead_after: config.dead_after,
        backoff_min: config.backoff_min,
        backoff_max: config.backoff_max,
    };
    Ok((endpoint, runner))
}

fn core_duration(d: embassy_time::Duration) -> core::time::Duration {
    core::time::Duration::from_millis(d.as_millis())
}

/// The protocol's clock: milliseconds since embassy-time's epoch (boot).
pub(crate) fn now() -> tlsro_proto::Instant {
    tlsro_proto::Instant::from_millis(embassy_time::Instant::now().as_millis())
}
