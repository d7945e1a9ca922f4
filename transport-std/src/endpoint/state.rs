//! What the API and the driver task share: the session, the unconfirmed publishes, the local
//! receive queue and the status, behind one lock that is never held across an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tlsro_proto::endpoint::EndpointSession;
use tlsro_proto::frame::{Delivery, RejectReason};
use tokio::sync::{Notify, broadcast, oneshot, watch};

use super::{Event, Status};
use crate::error::{Error, PublishError, Rejection};

/// How many events a slow `events()` receiver may fall behind before it misses some.
const EVENT_CAPACITY: usize = 256;

/// Limits fixed by the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes of unconfirmed publish frames kept for resend.
    pub(crate) max_buffered: usize,
    /// Bytes of payload in the local receive queue above which the driver stops reading.
    pub(crate) max_queued: usize,
    /// How long `stop` waits for confirmations and the relay's `Close`.
    pub(crate) stop_timeout: Duration,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the driver: something to send, room in the receive queue, a stop request.
    pub(crate) wake_driver: Notify,
    /// Wakes a driver whose write is stuck: a stop was requested (see `stop_deadline_passed`;
    /// it must not wait on `wake_driver`, whose wake-ups the driver's next `select!` needs).
    pub(crate) stop_requested: Notify,
    /// Wakes receivers: objects arrived, or the endpoint ended.
    pub(crate) rx_ready: Notify,
    pub(crate) events: broadcast::Sender<Event>,
    /// A receiver made with the channel, so that events from the very start of the connection
    /// (a `Skipped` retained value right after the handshake, say) wait for the first
    /// [`Endpoint::events`](super::Endpoint::events) call instead of being dropped.
    pub(crate) first_events: Mutex<Option<broadcast::Receiver<Event>>>,
    /// Becomes `true` when the driver task has ended.
    pub(crate) finished: watch::Sender<bool>,
    pub(crate) limits: Limits,
    pub(crate) decode_failures: AtomicU64,
}

impl Shared {
    pub(crate) fn new(session: EndpointSession, limits: Limits) -> Self {
        let (events, first_events) = broadcast::channel(EVENT_CAPACITY);
        Shared {
            state: Mutex::new(State {
                session,
                status: Status::Connecting,
                outbox: Outbox::default(),
                inbox: Inbox::default(),
                stop: None,
                stop_result: None,
            }),
            wake_driver: Notify::new(),
            stop_requested: Notify::new(),
            rx_ready: Notify::new(),
            events,
            first_events: Mutex::new(Some(first_events)),
            finished: watch::channel(false).0,
            limits,
            decode_failures: AtomicU64::new(0),
        }
    }

    /// The state. A panic while it was held leaves it usable: every change is completed under
    /// the lock before anything that can panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn emit(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

pub(crate) struct State {
    pub(crate) session: EndpointSession,
    pub(crate) status: Status,
    pub(crate) outbox: Outbox,
    pub(crate) inbox: Inbox,
    pub(crate) stop: Option<StopRequest>,
    /// What `stop` returns, once the driver has ended.
    pub(crate) stop_result: Option<Result<(), Error>>,
}

impl State {
    /// The error every call returns once the endpoint has ended.
    pub(crate) fn terminal(&self) -> Option<Error> {
        match &self.status {
            Status::Failed(e) => Some(e.clone()),
            Status::Stopped => Some(Error::Stopped),
            _ => None,
        }
    }

    /// Like [`terminal`](Self::terminal), and also refuses new work once `stop` was called.
    pub(crate) fn check_accepting(&self) -> Result<(), Error> {
        match self.terminal() {
            Some(e) => Err(e),
            None if self.stop.is_some() => Err(Error::Stopped),
            None => Ok(()),
        }
    }

    /// Takes objects out of the receive queue and records the produced ones as handed over
    /// (objects `Newest` discards count as handed over too). Returns the objects to give to
    /// the application, oldest first.
    pub(crate) fn take(&mut self, how: Take) -> Vec<Item> {
        let len = self.inbox.items.len();
        let (discard, keep) = match how {
            Take::Oldest(n) => (0, n.min(len)),
            Take::Newest(n) => (len - n.min(len), n.min(len)),
            Take::All => (0, len),
        };
        let generation = self.session.generation();
        let mut taken = Vec::with_capacity(keep);
        for (i, item) in self.inbox.items.drain(..discard + keep).enumerate() {
            self.inbox.bytes -= item.payload.len();
            if let Delivery::Produced { tag } = item.delivery {
                if item.generation != generation {
                    // The relay requeued it when that connection ended; it comes again.
                    continue;
                }
                if let Err(e) = self.session.handed_over(&item.group, tag) {
                    tracing::debug!(group = %item.group, tag, error = %e, "acknowledgement not recorded");
                }
            }
            if i >= discard {
                taken.push(item);
            }
        }
        taken
    }

