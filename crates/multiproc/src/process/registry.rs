//! Every child this process started and has not yet seen end: for `active_children`, for the
//! rule at exit (daemons terminated, the others joined), and for the reaper thread that makes
//! sure no finished child stays a zombie.
//!
//! The reaper is one thread per parent process, started with the first child. It sleeps in
//! `epoll_wait` on the pidfd of every child (the channel, for forkserver children) and
//! collects each status as soon as the child ends, so a child that is never joined is reaped
//! promptly. Joiners collect the status themselves when they get there first; both go through
//! [`ChildShared::poll_exit`], which does it once, under a lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::process::child::ChildShared;
use crate::sys::{self, Epoll, Pid, Sig};

pub(crate) struct Registry {
    children: BTreeMap<u64, Arc<ChildShared>>,
    next_key: u64,
    reaper: Option<Arc<Epoll>>,
    /// The pid the `atexit` rule was registered for (a fork child inherits the registration).
    owner: Option<Pid>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: BTreeMap::new(),
    next_key: 0,
    reaper: None,
    owner: None,
});

/// Locks the registry (held across `fork`).
pub(crate) fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a child that just started.
pub(crate) fn register(child: &Arc<ChildShared>) {
    let mut reg = lock();
    let me = sys::getpid();
    if reg.owner != Some(me) {
        if reg.owner.is_none() {
            // Registered once per address space; a fork child's `after_fork_in_child` moves
            // the ownership to itself.
            let _ = sys::register_atexit(at_exit);
        }
        reg.owner = Some(me);
    }
    let key = reg.next_key;
    reg.next_key += 1;
    let epoll = match &reg.reaper {
        Some(e) => Some(e.clone()),
        None => start_reaper().inspect(|e| reg.reaper = Some(e.clone())),
    };
    reg.children.insert(key, child.clone());
    drop(reg);
    if let Some(epoll) = epoll {
        let _ = epoll.add(child.exit_fd(), key);
    }
}

fn start_reaper() -> Option<Arc<Epoll>> {
    let epoll = Arc::new(Epoll::new().ok()?);
    let for_thread = epoll.clone();
    std::thread::Builder::new()
        .name("multiproc-reaper".to_owned())
        .spawn(move || reaper_loop(&for_thread))
        .ok()?;
    Some(epoll)
}

fn reaper_loop(epoll: &Epoll) {
    while let Ok(keys) = epoll.wait() {
        for key in keys {
            let child = lock().children.get(&key).cloned();
            let Some(child) = child else { continue };
            if child.poll_exit().is_some() {
                epoll.remove(child.exit_fd());
                lock().children.remove(&key);
            }
        }
    }
}

/// The children still running (finished ones are reaped and dropped on the way).
pub(crate) fn active() -> Vec<Arc<ChildShared>> {
    let mut reg = lock();
    let mut done = Vec::new();
    let mut alive = Vec::new();
    for (key, child) in &reg.children {
        if child.poll_exit().is_some() {
            done.push(*key);
        } else {
            alive.push(child.clone());
        }
    }
    for key in done {
        if let Some(child) = reg.children.remove(&key) {
            if let Some(epoll) = &reg.reaper {
                epoll.remove(child.exit_fd());
            }
        }
    }
    alive
}

/// CPython's rule when a process ends normally: terminate the daemonic children, then join
/// all of them.
pub(crate) fn finish_children() {
    let children = active();
    for child in children.iter().filter(|c| c.daemon) {
        let _ = child.signal(Sig::Term);
    }
    for child in &children {
        let _ = child.wait_exit(None);
    }
}

extern "C" fn at_exit() {
    if lock().owner == Some(sys::getpid()) {
        finish_children();
    }
}

/// In a fork child, with the registry lock still held from before the fork: forget the
/// parent's children. Their descriptors are neutralized (pointed at /dev/null) rather than
/// closed, because copies of the parent's handles still own the numbers; the reaper thread
/// did not survive the fork, so its epoll set is dropped the same way.
pub(crate) fn after_fork_in_child(reg: &mut Registry) {
    for child in reg.children.values() {
        for fd in child.raw_fds() {
            sys::neutralize_fd(fd);
        }
    }
    reg.children.clear();
    if let Some(epoll) = reg.reaper.take() {
        sys::neutralize_fd(epoll.raw_fd());
        // The dead reaper thread's clone keeps it from being freed; that is fine.
    }
    if reg.owner.is_some() {
        reg.owner = Some(sys::getpid());
    }
}
