//! Shared memory and futexes: POSIX shared memory objects, their mappings, the futex calls
//! every lock sleeps in, and who the calling thread is.
//!
//! # Safety
//!
//! This file opts in to `unsafe` for `mmap(2)` and `munmap(2)` ([`Mapping`]), for turning
//! addresses inside a live mapping into references to atomics ([`Mapping::atomic_u32`] and
//! friends, which check bounds and alignment), for the chunked relaxed-atomic copies between
//! shared and private memory ([`copy_out`], [`copy_in`]: [`Mapping::read`] and
//! [`Mapping::write`] use them, and so do the typed objects of `shm/value.rs`), so that no
//! two threads copying in and out of one mapping ever race, and for the slices of
//! [`Mapping::slice`] and [`Mapping::slice_mut`], whose callers promise that no one writes
//! (or touches) the range while the slice lives. `pthread_atfork(3)` registers the handler that keeps the cached
//! thread identity true in a fork child.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Once;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use rustix::fs::Mode;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::shm::OFlags;
use rustix::thread::futex;

// ---------------------------------------------------------------------------------------------
// Shared memory objects

/// Creates the POSIX shared memory object `/name` (`name` without the slash), exclusively,
/// readable and writable by this user only, `size` bytes long.
pub(crate) fn shm_create(name: &str, size: u64) -> io::Result<OwnedFd> {
    let fd = rustix::shm::open(
        shm_path(name).as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
        Mode::RUSR | Mode::WUSR,
    )?;
    if let Err(e) = rustix::fs::ftruncate(&fd, size) {
        let _ = rustix::shm::unlink(shm_path(name).as_str());
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing shared memory object `/name` for reading and writing.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::shm::open(
        shm_path(name).as_str(),
        OFlags::RDWR,
        Mode::empty(),
    )?)
}

/// Removes the name `/name`; the memory lives on while anyone maps it or holds a descriptor.
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    Ok(rustix::shm::unlink(shm_path(name).as_str())?)
}

fn shm_path(name: &str) -> String {
    format!("/{name}")
}

/// Allocates the object's memory now, so that running out of it is an error here
/// (`ENOSPC`) rather than a SIGBUS at the first write to a page that cannot be had.
pub(crate) fn reserve(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(
        fd,
        rustix::fs::FallocateFlags::empty(),
        0,
        size,
    )?)
}

/// The size in bytes of the object behind `fd`.
pub(crate) fn fd_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| io::Error::other("negative size"))
}

// ---------------------------------------------------------------------------------------------
// Mappings

