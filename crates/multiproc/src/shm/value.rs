//! [`Value`] and [`RawValue`] (CPython's `multiprocessing.Value` and `RawValue`), the element
//! traits they share with [`Array`](super::Array), the lock of a Value or Array
//! ([`ValueLock`]), and [`Slots`], the typed memory under all four.
//!
//! **Layout.** Each object is one typed segment: the 64-byte header (kind, element size,
//! count, type tag), a 64-byte control line (an Array's guard word and in-flight count; unused
//! by a Value), and
//! the elements from byte 128 on. 128 is a multiple of every alignment up to 64, and a
//! mapping starts on a page, so every element is aligned; a type aligned to more than 64
//! bytes is refused at compile time.
//!
//! **Access.** Outside an [`ArrayGuard`](super::ArrayGuard), every byte of the elements is
//! read and written through atomics: the atomic operations ([`AtomicElement`],
//! [`AtomicNumber`]) as such, and copies in relaxed atomic chunks (8, 4, 2 or 1 bytes: the
//! widest that divides the element's size), fenced so that a copy after a lock, or a raw
//! write read by a raw read, is ordered like an acquire and a release. So no two accesses
//! ever race in Rust's sense, whichever processes and threads make them, and a reader of
//! a type wider than a chunk may see a *torn* value (chunks of two writes) only where no lock
//! orders the two.
//!
//! **Value's guard works on a copy.** [`Value::lock`] reads the value into the guard, and the
//! guard writes it back (if it changed) when dropped, still under the lock. So no reference
//! into shared memory ever exists for a Value, and the lock-free atomic operations, which
//! other threads and processes may run at any time, can never alias a `&mut T`.
//!
//! **Bit patterns.** Elements are [`Element`]s: bytemuck's `NoUninit` (every byte of a value
//! is initialised, so it can be copied out as bytes) and `CheckedBitPattern` (bytes read back
//! are checked before they become a `T`; for `Pod` types the check is free). Bytes that are
//! not a valid `T`, which only a raw writer of the segment (a [`SharedMemory`] attached by
//! its name, say) can leave, read as `T`'s zero.
//!
//! [`SharedMemory`]: super::SharedMemory
//!
//! # Safety
//!
//! This file opts in to `unsafe` for:
//! - calling the chunked atomic copies between shared memory and private buffers
//!   (`copy_out`, `copy_in` of `sys`), over addresses the layout guarantees to be inside a
//!   live mapping and aligned;
//! - the atomic operations of [`AtomicElement`] and [`AtomicNumber`], the same way;
//! - reading bytes copied out of shared memory as a `T` (only after bytemuck's check);
//! - [`Slots`], which keeps a pointer into the mapping its segment owns (so it is `Send` and
//!   `Sync` by hand), and the slices an `ArrayGuard` or `RawArray::as_slice` hand out.
#![allow(unsafe_code)]

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize, Ordering,
};
use std::time::Duration;

