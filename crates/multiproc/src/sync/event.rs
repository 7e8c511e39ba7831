//! [`Event`].
//!
//! | word | meaning |
//! |---|---|
//! | 0 `state` | bit 0: the flag; bits 1..: how many times it was set (wrapping) |
//! | 1 `sleepers` | how many may sleep on `state` (a set wakes them all if any) |
//!
//! A waiter remembers `state` as it found it (flag clear) and returns true once it differs:
//! a `set` happened since the wait began, even if a `clear` followed before the waiter ran
//! (Python's rule). It sleeps on `state` with that value, so a set-and-clear wakes it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{new_segment, travels_as_segment};
use super::{before_sleeping, deadline, next_sleep};
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

    fn state(&self) -> &AtomicU32 {
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
        // Flag set and one more set counted, unless already set (then no one is waiting for
        // this set: every waiter began while it was clear and has seen the earlier one).
        let changed = self
            .state()
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |s| {
                (s & SET == 0).then(|| (s | SET).wrapping_add(2))
            })
            .is_ok();
        if changed && self.sleepers().load(Ordering::SeqCst) > 0 {
            sys::futex_wake(self.state(), u32::MAX);
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
        self.state().fetch_and(!SET, Ordering::SeqCst);
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
        self.state().load(Ordering::Acquire) & SET != 0
    }

    /// Waits until the flag is set (or is set and cleared again meanwhile); returns true
    /// (CPython's `wait()`).
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

    /// Waits at most `timeout`; returns whether the flag was set before the wait began or
    /// while it lasted (even if cleared again since), as Python's `wait(timeout)`.
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
        let start = self.state().load(Ordering::Acquire);
        if start & SET != 0 {
            return true;
        }
        let set_since = || self.state().load(Ordering::Acquire) != start;
        let deadline = deadline(timeout);
        if before_sleeping(sys::may_spin(), deadline, set_since) {
            return true;
        }
        loop {
            self.sleepers().fetch_add(1, Ordering::SeqCst);
            let sleep = next_sleep(deadline);
            if let Some(d) = sleep {
                // In slices even without a deadline: a setter killed between its change and
                // its wake costs a waiter at most a slice.
                sys::futex_wait(self.state(), start, Some(d));
            }
            self.sleepers().fetch_sub(1, Ordering::SeqCst);
            if set_since() {
                return true;
            }
            if sleep.is_none() {
                return false;
            }
        }
    }
}

/// The flag's bit in `state`.
const SET: u32 = 1;