/// A shared, readable and writable mapping of a whole shared memory object; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY:
// - A `Mapping` is an address range that stays valid until drop; it has no thread-affine
//   state.
// - What is stored in it is shared with other processes anyway, and every access to its
//   contents that safe code can make through it is atomic: the atomics of `atomic_u32` and
//   friends, and the chunked relaxed-atomic copies of `read` and `write`.
// - The rest is raw: the pointers of `as_ptr` and `typed_ptr` (whose users access through
//   them only atomically or under their own exclusion, see `shm/value.rs`) and the `unsafe`
//   slice accessors, whose callers take on the synchronisation.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` hands out only atomics, atomic copies, raw pointers and
// `unsafe` slices, so two threads using one `Mapping` at once never race in Rust's sense.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` (`len` > 0), shared, for reading and writing.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map zero bytes",
            ));
        }
        // SAFETY:
        // - a null hint lets the kernel choose a fresh range, so no existing mapping or Rust
        //   object is replaced; `fd` is open for reading and writing; `len` is non-zero.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd.as_fd(),
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte. Writing through it is the caller's business (see the file header).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Asks the kernel to fault every page in now (so a first write does not pay a page
    /// fault per 4 KiB); a kernel without `MADV_POPULATE_WRITE` is simply not asked.
    pub(crate) fn prefault(&self) {
        // SAFETY:
        // - the range is exactly this live mapping; populating writes no data.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast::<c_void>(),
                self.len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }

    fn check(&self, offset: usize, size: usize, align: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `offset + size <= len`, so the pointer stays inside the mapping.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        (p as usize % align == 0).then_some(p)
    }

    /// The `u32` at `offset` as an atomic, or `None` if it is out of range or misaligned.
    pub(crate) fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        let p = self.check(offset, 4, align_of::<AtomicU32>())?;
        // SAFETY:
        // - `p` is in bounds and aligned (checked), and valid for `'self` (the mapping lives
        //   until drop); every bit pattern is a valid `u32`; other processes access the word
        //   only atomically (the layouts of this crate say so).
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    /// The `u64` at `offset` as an atomic, or `None` if it is out of range or misaligned.
    pub(crate) fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        let p = self.check(offset, 8, align_of::<AtomicU64>())?;
        // SAFETY: as in `atomic_u32`.
        Some(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    /// A raw pointer to `count` values of `T` at `offset`, or `None` if out of range or
    /// misaligned.
    pub(crate) fn typed_ptr<T>(&self, offset: usize, count: usize) -> Option<*mut T> {
        let size = size_of::<T>().checked_mul(count)?;
        self.check(offset, size, align_of::<T>())
            .map(|p| p.cast::<T>())
    }

    /// Copies `buf.len()` bytes from `offset` into `buf` in relaxed atomic loads of 8
    /// bytes, then fences like an acquire; `false` if out of range. Bytes written meanwhile
    /// by another thread or process may arrive torn (some old, some new), never racing.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        let Some(p) = self.check(offset, buf.len(), 1) else {
            return false;
        };
        let (head, middle, tail) = split_aligned(p as usize, buf.len());
        // The partial words at both ends: loaded whole, the wanted bytes kept.
        for (at, n) in [(0, head), (head + middle, tail)] {
            if n > 0 {
                let word = self
                    .word_around(p, at)
                    .load(Ordering::Relaxed)
                    .to_ne_bytes();
                let skip = (p as usize + at) % 8;
                buf[at..at + n].copy_from_slice(&word[skip..skip + n]);
            }
        }
        // SAFETY:
        // - `p + head .. + middle` is inside the mapping (checked), aligned to 8
        //   (`split_aligned`), and accessed only atomically meanwhile: every access that
        //   `&Mapping` gives is (see the `Sync` impl), and the raw pointers' users touch only
        //   the typed objects' elements, which no one reads or writes with these calls;
        // - `buf[head .. head + middle]` is private and exclusively borrowed;
        // - 8 is a width, and `middle` a multiple of it.
        // (`copy_out` ends with the acquire fence, after the partial words too.)
        unsafe { copy_out(p.add(head), buf.as_mut_ptr().add(head), middle, 8) };
        true
    }

    /// Fences like a release, then copies `data` to `offset` in relaxed atomic stores of 8
    /// bytes (the partial words at both ends by compare-and-swap, keeping their other bytes);
    /// `false` if out of range.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> bool {
        let Some(p) = self.check(offset, data.len(), 1) else {
            return false;
        };
        fence(Ordering::Release);
        let (head, middle, tail) = split_aligned(p as usize, data.len());
        for (at, n) in [(0, head), (head + middle, tail)] {
            if n > 0 {
                let skip = (p as usize + at) % 8;
                let _ = self.word_around(p, at).fetch_update(
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                    |w| {
                        let mut bytes = w.to_ne_bytes();
                        bytes[skip..skip + n].copy_from_slice(&data[at..at + n]);
                        Some(u64::from_ne_bytes(bytes))
                    },
                );
            }
        }
        // SAFETY:
        // - `p + head .. + middle` is inside the mapping (checked), aligned to 8, and
        //   accessed only atomically (as in `read`);
        // - `data[head .. head + middle]` is initialised (a `&[u8]`);
        // - 8 is a width, and `middle` a multiple of it.
        unsafe { copy_in(data.as_ptr().add(head), p.add(head), middle, 8) };
        true
    }

    /// The 8-byte-aligned word holding the byte `p + at`, as an atomic.
    ///
    /// `p + at` must be a byte of the mapping (the callers checked the range).
    fn word_around(&self, p: *mut u8, at: usize) -> &AtomicU64 {
        let addr = p as usize + at;
        let base = p.wrapping_add(at).wrapping_sub(addr % 8);
        // SAFETY:
        // - `p + at` is a byte of the mapping (the caller's promise); the mapping starts on
        //   a page and `mmap` maps whole pages, so the aligned 8 bytes around that byte lie
        //   in mapped memory that lives as long as `self` (past `len` only within the last
        //   page, which the object's zero fill covers);
        // - `base` is aligned to 8; every access to those bytes through `&Mapping` is an
        //   8-byte atomic (or a chunk of `copy_in`/`copy_out` of width 8).
        unsafe { AtomicU64::from_ptr(base.cast::<u64>()) }
    }

    /// The bytes from `offset`, `len` long.
    ///
    /// # Safety
    ///
    /// - No one (in this or any other process) writes the range while the slice lives.
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let p = self.check(offset, len, 1)?;
        // SAFETY: in bounds (checked), valid for the mapping's life; the caller promises
        // that no one writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(p.cast_const(), len) })
    }

    /// The bytes from `offset`, `len` long, writable.
    ///
    /// # Safety
    ///
    /// - No one else (in this or any other process) reads or writes the range while the
    ///   slice lives.
    #[allow(clippy::mut_from_ref)] // the memory is shared; exclusivity is the caller's promise
    pub(crate) unsafe fn slice_mut(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let p = self.check(offset, len, 1)?;
        // SAFETY: in bounds (checked), valid for the mapping's life; the caller promises
        // exclusive access meanwhile.
        Some(unsafe { std::slice::from_raw_parts_mut(p, len) })
    }
}