use bytemuck::{CheckedBitPattern, NoUninit, Zeroable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ShmError;
use super::segment::{self, HEADER_LEN, Header, Kind, Segment};
use crate::sync::{AcquireError, ConditionLock, Lock, LockGuard, RLock, RLockGuard};
use crate::sys::{copy_in, copy_out};

// ---------------------------------------------------------------------------------------------
// Element types

/// What a [`Value`], [`RawValue`], [`Array`](super::Array) or [`RawArray`](super::RawArray)
/// can hold: plain data, copied in and out as bytes.
///
/// Implemented for every type that is bytemuck's `NoUninit` (no padding, no pointers: every
/// byte initialised), `CheckedBitPattern` (bytes read back can be checked) and `Zeroable`
/// (all zeroes is a value): every [`Pod`](crate::Pod) type (integers, floats, arrays of them,
/// `#[repr(C)]` structs that derive `Pod`), and also `bool`, `char`, and fieldless enums that
/// derive `NoUninit`, `CheckedBitPattern` and `Zeroable`.
///
/// # Examples
///
/// A struct, derived through multiproc's re-exports (the `bytemuck(crate = ...)` line lets
/// the derive find bytemuck without a dependency of your own; with `bytemuck` in your
/// `Cargo.toml`, derive `bytemuck::Pod` and leave the line out):
///
/// ```
/// #[derive(Clone, Copy, Debug, PartialEq, multiproc::Pod, multiproc::Zeroable)]
/// #[bytemuck(crate = "multiproc::bytemuck")]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// # multiproc::init();
/// let p = multiproc::Value::new(Point { x: 1.0, y: 2.0 })?;
/// p.set(Point { x: 3.0, ..p.get() });
/// assert_eq!(p.get(), Point { x: 3.0, y: 2.0 });
/// # Ok::<(), multiproc::ShmError>(())
/// ```
///
/// An enum, whose bytes are checked when read:
///
/// ```
/// use multiproc::bytemuck::{CheckedBitPattern, NoUninit, Zeroable};
///
/// #[derive(Clone, Copy, Debug, PartialEq, NoUninit, CheckedBitPattern, Zeroable)]
/// #[bytemuck(crate = "multiproc::bytemuck")]
/// #[repr(u8)]
/// enum State {
///     Idle = 0,
///     Busy = 1,
/// }
///
/// # multiproc::init();
/// let s = multiproc::Value::new(State::Idle)?;
/// s.set(State::Busy);
/// assert_eq!(s.get(), State::Busy);
/// # Ok::<(), multiproc::ShmError>(())
/// ```
///
/// A type aligned to more than 64 bytes is refused when the program is built:
///
/// ```compile_fail,E0080
/// #[derive(Clone, Copy, multiproc::Pod, multiproc::Zeroable)]
/// #[bytemuck(crate = "multiproc::bytemuck")]
/// #[repr(C, align(128))]
/// struct Big([u8; 128]);
///
/// # multiproc::init();
/// let big = multiproc::Value::new(Big([0; 128])); // error: aligned to more than 64 bytes
/// ```
pub trait Element: NoUninit + CheckedBitPattern + Zeroable {}

impl<T: NoUninit + CheckedBitPattern + Zeroable> Element for T {}

mod sealed {
    /// Only this crate implements the atomic element traits.
    #[allow(unreachable_pub)] // sealed: public in a private module on purpose
    pub trait Sealed {}
}

/// Element types with lock-free atomic operations (`load`, `store`, `swap`,
/// `compare_exchange`) on a [`Value`], [`RawValue`], [`Array`](super::Array) or
/// [`RawArray`](super::RawArray): every integer up to 64 bits, `isize`, `usize`, `f32`,
/// `f64` and `bool`. Sealed.
///
/// Every operation is sequentially consistent. Floats are compared by their bits (so
/// `compare_exchange` sees `-0.0` and `0.0` as different, and a NaN as equal to itself).
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let flag = multiproc::RawValue::new(false)?;
/// assert_eq!(flag.swap(true), false);
/// assert!(flag.load());
/// # Ok::<(), multiproc::ShmError>(())
/// ```
pub trait AtomicElement: Element + sealed::Sealed {
    /// Loads the value at `p`.
    ///
    /// # Safety
    ///
    /// - `p` is valid for reads and writes, aligned to `size_of::<Self>()`, for the call.
    /// - No one accesses it non-atomically meanwhile.
    #[doc(hidden)]
    unsafe fn atomic_load(p: *mut Self) -> Self;

    /// Stores `v` at `p`.
    ///
    /// # Safety
    ///
    /// As [`atomic_load`](Self::atomic_load).
    #[doc(hidden)]
    unsafe fn atomic_store(p: *mut Self, v: Self);

    /// Stores `v` at `p`, returning what was there.
    ///
    /// # Safety
    ///
    /// As [`atomic_load`](Self::atomic_load).
    #[doc(hidden)]
    unsafe fn atomic_swap(p: *mut Self, v: Self) -> Self;

    /// Stores `new` at `p` if it holds `current` (bitwise).
    ///
    /// # Safety
    ///
    /// As [`atomic_load`](Self::atomic_load).
    #[doc(hidden)]
    unsafe fn atomic_compare_exchange(p: *mut Self, current: Self, new: Self)
    -> Result<Self, Self>;
}

/// Element types that also add and subtract atomically ([`Value::fetch_add`],
/// [`Array::fetch_add`](super::Array::fetch_add), ...): every integer up to 64 bits,
/// `isize`, `usize` (wrapping on overflow, as std's atomics), `f32` and `f64` (a
/// compare-and-swap loop). Sealed.
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let total = multiproc::Value::new(0.5f64)?;
/// total.fetch_add(0.25);
/// assert_eq!(total.load(), 0.75);
/// let n = multiproc::Value::new(u8::MAX)?;
/// assert_eq!(n.fetch_add(1), u8::MAX);
/// assert_eq!(n.load(), 0); // wraps
/// # Ok::<(), multiproc::ShmError>(())
/// ```
pub trait AtomicNumber: AtomicElement {
    /// Adds `v` to the value at `p`, returning the previous value.
    ///
    /// # Safety
    ///
    /// As [`AtomicElement::atomic_load`].
    #[doc(hidden)]
    unsafe fn atomic_fetch_add(p: *mut Self, v: Self) -> Self;

    /// Subtracts `v` from the value at `p`, returning the previous value.
    ///
    /// # Safety
    ///
    /// As [`AtomicElement::atomic_load`].
    #[doc(hidden)]
    unsafe fn atomic_fetch_sub(p: *mut Self, v: Self) -> Self;
}

const SEQ: Ordering = Ordering::SeqCst;

macro_rules! atomic_int {
    ($($t:ty => $a:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}

        impl AtomicElement for $t {
            #[inline]
            unsafe fn atomic_load(p: *mut Self) -> Self {
                // SAFETY:
                // - `p` is valid and aligned to the type's size, which is the atomic's
                //   alignment, for the call (the caller's promise);
                // - every other access to it is atomic (the caller's promise).
                unsafe { <$a>::from_ptr(p) }.load(SEQ)
            }

            #[inline]
            unsafe fn atomic_store(p: *mut Self, v: Self) {
                // SAFETY: as in `atomic_load`.
                unsafe { <$a>::from_ptr(p) }.store(v, SEQ)
            }

            #[inline]
            unsafe fn atomic_swap(p: *mut Self, v: Self) -> Self {
                // SAFETY: as in `atomic_load`.
                unsafe { <$a>::from_ptr(p) }.swap(v, SEQ)
            }

            #[inline]
            unsafe fn atomic_compare_exchange(
                p: *mut Self,
                current: Self,
                new: Self,
            ) -> Result<Self, Self> {
                // SAFETY: as in `atomic_load`.
                unsafe { <$a>::from_ptr(p) }.compare_exchange(current, new, SEQ, SEQ)
            }
        }

        impl AtomicNumber for $t {
            #[inline]
            unsafe fn atomic_fetch_add(p: *mut Self, v: Self) -> Self {
                // SAFETY: as in `atomic_load`.
                unsafe { <$a>::from_ptr(p) }.fetch_add(v, SEQ)
            }

            #[inline]
            unsafe fn atomic_fetch_sub(p: *mut Self, v: Self) -> Self {
                // SAFETY: as in `atomic_load`.
                unsafe { <$a>::from_ptr(p) }.fetch_sub(v, SEQ)
            }
        }
    )*};
}

atomic_int! {
    i8 => AtomicI8, i16 => AtomicI16, i32 => AtomicI32, i64 => AtomicI64, isize => AtomicIsize,
    u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64, usize => AtomicUsize,
}

macro_rules! atomic_float {
    ($($t:ty => $a:ty, $bits:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}

        impl AtomicElement for $t {
            #[inline]
            unsafe fn atomic_load(p: *mut Self) -> Self {
                // SAFETY:
                // - the float's bits are an unsigned integer of its size and alignment at
                //   the same address; `p` is valid and aligned (the caller's promise);
                // - every other access to it is atomic (the caller's promise).
                <$t>::from_bits(unsafe { <$a>::from_ptr(p.cast::<$bits>()) }.load(SEQ))
            }

            #[inline]
            unsafe fn atomic_store(p: *mut Self, v: Self) {
                // SAFETY: as in `atomic_load`.
                unsafe { <$a>::from_ptr(p.cast::<$bits>()) }.store(v.to_bits(), SEQ)
            }

            #[inline]
            unsafe fn atomic_swap(p: *mut Self, v: Self) -> Self {
                // SAFETY: as in `atomic_load`.
                let a = unsafe { <$a>::from_ptr(p.cast::<$bits>()) };
                <$t>::from_bits(a.swap(v.to_bits(), SEQ))
            }

            #[inline]
            unsafe fn atomic_compare_exchange(
                p: *mut Self,
                current: Self,
                new: Self,
            ) -> Result<Self, Self> {
                // SAFETY: as in `atomic_load`.
                let a = unsafe { <$a>::from_ptr(p.cast::<$bits>()) };
                a.compare_exchange(current.to_bits(), new.to_bits(), SEQ, SEQ)
                    .map(<$t>::from_bits)
                    .map_err(<$t>::from_bits)
            }
        }

        impl AtomicNumber for $t {
            #[inline]
            unsafe fn atomic_fetch_add(p: *mut Self, v: Self) -> Self {
                // SAFETY: as in `atomic_load`.
                let a = unsafe { <$a>::from_ptr(p.cast::<$bits>()) };
                let old = a.fetch_update(SEQ, SEQ, |b| Some((<$t>::from_bits(b) + v).to_bits()));
                <$t>::from_bits(old.unwrap_or_else(|b| b))
            }

            #[inline]
            unsafe fn atomic_fetch_sub(p: *mut Self, v: Self) -> Self {
                // SAFETY: as in `atomic_load`.
                let a = unsafe { <$a>::from_ptr(p.cast::<$bits>()) };
                let old = a.fetch_update(SEQ, SEQ, |b| Some((<$t>::from_bits(b) - v).to_bits()));
                <$t>::from_bits(old.unwrap_or_else(|b| b))
            }
        }
    )*};
}

