//! The OS floor: jobs done with nothing but raw system calls, to show what the kernel itself
//! costs.
//!
//! - [`fork_exit_wait`]: `fork()`, the child `_exit(0)`s at once, the parent `waitpid`s — the
//!   floor of the `fork` start method;
//! - [`ExecFloor::run`]: `fork()`, the child `execve`s this very bench binary with
//!   [`EXEC_CHILD_ARG`], which makes it `_exit(0)` at the top of `main`
//!   ([`exit_if_exec_child`]), the parent `waitpid`s — the floor of `spawn` and `forkserver`
//!   (a child that runs this program from its first instruction);
//! - [`SocketChild`]: a child forked on one end of an `AF_UNIX` `SOCK_STREAM` socketpair,
//!   echoing frames, swallowing a stream of them, or receiving one large one
//!   ([`SocketJob`]) — the floor of a `Connection`.
//!
//! # Safety
//!
//! This is the bench's only file with `unsafe`: it calls `fork`, `execve`, `_exit`,
//! `waitpid`, `socketpair`, `read`, `write` and `close` through `libc`. Between `fork` and
//! `execve`/`_exit` the child calls nothing but those, which are async-signal-safe, allocates
//! nothing, and touches no memory the parent might change (everything it needs is built
//! before the fork), so it is sound even if the parent has other threads.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

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
