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
//! | 6 `rounds` | rounds released so far (wrapping) |
//! | 7.. `inside` | one word per party: the pid of a party inside `wait` (counted in `count`), or 0 |
//!
//! A waiter remembers `rounds` as it enters: once it moved, its round was released and the
//! waiter returns its index, even if the barrier was aborted or reset before the waiter woke
//! to see the state say so (with processes, waking takes tens of microseconds: a party that
//! leaves first and aborts at once must not turn the round's release into a break for the
//! others).
//!
//! **A party's death.** Every party inside `wait` holds a slot with its pid. After each
//! [`DEATH_CHECK`](super::DEATH_CHECK) asleep, a waiter checks that the process of the next
//! occupied slot after its own still lives (one check per party, however many parties); a
//! waiter kept out by a round that does not finish draining, [`Barrier::reset`], and whoever
//! finds the internal lock's holder dead check every slot. A dead party is taken out of
//! `count`, and if its round was still filling, the barrier breaks (the round can never be
//! complete). So no waiter hangs on a dead party, timeout or not, and a reset makes the
//! barrier usable again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::{Got, RawMutex, new_segment, travels_as_segment};
use super::{DEATH_CHECK, SyncError, next_sleep};
use crate::ShmError;
use crate::callable::{self, Callable, CallableSpec};
use crate::shm::segment::{self, Kind, Segment};
use crate::sys;

const FILLING: u32 = 0;
const DRAINING: u32 = 1;
const RESETTING: u32 = 2;
const BROKEN: u32 = 3;
const NO_TIMEOUT: u32 = u32::MAX;
/// The first word of the `inside` slots.
const SLOTS: usize = 7;

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
            .map_err(crate::codec::ser_error)?;
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
        if !callable::in_trusted_decoding() {
            return Err(crate::codec::de_error(
                "a Barrier with an action can reach another process only as a Process \
                 argument (an action is code: from any other source it could name any \
                 address)",
            ));
        }
        if w.build != callable::build_identity() {
            return Err(crate::codec::de_error(
                "a Barrier's action cannot go to a process running another build",
            ));
        }
        let c = Callable::from_spec(w.spec).map_err(crate::codec::de_error)?;
        Ok(Self(c.as_action()))
    }
}

