//! The handle the application uses, from any task.

use core::future::poll_fn;
use core::task::Poll;

use embassy_sync::blocking_mutex::raw::RawMutex;
use serde::{Deserialize, Serialize};
use tlsro_proto::frame::PublishKind;

use crate::state::{State, Stats, Status};
use crate::{Error, Rejection};

/// How a received object reached this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ItemKind {
    /// A broadcast to the group, with the relay's per-group sequence number.
    Broadcast {
        /// Increases by one per broadcast of the group (starts again after a relay restart).
        seq: u64,
    },
    /// A produced object: this endpoint is the one member that got it.
    Produced,
}

/// An object taken from the inbox; its payload lives in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'g, 'b> {
    /// The group it was sent to (one of this endpoint's groups).
    pub group: &'g str,
    /// Broadcast or produced.
    pub kind: ItemKind,
    /// The serialized object.
    pub payload: &'b [u8],
}

impl<'b> Item<'_, 'b> {
    /// Deserializes the payload with postcard (the tlsro default codec); the value may borrow
    /// from the caller's buffer.
    pub fn decode<T: Deserialize<'b>>(&self) -> Result<T, Error> {
        postcard::from_bytes(self.payload).map_err(|_| Error::Decode)
    }
}

/// A handle to the endpoint: cheap to copy, usable from any task on the executor (or any
/// executor, with a `RawMutex` that allows it). Objects go to the relay while the
/// [`Runner`](crate::Runner) runs.
///
/// # What is guaranteed
///
/// - **Publishes** (`broadcast`, `produce`) are encoded into the caller-owned outbox and kept
///   there until the relay confirms them; after a reconnect the unconfirmed ones are sent again
///   (the relay drops a resend it has already handled). The async methods wait for room when the
///   outbox is full (for example while the relay is away); the `try_` methods return
///   [`Error::OutboxFull`] instead. A publish larger than the outbox is refused with
///   [`Error::FrameTooLarge`]. Across a relay restart a publish may arrive twice.
/// - **Produced objects** are acknowledged when [`receive`](Self::receive) hands them over. Those
///   still in the inbox when their connection ends are dropped (never handed over): the relay
///   gives them to the next ready consumer, and the credit is granted again on reconnect.
/// - **Broadcasts** are handed over once each: the retained value the relay sends again on a
///   reconnect is recognised by its sequence number.
/// - Nothing received is dropped for lack of room: when the inbox is full the runner stops
///   reading until [`receive`](Self::receive) makes room.
pub struct Endpoint<'a, M: RawMutex> {
    pub(crate) state: &'a State<'a, M>,
}

impl<M: RawMutex> Clone for Endpoint<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M: RawMutex> Copy for Endpoint<'_, M> {}

impl<'a, M: RawMutex> Endpoint<'a, M> {
    /// Where the endpoint stands now.
    pub fn status(&self) -> Status {
        self.state.with(|i| i.status)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.state.with(|i| i.stats())
    }