/// The head, middle and tail of `len` bytes from address `addr`: up to the first 8-byte
/// boundary (at most the whole), whole 8-byte words, and the rest.
fn split_aligned(addr: usize, len: usize) -> (usize, usize, usize) {
    let head = ((8 - addr % 8) % 8).min(len);
    let middle = (len - head) / 8 * 8;
    (head, middle, len - head - middle)
}

/// Copies `$len` bytes in chunks of `$w` bytes: for each chunk at byte `$i`, `$load` gives
/// its value (a `$u`; `$atom` is the atomic of that width) and `$store` puts `$v` away.
macro_rules! chunked {
    ($len:expr, $w:expr, |$i:ident, $u:ident, $atom:ident, $v:ident| $load:block $store:block) => {
        match $w {
            8 => chunked!(@ $len, u64, AtomicU64, |$i, $u, $atom, $v| $load $store),
            4 => chunked!(@ $len, u32, AtomicU32, |$i, $u, $atom, $v| $load $store),
            2 => chunked!(@ $len, u16, AtomicU16, |$i, $u, $atom, $v| $load $store),
            _ => chunked!(@ $len, u8, AtomicU8, |$i, $u, $atom, $v| $load $store),
        }
    };
    (@ $len:expr, $ut:ty, $at:ty, |$i:ident, $u:ident, $atom:ident, $v:ident| $load:block $store:block) => {{
        type $u = $ut;
        type $atom = $at;
        const W: usize = size_of::<$u>();
        let mut base = 0;
        // Four chunks a round, all loaded before any is stored: the compiler does not move
        // plain loads across atomic stores, and a round of independent stores runs at
        // `memcpy`'s speed where one load and store at a time runs at about two thirds of it.
        while base + 4 * W <= $len {
            let [c0, c1, c2, c3] = [0, 1, 2, 3].map(|k| {
                let $i = base + k * W;
                $load
            });
            for (k, $v) in [c0, c1, c2, c3].into_iter().enumerate() {
                let $i = base + k * W;
                $store
            }
            base += 4 * W;
        }
        while base < $len {
            let $i = base;
            let $v = $load;
            $store
            base += W;
        }
    }};
}

/// Copies `len` bytes out of shared memory at `src` into private memory at `dst`, in relaxed
/// atomic loads of `w` bytes, then fences like an acquire.
///
/// # Safety
///
/// - `src` is valid for reads and writes of `len` bytes for the call (inside a live
///   mapping), aligned to `w`, and every other access to those bytes in this process is
///   atomic, of width `w` (the layout's rule, see `shm/value.rs`).
/// - `dst` is valid for writes of `len` bytes and no other thread touches it.
/// - `w` is 1, 2, 4 or 8, and `len` is a multiple of it.
#[inline]
pub(crate) unsafe fn copy_out(src: *const u8, dst: *mut u8, len: usize, w: usize) {
    chunked!(len, w, |i, U, A, v| {
        // SAFETY:
        // - `src + i` is inside the range, aligned to `w` = the atomic's size and alignment,
        //   and only accessed atomically meanwhile (the caller's promises).
        unsafe { A::from_ptr(src.add(i).cast_mut().cast::<U>()) }.load(Ordering::Relaxed)
    } {
        // SAFETY:
        // - `dst + i .. + w` is inside the private destination (the caller's promise); it
        //   may be unaligned, hence `write_unaligned`.
        unsafe { dst.add(i).cast::<U>().write_unaligned(v) };
    });
    fence(Ordering::Acquire);
}

