//! [`Array`] and [`RawArray`]: CPython's `multiprocessing.Array` and `RawArray`, over the
//! [`Slots`] of `value.rs` (same layout, same chunked atomic copies).
//!
//! **The guard word.** An Array's guard ([`Array::lock`]) hands out `&mut [T]` straight into
//! shared memory (a fill of a million elements runs at memory speed), so nothing else may
//! touch the elements while it lives. The lock alone cannot promise that: a plain
//! [`Lock`](crate::Lock) may be released by anyone, an [`RLock`] level by its owner, while the
//! guard lives. So the exclusion is the *guard word* (a `u64` at byte 64 of the segment):
//! `pid << 32 | thread id` of its holder, with bit 63 set for a guard, or 0. A guard and
//! every locked call (after taking the lock, as before) claim it with a compare-and-swap from
//! 0 and clear it when done; while it names another live holder they wait (a guard within
//! its timeout), and while it names the caller's own guard they refuse
//! ([`ArrayError::GuardHeld`], [`ArrayLockError::HeldByCaller`]). A word whose holder's
//! process is gone is taken over (a guard that does so reports
//! [`ArrayLockError::OwnerDied`]). The word is never cleared while it names a live holder.
//!
//! **The atomic operations** take no lock and claim no word: they count themselves in an
//! *in-flight* counter (a `u64` at byte 72), then read the guard word (both `SeqCst`); with
//! no guard bit they run and count themselves out, else they count themselves out and wait
//! for the guard to go. A guard, after publishing its word (`SeqCst`), waits for the counter
//! to drain before it hands out the slice. Either the guard's read of the counter sees an
//! operation (and waits for it), or the operation's read of the word sees the guard (and
//! waits for it): no operation ever overlaps a guard's slice. This costs an operation two
//! read-modify-writes on one shared line, where taking the lock would cost as much and make
//! it wait for every locked call too. (A process killed in the few instructions between an
//! operation's count in and out would leave the counter raised, and later guards would wait
//! for it; a [`lock_timeout`](Array::lock_timeout) still returns.)
//!
//! # Safety
//!
//! This file opts in to `unsafe` for the slices an [`ArrayGuard`] derefs to and that
//! [`RawArray::as_slice`] and [`RawArray::as_mut_slice`] hand out (pointers from [`Slots`],
//! which keep the mapping alive and hold `len` elements), and for the atomic operations on
//! elements ([`atomic_op`], whose preconditions `Slots::at` provides).
#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, Deref, DerefMut, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ShmError;
use super::segment::Kind;
use super::value::{
    AtomicElement, AtomicNumber, Element, GUARD_OFFSET, IN_FLIGHT_OFFSET, Init, Slots, SlotsOf,
    ValueLock, ValueLockGuard, atomic_op,
};
use crate::sync::{AcquireError, RLock};
use crate::sys;

/// Why an operation on an [`Array`] or [`RawArray`] failed.
///
/// # Examples
///
/// ```
/// use multiproc::{Array, ArrayError};
/// # multiproc::init();
/// let a = Array::from_slice(&[1, 2, 3])?;
/// assert!(matches!(a.get(3), Err(ArrayError::IndexOutOfRange { index: 3, len: 3 })));
/// assert_eq!(a.set(5, 0).unwrap_err().to_string(), "invalid index 5 (the array has 3 items)");
/// # Ok::<(), multiproc::ShmError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    /// An index past the end (CPython's `IndexError: invalid index`).
    #[error("invalid index {index} (the array has {len} items)")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The array's length.
        len: usize,
    },
    /// A range that does not lie within the array.
    #[error("range {start}..{end} is outside the array of {len} items")]
    OutOfBounds {
        /// First index asked for.
        start: usize,
        /// One past the last index asked for (`usize::MAX` if that overflows).
        end: usize,
        /// The array's length.
        len: usize,
    },
    /// The calling thread holds a guard on this array ([`Array::lock`]): use the guard, or
    /// drop it first (another access now would alias the guard's slice).
    #[error("the calling thread holds this array's guard: use the guard, or drop it first")]
    GuardHeld,
}

/// Why [`Array::lock`] gave no guard, or gave one with news.
///
/// # Examples
///
/// ```
/// use multiproc::{Array, ArrayLockError};
/// # multiproc::init();
/// let a = Array::from_slice(&[0u8; 4])?;
/// let g = a.lock().map_err(|e| e.to_string())?;
/// assert!(matches!(a.lock(), Err(ArrayLockError::HeldByCaller)));
/// drop(g);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub enum ArrayLockError<G> {
    /// Not acquired: another thread or process held it (a non-blocking try) or the timeout
    /// passed.
    Timeout,
    /// Acquired, but the previous holder died holding it: the elements may be half updated.
    /// The guard is yours; the lock works normally after.
    OwnerDied(G),
    /// Not acquired: the calling thread already holds the lock in a way a guard cannot share:
    /// a guard on this array lives (a second would alias its slice), or the array's lock is
    /// a plain [`Lock`](crate::Lock) the thread holds (taking it again would wait forever).
    HeldByCaller,
}