    /// Waits until the status differs from `seen`, and returns the new one.
    pub async fn status_changed(&self, seen: Status) -> Status {
        poll_fn(|cx| {
            self.state.with(|i| {
                if i.status != seen {
                    Poll::Ready(i.status)
                } else {
                    i.status_wakers.register(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Waits until the endpoint is connected and authenticated; fails at once with a permanent
    /// error (wrong password, certificate rejected, …). While the relay is unreachable it keeps
    /// waiting: wrap it in `embassy_time::with_timeout` to bound the first connect.
    pub async fn wait_connected(&self) -> Result<(), Error> {
        let mut seen = self.status();
        loop {
            match seen {
                Status::Connected => return Ok(()),
                Status::Failed(e) => return Err(e),
                Status::Stopped => return Err(Error::Stopped),
                Status::Connecting | Status::Retrying(_) => {}
            }
            seen = self.status_changed(seen).await;
        }
    }

    /// Broadcasts `payload` (already serialized) to every member of `groups`; returns the
    /// publish's sequence number. Waits for room in the outbox.
    pub async fn broadcast(&self, groups: &[&str], payload: &[u8]) -> Result<u64, Error> {
        self.publish_bytes(PublishKind::Broadcast, groups, payload)
            .await
    }

    /// Produces `payload` (already serialized) into the queue of each of `groups`: one member
    /// of each gets it. Returns the publish's sequence number. Waits for room in the outbox.
    pub async fn produce(&self, groups: &[&str], payload: &[u8]) -> Result<u64, Error> {
        self.publish_bytes(PublishKind::Produce, groups, payload)
            .await
    }

    /// Broadcasts `value`, serialized with postcard straight into the outbox.
    pub async fn broadcast_value<T: Serialize + ?Sized>(
        &self,
        groups: &[&str],
        value: &T,
    ) -> Result<u64, Error> {
        self.publish_value(PublishKind::Broadcast, groups, value)
            .await
    }

    /// Produces `value`, serialized with postcard straight into the outbox.
    pub async fn produce_value<T: Serialize + ?Sized>(
        &self,
        groups: &[&str],
        value: &T,
    ) -> Result<u64, Error> {
        self.publish_value(PublishKind::Produce, groups, value)
            .await
    }

    /// Like [`broadcast`](Self::broadcast), but returns [`Error::OutboxFull`] instead of waiting.
    pub fn try_broadcast(&self, groups: &[&str], payload: &[u8]) -> Result<u64, Error> {
        self.try_publish_bytes(PublishKind::Broadcast, groups, payload)?
            .ok_or_else(|| self.outbox_full())
    }

    /// Like [`produce`](Self::produce), but returns [`Error::OutboxFull`] instead of waiting.
    pub fn try_produce(&self, groups: &[&str], payload: &[u8]) -> Result<u64, Error> {
        self.try_publish_bytes(PublishKind::Produce, groups, payload)?
            .ok_or_else(|| self.outbox_full())
    }

    /// Like [`broadcast_value`](Self::broadcast_value), but returns [`Error::OutboxFull`]
    /// instead of waiting (for telemetry that is better dropped than queued).
    pub fn try_broadcast_value<T: Serialize + ?Sized>(
        &self,
        groups: &[&str],
        value: &T,
    ) -> Result<u64, Error> {
        self.try_publish_value(PublishKind::Broadcast, groups, value)?
            .ok_or_else(|| self.outbox_full())
    }

    /// Like [`produce_value`](Self::produce_value), but returns [`Error::OutboxFull`] instead
    /// of waiting.
    pub fn try_produce_value<T: Serialize + ?Sized>(
        &self,
        groups: &[&str],
        value: &T,
    ) -> Result<u64, Error> {
        self.try_publish_value(PublishKind::Produce, groups, value)?
            .ok_or_else(|| self.outbox_full())
    }

    /// Grants credit for produced objects of `group` (one of this endpoint's groups): `n > 0`
    /// more objects, accumulating (also before any is produced); `n < 0` everything queued now,
    /// without standing credit. Credit not used survives reconnects.
    pub fn notify(&self, group: &str, n: i32) -> Result<(), Error> {
        self.state.with(|i| {
            i.check()?;
            i.session.notify(group, n)?;
            i.wake_runner();
            Ok(())
        })
    }

    /// Waits for the next object, copies its payload into `buf` and hands it over (a produced
    /// object is acknowledged). If `buf` is too small, returns [`Error::BufferTooSmall`] and
    /// keeps the object.
    pub async fn receive<'b>(&self, buf: &'b mut [u8]) -> Result<Item<'a, 'b>, Error> {
        let groups = self.state.with(|i| i.groups);
        let taken = poll_fn(|cx| {
            self.state.with(|i| match i.pop(buf) {
                Ok(Some(taken)) => Poll::Ready(Ok(taken)),
                Ok(None) => match i.fatal {
                    Some(e) => Poll::Ready(Err(e)),
                    None => {
                        i.rx_wakers.register(cx.waker());
                        Poll::Pending
                    }
                },
                Err(e) => Poll::Ready(Err(e)),
            })
        })
        .await?;
        Ok(item(groups, taken, buf))
    }

    /// The next object if one is waiting (see [`receive`](Self::receive)).
    pub fn try_receive<'b>(&self, buf: &'b mut [u8]) -> Result<Option<Item<'a, 'b>>, Error> {
        let (groups, taken) = self.state.with(|i| i.pop(buf).map(|t| (i.groups, t)))?;
        Ok(taken.map(|t| item(groups, t, buf)))
    }

    /// The oldest publish the relay rejected and that was not taken yet. Rejections are also
    /// logged; at most 4 are kept (see [`Stats::rejections_lost`]).
    pub fn next_rejection(&self) -> Option<Rejection> {
        self.state.with(|i| i.rejections.pop_front())
    }

    /// Stops gracefully: what was published so far is sent and confirmed, acknowledgements go
    /// out, then the connection closes and [`Runner::run`](crate::Runner::run) returns. Later
    /// publishes are refused. If no connection is up, the endpoint stops at once and the outbox
    /// is dropped.
    pub async fn stop(&self) {
        self.state.with(|i| {
            i.session.close(crate::now());
            i.stop_requested = true;
            i.wake_runner();
        });
        loop {
            let seen = self.status();
            if matches!(seen, Status::Stopped | Status::Failed(_)) {
                return;
            }
            self.status_changed(seen).await;
        }
    }

    async fn publish_bytes(
        &self,
        kind: PublishKind,
        groups: &[&str],
        payload: &[u8],
    ) -> Result<u64, Error> {
        self.wait_room(|| self.try_publish_bytes(kind, groups, payload))
            .await
    }

    fn try_publish_bytes(
        &self,
        kind: PublishKind,
        groups: &[&str],
        payload: &[u8],
    ) -> Result<Option<u64>, Error> {
        self.state.with(|i| {
            i.publish(kind, groups, payload.len(), |out| {
                out.copy_from_slice(payload);
                Ok(())
            })
        })
    }

    async fn publish_value<T: Serialize + ?Sized>(
        &self,
        kind: PublishKind,
        groups: &[&str],
        value: &T,
    ) -> Result<u64, Error> {
        let len = serialized_len(value)?;
        self.wait_room(|| self.publish_value_now(kind, groups, value, len))
            .await
    }

    fn try_publish_value<T: Serialize + ?Sized>(
        &self,
        kind: PublishKind,
        groups: &[&str],
        value: &T,
    ) -> Result<Option<u64>, Error> {
        let len = serialized_len(value)?;
        self.publish_value_now(kind, groups, value, len)
    }

    fn publish_value_now<T: Serialize + ?Sized>(
        &self,
        kind: PublishKind,
        groups: &[&str],
        value: &T,
        len: usize,
    ) -> Result<Option<u64>, Error> {
        self.state.with(|i| {
            i.publish(kind, groups, len, |out| {
                postcard::to_slice(value, out)
                    .map(|_| ())
                    .map_err(|_| Error::Encode)
            })
        })
    }

    /// [`Error::OutboxFull`], having asked the relay for the confirm that frees room (it may
    /// hold it back for its confirm delay), so that a retry soon after can succeed.
    fn outbox_full(&self) -> Error {
        self.state.with(|i| {
            i.session.request_confirm();
            i.wake_runner();
        });
        Error::OutboxFull
    }

    /// Retries `attempt` each time the outbox frees room, until it is done or fails.
    async fn wait_room(
        &self,
        mut attempt: impl FnMut() -> Result<Option<u64>, Error>,
    ) -> Result<u64, Error> {
        poll_fn(|cx| match attempt() {
            Ok(Some(seq)) => Poll::Ready(Ok(seq)),
            Err(e) => Poll::Ready(Err(e)),
            Ok(None) => {
                self.state.with(|i| i.space_wakers.register(cx.waker()));
                // Room comes with a confirm, which the relay may hold back for a while.
                let _ = self.outbox_full();
                // Room may have been freed between the attempt and the registration.
                match attempt() {
                    Ok(Some(seq)) => Poll::Ready(Ok(seq)),
                    Err(e) => Poll::Ready(Err(e)),
                    Ok(None) => Poll::Pending,
                }
            }
        })
        .await
    }
}

fn serialized_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(|_| Error::Encode)
}

fn item<'a, 'b>(groups: &'a [&'a str], taken: crate::state::Taken, buf: &'b [u8]) -> Item<'a, 'b> {
    Item {
        group: groups[taken.group],
        kind: if taken.produced {
            ItemKind::Produced
        } else {
            ItemKind::Broadcast { seq: taken.number }
        },
        payload: &buf[..taken.len],
    }
}
