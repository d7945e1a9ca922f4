//! The async endpoint: a typed channel to the groups of a relay.
//!
//! ```no_run
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use tlsro::{Endpoint, Wait};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct Command {
//!     speed: f32,
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let robot: Endpoint<Command> = Endpoint::builder("relay.example:4430", "secret password")
//!     .groups(["robots"])
//!     .connect()
//!     .await?;
//! let controller: Endpoint<Command> = Endpoint::builder("relay.example:4430", "secret password")
//!     .connect()
//!     .await?;
//!
//! // Every member of "robots" gets it; the receipt resolves when the relay confirms.
//! controller.broadcast(&Command { speed: 1.5 }, "robots")?.wait().await?;
//!
//! for received in robot.pop(10, Wait::Timeout(Duration::from_secs(1))).await? {
//!     println!("{} sent {:?}", received.group, received.value);
//! }
//! robot.stop().await?;
//! controller.stop().await?;
//! # Ok(()) }
//! ```
//!
//! Each endpoint runs a background task that owns the connection: it reconnects on its own
//! (with [`Backoff`]), sends again every publish the relay has not confirmed, and re-grants the
//! notify credit it had outstanding. See [`Endpoint`] for the delivery guarantees.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tlsro_proto::frame::{Delivery, PREFIX_LEN, PublishKind, RejectReason};
use tokio::sync::{broadcast, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout_at};

use crate::codec::{Codec, CodecError, Postcard};
use crate::error::{Error, PublishError};

mod builder;
mod driver;
mod state;

pub use builder::{Builder, CaSource, DEFAULT_MAX_FRAME, Security};
use state::{Item, Outgoing, Shared, StopRequest, Take};

/// A connection to a relay that sends and receives objects of type `T`, encoded with `C`.
///
/// - [`broadcast`](Self::broadcast): every current member of the group gets the object (the
///   sender too, when it is a member); the relay keeps the last one per group for members
///   that join later.
/// - [`produce`](Self::produce): the object joins the group's queue; exactly one member that
///   asked for objects with [`notify`](Self::notify) gets it. At least once: an object is the
///   receiver's only once it was handed to the application by [`pop`](Self::pop),
///   [`get_last`](Self::get_last) or [`receive_all`](Self::receive_all); until then a
///   disconnect sends it to the next ready member.
/// - Publishing returns a [`Receipt`] at once, connected or not: the object is kept until the
///   relay confirms it and sent again after a reconnect.
///
/// Cloning is cheap and shares the connection. Dropping the last clone ends the background task
/// at once, without flushing; call [`stop`](Self::stop) to end gracefully.
pub struct Endpoint<T, C = Postcard> {
    inner: Arc<Inner>,
    codec: C,
    _type: PhantomData<fn(T) -> T>,
}

/// The part shared by clones; the background task ends when it is dropped.
struct Inner {
    shared: Arc<Shared>,
    task: AbortHandle,
    addr: String,
    groups: Vec<String>,
    /// The size of the last object encoded: the room the next one's buffer starts with, so
    /// that encoding does not grow it step by step (each step a reallocation and a copy).
    encoded_hint: std::sync::atomic::AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T, C: Clone> Clone for Endpoint<T, C> {
    fn clone(&self) -> Self {
        Endpoint {
            inner: self.inner.clone(),
            codec: self.codec.clone(),
            _type: PhantomData,
        }
    }
}

impl<T, C> fmt::Debug for Endpoint<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("relay", &self.inner.addr)
            .field("groups", &self.inner.groups)
            .field("status", &self.inner.shared.lock().status)
            .finish()
    }
}

impl<T> Endpoint<T, Postcard> {
    /// Starts configuring an endpoint for the relay at `relay_addr` (`"host:port"`, IPv6 as
    /// `"[addr]:port"`) with the shared `password`. Another codec is chosen on the builder:
    /// `Endpoint::<T>::builder(..).codec(Json)` makes an `Endpoint<T, Json>`.
    pub fn builder(relay_addr: impl Into<String>, password: impl Into<Vec<u8>>) -> Builder<T> {
        Builder::new(relay_addr.into(), password.into())
    }
}