impl<G> ArrayLockError<G> {
    /// The guard, if the lock was taken over from a dead holder.
    ///
    /// # Examples
    ///
    /// ```
    /// let e: multiproc::ArrayLockError<()> = multiproc::ArrayLockError::Timeout;
    /// assert!(e.into_guard().is_none());
    /// ```
    pub fn into_guard(self) -> Option<G> {
        match self {
            Self::OwnerDied(g) => Some(g),
            Self::Timeout | Self::HeldByCaller => None,
        }
    }
}

impl<G> fmt::Debug for ArrayLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("Timeout"),
            Self::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            Self::HeldByCaller => f.write_str("HeldByCaller"),
        }
    }
}

impl<G> fmt::Display for ArrayLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::OwnerDied(_) => f.write_str("the previous owner died holding the lock"),
            Self::HeldByCaller => f.write_str(
                "the calling thread already holds this array's lock in a way a guard cannot share",
            ),
        }
    }
}

impl<G> std::error::Error for ArrayLockError<G> {}

/// `start..end` of a range over `len` elements.
fn bounds(range: impl RangeBounds<usize>, len: usize) -> Result<(usize, usize), ArrayError> {
    let start = match range.start_bound() {
        Bound::Included(&s) => Some(s),
        Bound::Excluded(&s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => Some(len),
    };
    match (start, end) {
        (Some(s), Some(e)) if s <= e && e <= len => Ok((s, e)),
        (s, e) => Err(ArrayError::OutOfBounds {
            start: s.unwrap_or(usize::MAX),
            end: e.unwrap_or(usize::MAX),
            len,
        }),
    }
}

fn index_error(index: usize, len: usize) -> ArrayError {
    ArrayError::IndexOutOfRange { index, len }
}

fn range_error(start: usize, n: usize, len: usize) -> ArrayError {
    ArrayError::OutOfBounds {
        start,
        end: start.saturating_add(n),
        len,
    }
}

/// The calling thread as the guard word records it.
fn me() -> u64 {
    let (pid, tid) = sys::caller();
    (u64::from(pid) << 32) | u64::from(tid)
}

/// The guard word's mark of a guard (a locked call's claim has it clear).
const GUARD_BIT: u64 = 1 << 63;

/// The process named by a guard word.
fn pid_of(word: u64) -> u32 {
    ((word & !GUARD_BIT) >> 32) as u32
}

/// Words no segment owns (every segment is checked to hold the control line when decoded).
static SPARE_GUARD_WORD: AtomicU64 = AtomicU64::new(0);
static SPARE_IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Waiting for the guard word or the in-flight counter: a short spin, a few yields, then
/// sleeps growing to a millisecond.
struct Backoff {
    round: u32,
}

impl Backoff {
    const SPINS: u32 = 64;
    const YIELDS: u32 = 16;

    fn new() -> Self {
        Self { round: 0 }
    }

    /// Whether waiting reached the sleeps (when checking a holder's life is worth its cost).
    fn sleeping(&self) -> bool {
        self.round >= Self::SPINS + Self::YIELDS
    }

    /// Waits one round; `false` (at once) if `deadline` has passed.
    fn wait(&mut self, deadline: Option<Instant>) -> bool {
        let left = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(l) if !l.is_zero() => Some(l),
                _ => return false,
            },
            None => None,
        };
        if self.round < Self::SPINS {
            std::hint::spin_loop();
        } else if !self.sleeping() {
            std::thread::yield_now();
        } else {
            let step = (self.round - Self::SPINS - Self::YIELDS).min(7);
            let nap = Duration::from_micros(10 << step).min(Duration::from_millis(1));
            std::thread::sleep(left.map_or(nap, |l| l.min(nap)));
        }
        self.round = self.round.saturating_add(1);
        true
    }
}

/// A claim of the guard word (a guard's or a locked call's); cleared on drop, if it still
/// holds (only a takeover from a dead holder could have changed it, and a live claimant's
/// word is never taken over).
struct Claim<'a> {
    word: &'a AtomicU64,
    value: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let _ = self
            .word
            .compare_exchange(self.value, 0, Ordering::SeqCst, Ordering::Relaxed);
    }
}

/// Why a claim of the guard word failed.
enum ClaimError {
    /// The calling thread's own guard holds it.
    Mine,
    /// Another live holder held it past the deadline (or at once, for a try).
    Timeout,
}

/// An atomic operation counted in flight; counted out on drop.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Array

