//! The OS floor: jobs done with nothing but raw system calls, to show what the kernel itself
//! costs.
//!
//! - [`fork_exit_wait`]: `fork()`, the child `_exit(0)`s at once, the parent `waitpid`s — the
//!   floor of the `fork` start method;
//! - [`ExecFloor::run`]: `fork()`, the child `execve`s this very bench binary with
//!   [`EXEC_CHILD_ARG`], which makes it `_exit(0)` at the top of `main`
//!   ([`exit_if_exec_child`]), the parent `waitpid`s — the floor of `spawn` and `forkserver`
//!   (a child that runs this program from its first instruction).
//!
//! # Safety
//!
//! This is the bench's only file with `unsafe`: it calls `fork`, `execve`, `_exit` and
//! `waitpid` through `libc`. Between `fork` and `execve`/`_exit` the child calls nothing but
//! those two, which are async-signal-safe, and touches no memory the parent might change
//! (everything `execve` needs is built before the fork), so it is sound even if the parent
//! has other threads.
#![allow(unsafe_code)]

use std::ffi::{CString, OsString};
use std::io;
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
