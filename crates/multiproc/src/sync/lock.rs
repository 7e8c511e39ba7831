//! [`Lock`] and [`RLock`]: a futex word holding the owner's pid, with the owner's thread id
//! (and, for the RLock, the count) beside it.
//!
//! | word | Lock | RLock |
//! |---|---|---|
//! | 0 `state` | 0 free; else owner pid, bit 31 = someone may sleep | same |
//! | 1 `tid` | owner's thread id (for `Condition`) | owner's thread id |
//! | 2 `count` | unused | recursion depth, written by the owner only |
//!
//! Acquire: CAS `0 -> pid`. Release: swap to 0, wake one sleeper if bit 31 was set. A sleeper
//! sets bit 31, sleeps on the word in slices of [`DEATH_CHECK`](super::DEATH_CHECK), and after
//! each slice (and before giving up, at a timeout or a non-blocking try) checks that the
//! owner's process lives; if it does not, it takes the lock over (CAS `dead -> pid | bit 31`)
//! and reports [`AcquireError::OwnerDied`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AcquireError, DEATH_CHECK, SyncError, deadline, next_sleep};
use crate::ShmError;
use crate::shm::segment::{self, Header, Kind, Segment};
use crate::sys;

const WAITERS: u32 = 1 << 31;
const OWNER: u32 = !WAITERS;

/// How a slow acquire ended.
pub(crate) enum Got {
    Clean,
    OwnerDied,
}

/// The mutex protocol over a state word (shared by Lock, RLock and the internal locks of
/// Barrier).
pub(crate) struct RawMutex<'a> {
    pub(crate) state: &'a AtomicU32,
}

impl RawMutex<'_> {
    #[inline]
    pub(crate) fn try_lock_fast(&self, pid: u32) -> bool {
        self.state
            .compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Acquires, waiting until `deadline` (`None`: forever) or not at all (`block` false).
    #[cold]
    pub(crate) fn lock_slow(
        &self,
        pid: u32,
        block: bool,
        deadline: Option<Instant>,
    ) -> Option<Got> {
        let mut last_check = Instant::now();
        let mut spins = if block && sys::may_spin() { 64 } else { 0 };
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s == 0 {
                if self
                    .state
                    .compare_exchange(0, pid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Got::Clean);
                }
                continue;
            }
            let owner = s & OWNER;
            // Checked before giving up too, so that waits shorter than a death check (or a
            // loop of them) still learn that the owner died.
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            let check_now = !block || expired || last_check.elapsed() >= DEATH_CHECK;
            // A non-blocking try checks cheaply (a zombie owner, not yet reaped, still counts);
            // a waiter checks fully once per slice.
            let dead = |o| {
                if block {
                    !sys::process_alive(o)
                } else {
                    !sys::process_exists(o)
                }
            };
            if check_now && owner != pid && dead(owner) {
                if self
                    .state
                    .compare_exchange(s, pid | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Some(Got::OwnerDied);
                }
                continue;
            }
            if check_now {
                last_check = Instant::now();
            }
            if !block || expired {
                return None;
            }
            if spins > 0 {
                spins -= 1;
                std::hint::spin_loop();
                continue;
            }
            if s & WAITERS == 0
                && self
                    .state
                    .compare_exchange(s, s | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            // At the deadline, go round once more: the check above, then give up.
            if let Some(sleep) = next_sleep(deadline) {
                sys::futex_wait(self.state, s | WAITERS, Some(sleep));
            }
        }
    }

    /// Releases; `false` if it was not locked.
    #[inline]
    pub(crate) fn unlock(&self) -> bool {
        let s = self.state.swap(0, Ordering::Release);
        if s & WAITERS != 0 {
            sys::futex_wake(self.state, 1);
        }
        s != 0
    }

    /// Releases only while process `pid` holds it, starting from the state `seen`; `false`
    /// if another process (or no one) does.
    #[inline]
    pub(crate) fn unlock_if_owner(&self, pid: u32, seen: u32) -> bool {
        let mut s = seen;
        loop {
            if s & OWNER != pid {
                return false;
            }
            match self
                .state
                .compare_exchange(s, 0, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        if s & WAITERS != 0 {
            sys::futex_wake(self.state, 1);
        }
        true
    }

    pub(crate) fn owner(&self) -> u32 {
        self.state.load(Ordering::Relaxed) & OWNER
    }

    /// Marks the lock as having sleepers (by its holder), so the next unlock wakes one.
    pub(crate) fn mark_waiters(&self) {
        self.state.fetch_or(WAITERS, Ordering::Relaxed);
    }
}

fn acquire_with<G>(
    raw: &RawMutex<'_>,
    pid: u32,
    block: bool,
    timeout: Option<Duration>,
    guard: impl FnOnce() -> G,
) -> Result<G, AcquireError<G>> {
    if raw.try_lock_fast(pid) {
        return Ok(guard());
    }
    match raw.lock_slow(pid, block, deadline(timeout)) {
        Some(Got::Clean) => Ok(guard()),
        Some(Got::OwnerDied) => Err(AcquireError::OwnerDied(guard())),
        None => Err(AcquireError::Timeout),
    }
}

macro_rules! travels_as_segment {
    ($ty:ident, $kind:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.seg.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let (seg, _) = segment::deserialize_typed(d, $kind, 0, 0)?;
                Ok(Self { seg })
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("name", &self.seg.name())
                    .finish()
            }
        }
    };
}
pub(crate) use travels_as_segment;

