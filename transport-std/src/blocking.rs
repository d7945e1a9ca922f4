//! The endpoint for synchronous code (a robot's control loop, a script): the same API as
//! [`crate::Endpoint`] with methods that block.
//!
//! ```no_run
//! use std::time::Duration;
//! use tlsro::{Endpoint, Wait};
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Endpoint::<String>::builder("relay.example:4430", "secret password")
//!     .groups(["jobs"])
//!     .connect_blocking()?;
//! worker.notify("jobs", 1)?;
//! loop {
//!     for job in worker.pop(1, Wait::Timeout(Duration::from_millis(100)))? {
//!         println!("working on {}", job.value);
//!         worker.notify("jobs", 1)?;
//!     }
//! #   break;
//! }
//! worker.stop()?;
//! # Ok(()) }
//! ```
//!
//! A blocking endpoint owns a tokio runtime with one worker thread that runs its background
//! task. Its blocking methods (`connect_blocking`, `pop`, `get_last`, `receive_all`, `stop`)
//! must not be called from async code: they would block the caller's runtime, and tokio refuses
//! to nest runtimes (it panics: "Cannot start a runtime from within a runtime"); use
//! [`crate::Endpoint`] there. Dropping one in async code is fine.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Runtime;
use tokio::sync::broadcast;

use crate::codec::{Codec, Postcard};
use crate::endpoint::{Builder, Event, Receipt, Received, Status, Wait};
use crate::error::Error;

/// A blocking [`crate::Endpoint`]; made by [`Builder::connect_blocking`]. Cloning is cheap and
/// shares the connection; dropping the last clone ends the background task without flushing.
pub struct Endpoint<T, C = Postcard> {
    // Declared before the runtime: dropped first, while the runtime still runs.
    inner: crate::Endpoint<T, C>,
    runtime: Arc<OwnedRuntime>,
}

/// The endpoint's runtime. Dropping a tokio runtime from async code panics ("Cannot drop a
/// runtime in a context where blocking is not allowed"), and a blocking endpoint may well be
/// dropped there (a struct holding one, dropped by a task): then the runtime is shut down in the
/// background instead, which is what tokio offers for that case.
struct OwnedRuntime(Option<Runtime>);

impl std::ops::Deref for OwnedRuntime {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        self.0
            .as_ref()
            .expect("the runtime is there until the endpoint is dropped")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                drop(runtime);
            }
        }
    }
}

impl<T, C: Clone> Clone for Endpoint<T, C> {
    fn clone(&self) -> Self {
        Endpoint {
            inner: self.inner.clone(),
            runtime: self.runtime.clone(),
        }
    }
}

impl<T, C> fmt::Debug for Endpoint<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Endpoint")
            .field(&self.inner)
            .finish()
    }
}

impl<T> Endpoint<T, Postcard> {
    /// Starts configuring an endpoint; finish with [`Builder::connect_blocking`].
    pub fn builder(relay_addr: impl Into<String>, password: impl Into<Vec<u8>>) -> Builder<T> {
        crate::Endpoint::builder(relay_addr, password)
    }
}

impl<T, C: Codec> Endpoint<T, C> {
    pub(crate) fn connect(builder: Builder<T, C>) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tlsro-endpoint")
            .enable_all()
            .build()?;
        let inner = runtime.block_on(builder.connect())?;
        Ok(Endpoint {
            inner,
            runtime: Arc::new(OwnedRuntime(Some(runtime))),
        })
    }

    /// The async endpoint this one wraps (for code that has both worlds).
    pub fn as_async(&self) -> &crate::Endpoint<T, C> {
        &self.inner
    }

    /// See [`crate::Endpoint::relay_addr`].
    pub fn relay_addr(&self) -> &str {
        self.inner.relay_addr()
    }

    /// See [`crate::Endpoint::groups`].
    pub fn groups(&self) -> &[String] {
        self.inner.groups()
    }

    /// See [`crate::Endpoint::status`].
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// See [`crate::Endpoint::events`]; receive with `blocking_recv` or `try_recv`.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events()
    }

    /// See [`crate::Endpoint::queued_bytes`].
    pub fn queued_bytes(&self) -> usize {
        self.inner.queued_bytes()
    }

    /// See [`crate::Endpoint::buffered_bytes`].
    pub fn buffered_bytes(&self) -> usize {
        self.inner.buffered_bytes()
    }

    /// See [`crate::Endpoint::decode_failures`].
    pub fn decode_failures(&self) -> u64 {
        self.inner.decode_failures()
    }

    /// See [`crate::Endpoint::notify`].
    pub fn notify(&self, group: &str, n: i32) -> Result<(), Error> {
        self.inner.notify(group, n)
    }

    /// See [`crate::Endpoint::notify_many`].
    pub fn notify_many(&self, grants: &[(&str, i32)]) -> Result<(), Error> {
        self.inner.notify_many(grants)
    }

    /// See [`crate::Endpoint::stop`]; blocks until the endpoint has stopped.
    pub fn stop(&self) -> Result<(), Error> {
        self.runtime.block_on(self.inner.stop())
    }
}

impl<T: Serialize, C: Codec> Endpoint<T, C> {
    /// See [`crate::Endpoint::broadcast`]; does not block. Wait for the verdict with
    /// [`Receipt::wait_blocking`].
    pub fn broadcast(&self, value: &T, group: &str) -> Result<Receipt, Error> {
        self.inner.broadcast(value, group)
    }

    /// See [`crate::Endpoint::broadcast_to`]; does not block.
    pub fn broadcast_to(&self, value: &T, groups: &[&str]) -> Result<Receipt, Error> {
        self.inner.broadcast_to(value, groups)
    }

    /// See [`crate::Endpoint::produce`]; does not block.
    pub fn produce(&self, value: &T, group: &str) -> Result<Receipt, Error> {
        self.inner.produce(value, group)
    }

    /// See [`crate::Endpoint::produce_to`]; does not block.
    pub fn produce_to(&self, value: &T, groups: &[&str]) -> Result<Receipt, Error> {
        self.inner.produce_to(value, groups)
    }
}

impl<T: DeserializeOwned, C: Codec> Endpoint<T, C> {
    /// See [`crate::Endpoint::pop`]; blocks as `wait` says.
    pub fn pop(&self, max_items: usize, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        self.runtime.block_on(self.inner.pop(max_items, wait))
    }

    /// See [`crate::Endpoint::get_last`]; blocks as `wait` says.
    pub fn get_last(&self, max_items: usize, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        self.runtime.block_on(self.inner.get_last(max_items, wait))
    }

    /// See [`crate::Endpoint::receive_all`]; blocks as `wait` says.
    pub fn receive_all(&self, wait: Wait) -> Result<Vec<Received<T>>, Error> {
        self.runtime.block_on(self.inner.receive_all(wait))
    }
}
