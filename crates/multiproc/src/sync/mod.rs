//! Synchronisation between processes: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Condition`], [`Event`], [`Barrier`] (CPython's
//! `multiprocessing.synchronize`).
//!
//! Each object is a few 32-bit words in a shared memory segment of its own. The uncontended
//! paths are atomics in user space; the kernel is entered only to sleep and to wake
//! (shared futexes, never `FUTEX_PRIVATE_FLAG`). Every object can be a Process argument or
//! part of any message (it travels as its segment), under every start method.
//!
//! **A holder's death.** A lock word holds its owner's pid. A waiter sleeps in slices of
//! [`DEATH_CHECK`] and, at the end of each, checks that the owner still lives; if not, it
//! takes the lock and learns so ([`AcquireError::OwnerDied`]), and the lock is usable after.
//! Waits on a [`Condition`], [`Event`] or [`Barrier`] never outlast their timeout, whatever
//! happened to the peer expected to wake them. See `sync/README.md` for the word layouts.

use std::fmt;
use std::time::{Duration, Instant};

mod barrier;
mod condition;
mod event;
pub(crate) mod lock;
mod semaphore;

pub use barrier::{Barrier, BarrierBuilder};
pub use condition::{Condition, ConditionGuard, ConditionLock};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore};

/// How often a waiter checks that a lock's owner is still alive.
pub const DEATH_CHECK: Duration = Duration::from_millis(50);

/// Why an acquire did not simply succeed.
///
/// # Examples
///
/// ```
/// use multiproc::{AcquireError, Lock};
/// # multiproc::init();
/// let lock = Lock::new()?;
/// let held = lock.acquire().map_err(|e| e.to_string())?;
/// assert!(matches!(lock.try_acquire(), Err(AcquireError::Timeout)));
/// drop(held);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub enum AcquireError<G> {
    /// Not acquired: it was held (a non-blocking try) or the timeout passed.
    Timeout,
    /// Acquired, but the previous owner died holding it: whatever it guarded may be half
    /// updated. The guard is yours; the lock works normally after.
    OwnerDied(G),
}

impl<G> AcquireError<G> {
    /// The guard, if the lock was acquired from a dead owner.
    ///
    /// # Examples
    ///
    /// ```
    /// let e: multiproc::AcquireError<()> = multiproc::AcquireError::Timeout;
    /// assert!(e.into_guard().is_none());
    /// ```
    pub fn into_guard(self) -> Option<G> {
        match self {
            Self::Timeout => None,
            Self::OwnerDied(g) => Some(g),
        }
    }

    /// The same outcome with the guard (if any) turned into another.
    pub(crate) fn map<H>(self, f: impl FnOnce(G) -> H) -> AcquireError<H> {
        match self {
            Self::Timeout => AcquireError::Timeout,
            Self::OwnerDied(g) => AcquireError::OwnerDied(f(g)),
        }
    }
}

impl<G> fmt::Debug for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("Timeout"),
            Self::OwnerDied(_) => f.write_str("OwnerDied(..)"),
        }
    }
}

impl<G> fmt::Display for AcquireError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::OwnerDied(_) => f.write_str("the previous owner died holding the lock"),
        }
    }
}

impl<G> std::error::Error for AcquireError<G> {}

/// Errors of the synchronisation primitives, with CPython's messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Releasing an unlocked Lock, or a BoundedSemaphore past its initial value.
    #[error("semaphore or lock released too many times")]
    ReleasedTooManyTimes,
    /// Releasing an RLock held by another thread or process (or by no one).
    #[error("attempt to release recursive lock not owned by thread")]
    NotOwner,
    /// `Condition::wait` without holding the condition's lock.
    #[error("cannot wait on un-acquired lock")]
    WaitUnacquired,
    /// `Condition::notify` without holding the condition's lock.
    #[error("cannot notify on un-acquired lock")]
    NotifyUnacquired,
    /// The barrier was broken (aborted, reset while waiting, a waiter timed out, or the
    /// action panicked).
    #[error("BrokenBarrierError")]
    BrokenBarrier,
    /// The previous holder of the lock died while holding it (the lock is now held by the
    /// caller, as after a normal acquire).
    #[error("the previous owner died holding the lock")]
    OwnerDied,
    /// Making the shared object failed.
    #[error(transparent)]
    Shm(#[from] crate::ShmError),
}

/// A deadline from an optional timeout.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// How long the next sleep may be: up to the deadline, and never longer than a death check.
pub(crate) fn next_sleep(deadline: Option<Instant>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match left {
        Some(l) if l.is_zero() => None,
        Some(l) => Some(l.min(DEATH_CHECK)),
        None => Some(DEATH_CHECK),
    }
}

/// What a waiter does before it sleeps: on more than one CPU, spin a little (waking a sleeper
/// on another CPU costs tens of microseconds); on one CPU, give the CPU away twice (the
/// process that will satisfy it is likely waiting for this very CPU: a hand-off by yield
/// costs one system call, a sleep and a wake-up two). True if `ready` came true.
pub(crate) fn before_sleeping(
    spin: bool,
    deadline: Option<Instant>,
    ready: impl Fn() -> bool,
) -> bool {
    if spin {
        let until = Instant::now() + SPIN;
        let until = deadline.map_or(until, |d| d.min(until));
        // The clock is read once per 64 looks.
        loop {
            for _ in 0..64 {
                if ready() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }
    for _ in 0..YIELDS {
        std::thread::yield_now();
        if ready() {
            return true;
        }
    }
    false
}

/// How many times a waiter on one CPU yields before it sleeps.
const YIELDS: u32 = 2;

/// How long a waiter spins before it sleeps, when it may run on more than one CPU.
const SPIN: Duration = Duration::from_micros(20);