/// A typed segment with `words` words after its header.
pub(crate) fn new_segment(kind: Kind, words: usize) -> Result<Arc<Segment>, ShmError> {
    segment::create_typed(
        Header {
            kind,
            elem_size: 0,
            len: 0,
            type_tag: 0,
        },
        4 * words,
    )
}

// ---------------------------------------------------------------------------------------------
// Lock

/// A non-recursive lock shared between processes: CPython's `multiprocessing.Lock`.
///
/// Any thread of any process may release it (as in CPython). If its holder dies, the next
/// acquirer gets it with [`AcquireError::OwnerDied`] within about
/// [`DEATH_CHECK`](super::DEATH_CHECK). Clones are handles to the same lock; it can be a
/// Process argument or part of any message.
///
/// # Examples
///
/// ```
/// use multiproc::{AcquireError, Lock};
/// # multiproc::init();
/// let lock = Lock::new()?;
/// {
///     let _held = lock.acquire().map_err(|e| e.to_string())?;
///     assert!(matches!(lock.try_acquire(), Err(AcquireError::Timeout)));
/// } // released here
/// assert!(lock.try_acquire().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Lock {
    seg: Arc<Segment>,
}

travels_as_segment!(Lock, Kind::Lock);

/// Holds a [`Lock`]; releases it on drop (unless another process released it meanwhile and
/// the lock is now held by someone else, whose hold it leaves alone).
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Keeps the lock held after the guard is gone (release it with [`Lock::release`],
    /// from any thread or process).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// multiproc::LockGuard::forget(lock.acquire().map_err(|e| e.to_string())?);
    /// assert!(lock.is_locked());
    /// lock.release()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget(guard: Self) {
        std::mem::forget(guard);
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Another process may have released the lock meanwhile (`Lock::release` works from
        // anywhere) and a third taken it: that hold is not this guard's to end.
        let pid = sys::caller().0;
        let raw = self.lock.raw();
        let seen = raw.state.load(Ordering::Relaxed);
        if seen & OWNER == pid {
            self.lock.tid().store(0, Ordering::Relaxed);
            raw.unlock_if_owner(pid, seen);
        }
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

impl Lock {
    /// Makes a new, unlocked lock.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made ([`ShmError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// assert!(!lock.is_locked());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new() -> Result<Self, ShmError> {
        Ok(Self {
            seg: new_segment(Kind::Lock, 3)?,
        })
    }

    /// Its state word, as the mutex protocol (also for `Condition`).
    pub(crate) fn raw(&self) -> RawMutex<'_> {
        RawMutex {
            state: self.seg.word(0),
        }
    }

    fn tid(&self) -> &AtomicU32 {
        self.seg.word(1)
    }

    /// Acquires, waiting until `timeout` (`None`: forever) or not at all (`block` false).
    pub(crate) fn acquire_inner(
        &self,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        let (pid, tid) = sys::caller();
        acquire_with(&self.raw(), pid, block, timeout, || {
            self.tid().store(tid, Ordering::Relaxed);
            LockGuard { lock: self }
        })
    }

    /// Waits as long as it takes to acquire the lock.
    ///
    /// # Errors
    ///
    /// [`AcquireError::OwnerDied`] (holding the guard) if the previous holder died holding
    /// it; never `Timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// let guard = lock.acquire().map_err(|e| e.to_string())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        self.acquire_inner(true, None)
    }

    /// Acquires only if free now (CPython's `acquire(False)`).
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] if held; [`AcquireError::OwnerDied`] as [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// assert!(lock.try_acquire().is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_acquire(&self) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        self.acquire_inner(false, None)
    }

    /// Waits at most `timeout` (CPython's `acquire(timeout=...)`).
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] when the time is up; [`AcquireError::OwnerDied`] as
    /// [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// use std::time::Duration;
    /// let lock = multiproc::Lock::new()?;
    /// let _held = lock.acquire_timeout(Duration::from_millis(10));
    /// assert!(lock.acquire_timeout(Duration::from_millis(10)).is_err());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, AcquireError<LockGuard<'_>>> {
        self.acquire_inner(true, Some(timeout))
    }

    /// Releases a lock held without a guard ([`LockGuard::forget`]), from any thread or
    /// process.
    ///
    /// # Errors
    ///
    /// [`SyncError::ReleasedTooManyTimes`] if it is not locked.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// assert_eq!(
    ///     lock.release().unwrap_err().to_string(),
    ///     "semaphore or lock released too many times"
    /// );
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn release(&self) -> Result<(), SyncError> {
        self.tid().store(0, Ordering::Relaxed);
        if self.raw().unlock() {
            Ok(())
        } else {
            Err(SyncError::ReleasedTooManyTimes)
        }
    }

    /// Whether someone holds it now.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// assert!(!lock.is_locked());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn is_locked(&self) -> bool {
        self.raw().owner() != 0
    }

    /// The holder as `(pid, thread id)`, if held.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// let _g = lock.acquire();
    /// assert_eq!(lock.owner().map(|o| o.0), Some(std::process::id()));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn owner(&self) -> Option<(u32, u32)> {
        let pid = self.raw().owner();
        (pid != 0).then(|| (pid, self.tid().load(Ordering::Relaxed)))
    }

    /// Whether the calling thread holds it.
    pub(crate) fn is_mine(&self) -> bool {
        self.owner() == Some(sys::caller())
    }
}