/// A fixed number of `T`s in shared memory, with a lock: CPython's `multiprocessing.Array`.
///
/// - [`get`](Self::get), [`set`](Self::set), [`read`](Self::read), [`write`](Self::write),
///   [`to_vec`](Self::to_vec) and [`fill`](Self::fill) each take the lock for one step
///   (CPython's `a[i]`, `a[i] = x`, `a[i:j]`, `a[i:j] = ...`);
/// - [`lock`](Self::lock) holds it and gives a guard that derefs to `[T]`, in place: loops
///   over the elements run at memory speed;
/// - for the integer and float types, [`fetch_add`](Self::fetch_add) and the other atomic
///   operations change one element without taking the lock.
///
/// The lock is a new [`RLock`] unless given. Clones are handles to the same array. It can be
/// a Process argument or part of any message, under every start method, and decodes only as
/// an `Array` of the same `T`. An array of length 0 is allowed (as in CPython).
///
/// A guard's slice is exclusive whatever else runs: the locked calls and the atomic
/// operations of every thread and process wait for it (or, in its own thread, refuse), even
/// if its lock is released from under it (see the module's documentation on the guard word).
///
/// # Examples
///
/// ```
/// use multiproc::{Array, Process};
///
/// fn square_all(a: Array<i64>) {
///     let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
///     for x in g.iter_mut() {
///         *x *= *x;
///     }
/// }
///
/// # multiproc::init();
/// let a = Array::from_slice(&[1i64, 2, 3, 4])?;
/// let mut p = Process::new(square_all, a.clone());
/// p.start()?;
/// p.join()?;
/// assert_eq!(a.to_vec()?, [1, 4, 9, 16]);
/// assert_eq!(a.read(1..3)?, [4, 9]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T> {
    slots: Slots<T>,
    lock: ValueLock,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Element> Array<T> {
    fn make(init: Init<'_, T>, lock: ValueLock) -> Result<Self, ShmError> {
        Ok(Self {
            slots: Slots::create(Kind::Array, false, init)?,
            lock,
        })
    }

    /// A new array holding a copy of `values`, with its own [`RLock`] (CPython's
    /// `Array(typecode, values)`).
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made ([`ShmError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[1.5f64, 2.5])?;
    /// assert_eq!(a.to_vec()?, [1.5, 2.5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_slice(values: &[T]) -> Result<Self, ShmError> {
        Self::make(Init::Values(values), RLock::new()?.into())
    }

    /// A new array of `len` zeroes, with its own [`RLock`] (CPython's `Array(typecode, len)`).
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made (or `len` elements do not fit in memory).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::<u32>::zeroed(3)?;
    /// assert_eq!(a.to_vec()?, [0, 0, 0]);
    /// assert!(multiproc::Array::<u32>::zeroed(0)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn zeroed(len: usize) -> Result<Self, ShmError> {
        Self::make(Init::Zeroed(len), RLock::new()?.into())
    }

    /// As [`from_slice`](Self::from_slice), guarded by `lock` (a [`Lock`](crate::Lock) or an
    /// [`RLock`], which other objects may share: CPython's `lock=`).
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let lock = multiproc::Lock::new()?;
    /// let a = multiproc::Array::from_slice_with_lock(&[1u8, 2], lock.clone())?;
    /// assert!(matches!(a.get_lock(), multiproc::ValueLock::Lock(_)));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn from_slice_with_lock(
        values: &[T],
        lock: impl Into<ValueLock>,
    ) -> Result<Self, ShmError> {
        Self::make(Init::Values(values), lock.into())
    }

    /// As [`zeroed`](Self::zeroed), guarded by `lock`.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::<i16>::zeroed_with_lock(2, multiproc::RLock::new()?)?;
    /// assert_eq!(a.len(), 2);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn zeroed_with_lock(len: usize, lock: impl Into<ValueLock>) -> Result<Self, ShmError> {
        Self::make(Init::Zeroed(len), lock.into())
    }

    /// The number of elements (fixed when made).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::Array::from_slice(&[7u8; 5])?.len(), 5);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(multiproc::Array::<f32>::from_slice(&[])?.is_empty());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    /// The lock (CPython's `get_lock()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[1u32, 2])?;
    /// let held = a.get_lock().acquire().map_err(|e| e.to_string())?;
    /// // Two steps as one, for everyone who takes the lock:
    /// let first = a.get(0)?;
    /// a.set(1, first + 10)?;
    /// drop(held);
    /// assert_eq!(a.to_vec()?, [1, 11]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_lock(&self) -> &ValueLock {
        &self.lock
    }

    fn guard_word(&self) -> &AtomicU64 {
        self.slots
            .segment()
            .map()
            .atomic_u64(GUARD_OFFSET)
            .unwrap_or(&SPARE_GUARD_WORD)
    }

    fn in_flight(&self) -> &AtomicU64 {
        self.slots
            .segment()
            .map()
            .atomic_u64(IN_FLIGHT_OFFSET)
            .unwrap_or(&SPARE_IN_FLIGHT)
    }

    /// Claims the guard word for `value` (the caller as [`me`], with [`GUARD_BIT`] for a
    /// guard): waits while another live holder has it (until `deadline`; not at all unless
    /// `block`), and takes it over from a holder whose process is gone (then the `bool` is
    /// true).
    fn claim(
        &self,
        value: u64,
        block: bool,
        deadline: Option<Instant>,
    ) -> Result<(Claim<'_>, bool), ClaimError> {
        let word = self.guard_word();
        let mut took_over = false;
        let mut backoff = Backoff::new();
        loop {
            match word.compare_exchange(0, value, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Ok((Claim { word, value }, took_over)),
                Err(w) if w == me() | GUARD_BIT => return Err(ClaimError::Mine),
                Err(w) => {
                    if (!block || backoff.sleeping()) && !sys::process_alive(pid_of(w)) {
                        took_over |= word
                            .compare_exchange(w, 0, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok();
                        continue;
                    }
                    if !block || !backoff.wait(deadline) {
                        return Err(ClaimError::Timeout);
                    }
                }
            }
        }
    }

    /// Whether the calling thread's guard on this array lives (only this thread sets or
    /// clears that value of the word, so the answer stays true while it acts on it).
    fn guard_is_mine(&self) -> bool {
        self.guard_word().load(Ordering::Relaxed) == me() | GUARD_BIT
    }

    /// Runs `f` under the lock and the guard word, unless the calling thread's guard on this
    /// array lives.
    fn locked<R>(&self, f: impl FnOnce(&Slots<T>) -> R) -> Result<R, ArrayError> {
        // Checked before the lock: with its lock released from under it, the caller's own
        // guard would otherwise be waited for while someone else takes the lock.
        if self.guard_is_mine() {
            return Err(ArrayError::GuardHeld);
        }
        let _held = self.lock.hold();
        let (_claim, _) = self
            .claim(me(), true, None)
            .map_err(|_| ArrayError::GuardHeld)?;
        Ok(f(&self.slots))
    }

    /// Element `i`, read under the lock (CPython's `a[i]`).
    ///
    /// # Errors
    ///
    /// [`ArrayError::IndexOutOfRange`] past the end; [`ArrayError::GuardHeld`] if the calling
    /// thread holds a guard on this array.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&['a', 'b'])?;
    /// assert_eq!(a.get(1)?, 'b');
    /// assert!(a.get(2).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, i: usize) -> Result<T, ArrayError> {
        let len = self.len();
        if i >= len {
            return Err(index_error(i, len));
        }
        self.locked(|s| s.get(i))?
            .ok_or_else(|| index_error(i, len))
    }

    /// Sets element `i` under the lock (CPython's `a[i] = v`).
    ///
    /// # Errors
    ///
    /// [`ArrayError::IndexOutOfRange`] past the end (nothing written);
    /// [`ArrayError::GuardHeld`] as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[0u8; 3])?;
    /// a.set(2, 9)?;
    /// assert_eq!(a.to_vec()?, [0, 0, 9]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set(&self, i: usize, v: T) -> Result<(), ArrayError> {
        let len = self.len();
        if i >= len {
            return Err(index_error(i, len));
        }
        if self.locked(|s| s.set(i, v))? {
            Ok(())
        } else {
            Err(index_error(i, len))
        }
    }

    /// A copy of the elements in `range`, read under the lock (CPython's `a[i:j]`).
    ///
    /// # Errors
    ///
    /// [`ArrayError::OutOfBounds`] if the range does not lie within the array (start after
    /// end included); [`ArrayError::GuardHeld`] as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[0, 1, 2, 3, 4])?;
    /// assert_eq!(a.read(1..3)?, [1, 2]);
    /// assert_eq!(a.read(3..)?, [3, 4]);
    /// assert_eq!(a.read(..)?, [0, 1, 2, 3, 4]);
    /// assert!(a.read(4..9).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self, range: impl RangeBounds<usize>) -> Result<Vec<T>, ArrayError> {
        let len = self.len();
        let (start, end) = bounds(range, len)?;
        self.locked(|s| s.read_vec(start, end - start))?
            .ok_or_else(|| range_error(start, end - start, len))
    }

    /// Copies `out.len()` elements from `start` into `out`, under the lock.
    ///
    /// # Errors
    ///
    /// [`ArrayError::OutOfBounds`] if they do not lie within the array (nothing copied);
    /// [`ArrayError::GuardHeld`] as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[5u16, 6, 7])?;
    /// let mut buf = [0u16; 2];
    /// a.read_into(1, &mut buf)?;
    /// assert_eq!(buf, [6, 7]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_into(&self, start: usize, out: &mut [T]) -> Result<(), ArrayError> {
        let len = self.len();
        if self.locked(|s| s.read_into(start, out))? {
            Ok(())
        } else {
            Err(range_error(start, out.len(), len))
        }
    }

    /// Copies `values` into the elements from `start`, under the lock (CPython's
    /// `a[i:j] = values`).
    ///
    /// # Errors
    ///
    /// [`ArrayError::OutOfBounds`] if they do not fit (nothing written);
    /// [`ArrayError::GuardHeld`] as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::<i32>::zeroed(4)?;
    /// a.write(1, &[7, 8])?;
    /// assert_eq!(a.to_vec()?, [0, 7, 8, 0]);
    /// assert!(a.write(3, &[1, 2]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&self, start: usize, values: &[T]) -> Result<(), ArrayError> {
        let len = self.len();
        if self.locked(|s| s.write(start, values))? {
            Ok(())
        } else {
            Err(range_error(start, values.len(), len))
        }
    }

    /// A copy of every element, read under the lock (CPython's `a[:]`).
    ///
    /// # Errors
    ///
    /// [`ArrayError::GuardHeld`] as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[true, false])?;
    /// assert_eq!(a.to_vec()?, [true, false]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>, ArrayError> {
        self.read(..)
    }

    /// Sets every element to `v`, under the lock.
    ///
    /// # Errors
    ///
    /// [`ArrayError::GuardHeld`] as [`get`](Self::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::<f64>::zeroed(3)?;
    /// a.fill(0.5)?;
    /// assert_eq!(a.to_vec()?, [0.5; 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fill(&self, v: T) -> Result<(), ArrayError> {
        self.locked(|s| s.fill(v))
    }

    /// Runs the atomic `op` on element `i`: at once, unless a guard on the array lives; then
    /// (another thread's or process's guard) once it is gone, or (the caller's own) not at
    /// all.
    fn atomic<R>(&self, i: usize, op: impl FnOnce(*mut T) -> R) -> Result<R, ArrayError>
    where
        T: AtomicElement,
    {
        let len = self.len();
        if i >= len {
            return Err(index_error(i, len));
        }
        let _counted = self.enter_unguarded()?;
        self.slots.atomic(i, op).ok_or_else(|| index_error(i, len))
    }

    /// Counts the caller in flight once no guard lives (see the module's documentation).
    fn enter_unguarded(&self) -> Result<InFlight<'_>, ArrayError> {
        let (word, counter) = (self.guard_word(), self.in_flight());
        let mut backoff = Backoff::new();
        loop {
            counter.fetch_add(1, Ordering::SeqCst);
            let w = word.load(Ordering::SeqCst);
            if w & GUARD_BIT == 0 {
                return Ok(InFlight(counter));
            }
            counter.fetch_sub(1, Ordering::SeqCst);
            // Wait for the guard without counting in, so its drain is not held up.
            let mut w = w;
            while w & GUARD_BIT != 0 {
                if w == me() | GUARD_BIT {
                    return Err(ArrayError::GuardHeld);
                }
                if backoff.sleeping() && !sys::process_alive(pid_of(w)) {
                    let _ = word.compare_exchange(w, 0, Ordering::SeqCst, Ordering::Relaxed);
                } else {
                    backoff.wait(None);
                }
                w = word.load(Ordering::SeqCst);
            }
        }
    }
}

