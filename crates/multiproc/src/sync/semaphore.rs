//! [`Semaphore`] and [`BoundedSemaphore`].
//!
//! | word | meaning |
//! |---|---|
//! | 0 `value` | the counter; sleepers wait for it to leave 0 |
//! | 1 `sleepers` | how many may sleep on `value` (a release wakes one if any) |
//! | 2 `bound` | the largest value a release may reach (`u32::MAX`: unbounded) |

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{new_segment, travels_as_segment};
use super::{SyncError, deadline, next_sleep};
use crate::ShmError;
use crate::shm::segment::{self, Kind, Segment};
use crate::sys;

/// A counting semaphore shared between processes: CPython's `multiprocessing.Semaphore`.
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let s = multiproc::Semaphore::new(2)?;
/// assert!(s.try_acquire());
/// assert!(s.try_acquire());
/// assert!(!s.try_acquire());
/// s.release()?;
/// assert_eq!(s.get_value(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    seg: Arc<Segment>,
}

travels_as_segment!(Semaphore, Kind::Semaphore);

/// A semaphore whose value may never exceed its initial value: CPython's
/// `multiprocessing.BoundedSemaphore`.
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let s = multiproc::BoundedSemaphore::new(1)?;
/// assert_eq!(
///     s.release().unwrap_err().to_string(),
///     "semaphore or lock released too many times"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoundedSemaphore {
    inner: Semaphore,
}

impl Semaphore {
    /// A semaphore with `value` permits.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Semaphore::new(3)?.get_value(), 3);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new(value: u32) -> Result<Self, ShmError> {
        Self::with_bound(value, u32::MAX)
    }

    fn with_bound(value: u32, bound: u32) -> Result<Self, ShmError> {
        let seg = new_segment(Kind::Semaphore, 3)?;
        seg.word(0).store(value, Ordering::Relaxed);
        seg.word(2).store(bound, Ordering::Relaxed);
        Ok(Self { seg })
    }

    fn value(&self) -> &AtomicU32 {
        self.seg.word(0)
    }

    fn sleepers(&self) -> &AtomicU32 {
        self.seg.word(1)
    }

    fn take(&self) -> bool {
        let v = self.value();
        let mut cur = v.load(Ordering::Relaxed);
        while cur > 0 {
            match v.compare_exchange_weak(cur, cur - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    fn acquire_until(&self, timeout: Option<Duration>) -> bool {
        if self.take() {
            return true;
        }
        let deadline = deadline(timeout);
        loop {
            self.sleepers().fetch_add(1, Ordering::SeqCst);
            let sleep = next_sleep(deadline);
            if let Some(d) = sleep {
                sys::futex_wait(self.value(), 0, Some(d));
            }
            self.sleepers().fetch_sub(1, Ordering::SeqCst);
            if self.take() {
                return true;
            }
            if sleep.is_none() {
                return false;
            }
        }
    }

    /// Takes a permit, waiting as long as it takes.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let s = multiproc::Semaphore::new(1)?;
    /// s.acquire();
    /// assert_eq!(s.get_value(), 0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire(&self) {
        self.acquire_until(None);
    }

    /// Takes a permit if one is free now (CPython's `acquire(False)`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(!multiproc::Semaphore::new(0)?.try_acquire());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_acquire(&self) -> bool {
        self.take()
    }

    /// Takes a permit, waiting at most `timeout`; false if none came.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let s = multiproc::Semaphore::new(0)?;
    /// assert!(!s.acquire_timeout(std::time::Duration::from_millis(10)));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.acquire_until(Some(timeout))
    }

    /// Gives a permit back, waking one waiter.
    ///
    /// # Errors
    ///
    /// [`SyncError::ReleasedTooManyTimes`] past the bound (a [`BoundedSemaphore`]'s initial
    /// value, or `u32::MAX`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let s = multiproc::Semaphore::new(0)?;
    /// s.release()?;
    /// assert_eq!(s.get_value(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(&self) -> Result<(), SyncError> {
        let bound = self.seg.word(2).load(Ordering::Relaxed);
        let v = self.value();
        let mut cur = v.load(Ordering::Relaxed);
        loop {
            if cur >= bound {
                return Err(SyncError::ReleasedTooManyTimes);
            }
            match v.compare_exchange_weak(cur, cur + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if self.sleepers().load(Ordering::SeqCst) > 0 {
            sys::futex_wake(v, 1);
        }
        Ok(())
    }

    /// The number of free permits now (CPython's `get_value()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Semaphore::new(5)?.get_value(), 5);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn get_value(&self) -> u32 {
        self.value().load(Ordering::Relaxed)
    }
}

impl BoundedSemaphore {
    /// A semaphore with `value` permits that refuses to go above `value`.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::BoundedSemaphore::new(3)?.get_value(), 3);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new(value: u32) -> Result<Self, ShmError> {
        Ok(Self {
            inner: Semaphore::with_bound(value, value)?,
        })
    }

    /// As [`Semaphore::acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// multiproc::BoundedSemaphore::new(1)?.acquire();
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire(&self) {
        self.inner.acquire();
    }

    /// As [`Semaphore::try_acquire`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(multiproc::BoundedSemaphore::new(1)?.try_acquire());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_acquire(&self) -> bool {
        self.inner.try_acquire()
    }

    /// As [`Semaphore::acquire_timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let s = multiproc::BoundedSemaphore::new(0)?;
    /// assert!(!s.acquire_timeout(std::time::Duration::ZERO));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.inner.acquire_timeout(timeout)
    }

    /// As [`Semaphore::release`], refusing to pass the initial value.
    ///
    /// # Errors
    ///
    /// [`SyncError::ReleasedTooManyTimes`], the value unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let s = multiproc::BoundedSemaphore::new(1)?;
    /// s.acquire();
    /// s.release()?;
    /// assert!(s.release().is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(&self) -> Result<(), SyncError> {
        self.inner.release()
    }

    /// As [`Semaphore::get_value`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::BoundedSemaphore::new(2)?.get_value(), 2);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn get_value(&self) -> u32 {
        self.inner.get_value()
    }
}
