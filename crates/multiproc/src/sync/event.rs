//! [`Event`]: word 0 is the flag (0 or 1), word 1 counts possible sleepers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{new_segment, travels_as_segment};
use super::{deadline, next_sleep};
use crate::ShmError;
use crate::shm::segment::{self, Kind, Segment};
use crate::sys;

/// A flag processes can wait for: CPython's `multiprocessing.Event`.
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let e = multiproc::Event::new()?;
/// assert!(!e.wait_timeout(std::time::Duration::from_millis(1)));
/// e.set();
/// assert!(e.is_set() && e.wait_timeout(std::time::Duration::ZERO));
/// # Ok::<(), multiproc::ShmError>(())
/// ```
#[derive(Clone)]
pub struct Event {
    seg: Arc<Segment>,
}

travels_as_segment!(Event, Kind::Event);

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(!multiproc::Event::new()?.is_set());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new() -> Result<Self, ShmError> {
        Ok(Self {
            seg: new_segment(Kind::Event, 2)?,
        })
    }

    fn flag(&self) -> &AtomicU32 {
        self.seg.word(0)
    }

    fn sleepers(&self) -> &AtomicU32 {
        self.seg.word(1)
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let e = multiproc::Event::new()?;
    /// e.set();
    /// assert!(e.is_set());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn set(&self) {
        self.flag().store(1, Ordering::SeqCst);
        if self.sleepers().load(Ordering::SeqCst) > 0 {
            sys::futex_wake(self.flag(), u32::MAX);
        }
    }

    /// Clears the flag.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let e = multiproc::Event::new()?;
    /// e.set();
    /// e.clear();
    /// assert!(!e.is_set());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn clear(&self) {
        self.flag().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(!multiproc::Event::new()?.is_set());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::Acquire) == 1
    }

    /// Waits until the flag is set; returns true (CPython's `wait()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let e = multiproc::Event::new()?;
    /// e.set();
    /// assert!(e.wait());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn wait(&self) -> bool {
        self.wait_until(None)
    }

    /// Waits at most `timeout`; returns whether the flag is set.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let e = multiproc::Event::new()?;
    /// assert!(!e.wait_timeout(std::time::Duration::from_millis(5)));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(timeout))
    }

    fn wait_until(&self, timeout: Option<Duration>) -> bool {
        if self.is_set() {
            return true;
        }
        if sys::cpus_allowed() > 1 {
            // A short spin: waking a sleeper on another CPU costs tens of microseconds.
            let start = std::time::Instant::now();
            while start.elapsed() < SPIN && timeout.is_none_or(|t| start.elapsed() < t) {
                if self.is_set() {
                    return true;
                }
                std::hint::spin_loop();
            }
        }
        let deadline = deadline(timeout);
        loop {
            self.sleepers().fetch_add(1, Ordering::SeqCst);
            let sleep = next_sleep(deadline);
            if let Some(d) = sleep {
                sys::futex_wait(self.flag(), 0, Some(d));
            }
            self.sleepers().fetch_sub(1, Ordering::SeqCst);
            if self.is_set() {
                return true;
            }
            if sleep.is_none() {
                return false;
            }
        }
    }
}

/// How long a waiter spins before it sleeps, when it may run on more than one CPU.
const SPIN: Duration = Duration::from_micros(20);