/// The guard: `T` must be `Pod`, since the guard's slice reads whatever bytes other processes
/// left as `T`s.
impl<T: Element + Pod> Array<T> {
    fn lock_inner(
        &self,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<ArrayGuard<'_, T>, ArrayLockError<ArrayGuard<'_, T>>> {
        // A second guard would alias the first's slice (checked before the lock: the
        // caller's own guard may have had its lock released from under it).
        if self.guard_is_mine() {
            return Err(ArrayLockError::HeldByCaller);
        }
        // Not recursive: a guard could not keep a plain Lock held past the outer holder.
        if matches!(self.lock, ValueLock::Lock(_)) && self.lock.is_mine() {
            return Err(ArrayLockError::HeldByCaller);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let (held, lock_died) = match self.lock.acquire_inner(block, timeout) {
            Ok(g) => (g, false),
            Err(AcquireError::OwnerDied(g)) => (g, true),
            Err(AcquireError::Timeout) => return Err(ArrayLockError::Timeout),
        };
        let (claim, word_died) = match self.claim(me() | GUARD_BIT, block, deadline) {
            Ok(c) => c,
            Err(ClaimError::Mine) => return Err(ArrayLockError::HeldByCaller),
            Err(ClaimError::Timeout) => return Err(ArrayLockError::Timeout),
        };
        // The word is published (SeqCst): atomic operations that count in from now on see
        // it and stay out; wait for those counted in before it to finish.
        let counter = self.in_flight();
        let mut backoff = Backoff::new();
        while counter.load(Ordering::SeqCst) != 0 {
            if !backoff.wait(deadline) {
                return Err(ArrayLockError::Timeout);
            }
        }
        let guard = ArrayGuard {
            array: self,
            _claim: claim,
            _held: held,
            _not_send: PhantomData,
        };
        if lock_died || word_died {
            Err(ArrayLockError::OwnerDied(guard))
        } else {
            Ok(guard)
        }
    }

    /// Holds the lock, waiting as long as it takes, and gives a guard that derefs to the
    /// elements, in place (CPython's `with a.get_lock():` over `a[i]` accesses, at memory
    /// speed).
    ///
    /// While the guard lives, the array's other calls made by this thread refuse with
    /// [`ArrayError::GuardHeld`] (they would alias the guard's slice): use the guard.
    ///
    /// # Errors
    ///
    /// [`ArrayLockError::OwnerDied`] (holding the guard) if the previous holder died holding
    /// the lock: the elements may be half updated. [`ArrayLockError::HeldByCaller`] if this
    /// thread holds a guard on this array already, or holds the plain
    /// [`Lock`](crate::Lock) the array was given. Never `Timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::<f64>::zeroed(1_000)?;
    /// {
    ///     let mut g = a.lock().map_err(|e| e.to_string())?;
    ///     for (i, x) in g.iter_mut().enumerate() {
    ///         *x = i as f64;
    ///     }
    ///     assert!(a.get(0).is_err()); // the guard is the way in while it lives
    /// }
    /// assert_eq!(a.get(999)?, 999.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>, ArrayLockError<ArrayGuard<'_, T>>> {
        self.lock_inner(true, None)
    }

    /// As [`lock`](Self::lock), only if the lock is free now (or the caller's `RLock`).
    ///
    /// # Errors
    ///
    /// [`ArrayLockError::Timeout`] if another thread or process holds it; the others as
    /// [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[1u8])?;
    /// assert!(a.try_lock().is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_lock(&self) -> Result<ArrayGuard<'_, T>, ArrayLockError<ArrayGuard<'_, T>>> {
        self.lock_inner(false, None)
    }

