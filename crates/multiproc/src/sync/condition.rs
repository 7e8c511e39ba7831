//! [`Condition`]: a lock (a [`Lock`] or an [`RLock`]) and three words of its own.
//!
//! | word | meaning |
//! |---|---|
//! | 0 `waiters` | waiters not yet notified (changed only under the lock) |
//! | 1 `signals` | notifications not yet taken |
//! | 2 `epoch` | bumped by every `notify` that wakes someone; sleepers wait on this word |
//! | 3 `requeued` | notified sleepers moved to the lock's futex and not yet awake |
//! | 4 `sleepers` | waiters that may be asleep on `epoch` (a notify makes a system call only if some are) |
//!
//! A waiter registers (under the lock: `waiters += 1`, remembering `epoch`), lets the lock
//! go, and sleeps on `epoch`. `notify(n)` (under the lock) moves `k = min(n, waiters)` from
//! `waiters` to `signals`, bumps `epoch` and wakes `k` sleepers. A waiter returns notified
//! once it takes a signal (CAS down), and may take one only once `epoch` moved past the value
//! it registered with: a notification belongs to those waiting when it was made, never to a
//! waiter that came after (which, not being asleep yet, would otherwise beat the one woken).
//! At its timeout a waiter takes a signal if it may and one is left (a notify raced with the
//! timeout), or else removes itself from `waiters`. So exactly `min(n, waiters)` waiters
//! return notified. (Those eligible always number at least `signals`, so every signal has
//! a taker; a waiter killed while waiting stays counted, and its share goes to a waiter of a
//! later notify.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{new_segment, travels_as_segment};
use super::{
    AcquireError, Lock, LockGuard, RLock, RLockGuard, SyncError, before_sleeping, deadline,
    next_sleep,
};
use crate::ShmError;
use crate::shm::segment::{self, Kind, Segment};
use crate::sys;

#[derive(Clone)]
struct Cells {
    seg: Arc<Segment>,
}

travels_as_segment!(Cells, Kind::Condition);

/// The lock under a [`Condition`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ConditionLock {
    /// A plain lock.
    Lock(Lock),
    /// A recursive lock (the default, as in CPython).
    RLock(RLock),
}

impl From<Lock> for ConditionLock {
    fn from(l: Lock) -> Self {
        Self::Lock(l)
    }
}

impl From<RLock> for ConditionLock {
    fn from(l: RLock) -> Self {
        Self::RLock(l)
    }
}

/// Holds a [`Condition`]'s lock; releases it on drop.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub enum ConditionGuard<'a> {
    /// Of a plain lock.
    Lock(LockGuard<'a>),
    /// Of a recursive lock.
    RLock(RLockGuard<'a>),
}

/// A condition variable shared between processes: CPython's `multiprocessing.Condition`.
///
/// Hold its lock ([`acquire`](Self::acquire)) to [`wait`](Self::wait) or
/// [`notify`](Self::notify). A wait with a timeout returns by then, whatever happened to the
/// process expected to notify.
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let cond = multiproc::Condition::new()?;
/// let _held = cond.acquire().map_err(|e| e.to_string())?;
/// // Nobody notifies: the wait times out.
/// assert!(!cond.wait_timeout(std::time::Duration::from_millis(5))?);
/// cond.notify_all()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Condition {
    lock: ConditionLock,
    cells: Cells,
}

impl Condition {
    /// A condition over a new [`RLock`] (CPython's default).
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new() -> Result<Self, ShmError> {
        Self::with_lock(RLock::new()?)
    }

    /// A condition over `lock` (a [`Lock`] or an [`RLock`]).
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::with_lock(multiproc::Lock::new()?)?;
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn with_lock(lock: impl Into<ConditionLock>) -> Result<Self, ShmError> {
        Ok(Self {
            lock: lock.into(),
            cells: Cells {
                seg: new_segment(Kind::Condition, 5)?,
            },
        })
    }

