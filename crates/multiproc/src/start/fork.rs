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
//! of file does not wait for the child too) and becomes the new process. Locks held by *other* threads of the parent
//! (the user's, or the allocator's in a libc without fork handlers) are the classic hazard of
//! forking a multi-threaded process; that is why `fork` is never the default start method.
#![allow(unsafe_code)]

use crate::error::ProcessError;
use crate::process::child::{ChildShared, Launched, Reaper};
use crate::process::{registry, tree};
use crate::start::{self, Job, forkserver};
use crate::sys::{self, Forked};
use std::sync::Arc;

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
    callable::prepare_for_fork();
    registry::ensure_reaper();
    // Lock order: standard output and error (a fork child flushes them before it exits, and
    // must not find them held by a thread it does not have; taken first, because a thread may
    // hold them while it starts a process), then the launch window, then identity, registry,
    // channel to parent, forkserver client, segment tracker client, hook mode, chosen start
    // method, open connections.
    let stdout = std::io::stdout().lock();
    let stderr = std::io::stderr().lock();
    // No other launch has a channel end out of the registry while the window is held, and
    // this one makes its channel inside it and registers its child before letting go (see
    // `registry::fork_window`).
    let window = registry::fork_window();
    let (parent_end, child_end) = sys::channel_pair().map_err(ProcessError::Launch)?;
    let mut identity = tree::lock();
    let mut reg = registry::lock();
    let mut to_parent = bootstrap::lock_to_parent();
    let mut client = forkserver::lock_client();
    let mut tracker = tracker::lock_client();
    let hook = bootstrap::lock_hook();
    let chosen = context::chosen();
    let mut connections = endpoint::lock_open();
    // SAFETY:
    // - `fork` requires that the child touch no lock another thread might hold; before it
    //   runs the target, the child below only uses the locks held right here (consistent,
    //   then released) and state initialised above (see the file header).
    let forked = unsafe { sys::fork() };
    match forked {
        Ok(Forked::Child) => {
            // Copies of its own argument descriptors first: the originals are held for the
            // parent (in the set of open connection ends) and are neutralized just below.
            let arg_fds: Vec<_> = job
                .arg_fds
                .iter()
                .filter_map(|fd| fd.try_clone().ok())
                .collect();
            registry::after_fork_in_child(&mut reg);
            forkserver::after_fork_in_child(&mut client);
            tracker::after_fork_in_child(&mut tracker);
            endpoint::after_fork_in_child(&mut connections);
            // The parent's own channel to its parent is not ours.
            *to_parent = None;
            // Forgotten, not freed: see `registry::after_fork_in_child`.
            std::mem::forget(identity.replace(me));
            drop((
                identity,
                reg,
                to_parent,
                client,
                tracker,
                hook,
                chosen,
                connections,
                stdout,
                stderr,
                window,
            ));
            drop(parent_end);
            let daemon = job.me.daemon;
            bootstrap::run_child(job.callable, job.args, arg_fds, child_end, daemon)
        }
        Ok(Forked::Parent(pid)) => {
            drop((
                identity,
                reg,
                to_parent,
                client,
                tracker,
                hook,
                chosen,
                connections,
                stdout,
                stderr,
            ));
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
pub(crate) fn fork_helper(
    serve: fn(std::os::unix::net::UnixStream) -> !,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    let _ = sys::dev_null();
    let (parent_end, child_end) = sys::channel_pair()?;
    // The same locks, in the same order, as `launch`: the child finds them consistent.
    let stdout = std::io::stdout().lock();
    let stderr = std::io::stderr().lock();
    let window = registry::fork_window();
    let identity = tree::lock();
    let reg = registry::lock();
    let to_parent = bootstrap::lock_to_parent();
    let client = forkserver::lock_client();
    let tracker = tracker::lock_client();
    let hook = bootstrap::lock_hook();
    let chosen = context::chosen();
    let connections = endpoint::lock_open();
    // SAFETY:
    // - `fork` requires that the child touch no lock another thread might hold: the child
    //   below releases the locks held right here (consistent in it), then only makes system
    //   calls and allocates (glibc's allocator is consistent after `fork`); it never returns
    //   to code that could take a user's lock, and ends with `_exit`.
    let forked = unsafe { sys::fork() };
    let keep = child_end.as_raw_fd();
    drop((
        identity,
        reg,
        to_parent,
        client,
        tracker,
        hook,
        chosen,
        connections,
        stdout,
        stderr,
        window,
    ));
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
