//! What a relay allows: limits on frames, groups, queues and slow consumers.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::time::Duration;

use crate::auth::AuthKey;

/// What happens when a producer adds to a full group queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Refuse the new object; the producer gets a `PublishRejected { QueueFull }`.
    #[default]
    Reject,
    /// Drop the oldest queued object to make room, and count it.
    DropOldest,
}

/// Limits of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLimits {
    /// At most this many members at once (`None`: unlimited).
    pub max_members: Option<usize>,
    /// At most this many produced objects waiting in the group's queue.
    pub max_queue: usize,
    /// What a full queue does.
    pub overflow: Overflow,
}

impl Default for GroupLimits {
    fn default() -> Self {
        GroupLimits {
            max_members: None,
            max_queue: 100_000,
            overflow: Overflow::Reject,
        }
    }
}

/// Everything the relay state needs to know. Construct with [`RelayConfig::new`] and adjust
/// the public fields.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The key derived from the shared password.
    pub key: AuthKey,
    /// Drawn at random when the relay starts: endpoints see a new epoch after a restart.
    pub epoch: u64,
    /// The largest frame the relay accepts (an object plus a few dozen bytes of header).
    pub max_frame: u32,
    /// `Some`: only these groups exist, with these limits (tlspyo's `accepted_groups`).
    /// `None`: any group can be used, with [`RelayConfig::default_limits`].
    pub allowed_groups: Option<BTreeMap<String, GroupLimits>>,
    /// Limits of groups when there is no allow-list.
    pub default_limits: GroupLimits,
    /// At most this many groups exist at once (bounds retained memory with `max_frame`).
    pub max_groups: usize,
    /// At most this many connections at once.
    pub max_connections: usize,
    /// Bytes of output a connection may have waiting; past it the endpoint is a slow consumer
    /// and is disconnected.
    pub outbound_limit: usize,
    /// The handshake must finish within this.
    pub handshake_timeout: Duration,
    /// An endpoint silent for this many of its keepalive intervals is disconnected.
    pub idle_intervals: u32,
    /// Sessions remembered after they disconnect, to recognise resent publishes.
    pub max_sessions: usize,
    /// How long the `Confirm` of a publish that came alone may wait for other output to the
    /// same endpoint to travel with (PROTOCOL.md §9.6).
    pub confirm_delay: Duration,
    /// The longest keepalive interval of an endpoint the relay honours: it pings a silent
    /// endpoint after at most this, and closes it after `idle_intervals` of them.
    pub max_keepalive: Duration,
    /// A frame still arriving after the connection's idle window (`idle_intervals` keepalive
    /// intervals) must have come at this many bytes per second on average since its first byte,
    /// or the connection is closed (PROTOCOL.md §9.10). 0: no minimum.
    pub min_frame_rate: u32,
}

/// The shortest keepalive interval the relay honours (an endpoint stating less is pinged this
/// often), and so the shortest `max_keepalive`.
pub const MIN_KEEPALIVE: Duration = Duration::from_millis(100);

/// The longest `confirm_delay`: endpoints that do not ask would keep their last publish that
/// long.
pub const MAX_CONFIRM_DELAY: Duration = Duration::from_secs(1);

/// The relay's default limit for an object: 16 MiB.
pub const DEFAULT_MAX_OBJECT: u32 = 16 * 1024 * 1024;

impl RelayConfig {
    /// Defaults: 16 MiB objects, any group, 10,000 groups and connections, 64 MiB outbound
    /// per connection, 10 s handshake, 3 silent keepalive intervals of at most 5 min, 25 ms
    /// confirm delay, frames arriving at 128 B/s at least.
    pub fn new(key: AuthKey, epoch: u64) -> Self {
        RelayConfig {
            key,
            epoch,
            max_frame: DEFAULT_MAX_OBJECT + 1024,
            allowed_groups: None,
            default_limits: GroupLimits::default(),
            max_groups: 10_000,
            max_connections: 10_000,
            outbound_limit: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_intervals: 3,
            max_sessions: 100_000,
            confirm_delay: Duration::from_millis(25),
            min_frame_rate: 128,
            max_keepalive: Duration::from_secs(300),
        }
    }

