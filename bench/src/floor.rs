//! The OS floor: jobs done with nothing but raw system calls, to show what the kernel itself
//! costs.
//!
//! - [`fork_exit_wait`]: `fork()`, the child `_exit(0)`s at once, the parent `waitpid`s — the
//!   floor of the `fork` start method; [`fork_report_wait`] adds what any start+join that
//!   hands back a result and watches its child through a descriptor needs (a channel, a
//!   pidfd, one message); [`make_multi_threaded`] gives a floor's process a second thread, as
//!   a multiproc parent has (its reaper);
//! - [`ExecFloor::run`]: `fork()`, the child `execve`s this very bench binary with
//!   [`EXEC_CHILD_ARG`], which makes it `_exit(0)` at the top of `main`
//!   ([`exit_if_exec_child`]), the parent `waitpid`s — the floor of `spawn` and `forkserver`
//!   (a child that runs this program from its first instruction);
//! - [`SocketChild`]: a child forked on one end of an `AF_UNIX` `SOCK_STREAM` socketpair,
//!   echoing frames, swallowing a stream of them, or receiving one large one
//!   ([`SocketJob`]) — the floor of a `Connection`;
//! - [`SharedMap`], [`mutex_lock`]/[`mutex_unlock`] and [`SyncChild`]: a `MAP_SHARED`
//!   mapping of atomics, a futex mutex, and a forked child that increments, adds or plays
//!   ping-pong on it ([`SyncJob`]) — the floor of locks, values, events and arrays;
//! - [`RingChild`]: a forked child producing 64-byte items into a single-producer
//!   single-consumer ring in a `MAP_SHARED` mapping, futexes only to sleep — the floor of a
//!   queue;
//! - [`RawPool`]: a minimal pool of forked workers, a pipe to each and one back, tasks and
//!   results as fixed-size binary messages, several tasks in flight per worker — the floor of
//!   a pool.
//!
//! # Safety
//!
//! This is the bench's only file with `unsafe`: it calls `fork`, `execve`, `_exit`,
//! `waitpid`, `socketpair`, `read`, `write` and `close` through `libc` (and `memfd_create`,
//! `ftruncate`, `mmap`, `munmap` and `futex` for the shared-memory floors). Between `fork` and
//! `execve`/`_exit` the child calls nothing but those (and `clock_gettime`, through
//! `Instant::now`), which are async-signal-safe, allocates nothing, and touches no memory the
//! parent might change but the atomics of a shared mapping (everything it needs is built
//! before the fork), so it is sound even if the parent has other threads. The pool floor adds
//! `pipe2`, `fcntl` (to size a pipe) and `poll`, in the parent only; the reporting fork floor
//! adds `send` in the child, and `pidfd_open`, `poll`, `waitid` and `recv` in the parent.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The argument that makes the bench binary exit at the top of `main` (the exec floor's child).
pub(crate) const EXEC_CHILD_ARG: &str = "--floor-exec-child";

/// Ends the process at once with status 0 if it was started as the exec floor's child.
pub(crate) fn exit_if_exec_child() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == EXEC_CHILD_ARG)
    {
        // SAFETY:
        // - `_exit` accepts any status and never returns; it runs no destructor or handler.
        unsafe { libc::_exit(0) }
    }
}

/// Waits for `pid` and checks that it exited with status 0.
fn wait_exit_zero(pid: libc::pid_t) -> io::Result<()> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY:
        // - `status` is a valid, writable `c_int` for the duration of the call;
        // - `pid` is our own child, not yet waited for.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        if got == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "floor child ended with wait status {status:#x}"
        )))
    }
}

/// `fork()`; the child `_exit(0)`s at once; `waitpid`.
pub(crate) fn fork_exit_wait() -> io::Result<()> {
    // SAFETY:
    // - `fork` has no memory-safety preconditions; the child below only calls `_exit`, which
    //   is async-signal-safe (see the file header).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY:
            // - `_exit` accepts any status, never returns, and is async-signal-safe.
            unsafe { libc::_exit(0) }
        }
        pid => wait_exit_zero(pid),
    }
}

/// Gives this process a second thread, parked for good (once; returns when it runs). A
/// multiproc parent has one, its reaper; and once a process has had two threads, the C
/// library's `fork` takes its multi-threaded path (its allocator's and stdio's locks, and
/// more work in the child) for the rest of the process's life.
pub(crate) fn make_multi_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (running_tx, running_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = running_tx.send(());
            loop {
                std::thread::park();
            }
        });
        let _ = running_rx.recv();
    });
}

