//! What the fuzz targets share: reference models of CPython's framing and handshake
//! (written from CPython's `multiprocessing/connection.py`, not from the library), a cursor
//! over the fuzz input, an allocation meter, and socket helpers for the scripted peers.

pub mod model;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};

// -------------------------------------------------------------------------------------------
// Allocation meter

/// The global allocator of every target: the system's, noting the largest single request
/// made by a thread while it is measuring (see [`measure`]).
pub struct Meter;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

#[inline]
fn note(size: usize) {
    let _ = MEASURING.try_with(|m| {
        if m.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded to `System` with the same arguments; `note` only reads and
// writes const-initialised thread-locals without destructors (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Meter = Meter;

/// Runs `f` and returns its result with the largest single allocation this thread asked
/// for meanwhile.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    (r, LARGEST.with(|l| l.get()))
}

// -------------------------------------------------------------------------------------------
// Input

/// Reads the fuzz input front to back; past its end every read gives zeros / empty slices,
/// so any input is a complete script.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }

    /// Exactly `n` bytes, zero-padded at the end of the input.
    pub fn padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.bytes(n).to_vec();
        v.resize(n, 0);
        v
    }

    pub fn uint(&mut self, width: usize) -> u64 {
        self.padded(width)
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

// -------------------------------------------------------------------------------------------
// Sockets

/// Sends all of `data` on a stream socket, `fds` attached to its first byte. Never raises
/// SIGPIPE (libFuzzer's `main` does not make Rust's runtime ignore it): a closed peer is an
/// error.
pub fn send_all(sock: impl AsFd, data: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut sent = 0;
    let mut first = true;
    while sent < data.len() || first {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if first && !borrowed.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&borrowed));
        }
        first = false;
        match rustix::net::sendmsg(
            sock.as_fd(),
            &[IoSlice::new(&data[sent..])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How many descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A descriptor to attach to a message (its own open file, so nothing else holds it).
pub fn spare_fd() -> OwnedFd {
    std::fs::File::open("/dev/null")
        .expect("open /dev/null")
        .into()
}