    /// Refuses the limits with which no endpoint could ever be served: a frame limit below
    /// what every endpoint may send ([`MIN_MAX_FRAME`](crate::frame::MIN_MAX_FRAME): its
    /// handshake alone needs that much), an outbound limit below it (every endpoint would be a
    /// slow consumer), zero connections, groups or idle intervals, a `confirm_delay` over
    /// [`MAX_CONFIRM_DELAY`], a `max_keepalive` under [`MIN_KEEPALIVE`], group limits of zero
    /// and allowed group names no endpoint can send. The relay's drivers call it before they
    /// start, and its configuration file on what it asks for; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        use crate::frame::MIN_MAX_FRAME;
        if self.confirm_delay > MAX_CONFIRM_DELAY {
            return Err(alloc::format!(
                "confirm_delay ({:?}) is too long: at most {MAX_CONFIRM_DELAY:?} (endpoints \
                 that do not ask would keep their last publish that long)",
                self.confirm_delay
            ));
        }
        if self.max_keepalive < MIN_KEEPALIVE {
            return Err(alloc::format!(
                "max_keepalive ({:?}) is too short: at least {MIN_KEEPALIVE:?}, the shortest \
                 keepalive the relay honours",
                self.max_keepalive
            ));
        }
        if self.max_frame < MIN_MAX_FRAME {
            return Err(alloc::format!(
                "max_frame ({} bytes) is below the {MIN_MAX_FRAME} bytes every endpoint may send \
                 (its handshake alone needs that much)",
                self.max_frame
            ));
        }
        if self.outbound_limit < MIN_MAX_FRAME as usize {
            return Err(alloc::format!(
                "outbound_limit ({} bytes) is below {MIN_MAX_FRAME} bytes: every endpoint would \
                 be disconnected as a slow consumer",
                self.outbound_limit
            ));
        }
        let zero = [
            (
                self.max_connections == 0,
                "max_connections",
                "refuse every connection",
            ),
            (
                self.max_groups == 0,
                "max_groups",
                "refuse every join and publish",
            ),
            (
                self.idle_intervals == 0,
                "idle_intervals",
                "close every endpoint at once as idle",
            ),
        ];
        if let Some((_, field, effect)) = zero.iter().find(|(is_zero, ..)| *is_zero) {
            return Err(alloc::format!(
                "{field} must be at least 1 (0 would {effect})"
            ));
        }
        let groups = self.allowed_groups.iter().flatten();
        for (name, limits) in
            core::iter::once((None, &self.default_limits)).chain(groups.map(|(n, l)| (Some(n), l)))
        {
            if let Some(name) = name
                && crate::frame::check_group_name(name).is_err()
            {
                return Err(alloc::format!(
                    "group name {name:?} is {} bytes long: a group name has 1 to {} bytes of \
                     UTF-8, so no endpoint could join or publish to it",
                    name.len(),
                    crate::MAX_GROUP_NAME
                ));
            }
            let which = match name {
                Some(name) => alloc::format!("group {name:?}"),
                None => "the default group limits".into(),
            };
            if limits.max_members == Some(0) {
                return Err(alloc::format!(
                    "{which}: max_members must be at least 1 (0 would refuse every member)"
                ));
            }
            if limits.max_queue == 0 {
                return Err(alloc::format!(
                    "{which}: max_queue must be at least 1 (0 would refuse every produced object)"
                ));
            }
        }
        Ok(())
    }

    /// The limits of `group`, or `None` when the allow-list does not have it.
    pub fn limits(&self, group: &str) -> Option<&GroupLimits> {
        match &self.allowed_groups {
            Some(list) => list.get(group),
            None => Some(&self.default_limits),
        }
    }
}