    /// As [`lock`](Self::lock), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ArrayLockError::Timeout`] when the time is up; the others as [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::Array::from_slice(&[1u8])?;
    /// assert!(a.lock_timeout(std::time::Duration::from_millis(10)).is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ArrayGuard<'_, T>, ArrayLockError<ArrayGuard<'_, T>>> {
        self.lock_inner(true, Some(timeout))
    }
}

macro_rules! element_atomics {
    ($what:literal, $check:ident) => {
        /// Reads element `i` atomically, without the lock.
        ///
        /// # Errors
        ///
        /// [`ArrayError::IndexOutOfRange`] past the end.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let a = multiproc::", $what, "::from_slice(&[3u32, 4])?;")]
        /// assert_eq!(a.load(1)?, 4);
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn load(&self, i: usize) -> Result<T, ArrayError>
        where
            T: AtomicElement,
        {
            self.$check(i, |p| atomic_op!(p, atomic_load()))
        }

        /// Writes element `i` atomically, without the lock.
        ///
        /// # Errors
        ///
        /// [`ArrayError::IndexOutOfRange`] past the end.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let a = multiproc::", $what, "::<u32>::zeroed(2)?;")]
        /// a.store(0, 8)?;
        /// assert_eq!(a.load(0)?, 8);
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn store(&self, i: usize, v: T) -> Result<(), ArrayError>
        where
            T: AtomicElement,
        {
            self.$check(i, |p| atomic_op!(p, atomic_store(v)))
        }

        /// Writes element `i` atomically, without the lock, and returns its previous value.
        ///
        /// # Errors
        ///
        /// [`ArrayError::IndexOutOfRange`] past the end.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let a = multiproc::", $what, "::from_slice(&[false, true])?;")]
        /// assert!(!a.swap(0, true)?);
        /// assert!(a.load(0)?);
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn swap(&self, i: usize, v: T) -> Result<T, ArrayError>
        where
            T: AtomicElement,
        {
            self.$check(i, |p| atomic_op!(p, atomic_swap(v)))
        }

        /// Writes `new` into element `i` if it is `current` (bitwise), atomically, without
        /// the lock: `Ok(previous)` if it was, `Err(actual)` (nothing written) if not.
        ///
        /// # Errors
        ///
        /// [`ArrayError::IndexOutOfRange`] past the end (the outer `Result`).
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let a = multiproc::", $what, "::from_slice(&[1i8, 2])?;")]
        /// assert_eq!(a.compare_exchange(0, 1, 5)?, Ok(1));
        /// assert_eq!(a.compare_exchange(1, 1, 5)?, Err(2));
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn compare_exchange(
            &self,
            i: usize,
            current: T,
            new: T,
        ) -> Result<Result<T, T>, ArrayError>
        where
            T: AtomicElement,
        {
            self.$check(i, |p| atomic_op!(p, atomic_compare_exchange(current, new)))
        }

        /// Adds `x` to element `i` atomically, without the lock, and returns its previous
        /// value. Integers wrap on overflow.
        ///
        /// # Errors
        ///
        /// [`ArrayError::IndexOutOfRange`] past the end.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let hist = multiproc::", $what, "::<u64>::zeroed(4)?;")]
        /// for x in [1, 3, 3, 0] {
        ///     hist.fetch_add(x, 1)?;
        /// }
        /// assert_eq!((hist.load(0)?, hist.load(2)?, hist.load(3)?), (1, 0, 2));
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn fetch_add(&self, i: usize, x: T) -> Result<T, ArrayError>
        where
            T: AtomicNumber,
        {
            self.$check(i, |p| atomic_op!(p, atomic_fetch_add(x)))
        }

        /// Subtracts `x` from element `i` atomically, without the lock, and returns its
        /// previous value. Integers wrap on overflow.
        ///
        /// # Errors
        ///
        /// [`ArrayError::IndexOutOfRange`] past the end.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let a = multiproc::", $what, "::from_slice(&[1.0f64])?;")]
        /// assert_eq!(a.fetch_sub(0, 0.25)?, 1.0);
        /// assert_eq!(a.load(0)?, 0.75);
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn fetch_sub(&self, i: usize, x: T) -> Result<T, ArrayError>
        where
            T: AtomicNumber,
        {
            self.$check(i, |p| atomic_op!(p, atomic_fetch_sub(x)))
        }
    };
}

