//! The relay configuration file (TOML).
//!
//! `tlsro-relay run --config FILE` reads one. Every key is optional; a missing key keeps the
//! relay's default. An unknown key is an error, so that a typo never silently leaves a limit at
//! its default.
//!
//! ```toml
//! listen = "0.0.0.0:7000"       # the command line's --listen wins over this
//! max_object_size = "16MiB"     # bytes, or a string with a B, KiB, MiB or GiB suffix
//! outbound_limit = "64MiB"      # per connection: past it an endpoint is a slow consumer
//! max_groups = 10000            # groups that may exist at once
//! max_connections = 10000       # connections at once
//! handshake_timeout = "10s"     # with a us, ms, s or m suffix
//! idle_intervals = 3            # silent keepalive intervals before an endpoint is dropped
//! max_sessions = 100000         # sessions remembered (connected ones count) to recognise resends
//! confirm_delay = "25ms"        # how long the confirm of a lone publish may wait for other
//!                               # output to its sender (at most 1s)
//! max_keepalive = "5m"          # the longest keepalive an endpoint may state: past it the
//!                               # relay pings (and drops the silent) at this interval
//! min_frame_rate = 128          # bytes/s a frame must average once the idle window passed
//!                               # (slowloris); 0 turns it off
//! # busy_poll = "200us"         # spin this long after traffic instead of sleeping: lower
//!                               # latency for CPU, one thread serves everything; default off
//!
//! # Any [groups.NAME] table turns on the allow-list (tlspyo's `accepted_groups`): only the
//! # groups listed can then be joined or published to.
//! [groups.consumers]
//! max_members = 10              # or "unlimited"; default: [default_group]'s, else unlimited
//! max_queue = 1000              # produced objects waiting; default 100000
//! overflow = "reject"           # or "drop-oldest"; default "reject"
//!
//! # Limits of every group when there is no allow-list, and of the keys a [groups.NAME]
//! # table leaves out when there is one.
//! [default_group]
//! max_queue = 100000
//! overflow = "reject"
//! ```
//!
//! Load a file with [`RelayFileConfig::load`] and hand it to a relay with
//! [`RelayFileConfig::apply`]:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tlsro_relay::{Relay, config::RelayFileConfig};
//!
//! let file = RelayFileConfig::load("relay.toml".as_ref())?;
//! let relay = file
//!     .apply(Relay::builder(b"password".to_vec()))
//!     .plain()
//!     .start()
//!     .await?;
//! # relay.stop().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use tlsro_proto::relay::{DEFAULT_MAX_OBJECT, GroupLimits, Overflow, RelayConfig};
/// The bounds of `max_keepalive` and `confirm_delay` (the relay's own, checked by
/// [`RelayConfig::check`]).
pub use tlsro_proto::relay::{MAX_CONFIRM_DELAY, MIN_KEEPALIVE};

use crate::RelayBuilder;

/// Room for the frame header on top of the largest object: `max_frame = max_object_size + 1024`.
pub const FRAME_HEADER_ROOM: u32 = 1024;

/// The largest `max_object_size` a frame length can carry.
pub const MAX_OBJECT_SIZE_LIMIT: u64 = (u32::MAX - FRAME_HEADER_ROOM) as u64;

/// Default per-connection outbound limit (the relay's own default): 64 MiB.
const DEFAULT_OUTBOUND_LIMIT: u64 = 64 * 1024 * 1024;