    /// The lock under it.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// assert!(matches!(cond.lock(), multiproc::sync::ConditionLock::RLock(_)));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn lock(&self) -> &ConditionLock {
        &self.lock
    }

    fn waiters(&self) -> &AtomicU32 {
        self.cells.seg.word(0)
    }

    fn signals(&self) -> &AtomicU32 {
        self.cells.seg.word(1)
    }

    fn epoch(&self) -> &AtomicU32 {
        self.cells.seg.word(2)
    }

    /// Waiters moved to the lock's futex by notifies and not yet back.
    fn requeued(&self) -> &AtomicU32 {
        self.cells.seg.word(3)
    }

    fn sleepers(&self) -> &AtomicU32 {
        self.cells.seg.word(4)
    }

    fn lock_raw(&self) -> super::lock::RawMutex<'_> {
        match &self.lock {
            ConditionLock::Lock(l) => l.raw(),
            ConditionLock::RLock(l) => l.raw(),
        }
    }

    /// Acquires the lock.
    ///
    /// # Errors
    ///
    /// [`AcquireError::OwnerDied`] (holding the guard) if its holder died.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// let guard = cond.acquire().map_err(|e| e.to_string())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&self) -> Result<ConditionGuard<'_>, AcquireError<ConditionGuard<'_>>> {
        match &self.lock {
            ConditionLock::Lock(l) => l
                .acquire()
                .map(ConditionGuard::Lock)
                .map_err(|e| e.map(ConditionGuard::Lock)),
            ConditionLock::RLock(l) => l
                .acquire()
                .map(ConditionGuard::RLock)
                .map_err(|e| e.map(ConditionGuard::RLock)),
        }
    }

    fn is_mine(&self) -> bool {
        match &self.lock {
            ConditionLock::Lock(l) => l.is_mine(),
            ConditionLock::RLock(l) => l.is_mine(),
        }
    }

    fn take_signal(&self) -> bool {
        let s = self.signals();
        let mut cur = s.load(Ordering::Acquire);
        while cur > 0 {
            match s.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    /// Releases the lock, waits for a notification, takes the lock back. Returns true.
    ///
    /// # Errors
    ///
    /// [`SyncError::WaitUnacquired`] if the calling thread does not hold the lock;
    /// [`SyncError::OwnerDied`] if, while it waited, a process died holding the lock: the
    /// lock is the caller's again, but what it guards may be half updated.
    ///
    /// # Examples
    ///
    /// See [`wait_timeout`](Self::wait_timeout).
    pub fn wait(&self) -> Result<bool, SyncError> {
        self.wait_until(None)
    }

    /// As [`wait`](Self::wait), for at most `timeout`; false if no notification came.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// assert!(cond.wait_timeout(std::time::Duration::ZERO).is_err()); // not held
    /// let _g = cond.acquire();
    /// assert!(!cond.wait_timeout(std::time::Duration::from_millis(1))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, SyncError> {
        self.wait_until(Some(timeout))
    }

    fn wait_until(&self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        if !self.is_mine() {
            return Err(SyncError::WaitUnacquired);
        }
        self.waiters().fetch_add(1, Ordering::Relaxed);
        let registered = self.epoch().load(Ordering::Relaxed);
        let saved = match &self.lock {
            ConditionLock::Lock(l) => {
                l.release_for_wait();
                1
            }
            ConditionLock::RLock(l) => l.release_all(),
        };
        let deadline = deadline(timeout);
        let mut notified = false;
        let mut first = true;
        loop {
            let epoch = self.epoch().load(Ordering::SeqCst);
            if epoch != registered && self.take_signal() {
                notified = true;
                break;
            }
            if std::mem::take(&mut first) {
                let moved = || self.epoch().load(Ordering::SeqCst) != epoch;
                if before_sleeping(sys::may_spin(), deadline, moved) {
                    continue;
                }
            }
            let Some(d) = next_sleep(deadline) else {
                break;
            };
            // Counted before the last look at `epoch`, so a notify either sees a sleeper (and
            // makes its system call) or came before that look.
            self.sleepers().fetch_add(1, Ordering::SeqCst);
            if self.epoch().load(Ordering::SeqCst) == epoch {
                // Always in slices, even without a deadline: a notify may move this sleeper to
                // the lock's futex, and only a slice's end lets it see the lock's owner die.
                sys::futex_wait(self.epoch(), epoch, Some(d));
            }
            self.sleepers().fetch_sub(1, Ordering::SeqCst);
        }
        let died = match &self.lock {
            ConditionLock::Lock(l) => l.reacquire(),
            ConditionLock::RLock(l) => l.reacquire(saved),
        };
        // Another waiter moved to the lock's futex with this one is still asleep there: the
        // next unlock must wake it (this thread took the lock without marking it).
        if notified {
            let moved_before =
                self.requeued()
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if moved_before.is_ok_and(|n| n > 1) {
                self.lock_raw().mark_waiters();
            }
        }
        if !notified {
            // Under the lock again: a notify that counted us left a signal; otherwise we are
            // still among the waiters.
            if self.epoch().load(Ordering::Acquire) != registered && self.take_signal() {
                notified = true;
            } else {
                let w = self.waiters();
                let _ = w.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
        if died {
            return Err(SyncError::OwnerDied);
        }
        Ok(notified)
    }

    /// Waits until `predicate` is true, for at most `timeout` (`None`: forever); returns
    /// the predicate's last value (CPython's `wait_for`).
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// let _g = cond.acquire();
    /// assert!(cond.wait_for(|| true, None)?);
    /// assert!(!cond.wait_for(|| false, Some(std::time::Duration::from_millis(5)))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, SyncError> {
        let end = timeout.map(|t| Instant::now() + t);
        let mut result = predicate();
        while !result {
            let left = end.map(|e| e.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            self.wait_until(left)?;
            result = predicate();
        }
        Ok(result)
    }

    /// Wakes up to `n` waiters.
    ///
    /// # Errors
    ///
    /// [`SyncError::NotifyUnacquired`] if the calling thread does not hold the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// assert!(cond.notify(1).is_err());
    /// let _g = cond.acquire();
    /// cond.notify(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn notify(&self, n: u32) -> Result<(), SyncError> {
        if !self.is_mine() {
            return Err(SyncError::NotifyUnacquired);
        }
        let waiting = self.waiters().load(Ordering::Relaxed);
        let k = n.min(waiting);
        if k == 0 {
            return Ok(());
        }
        self.waiters().store(waiting - k, Ordering::Relaxed);
        self.signals().fetch_add(k, Ordering::Release);
        let epoch = self.epoch().fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        if self.sleepers().load(Ordering::SeqCst) == 0 {
            // Every waiter is awake (spinning, yielding, or between its look and its sleep,
            // and that look will see the new epoch): nothing to wake.
            return Ok(());
        }
        // Wait morphing: the notified sleepers move to the lock's futex and wake when this
        // thread lets go of the lock, instead of waking now to find it held (which costs two
        // more context switches per wake-up on one CPU).
        let lock = self.lock_raw();
        lock.mark_waiters();
        match sys::futex_requeue(self.epoch(), k, lock.state, epoch) {
            Ok(moved) => {
                let moved = u32::try_from(moved).unwrap_or(u32::MAX);
                self.requeued().fetch_add(moved, Ordering::Relaxed);
            }
            Err(_) => {
                sys::futex_wake(self.epoch(), k);
            }
        }
        Ok(())
    }

    /// Wakes every waiter.
    ///
    /// # Errors
    ///
    /// [`SyncError::NotifyUnacquired`] if the calling thread does not hold the lock.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let cond = multiproc::Condition::new()?;
    /// let _g = cond.acquire();
    /// cond.notify_all()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn notify_all(&self) -> Result<(), SyncError> {
        self.notify(u32::MAX)
    }
}