atomic_float! { f32 => AtomicU32, u32, f64 => AtomicU64, u64 }

impl sealed::Sealed for bool {}

/// `bool` is stored as a byte and handled through `AtomicU8` (any byte other than 0 reads as
/// `true`, so a raw writer cannot make a load invalid).
impl AtomicElement for bool {
    #[inline]
    unsafe fn atomic_load(p: *mut Self) -> Self {
        // SAFETY:
        // - a byte at a valid address is always aligned; `p` is valid (the caller's promise);
        // - every other access to it is atomic (the caller's promise).
        unsafe { AtomicU8::from_ptr(p.cast::<u8>()) }.load(SEQ) != 0
    }

    #[inline]
    unsafe fn atomic_store(p: *mut Self, v: Self) {
        // SAFETY: as in `atomic_load`.
        unsafe { AtomicU8::from_ptr(p.cast::<u8>()) }.store(u8::from(v), SEQ)
    }

    #[inline]
    unsafe fn atomic_swap(p: *mut Self, v: Self) -> Self {
        // SAFETY: as in `atomic_load`.
        unsafe { AtomicU8::from_ptr(p.cast::<u8>()) }.swap(u8::from(v), SEQ) != 0
    }

    #[inline]
    unsafe fn atomic_compare_exchange(
        p: *mut Self,
        current: Self,
        new: Self,
    ) -> Result<Self, Self> {
        // SAFETY: as in `atomic_load`.
        let a = unsafe { AtomicU8::from_ptr(p.cast::<u8>()) };
        a.compare_exchange(u8::from(current), u8::from(new), SEQ, SEQ)
            .map(|b| b != 0)
            .map_err(|b| b != 0)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw access

/// Where the elements begin in the segment.
pub(super) const DATA_OFFSET: usize = 2 * HEADER_LEN;

/// Where an Array's guard word lies (the control line between header and data).
pub(super) const GUARD_OFFSET: usize = HEADER_LEN;

/// Where an Array's count of atomic operations in flight lies (the same line).
pub(super) const IN_FLIGHT_OFFSET: usize = HEADER_LEN + 8;

/// The largest alignment an element may have.
const MAX_ALIGN: usize = 64;

/// The width of the atomic chunks that copy `T`s: the largest of 8, 4, 2 and 1 that divides
/// its size. Element `i` starts at `DATA_OFFSET + i * size_of::<T>()` in a page-aligned
/// mapping, so every chunk of every element is aligned to the width.
const fn width<T>() -> usize {
    let s = size_of::<T>();
    if s % 8 == 0 {
        8
    } else if s % 4 == 0 {
        4
    } else if s % 2 == 0 {
        2
    } else {
        1
    }
}

/// A `T` from bytes copied out of shared memory: checked, and `T`'s zero if they are not a
/// valid `T`.
///
/// # Safety
///
/// - Every byte of `m` is initialised.
#[inline]
unsafe fn checked<T: Element>(m: &MaybeUninit<T>) -> T {
    // SAFETY: `m` is `size_of::<T>()` bytes, all initialised (the caller's promise).
    let bytes = unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<u8>(), size_of::<T>()) };
    bytemuck::checked::try_pod_read_unaligned(bytes).unwrap_or_else(|_| T::zeroed())
}

/// Whether every bit pattern is a `T`: its `CheckedBitPattern` bits are `T` itself (bytemuck
/// implements it that way for every `AnyBitPattern` type, `Pod` included), and bits are
/// `AnyBitPattern`. Then bytes are copied straight into `T`s, with no check. (The types are
/// `'static`, and the comparison is folded at compile time.)
fn any_bit_pattern<T: Element>() -> bool {
    TypeId::of::<T>() == TypeId::of::<<T as CheckedBitPattern>::Bits>()
}

/// A marker that makes a raw object's type tag differ from a locked one's, so a `RawArray`
/// is never decoded from an `Array`'s segment (whose guard hands out `&mut [T]`).
struct Raw<T>(PhantomData<T>);

/// The type tag of `T`'s objects.
pub(super) fn tag<T>(raw: bool) -> u64 {
    if raw {
        segment::type_tag::<Raw<T>>()
    } else {
        segment::type_tag::<T>()
    }
}

