//! A tlsro robot on a NUCLEO-F429ZI (STM32F429ZI, Cortex-M4F, on-board LAN8742A Ethernet PHY).
//!
//! It joins the group `robot-commands`, broadcasts a `Telemetry` value to `telemetry` every
//! second, and consumes produced `Command`s (granting one more credit after each). The relay is
//! verified with the CA in `ca.pem` (replace it with the `ca.pem` of your relay, from
//! `tlsro-relay credentials generate --hostname relay.local --ip 10.42.0.1`), every handshake
//! nonce and the session id come from the chip's true RNG.
//!
//! Build: `cargo build --release` in this directory (its own workspace); flash and watch the
//! defmt log with `cargo run --release` (probe-rs). Set the password at build time with
//! `TLSRO_PASSWORD=... cargo build --release`. `--features lean` builds the RAM-lean profile:
//! the relay is asked for small TLS records, so the TLS read buffer is 1,036 bytes instead of
//! 16,640, with smaller socket buffers and fewer Ethernet DMA buffers (see README.md).
#![no_std]
#![no_main]

use defmt::{info, warn};
use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::Rng;
use embassy_stm32::{bind_interrupts, eth, rng};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_time::{Duration, Ticker};
use serde::{Deserialize, Serialize};
use static_cell::{ConstStaticCell, StaticCell};
use tlsro_embassy::{Buffers, Endpoint, Runner, Security, State};
use {defmt_rtt as _, panic_probe as _};

/// This robot's address, and the relay's.
const ADDRESS: Ipv4Cidr = Ipv4Cidr::new(Ipv4Address::new(10, 42, 0, 2), 24);
const RELAY: (Ipv4Address, u16) = (Ipv4Address::new(10, 42, 0, 1), 7000);
/// A DNS name of the relay certificate (embedded-tls never matches IP addresses).
const RELAY_NAME: &str = "relay.local";
/// `ca.pem` as DER (converted by build.rs).
const CA_DER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ca.der"));
const PASSWORD: &str = match option_env!("TLSRO_PASSWORD") {
    Some(p) => p,
    None => "change me",
};
const GROUPS: &[&str] = &["robot-commands"];

/// The buffer sizes of the profile (see README.md for what each costs).
#[cfg(not(feature = "lean"))]
mod sizes {
    pub const TLS_READ: usize = tlsro_embassy::TLS_READ_FULL; // a whole full-size TLS record
    pub const TLS_WRITE: usize = 2048;
    pub const SOCKET_RX: usize = 2048;
    pub const SOCKET_TX: usize = 2048;
    pub const FRAME: usize = 1024; // the largest frame the relay may send this robot
    pub const INBOX: usize = 2048;
    pub const OUTBOX: usize = 1024;
    pub const ETH_TX: usize = 4; // Ethernet DMA packet buffers, 1,524 bytes each
    pub const ETH_RX: usize = 4;
}

/// The RAM-lean profile: small TLS records (asked of the relay by ALPN), so the read buffer holds
/// one 1,036-byte record. The 1 KiB receive window keeps at most one segment in flight from the
/// relay, which two Ethernet receive buffers absorb.
#[cfg(feature = "lean")]
mod sizes {
    pub const TLS_READ: usize = tlsro_embassy::TLS_READ_SMALL;
    pub const TLS_WRITE: usize = 1024; // embedded-tls's minimum for the ClientHello
    pub const SOCKET_RX: usize = 1024;
    pub const SOCKET_TX: usize = 1024;
    pub const FRAME: usize = 1024; // the smallest largest frame an endpoint may state
    pub const INBOX: usize = FRAME + tlsro_embassy::INBOX_ENTRY_OVERHEAD;
    pub const OUTBOX: usize = 1024;
    pub const ETH_TX: usize = 2;
    pub const ETH_RX: usize = 2;
}

use sizes::*;

/// What the robot reports.
#[derive(Serialize, defmt::Format)]
struct Telemetry {
    seq: u32,
    uptime_ms: u64,
    battery_mv: u16,
    temperature_cdeg: i16,
}