/// Parties wait until all have arrived: CPython's `multiprocessing.Barrier`.
///
/// Exactly one waiter of each round gets index 0; the last to arrive runs the action (a plain
/// `fn()`) before any is released. A waiter that times out breaks the barrier for all, and so
/// does a party that dies inside `wait`; [`reset`](Self::reset) makes it usable again.
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
        let parties = self.parties.max(1);
        let seg = new_segment(Kind::Barrier, SLOTS + parties as usize)?;
        seg.word(4).store(parties, Ordering::Relaxed);
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
            self.remove_the_dead();
        }
        Held { b: self }
    }

    fn slot(&self, i: u32) -> &AtomicU32 {
        self.w(SLOTS + i as usize)
    }

    /// Records `pid` as inside `wait` (the internal lock held; there is always a free slot,
    /// since at most `parties` are inside at once); returns the slot.
    fn take_slot(&self, pid: u32) -> Option<u32> {
        let i = (0..self.parties()).find(|&i| self.slot(i).load(Ordering::Relaxed) == 0)?;
        self.slot(i).store(pid, Ordering::Relaxed);
        Some(i)
    }

    /// Frees one slot of `pid` (the internal lock held).
    fn free_slot(&self, pid: u32) {
        if let Some(i) = (0..self.parties()).find(|&i| self.slot(i).load(Ordering::Relaxed) == pid)
        {
            self.slot(i).store(0, Ordering::Relaxed);
        }
    }

    /// Takes parties whose process is gone out of the count (the internal lock held): a
    /// filling round breaks, a draining or resetting one may end.
    fn remove_the_dead(&self) {
        self.remove_dead_among(0..self.parties());
    }

    /// As [`remove_the_dead`](Self::remove_the_dead), looking only at the first occupied
    /// slot after `mine` that another process holds: each waiter watches its successor, so a
    /// long wait costs one check per party, not one per pair.
    fn check_successor(&self, mine: u32) {
        let me = sys::caller().0;
        let n = self.parties();
        let next = (1..n).map(|k| (mine + k) % n).find(|&i| {
            let pid = self.slot(i).load(Ordering::Relaxed);
            pid != 0 && pid != me
        });
        if let Some(i) = next {
            self.remove_dead_among(i..i + 1);
        }
    }

    fn remove_dead_among(&self, slots: std::ops::Range<u32>) {
        let me = sys::caller().0;
        let mut removed = 0;
        for i in slots {
            let pid = self.slot(i).load(Ordering::Relaxed);
            if pid != 0 && pid != me && !sys::process_alive(pid) {
                self.slot(i).store(0, Ordering::Relaxed);
                removed += 1;
            }
        }
        if removed == 0 {
            return;
        }
        let left = self.count().load(Ordering::Relaxed).saturating_sub(removed);
        self.count().store(left, Ordering::Relaxed);
        match self.state() {
            FILLING => self.set_state(BROKEN),
            DRAINING | RESETTING if left == 0 => self.set_state(FILLING),
            _ => self.notify_all(),
        }
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

    fn rounds(&self) -> u32 {
        self.w(6).load(Ordering::Relaxed)
    }

    /// Sleeps (the internal lock released) until `done` holds or the deadline passes; false
    /// on timeout. Called and returns with the lock held. After each [`DEATH_CHECK`] asleep,
    /// looks for dead parties: the successor of slot `mine`, or every slot for a waiter not
    /// yet inside a round (its wait is short unless a dead party keeps a round draining).
    fn wait_while<'a>(
        &'a self,
        held: Held<'a>,
        mut done: impl FnMut(&Self) -> bool,
        deadline: Option<Instant>,
        mine: Option<u32>,
    ) -> (Held<'a>, bool) {
        let mut held = held;
        let mut last_check = Instant::now();
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
            if last_check.elapsed() >= DEATH_CHECK {
                match mine {
                    Some(i) => self.check_successor(i),
                    None => self.remove_the_dead(),
                }
                last_check = Instant::now();
            }
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
        // Bounded by the slots the segment holds (and at least 1), whatever a corrupt
        // segment's word says.
        let room =
            (self.cells.seg.size().saturating_sub(segment::HEADER_LEN) / 4).saturating_sub(SLOTS);
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        self.w(4).load(Ordering::Relaxed).min(room).max(1)
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
    /// waiter timed out, the action panicked, a party died inside `wait`, noticed within
    /// about [`DEATH_CHECK`](super::DEATH_CHECK)).
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
            None,
        );
        if !entered || self.state() == BROKEN {
            if !entered {
                self.set_state(BROKEN);
            }
            return Err(SyncError::BrokenBarrier);
        }
        let index = self.count().fetch_add(1, Ordering::Relaxed);
        let pid = sys::caller().0;
        let mine = self.take_slot(pid);
        let round = self.rounds();
        // `>=`: a corrupt count past `parties` releases rather than waits for a party that
        // cannot come (never more than `parties` are inside otherwise).
        let (held, result) = if index.saturating_add(1) >= self.parties() {
            (held, self.release_round().map(|()| index))
        } else {
            let released = |b: &Self| b.rounds() != round;
            let (held, ok) = self.wait_while(
                held,
                |b| released(b) || b.state() != FILLING,
                deadline,
                mine,
            );
            let r = if released(self) {
                Ok(index)
            } else if !ok {
                self.set_state(BROKEN);
                Err(SyncError::BrokenBarrier)
            } else {
                Err(SyncError::BrokenBarrier)
            };
            (held, r)
        };
        // Leave: the last one out of a draining or resetting round reopens the barrier.
        self.free_slot(pid);
        let left = self
            .count()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(1))
            })
            .unwrap_or_else(|c| c)
            .saturating_sub(1);
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
        self.w(6).fetch_add(1, Ordering::Relaxed);
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
        self.remove_the_dead();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_words_neither_panic_nor_reach_past_the_slots() {
        let b = Barrier::new(2).unwrap();
        // A parties word far past the slots the segment holds.
        b.w(4).store(u32::MAX, Ordering::Relaxed);
        assert_eq!(b.parties(), 2);
        b.w(4).store(0, Ordering::Relaxed);
        assert_eq!(b.parties(), 1);
        b.w(4).store(2, Ordering::Relaxed);
        // A count word at its maximum: `index + 1` must not overflow; the round releases.
        b.count().store(u32::MAX, Ordering::Relaxed);
        assert_eq!(
            b.wait_timeout(Duration::from_millis(10)).ok(),
            Some(u32::MAX)
        );
        // A count word of 0 when a party leaves: `count - 1` must not underflow.
        b.reset();
        b.count().store(0, Ordering::Relaxed);
        b.w(1).store(FILLING, Ordering::Relaxed);
        let other = {
            let b = b.clone();
            std::thread::spawn(move || b.wait_timeout(Duration::from_secs(5)))
        };
        while b.count().load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        b.count().store(0, Ordering::Relaxed); // corrupted while the party waits
        b.abort();
        assert!(other.join().unwrap().is_err());
        assert_eq!(b.count().load(Ordering::Relaxed), 0);
    }
}