/// `len` elements of `T` in a typed segment, from [`DATA_OFFSET`] on.
///
/// Invariant: `ptr` is `DATA_OFFSET` bytes into the mapping `seg` owns, and the mapping holds
/// `len` whole `T`s from there (checked when made); `T` is aligned to at most 64.
pub(super) struct Slots<T> {
    seg: Arc<Segment>,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY:
// - `ptr` points into the mapping that `seg` (shared ownership, `Send + Sync`) keeps alive
//   and at the same address as long as this value exists; nothing about it is tied to a
//   thread.
// - Every access through it is atomic (copies and atomic operations), or happens under an
//   Array's guard, whose exclusivity the lock gives. `T`s written by one thread are read by
//   another, which is a move between threads: hence `T: Send`.
unsafe impl<T: Send> Send for Slots<T> {}
// SAFETY: as for `Send`: `&Slots` hands out only atomic accesses, copies (moves of `T`s
// between threads: `T: Send`), a guard's exclusive slice, and `unsafe` slices whose callers
// take on the rest.
unsafe impl<T: Send> Sync for Slots<T> {}

impl<T> Clone for Slots<T> {
    fn clone(&self) -> Self {
        Self {
            seg: self.seg.clone(),
            ptr: self.ptr,
            len: self.len,
        }
    }
}

/// What a new object starts with.
pub(super) enum Init<'a, T> {
    /// These values.
    Values(&'a [T]),
    /// `n` zeroes (the kernel's fresh memory).
    Zeroed(usize),
}

impl<T: Element> Slots<T> {
    /// Makes a segment of `kind` (tagged as raw or locked) holding `init`. Pre-faults it when
    /// it is larger than a page, so a first fill runs at memory speed.
    pub(super) fn create(kind: Kind, raw: bool, init: Init<'_, T>) -> Result<Self, ShmError> {
        const {
            assert!(
                align_of::<T>() <= MAX_ALIGN,
                "elements aligned to more than 64 bytes"
            )
        };
        let len = match init {
            Init::Values(v) => v.len(),
            Init::Zeroed(n) => n,
        };
        let too_large = || {
            ShmError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{len} elements of {} bytes do not fit in memory",
                    size_of::<T>()
                ),
            ))
        };
        let body = size_of::<T>()
            .checked_mul(len)
            .and_then(|b| b.checked_add(DATA_OFFSET - HEADER_LEN))
            .filter(|b| isize::try_from(*b).is_ok())
            .ok_or_else(too_large)?;
        let seg = segment::create_typed(
            Header {
                kind,
                elem_size: size_of::<T>() as u64,
                len: len as u64,
                type_tag: tag::<T>(raw),
            },
            body,
        )?;
        // One page is faulted in already, by the header's write.
        if seg.size() > 4096 {
            seg.map().prefault();
        }
        let slots = Self::new(seg, len).ok_or_else(too_large)?;
        if let Init::Values(v) = init {
            slots.write(0, v);
        }
        Ok(slots)
    }

    /// The elements of `seg`, if it holds `len` of them.
    fn new(seg: Arc<Segment>, len: usize) -> Option<Self> {
        const {
            assert!(
                align_of::<T>() <= MAX_ALIGN,
                "elements aligned to more than 64 bytes"
            )
        };
        let ptr = seg.map().typed_ptr::<T>(DATA_OFFSET, len)?;
        Some(Self {
            ptr: NonNull::new(ptr)?,
            seg,
            len,
        })
    }

    /// Decodes a segment that must hold `kind` of `T` (raw or locked).
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
        raw: bool,
    ) -> Result<Self, D::Error> {
        let (seg, len) = segment::deserialize_typed(d, kind, size_of::<T>() as u64, tag::<T>(raw))?;
        Self::checked_len(seg, kind, len).map_err(crate::codec::de_error)
    }

    /// The elements of a decoded `kind` segment whose header says `len`: an error unless the
    /// segment holds them all (a truncated segment, or a header that lies, is refused here,
    /// before any element is touched).
    fn checked_len(seg: Arc<Segment>, kind: Kind, len: u64) -> Result<Self, ShmError> {
        let bad = || ShmError::WrongKind(seg.name().to_owned());
        let len = usize::try_from(len).map_err(|_| bad())?;
        if kind == Kind::Value && len != 1 {
            return Err(bad());
        }
        Self::new(seg.clone(), len).ok_or_else(bad)
    }

    /// The number of elements.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The segment, for encoding and for its other words.
    pub(super) fn segment(&self) -> &Segment {
        &self.seg
    }

    /// The first element.
    #[inline]
    pub(super) fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// Element `i`, if there is one.
    #[inline]
    pub(super) fn at(&self, i: usize) -> Option<*mut T> {
        // SAFETY: `i < len`, and the mapping holds `len` elements from `ptr` (invariant).
        (i < self.len).then(|| unsafe { self.ptr.as_ptr().add(i) })
    }

    /// Whether `start..start + n` are elements; the end if so.
    #[inline]
    pub(super) fn range(&self, start: usize, n: usize) -> Option<usize> {
        start.checked_add(n).filter(|end| *end <= self.len)
    }

    /// Copies element `i`; `None` past the end.
    pub(super) fn get(&self, i: usize) -> Option<T> {
        let p = self.at(i)?;
        let mut m = MaybeUninit::<T>::uninit();
        // SAFETY:
        // - `p` is one element inside the mapping (`at`), aligned to the width (layout),
        //   accessed only atomically outside array guards;
        // - `m` is private and `size_of::<T>()` bytes; the size is a multiple of the width.
        unsafe {
            copy_out(
                p.cast::<u8>(),
                m.as_mut_ptr().cast::<u8>(),
                size_of::<T>(),
                width::<T>(),
            );
        }
        // SAFETY: `copy_out` wrote every byte of `m`.
        Some(unsafe { checked(&m) })
    }

    /// Copies `v` into element `i`; `false` past the end.
    pub(super) fn set(&self, i: usize, v: T) -> bool {
        self.write(i, std::slice::from_ref(&v))
    }

    /// Copies `out.len()` elements from `start` into `out`; `false` if out of range.
    pub(super) fn read_into(&self, start: usize, out: &mut [T]) -> bool {
        if self.range(start, out.len()).is_none() {
            return false;
        }
        if any_bit_pattern::<T>() {
            // SAFETY:
            // - `start .. start + out.len()` are elements (checked), aligned to the width
            //   (layout), accessed only atomically outside array guards;
            // - `out` is exclusively borrowed, `out.len()` elements long; any bytes written
            //   into it are a valid `T` (`any_bit_pattern`).
            unsafe {
                copy_out(
                    self.ptr.as_ptr().add(start).cast::<u8>(),
                    out.as_mut_ptr().cast::<u8>(),
                    size_of_val(out),
                    width::<T>(),
                );
            }
            return true;
        }
        // Through a small private buffer, where each element is checked before it becomes a
        // `T` (`out` may only ever hold valid ones).
        let per_block = (16 * 1024 / size_of::<T>().max(1)).clamp(1, out.len().max(1));
        let mut buf: Vec<MaybeUninit<T>> = Vec::new();
        buf.resize_with(per_block, MaybeUninit::uninit);
        for (k, block) in out.chunks_mut(per_block).enumerate() {
            // SAFETY:
            // - the block's elements, `start + k * per_block ..` and `block.len()` long, are
            //   inside the checked range, aligned to the width (layout), accessed only
            //   atomically outside array guards;
            // - `buf` is private and holds at least `block.len()` elements; the byte count is a
            //   multiple of the width.
            unsafe {
                copy_out(
                    self.ptr.as_ptr().add(start + k * per_block).cast::<u8>(),
                    buf.as_mut_ptr().cast::<u8>(),
                    size_of_val(block),
                    width::<T>(),
                );
            }
            for (slot, m) in block.iter_mut().zip(&buf) {
                // SAFETY: `copy_out` wrote every byte of the first `block.len()` elements.
                *slot = unsafe { checked(m) };
            }
        }
        true
    }

    /// Copies `n` elements from `start`; `None` if out of range.
    pub(super) fn read_vec(&self, start: usize, n: usize) -> Option<Vec<T>> {
        self.range(start, n)?;
        if any_bit_pattern::<T>() {
            let mut v: Vec<T> = Vec::with_capacity(n);
            // SAFETY:
            // - `start .. start + n` are elements (checked), aligned to the width (layout),
            //   accessed only atomically outside array guards;
            // - the vector has room for `n` elements and is private; `n * size` is a multiple
            //   of the width;
            // - `set_len`: the first `n` elements are initialised (every byte written) and
            //   valid (any bytes are a `T`: `any_bit_pattern`).
            unsafe {
                copy_out(
                    self.ptr.as_ptr().add(start).cast::<u8>(),
                    v.as_mut_ptr().cast::<u8>(),
                    n * size_of::<T>(),
                    width::<T>(),
                );
                v.set_len(n);
            }
            return Some(v);
        }
        // Each element checked on its way in (`read_into`).
        let mut v: Vec<T> = std::iter::repeat_with(T::zeroed).take(n).collect();
        self.read_into(start, &mut v);
        Some(v)
    }

    /// Copies `src` into the elements from `start`; `false` if out of range.
    pub(super) fn write(&self, start: usize, src: &[T]) -> bool {
        if self.range(start, src.len()).is_none() {
            return false;
        }
        let bytes: &[u8] = bytemuck::cast_slice(src);
        // SAFETY:
        // - `start .. start + src.len()` are elements (checked), aligned to the width
        //   (layout), accessed only atomically outside array guards;
        // - `bytes` are `src`'s, all initialised (`NoUninit`); their length is a multiple of
        //   the width.
        unsafe {
            copy_in(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(start).cast::<u8>(),
                bytes.len(),
                width::<T>(),
            );
        }
        true
    }

    /// Copies `v` into every element.
    pub(super) fn fill(&self, v: T) {
        let bytes = bytemuck::bytes_of(&v);
        for i in 0..self.len {
            // SAFETY:
            // - element `i < len` is inside the mapping, aligned to the width, accessed only
            //   atomically outside array guards;
            // - `bytes` are `v`'s, all initialised; their length is a multiple of the width.
            unsafe {
                copy_in(
                    bytes.as_ptr(),
                    self.ptr.as_ptr().add(i).cast::<u8>(),
                    bytes.len(),
                    width::<T>(),
                );
            }
        }
    }

    /// Runs an atomic operation on element `i`; `None` past the end.
    #[inline]
    pub(super) fn atomic<R>(&self, i: usize, op: impl FnOnce(*mut T) -> R) -> Option<R>
    where
        T: AtomicElement,
    {
        self.at(i).map(op)
    }
}

