//! Shared memory and futexes: POSIX shared memory objects, their mappings, the futex calls
//! every lock sleeps in, and who the calling thread is.
//!
//! # Safety
//!
//! This file opts in to `unsafe` for `mmap(2)` and `munmap(2)` ([`Mapping`]), for turning
//! addresses inside a live mapping into references to atomics ([`Mapping::atomic_u32`] and
//! friends, which check bounds and alignment), and for the slices of [`Mapping::slice`] and
//! [`Mapping::slice_mut`], whose callers promise that no one writes (or touches) the range
//! while the slice lives. `pthread_atfork(3)` registers the handler that keeps the cached
//! thread identity true in a fork child.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
//   state. What is stored in it is shared with other processes anyway, so every access to
//   its contents goes through atomics or through the `unsafe` slice accessors, whose callers
//   take on the synchronisation.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`: `&Mapping` only hands out atomics, copies, or `unsafe` slices.
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

    /// Copies `buf.len()` bytes from `offset` into `buf`; `false` if out of range.
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        let Some(p) = self.check(offset, buf.len(), 1) else {
            return false;
        };
        // SAFETY:
        // - the source range is inside the mapping (checked) and cannot overlap `buf`, which
        //   is process-private memory; bytes written concurrently by another process may
        //   arrive torn, which `u8` tolerates.
        unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copies `data` to `offset`; `false` if out of range.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) -> bool {
        let Some(p) = self.check(offset, data.len(), 1) else {
            return false;
        };
        // SAFETY: as in `read`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        true
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

/// Whether a process `pid` exists (a zombie counts): one system call, for a non-blocking
/// try that must stay cheap.
pub(crate) fn process_exists(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Whether the process `pid` still exists (a zombie counts as gone: it holds nothing).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => !is_zombie(pid),
        Err(e) => e != rustix::io::Errno::SRCH,
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