/// The contents of a relay configuration file. `None` (or an empty map) keeps the relay's
/// default. See the [module documentation](self) for the file format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFileConfig {
    /// Where to listen.
    #[serde(default, deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
    /// The largest object an endpoint may send, in bytes (the relay's frame limit is this plus
    /// [`FRAME_HEADER_ROOM`]).
    #[serde(default, deserialize_with = "de_size")]
    pub max_object_size: Option<u64>,
    /// Bytes of output a connection may have waiting before it counts as a slow consumer.
    #[serde(default, deserialize_with = "de_size")]
    pub outbound_limit: Option<u64>,
    /// At most this many groups at once.
    pub max_groups: Option<usize>,
    /// At most this many connections at once.
    pub max_connections: Option<usize>,
    /// The handshake must finish within this.
    #[serde(default, deserialize_with = "de_duration")]
    pub handshake_timeout: Option<Duration>,
    /// An endpoint silent for this many of its keepalive intervals is disconnected.
    pub idle_intervals: Option<u32>,
    /// Sessions remembered, connected ones included, to recognise resent publishes (the one
    /// gone longest is forgotten first).
    pub max_sessions: Option<usize>,
    /// How long the confirm of a publish that came alone may wait for other output to its
    /// sender (`RelayConfig::confirm_delay`), at most [`MAX_CONFIRM_DELAY`].
    #[serde(default, deserialize_with = "de_duration")]
    pub confirm_delay: Option<Duration>,
    /// The longest keepalive interval of an endpoint the relay honours
    /// (`RelayConfig::max_keepalive`).
    #[serde(default, deserialize_with = "de_duration")]
    pub max_keepalive: Option<Duration>,
    /// Bytes per second a frame still arriving after the idle window must have averaged
    /// (`RelayConfig::min_frame_rate`); 0: no minimum.
    pub min_frame_rate: Option<u32>,
    /// Busy polling: spin this long after each read or write instead of sleeping
    /// ([`RelayBuilder::busy_poll`]). The `tlsro-relay` command then runs on one thread.
    #[serde(default, deserialize_with = "de_busy_poll")]
    pub busy_poll: Option<Duration>,
    /// The allow-list: when not empty, only these groups exist, with these limits.
    #[serde(default, deserialize_with = "de_groups")]
    pub groups: BTreeMap<String, GroupFileLimits>,
    /// Limits of groups when there is no allow-list, and the base of every `[groups.NAME]`
    /// table (the keys it leaves out) when there is one.
    pub default_group: Option<GroupFileLimits>,
}

/// The limits of one group in the file (`[groups.NAME]` or `[default_group]`). A missing key
/// keeps the default: `[default_group]`'s for a `[groups.NAME]` table, else
/// [`GroupLimits::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFileLimits {
    /// At most this many members at once (`max_members = 10`), or no limit
    /// (`max_members = "unlimited"`, for a group that should not inherit `[default_group]`'s).
    #[serde(default, deserialize_with = "de_member_limit")]
    pub max_members: Option<MemberLimit>,
    /// At most this many produced objects waiting in the group's queue.
    pub max_queue: Option<usize>,
    /// What a full queue does.
    pub overflow: Option<OverflowSetting>,
}

/// `max_members`: a number, or `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberLimit {
    /// `max_members = "unlimited"`.
    Unlimited,
    /// `max_members = N`.
    At(usize),
}

impl MemberLimit {
    fn to_option(self) -> Option<usize> {
        match self {
            MemberLimit::Unlimited => None,
            MemberLimit::At(n) => Some(n),
        }
    }
}

/// `overflow = "reject"` or `overflow = "drop-oldest"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowSetting {
    /// [`Overflow::Reject`].
    Reject,
    /// [`Overflow::DropOldest`].
    DropOldest,
}

impl From<OverflowSetting> for Overflow {
    fn from(value: OverflowSetting) -> Self {
        match value {
            OverflowSetting::Reject => Overflow::Reject,
            OverflowSetting::DropOldest => Overflow::DropOldest,
        }
    }
}

impl GroupFileLimits {
    /// These limits on top of the defaults.
    pub fn to_limits(&self) -> GroupLimits {
        self.over(GroupLimits::default())
    }