/// Runs `T`'s atomic `op` on `p`.
macro_rules! atomic_op {
    ($p:expr, $f:ident ( $($arg:expr),* )) => {{
        let p = $p;
        // SAFETY:
        // - `p` is an element inside the mapping (from `Slots::at`), aligned to its size
        //   (elements start at a 64-byte boundary and atomic types are at most 8 bytes, a
        //   power of two);
        // - every other access to it is atomic: copies are chunked atomics of the element's
        //   width, which for these types is their size; an Array's guard never overlaps
        //   them (its guard word and in-flight count, see `array.rs`; a `RawArray` has no
        //   guard).
        unsafe { T::$f(p, $($arg),*) }
    }};
}
pub(super) use atomic_op;

// ---------------------------------------------------------------------------------------------
// The lock of a Value or Array

/// The lock of a [`Value`] or [`Array`](super::Array): an [`RLock`] (the default, as in
/// CPython) or a [`Lock`] given with `with_lock`. CPython's `get_lock()` returns it.
///
/// Holding it (through [`acquire`](Self::acquire)) makes a series of `get`s and `set`s one
/// step for every process that also takes it. The object's own calls, made by the thread
/// that holds it, do not take it again (so they neither wait for themselves on a plain
/// `Lock`, nor count twice on an `RLock`).
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let v = multiproc::Value::new(1u32)?;
/// {
///     let _held = v.get_lock().acquire().map_err(|e| e.to_string())?;
///     v.set(v.get() + 1); // one step for everyone who takes the lock
/// }
/// assert_eq!(v.get(), 2);
/// assert!(matches!(v.get_lock(), multiproc::ValueLock::RLock(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ValueLock {
    /// A plain lock (given with `with_lock`).
    Lock(Lock),
    /// A recursive lock (the default).
    RLock(RLock),
}

impl From<Lock> for ValueLock {
    fn from(l: Lock) -> Self {
        Self::Lock(l)
    }
}

impl From<RLock> for ValueLock {
    fn from(l: RLock) -> Self {
        Self::RLock(l)
    }
}

/// The same lock under a [`Condition`](crate::Condition), so a condition can guard a Value:
/// `Condition::with_lock(v.get_lock().clone())`.
impl From<ValueLock> for ConditionLock {
    fn from(l: ValueLock) -> Self {
        match l {
            ValueLock::Lock(l) => Self::Lock(l),
            ValueLock::RLock(l) => Self::RLock(l),
        }
    }
}

