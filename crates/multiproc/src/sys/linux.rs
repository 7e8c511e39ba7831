//! Linux implementation of the OS layer (see `sys/mod.rs` for the contract).
//!
//! # Safety
//!
//! This file opts in to `unsafe` for process control only, each use wrapped in a function
//! that states its preconditions: `fork(2)` ([`fork`]), `_exit(2)` ([`exit_now`]),
//! `atexit(3)` ([`register_atexit`]), removing a variable from the environment
//! ([`remove_env_var_at_startup`]), `close_range(2)` ([`close_all_fds_except`]), signal
//! dispositions ([`ignore_sigint`], [`default_sigchld`]), reading the aux vector
//! ([`exe_image`]) and pointing a descriptor number at /dev/null ([`neutralize_fd`]).
//! Everything else goes through `rustix`'s safe wrappers.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::{PidfdFlags, Signal, WaitId, WaitIdOptions};

pub(crate) use rustix::process::Pid;

mod net;
pub(crate) use net::*;
mod shm;
pub(crate) use shm::*;

// ---------------------------------------------------------------------------------------------
// Processes

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(rustix::time::ClockId::Monotonic)
}

/// The CPU time this thread has used, in nanoseconds (a system call: only for rare checks).
pub(crate) fn thread_cpu_ns() -> u64 {
    clock_ns(rustix::time::ClockId::ThreadCPUTime)
}

fn clock_ns(clock: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(clock);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// This process's pid.
pub(crate) fn getpid() -> Pid {
    rustix::process::getpid()
}

/// Turns a raw pid from the wire into a [`Pid`], refusing zero and negatives.
pub(crate) fn pid_from_raw(raw: i32) -> Option<Pid> {
    Pid::from_raw(raw)
}

/// The parent this process was told of is gone.
#[derive(Debug)]
pub(crate) struct ParentGone;

/// A pidfd for this process's real parent, if that is `expected` (fork and spawn children);
/// `Ok(None)` when the real parent is another process (the forkserver's children).
///
/// # Errors
///
/// [`ParentGone`] when `expected` was the real parent and has already ended (this process
/// has been re-parented).
pub(crate) fn pidfd_of_real_parent(expected: i32) -> Result<Option<OwnedFd>, ParentGone> {
    let real = || rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if real() != expected {
        // Either another process forked us (the forkserver), or our parent already died and
        // we were re-parented. The forkserver's children know their parent by the channel.
        return Ok(None);
    }
    let Some(pid) = Pid::from_raw(expected) else {
        return Ok(None);
    };
    let fd = pidfd_open(pid).map_err(|_| ParentGone)?;
    // Opened after checking: if the parent died in between, the pid may name another
    // process now, but then we were re-parented, which the second check sees.
    if real() != expected {
        return Err(ParentGone);
    }
    Ok(Some(fd))
}

/// Opens a pidfd for `pid`. For a child that has not been reaped this cannot race with pid
/// reuse; for any other process the caller must know the process is alive.
pub(crate) fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// The signals multiproc sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sig {
    Term,
    Kill,
}

/// Sends a signal through a pidfd. A process that has already ended is not an error.
pub(crate) fn send_signal(pidfd: BorrowedFd<'_>, sig: Sig) -> io::Result<()> {
    let sig = match sig {
        Sig::Term => Signal::TERM,
        Sig::Kill => Signal::KILL,
    };
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Kills a child of ours by pid and reaps it (used when it cannot be watched by a pidfd; it
/// has not been reaped, so the pid is still its own).
pub(crate) fn kill_and_reap(pid: Pid) {
    let _ = rustix::process::kill_process(pid, Signal::KILL);
    let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
}

/// Kills this very process with SIGKILL (used by a daemon whose parent has gone).
pub(crate) fn kill_self() -> ! {
    let _ = rustix::process::kill_process(getpid(), Signal::KILL);
    exit_now(137)
}

/// How a process ended, as `waitid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum RawExit {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number ended it.
    Signal(i32),
}

/// Reaps the child behind `pidfd` if it has ended; `Ok(None)` while it runs.
///
/// `ECHILD` (someone else reaped it, or it is not our child) is returned as an error so the
/// caller can tell.
pub(crate) fn reap_nohang(pidfd: BorrowedFd<'_>) -> io::Result<Option<RawExit>> {
    let status = rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )?;
    Ok(status.and_then(|s| {
        if let Some(sig) = s.terminating_signal() {
            Some(RawExit::Signal(sig))
        } else {
            s.exit_status().map(RawExit::Code)
        }
    }))
}