/// Fences like a release, then copies `len` bytes from private memory at `src` into shared
/// memory at `dst` in relaxed atomic stores of `w` bytes.
///
/// # Safety
///
/// - `dst` is valid for reads and writes of `len` bytes for the call (inside a live
///   mapping), aligned to `w`, and every other access to those bytes in this process is
///   atomic, of width `w`.
/// - `src` is valid for reads of `len` bytes, all initialised.
/// - `w` is 1, 2, 4 or 8, and `len` is a multiple of it.
#[inline]
pub(crate) unsafe fn copy_in(src: *const u8, dst: *mut u8, len: usize, w: usize) {
    fence(Ordering::Release);
    chunked!(len, w, |i, U, A, v| {
        // SAFETY:
        // - `src + i .. + w` is inside the initialised source (the caller's promise); it may
        //   be unaligned, hence `read_unaligned`.
        unsafe { src.add(i).cast::<U>().read_unaligned() }
    } {
        // SAFETY:
        // - `dst + i` is inside the range, aligned to `w`, and only accessed atomically
        //   meanwhile (the caller's promises).
        unsafe { A::from_ptr(dst.add(i).cast::<U>()) }.store(v, Ordering::Relaxed);
    });
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY:
        // - the range is exactly the one `mmap` returned, and nothing borrowed from it
        //   outlives `self` (every accessor borrows `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------------
// Futexes

/// Sleeps while `word` holds `expected`, for at most `timeout`. Shared (never
/// `FUTEX_PRIVATE_FLAG`): the word lives in memory other processes map. Returns when woken,
/// when the word differs, at a signal, or at the timeout; callers re-check the word.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Moves up to `n` sleepers from `from` to `to` without waking them, if `from` still holds
/// `expected` (a condition variable hands its notified waiters to its lock this way, so they
/// wake when the notifier unlocks rather than wake to find the lock held). Returns how many
/// moved.
pub(crate) fn futex_requeue(
    from: &AtomicU32,
    n: u32,
    to: &AtomicU32,
    expected: u32,
) -> io::Result<usize> {
    let n = n.min(i32::MAX as u32);
    Ok(futex::cmp_requeue(
        from,
        futex::Flags::empty(),
        0,
        n,
        to,
        expected,
    )?)
}

/// Wakes up to `n` sleepers on `word` (`u32::MAX`: all); returns how many woke.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    // The kernel reads the count as a signed int: `u32::MAX` would be -1, which wakes one.
    let n = n.min(i32::MAX as u32);
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Who is calling

static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);

extern "C" fn bump_fork_generation() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

thread_local! {
    /// (fork generation, pid, tid); pid 0 means not yet known.
    static WHO: Cell<(u32, u32, u32)> = const { Cell::new((0, 0, 0)) };
}

/// This process's pid and the calling thread's tid, as lock owners record them. Cached per
/// thread (a system call costs more than the uncontended lock), and refreshed in a fork child,
/// whatever made the fork.
#[inline]
pub(crate) fn caller() -> (u32, u32) {
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    // `try_with`: a lock may be used from a thread-local's destructor.
    let (g, pid, tid) = WHO.try_with(Cell::get).unwrap_or((0, 0, 0));
    if pid != 0 && g == generation {
        return (pid, tid);
    }
    caller_slow(generation)
}

#[cold]
fn caller_slow(generation: u32) -> (u32, u32) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY:
        // - the handler only increments an atomic, which is async-signal-safe and allowed in
        //   a fork child of a multi-threaded process.
        unsafe {
            libc::pthread_atfork(None, None, Some(bump_fork_generation));
        }
    });
    let pid = rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs();
    let tid = rustix::thread::gettid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs();
    let _ = WHO.try_with(|w| w.set((generation, pid, tid)));
    (pid, tid)
}

/// `kill(pid, 0)`; `None` for a pid no process can have.
fn test_kill(pid: u32) -> Option<rustix::io::Result<()>> {
    let p = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)?;
    Some(rustix::process::test_kill_process(p))
}

/// Whether a process `pid` exists (a zombie counts): one system call, for a non-blocking
/// try that must stay cheap.
pub(crate) fn process_exists(pid: u32) -> bool {
    match test_kill(pid) {
        None => false,
        Some(Ok(())) => true,
        Some(Err(e)) => e == rustix::io::Errno::PERM,
    }
}

/// Whether the process `pid` still exists (a zombie counts as gone: it holds nothing).
pub(crate) fn process_alive(pid: u32) -> bool {
    match test_kill(pid) {
        None => false,
        Some(Ok(())) => !is_zombie(pid),
        Some(Err(e)) => e != rustix::io::Errno::SRCH,
    }
}

fn is_zombie(pid: u32) -> bool {
    // The third field of /proc/PID/stat, after the parenthesised command name.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Whether waiters should spin before sleeping: this process may run on more than one CPU.
/// Read once per process (a system call costs more than a short spin); a child inherits
/// both its parent's affinity and this answer.
#[inline]
pub(crate) fn may_spin() -> bool {
    static ANSWER: AtomicU32 = AtomicU32::new(0);
    match ANSWER.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let spin = super::cpus_allowed() > 1;
            ANSWER.store(if spin { 2 } else { 1 }, Ordering::Relaxed);
            spin
        }
    }
}