/// Holds a [`ValueLock`]; releases it on drop.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub enum ValueLockGuard<'a> {
    /// Of a plain lock.
    Lock(LockGuard<'a>),
    /// Of a recursive lock.
    RLock(RLockGuard<'a>),
}

type LockResult<'a> = Result<ValueLockGuard<'a>, AcquireError<ValueLockGuard<'a>>>;

/// How an operation holds an object's lock.
pub(super) enum Hold<'a> {
    /// It took the lock; dropping this releases it.
    Took(#[allow(dead_code)] ValueLockGuard<'a>),
    /// The calling thread held it already.
    AlreadyMine,
}

impl ValueLock {
    /// Acquires: `block` false is a try; `timeout` bounds a blocking wait.
    pub(super) fn acquire_inner(&self, block: bool, timeout: Option<Duration>) -> LockResult<'_> {
        match self {
            Self::Lock(l) => l
                .acquire_inner(block, timeout)
                .map(ValueLockGuard::Lock)
                .map_err(|e| e.map(ValueLockGuard::Lock)),
            Self::RLock(l) => l
                .acquire_inner(block, timeout)
                .map(ValueLockGuard::RLock)
                .map_err(|e| e.map(ValueLockGuard::RLock)),
        }
    }

    /// Waits as long as it takes to acquire it (`with v.get_lock():` in Python).
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
    /// let a = multiproc::Array::from_slice(&[1, 2, 3])?;
    /// let held = a.get_lock().acquire().map_err(|e| e.to_string())?;
    /// let sum: i32 = a.to_vec()?.iter().sum(); // the array's own calls do not wait for us
    /// drop(held);
    /// assert_eq!(sum, 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&self) -> LockResult<'_> {
        self.acquire_inner(true, None)
    }

    /// Acquires it only if it is free now (or, for an `RLock`, already the caller's).
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] if someone else holds it; [`AcquireError::OwnerDied`] as
    /// [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::with_lock(0u8, multiproc::Lock::new()?)?;
    /// let held = v.get_lock().try_acquire();
    /// assert!(held.is_ok());
    /// assert!(v.get_lock().try_acquire().is_err()); // a plain Lock: not again
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_acquire(&self) -> LockResult<'_> {
        self.acquire_inner(false, None)
    }

    /// Waits at most `timeout` to acquire it.
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
    /// let v = multiproc::Value::new(0u8)?;
    /// assert!(v.get_lock().acquire_timeout(std::time::Duration::from_millis(5)).is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<'_> {
        self.acquire_inner(true, Some(timeout))
    }

    /// The holder as `(pid, thread id)`, if it is held.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(0u8)?;
    /// assert_eq!(v.get_lock().owner(), None);
    /// let _held = v.get_lock().acquire();
    /// assert_eq!(v.get_lock().owner().map(|o| o.0), Some(std::process::id()));
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn owner(&self) -> Option<(u32, u32)> {
        match self {
            Self::Lock(l) => l.owner(),
            Self::RLock(l) => l.owner(),
        }
    }

    /// Whether the calling thread holds it.
    pub(super) fn is_mine(&self) -> bool {
        match self {
            Self::Lock(l) => l.is_mine(),
            Self::RLock(l) => l.is_mine(),
        }
    }

    /// Holds the lock for one operation: takes it, waiting as long as it takes (from a dead
    /// holder too: what it guarded is plain data, which the operation overwrites or reads as
    /// it is), unless the calling thread holds it already.
    pub(super) fn hold(&self) -> Hold<'_> {
        if self.is_mine() {
            return Hold::AlreadyMine;
        }
        loop {
            match self.acquire() {
                Ok(g) | Err(AcquireError::OwnerDied(g)) => return Hold::Took(g),
                // A blocking acquire does not time out; should it ever, try again.
                Err(AcquireError::Timeout) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value

/// One `T` in shared memory, with a lock: CPython's `multiprocessing.Value`.
///
/// - [`get`](Self::get) and [`set`](Self::set) each take the lock (CPython's `v.value`);
/// - [`lock`](Self::lock) holds it across several steps, with a guard that derefs to the
///   value;
/// - for the integer and float types ([`AtomicNumber`]), [`fetch_add`](Self::fetch_add) and
///   the other atomic operations change it in one step without any lock, so many processes
///   can add to a total at the speed of the hardware (the `v.value += x` of a Python program
///   races; `fetch_add` does not).
///
/// The lock is a new [`RLock`] (as in CPython) unless given with
/// [`with_lock`](Self::with_lock). Clones are handles to the same value. It can be a Process
/// argument or part of any message, under every start method, and decodes only as a `Value`
/// of the same `T`.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, Value};
///
/// fn add_ten(total: Value<i64>) {
///     for _ in 0..10 {
///         total.fetch_add(1);
///     }
/// }
///
/// # multiproc::init();
/// let total = Value::new(0i64)?;
/// let mut children: Vec<_> = (0..3).map(|_| Process::new(add_ten, total.clone())).collect();
/// for p in &mut children {
///     p.start()?;
/// }
/// for p in &children {
///     p.join()?;
/// }
/// assert_eq!(total.get(), 30);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T> {
    slots: Slots<T>,
    lock: ValueLock,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            lock: self.lock.clone(),
        }
    }
}

impl<T: Element> Value<T> {
    /// A new value `v` with its own [`RLock`] (CPython's `Value(typecode, v)`).
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made ([`ShmError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(100i32)?;
    /// assert_eq!(v.get(), 100);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new(v: T) -> Result<Self, ShmError> {
        Self::with_lock(v, RLock::new()?)
    }

    /// A new value `v` guarded by `lock`, a [`Lock`] or an [`RLock`] that other objects may
    /// share (CPython's `lock=` argument).
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
    /// let x = multiproc::Value::with_lock(1.0f64, lock.clone())?;
    /// let y = multiproc::Value::with_lock(2.0f64, lock)?;
    /// {
    ///     // Both under one lock: a consistent pair for everyone who takes it.
    ///     let _held = x.get_lock().acquire().map_err(|e| e.to_string())?;
    ///     let (a, b) = (x.get(), y.get());
    ///     x.set(b);
    ///     y.set(a);
    /// }
    /// assert_eq!((x.get(), y.get()), (2.0, 1.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_lock(v: T, lock: impl Into<ValueLock>) -> Result<Self, ShmError> {
        Ok(Self {
            slots: Slots::create(Kind::Value, false, Init::Values(&[v]))?,
            lock: lock.into(),
        })
    }

    /// The lock (CPython's `get_lock()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(0u64)?;
    /// let held = v.get_lock().acquire().map_err(|e| e.to_string())?;
    /// v.set(v.get() + 1);
    /// drop(held);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_lock(&self) -> &ValueLock {
        &self.lock
    }

    fn read(&self) -> T {
        self.slots.get(0).unwrap_or_else(T::zeroed)
    }

    fn write(&self, v: T) {
        self.slots.set(0, v);
    }

    /// The value, read under the lock (CPython's `v.value`).
    ///
    /// Waits while another thread or process holds the lock. If its holder died, the lock is
    /// taken over and the value read as it is; [`lock`](Self::lock) tells of such a death.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new([1u8, 2, 3])?;
    /// assert_eq!(v.get(), [1, 2, 3]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn get(&self) -> T {
        let _held = self.lock.hold();
        self.read()
    }