/// The result of [`fork`].
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// `fork(2)`.
///
/// # Safety
///
/// In the child only the calling thread exists. Until it calls [`exit_now`] or `exec`, the
/// child must not touch any lock that another thread of the parent might have held at the
/// moment of the fork (locks the caller itself holds across the call are fine: their state is
/// known). The caller takes every multiproc lock before calling and releases it after, in
/// both processes.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY:
    // - `fork` has no memory-safety preconditions of its own; what the child may do after it
    //   is this function's documented contract, which the caller upholds.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            Ok(Forked::Parent(Pid::from_raw(pid).ok_or_else(|| {
                io::Error::other("fork returned a bad pid")
            })?))
        }
    }
}

/// Ends this process at once with `code`: no destructors, no `atexit` handlers, no flushing
/// of Rust's stdout buffer (flush it first).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY:
    // - `_exit` takes any int and never returns; it is async-signal-safe, so it is fine in a
    //   child of a multi-threaded parent.
    unsafe { libc::_exit(code) }
}

/// Registers `f` to run when the process exits normally (return from `main` or
/// `std::process::exit`).
pub(crate) fn register_atexit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY:
    // - `f` is a plain `extern "C" fn()` with a 'static lifetime, as `atexit` requires;
    // - `atexit` is thread-safe in glibc and musl.
    let rc = unsafe { libc::atexit(f) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other("atexit registration failed"))
    }
}

/// Removes `key` from the environment. Called only by the start-up hook, whose contract is
/// to run first thing in `main` (or first thing in a test function in a process started for
/// that test alone), before the program has threads that could read the environment.
pub(crate) fn remove_env_var_at_startup(key: &str) {
    // SAFETY:
    // - `remove_var` requires that no other thread reads or writes the environment at the
    //   same time; the only caller is the start-up hook, which runs before the program starts
    //   threads (a libtest runner thread exists in test children, but it is blocked waiting for
    //   the test that is running this code).
    unsafe { std::env::remove_var(key) }
}

/// Closes every descriptor above standard error except `keep` (used in a fresh child of the
/// forkserver, which must keep nothing of the server's).
///
/// The caller is a freshly forked child of the single-threaded forkserver that never returns
/// into the server's code, so the server's `OwnedFd` values in its memory are never used or
/// dropped again.
pub(crate) fn close_all_fds_except(keep: RawFd) {
    let ranges = [(3, keep - 1), (keep + 1, RawFd::MAX)];
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        // SAFETY:
        // - `close_range` only closes descriptors; per this function's contract nothing in
        //   this process uses or drops the numbers it closes again.
        let rc = unsafe { libc::close_range(lo as libc::c_uint, hi as libc::c_uint, 0) };
        if rc != 0 {
            // Kernels before 5.9: close what /proc lists.
            let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
                continue;
            };
            let fds: Vec<RawFd> = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| (lo..=hi).contains(fd))
                .collect();
            for fd in fds {
                // SAFETY:
                // - as above: nothing in this process uses these numbers again.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// `/dev/null`, opened once and kept. Call it before a fork so the child finds it open.
pub(crate) fn dev_null() -> Option<&'static File> {
    static NULL: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| File::open("/dev/null").ok()).as_ref()
}

