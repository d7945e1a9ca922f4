//! Busy polling: keep a single-threaded runtime awake for a short window after network
//! activity, so the next bytes are picked up at once instead of after a wake-up.
//!
//! Why: on virtual machines, a thread that sleeps in `epoll_wait` and is woken by a packet pays
//! for its virtual CPU to be halted and restarted. On the 2-vCPU machine this project is
//! measured on, two threads ping-ponging one byte over Unix sockets take 50–70 µs a round trip
//! when they sleep and under 5 µs when they spin (`tlsro-bench wake`); a round trip through a
//! relay is four such wake-ups.
//! Linux's `busy_poll`, Aeron's idle strategies and DPDK make the same trade: CPU time for
//! latency.
//!
//! How: a task that yields to the runtime for as long as there was activity within the window.
//! A yielding task keeps a current-thread runtime from parking, and each time round the runtime
//! polls its I/O driver without blocking, which is the busy poll. When the window has passed
//! with nothing seen, the task sleeps until the next activity: an idle process spins for at most
//! the window. On a multi-thread runtime the other workers would still sleep, and the spinning
//! task competes with them for cores (on two cores that made the tail latency worse, not
//! better), so [`BusyPoll::start`] refuses one with [`BusyPollError::MultiThread`].
//!
//! "Idle" means no reads or writes at all: a relay with thousands of endpoints sees keepalive
//! traffic every few milliseconds and so spins nearly all the time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A handle to a running busy-poll task: report activity with [`BusyPoll::activity`]. Cheap to
/// clone; the task ends when the last clone is dropped.
#[derive(Clone)]
pub struct BusyPoll {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

/// `Shared::last` before any activity.
const NEVER: u64 = u64::MAX;

struct Shared {
    /// When activity was last reported, in nanoseconds since `base` ([`NEVER`]: not yet).
    last: AtomicU64,
    base: Instant,
    window: Duration,
    /// The task is waiting on `wake` (not spinning).
    sleeping: AtomicBool,
    wake: Notify,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why [`BusyPoll::start`] did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusyPollError {
    /// Not called from within a tokio runtime.
    #[error("busy polling needs a tokio runtime")]
    NoRuntime,
    /// The runtime has several worker threads: busy polling would not keep the others awake.
    /// (One worker is fine.)
    #[error(
        "busy polling needs a current-thread runtime (tokio::runtime::Builder::new_current_thread); \
         on a multi-thread one it would only compete with the workers for cores"
    )]
    MultiThread,
    /// A window of zero would never spin.
    #[error("a busy-poll window of 0 would never spin")]
    ZeroWindow,
    /// A window longer than [`MAX_WINDOW`]: it would only burn CPU (past a few milliseconds a
    /// wake-up costs nothing in comparison), and is most likely a wrong unit.
    #[error(
        "a busy-poll window of {0:?} is longer than the {MAX_WINDOW:?} allowed (it would spin a core \
         for nothing; windows of 50-500 µs are the useful ones)"
    )]
    TooLong(Duration),
}

/// The longest busy-poll window accepted.
pub const MAX_WINDOW: Duration = Duration::from_millis(100);

/// Checks a busy-poll window: not zero, at most [`MAX_WINDOW`].
pub fn check_window(window: Duration) -> Result<(), BusyPollError> {
    if window.is_zero() {
        Err(BusyPollError::ZeroWindow)
    } else if window > MAX_WINDOW {
        Err(BusyPollError::TooLong(window))
    } else {
        Ok(())
    }
}