/// How long a receive call waits for the first object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Return at once, possibly with nothing.
    No,
    /// Wait until at least one object is there (or the endpoint ends).
    Forever,
    /// Wait until at least one object is there, at most this long; then return nothing.
    Timeout(Duration),
}

/// How an object reached this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceivedKind {
    /// A broadcast to one of this endpoint's groups.
    Broadcast,
    /// A produced object this endpoint asked for with `notify`.
    Produced,
}

/// An object taken from the local receive queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    /// The group it was sent to.
    pub group: String,
    /// Broadcast or produced.
    pub kind: ReceivedKind,
    /// The object.
    pub value: T,
}

/// Where the endpoint's connection stands.
#[derive(Debug, Clone)]
pub enum Status {
    /// The first connection is being made.
    Connecting,
    /// Connected and authenticated both ways.
    Connected,
    /// The connection was lost; trying again.
    Reconnecting {
        /// Attempts since the connection was lost.
        attempt: u32,
        /// Why the last attempt (or the connection) failed.
        last_error: Error,
    },
    /// [`Endpoint::stop`] finished (or the endpoint was dropped).
    Stopped,
    /// The endpoint gave up; every call returns this error.
    Failed(Error),
}

/// Something that happened on the endpoint, from [`Endpoint::events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The relay welcomed this endpoint (first connect or reconnect).
    Connected,
    /// The connection was lost; the endpoint reconnects unless the reason is permanent.
    Disconnected {
        /// Why.
        reason: Error,
    },
    /// The relay refused a published object for one group.
    Rejected {
        /// The publish's sequence number ([`Receipt::seq`]).
        seq: u64,
        /// The group that refused it.
        group: String,
        /// Why.
        reason: RejectReason,
    },
    /// A kept publish was dropped unsent: after a reconnect it no longer fits the relay's
    /// frame limit (a relay restarted with a lower object limit). Its receipt reports
    /// [`Error::FrameTooLarge`] too.
    PublishDropped {
        /// The publish's sequence number ([`Receipt::seq`]).
        seq: u64,
        /// The size of its frame.
        size: u64,
        /// The relay's limit now.
        max: u32,
    },
    /// A broadcast was larger than this endpoint's `max_frame` and was not delivered.
    Skipped {
        /// The group.
        group: String,
        /// The broadcast's sequence number in the group.
        seq: u64,
        /// The size of its frame.
        size: u32,
    },
    /// A received object could not be decoded. It was acknowledged (a produced object is not
    /// redelivered) and dropped.
    DecodeFailed {
        /// The group it was sent to.
        group: String,
        /// What the codec said.
        error: CodecError,
    },
    /// The endpoint ended (stopped, dropped or failed; see [`Endpoint::status`]).
    Stopped,
}

/// The relay's verdict on one published object, to await or to drop.
#[derive(Debug)]
pub struct Receipt {
    seq: u64,
    rx: oneshot::Receiver<Result<(), PublishError>>,
    /// To ask for the confirm at once when someone waits (the relay may otherwise hold it back
    /// for its confirm delay, waiting for other output to send it with).
    shared: Weak<Shared>,
}

impl Receipt {
    /// The publish's sequence number (as in [`Event::Rejected`]).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits until the relay confirms the object (`Ok`), refuses it for some groups
    /// ([`PublishError::Rejected`]), or the endpoint ends first ([`PublishError::Unconfirmed`]).
    /// The relay may hold back the confirm of a publish that came alone for up to its confirm
    /// delay (25 ms), for other output to go with; waiting asks for it at once (a `Ping`).
    pub async fn wait(self) -> Result<(), PublishError> {
        self.request_confirm();
        self.rx
            .await
            .unwrap_or(Err(PublishError::Unconfirmed(Error::Stopped)))
    }