/// What the robot is told to do.
#[derive(Deserialize, defmt::Format)]
enum Command {
    Stop,
    Drive { left: i16, right: i16 },
    Ping(u32),
}

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    HASH_RNG => rng::InterruptHandler<RNG>;
});

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;
type M = NoopRawMutex;

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn tlsro_task(mut runner: Runner<'static, M, Rng<'static, RNG>>) {
    let error = runner.run().await;
    warn!("tlsro endpoint ended: {}", error);
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_stm32::init(clocks());
    info!("tlsro robot starting");

    let mut rng = Rng::new(p.RNG, Irqs);
    let mut seed = [0u8; 8];
    rng.fill_bytes(&mut seed);

    static PACKETS: ConstStaticCell<PacketQueue<ETH_TX, ETH_RX>> =
        ConstStaticCell::new(PacketQueue::new());
    // A locally administered MAC address (set your own).
    let mac = [0x02, 0x74, 0x6c, 0x73, 0x72, 0x6f];
    let device = Ethernet::new(
        PACKETS.take(),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );
    let net_config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: ADDRESS,
        gateway: None,
        dns_servers: Default::default(),
    });
    static RESOURCES: StaticCell<StackResources<2>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        device,
        net_config,
        RESOURCES.init(StackResources::new()),
        u64::from_le_bytes(seed),
    );
    spawner.spawn(net_task(net_runner).unwrap());

    let security = Security::tls(CA_DER, RELAY_NAME).unwrap();
    // Lean: ask the relay for small TLS records (the relay picks them per connection by ALPN).
    #[cfg(feature = "lean")]
    let security = security.with_small_records();
    let config = tlsro_embassy::Config::new(PASSWORD.as_bytes(), GROUPS);

    static TLS_READ_BUF: ConstStaticCell<[u8; TLS_READ]> = ConstStaticCell::new([0; TLS_READ]);
    static TLS_WRITE_BUF: ConstStaticCell<[u8; TLS_WRITE]> = ConstStaticCell::new([0; TLS_WRITE]);
    static SOCKET_RX_BUF: ConstStaticCell<[u8; SOCKET_RX]> = ConstStaticCell::new([0; SOCKET_RX]);
    static SOCKET_TX_BUF: ConstStaticCell<[u8; SOCKET_TX]> = ConstStaticCell::new([0; SOCKET_TX]);
    static FRAME_BUF: ConstStaticCell<[u8; FRAME]> = ConstStaticCell::new([0; FRAME]);
    static INBOX_BUF: ConstStaticCell<[u8; INBOX]> = ConstStaticCell::new([0; INBOX]);
    static OUTBOX_BUF: ConstStaticCell<[u8; OUTBOX]> = ConstStaticCell::new([0; OUTBOX]);
    let buffers = Buffers {
        socket_rx: SOCKET_RX_BUF.take(),
        socket_tx: SOCKET_TX_BUF.take(),
        tls_read: TLS_READ_BUF.take(),
        tls_write: TLS_WRITE_BUF.take(),
        frame: FRAME_BUF.take(),
        inbox: INBOX_BUF.take(),
        outbox: OUTBOX_BUF.take(),
    };
    static STATE: StaticCell<State<'static, M>> = StaticCell::new();
    let (endpoint, runner) = tlsro_embassy::new(
        stack,
        RELAY.into(),
        STATE.init(State::new()),
        config,
        security,
        buffers,
        rng,
    )
    .unwrap();
    spawner.spawn(tlsro_task(runner).unwrap());

    robot(endpoint).await;
}

/// The application: telemetry out every second, commands in whenever they come.
async fn robot(endpoint: Endpoint<'static, M>) -> ! {
    // Credit for four commands; one more after each (it survives reconnects).
    endpoint.notify("robot-commands", 4).unwrap();
    let mut ticker = Ticker::every(Duration::from_secs(1));
    let mut buf = [0u8; FRAME];
    let mut seq = 0u32;
    loop {
        match select(ticker.next(), endpoint.receive(&mut buf)).await {
            Either::First(()) => {
                seq += 1;
                let telemetry = Telemetry {
                    seq,
                    uptime_ms: embassy_time::Instant::now().as_millis(),
                    battery_mv: 12_400,
                    temperature_cdeg: 2_150,
                };
                // While the relay is away the outbox keeps what fits (resent on reconnect) and
                // then refuses: old telemetry is better dropped than waited for.
                if let Err(e) = endpoint.try_broadcast_value(&["telemetry"], &telemetry) {
                    warn!("telemetry {} not sent: {}", seq, e);
                }
            }
            Either::Second(Ok(item)) => match item.decode::<Command>() {
                Ok(command) => {
                    info!("command from {}: {}", item.group, command);
                    let _ = endpoint.notify("robot-commands", 1);
                }
                Err(e) => warn!("undecodable command: {}", e),
            },
            Either::Second(Err(e)) => {
                warn!("endpoint: {}", e);
                embassy_time::Timer::after_secs(1).await;
            }
        }
    }
}

/// 168 MHz from the 8 MHz clock the on-board ST-LINK provides; 48 MHz for the RNG.
fn clocks() -> embassy_stm32::Config {
    use embassy_stm32::rcc::*;
    let mut config = embassy_stm32::Config::default();
    config.rcc.hse = Some(Hse {
        freq: embassy_stm32::time::Hertz(8_000_000),
        mode: HseMode::Bypass,
    });
    config.rcc.pll_src = PllSource::HSE;
    config.rcc.pll = Some(Pll {
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL168,
        divp: Some(PllPDiv::DIV2),
        divq: Some(PllQDiv::DIV7),
        divr: None,
    });
    config.rcc.ahb_pre = AHBPrescaler::DIV1;
    config.rcc.apb1_pre = APBPrescaler::DIV4;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.sys = Sysclk::PLL1_P;
    config
}