impl BusyPoll {
    /// Starts the busy-poll task on the current runtime, spinning for `window` after each
    /// reported activity. The runtime must be a current-thread one (or a multi-thread one with
    /// a single worker).
    pub fn start(window: Duration) -> Result<BusyPoll, BusyPollError> {
        check_window(window)?;
        let handle = Handle::try_current().map_err(|_| BusyPollError::NoRuntime)?;
        // A multi-thread runtime with one worker behaves like a current-thread one here (the
        // blocking endpoint's runtime is one).
        if handle.runtime_flavor() != RuntimeFlavor::CurrentThread
            && handle.metrics().num_workers() != 1
        {
            return Err(BusyPollError::MultiThread);
        }
        let shared = Arc::new(Shared {
            last: AtomicU64::new(NEVER),
            base: Instant::now(),
            window,
            sleeping: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let task = handle.spawn(spin(shared.clone()));
        Ok(BusyPoll {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Something was read or written: keep spinning for the window from now.
    pub fn activity(&self) {
        // SeqCst here and in `spin`: each side stores, then loads what the other stores (the
        // time, the sleeping flag). Weaker orderings let both loads see the old values, and the
        // task would sleep through activity reported from another thread.
        self.shared.last.store(self.shared.now(), Ordering::SeqCst);
        if self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.wake.notify_one();
        }
    }

    /// Whether the task is spinning now (false: asleep until the next activity).
    pub fn is_spinning(&self) -> bool {
        !self.shared.sleeping.load(Ordering::SeqCst)
    }

    /// The window it spins for after each activity.
    pub fn window(&self) -> Duration {
        self.shared.window
    }
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn within_window(&self) -> bool {
        let last = self.last.load(Ordering::SeqCst);
        // Before the first activity there is nothing to spin for.
        last != NEVER && u128::from(self.now().saturating_sub(last)) < self.window.as_nanos()
    }
}

async fn spin(shared: Arc<Shared>) {
    loop {
        // Reading the clock is a vDSO call of some 20 ns: cheap next to a runtime turn.
        while shared.within_window() {
            tokio::task::yield_now().await;
        }
        shared.sleeping.store(true, Ordering::SeqCst);
        // Activity reported between the check above and the store would otherwise be missed:
        // `activity` stores the time before it looks at `sleeping`.
        if shared.within_window() {
            shared.sleeping.store(false, Ordering::SeqCst);
            continue;
        }
        shared.wake.notified().await;
    }
}

impl std::fmt::Debug for BusyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusyPoll")
            .field("window", &self.shared.window)
            .field("spinning", &self.is_spinning())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn settle(poll: &BusyPoll, spinning: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while poll.is_spinning() != spinning {
            assert!(Instant::now() < deadline, "still spinning = {}", !spinning);
            tokio::task::yield_now().await;
            if !spinning {
                // Let the window pass in real time without spinning ourselves.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// It spins after activity, sleeps once the window has passed, and spins again at the next
    /// activity.
    #[tokio::test]
    async fn spins_for_the_window_after_activity_then_sleeps() {
        let poll = BusyPoll::start(Duration::from_millis(20)).unwrap();
        poll.activity();
        assert!(poll.is_spinning());
        settle(&poll, false).await;
        poll.activity();
        assert!(poll.is_spinning(), "activity wakes it");
        settle(&poll, false).await;
    }

    /// Started and never told of activity, it does not spin.
    #[tokio::test]
    async fn no_activity_no_spinning() {
        let poll = BusyPoll::start(MAX_WINDOW).unwrap();
        settle(&poll, false).await;
    }

    /// While it spins, other tasks on the same thread still run and timers still fire.
    #[tokio::test]
    async fn other_tasks_run_while_it_spins() {
        let poll = BusyPoll::start(MAX_WINDOW).unwrap();
        poll.activity();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let other = tokio::spawn(async { 7 });
        assert_eq!(other.await.unwrap(), 7);
        assert!(poll.is_spinning());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// It refuses what it cannot do, with the reason.
    #[test]
    fn refuses_a_multi_thread_runtime_no_runtime_and_a_zero_window() {
        assert_eq!(
            BusyPoll::start(Duration::from_millis(1)).unwrap_err(),
            BusyPollError::NoRuntime
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let err = rt.block_on(async { BusyPoll::start(Duration::from_millis(1)).unwrap_err() });
        assert_eq!(err, BusyPollError::MultiThread);
        assert!(err.to_string().contains("current-thread"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(async { BusyPoll::start(Duration::ZERO).unwrap_err() });
        assert_eq!(err, BusyPollError::ZeroWindow);
        let long = Duration::from_secs(60);
        let err = rt.block_on(async { BusyPoll::start(long).unwrap_err() });
        assert_eq!(err, BusyPollError::TooLong(long));
        assert!(err.to_string().contains("longer than"), "{err}");
        assert!(rt.block_on(async { BusyPoll::start(MAX_WINDOW) }).is_ok());
    }

    /// The task ends when the last handle is dropped.
    #[tokio::test]
    async fn the_task_ends_with_the_last_handle() {
        let poll = BusyPoll::start(MAX_WINDOW).unwrap();
        let weak = Arc::downgrade(&poll.shared);
        poll.activity();
        let clone = poll.clone();
        drop(poll);
        tokio::task::yield_now().await;
        assert!(weak.upgrade().is_some(), "a clone keeps it");
        drop(clone);
        // The aborted task drops its Arc the next time the runtime gets to it.
        for _ in 0..100 {
            if weak.upgrade().is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the busy-poll task outlived its handles");
    }
}