/// Atomic operations on one element, without the lock. While a guard on the array lives,
/// they wait for it to go (another thread's or process's guard, even one whose lock was
/// released from under it) or refuse with [`ArrayError::GuardHeld`] (the caller's own).
impl<T: AtomicElement> Array<T> {
    element_atomics!("Array", atomic);
}

impl<T: Element> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("name", &self.slots.segment().name())
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Element> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.slots.segment(), &self.lock).serialize(s)
    }
}

impl<'de, T: Element> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (SlotsOf(slots), lock) =
            <(SlotsOf<T, { Kind::Array as u32 }, false>, ValueLock)>::deserialize(d)?;
        Ok(Self { slots, lock })
    }
}

/// Holds an [`Array`]'s lock and derefs to its elements, in place; releases the lock on drop.
/// See [`Array::lock`].
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let a = multiproc::Array::from_slice(&[3u32, 1, 2])?;
/// {
///     let mut g = a.lock().map_err(|e| e.to_string())?;
///     g.sort();
///     assert_eq!(&*g, &[1, 2, 3]);
/// }
/// assert_eq!(a.to_vec()?, [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct ArrayGuard<'a, T: Element> {
    array: &'a Array<T>,
    // The guard word, naming this guard; cleared (dropped) before the lock is released.
    _claim: Claim<'a>,
    _held: ValueLockGuard<'a>,
    // The guard word names this thread; an RLock checks its owner's thread.
    _not_send: PhantomData<*const ()>,
}

