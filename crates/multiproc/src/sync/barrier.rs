//! [`Barrier`]: CPython's `threading.Barrier` algorithm (filling, draining, resetting,
//! broken) over an internal lock and a wake-up sequence word.
//!
//! | word | meaning |
//! |---|---|
//! | 0 `mutex` | internal lock (owner pid; see `lock.rs`); a holder's death breaks the barrier |
//! | 1 `state` | 0 filling, 1 draining, 2 resetting, 3 broken |
//! | 2 `count` | parties inside `wait` |
//! | 3 `seq` | bumped at every change waiters care about; they sleep on it |
//! | 4 `parties` | fixed |
//! | 5 `timeout_ms` | the default timeout, `u32::MAX` for none |

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::lock::{Got, RawMutex, new_segment, travels_as_segment};
use super::{SyncError, next_sleep};
use crate::ShmError;
use crate::callable::{self, Callable, CallableSpec};
use crate::shm::segment::{self, Kind, Segment};
use crate::sys;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;
const NO_TIMEOUT: u32 = u32::MAX;

#[derive(Clone)]
struct Cells {
    seg: Arc<Segment>,
}

travels_as_segment!(Cells, Kind::Barrier);

/// An action as it travels: only to a process running the same build.
#[derive(Clone, Copy, Debug)]
struct Action(fn());

#[derive(Serialize, Deserialize)]
struct ActionWire {
    build: Vec<u8>,
    spec: CallableSpec,
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let spec = Callable::action(self.0)
            .to_spec()
            .map_err(serde::ser::Error::custom)?;
        ActionWire {
            build: callable::build_identity().to_vec(),
            spec,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = ActionWire::deserialize(d)?;
        if w.build != callable::build_identity() {
            return Err(de::Error::custom(
                "a Barrier's action cannot go to a process running another build",
            ));
        }
        let c = Callable::from_spec(w.spec).map_err(de::Error::custom)?;
        Ok(Self(c.as_action()))
    }
}

/// Parties wait until all have arrived: CPython's `multiprocessing.Barrier`.
///
/// Exactly one waiter of each round gets index 0; the last to arrive runs the action (a plain
/// `fn()`) before any is released. A waiter that times out breaks the barrier for all.
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let b = multiproc::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0); // one party: it passes at once
/// assert_eq!(b.parties(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Barrier {
    cells: Cells,
    action: Option<Action>,
}

/// Options for a [`Barrier`].
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// fn announce() { println!("all here"); }
/// let b = multiproc::Barrier::builder(2)
///     .action(announce)
///     .timeout(std::time::Duration::from_secs(5))
///     .build()?;
/// # Ok::<(), multiproc::ShmError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BarrierBuilder {
    parties: u32,
    action: Option<fn()>,
    timeout: Option<Duration>,
}

impl BarrierBuilder {
    /// Runs `action` in the last party to arrive, before the round is released.
    pub fn action(mut self, action: fn()) -> Self {
        self.action = Some(action);
        self
    }

    /// The timeout of a [`Barrier::wait`] that gives none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the barrier.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    pub fn build(self) -> Result<Barrier, ShmError> {
        let seg = new_segment(Kind::Barrier, 6)?;
        seg.word(4).store(self.parties.max(1), Ordering::Relaxed);
        let ms = self.timeout.map_or(NO_TIMEOUT, |t| {
            u32::try_from(t.as_millis()).unwrap_or(NO_TIMEOUT - 1)
        });
        seg.word(5).store(ms, Ordering::Relaxed);
        Ok(Barrier {
            cells: Cells { seg },
            action: self.action.map(Action),
        })
    }
}

/// The internal lock, held.
struct Held<'a> {
    b: &'a Barrier,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.b.mutex().unlock();
    }
}