/// The least a start+join that hands back a result can do: a `socketpair`, `fork`, the child
/// `send`s one 5-byte frame and `_exit(0)`s; the parent opens a pidfd, `poll`s it, reaps the
/// child with `waitid` on it, and `recv`s the frame.
pub(crate) fn fork_report_wait() -> io::Result<()> {
    let mut pair = [0 as libc::c_int; 2];
    // SAFETY:
    // - `pair` is a valid, writable array of two `c_int`s for the duration of the call.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY:
    // - each descriptor was just made by `socketpair` and is owned by nothing else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    // SAFETY:
    // - `fork` has no memory-safety preconditions; the child below only calls `send` and
    //   `_exit`, which are async-signal-safe (see the file header).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let frame = [1u8, 0, 0, 0, 0];
        // SAFETY:
        // - `frame` is valid for reads of its length; `theirs` is an open socket;
        // - `_exit` accepts any status, never returns, and is async-signal-safe.
        unsafe {
            libc::send(
                theirs.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_NOSIGNAL,
            );
            libc::_exit(0)
        }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(theirs);
    let info = match reap_through_pidfd(pid) {
        Ok(info) => info,
        Err(e) => {
            // Not reaped through its pidfd: reaped here, so no zombie is left.
            let _ = wait_exit_zero(pid);
            return Err(e);
        }
    };
    // SAFETY:
    // - `waitid` succeeded, so `info` describes the child that ended.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    if code != libc::CLD_EXITED || status != 0 {
        return Err(io::Error::other(format!(
            "floor child ended with code {code}, status {status}"
        )));
    }
    let mut buf = [0u8; 16];
    // SAFETY:
    // - `buf` is valid for writes of its length; `ours` is an open socket.
    let got = unsafe {
        libc::recv(
            ours.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if got != 5 {
        return Err(io::Error::other(format!(
            "floor child's frame: got {got} bytes"
        )));
    }
    Ok(())
}

/// Opens a pidfd for our child `pid`, `poll`s it until the child ends and reaps it with
/// `waitid` on it.
fn reap_through_pidfd(pid: libc::pid_t) -> io::Result<libc::siginfo_t> {
    // SAFETY:
    // - `pidfd_open` takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY:
    // - the descriptor was just returned by `pidfd_open` and is owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut ready = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY:
    // - `ready` is one valid, writable `pollfd` for the duration of the call.
    while unsafe { libc::poll(&mut ready, 1, -1) } < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY:
    // - an all-zero `siginfo_t` is a valid value of that plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY:
        // - `info` is valid and writable for the call; the pidfd is our child's, not yet
        //   reaped.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if r == 0 {
            return Ok(info);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `fork()` + `execve(this program, [EXEC_CHILD_ARG])` + `waitpid`, with everything `execve`
/// needs built once, before any fork.
pub(crate) struct ExecFloor {
    path: CString,
    // The pointer arrays below point into these strings, whose heap buffers never move.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl ExecFloor {
    /// Prepares the `execve` of the running bench binary, with this process's environment.
    pub(crate) fn new() -> io::Result<Self> {
        let exe = std::env::current_exe()?.into_os_string().into_vec();
        let path = c_string(exe.clone())?;
        let argv = vec![c_string(exe)?, c_string(EXEC_CHILD_ARG.into())?];
        let envp = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv: OsString = k;
                kv.push("=");
                kv.push(v);
                c_string(kv.into_vec())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            path,
            argv_ptrs: null_terminated(&argv),
            envp_ptrs: null_terminated(&envp),
            _argv: argv,
            _envp: envp,
        })
    }

    /// One `fork` + `execve` + `waitpid`.
    pub(crate) fn run(&self) -> io::Result<()> {
        // SAFETY:
        // - `fork` has no memory-safety preconditions; the child below only calls `execve`
        //   and `_exit`, both async-signal-safe (see the file header).
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // SAFETY:
                // - `path` is a NUL-terminated string; `argv_ptrs` and `envp_ptrs` are
                //   null-terminated arrays of pointers to NUL-terminated strings, all owned by
                //   `self` and alive (the child's copy of the parent's memory) during the call.
                unsafe {
                    libc::execve(
                        self.path.as_ptr(),
                        self.argv_ptrs.as_ptr(),
                        self.envp_ptrs.as_ptr(),
                    )
                };
                // SAFETY:
                // - only reached if `execve` failed; `_exit` is async-signal-safe.
                unsafe { libc::_exit(127) }
            }
            pid => wait_exit_zero(pid),
        }
    }
}

/// The CPUs this process may run on now.
pub(crate) fn allowed_cpus() -> io::Result<CpuSet> {
    Ok(sched_getaffinity(None)?)
}

/// Pins this process (its one thread; children inherit it) to `cpus`.
pub(crate) fn pin_to(cpus: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    Ok(sched_setaffinity(None, &set)?)
}

/// Pins this process to a set read earlier with [`allowed_cpus`].
pub(crate) fn restore_cpus(set: &CpuSet) -> io::Result<()> {
    Ok(sched_setaffinity(None, set)?)
}

// ---------------------------------------------------------------------------------------------
// Connections: a forked child on one end of an `AF_UNIX` `SOCK_STREAM` socketpair.
//
// The child runs a [`SocketJob`] with nothing but `read`, `write`, `close` and `_exit` (all
// async-signal-safe) on a buffer allocated before the fork, so it is sound whatever threads
// the parent has. Frames are a 4-byte big-endian length and the payload, as CPython's
// `Connection.send_bytes` writes them.

/// What the child of a [`SocketChild`] does with its end of the socketpair.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SocketJob {
    /// Reads each frame and writes it back whole, in one `write`.
    Echo,
    /// Reads frames in chunks as big as its buffer; on an empty frame writes back the number
    /// of frames since the last one (4 bytes, big-endian).
    Sink,
    /// Reads a frame's header, then its payload straight into its buffer; writes back the
    /// payload's length (4 bytes, big-endian).
    Bulk,
}

/// `read` into `buf`, again after `EINTR`; 0 means end of file.
fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY:
        // - `buf` is valid for writes of `buf.len()` bytes for the duration of the call;
        // - `read` writes at most that many bytes and keeps no pointer to it.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n.unsigned_abs());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads exactly `buf.len()` bytes. `Ok(false)` if the peer closed before the first byte.
fn read_exact(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut have = 0;
    while have < buf.len() {
        match read_some(fd, &mut buf[have..])? {
            0 if have == 0 => return Ok(false),
            // (no message: `io::Error::from(kind)` does not allocate, so the child may use it)
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => have += n,
        }
    }
    Ok(true)
}

/// Writes all of `buf`, one `write` call when the socket takes it.
fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY:
        // - `buf` is valid for reads of `buf.len()` bytes for the duration of the call, and
        //   `write` keeps no pointer to it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            continue;
        }
        buf = &buf[n.unsigned_abs()..];
    }
    Ok(())
}

/// The length in a frame header.
fn frame_len(header: &[u8]) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&header[..4]);
    u32::from_be_bytes(b) as usize
}