    /// These limits on top of `base` (a `[groups.NAME]` table's missing keys come from
    /// `[default_group]`).
    pub fn over(&self, base: GroupLimits) -> GroupLimits {
        let mut limits = base;
        if let Some(n) = self.max_members {
            limits.max_members = n.to_option();
        }
        if let Some(n) = self.max_queue {
            limits.max_queue = n;
        }
        if let Some(o) = self.overflow {
            limits.overflow = o.into();
        }
        limits
    }
}

/// Errors reading a configuration file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong kind.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The toml crate's message (line, column and the offending key or value).
        source: toml::de::Error,
    },
    /// The values contradict each other.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl RelayFileConfig {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.with_path(path))
    }

    /// Parses and checks a configuration from TOML text. Errors name the file as `<text>`; use
    /// [`RelayFileConfig::load`] to have them name a file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let path = PathBuf::from("<text>");
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.clone(),
            source,
        })?;
        config
            .check()
            .map_err(|message| ConfigError::Invalid { path, message })?;
        Ok(config)
    }

    /// Checks what a single value cannot show on its own.
    fn check(&self) -> Result<(), String> {
        if let Some(size) = self.max_object_size
            && size > MAX_OBJECT_SIZE_LIMIT
        {
            return Err(format!(
                "max_object_size ({size} bytes) is too large: at most {MAX_OBJECT_SIZE_LIMIT} bytes"
            ));
        }
        let max_frame = self.max_frame();
        let outbound = self.outbound_limit.unwrap_or(DEFAULT_OUTBOUND_LIMIT);
        if outbound < u64::from(max_frame) {
            return Err(format!(
                "outbound_limit ({outbound} bytes) is smaller than the largest frame \
                 (max_object_size + {FRAME_HEADER_ROOM} = {max_frame} bytes): every receiver of a \
                 large object would be disconnected as a slow consumer"
            ));
        }
        if usize::try_from(outbound).is_err() {
            return Err(format!(
                "outbound_limit ({outbound} bytes) does not fit this machine's memory"
            ));
        }
        // The rules of the relay's own configuration (proto's), on what this file asks for.
        let mut config = RelayConfig::new(tlsro_proto::auth::AuthKey::from_bytes([0; 32]), 0);
        self.apply_to(&mut config);
        config.check()
    }

    /// The relay's frame limit this file asks for.
    fn max_frame(&self) -> u32 {
        match self.max_object_size {
            // At most MAX_OBJECT_SIZE_LIMIT once checked; saturate for hand-built values.
            Some(size) => u32::try_from(size)
                .unwrap_or(u32::MAX)
                .saturating_add(FRAME_HEADER_ROOM),
            None => DEFAULT_MAX_OBJECT + FRAME_HEADER_ROOM,
        }
    }

    /// Sets every limit the file gives on `config`; the others are left as they are.
    pub fn apply_to(&self, config: &mut RelayConfig) {
        if self.max_object_size.is_some() {
            config.max_frame = self.max_frame();
        }
        if let Some(n) = self.outbound_limit {
            config.outbound_limit = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.max_groups {
            config.max_groups = n;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if let Some(t) = self.handshake_timeout {
            config.handshake_timeout = t;
        }
        if let Some(n) = self.idle_intervals {
            config.idle_intervals = n;
        }
        if let Some(n) = self.max_sessions {
            config.max_sessions = n;
        }
        if let Some(t) = self.confirm_delay {
            config.confirm_delay = t;
        }
        if let Some(t) = self.max_keepalive {
            config.max_keepalive = t;
        }
        if let Some(n) = self.min_frame_rate {
            config.min_frame_rate = n;
        }
        if let Some(limits) = &self.default_group {
            config.default_limits = limits.to_limits();
        }
        if !self.groups.is_empty() {
            let base = config.default_limits.clone();
            config.allowed_groups = Some(
                self.groups
                    .iter()
                    .map(|(name, limits)| (name.clone(), limits.over(base.clone())))
                    .collect(),
            );
        }
    }

    /// The builder with this file's listen address (if any) and limits. Call
    /// [`RelayBuilder::listen`] afterwards to override the address.
    pub fn apply(&self, builder: RelayBuilder) -> RelayBuilder {
        let builder = match self.listen {
            Some(addr) => builder.listen(addr),
            None => builder,
        };
        let builder = match self.busy_poll {
            Some(window) => builder.busy_poll(window),
            None => builder,
        };
        let this = self.clone();
        builder.configure(move |config| this.apply_to(config))
    }
}

impl ConfigError {
    fn with_path(self, path: &Path) -> Self {
        let path = path.to_owned();
        match self {
            ConfigError::Read { source, .. } => ConfigError::Read { path, source },
            ConfigError::Parse { source, .. } => ConfigError::Parse { path, source },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path, message },
        }
    }
}