/// Replaces the open file behind descriptor number `fd` by `/dev/null`, keeping the number
/// valid. Used in a fork child for descriptors that belong to the parent's bookkeeping: the
/// parent's `OwnedFd` values still exist in the child's copy of memory, so the numbers must
/// stay open (closing them could let a later `open` reuse a number some `OwnedFd` will close).
pub(crate) fn neutralize_fd(fd: RawFd) {
    if let Some(null) = dev_null() {
        // SAFETY:
        // - `fd` is a descriptor this process owns (the caller's bookkeeping says so); `dup2`
        //   atomically swaps the file behind it and the number stays owned by the same
        //   `OwnedFd`, so nothing is closed twice.
        let mut target = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let _ = rustix::io::dup2(null, &mut target);
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting

/// Converts an optional timeout for `poll`.
fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Waits until at least one descriptor is ready or the timeout passes; returns the ready
/// indices (empty on timeout). `EINTR` is retried with the time left.
pub(crate) fn poll_fds(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<usize>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
            .collect();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ts = left.map(timespec);
        match rustix::event::poll(&mut pfds, ts.as_ref()) {
            Ok(_) => {
                return Ok(pfds
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.revents().is_empty())
                    .map(|(i, _)| i)
                    .collect());
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Blocks until `fd` is readable or `timeout` passes; true when readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    Ok(!poll_fds(&[fd], timeout)?.is_empty())
}

/// An epoll set whose members are keyed by a `u64`. Used by the reaper thread.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            fd: rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)?,
        })
    }

    pub(crate) fn add(&self, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        Ok(rustix::event::epoll::add(
            &self.fd,
            fd,
            rustix::event::epoll::EventData::new_u64(key),
            rustix::event::epoll::EventFlags::IN,
        )?)
    }

    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) {
        let _ = rustix::event::epoll::delete(&self.fd, fd);
    }

    /// The keys of the members that are ready now.
    pub(crate) fn ready_now(&self) -> io::Result<Vec<u64>> {
        const BATCH: usize = 64;
        let mut events = Vec::with_capacity(BATCH);
        let mut keys = Vec::new();
        let zero = timespec(Duration::ZERO);
        loop {
            events.clear();
            match rustix::event::epoll::wait(
                &self.fd,
                rustix::buffer::spare_capacity(&mut events),
                Some(&zero),
            ) {
                Ok(_) => {
                    keys.extend(events.iter().map(|e| e.data.u64()));
                    // A full batch: there may be more.
                    if events.len() < BATCH {
                        return Ok(keys);
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

// ---------------------------------------------------------------------------------------------
// Channels: AF_UNIX stream socket pairs carrying frames with descriptors

/// A connected pair of close-on-exec stream sockets.
pub(crate) fn channel_pair() -> io::Result<(UnixStream, UnixStream)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

/// Sends `bytes` as one frame (a 4-byte little-endian length, then the bytes), with `fds`
/// attached. Waits until all is written, at most `timeout` (then `TimedOut`); never raises
/// SIGPIPE.
pub(crate) fn send_frame(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    send_all(sock, [&len.to_le_bytes(), bytes, &[]], fds, deadline)
}

/// One complete frame as read from a channel.
pub(crate) struct Frame {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Reassembles frames from a stream socket, keeping partial data between calls so it can be
/// driven by non-blocking reads.
#[derive(Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Descriptors received, by read (see [`claim_fds`]).
    fds: Vec<FdBatch>,
    /// Stream position of `buf[0]`.
    consumed: u64,
    eof: bool,
    /// The largest frame accepted; 0 means [`MAX_FRAME`].
    limit: usize,
}

/// The largest frame a channel accepts (frames carry control messages only; bulk data goes
/// through a memfd).
pub(crate) const MAX_FRAME: usize = 64 << 20;

impl FrameReader {
    /// A reader that refuses frames longer than `limit` (for peers not yet authenticated).
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Lifts the limit back to [`MAX_FRAME`].
    pub(crate) fn unlimit(&mut self) {
        self.limit = 0;
    }
    /// True once the peer has closed its end.
    pub(crate) fn at_eof(&self) -> bool {
        self.eof
    }

    /// Takes the next complete frame from what has been read, if any.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let limit = if self.limit == 0 {
            MAX_FRAME
        } else {
            self.limit
        };
        if len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "channel frame too large",
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let bytes = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        let (start, end) = (self.consumed, self.consumed + (4 + len) as u64);
        self.consumed = end;
        Ok(Some(Frame {
            bytes,
            fds: claim_fds(&mut self.fds, start, end),
        }))
    }

    /// Reads what is available. With `block`, waits for at least some data (or EOF);
    /// otherwise returns at once. Returns false when nothing more can come (EOF).
    pub(crate) fn fill(&mut self, sock: BorrowedFd<'_>, block: bool) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        // Small on the stack: control frames are tiny, and every stack page touched after a
        // fork costs a copy-on-write fault. Bulk data (large instructions) reads in a heap
        // buffer.
        let mut small = [0u8; 1024];
        let mut large: Vec<u8> = Vec::new();
        let mut wait = block;
        loop {
            let chunk: &mut [u8] = if large.is_empty() {
                &mut small
            } else {
                &mut large
            };
            let capacity = chunk.len();
            let mut got = Vec::new();
            let n = match recv_some(sock, chunk, &mut got, wait) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            };
            let start = self.consumed + self.buf.len() as u64;
            self.fds
                .extend(got.into_iter().map(|fd| (start, start + n as u64, fd)));
            if n == 0 {
                self.eof = true;
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if block {
                return Ok(true);
            }
            if n == capacity && large.is_empty() {
                large = vec![0u8; 64 * 1024];
            }
            wait = false;
        }
    }

    /// Reads until one whole frame is here, or the timeout passes (`Ok(None)`), or EOF
    /// (`UnexpectedEof`).
    pub(crate) fn recv_frame(
        &mut self,
        sock: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<Frame>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(Some(f));
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "channel closed",
                ));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            if !wait_readable(sock, left)? {
                return Ok(None);
            }
            self.fill(sock, false)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Anonymous memory files (large results travel in one)

/// Writes `bytes` into a new anonymous memory file and returns it (its size is checked by
/// [`read_memfd`] on the other side).
pub(crate) fn memfd_with(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("multiproc-result", rustix::fs::MemfdFlags::CLOEXEC)?;
    let file = File::from(fd);
    file.write_all_at(bytes, 0)?;
    Ok(OwnedFd::from(file))
}

/// Reads `len` bytes from the start of a file received from a child.
pub(crate) fn read_memfd(fd: OwnedFd, len: u64) -> io::Result<Vec<u8>> {
    let file = File::from(fd);
    let size = file.metadata()?.len();
    if size != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "result file has the wrong size",
        ));
    }
    let mut out = Vec::with_capacity(len as usize);
    (&file).take(len).read_to_end(&mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Spawning

/// An `exec` of a program whose standard input is the channel to its parent.
///
/// Passing the channel as standard input (rather than clearing close-on-exec in a `pre_exec`
/// hook) lets std start the child with `posix_spawn`, which does not copy the parent's page
/// tables: a parent with a gigabyte resident spawns as fast as a small one.
pub(crate) struct SpawnCommand {
    cmd: Command,
}

impl SpawnCommand {
    pub(crate) fn new(exe: &Path) -> Self {
        Self {
            cmd: Command::new(exe),
        }
    }

    pub(crate) fn arg0(&mut self, a: &OsStr) -> &mut Self {
        self.cmd.arg0(a);
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(
        &mut self,
        args: I,
    ) -> &mut Self {
        self.cmd.args(args);
        self
    }

    pub(crate) fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.cmd.env(k, v);
        self
    }

    pub(crate) fn null_stdout(&mut self) -> &mut Self {
        self.cmd.stdout(Stdio::null());
        self
    }

    /// Makes `channel` the child's standard input.
    pub(crate) fn channel_as_stdin(&mut self, channel: OwnedFd) -> &mut Self {
        self.cmd.stdin(Stdio::from(channel));
        self
    }

    /// Starts the program; returns its pid. Exec failures come back as errors.
    pub(crate) fn spawn(mut self) -> io::Result<Pid> {
        let child = self.cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32)
            .ok_or_else(|| io::Error::other("spawn returned a bad pid"))?;
        // `std::process::Child` does not wait on drop; the pid is ours to reap.
        drop(child);
        Ok(pid)
    }
}

/// In a spawned child: takes the channel to the parent from standard input, where the parent
/// put it, and points standard input at /dev/null until the parent's own standard input
/// arrives with the instructions. `None` if standard input is not a socket.
pub(crate) fn adopt_channel_from_stdin() -> Option<UnixStream> {
    let stdin = rustix::stdio::stdin();
    let stat = rustix::fs::fstat(stdin).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return None;
    }
    let channel = rustix::io::fcntl_dupfd_cloexec(stdin, 3).ok()?;
    if let Some(null) = dev_null() {
        let _ = rustix::stdio::dup2_stdin(null);
    }
    Some(UnixStream::from(channel))
}