/// Reads one whole frame (header included) into the start of `buf`, in as few `read`s as
/// the socket allows (usually one); returns its length. Only one frame may be in flight.
fn read_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut have = 0;
    loop {
        if have >= 4 {
            let frame = 4 + frame_len(buf);
            if frame > buf.len() {
                return Err(io::ErrorKind::InvalidData.into());
            }
            if have == frame {
                return Ok(Some(frame));
            }
            if have > frame {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
        match read_some(fd, &mut buf[have..])? {
            0 if have == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => have += n,
        }
    }
}

/// The child's side of [`SocketJob::Echo`].
fn echo(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    while let Some(n) = read_frame(fd, buf)? {
        write_all(fd, &buf[..n])?;
    }
    Ok(())
}

/// The child's side of [`SocketJob::Sink`]: frames parsed out of big reads.
fn sink(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut header = [0u8; 4];
    let mut header_have = 0;
    let mut payload_left = 0usize;
    let mut count: u32 = 0;
    loop {
        let n = read_some(fd, buf)?;
        if n == 0 {
            return if header_have == 0 && payload_left == 0 {
                Ok(())
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let mut i = 0;
        while i < n {
            if payload_left > 0 {
                let take = payload_left.min(n - i);
                i += take;
                payload_left -= take;
                if payload_left == 0 {
                    count += 1;
                }
                continue;
            }
            header[header_have] = buf[i];
            header_have += 1;
            i += 1;
            if header_have == 4 {
                header_have = 0;
                payload_left = frame_len(&header);
                if payload_left == 0 {
                    write_all(fd, &count.to_be_bytes())?;
                    count = 0;
                }
            }
        }
    }
}

/// The child's side of [`SocketJob::Bulk`].
fn bulk(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut header = [0u8; 4];
    while read_exact(fd, &mut header)? {
        let len = frame_len(&header);
        let Some(payload) = buf.get_mut(..len) else {
            return Err(io::ErrorKind::InvalidData.into());
        };
        if !read_exact(fd, payload)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        write_all(fd, &header)?;
    }
    Ok(())
}

/// A forked child running a [`SocketJob`] on one end of a socketpair; the parent holds the
/// other end. The child exits with 0 when the parent closes its end ([`finish`](Self::finish)).
pub(crate) struct SocketChild {
    fd: Option<OwnedFd>,
    pid: libc::pid_t,
}

impl SocketChild {
    /// Creates the socketpair and forks the child, which gets a buffer of `buf_len` bytes
    /// (allocated before the fork, first touched by the child).
    pub(crate) fn start(job: SocketJob, buf_len: usize) -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY:
        // - `fds` is a valid, writable array of two `c_int`s for the duration of the call.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY:
        // - `socketpair` succeeded, so both are open descriptors that nothing else owns.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // `vec![0; n]` gets zeroed pages from the allocator without writing them.
        let mut buf = vec![0u8; buf_len.max(64 << 10)];
        // SAFETY:
        // - `fork` has no memory-safety preconditions; the child below calls nothing but
        //   `read`, `write`, `close` and `_exit`, which are async-signal-safe, allocates
        //   nothing and touches only its copies of `buf` and the descriptors.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // SAFETY:
                // - the parent's end is open here and closed once; `ours` is never used
                //   (nor dropped: `_exit` runs no destructor) in the child after this.
                unsafe { libc::close(ours.as_raw_fd()) };
                let fd = theirs.as_raw_fd();
                let done = match job {
                    SocketJob::Echo => echo(fd, &mut buf),
                    SocketJob::Sink => sink(fd, &mut buf),
                    SocketJob::Bulk => bulk(fd, &mut buf),
                };
                // SAFETY:
                // - `_exit` accepts any status, never returns, and is async-signal-safe.
                unsafe { libc::_exit(if done.is_ok() { 0 } else { 1 }) }
            }
            pid => {
                drop(theirs);
                drop(buf);
                Ok(Self {
                    fd: Some(ours),
                    pid,
                })
            }
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Writes all of `bytes` to the child.
    pub(crate) fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        write_all(self.raw(), bytes)
    }

    /// Reads exactly `buf.len()` bytes from the child.
    pub(crate) fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        if read_exact(self.raw(), buf)? {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// Reads one whole frame from the child into the start of `buf` (usually one `read`);
    /// returns its length, header included.
    pub(crate) fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_frame(self.raw(), buf)?.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    /// Closes the parent's end, waits for the child and checks that it exited with 0.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.fd = None;
        let pid = std::mem::replace(&mut self.pid, 0);
        wait_exit_zero(pid)
    }
}

impl Drop for SocketChild {
    fn drop(&mut self) {
        if self.pid > 0 {
            // Closing our end ends the child; then reap it.
            self.fd = None;
            let _ = wait_exit_zero(self.pid);
        }
    }
}

/// Where a cell's parent goes once its child has started: see [`place_child`].
#[must_use = "the parent stays on the child's CPU until `place_parent`"]
pub(crate) struct Placement {
    parent: Option<usize>,
}

/// Before a cell starts its child: if this thread may run on two CPUs or more, pins it to
/// the last of them, so that the child (which inherits it) runs there; then
/// [`Placement::place_parent`] moves this thread to the first. Parent and child then always
/// sit on different CPUs, instead of wherever the scheduler puts them run by run. On one
/// CPU it does nothing.
pub(crate) fn place_child() -> io::Result<Placement> {
    let allowed = allowed_cpus()?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    match (cpus.first(), cpus.last()) {
        (Some(&first), Some(&last)) if first != last => {
            pin_to(&[last])?;
            Ok(Placement {
                parent: Some(first),
            })
        }
        _ => Ok(Placement { parent: None }),
    }
}

impl Placement {
    /// Once the child has started: pins this thread to the first allowed CPU (if the child
    /// was put on another).
    pub(crate) fn place_parent(self) -> io::Result<()> {
        match self.parent {
            Some(cpu) => pin_to(&[cpu]),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared memory and futexes: the floor of locks, values, events and arrays (issue 4).
//
// A `MAP_SHARED` mapping of a `memfd`, every page touched once when it is made (as the
// library's shared memory is), holding plain atomics; a forked child ([`SyncChild`]) shares
// it. Waiting is `FUTEX_WAIT`/`FUTEX_WAKE` on shared futexes (never `FUTEX_PRIVATE_FLAG`: the
// word is shared between processes). The child runs a [`SyncJob`] with nothing but atomics,
// `futex`, `clock_gettime` (through `Instant::now`) and `_exit`, all async-signal-safe, on
// memory mapped before the fork, so it is sound whatever threads the parent has.

/// A `MAP_SHARED` mapping of a new `memfd`, every page touched once; unmapped on drop. A
/// forked child shares it (the mapping survives `fork`).
pub(crate) struct SharedMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// Maps `len` bytes (rounded up to whole pages), zeroed, and touches every page.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1).next_multiple_of(4096);
        let off = libc::off_t::try_from(len)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY:
        // - the name is a NUL-terminated string literal; the flags are valid.
        let fd =
            unsafe { libc::memfd_create(c"multiproc-bench-floor".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY:
        // - `memfd_create` succeeded, so `fd` is an open descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY:
        // - `fd` is an open descriptor; `ftruncate` has no memory-safety preconditions.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), off) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY:
        // - a new mapping at an address the kernel picks: no existing memory is affected;
        //   `fd` is open and at least `len` bytes long.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        // SAFETY:
        // - the mapping is `len` bytes, readable and writable, and nothing else uses it yet;
        //   writing zeros (its contents already) makes every page resident.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Ok(Self { ptr, len })
    }

    /// The synchronization words at the start of the mapping.
    pub(crate) fn words(&self) -> &SyncWords {
        assert!(self.len >= size_of::<SyncWords>());
        // SAFETY:
        // - the mapping is page-aligned and large enough; `SyncWords` holds only atomics, for
        //   which all-zero bytes (the mapping's initial contents) and any later contents
        //   written through them are valid; atomics may be shared, across processes too.
        unsafe { &*self.ptr.as_ptr().cast::<SyncWords>() }
    }

    /// The mapping as `f64`s.
    pub(crate) fn f64s(&mut self) -> &mut [f64] {
        // SAFETY:
        // - the mapping is page-aligned, `len` bytes long, initialized (zeroed) memory, and
        //   every bit pattern is a valid `f64`; `&mut self` makes this the only reference in
        //   this process (no child shares a mapping used this way).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().cast::<f64>(),
                self.len / size_of::<f64>(),
            )
        }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY:
        // - `ptr`/`len` are exactly the mapping made in `new`, and no reference into it
        //   outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The words a synchronization floor shares between processes (all zero at first).
#[repr(C)]
pub(crate) struct SyncWords {
    /// A futex mutex: 0 unlocked, 1 locked, 2 locked and maybe waited for.
    pub(crate) mutex: AtomicU32,
    /// The counter the mutex guards.
    pub(crate) counter: AtomicU64,
    /// An integer for atomic adds.
    pub(crate) value: AtomicI64,
    /// The ping-pong word: [`PING`] (the child's turn) or not (the parent's), [`WAITER`],
    /// [`STOP`].
    pub(crate) turn: AtomicU32,
    /// The batch the parent started ([`GO_STOP`] ends the child).
    pub(crate) go: AtomicU32,
    /// The batch the child finished.
    pub(crate) done: AtomicU32,
}

/// In [`SyncWords::turn`]: the child's turn to answer.
const PING: u32 = 1;
/// In [`SyncWords::turn`]: a process sleeps on the word (the next change must wake it).
const WAITER: u32 = 2;
/// In [`SyncWords::turn`]: the child must exit.
const STOP: u32 = 4;
/// In [`SyncWords::go`]: the child must exit.
const GO_STOP: u32 = u32::MAX;

/// `FUTEX_WAIT` (shared) on `word` while it holds `expected`; returns at once if it does
/// not, and may return spuriously (callers loop).
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY:
    // - `word` is a valid, aligned `u32` for the duration of the call (an atomic, so the
    //   kernel reading it concurrently is fine); the timeout is null (no timeout) and the
    //   other arguments are unused by `FUTEX_WAIT`. Errors (EAGAIN, EINTR) mean "look again".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// `FUTEX_WAKE` (shared) of up to `n` processes sleeping on `word`.
fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY:
    // - `word` is a valid, aligned `u32`; `FUTEX_WAKE` reads nothing else.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Waits (`FUTEX_WAIT`) until `word` no longer holds a value for which `waiting` is true;
/// returns that value. The writer must `futex_wake` after every change.
fn wait_while(word: &AtomicU32, waiting: impl Fn(u32) -> bool) -> u32 {
    loop {
        let v = word.load(Ordering::Acquire);
        if !waiting(v) {
            return v;
        }
        futex_wait(word, v);
    }
}

/// Locks a futex mutex: compare-and-swap 0 → 1; if it was held, marks it contended (2) and
/// sleeps until it is free.
pub(crate) fn mutex_lock(m: &AtomicU32) {
    if m.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return;
    }
    while m.swap(2, Ordering::Acquire) != 0 {
        futex_wait(m, 2);
    }
}

/// Unlocks a futex mutex: swap to 0; `FUTEX_WAKE` only if it was contended.
pub(crate) fn mutex_unlock(m: &AtomicU32) {
    if m.swap(0, Ordering::Release) == 2 {
        futex_wake(m, 1);
    }
}

/// `n` increments of [`SyncWords::counter`], each under [`SyncWords::mutex`].
pub(crate) fn locked_increments(w: &SyncWords, n: u64) {
    for _ in 0..n {
        mutex_lock(&w.mutex);
        let c = w.counter.load(Ordering::Relaxed);
        w.counter.store(c + 1, Ordering::Relaxed);
        mutex_unlock(&w.mutex);
    }
}

/// `n` atomic adds of 1 to [`SyncWords::value`].
pub(crate) fn fetch_adds(w: &SyncWords, n: u64) {
    for _ in 0..n {
        w.value.fetch_add(1, Ordering::AcqRel);
    }
}

/// Spins for up to `spin` (reading the clock once per 64 looks) until `look` gives a value.
fn spin_for<T>(spin: std::time::Duration, look: impl Fn() -> Option<T>) -> Option<T> {
    if spin.is_zero() {
        return None;
    }
    let start = std::time::Instant::now();
    loop {
        for _ in 0..64 {
            if let Some(v) = look() {
                return Some(v);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return None;
        }
    }
}

/// Waits until `ready` holds for the ping-pong word: spinning on it for up to `spin`
/// first, then sleeping on it (`FUTEX_WAIT`) with [`WAITER`] set.
fn wait_turn(word: &AtomicU32, ready: impl Fn(u32) -> bool, spin: std::time::Duration) -> u32 {
    let look = || Some(word.load(Ordering::Acquire)).filter(|&v| ready(v));
    if let Some(v) = spin_for(spin, look) {
        return v;
    }
    loop {
        let v = word.load(Ordering::Acquire);
        if ready(v) {
            return v;
        }
        if v & WAITER == 0
            && word
                .compare_exchange(v, v | WAITER, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        futex_wait(word, v | WAITER);
    }
}

/// Sets the ping-pong word to `value`; `FUTEX_WAKE` only if the other process sleeps on it.
fn post_turn(word: &AtomicU32, value: u32) {
    if word.swap(value, Ordering::AcqRel) & WAITER != 0 {
        futex_wake(word, 1);
    }
}

/// What the child of a [`SyncChild`] does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SyncJob {
    /// On each batch the parent starts: this many [`locked_increments`].
    LockedIncrements(u64),
    /// On each batch the parent starts: this many [`fetch_adds`].
    FetchAdds(u64),
    /// Answers every ping ([`SyncChild::ping`]), spinning this long before it sleeps.
    Pong(std::time::Duration),
}

/// The child's side of a batch job: runs `job` for each batch the parent starts.
fn batches(w: &SyncWords, job: impl Fn(&SyncWords)) {
    let mut batch = 0;
    loop {
        batch = wait_while(&w.go, |g| g == batch);
        if batch == GO_STOP {
            return;
        }
        job(w);
        w.done.store(batch, Ordering::Release);
        futex_wake(&w.done, 1);
    }
}

/// The child's side of [`SyncJob::Pong`].
fn pong(w: &SyncWords, spin: std::time::Duration) {
    loop {
        let v = wait_turn(&w.turn, |v| v & (PING | STOP) != 0, spin);
        if v & STOP != 0 {
            return;
        }
        post_turn(&w.turn, 0);
    }
}

/// A forked child running a [`SyncJob`] on a [`SharedMap`] of [`SyncWords`] it shares with
/// the parent. It exits with 0 when told to ([`finish`](Self::finish), or on drop).
pub(crate) struct SyncChild {
    map: SharedMap,
    pid: libc::pid_t,
    batch: u32,
}

impl SyncChild {
    /// Maps the words and forks the child.
    pub(crate) fn start(job: SyncJob) -> io::Result<Self> {
        let map = SharedMap::new(size_of::<SyncWords>())?;
        // SAFETY:
        // - `fork` has no memory-safety preconditions; the child below uses nothing but
        //   atomics in the shared mapping, `futex`, `clock_gettime` and `_exit`, which are
        //   async-signal-safe, and allocates nothing.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                let w = map.words();
                match job {
                    SyncJob::LockedIncrements(n) => batches(w, |w| locked_increments(w, n)),
                    SyncJob::FetchAdds(n) => batches(w, |w| fetch_adds(w, n)),
                    SyncJob::Pong(spin) => pong(w, spin),
                }
                // SAFETY:
                // - `_exit` accepts any status, never returns, and is async-signal-safe (the
                //   mapping is not unmapped: no destructor runs).
                unsafe { libc::_exit(0) }
            }
            pid => Ok(Self { map, pid, batch: 0 }),
        }
    }

    /// The shared words.
    pub(crate) fn words(&self) -> &SyncWords {
        self.map.words()
    }

    /// Starts a batch in the child, runs `ours` here meanwhile, then waits until the child
    /// has finished its batch.
    pub(crate) fn batch(&mut self, ours: impl FnOnce(&SyncWords)) {
        self.batch = if self.batch + 1 == GO_STOP {
            1
        } else {
            self.batch + 1
        };
        let (w, batch) = (self.map.words(), self.batch);
        w.go.store(batch, Ordering::Release);
        futex_wake(&w.go, 1);
        ours(w);
        wait_while(&w.done, |d| d != batch);
    }

    /// One round trip: hands the turn to the child ([`SyncJob::Pong`]) and waits until it
    /// hands it back, spinning up to `spin` before sleeping.
    pub(crate) fn ping(&self, spin: std::time::Duration) {
        let w = self.map.words();
        post_turn(&w.turn, PING);
        wait_turn(&w.turn, |v| v & PING == 0, spin);
    }

    /// Tells the child to exit, waits for it and checks that it exited with 0.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> io::Result<()> {
        let pid = std::mem::replace(&mut self.pid, 0);
        if pid <= 0 {
            return Ok(());
        }
        let w = self.map.words();
        w.go.store(GO_STOP, Ordering::Release);
        futex_wake(&w.go, 1);
        post_turn(&w.turn, STOP);
        wait_exit_zero(pid)
    }
}

impl Drop for SyncChild {
    fn drop(&mut self) {
        let _ = self.stop_and_wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A single-producer single-consumer ring of 64-byte slots: the floor of a queue (issue 5).
//
// A `SharedMap` holding [`RingWords`] in its first page and [`RING_SLOTS`] slots of
// [`SLOT`] bytes after it. The producer (a forked child, [`RingChild`]) copies an item into
// the slot at `head` and publishes it with one store of `head`; the consumer (the parent)
// copies the slot at `tail` out and frees it with one store of `tail`. Each side keeps the
// last value it read of the other's counter and reads it again only when that one says the
// ring is full (empty). A side that finds no room (no item) sleeps on its own futex word
// after setting it to 1 and looking once more; the other side wakes it (`FUTEX_WAKE`) only
// if that word is set, so no system call is made while both keep up. No lock: one producer,
// one consumer. The child runs with nothing but atomics, copies within the shared mapping,
// `futex`, `clock_gettime` and `_exit`, as the other shared-memory floors do.

/// The size of an item of the ring floor.
pub(crate) const SLOT: usize = 64;
/// Slots in the ring floor: 256 KiB, the size of a multiproc queue's first ring.
const RING_SLOTS: u64 = 4096;
/// Where the slots start in the mapping (after the words' page).
const RING_DATA: usize = 4096;

/// A word alone on its cache line.
#[repr(C, align(64))]
struct Line<T>(T);

/// The words of the ring floor (all zero at first).
#[repr(C)]
struct RingWords {
    /// Items written (the producer's).
    head: Line<AtomicU64>,
    /// Items read (the consumer's).
    tail: Line<AtomicU64>,
    /// 1 while the consumer may sleep on it, waiting for `head` to move.
    cons_sleeps: Line<AtomicU32>,
    /// 1 while the producer may sleep on it, waiting for `tail` to move.
    prod_sleeps: Line<AtomicU32>,
    /// The batch the parent started ([`GO_STOP`] ends the child).
    go: Line<AtomicU32>,
}

impl SharedMap {
    /// The ring floor's words at the start of the mapping.
    fn ring_words(&self) -> &RingWords {
        assert!(self.len >= RING_DATA + RING_SLOTS as usize * SLOT);
        const { assert!(size_of::<RingWords>() <= RING_DATA) };
        // SAFETY:
        // - the mapping is page-aligned and large enough; `RingWords` holds only atomics, for
        //   which all-zero bytes and any later contents written through them are valid;
        //   atomics may be shared, across processes too.
        unsafe { &*self.ptr.as_ptr().cast::<RingWords>() }
    }

    /// The slot for item number `i`.
    fn slot(&self, i: u64) -> *mut u8 {
        let at = RING_DATA + (i % RING_SLOTS) as usize * SLOT;
        assert!(at + SLOT <= self.len);
        // SAFETY:
        // - `at + SLOT` is within the mapping (checked above), so the pointer stays in it.
        unsafe { self.ptr.as_ptr().add(at) }
    }
}

/// Waits until `counter` no longer reads `seen` and returns it: spinning on it for up to
/// `spin` first, then sleeping on `sleeps` (set to 1 first, then the counter read again, so
/// that the other side either sees the 1 or this side sees its store).
fn wait_moved(
    counter: &AtomicU64,
    seen: u64,
    sleeps: &AtomicU32,
    spin: std::time::Duration,
) -> u64 {
    let look = || Some(counter.load(Ordering::Acquire)).filter(|&v| v != seen);
    if let Some(v) = spin_for(spin, look) {
        return v;
    }
    loop {
        let v = counter.load(Ordering::Acquire);
        if v != seen {
            return v;
        }
        sleeps.store(1, Ordering::SeqCst);
        let v = counter.load(Ordering::SeqCst);
        if v != seen {
            sleeps.store(0, Ordering::Relaxed);
            return v;
        }
        futex_wait(sleeps, 1);
    }
}

/// Stores `value` into `counter`; `FUTEX_WAKE`s the other side only if it sleeps on `sleeps`.
fn publish(counter: &AtomicU64, value: u64, sleeps: &AtomicU32) {
    counter.store(value, Ordering::SeqCst);
    if sleeps.load(Ordering::SeqCst) != 0 && sleeps.swap(0, Ordering::SeqCst) != 0 {
        futex_wake(sleeps, 1);
    }
}

/// The child's side of a [`RingChild`]: for each batch the parent starts, `n` copies of
/// `item` into the ring.
fn ring_producer(map: &SharedMap, item: &[u8; SLOT], n: u64, spin: std::time::Duration) {
    let w = map.ring_words();
    let mut head = 0u64;
    let mut tail = 0u64;
    let mut batch = 0;
    loop {
        batch = wait_while(&w.go.0, |g| g == batch);
        if batch == GO_STOP {
            return;
        }
        for _ in 0..n {
            while head - tail == RING_SLOTS {
                tail = wait_moved(&w.tail.0, tail, &w.prod_sleeps.0, spin);
            }
            // SAFETY:
            // - the slot is `SLOT` bytes inside the mapping; the consumer has freed it
            //   (`tail` was read with `Acquire` past its last use) and reads it only after
            //   the store of `head` below, so nothing else touches it meanwhile; `item` is
            //   this process's own memory, not in the mapping.
            unsafe { std::ptr::copy_nonoverlapping(item.as_ptr(), map.slot(head), SLOT) };
            head += 1;
            publish(&w.head.0, head, &w.cons_sleeps.0);
        }
    }
}

/// A forked child producing 64-byte items into a single-producer single-consumer ring in
/// shared memory, which the parent consumes (the floor of a queue). It exits with 0 when
/// told to ([`finish`](Self::finish), or on drop).
pub(crate) struct RingChild {
    map: SharedMap,
    pid: libc::pid_t,
    batch: u32,
    /// Items read.
    tail: u64,
    /// `head` as last read.
    head: u64,
    /// Items per batch.
    n: u64,
    spin: std::time::Duration,
}

impl RingChild {
    /// Maps the ring and forks the producer, which puts `n` copies of `item` per batch,
    /// spinning up to `spin` (on the ring's words) before it sleeps, as the consumer does.
    pub(crate) fn start(item: [u8; SLOT], n: u64, spin: std::time::Duration) -> io::Result<Self> {
        let map = SharedMap::new(RING_DATA + RING_SLOTS as usize * SLOT)?;
        // SAFETY:
        // - `fork` has no memory-safety preconditions; the child below uses nothing but
        //   atomics and copies in the shared mapping, `futex`, `clock_gettime` and `_exit`,
        //   which are async-signal-safe, and allocates nothing.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                ring_producer(&map, &item, n, spin);
                // SAFETY:
                // - `_exit` accepts any status, never returns, and is async-signal-safe (the
                //   mapping is not unmapped: no destructor runs).
                unsafe { libc::_exit(0) }
            }
            pid => Ok(Self {
                map,
                pid,
                batch: 0,
                tail: 0,
                head: 0,
                n,
                spin,
            }),
        }
    }

    /// Starts a batch in the child and takes its `n` items, each copied out of its slot and
    /// handed to `check`; returns how many `check` refused. Every item is taken either way,
    /// so the child always finishes its batch.
    pub(crate) fn batch(&mut self, mut check: impl FnMut(&[u8; SLOT]) -> bool) -> u64 {
        self.batch = if self.batch + 1 == GO_STOP {
            1
        } else {
            self.batch + 1
        };
        let w = self.map.ring_words();
        w.go.0.store(self.batch, Ordering::Release);
        futex_wake(&w.go.0, 1);
        let mut refused = 0;
        let mut got = [0u8; SLOT];
        for _ in 0..self.n {
            while self.tail == self.head {
                self.head = wait_moved(&w.head.0, self.head, &w.cons_sleeps.0, self.spin);
            }
            // SAFETY:
            // - the slot is `SLOT` bytes inside the mapping; the producer wrote it before its
            //   store of `head`, read here with `Acquire`, and writes it again only after the
            //   store of `tail` below; `got` is this process's own memory.
            unsafe {
                std::ptr::copy_nonoverlapping(self.map.slot(self.tail), got.as_mut_ptr(), SLOT);
            };
            self.tail += 1;
            publish(&w.tail.0, self.tail, &w.prod_sleeps.0);
            if !check(&got) {
                refused += 1;
            }
        }
        refused
    }

    /// Tells the child to exit, waits for it and checks that it exited with 0.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> io::Result<()> {
        let pid = std::mem::replace(&mut self.pid, 0);
        if pid <= 0 {
            return Ok(());
        }
        let w = self.map.ring_words();
        w.go.0.store(GO_STOP, Ordering::Release);
        futex_wake(&w.go.0, 1);
        wait_exit_zero(pid)
    }
}