/// Parses a size: a number of bytes with an optional `B`, `KiB`, `MiB` or `GiB` suffix (any
/// case, spaces allowed before it), e.g. `"16MiB"`, `"512 KiB"`, `"1024"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a whole number of bytes with an optional \
             B, KiB, MiB or GiB suffix, e.g. \"16MiB\""
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(in_whole_units(text, "size", SIZE_UNITS));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" | "mb" | "gb" | "k" | "m" | "g" => {
            return Err(format!(
                "{text:?}: unit {unit:?} is ambiguous; use KiB, MiB or GiB (powers of 1024)"
            ));
        }
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Size units, smallest first, each with how many of the one before it make one.
const SIZE_UNITS: &[(&str, u32)] = &[("B", 1), ("KiB", 1024), ("MiB", 1024), ("GiB", 1024)];

/// Duration units, as [`SIZE_UNITS`].
const DURATION_UNITS: &[(&str, u32)] = &[("us", 1), ("ms", 1000), ("s", 1000), ("m", 60)];

/// The error for a fractional `text` ("1.5MiB", "0.2ms"): the same amount in the largest
/// smaller unit that makes it whole ("1536KiB", "200us"), when there is one.
fn in_whole_units(text: &str, what: &str, units: &[(&str, u32)]) -> String {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ',' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: Option<f64> = number.replace(',', ".").replace('_', "").parse().ok();
    let index = units
        .iter()
        .position(|(name, _)| name.eq_ignore_ascii_case(unit.trim()));
    let whole = |v: f64| (v - v.round()).abs() < 1e-9;
    if let (Some(mut value), Some(mut i)) = (number, index) {
        while i > 0 && !whole(value) {
            value *= f64::from(units[i].1);
            i -= 1;
        }
        if whole(value) && value < 1e15 {
            return format!(
                "{text:?}: a {what} is a whole number; write \"{}{}\"",
                value.round() as u64,
                units[i].0
            );
        }
    }
    format!(
        "{text:?}: a {what} is a whole number (of {} at the smallest)",
        units[0].0
    )
}

/// Parses a duration: a whole number with a `us`, `ms`, `s` or `m` suffix, e.g. `"10s"`,
/// `"500ms"`, `"200us"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a duration: expected a whole number with a us, ms, s or m suffix, \
             e.g. \"10s\""
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(in_whole_units(text, "duration", DURATION_UNITS));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    match unit {
        "us" | "µs" => Ok(Duration::from_micros(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" | "min" => number
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too large")),
        "" => Err(format!(
            "{text:?} has no unit: write for example \"{number}s\" or \"{number}ms\""
        )),
        _ => Err(format!(
            "{text:?}: unknown unit {unit:?}; use us, ms, s or m"
        )),
    }
}

/// `max_object_size` / `outbound_limit`: an integer or a size string, never zero.
fn de_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: a number of bytes or a string such as \"16MiB\"")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }

    let size = deserializer.deserialize_any(SizeVisitor)?;
    if size == 0 {
        return Err(de::Error::custom("a size of 0 bytes leaves nothing usable"));
    }
    Ok(Some(size))
}

