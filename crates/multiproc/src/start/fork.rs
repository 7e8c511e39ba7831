//! The `fork` start method: the child is a copy of the parent and runs the target at once.
//!
//! # Safety
//!
//! This file opts in to `unsafe` for its one call of [`sys::fork`]. What the child may do
//! before it runs user code: every multiproc lock, and the locks of standard output and
//! error, are taken before the fork and released after it in both processes, so the child
//! finds them consistent; the child
//! then forgets the parent's children and connections and becomes the new process. Locks
//! held by *other* threads of the parent (the user's, or the allocator's in a libc without
//! fork handlers) are the classic hazard of forking a multi-threaded process; that is why
//! `fork` is never the default start method.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use crate::bootstrap;
use crate::error::ProcessError;
use crate::process::child::{Launched, Reaper};
use crate::process::{registry, tree};
use crate::start::{Job, forkserver};
use crate::sys::{self, Forked};

pub(crate) fn launch(job: &Job<'_>) -> Result<Launched, ProcessError> {
    let (parent_end, child_end) = sys::channel_pair().map_err(ProcessError::Launch)?;
    let me = job.me.clone();
    // The child neutralizes the parent's descriptors with it; opening it here saves the
    // child an `open` and the faults that come with it.
    let _ = sys::dev_null();
    // Lock order: standard output and error (a fork child flushes them before it exits, and
    // must not find them held by a thread it does not have), then identity, registry,
    // channel to parent, forkserver client.
    let stdout = std::io::stdout().lock();
    let stderr = std::io::stderr().lock();
    let mut identity = tree::lock();
    let mut reg = registry::lock();
    let mut to_parent = bootstrap::lock_to_parent();
    let mut client = forkserver::lock_client();
    // SAFETY:
    // - `fork` requires that the child touch no lock another thread might hold; the child
    //   below only uses the four multiproc locks held right here (consistent, then released),
    //   and after that runs the target like any fork start method does (see the file header).
    let forked = unsafe { sys::fork() };
    match forked {
        Ok(Forked::Child) => {
            registry::after_fork_in_child(&mut reg);
            forkserver::after_fork_in_child(&mut client);
            // The parent's own channel to its parent is not ours.
            *to_parent = None;
            // Forgotten, not freed: see `registry::after_fork_in_child`.
            std::mem::forget(identity.replace(me));
            drop((identity, reg, to_parent, client, stdout, stderr));
            drop(parent_end);
            let daemon = job.me.daemon;
            bootstrap::run_child(job.callable, job.args, child_end, daemon)
        }
        Ok(Forked::Parent(pid)) => {
            drop((identity, reg, to_parent, client, stdout, stderr));
            drop(child_end);
            let pidfd = sys::pidfd_open(pid).map_err(ProcessError::Launch)?;
            parent_end
                .set_nonblocking(true)
                .map_err(ProcessError::Launch)?;
            debug_assert!(parent_end.as_raw_fd() >= 0);
            Ok(Launched {
                pid,
                pidfd,
                channel: parent_end,
                reaper: Reaper::Us,
            })
        }
        Err(e) => Err(ProcessError::Launch(e)),
    }
}