// ---------------------------------------------------------------------------------------------
// RLock

/// A recursive lock shared between processes: CPython's `multiprocessing.RLock`. Its owner
/// is a thread of a process, which may acquire it again; it is free once released as often.
///
/// If the owning process dies, the next acquirer gets it with
/// [`AcquireError::OwnerDied`] (count 1).
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let lock = multiproc::RLock::new()?;
/// let a = lock.acquire().map_err(|e| e.to_string())?;
/// let b = lock.acquire().map_err(|e| e.to_string())?;
/// assert_eq!(lock.count(), 2);
/// drop((a, b));
/// assert_eq!(lock.owner(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    seg: Arc<Segment>,
}

travels_as_segment!(RLock, Kind::RLock);

/// Holds one level of an [`RLock`]; releases it on drop. It stays on the thread that
/// acquired it:
///
/// ```compile_fail
/// # multiproc::init();
/// let lock = multiproc::RLock::new().unwrap();
/// let guard = lock.acquire().ok().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard)); // error: `*const ()` cannot be sent between threads
/// });
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    /// Not `Send`: an RLock belongs to the thread that acquired it, so its guard must be
    /// dropped there (as `std::sync::MutexGuard`).
    _owner_thread: std::marker::PhantomData<*const ()>,
}

impl RLockGuard<'_> {
    /// Keeps this level held after the guard is gone (release it with [`RLock::release`],
    /// from the same thread).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// multiproc::RLockGuard::forget(lock.acquire().map_err(|e| e.to_string())?);
    /// lock.release()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn forget(guard: Self) {
        std::mem::forget(guard);
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}