/// A listen address, `IP:PORT`; the error says what is expected (a host name or a bare port is
/// the usual mistake). Serves `--listen` and the file's `listen`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| {
        format!(
            "{text:?} is not an IP:PORT address ({e}): write for example 127.0.0.1:7000, \
             0.0.0.0:7000 (every interface) or [::]:7000; host names are not resolved"
        )
    })
}

fn de_listen<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text).map(Some).map_err(de::Error::custom)
}

/// `handshake_timeout`: a duration string, never zero.
fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"10s\" or \"500ms\"")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            if v < 0 {
                return Err(E::custom(format!("a duration cannot be negative ({v})")));
            }
            Err(E::custom(format!(
                "a duration needs a unit: write for example \"{v}s\" or \"{v}ms\""
            )))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }

    let duration = deserializer.deserialize_any(DurationVisitor)?;
    if duration.is_zero() {
        return Err(de::Error::custom(
            "a duration of 0 is not usable here (a timeout would expire at once, a window or \
             an interval would be empty)",
        ));
    }
    Ok(Some(duration))
}

/// `busy_poll`: a duration within [`tlsro::busy_poll::check_window`]'s bounds.
fn de_busy_poll<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let window = de_duration(deserializer)?;
    if let Some(w) = window {
        tlsro::busy_poll::check_window(w).map_err(de::Error::custom)?;
    }
    Ok(window)
}

/// `max_members`: a whole number or `"unlimited"`.
fn de_member_limit<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MemberLimit>, D::Error> {
    struct Limit;
    impl Visitor<'_> for Limit {
        type Value = MemberLimit;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of members or \"unlimited\"")
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<MemberLimit, E> {
            let n = u64::try_from(n).map_err(|_| {
                E::custom(format!(
                    "max_members = {n}: a number of members cannot be negative"
                ))
            })?;
            self.visit_u64(n)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<MemberLimit, E> {
            usize::try_from(n)
                .map(MemberLimit::At)
                .map_err(|_| E::custom(format!("max_members = {n} is too large")))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<MemberLimit, E> {
            match text {
                "unlimited" => Ok(MemberLimit::Unlimited),
                _ => Err(E::custom(format!(
                    "max_members = {text:?}: write a number of members or \"unlimited\""
                ))),
            }
        }
    }
    deserializer.deserialize_any(Limit).map(Some)
}