    /// [`wait`](Self::wait) for synchronous code. Panics when called from async code.
    pub fn wait_blocking(self) -> Result<(), PublishError> {
        self.request_confirm();
        self.rx
            .blocking_recv()
            .unwrap_or(Err(PublishError::Unconfirmed(Error::Stopped)))
    }
}

impl Receipt {
    fn request_confirm(&self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Nothing for a publish confirmed already, nor beyond what the relay can still get
        // (one dropped unsent): the session knows both.
        shared.lock().session.request_confirm_up_to(self.seq);
        shared.wake_driver.notify_one();
    }
}

/// Delays between connection attempts: `initial`, then multiplied by `multiplier` after every
/// failed attempt up to `max`, each varied at random by ±`jitter` (a fraction) so that many
/// endpoints do not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The growth factor per attempt (at least 1).
    pub multiplier: f64,
    /// The random variation, as a fraction of the delay (0 to 1).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 5 s, ±50 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1 for the first retry).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let base = base.min(self.max.as_secs_f64());
        let unit = getrandom::u32().unwrap_or(u32::MAX / 2) as f64 / u32::MAX as f64;
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::try_from_secs_f64(base * (1.0 + jitter * (2.0 * unit - 1.0))).unwrap_or(self.max)
    }
}

/// `d` from now; a `d` too long for the clock (`Duration::MAX`, say) means "in about 30 years"
/// instead of overflowing (which panics).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

impl<T, C: Codec> Endpoint<T, C> {
    /// The relay address this endpoint dials.
    pub fn relay_addr(&self) -> &str {
        &self.inner.addr
    }

    /// The groups this endpoint is a member of.
    pub fn groups(&self) -> &[String] {
        &self.inner.groups
    }

    /// Where the connection stands.
    pub fn status(&self) -> Status {
        self.inner.shared.lock().status.clone()
    }

    /// A receiver of what happens (reconnects, disconnects, rejections, skipped broadcasts,
    /// undecodable objects). The first call gets everything since the endpoint connected (a
    /// retained broadcast skipped right after the handshake, say); later calls get what
    /// happens from then on. The first connection is not an event: `connect()` returning is. A
    /// receiver that falls more than 256 events behind misses the oldest ones
    /// (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        let first = self
            .inner
            .shared
            .first_events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        first.unwrap_or_else(|| self.inner.shared.events.subscribe())
    }

    /// Payload bytes waiting in the local receive queue.
    pub fn queued_bytes(&self) -> usize {
        self.inner.shared.lock().inbox.bytes
    }

    /// Frame bytes of published objects the relay has not confirmed yet. The last of a burst
    /// can stay for the relay's confirm delay (25 ms) when nobody waits on its receipt.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.shared.lock().outbox.bytes
    }

    /// How many received objects could not be decoded (each also an [`Event::DecodeFailed`]).
    pub fn decode_failures(&self) -> u64 {
        self.inner.shared.decode_failures.load(Ordering::Relaxed)
    }

    /// Asks the relay for `n` more produced objects of `group` (a group of this endpoint).
    /// Credit accumulates and waits for objects produced later; a negative `n` asks for
    /// everything queued right now without standing credit; 0 does nothing. Credit survives
    /// reconnects.
    pub fn notify(&self, group: &str, n: i32) -> Result<(), Error> {
        self.notify_many(&[(group, n)])
    }

    /// [`notify`](Self::notify) for several groups at once; nothing is granted unless every
    /// group is one of this endpoint's.
    pub fn notify_many(&self, grants: &[(&str, i32)]) -> Result<(), Error> {
        let shared = &self.inner.shared;
        {
            let mut st = shared.lock();
            st.check_accepting()?;
            if let Some((group, _)) = grants
                .iter()
                .find(|(group, _)| st.session.outstanding_credit(group).is_none())
            {
                return Err(Error::NotMember((*group).to_owned()));
            }
            for (group, n) in grants {
                st.session.notify(group, *n).map_err(Error::from)?;
            }
        }
        shared.wake_driver.notify_one();
        Ok(())
    }

    /// Ends the endpoint gracefully: refuses new publishes, waits (up to the builder's
    /// `stop_timeout`) until the relay has confirmed every publish and received every
    /// acknowledgement, closes the session, waits for the relay's `Close`, and closes the
    /// connection. Returns [`Error::Timeout`] when publishes were still unconfirmed at the
    /// deadline (their receipts report [`PublishError::Unconfirmed`]), and the endpoint's error
    /// if it had failed. Every call after this returns [`Error::Stopped`].
    pub async fn stop(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let mut finished = shared.finished.subscribe();
        {
            let mut st = shared.lock();
            if let Some(result) = &st.stop_result {
                return result.clone();
            }
            if st.stop.is_none() {
                st.stop = Some(StopRequest {
                    deadline: deadline_after(shared.limits.stop_timeout),
                    closing: false,
                });
            }
        }
        shared.wake_driver.notify_one();
        // A driver stuck in a write waits for the stop deadline on this one.
        shared.stop_requested.notify_waiters();
        // The driver always ends by the deadline; the guard marks it finished on any exit.
        let _ = finished.wait_for(|done| *done).await;
        let st = shared.lock();
        st.stop_result.clone().unwrap_or(Ok(()))
    }
}