impl<T: Element + Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let s = &self.array.slots;
        // SAFETY:
        // - `s.as_ptr()` holds `s.len()` elements inside the mapping the array keeps alive for
        //   at least `'a` (the `Slots` invariant), aligned (layout);
        // - every bit pattern is a `T` (`Pod`), whatever other processes wrote;
        // - no one writes them while the guard lives: the guard's claim of the guard word is
        //   cleared only when the guard drops (never taken over: this process lives); every
        //   locked call claims the word before it touches the elements (waiting or refusing
        //   while this guard has it); every atomic operation counts itself in flight and then
        //   reads the word, and the guard drained the counter after publishing the word (all
        //   `SeqCst`), so none runs from then on; a `RawArray` never decodes from an
        //   `Array`'s segment (type tags differ).
        unsafe { std::slice::from_raw_parts(s.as_ptr(), s.len()) }
    }
}

impl<T: Element + Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let s = &self.array.slots;
        // SAFETY:
        // - as in `deref`: in bounds, aligned, any bit pattern a `T`;
        // - no one else reads or writes them while the guard lives (the same reasons);
        // - `&mut self` makes this the only borrow of the guard.
        unsafe { std::slice::from_raw_parts_mut(s.as_ptr(), s.len()) }
    }
}

impl<T: Element + Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// RawArray

/// A fixed number of `T`s in shared memory, without a lock: CPython's `RawArray` (or
/// `Array(..., lock=False)`).
///
/// Reads and writes copy elements in and out, each chunk of each element atomically (8 bytes
/// at most): an element wider than its chunk can be read *torn* while another process writes
/// it, and a range read while another process writes it can mix old and new elements.
/// Synchronise with a [`Lock`](crate::Lock), an [`Event`](crate::Event) or a
/// [`Barrier`](crate::Barrier) where that matters, or use an [`Array`]. The atomic
/// operations ([`fetch_add`](Self::fetch_add), ...) need no lock at all.
///
/// There is no guard: with no lock to make it exclusive, a `&mut [T]` into memory other
/// processes write would be unsound. [`as_slice`](Self::as_slice) and
/// [`as_mut_slice`](Self::as_mut_slice) lend the elements for code that synchronises by its
/// own means, as `unsafe fn`s.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, RawArray};
///
/// fn fill_second_half(a: RawArray<u32>) {
///     let half = a.len() / 2;
///     let values: Vec<u32> = (half as u32..a.len() as u32).collect();
///     a.write(half, &values).unwrap();
/// }
///
/// # multiproc::init();
/// let a = RawArray::<u32>::zeroed(8)?;
/// let mut p = Process::new(fill_second_half, a.clone());
/// p.start()?;
/// a.write(0, &[0, 1, 2, 3])?; // the first half, meanwhile
/// p.join()?;
/// assert_eq!(a.to_vec(), [0, 1, 2, 3, 4, 5, 6, 7]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawArray<T> {
    slots: Slots<T>,
}