/// `[groups]`: at least one group when the table is there at all.
fn de_groups<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, GroupFileLimits>, D::Error> {
    let groups = BTreeMap::<String, GroupFileLimits>::deserialize(deserializer)?;
    if groups.is_empty() {
        return Err(de::Error::custom(
            "[groups] lists no group: add [groups.NAME] tables, or remove it to allow any group",
        ));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the module documentation.
    const EXAMPLE: &str = r#"
listen = "0.0.0.0:7000"
max_object_size = "16MiB"
outbound_limit = "64MiB"
max_groups = 10000
max_connections = 10000
handshake_timeout = "10s"
idle_intervals = 3
max_sessions = 100000
confirm_delay = "25ms"
max_keepalive = "5m"
min_frame_rate = 128

[groups.consumers]
max_members = 10
max_queue = 1000
overflow = "reject"

[default_group]
max_queue = 100000
overflow = "reject"
"#;

    fn config() -> RelayConfig {
        RelayConfig::new(tlsro_proto::auth::AuthKey::derive(b"pw"), 1)
    }

    fn parse_err(text: &str) -> String {
        match RelayFileConfig::parse(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_documented_example_parses_and_applies() {
        // Keep the module documentation and this test in step.
        let docs: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let from_docs = RelayFileConfig::parse(&docs).expect("documented example");
        let file = RelayFileConfig::parse(EXAMPLE).expect("example");
        assert_eq!(from_docs, file);

        assert_eq!(file.listen, Some("0.0.0.0:7000".parse().unwrap()));
        assert_eq!(file.max_object_size, Some(16 << 20));
        assert_eq!(file.outbound_limit, Some(64 << 20));
        assert_eq!(file.handshake_timeout, Some(Duration::from_secs(10)));
        assert_eq!(file.groups.len(), 1);

        let mut c = config();
        file.apply_to(&mut c);
        assert_eq!(c.max_frame, 16 * 1024 * 1024 + 1024);
        assert_eq!(c.outbound_limit, 64 * 1024 * 1024);
        assert_eq!(c.max_groups, 10_000);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_intervals, 3);
        assert_eq!(c.max_sessions, 100_000);
        assert_eq!(c.min_frame_rate, 128);
        assert_eq!(c.max_keepalive, Duration::from_secs(300));
        assert_eq!(c.confirm_delay, Duration::from_millis(25));
        let allowed = c.allowed_groups.as_ref().expect("allow-list on");
        assert_eq!(
            allowed.get("consumers"),
            Some(&GroupLimits {
                max_members: Some(10),
                max_queue: 1000,
                overflow: Overflow::Reject,
            })
        );
        assert_eq!(c.limits("producers"), None);
        assert_eq!(c.default_limits, GroupLimits::default());
    }

    #[test]
    fn an_empty_file_changes_nothing() {
        let file = RelayFileConfig::parse("").unwrap();
        assert_eq!(file, RelayFileConfig::default());
        let mut c = config();
        file.apply_to(&mut c);
        let d = config();
        assert_eq!(c.max_frame, d.max_frame);
        assert_eq!(c.outbound_limit, d.outbound_limit);
        assert_eq!(c.allowed_groups, None);
        assert_eq!(c.default_limits, d.default_limits);
        assert_eq!(c.handshake_timeout, d.handshake_timeout);
    }

    #[test]
    fn group_limits_fill_in_defaults() {
        let file = RelayFileConfig::parse(
            "[groups.a]\n[groups.b]\noverflow = \"drop-oldest\"\n\
             [groups.c]\nmax_members = \"unlimited\"\n\
             [default_group]\nmax_members = 2\noverflow = \"drop-oldest\"\n",
        )
        .unwrap();
        let mut c = config();
        file.apply_to(&mut c);
        let allowed = c.allowed_groups.unwrap();
        // "unlimited" overrides [default_group]'s member limit; the other keys still inherit.
        assert_eq!(
            allowed["c"],
            GroupLimits {
                max_members: None,
                overflow: Overflow::DropOldest,
                ..GroupLimits::default()
            }
        );
        // A listed group's missing keys come from [default_group], then the built-in defaults.
        let base = GroupLimits {
            max_members: Some(2),
            overflow: Overflow::DropOldest,
            ..GroupLimits::default()
        };
        assert_eq!(allowed["a"], base);
        assert_eq!(allowed["b"], base);
        assert_eq!(c.default_limits, base);
        // Without [default_group], the built-in defaults.
        let file = RelayFileConfig::parse(
            "[groups.a]
max_queue = 5
",
        )
        .unwrap();
        let mut c = config();
        file.apply_to(&mut c);
        let allowed = c.allowed_groups.unwrap();
        assert_eq!(
            allowed["a"],
            GroupLimits {
                max_queue: 5,
                ..GroupLimits::default()
            }
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 mib"), Ok(16 << 20));
        assert_eq!(parse_size(" 2GiB "), Ok(2 << 30));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert!(parse_size("16MB").unwrap_err().contains("MiB"));
        assert!(
            parse_size("16 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        let e = parse_size("1.5MiB").unwrap_err();
        assert!(
            e.contains("whole number") && e.contains("\"1536KiB\""),
            "{e}"
        );
        let e = parse_size("1.5KiB").unwrap_err();
        assert!(e.contains("\"1536B\""), "{e}");
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(
            parse_size("17179869184GiB")
                .unwrap_err()
                .contains("too large")
        );

        let file = RelayFileConfig::parse("max_object_size = 1000\noutbound_limit = 4096").unwrap();
        assert_eq!(file.max_object_size, Some(1000));
        let mut c = config();
        file.apply_to(&mut c);
        assert_eq!(c.max_frame, 2024);
        assert_eq!(c.outbound_limit, 4096);

        assert!(parse_err("max_object_size = -5").contains("negative"));
        assert!(parse_err("max_object_size = 0").contains("0 bytes"));
        assert!(parse_err("max_object_size = \"8GiB\"").contains("too large"));
        assert!(parse_err("max_object_size = 1.5").contains("a size"));
        let e = parse_err("confirm_delay = \"2s\"");
        assert!(
            e.contains("confirm_delay (2s) is too long") && !e.contains("  "),
            "{e}"
        );
        let e = parse_err("max_keepalive = \"50ms\"");
        assert!(e.contains("max_keepalive (50ms) is too short"), "{e}");
        assert!(parse_err("idle_intervals = 0").contains("idle_intervals must be at least 1"));
        // The error quotes the line, so the key alone proves nothing: serde's verdict on it.
        for bad in ["min_frame_rate = -1", "min_frame_rate = \"fast\""] {
            let e = parse_err(bad);
            assert!(
                e.contains("min_frame_rate") && e.contains("expected u32"),
                "{bad}: {e}"
            );
        }
        let e = parse_err("max_object_size = \"16 MB\"");
        assert!(e.contains("max_object_size") && e.contains("MiB"), "{e}");
    }

    #[test]
    fn outbound_limit_must_hold_a_largest_frame() {
        let e = parse_err("max_object_size = \"1MiB\"\noutbound_limit = \"1MiB\"");
        assert!(
            e.contains("outbound_limit") && e.contains("slow consumer"),
            "{e}"
        );
        let e = parse_err("max_object_size = \"128MiB\"");
        assert!(e.contains("outbound_limit"), "{e}");
        RelayFileConfig::parse("max_object_size = \"128MiB\"\noutbound_limit = \"1GiB\"").unwrap();
        RelayFileConfig::parse("outbound_limit = 17000000").unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("50µs"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3 s"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10h").unwrap_err().contains("unknown unit"));
        let e = parse_duration("0.5s").unwrap_err();
        assert!(e.contains("whole number") && e.contains("\"500ms\""), "{e}");
        let e = parse_duration("0.2ms").unwrap_err();
        assert!(e.contains("\"200us\""), "{e}");
        let e = parse_duration("1.5us").unwrap_err();
        assert!(e.contains("of us at the smallest"), "{e}");
        let e = parse_duration("0.25m").unwrap_err();
        assert!(e.contains("\"15s\""), "{e}");
        assert!(parse_duration("s").is_err());

        let file = RelayFileConfig::parse("handshake_timeout = \"1500ms\"").unwrap();
        assert_eq!(file.handshake_timeout, Some(Duration::from_millis(1500)));
        let e = parse_err("handshake_timeout = 10");
        assert!(
            e.contains("handshake_timeout") && e.contains("\"10s\""),
            "{e}"
        );
        assert!(parse_err("handshake_timeout = \"0s\"").contains("0"));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = parse_err("listen = \"localhost:7000\"");
        assert!(e.contains("IP:PORT") && e.contains("0.0.0.0:7000"), "{e}");
        let e = parse_err("listen = \"127.0.0.1:7000\"\nmax_object_sise = \"1MiB\"\n");
        assert!(e.contains("max_object_sise"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = parse_err("[groups.g]\nmax_member = 3\n");
        assert!(e.contains("max_member"), "{e}");
        let e = parse_err("[default_group]\ncolour = \"blue\"\n");
        assert!(e.contains("colour"), "{e}");
        let e = parse_err("[groups]\n");
        assert!(e.contains("lists no group"), "{e}");
    }

    #[test]
    fn group_names_no_endpoint_can_send_are_refused() {
        let long = "x".repeat(tlsro_proto::MAX_GROUP_NAME + 1);
        for name in ["", long.as_str()] {
            let e = parse_err(&format!("[groups.\"{name}\"]\n"));
            assert!(
                e.contains("group name")
                    && e.contains(&format!("1 to {} bytes", tlsro_proto::MAX_GROUP_NAME)),
                "{name:?}: {e}"
            );
        }
        let longest = "x".repeat(tlsro_proto::MAX_GROUP_NAME);
        let file = RelayFileConfig::parse(&format!("[groups.{longest}]\n[groups.\"bücher\"]\n"))
            .expect("valid names");
        assert_eq!(file.groups.len(), 2);
    }

    #[test]
    fn limits_that_refuse_everything_are_refused() {
        let e = parse_err("max_connections = 0");
        assert!(e.contains("max_connections must be at least 1"), "{e}");
        let e = parse_err("max_groups = 0");
        assert!(e.contains("max_groups must be at least 1"), "{e}");
        for (text, reason) in [
            (
                "max_members = -1",
                "max_members = -1: a number of members cannot be negative",
            ),
            (
                "max_members = \"lots\"",
                "write a number of members or \"unlimited\"",
            ),
            (
                "max_members = 1.5",
                "expected a number of members or \"unlimited\"",
            ),
        ] {
            let e = parse_err(&format!("[groups.z]\n{text}\n"));
            assert!(e.contains(reason), "{text}: {e}");
        }
        let e = parse_err("[groups.z]\nmax_members = 0\n");
        assert!(
            e.contains("group \"z\": max_members must be at least 1"),
            "{e}"
        );
        let e = parse_err("[default_group]\nmax_queue = 0\n");
        assert!(
            e.contains("default group limits: max_queue must be at least 1"),
            "{e}"
        );
        RelayFileConfig::parse("max_connections = 1\nmax_groups = 1\nmax_sessions = 0").unwrap();
    }

    #[test]
    fn busy_poll_is_a_window_and_reaches_the_builder() {
        let file = RelayFileConfig::parse("busy_poll = \"150us\"\n").unwrap();
        assert_eq!(file.busy_poll, Some(Duration::from_micros(150)));
        let builder = file.apply(crate::Relay::builder(b"pw".to_vec()));
        assert_eq!(builder.busy_poll_window(), Some(Duration::from_micros(150)));
        assert!(
            parse_err("busy_poll = \"0us\"").contains("a window or an interval would be empty")
        );
        assert!(parse_err("busy_poll = \"10s\"").contains("longer than"));
        assert!(parse_err("busy_poll = -5").contains("negative"));
        assert!(parse_err("busy_poll = 200").contains("needs a unit"));
        assert_eq!(RelayFileConfig::default().busy_poll, None);
    }

    #[test]
    fn bad_values_are_refused() {
        let e = parse_err("[groups.g]\noverflow = \"drop-newest\"\n");
        assert!(
            e.contains("drop-newest") && e.contains("reject") && e.contains("drop-oldest"),
            "{e}"
        );
        assert!(parse_err("listen = \"localhost\"").contains("listen"));
        assert!(parse_err("max_groups = -1").contains("max_groups"));
        assert!(parse_err("max_groups = \"many\"").contains("max_groups"));
        assert!(parse_err("this is not toml").contains("line 1"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!(
            "tlsro-relay-config-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let e = RelayFileConfig::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&*path.to_string_lossy()), "{e}");
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&path, "max_object_size = \"1GiB\"\n").unwrap();
        let e = RelayFileConfig::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&*path.to_string_lossy()), "{e}");
        let missing = dir.join("absent.toml");
        let e = RelayFileConfig::load(&missing).unwrap_err().to_string();
        assert!(e.contains(&*missing.to_string_lossy()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