    /// The connection is gone: produced objects not handed over will be redelivered by the
    /// relay (to whoever has credit), and every unconfirmed publish is sent again after the
    /// next `Welcome`.
    pub(crate) fn connection_lost(&mut self) {
        self.session.connection_lost();
        self.inbox.drop_produced();
        self.outbox.rewind();
    }
}

/// Which objects a receive call takes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Take {
    Oldest(usize),
    Newest(usize),
    All,
}

impl Take {
    /// Asks for no object at all (`pop(0)`, `get_last(0)`): the receive calls answer it at once,
    /// without calling [`State::take`], so nothing is discarded or acknowledged.
    pub(crate) fn is_nothing(self) -> bool {
        matches!(self, Take::Oldest(0) | Take::Newest(0))
    }
}

pub(crate) struct StopRequest {
    /// When waiting for confirmations and for the relay's `Close` ends.
    pub(crate) deadline: tokio::time::Instant,
    /// `session.close` was called.
    pub(crate) closing: bool,
}

/// A received object waiting for the application.
pub(crate) struct Item {
    pub(crate) group: String,
    pub(crate) delivery: Delivery,
    /// The session generation (connection) it arrived on.
    pub(crate) generation: u32,
    pub(crate) payload: Payload,
}

/// The serialized object of an [`Item`]: `buf[range]`. A large one is the read buffer it
/// arrived in, handed over whole, so the range skips the frame's header (and what else the
/// buffer held).
#[derive(Debug)]
pub(crate) struct Payload {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Payload {
    /// `buf[range]`, keeping `buf`; `range` lies within it (from `frame::range_within`).
    pub(crate) fn within(buf: Vec<u8>, range: std::ops::Range<usize>) -> Payload {
        debug_assert!(range.end <= buf.len());
        Payload { buf, range }
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Payload {
        Payload {
            buf: bytes.to_vec(),
            range: 0..bytes.len(),
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// The local receive queue.
#[derive(Default)]
pub(crate) struct Inbox {
    items: VecDeque<Item>,
    /// Payload bytes queued.
    pub(crate) bytes: usize,
}

impl Inbox {
    pub(crate) fn push(&mut self, item: Item) {
        self.bytes += item.payload.len();
        self.items.push_back(item);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn drop_produced(&mut self) {
        let before = self.items.len();
        let mut bytes = self.bytes;
        self.items.retain(|item| {
            let keep = matches!(item.delivery, Delivery::Broadcast { .. });
            if !keep {
                bytes -= item.payload.len();
            }
            keep
        });
        self.bytes = bytes;
        let dropped = before - self.items.len();
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "dropped produced objects of the lost connection; the relay redelivers them"
            );
        }
    }
}

/// A publish frame kept until the relay confirms it.
pub(crate) struct Outgoing {
    pub(crate) seq: u64,
    /// The frame is `buf[start..]`: header then payload, encoded once.
    pub(crate) buf: FrameBuf,
    pub(crate) start: usize,
    pub(crate) done: Option<oneshot::Sender<Result<(), PublishError>>>,
    pub(crate) rejections: Vec<Rejection>,
}

impl Outgoing {
    pub(crate) fn frame(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Frames at least this large are written from the outbox as they are, not gathered: the copy
/// would cost more than the extra write call.
pub(crate) const WRITE_DIRECT: usize = 64 * 1024;

/// The bytes of an [`Outgoing`] frame: a large one shared, so that the driver can write it
/// without copying it (see `Outbox::write_unsent`); a small one owned (it is gathered anyway,
/// and sharing would cost an allocation per object).
pub(crate) enum FrameBuf {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl From<Vec<u8>> for FrameBuf {
    fn from(buf: Vec<u8>) -> FrameBuf {
        if buf.len() >= WRITE_DIRECT {
            FrameBuf::Shared(Arc::new(buf))
        } else {
            FrameBuf::Owned(buf)
        }
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FrameBuf::Owned(buf) => buf,
            FrameBuf::Shared(buf) => buf,
        }
    }
}

/// A large publish frame handed to the driver to write as it is: `buf[start..]`.
pub(crate) struct Frame {
    buf: Arc<Vec<u8>>,
    start: usize,
}

impl Frame {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Unconfirmed publishes, in sequence order.
#[derive(Default)]
pub(crate) struct Outbox {
    entries: VecDeque<Outgoing>,
    /// Entries before this index were written on the current connection.
    pub(crate) next_to_send: usize,
    /// Frame bytes held.
    pub(crate) bytes: usize,
}

impl Outbox {
    pub(crate) fn push(&mut self, out: Outgoing) {
        self.bytes += out.frame().len();
        self.entries.push_back(out);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The room the entries' buffers take (at least `bytes`).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match &e.buf {
                FrameBuf::Owned(buf) => buf.capacity(),
                FrameBuf::Shared(buf) => buf.capacity(),
            })
            .sum()
    }

    pub(crate) fn has_unsent(&self) -> bool {
        self.next_to_send < self.entries.len()
    }

    /// Takes unsent frames, in order: appends small ones to `out` until it holds `batch`
    /// bytes; when the next is a large one ([`WRITE_DIRECT`], shared) and `out` is empty,
    /// returns it instead, to be written as it is (gathering would copy it once more).
    pub(crate) fn write_unsent(&mut self, out: &mut Vec<u8>, batch: usize) -> Option<Frame> {
        while let Some(entry) = self.entries.get(self.next_to_send) {
            let len = entry.frame().len();
            if let FrameBuf::Shared(buf) = &entry.buf {
                if !out.is_empty() {
                    break;
                }
                self.next_to_send += 1;
                return Some(Frame {
                    buf: buf.clone(),
                    start: entry.start,
                });
            }
            if !out.is_empty() && out.len() + len > batch {
                break;
            }
            out.extend_from_slice(entry.frame());
            self.next_to_send += 1;
        }
        None
    }

    /// Everything must be sent again on the next connection.
    pub(crate) fn rewind(&mut self) {
        self.next_to_send = 0;
    }

    /// The relay handled every publish up to `up_to`: resolves their receipts.
    pub(crate) fn confirm_up_to(&mut self, up_to: u64) {
        while self.entries.front().is_some_and(|e| e.seq <= up_to) {
            let Some(mut entry) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= entry.frame().len();
            self.next_to_send = self.next_to_send.saturating_sub(1);
            let result = if entry.rejections.is_empty() {
                Ok(())
            } else {
                Err(PublishError::Rejected(std::mem::take(
                    &mut entry.rejections,
                )))
            };
            if let Some(done) = entry.done.take() {
                let _ = done.send(result);
            }
        }
    }

    /// The relay accepts frames of at most `max` bytes (its `Welcome` after a reconnect may
    /// state less than when these were published): a kept frame larger than that is never
    /// sent (the relay would close the connection on its length prefix, every time), and its
    /// receipt reports the limit, and `dropped` gets its sequence number and size. Returns the
    /// highest sequence number still kept, if any.
    pub(crate) fn drop_larger_than(
        &mut self,
        max: u32,
        mut dropped: impl FnMut(u64, u64),
    ) -> Option<u64> {
        let bytes = &mut self.bytes;
        self.entries.retain_mut(|entry| {
            let size = entry.frame().len();
            if size as u64 <= u64::from(max) {
                return true;
            }
            *bytes -= size;
            tracing::warn!(
                seq = entry.seq,
                size,
                max,
                "a kept publish no longer fits the relay's limit and is not resent"
            );
            dropped(entry.seq, size as u64);
            if let Some(done) = entry.done.take() {
                let _ = done.send(Err(PublishError::Unconfirmed(Error::FrameTooLarge {
                    size: size as u64,
                    max,
                })));
            }
            false
        });
        self.next_to_send = self.next_to_send.min(self.entries.len());
        self.entries.back().map(|e| e.seq)
    }

    /// The relay refused publish `seq` for `group`; its receipt reports it on confirmation.
    pub(crate) fn reject(&mut self, seq: u64, group: &str, reason: RejectReason) {
        let index = self.entries.partition_point(|e| e.seq < seq);
        if let Some(entry) = self.entries.get_mut(index).filter(|e| e.seq == seq) {
            entry.rejections.push(Rejection {
                group: group.to_owned(),
                reason,
            });
        }
    }

    /// The endpoint ended: every receipt still open reports `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        for mut entry in self.entries.drain(..) {
            if let Some(done) = entry.done.take() {
                let _ = done.send(Err(PublishError::Unconfirmed(error.clone())));
            }
        }
        self.bytes = 0;
        self.next_to_send = 0;
    }
}
