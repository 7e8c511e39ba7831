//! The `fork` start method: the child is a copy of the parent and runs the target at once.
//!
//! # Safety
//!
//! This file opts in to `unsafe` for its one call of [`sys::fork`]. What the child may do
//! before it runs user code: every lock it may touch (multiproc's, the launch window, and
//! those of standard output and error) is taken before the fork and released after it in
//! both processes, and every one-time initialisation it may need is done before the fork,
//! so the child finds all of them consistent; the child then forgets the parent's children
//! and connections (pointing their descriptors at `/dev/null`, so that a peer waiting for end
//! of file does not wait for the child too) and becomes the new process. Locks held by
//! *other* threads of the parent (the user's, or the allocator's in a libc without fork
//! handlers) are the classic hazard of forking a multi-threaded process; that is why `fork`
//! is never the default start method.
#![allow(unsafe_code)]

use crate::error::ProcessError;
use crate::process::child::{ChildShared, Launched, Reaper};
use crate::process::{registry, tree};
use crate::start::{self, Job, forkserver};
use crate::sys::{self, Forked};
use std::collections::BTreeSet;
use std::io::{StderrLock, StdoutLock};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, MutexGuard, RwLockWriteGuard};

use crate::connection::endpoint;
use crate::shm::tracker;
use crate::{bootstrap, callable, context};

pub(crate) fn launch(job: &Job<'_>) -> Result<Arc<ChildShared>, ProcessError> {
    let me = job.me.clone();
    // One-time initialisations are done here, not in the child: another thread could have
    // one under way at the moment of the fork, and the child would wait for it forever.
    // (`/dev/null` is what the child neutralizes the parent's descriptors with.)
    let _ = sys::dev_null();
    bootstrap::ensure_panic_hook();
    bootstrap::register_child_thread_locals();
    callable::prepare_for_fork();
    registry::ensure_reaper();
    // No other launch has a channel end out of the registry while the window is held, and
    // this one makes its channel inside it and registers its child before letting go (see
    // `registry::fork_window`).
    let (mut locks, pair) = ForkLocks::take(sys::channel_pair);
    let (parent_end, child_end) = pair.map_err(ProcessError::Launch)?;
    // SAFETY:
    // - `fork` requires that the child touch no lock another thread might hold; before it
    //   runs the target, the child below only uses the locks held right here (consistent,
    //   then released) and state initialised above (see the file header).
    let forked = unsafe { sys::fork() };
    match forked {
        Ok(Forked::Child) => {
            // Copies of its own argument descriptors first: the originals are held for the
            // parent (in the set of open connection ends) and are neutralized just below.
            // (Nothing to run through when there are none: each piece of code a fork child
            // runs for the first time costs it a page fault.)
            let arg_fds: Vec<_> = if job.arg_fds.is_empty() {
                Vec::new()
            } else {
                job.arg_fds
                    .iter()
                    .filter_map(|fd| fd.try_clone().ok())
                    .collect()
            };
            registry::after_fork_in_child(&mut locks.reg);
            forkserver::after_fork_in_child(&mut locks.client);
            tracker::after_fork_in_child(&mut locks.tracker);
            endpoint::after_fork_in_child(&mut locks.connections);
            // The parent's own channel to its parent is not ours.
            *locks.to_parent = None;
            // Forgotten, not freed: see `registry::after_fork_in_child`.
            std::mem::forget(locks.identity.replace(me));
            drop(locks);
            drop(parent_end);
            let daemon = job.me.daemon;
            bootstrap::run_child(job.callable, job.args, arg_fds, child_end, daemon)
        }
        Ok(Forked::Parent(pid)) => {
            let window = locks.release_keeping_window();
            drop(child_end);
            let pidfd = match sys::pidfd_open(pid) {
                Ok(fd) => fd,
                Err(e) => {
                    // Without a pidfd the child cannot be watched: end it rather than leave
                    // it running unknown to anyone.
                    sys::kill_and_reap(pid);
                    return Err(ProcessError::Launch(e));
                }
            };
            let launched = Launched {
                pid,
                pidfd,
                channel: parent_end,
                reaper: Reaper::Us,
            };
            let child = start::register(launched, job);
            drop(window);
            Ok(child)
        }
        Err(e) => Err(ProcessError::Launch(e)),
    }
}