impl RLock {
    /// Makes a new, unlocked recursive lock.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new() -> Result<Self, ShmError> {
        Ok(Self {
            seg: new_segment(Kind::RLock, 3)?,
        })
    }

    /// Its state word, as the mutex protocol (also for `Condition`).
    pub(crate) fn raw(&self) -> RawMutex<'_> {
        RawMutex {
            state: self.seg.word(0),
        }
    }

    fn tid(&self) -> &AtomicU32 {
        self.seg.word(1)
    }

    fn count_word(&self) -> &AtomicU32 {
        self.seg.word(2)
    }

    /// Acquires, waiting until `timeout` (`None`: forever) or not at all (`block` false).
    pub(crate) fn acquire_inner(
        &self,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        let guard = || RLockGuard {
            lock: self,
            _owner_thread: std::marker::PhantomData,
        };
        let (pid, tid) = sys::caller();
        if self.raw().owner() == pid && self.tid().load(Ordering::Relaxed) == tid {
            self.count_word().fetch_add(1, Ordering::Relaxed);
            return Ok(guard());
        }
        acquire_with(&self.raw(), pid, block, timeout, || {
            self.tid().store(tid, Ordering::Relaxed);
            self.count_word().store(1, Ordering::Relaxed);
            guard()
        })
    }

    /// Waits as long as it takes; an owner acquires again at once.
    ///
    /// # Errors
    ///
    /// [`AcquireError::OwnerDied`] (holding the guard) if the previous owner died.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// let _g = lock.acquire().map_err(|e| e.to_string())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&self) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        self.acquire_inner(true, None)
    }

    /// Acquires only if free now or already ours.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] if another thread holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// assert!(lock.try_acquire().is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_acquire(&self) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        self.acquire_inner(false, None)
    }

    /// Waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] when the time is up.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// assert!(lock.acquire_timeout(std::time::Duration::from_millis(5)).is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, AcquireError<RLockGuard<'_>>> {
        self.acquire_inner(true, Some(timeout))
    }

    /// Releases one level held by the calling thread.
    ///
    /// # Errors
    ///
    /// [`SyncError::NotOwner`] if the calling thread does not hold it.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// assert_eq!(
    ///     lock.release().unwrap_err().to_string(),
    ///     "attempt to release recursive lock not owned by thread"
    /// );
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn release(&self) -> Result<(), SyncError> {
        if !self.is_mine() {
            return Err(SyncError::NotOwner);
        }
        let left = self.count_word().load(Ordering::Relaxed).saturating_sub(1);
        self.count_word().store(left, Ordering::Relaxed);
        if left == 0 {
            self.tid().store(0, Ordering::Relaxed);
            self.raw().unlock();
        }
        Ok(())
    }

    /// The owner as `(pid, thread id)`, if held.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// assert_eq!(lock.owner(), None);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn owner(&self) -> Option<(u32, u32)> {
        let pid = self.raw().owner();
        (pid != 0).then(|| (pid, self.tid().load(Ordering::Relaxed)))
    }

    /// How many times the owner holds it (0 when free).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::RLock::new()?;
    /// assert_eq!(lock.count(), 0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn count(&self) -> u32 {
        if self.raw().owner() == 0 {
            0
        } else {
            self.count_word().load(Ordering::Relaxed)
        }
    }

    /// Whether the calling thread owns it.
    pub(crate) fn is_mine(&self) -> bool {
        self.owner() == Some(sys::caller())
    }

    /// Releases every level (for `Condition::wait`); returns how many.
    pub(crate) fn release_all(&self) -> u32 {
        let n = self.count_word().swap(0, Ordering::Relaxed);
        self.tid().store(0, Ordering::Relaxed);
        self.raw().unlock();
        n
    }

    /// Takes the lock back with `count` levels (after `Condition::wait`); true if its
    /// holder had died.
    pub(crate) fn reacquire(&self, count: u32) -> bool {
        let died = keep_held(self.acquire());
        self.count_word().store(count.max(1), Ordering::Relaxed);
        died
    }
}

impl Lock {
    /// Releases (for `Condition::wait`).
    pub(crate) fn release_for_wait(&self) {
        self.tid().store(0, Ordering::Relaxed);
        self.raw().unlock();
    }

    /// Takes the lock back after `Condition::wait`; true if its holder had died.
    pub(crate) fn reacquire(&self) -> bool {
        keep_held(self.acquire())
    }
}

/// Keeps a lock held without its guard (`Condition` releases it by hand); true if it was
/// taken from a dead holder.
fn keep_held<G>(r: Result<G, AcquireError<G>>) -> bool {
    match r {
        Ok(g) => {
            std::mem::forget(g);
            false
        }
        Err(e) => {
            if let Some(g) = e.into_guard() {
                std::mem::forget(g);
            }
            true
        }
    }
}