impl<T: Serialize, C: Codec> Endpoint<T, C> {
    /// Sends `value` to every current member of `group` (and, retained, to members that join
    /// later). Returns at once; the object is kept until the relay confirms it.
    pub fn broadcast(&self, value: &T, group: &str) -> Result<Receipt, Error> {
        self.publish(PublishKind::Broadcast, &[group], value)
    }

    /// [`broadcast`](Self::broadcast) to several groups with one frame (at most 16 groups).
    pub fn broadcast_to(&self, value: &T, groups: &[&str]) -> Result<Receipt, Error> {
        self.publish(PublishKind::Broadcast, groups, value)
    }

    /// Puts `value` in the queue of `group`: exactly one member that asked for objects with
    /// `notify` gets it. Returns at once; the object is kept until the relay confirms it.
    pub fn produce(&self, value: &T, group: &str) -> Result<Receipt, Error> {
        self.publish(PublishKind::Produce, &[group], value)
    }

    /// [`produce`](Self::produce) to several groups with one frame (at most 16 groups): each
    /// group's queue gets the object.
    pub fn produce_to(&self, value: &T, groups: &[&str]) -> Result<Receipt, Error> {
        self.publish(PublishKind::Produce, groups, value)
    }

    fn publish(&self, kind: PublishKind, groups: &[&str], value: &T) -> Result<Receipt, Error> {
        // Room for the largest header these groups can need; the payload is encoded straight
        // after it and the real header is written just before the payload.
        let reserve = PREFIX_LEN + 16 + groups.iter().map(|g| g.len() + 2).sum::<usize>();
        let hint = self.inner.encoded_hint.load(Ordering::Relaxed);
        let mut buf = Vec::with_capacity(reserve + hint);
        buf.resize(reserve, 0);
        self.codec.encode(value, &mut buf)?;
        let payload_len = buf.len() - reserve;
        self.inner
            .encoded_hint
            .store(payload_len, Ordering::Relaxed);
        if buf.capacity() > 2 * buf.len() + 64 {
            // Much smaller than the one before: the outbox counts bytes, not room, so it must
            // not keep the room.
            buf.shrink_to_fit();
        }

        let shared = &self.inner.shared;
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut st = shared.lock();
            st.check_accepting()?;
            let max = shared.limits.max_buffered;
            if st.outbox.bytes + buf.len() > max {
                let full = Error::BufferFull {
                    size: buf.len(),
                    buffered: st.outbox.bytes,
                    max,
                };
                // Room comes with a confirm, which the relay may hold back (PROTOCOL.md §7.1).
                st.session.request_confirm();
                drop(st);
                shared.wake_driver.notify_one();
                return Err(full);
            }
            let (seq, header_len) = st
                .session
                .publish_header(kind, groups, payload_len, &mut buf[..reserve])
                .map_err(Error::from)?;
            let start = reserve - header_len;
            buf.copy_within(..header_len, start);
            st.outbox.push(Outgoing {
                seq,
                buf: buf.into(),
                start,
                done: Some(tx),
                rejections: Vec::new(),
            });
            seq
        };
        shared.wake_driver.notify_one();
        Ok(Receipt {
            seq,
            rx,
            shared: Arc::downgrade(shared),
        })
    }
}