/// Puts `fd` on standard input (descriptor 0).
pub(crate) fn set_stdin(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::stdio::dup2_stdin(fd)?)
}

/// Duplicates standard input as a new owned descriptor (`None` if it is closed).
pub(crate) fn dup_stdin() -> Option<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3).ok()
}

/// Puts `fd` on standard output (descriptor 1).
pub(crate) fn set_stdout(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::stdio::dup2_stdout(fd)?)
}

/// Duplicates standard output as a new owned descriptor.
pub(crate) fn dup_stdout() -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?)
}

/// Writes to standard error without std's lock (for reports that must never wait).
pub(crate) fn write_stderr_raw(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(rustix::stdio::stderr(), bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Restores the default SIGCHLD disposition (the forkserver must reap its children itself).
pub(crate) fn default_sigchld() {
    // SAFETY:
    // - installing SIG_DFL runs no code of ours in signal context.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// Whether the peer of a Unix socket runs as this process's user.
pub(crate) fn peer_is_same_user(sock: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_peercred(sock)
        .is_ok_and(|cred| cred.uid == rustix::process::getuid())
}

/// The pid of the process at the other end of a Unix socket (as of `connect`/`listen`).
pub(crate) fn peer_pid(sock: BorrowedFd<'_>) -> io::Result<i32> {
    Ok(rustix::net::sockopt::socket_peercred(sock)?
        .pid
        .as_raw_nonzero()
        .get())
}

/// Ignores SIGINT (the forkserver does, as CPython's does: Ctrl-C is for the program).
pub(crate) fn ignore_sigint(ignore: bool) {
    let handler = if ignore { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY:
    // - installing SIG_IGN or SIG_DFL runs no code of ours in signal context.
    unsafe { libc::signal(libc::SIGINT, handler) };
}

/// Ignores SIGTERM (the segment tracker does, as CPython's resource tracker does).
pub(crate) fn ignore_sigterm() {
    // SAFETY:
    // - installing SIG_IGN runs no code of ours in signal context.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
}

/// Ignores SIGHUP (the segment tracker must outlive a closed terminal long enough to clean
/// up after the program's processes).
pub(crate) fn ignore_sighup() {
    // SAFETY:
    // - installing SIG_IGN runs no code of ours in signal context.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
}

// ---------------------------------------------------------------------------------------------
// The running executable

/// The path that always names the running executable, even if its file was replaced.
pub(crate) fn self_exe() -> &'static Path {
    Path::new("/proc/self/exe")
}

/// What multiproc needs to know about the running executable, read from its ELF headers.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExeImage {
    /// The GNU build-id note, if the linker wrote one.
    pub(crate) build_id: Option<Vec<u8>>,
    /// Where the executable's loadable segments are mapped in this process.
    pub(crate) range: Option<(usize, usize)>,
}

/// Reads the build id and the mapped range of the running executable: one open and a few
/// `pread`s of its headers, plus `AT_PHDR` from the aux vector to find the load address.
pub(crate) fn exe_image() -> io::Result<ExeImage> {
    let file = File::open(self_exe())?;
    let mut ehdr = [0u8; 64];
    file.read_exact_at(&mut ehdr, 0)?;
    if &ehdr[0..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        // Not a 64-bit little-endian ELF: nothing to read here.
        return Ok(ExeImage::default());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36) as usize;
    let phnum = u16_at(&ehdr, 0x38) as usize;
    if phentsize < 56 || phnum > 512 {
        return Ok(ExeImage::default());
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    file.read_exact_at(&mut phdrs, phoff)?;
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const PT_PHDR: u32 = 6;
    let mut image = ExeImage::default();
    let (mut lo, mut hi, mut phdr_vaddr) = (u64::MAX, 0u64, None);
    for ph in phdrs.chunks_exact(phentsize) {
        let (kind, offset, vaddr) = (u32_at(ph, 0), u64_at(ph, 0x08), u64_at(ph, 0x10));
        let (filesz, memsz) = (u64_at(ph, 0x20), u64_at(ph, 0x28));
        match kind {
            PT_LOAD => {
                lo = lo.min(vaddr);
                hi = hi.max(vaddr.saturating_add(memsz));
            }
            PT_PHDR => phdr_vaddr = Some(vaddr),
            PT_NOTE if image.build_id.is_none() && filesz <= 1 << 16 => {
                let mut notes = vec![0u8; filesz as usize];
                file.read_exact_at(&mut notes, offset)?;
                image.build_id = find_build_id(&notes, &u32_at);
            }
            _ => {}
        }
    }
    // The load address: where the program headers are in memory, minus where the file says.
    let at_phdr = aux_program_headers();
    if let (Some(vaddr), Some(at_phdr)) = (phdr_vaddr, at_phdr) {
        if lo < hi {
            let base = at_phdr.wrapping_sub(vaddr as usize);
            image.range = Some((
                base.wrapping_add(lo as usize),
                base.wrapping_add(hi as usize),
            ));
        }
    }
    Ok(image)
}

fn find_build_id(notes: &[u8], u32_at: &dyn Fn(&[u8], usize) -> u32) -> Option<Vec<u8>> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_at = at + 12;
        let desc_at = name_at + namesz.next_multiple_of(4);
        let end = desc_at + descsz.next_multiple_of(4);
        if end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes[name_at..name_at + namesz] == *b"GNU\0" {
            return Some(notes[desc_at..desc_at + descsz].to_vec());
        }
        at = end;
    }
    None
}

/// `getauxval(AT_PHDR)`: the address of the executable's program headers in memory.
fn aux_program_headers() -> Option<usize> {
    // SAFETY:
    // - `getauxval` only reads the process's auxiliary vector; it has no preconditions.
    let v = unsafe { libc::getauxval(libc::AT_PHDR) };
    (v != 0).then_some(v as usize)
}

/// Random bytes from the kernel.
///
/// From `getrandom(2)`, or `/dev/urandom` where that fails. Should both fail (a sandbox that
/// forbids both), the bytes are derived from the clock, the pid and addresses, with a warning
/// on standard error: never all zeros, but not secret either.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        match rustix::rand::getrandom(&mut out[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    if filled < N {
        let from_device =
            File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut out[filled..]));
        if from_device.is_err() {
            weak_random(&mut out);
        }
    }
    out
}