impl Barrier {
    /// A barrier for `parties` processes or threads (at least 1), with no action or default
    /// timeout.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Barrier::new(3)?.n_waiting(), 0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new(parties: u32) -> Result<Self, ShmError> {
        Self::builder(parties).build()
    }

    /// Options: an action, a default timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let b = multiproc::Barrier::builder(2).build()?;
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn builder(parties: u32) -> BarrierBuilder {
        BarrierBuilder {
            parties,
            action: None,
            timeout: None,
        }
    }

    fn w(&self, i: usize) -> &AtomicU32 {
        self.cells.seg.word(i)
    }

    fn mutex(&self) -> RawMutex<'_> {
        RawMutex { state: self.w(0) }
    }

    /// Takes the internal lock; if its holder died mid-change, the barrier is broken.
    fn lock(&self) -> Held<'_> {
        let pid = sys::caller().0;
        let m = self.mutex();
        if !m.try_lock_fast(pid) && matches!(m.lock_slow(pid, true, None), Some(Got::OwnerDied)) {
            self.set_state(BROKEN);
        }
        Held { b: self }
    }

    fn state(&self) -> u32 {
        self.w(1).load(Ordering::Acquire)
    }

    fn set_state(&self, s: u32) {
        self.w(1).store(s, Ordering::Release);
        self.notify_all();
    }

    fn count(&self) -> &AtomicU32 {
        self.w(2)
    }

    fn notify_all(&self) {
        self.w(3).fetch_add(1, Ordering::Release);
        sys::futex_wake(self.w(3), u32::MAX);
    }

    /// Sleeps (the internal lock released) until `done` holds or the deadline passes; false
    /// on timeout. Called and returns with the lock held.
    fn wait_while<'a>(
        &'a self,
        held: Held<'a>,
        mut done: impl FnMut(&Self) -> bool,
        deadline: Option<Instant>,
    ) -> (Held<'a>, bool) {
        let mut held = held;
        loop {
            if done(self) {
                return (held, true);
            }
            let seq = self.w(3).load(Ordering::Acquire);
            drop(held);
            let Some(sleep) = next_sleep(deadline) else {
                return (self.lock(), done(self));
            };
            sys::futex_wait(self.w(3), seq, Some(sleep));
            held = self.lock();
        }
    }

    /// The number of parties.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Barrier::new(4)?.parties(), 4);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn parties(&self) -> u32 {
        self.w(4).load(Ordering::Relaxed)
    }

    fn default_timeout(&self) -> Option<Duration> {
        let ms = self.w(5).load(Ordering::Relaxed);
        (ms != NO_TIMEOUT).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Waits for all parties (with the default timeout, if any); returns this party's index
    /// in the round (exactly one gets 0).
    ///
    /// # Errors
    ///
    /// [`SyncError::BrokenBarrier`] if the barrier is or becomes broken (aborted, reset, a
    /// waiter timed out, the action panicked, a party died inside the barrier's own lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let b = multiproc::Barrier::new(1)?;
    /// assert_eq!(b.wait()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self) -> Result<u32, SyncError> {
        self.wait_inner(self.default_timeout())
    }

    /// As [`wait`](Self::wait), for at most `timeout`; on timeout the barrier breaks.
    ///
    /// # Errors
    ///
    /// [`SyncError::BrokenBarrier`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let b = multiproc::Barrier::new(2)?;
    /// assert!(b.wait_timeout(std::time::Duration::from_millis(5)).is_err());
    /// assert!(b.broken());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, SyncError> {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> Result<u32, SyncError> {
        let deadline = super::deadline(timeout);
        let held = self.lock();
        // Wait while the previous round drains or a reset completes.
        let (held, entered) = self.wait_while(
            held,
            |b| b.state() != DRAINING && b.state() != RESETTING,
            deadline,
        );
        if !entered || self.state() == BROKEN {
            if !entered {
                self.set_state(BROKEN);
            }
            return Err(SyncError::BrokenBarrier);
        }
        let index = self.count().fetch_add(1, Ordering::Relaxed);
        let (held, result) = if index + 1 == self.parties() {
            (held, self.release_round().map(|()| index))
        } else {
            let (held, ok) = self.wait_while(held, |b| b.state() != FILLING, deadline);
            let r = if !ok {
                self.set_state(BROKEN);
                Err(SyncError::BrokenBarrier)
            } else if self.state() == DRAINING {
                Ok(index)
            } else {
                Err(SyncError::BrokenBarrier)
            };
            (held, r)
        };
        // Leave: the last one out of a draining or resetting round reopens the barrier.
        let left = self.count().fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0 && matches!(self.state(), DRAINING | RESETTING) {
            self.set_state(FILLING);
        }
        drop(held);
        result
    }

    /// Runs the action and releases the round (the internal lock held).
    fn release_round(&self) -> Result<(), SyncError> {
        if let Some(Action(f)) = self.action {
            if std::panic::catch_unwind(f).is_err() {
                self.set_state(BROKEN);
                return Err(SyncError::BrokenBarrier);
            }
        }
        self.set_state(DRAINING);
        Ok(())
    }

    /// Breaks the barrier: every current and future waiter gets
    /// [`SyncError::BrokenBarrier`] until [`reset`](Self::reset).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let b = multiproc::Barrier::new(2)?;
    /// b.abort();
    /// assert!(b.broken() && b.wait().is_err());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn abort(&self) {
        let _held = self.lock();
        self.set_state(BROKEN);
    }

    /// Returns the barrier to its empty state; parties waiting now get
    /// [`SyncError::BrokenBarrier`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let b = multiproc::Barrier::new(2)?;
    /// b.abort();
    /// b.reset();
    /// assert!(!b.broken());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn reset(&self) {
        let _held = self.lock();
        if self.count().load(Ordering::Relaxed) > 0 {
            if matches!(self.state(), FILLING | BROKEN) {
                self.set_state(RESETTING);
            } else {
                self.notify_all();
            }
        } else {
            self.set_state(FILLING);
        }
    }

    /// Whether the barrier is broken.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(!multiproc::Barrier::new(2)?.broken());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn broken(&self) -> bool {
        self.state() == BROKEN
    }

    /// How many parties wait in the current round.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Barrier::new(2)?.n_waiting(), 0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn n_waiting(&self) -> u32 {
        if self.state() == FILLING {
            self.count().load(Ordering::Relaxed)
        } else {
            0
        }
    }
}