    /// Sets the value under the lock (CPython's `v.value = x`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(1u16)?;
    /// v.set(7);
    /// assert_eq!(v.get(), 7);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn set(&self, v: T) {
        let _held = self.lock.hold();
        self.write(v);
    }

    /// Replaces the value with `f(value)` under the lock, and returns the new value (Python's
    /// `with v.get_lock(): v.value = f(v.value)`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(3u32)?;
    /// assert_eq!(v.update(|x| x * x), 9);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn update(&self, f: impl FnOnce(T) -> T) -> T {
        let _held = self.lock.hold();
        let new = f(self.read());
        self.write(new);
        new
    }

    fn lock_inner(
        &self,
        block: bool,
        timeout: Option<Duration>,
    ) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        // A plain Lock the calling thread holds already is not taken again (it would wait for
        // itself); an RLock is, one level deeper, so it stays held while the guard lives.
        let (held, died) = if matches!(self.lock, ValueLock::Lock(_)) && self.lock.is_mine() {
            (Hold::AlreadyMine, false)
        } else {
            match self.lock.acquire_inner(block, timeout) {
                Ok(g) => (Hold::Took(g), false),
                Err(AcquireError::OwnerDied(g)) => (Hold::Took(g), true),
                Err(AcquireError::Timeout) => return Err(AcquireError::Timeout),
            }
        };
        let copy = self.read();
        let guard = ValueGuard {
            value: self,
            copy,
            original: copy,
            _held: held,
            _not_send: PhantomData,
        };
        if died {
            Err(AcquireError::OwnerDied(guard))
        } else {
            Ok(guard)
        }
    }

    /// Holds the lock, waiting as long as it takes, and gives a guard that derefs to the
    /// value.
    ///
    /// The guard works on a copy, read when it is made and written back (if changed) when it
    /// is dropped, before the lock is released. Everyone who takes the lock sees the change
    /// as one step; the lock-free atomic operations of other threads and processes never
    /// touch memory the guard borrows (a change they make while the guard lives is
    /// overwritten if the guard changes the value too).
    ///
    /// [`get`](Self::get) and [`set`](Self::set) in the guard's own thread do not wait for the
    /// lock it holds; they see and change the shared value, not the guard's copy (which
    /// replaces it when the guard goes, if the guard changed it).
    ///
    /// If the calling thread already holds a plain [`Lock`] given with
    /// [`with_lock`](Self::with_lock), it is not taken again (a second acquire would wait
    /// forever).
    ///
    /// # Errors
    ///
    /// [`AcquireError::OwnerDied`] (holding the guard) if the previous holder died holding
    /// the lock: the value may be half updated. Never `Timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(10i32)?;
    /// {
    ///     let mut g = v.lock().map_err(|e| e.to_string())?;
    ///     *g *= 2;
    ///     *g += 1;
    /// } // written back and released here
    /// assert_eq!(v.get(), 21);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Taking over from a holder that died:
    ///
    /// ```
    /// use multiproc::AcquireError;
    /// # multiproc::init();
    /// let v = multiproc::Value::new(1u32)?;
    /// let mut g = match v.lock() {
    ///     Ok(g) => g,
    ///     Err(AcquireError::OwnerDied(g)) => g, // check or repair *g here
    ///     Err(AcquireError::Timeout) => unreachable!("a blocking lock does not time out"),
    /// };
    /// *g = 2;
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        self.lock_inner(true, None)
    }

    /// As [`lock`](Self::lock), only if the lock is free now (or the caller's).
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] if another thread or process holds it;
    /// [`AcquireError::OwnerDied`] as [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(0u8)?;
    /// assert!(v.try_lock().is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn try_lock(&self) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        self.lock_inner(false, None)
    }

    /// As [`lock`](Self::lock), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] when the time is up; [`AcquireError::OwnerDied`] as
    /// [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::Value::new(0u8)?;
    /// let g = v.lock_timeout(std::time::Duration::from_millis(10));
    /// assert!(g.is_ok());
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ValueGuard<'_, T>, AcquireError<ValueGuard<'_, T>>> {
        self.lock_inner(true, Some(timeout))
    }
}

macro_rules! atomic_methods {
    ($what:literal) => {
        /// Reads the value atomically, without the lock.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let v = multiproc::", $what, "::new(5u32)?;")]
        /// assert_eq!(v.load(), 5);
        /// # Ok::<(), multiproc::ShmError>(())
        /// ```
        pub fn load(&self) -> T
        where
            T: AtomicElement,
        {
            atomic_op!(self.slots.as_ptr(), atomic_load())
        }

        /// Writes the value atomically, without the lock.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let v = multiproc::", $what, "::new(5u32)?;")]
        /// v.store(6);
        /// assert_eq!(v.load(), 6);
        /// # Ok::<(), multiproc::ShmError>(())
        /// ```
        pub fn store(&self, v: T)
        where
            T: AtomicElement,
        {
            atomic_op!(self.slots.as_ptr(), atomic_store(v))
        }

        /// Writes the value atomically, without the lock, and returns the previous one.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let v = multiproc::", $what, "::new(true)?;")]
        /// assert!(v.swap(false));
        /// assert!(!v.load());
        /// # Ok::<(), multiproc::ShmError>(())
        /// ```
        pub fn swap(&self, v: T) -> T
        where
            T: AtomicElement,
        {
            atomic_op!(self.slots.as_ptr(), atomic_swap(v))
        }

        /// Writes `new` if the value is `current` (bitwise), atomically, without the lock.
        ///
        /// # Errors
        ///
        /// `Err(actual)` with the value found, if it was not `current` (nothing written).
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let v = multiproc::", $what, "::new(1i64)?;")]
        /// assert_eq!(v.compare_exchange(1, 2), Ok(1));
        /// assert_eq!(v.compare_exchange(1, 3), Err(2));
        /// # Ok::<(), multiproc::ShmError>(())
        /// ```
        pub fn compare_exchange(&self, current: T, new: T) -> Result<T, T>
        where
            T: AtomicElement,
        {
            atomic_op!(self.slots.as_ptr(), atomic_compare_exchange(current, new))
        }

        /// Adds `x` atomically, without the lock, and returns the previous value. Integers
        /// wrap on overflow.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let total = multiproc::", $what, "::new(0u64)?;")]
        /// assert_eq!(total.fetch_add(5), 0);
        /// assert_eq!(total.fetch_add(5), 5);
        /// assert_eq!(total.load(), 10);
        /// # Ok::<(), multiproc::ShmError>(())
        /// ```
        pub fn fetch_add(&self, x: T) -> T
        where
            T: AtomicNumber,
        {
            atomic_op!(self.slots.as_ptr(), atomic_fetch_add(x))
        }

        /// Subtracts `x` atomically, without the lock, and returns the previous value.
        /// Integers wrap on overflow.
        ///
        /// # Examples
        ///
        /// ```
        /// # multiproc::init();
        #[doc = concat!("let left = multiproc::", $what, "::new(3.5f32)?;")]
        /// assert_eq!(left.fetch_sub(1.0), 3.5);
        /// assert_eq!(left.load(), 2.5);
        /// # Ok::<(), multiproc::ShmError>(())
        /// ```
        pub fn fetch_sub(&self, x: T) -> T
        where
            T: AtomicNumber,
        {
            atomic_op!(self.slots.as_ptr(), atomic_fetch_sub(x))
        }
    };
}

/// Atomic operations: one step each, without the lock. They never wait for a holder of the
/// lock, and a holder's guard works on a copy, so they are always sound to mix with it; but
/// an update a guard writes back replaces what they did meanwhile.
impl<T: AtomicElement> Value<T> {
    atomic_methods!("Value");
}