impl Drop for RingChild {
    fn drop(&mut self) {
        let _ = self.stop_and_wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal pool with raw system calls: the floor of a pool (issue 6).
//
// [`RawPool::start`] forks N workers, each with a pipe from the parent (its tasks) and a pipe
// back (its results). Every message has a fixed size, set when the pool starts: a task is
// `chunk` native-endian `u64` items (8 bytes for a chunk of 1), its result the same number
// of `u64`s. A worker takes one task at a time, as any pool's worker does: `read` exactly one
// task, run the function on each item, one `write` of the results. The parent keeps up to
// `depth` tasks in flight per worker (at most 64, the depth of a multiproc worker's queue):
// it hands out the first ones round-robin, then waits in `poll` on the result pipes of the
// workers that have work, reads whatever results are there (one `read` per ready worker) and
// refills each such worker with as many new tasks as it finished, in one `write`. A worker's
// pipes never hold more than `depth` tasks or results, and `depth` is chosen so that they fit
// (the pipes are enlarged with `F_SETPIPE_SZ` for big chunks), so no `write` ever waits for a
// side that is itself waiting. A worker runs nothing but `read`, `write`, `close`, `_exit`
// and the task function (plain arithmetic) on a buffer allocated before the fork; it exits
// with 0 when its task pipe is closed.

/// A task function of the pool floor.
pub(crate) type RawTask = fn(u64) -> u64;

/// The bytes of one item.
const ITEM: usize = size_of::<u64>();
/// The most tasks in flight per worker (a multiproc worker's queue holds at most 64).
const RAW_DEPTH: usize = 64;
/// The pipe size asked for when a chunk is big (the usual `pipe-max-size`).
const RAW_PIPE_MAX: usize = 1 << 20;

/// `pipe2(O_CLOEXEC)`: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY:
    // - `fds` is a valid, writable array of two `c_int`s for the duration of the call.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY:
    // - `pipe2` succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The capacity of the pipe of `fd`, enlarged to `want` bytes if it is smaller and the
/// system allows it (otherwise left as it is).
fn pipe_capacity(fd: &OwnedFd, want: usize) -> io::Result<usize> {
    // SAFETY:
    // - `fd` is an open pipe descriptor; `F_GETPIPE_SZ` takes no argument and touches no
    //   memory of ours.
    let now = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let now = usize::try_from(now).map_err(|_| io::Error::last_os_error())?;
    if now >= want {
        return Ok(now);
    }
    let want = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    // SAFETY:
    // - `fd` is an open pipe descriptor; `F_SETPIPE_SZ` takes an `int` and touches no memory
    //   of ours. A refusal (`EPERM` above `pipe-max-size`) leaves the pipe as it was.
    let set = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    Ok(usize::try_from(set).unwrap_or(now))
}

/// The child's side of a [`RawPool`] worker: one task at a time until its pipe is closed.
fn raw_worker(tasks: RawFd, results: RawFd, buf: &mut [u8], f: RawTask) -> io::Result<()> {
    while read_exact(tasks, buf)? {
        for item in buf.chunks_exact_mut(ITEM) {
            let mut x = [0u8; ITEM];
            x.copy_from_slice(item);
            item.copy_from_slice(&f(u64::from_ne_bytes(x)).to_ne_bytes());
        }
        write_all(results, buf)?;
    }
    Ok(())
}

/// One worker of a [`RawPool`], as the parent sees it.
struct RawWorker {
    pid: libc::pid_t,
    /// The write end of its task pipe (`None` once closed, which ends the worker).
    tasks: Option<OwnedFd>,
    /// The read end of its result pipe.
    results: OwnedFd,
    /// The chunks it holds (in its pipe or running), oldest first.
    in_flight: std::collections::VecDeque<usize>,
    /// Items of the oldest chunk already back.
    got: usize,
    /// The first bytes of an item whose rest has not been read yet.
    partial: [u8; ITEM],
    partial_len: usize,
}

impl RawWorker {
    fn tasks_fd(&self) -> RawFd {
        self.tasks.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Puts one result in its place in `out`; returns whether it finished a chunk.
    fn put(&mut self, value: u64, out: &mut [u64], chunk: usize) -> io::Result<bool> {
        let Some(&at) = self.in_flight.front() else {
            return Err(io::Error::other(
                "a pool floor worker sent an unasked result",
            ));
        };
        out[at * chunk + self.got] = value;
        self.got += 1;
        if self.got < chunk {
            return Ok(false);
        }
        self.got = 0;
        self.in_flight.pop_front();
        Ok(true)
    }

    /// Takes the result bytes just read; returns how many chunks they finished.
    fn take(&mut self, mut bytes: &[u8], out: &mut [u64], chunk: usize) -> io::Result<usize> {
        let mut finished = 0;
        if self.partial_len > 0 {
            let k = (ITEM - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + k].copy_from_slice(&bytes[..k]);
            self.partial_len += k;
            bytes = &bytes[k..];
            if self.partial_len < ITEM {
                return Ok(0);
            }
            self.partial_len = 0;
            finished += usize::from(self.put(u64::from_ne_bytes(self.partial), out, chunk)?);
        }
        let mut items = bytes.chunks_exact(ITEM);
        for item in &mut items {
            let mut x = [0u8; ITEM];
            x.copy_from_slice(item);
            finished += usize::from(self.put(u64::from_ne_bytes(x), out, chunk)?);
        }
        let rest = items.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
        Ok(finished)
    }
}

/// A minimal pool of forked workers running a [`RawTask`], fed through pipes (see above).
/// The workers exit with 0 when the pool is finished ([`finish`](Self::finish), or on drop).
pub(crate) struct RawPool {
    workers: Vec<RawWorker>,
    /// Items per task.
    chunk: usize,
    /// Tasks in flight per worker, at most.
    depth: usize,
    /// The bytes of the tasks being sent.
    send: Vec<u8>,
    /// The bytes of the results being read.
    recv: Vec<u8>,
    pollfds: Vec<libc::pollfd>,
    /// The worker of each entry of `pollfds`.
    polled: Vec<usize>,
}

impl RawPool {
    /// Makes the pipes and forks `workers` workers running `f` on tasks of `chunk` items.
    pub(crate) fn start(workers: usize, chunk: usize, f: RawTask) -> io::Result<Self> {
        assert!(workers >= 1 && chunk >= 1);
        let msg = chunk * ITEM;
        // Room for a few tasks in each pipe (a pipe holds 64 KiB unless enlarged).
        let want = (msg * 4).min(RAW_PIPE_MAX);
        let mut ends = Vec::with_capacity(workers);
        let mut capacity = usize::MAX;
        for _ in 0..workers {
            let (task_r, task_w) = pipe()?;
            let (result_r, result_w) = pipe()?;
            capacity = capacity
                .min(pipe_capacity(&task_w, want)?)
                .min(pipe_capacity(&result_w, want)?);
            ends.push((task_r, task_w, result_r, result_w));
        }
        // Every descriptor a new worker must close: all but its own two (-1 once closed here).
        let mut open: Vec<RawFd> = ends
            .iter()
            .flat_map(|(a, b, c, d)| [a, b, c, d].map(AsRawFd::as_raw_fd))
            .collect();
        // `vec![0; n]` gets zeroed pages; each worker writes only its own copy.
        let mut buf = vec![0u8; msg];
        let mut pool = Self {
            workers: Vec::with_capacity(workers),
            chunk,
            depth: (capacity / msg).clamp(1, RAW_DEPTH),
            send: Vec::new(),
            recv: vec![0u8; 256 << 10],
            pollfds: Vec::with_capacity(workers),
            polled: Vec::with_capacity(workers),
        };
        for (i, (task_r, task_w, result_r, result_w)) in ends.into_iter().enumerate() {
            // SAFETY:
            // - `fork` has no memory-safety preconditions; the child below calls nothing but
            //   `close`, `read`, `write`, `_exit` (async-signal-safe) and `f` (arithmetic),
            //   allocates nothing and touches only its copies of `buf` and `open`.
            let pid = unsafe { libc::fork() };
            match pid {
                // (the workers already started end when `pool` is dropped)
                -1 => return Err(io::Error::last_os_error()),
                0 => {
                    let (tasks, results) = (task_r.as_raw_fd(), result_w.as_raw_fd());
                    for &fd in &open {
                        if fd >= 0 && fd != tasks && fd != results {
                            // SAFETY:
                            // - `fd` is open in this process (the parent has not closed it)
                            //   and is never used here again (nor closed twice: `_exit` runs
                            //   no destructor).
                            unsafe { libc::close(fd) };
                        }
                    }
                    let done = raw_worker(tasks, results, &mut buf, f);
                    // SAFETY:
                    // - `_exit` accepts any status, never returns, and is async-signal-safe.
                    unsafe { libc::_exit(if done.is_ok() { 0 } else { 1 }) }
                }
                pid => {
                    open[4 * i] = -1;
                    open[4 * i + 3] = -1;
                    drop((task_r, result_w));
                    pool.workers.push(RawWorker {
                        pid,
                        tasks: Some(task_w),
                        results: result_r,
                        in_flight: std::collections::VecDeque::with_capacity(RAW_DEPTH),
                        got: 0,
                        partial: [0; ITEM],
                        partial_len: 0,
                    });
                }
            }
        }
        Ok(pool)
    }

    /// Adds the bytes of chunk `k` of `items` to `send`.
    fn encode(send: &mut Vec<u8>, items: &[u64], chunk: usize, k: usize) {
        for x in &items[k * chunk..(k + 1) * chunk] {
            send.extend_from_slice(&x.to_ne_bytes());
        }
    }

    /// Applies the pool's function to every item: `out[i] = f(items[i])`. The number of
    /// items must be a multiple of the chunk size.
    pub(crate) fn map(&mut self, items: &[u64], out: &mut [u64]) -> io::Result<()> {
        let Self {
            workers,
            chunk,
            depth,
            send,
            recv,
            pollfds,
            polled,
        } = self;
        let (chunk, depth) = (*chunk, *depth);
        assert!(items.len() % chunk == 0 && out.len() == items.len());
        let chunks = items.len() / chunk;
        // The first tasks, round-robin.
        let mut next = 0;
        while next < chunks && workers.iter().any(|w| w.in_flight.len() < depth) {
            for w in workers.iter_mut() {
                if next < chunks && w.in_flight.len() < depth {
                    w.in_flight.push_back(next);
                    next += 1;
                }
            }
        }
        for w in workers.iter() {
            send.clear();
            for &k in &w.in_flight {
                Self::encode(send, items, chunk, k);
            }
            write_all(w.tasks_fd(), send)?;
        }
        let mut done = 0;
        while done < chunks {
            pollfds.clear();
            polled.clear();
            for (i, w) in workers.iter().enumerate() {
                if !w.in_flight.is_empty() {
                    pollfds.push(libc::pollfd {
                        fd: w.results.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    polled.push(i);
                }
            }
            // SAFETY:
            // - `pollfds` is a valid, writable array of `pollfds.len()` entries for the
            //   duration of the call; no timeout.
            let ready = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as _, -1) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            for (p, &i) in pollfds.iter().zip(polled.iter()) {
                if p.revents == 0 {
                    continue;
                }
                let w = &mut workers[i];
                let n = read_some(w.results.as_raw_fd(), recv)?;
                if n == 0 {
                    return Err(io::Error::other("a pool floor worker ended early"));
                }
                let finished = w.take(&recv[..n], out, chunk)?;
                done += finished;
                send.clear();
                while next < chunks && w.in_flight.len() < depth {
                    w.in_flight.push_back(next);
                    Self::encode(send, items, chunk, next);
                    next += 1;
                }
                if !send.is_empty() {
                    write_all(w.tasks_fd(), send)?;
                }
            }
        }
        Ok(())
    }

    /// One task of one item, alone: written to the first worker, its result read back.
    pub(crate) fn round_trip(&mut self, x: u64) -> io::Result<u64> {
        assert_eq!(self.chunk, 1, "a round trip is one item");
        let w = &self.workers[0];
        write_all(w.tasks_fd(), &x.to_ne_bytes())?;
        let mut back = [0u8; ITEM];
        if !read_exact(w.results.as_raw_fd(), &mut back)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(u64::from_ne_bytes(back))
    }

    /// Closes every task pipe, waits for the workers and checks that each exited with 0.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.stop_and_wait()
    }

    fn stop_and_wait(&mut self) -> io::Result<()> {
        for w in &mut self.workers {
            w.tasks = None;
        }
        let mut first = Ok(());
        for w in std::mem::take(&mut self.workers) {
            let waited = wait_exit_zero(w.pid);
            if first.is_ok() {
                first = waited;
            }
        }
        first
    }
}

impl Drop for RawPool {
    fn drop(&mut self) {
        let _ = self.stop_and_wait();
    }
}