impl<T: DeserializeOwned, C: Codec> Endpoint<T, C> {
    /// Takes up to `max_items` objects from the local receive queue, oldest first. Waiting
    /// means until at least one object is there.
    pub async fn pop(&self, max_items: usize, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        self.receive(Take::Oldest(max_items), wait).await
    }

    /// Takes the newest `max_items` objects (oldest first) and discards the older ones; the
    /// discarded produced objects count as handed over. Waiting means until at least one object
    /// is there. Asking for none (`max_items == 0`) takes and discards nothing, at once.
    pub async fn get_last(&self, max_items: usize, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        self.receive(Take::Newest(max_items), wait).await
    }

    /// Takes every object in the local receive queue, oldest first. Waiting means until at
    /// least one object is there.
    pub async fn receive_all(&self, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        self.receive(Take::All, wait).await
    }

    async fn receive(&self, take: Take, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        let shared = &self.inner.shared;
        if take.is_nothing() {
            // Nothing would ever satisfy a wait: answer at once, touching nothing.
            return shared.lock().terminal().map_or(Ok(Vec::new()), Err);
        }
        let deadline = match wait {
            Wait::Timeout(d) => Some(deadline_after(d)),
            Wait::No | Wait::Forever => None,
        };
        loop {
            let notified = shared.rx_ready.notified();
            tokio::pin!(notified);
            // Registered before looking, so an arrival in between is not missed.
            notified.as_mut().enable();
            let items = {
                let mut st = shared.lock();
                if let Some(e) = st.terminal() {
                    return Err(e);
                }
                if st.inbox.is_empty() {
                    Vec::new()
                } else {
                    st.take(take)
                }
            };
            if !items.is_empty() {
                // Acknowledgements to send, maybe room to read again.
                shared.wake_driver.notify_one();
                let received = self.decode(items);
                if !received.is_empty() {
                    return Ok(received);
                }
                // All undecodable (reported): look again at once, as more may be queued
                // already; waiting would sleep until the next arrival.
                continue;
            }
            match (wait, deadline) {
                (Wait::No, _) => return Ok(Vec::new()),
                (_, Some(deadline)) => {
                    if timeout_at(deadline, notified).await.is_err() {
                        return Ok(Vec::new());
                    }
                }
                (_, None) => notified.await,
            }
        }
    }

    fn decode(&self, items: Vec<Item>) -> Vec<Received<T>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let kind = match item.delivery {
                Delivery::Broadcast { .. } => ReceivedKind::Broadcast,
                Delivery::Produced { .. } => ReceivedKind::Produced,
            };
            match self.codec.decode(&item.payload) {
                Ok(value) => out.push(Received {
                    group: item.group,
                    kind,
                    value,
                }),
                Err(error) => {
                    let shared = &self.inner.shared;
                    shared.decode_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %item.group, %error, "dropped a received object that does not decode");
                    shared.emit(Event::DecodeFailed {
                        group: item.group,
                        error,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