#[cold]
fn weak_random(out: &mut [u8]) {
    use sha2::Digest;
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        // Written straight to descriptor 2, not through std's stderr lock: this can run inside
        // a launch, where taking that lock could deadlock with a forking thread.
        write_stderr_raw(
            b"multiproc: no source of randomness (getrandom, /dev/urandom); keys are weak\n",
        );
    });
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        let mut h = sha2::Sha256::new();
        h.update(now.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(
            COUNTER
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
        h.update((chunk.as_ptr() as usize).to_le_bytes());
        h.update(i.to_le_bytes());
        let digest = h.finalize();
        chunk.copy_from_slice(&digest[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// A descriptor belongs to the frame it was sent with, even when several frames arrive
    /// in one read.
    #[test]
    fn descriptors_stay_with_their_frame() {
        let (a, b) = channel_pair().expect("pair");
        let null = File::open("/dev/null").expect("/dev/null");
        send_frame(a.as_fd(), b"first", &[], None).expect("send");
        send_frame(a.as_fd(), b"second", &[null.as_fd()], None).expect("send");
        send_frame(a.as_fd(), b"third", &[], None).expect("send");
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        while frames.len() < 3 {
            let f = reader
                .recv_frame(b.as_fd(), Some(Duration::from_secs(5)))
                .expect("recv");
            frames.push(f.expect("a frame in time"));
        }
        let seen: Vec<(&[u8], usize)> = frames
            .iter()
            .map(|f| (f.bytes.as_slice(), f.fds.len()))
            .collect();
        assert_eq!(
            seen,
            [(&b"first"[..], 0), (&b"second"[..], 1), (&b"third"[..], 0)]
        );
    }

    #[test]
    fn random_bytes_differ() {
        assert_ne!(random_bytes::<32>(), random_bytes::<32>());
        assert_ne!(random_bytes::<32>(), [0u8; 32]);
    }
}