impl<T> Clone for RawArray<T> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<T: Element> RawArray<T> {
    /// A new raw array holding a copy of `values`.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made ([`ShmError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::from_slice(&[1i32, -1])?;
    /// assert_eq!(a.to_vec(), [1, -1]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn from_slice(values: &[T]) -> Result<Self, ShmError> {
        Ok(Self {
            slots: Slots::create(Kind::Array, true, Init::Values(values))?,
        })
    }

    /// A new raw array of `len` zeroes.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made (or `len` elements do not fit in memory).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::<u8>::zeroed(4)?;
    /// assert_eq!(a.to_vec(), [0; 4]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn zeroed(len: usize) -> Result<Self, ShmError> {
        Ok(Self {
            slots: Slots::create(Kind::Array, true, Init::Zeroed(len))?,
        })
    }

    /// The number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::RawArray::<u8>::zeroed(4)?.len(), 4);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert!(multiproc::RawArray::<u8>::zeroed(0)?.is_empty());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.slots.len() == 0
    }

    /// A copy of element `i`, or `None` past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::from_slice(&[4u8, 5])?;
    /// assert_eq!(a.get(1), Some(5));
    /// assert_eq!(a.get(2), None);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn get(&self, i: usize) -> Option<T> {
        self.slots.get(i)
    }

    /// Sets element `i`.
    ///
    /// # Errors
    ///
    /// [`ArrayError::IndexOutOfRange`] past the end (nothing written).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::<u8>::zeroed(2)?;
    /// a.set(0, 1)?;
    /// assert!(a.set(2, 1).is_err());
    /// assert_eq!(a.to_vec(), [1, 0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set(&self, i: usize, v: T) -> Result<(), ArrayError> {
        if self.slots.set(i, v) {
            Ok(())
        } else {
            Err(index_error(i, self.len()))
        }
    }

    /// A copy of the elements in `range`.
    ///
    /// # Errors
    ///
    /// [`ArrayError::OutOfBounds`] if the range does not lie within the array.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::from_slice(&[0u8, 1, 2, 3])?;
    /// assert_eq!(a.read(..2)?, [0, 1]);
    /// assert_eq!(a.read(2..=3)?, [2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self, range: impl RangeBounds<usize>) -> Result<Vec<T>, ArrayError> {
        let len = self.len();
        let (start, end) = bounds(range, len)?;
        self.slots
            .read_vec(start, end - start)
            .ok_or_else(|| range_error(start, end - start, len))
    }

    /// Copies `out.len()` elements from `start` into `out`.
    ///
    /// # Errors
    ///
    /// [`ArrayError::OutOfBounds`] if they do not lie within the array (nothing copied).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::from_slice(&[1u64, 2, 3])?;
    /// let mut buf = [0u64; 3];
    /// a.read_into(0, &mut buf)?;
    /// assert_eq!(buf, [1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_into(&self, start: usize, out: &mut [T]) -> Result<(), ArrayError> {
        if self.slots.read_into(start, out) {
            Ok(())
        } else {
            Err(range_error(start, out.len(), self.len()))
        }
    }

    /// Copies `values` into the elements from `start`.
    ///
    /// # Errors
    ///
    /// [`ArrayError::OutOfBounds`] if they do not fit (nothing written).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::<i32>::zeroed(3)?;
    /// a.write(1, &[5, 6])?;
    /// assert_eq!(a.to_vec(), [0, 5, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&self, start: usize, values: &[T]) -> Result<(), ArrayError> {
        if self.slots.write(start, values) {
            Ok(())
        } else {
            Err(range_error(start, values.len(), self.len()))
        }
    }

    /// A copy of every element.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// assert_eq!(multiproc::RawArray::from_slice(&[1u8, 2])?.to_vec(), [1, 2]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn to_vec(&self) -> Vec<T> {
        self.slots.read_vec(0, self.len()).unwrap_or_default()
    }

    /// Sets every element to `v`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::<u16>::zeroed(3)?;
    /// a.fill(7);
    /// assert_eq!(a.to_vec(), [7, 7, 7]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn fill(&self, v: T) {
        self.slots.fill(v);
    }

    /// The first element's address in this process, for code that brings its own
    /// synchronisation (reading or writing through it while another thread or process writes
    /// is a data race unless done atomically).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::<u64>::zeroed(2)?;
    /// assert_eq!(a.as_ptr() as usize % 64, 0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn as_ptr(&self) -> *mut T {
        self.slots.as_ptr()
    }

    fn atomic<R>(&self, i: usize, op: impl FnOnce(*mut T) -> R) -> Result<R, ArrayError>
    where
        T: AtomicElement,
    {
        self.slots
            .atomic(i, op)
            .ok_or_else(|| index_error(i, self.len()))
    }
}

/// Borrowing the elements in place.
impl<T: Element + Pod> RawArray<T> {
    /// The elements, borrowed in place (no copy).
    ///
    /// # Safety
    ///
    /// - No thread of any process (this one included, through another handle or
    ///   [`as_mut_slice`](Self::as_mut_slice)) may write the elements while the slice lives:
    ///   Rust assumes borrowed memory does not change. A [`Barrier`](crate::Barrier) after
    ///   every writer is done, or a [`Lock`](crate::Lock) that every writer takes, provides
    ///   that.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::from_slice(&[1.0f32, 2.0, 3.0])?;
    /// // SAFETY: no one else has a handle to this array.
    /// let sum: f32 = unsafe { a.as_slice() }.iter().sum();
    /// assert_eq!(sum, 6.0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub unsafe fn as_slice(&self) -> &[T] {
        // SAFETY:
        // - `slots.as_ptr()` holds `len` elements inside a mapping that lives as long as
        //   `self` (the `Slots` invariant), aligned (layout);
        // - every bit pattern is a `T` (`Pod`);
        // - no one writes them while the slice lives (the caller's promise).
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.len()) }
    }

    /// The elements, mutably borrowed in place (no copy).
    ///
    /// # Safety
    ///
    /// - No thread of any process (this one included, through another handle or another call
    ///   of this method) may read or write the elements while the slice lives. A
    ///   [`Lock`](crate::Lock) that every user takes around every access provides that.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let a = multiproc::RawArray::<u32>::zeroed(1000)?;
    /// // SAFETY: no one else has a handle to this array.
    /// for (i, x) in unsafe { a.as_mut_slice() }.iter_mut().enumerate() {
    ///     *x = i as u32;
    /// }
    /// assert_eq!(a.get(999), Some(999));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    #[allow(clippy::mut_from_ref)] // shared memory: exclusivity is the caller's promise
    pub unsafe fn as_mut_slice(&self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and no one reads them either (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.slots.as_ptr(), self.len()) }
    }
}

/// Atomic operations on one element.
impl<T: AtomicElement> RawArray<T> {
    element_atomics!("RawArray", atomic);
}

impl<T: Element> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArray")
            .field("name", &self.slots.segment().name())
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Element> Serialize for RawArray<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.slots.segment().serialize(s)
    }
}

impl<'de, T: Element> Deserialize<'de> for RawArray<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            slots: Slots::deserialize(d, Kind::Array, true)?,
        })
    }
}