impl<T: Element + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("name", &self.slots.segment().name())
            // Without the lock: a Debug print must not wait.
            .field("value", &self.read())
            .finish()
    }
}

impl<T: Element> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.slots.segment(), &self.lock).serialize(s)
    }
}

impl<'de, T: Element> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (SlotsOf(slots), lock) =
            <(SlotsOf<T, { Kind::Value as u32 }, false>, ValueLock)>::deserialize(d)?;
        Ok(Self { slots, lock })
    }
}

/// Decodes the [`Slots`] of a `KIND` segment (a `Kind` as `u32`), raw or not.
pub(super) struct SlotsOf<T, const KIND: u32, const RAW: bool>(pub(super) Slots<T>);

impl<'de, T: Element, const KIND: u32, const RAW: bool> Deserialize<'de> for SlotsOf<T, KIND, RAW> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = if KIND == Kind::Array as u32 {
            Kind::Array
        } else {
            Kind::Value
        };
        Slots::deserialize(d, kind, RAW).map(Self)
    }
}

/// Holds a [`Value`]'s lock and derefs to the value; writes it back (if changed) and releases
/// the lock on drop. See [`Value::lock`].
///
/// # Examples
///
/// ```
/// # multiproc::init();
/// let v = multiproc::Value::new(1u32)?;
/// let mut g = v.lock().map_err(|e| e.to_string())?;
/// assert_eq!(*g, 1);
/// *g = 5;
/// drop(g);
/// assert_eq!(v.get(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the lock is released when the guard is dropped"]
pub struct ValueGuard<'a, T: Element> {
    value: &'a Value<T>,
    copy: T,
    original: T,
    // Dropped after `drop` has written the copy back.
    _held: Hold<'a>,
    // Released by the thread that took it (an RLock checks its owner's thread).
    _not_send: PhantomData<*const ()>,
}

impl<T: Element> Deref for ValueGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.copy
    }
}

impl<T: Element> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.copy
    }
}

impl<T: Element> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        if bytemuck::bytes_of(&self.copy) != bytemuck::bytes_of(&self.original) {
            self.value.write(self.copy);
        }
    }
}

impl<T: Element + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.copy).finish()
    }
}

// ---------------------------------------------------------------------------------------------
// RawValue

/// One `T` in shared memory, without a lock: CPython's `RawValue` (or `Value(..., lock=False)`).
///
/// [`get`](Self::get) and [`set`](Self::set) copy the value in and out, each chunk of it
/// atomically (8 bytes at most); a `T` wider than its chunk can be read *torn* (part old,
/// part new) while another process writes it, so synchronise wide values yourself (a
/// [`Lock`], an [`Event`](crate::Event)), or use a [`Value`]. The atomic operations
/// ([`fetch_add`](Self::fetch_add), ...) need no lock at all.
///
/// There is no guard and no `&mut T`: with no lock to make it exclusive, a reference into
/// memory other processes write would be unsound.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, RawValue};
///
/// fn count(hits: RawValue<u32>) {
///     for _ in 0..100 {
///         hits.fetch_add(1);
///     }
/// }
///
/// # multiproc::init();
/// let hits = RawValue::new(0u32)?;
/// let mut p = Process::new(count, hits.clone());
/// p.start()?;
/// count(hits.clone());
/// p.join()?;
/// assert_eq!(hits.get(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RawValue<T> {
    slots: Slots<T>,
}

impl<T> Clone for RawValue<T> {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
        }
    }
}

impl<T: Element> RawValue<T> {
    /// A new raw value `v`.
    ///
    /// # Errors
    ///
    /// If its shared memory cannot be made ([`ShmError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::RawValue::new(2.5f64)?;
    /// assert_eq!(v.get(), 2.5);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn new(v: T) -> Result<Self, ShmError> {
        Ok(Self {
            slots: Slots::create(Kind::Value, true, Init::Values(&[v]))?,
        })
    }

    /// Copies the value out (with an acquire's ordering; torn if wider than 8 bytes and
    /// written meanwhile).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::RawValue::new([0u64; 4])?;
    /// assert_eq!(v.get(), [0; 4]);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn get(&self) -> T {
        self.slots.get(0).unwrap_or_else(T::zeroed)
    }

    /// Copies `v` in (with a release's ordering).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::RawValue::new(0i8)?;
    /// v.set(-1);
    /// assert_eq!(v.get(), -1);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn set(&self, v: T) {
        self.slots.set(0, v);
    }

    /// The value's address in this process, for code that brings its own synchronisation.
    /// Reading or writing through it while another thread or process writes the value is a
    /// data race unless done atomically.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::init();
    /// let v = multiproc::RawValue::new(1u64)?;
    /// assert_eq!(v.as_ptr() as usize % 8, 0);
    /// # Ok::<(), multiproc::ShmError>(())
    /// ```
    pub fn as_ptr(&self) -> *mut T {
        self.slots.as_ptr()
    }
}

/// Atomic operations: one step each.
impl<T: AtomicElement> RawValue<T> {
    atomic_methods!("RawValue");
}

impl<T: Element + fmt::Debug> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawValue")
            .field("name", &self.slots.segment().name())
            .field("value", &self.get())
            .finish()
    }
}

impl<T: Element> Serialize for RawValue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.slots.segment().serialize(s)
    }
}

impl<'de, T: Element> Deserialize<'de> for RawValue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            slots: Slots::deserialize(d, Kind::Value, true)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_claiming_more_elements_than_the_segment_holds_is_refused() {
        let slots = Slots::<u64>::create(Kind::Array, false, Init::Zeroed(4)).unwrap();
        let seg = slots.seg.clone();
        let room = ((seg.size() - DATA_OFFSET) / 8) as u64;
        let decode = |len: u64| Slots::<u64>::checked_len(seg.clone(), Kind::Array, len);
        assert_eq!(decode(4).map(|s| s.len()).ok(), Some(4));
        assert!(decode(room).is_ok());
        for lie in [room + 1, 1 << 40, u64::MAX / 8 + 1, u64::MAX] {
            assert!(
                matches!(decode(lie), Err(ShmError::WrongKind(_))),
                "{lie} elements"
            );
        }
        // Through the header, as a decoder reads it.
        assert!(seg.map().write(16, &(room + 1).to_le_bytes()));
        let len = seg.check_header(Kind::Array, 8, tag::<u64>(false)).unwrap();
        assert!(decode(len).is_err());
        // A Value's segment must hold exactly one.
        assert!(Slots::<u64>::checked_len(seg.clone(), Kind::Value, 2).is_err());
    }
}