/// Forks a helper process that must start without the start-up hook (the segment tracker of
/// a program that never called it): the child gives up the standard streams, closes every
/// descriptor but its end of a new channel, and runs `serve`, which never returns. The parent
/// gets its end of the channel. The child is not registered (nothing joins it): it outlives
/// the program's processes on purpose and is adopted when its parent ends. Never called with
/// a multiproc lock held.
pub(crate) fn fork_helper(serve: fn(UnixStream) -> !) -> std::io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    let _ = sys::dev_null();
    // The same locks, in the same order, as `launch` (the child finds them consistent), and
    // the channel made inside the launch window, so no other fork copies its ends.
    let (locks, pair) = ForkLocks::take(sys::channel_pair);
    let (parent_end, child_end) = pair?;
    // SAFETY:
    // - `fork` requires that the child touch no lock another thread might hold: the child
    //   below releases the locks held right here (consistent in it), then only makes system
    //   calls and allocates (glibc's allocator is consistent after `fork`); it never returns
    //   to code that could take a user's lock, and ends with `_exit`.
    let forked = unsafe { sys::fork() };
    let keep = child_end.as_raw_fd();
    drop(locks);
    match forked? {
        Forked::Child => {
            for fd in 0..3 {
                sys::neutralize_fd(fd);
            }
            // The parent's handles in this copy of memory are never dropped: `serve` ends
            // the process with `_exit`.
            sys::close_all_fds_except(keep);
            serve(child_end)
        }
        Forked::Parent(_) => {
            drop(child_end);
            Ok(parent_end)
        }
    }
}

/// Every lock a fork child may touch, held across `fork` so the child finds each one
/// consistent. Taken in one order: standard output and error (a fork child flushes them before
/// it exits, and must not find them held by a thread it does not have; first, because a
/// thread may hold them while it starts a process), the launch window, then identity,
/// registry, channel to parent, forkserver client, segment tracker client, hook mode, chosen
/// start method, open connections. Released in field order: the window last.
struct ForkLocks {
    identity: MutexGuard<'static, Option<tree::Me>>,
    reg: MutexGuard<'static, registry::Registry>,
    to_parent: MutexGuard<'static, Option<UnixStream>>,
    client: MutexGuard<'static, forkserver::Client>,
    tracker: MutexGuard<'static, Option<tracker::Client>>,
    _hook: MutexGuard<'static, Option<bootstrap::HookMode>>,
    _chosen: MutexGuard<'static, Option<context::StartMethod>>,
    connections: MutexGuard<'static, BTreeSet<RawFd>>,
    _stdout: StdoutLock<'static>,
    _stderr: StderrLock<'static>,
    window: RwLockWriteGuard<'static, ()>,
}

impl ForkLocks {
    /// Takes them all; `inside_window` runs once the launch window is held (a launch makes
    /// its channel there).
    fn take<T>(inside_window: impl FnOnce() -> T) -> (Self, T) {
        let stdout = std::io::stdout().lock();
        let stderr = std::io::stderr().lock();
        let window = registry::fork_window();
        let made = inside_window();
        let locks = Self {
            identity: tree::lock(),
            reg: registry::lock(),
            to_parent: bootstrap::lock_to_parent(),
            client: forkserver::lock_client(),
            tracker: tracker::lock_client(),
            _hook: bootstrap::lock_hook(),
            _chosen: context::chosen(),
            connections: endpoint::lock_open(),
            _stdout: stdout,
            _stderr: stderr,
            window,
        };
        (locks, made)
    }

    /// Releases all but the launch window, which the caller holds until its child is
    /// registered.
    fn release_keeping_window(self) -> RwLockWriteGuard<'static, ()> {
        let Self { window, .. } = self;
        window
    }
}
