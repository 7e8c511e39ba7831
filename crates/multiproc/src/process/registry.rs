//! Every child this process started and has not yet seen end: for `active_children`, for the
//! rule at exit (daemons terminated, the others joined), and for the reaper thread that makes
//! sure no finished child stays a zombie.
//!
//! The reaper is one thread per parent process, started with the first child. While there are
//! children it wakes every [`REAP_TICK`], asks an epoll set holding every child's pidfd
//! which have ended, and collects their status; with no
//! children it sleeps until one is registered. So a child that is never joined stops being
//! a zombie within a tick. It deliberately does not wake at each exit: the joiner is usually
//! waiting for that exit, and an extra thread waking at the same moment costs the joiner a
//! context switch. Joiners and the reaper both go through [`ChildShared::poll_exit`], which
//! collects a status once, under a lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::Thread;
use std::time::Duration;

use crate::process::child::ChildShared;
use crate::sys::{self, Epoll, Pid, Sig};

pub(crate) struct Registry {
    children: BTreeMap<u64, Arc<ChildShared>>,
    reaper: Option<(Arc<Epoll>, Thread)>,
    /// The pid the `atexit` rule was registered for (a fork child inherits the registration).
    owner: Option<Pid>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: BTreeMap::new(),
    reaper: None,
    owner: None,
});

/// Held for reading by a spawn or forkserver launch from the moment it makes the new child's
/// channel until the child is registered, and for writing by a fork launch around the fork.
/// So no fork ever happens while a channel end exists that the fork child would not know to
/// neutralize (a copy of it there could keep a daemon alive after its parent's death).
///
/// A fork launch takes it after the standard output and error locks; so nothing inside a
/// launch may print through std (a thread holding it shared would wait for those locks,
/// held by a forking thread that waits for it).
static LAUNCHES: RwLock<()> = RwLock::new(());

/// See [`LAUNCHES`]: for a spawn or forkserver launch.
pub(crate) fn launch_window() -> RwLockReadGuard<'static, ()> {
    LAUNCHES.read().unwrap_or_else(|e| e.into_inner())
}

/// See [`LAUNCHES`]: for a fork launch.
pub(crate) fn fork_window() -> RwLockWriteGuard<'static, ()> {
    LAUNCHES.write().unwrap_or_else(|e| e.into_inner())
}

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
    let key = child.id;
    if reg.reaper.is_none() {
        reg.reaper = start_reaper();
    }
    reg.children.insert(key, child.clone());
    if let Some((epoll, thread)) = &reg.reaper {
        let _ = epoll.add(child.exit_fd(), key);
        thread.unpark();
    }
}

/// How often the reaper looks for ended children while there are some.
const REAP_TICK: Duration = Duration::from_millis(50);

/// Starts the reaper thread, and returns once it runs.
///
/// Waiting matters to `fork`: while a thread is being set up, std holds a lock of its own
/// (its record of thread stacks) that a fork child needs again if it calls
/// `std::process::exit`; a fork at that moment would leave the child waiting on it forever.
fn start_reaper() -> Option<(Arc<Epoll>, Thread)> {
    let epoll = Arc::new(Epoll::new().ok()?);
    let for_thread = epoll.clone();
    let (running_tx, running_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("multiproc-reaper".to_owned())
        .spawn(move || {
            let _ = running_tx.send(());
            reaper_loop(&for_thread)
        })
        .ok()?;
    running_rx.recv_timeout(Duration::from_secs(10)).ok()?;
    Some((epoll, handle.thread().clone()))
}

/// Makes sure the reaper runs before a fork (see [`start_reaper`]): the first fork start
/// would otherwise start it right after forking, and the next fork could race with it.
pub(crate) fn ensure_reaper() {
    let mut reg = lock();
    if reg.reaper.is_none() {
        reg.reaper = start_reaper();
    }
}

fn reaper_loop(epoll: &Epoll) {
    loop {
        if lock().children.is_empty() {
            std::thread::park();
            continue;
        }
        std::thread::sleep(REAP_TICK);
        let Ok(keys) = epoll.ready_now() else { return };
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

/// Forgets a child whose end has been seen (CPython's `join` does the same): its
/// descriptors close as soon as the last handle goes, and fork children have nothing of it to
/// neutralize.
pub(crate) fn forget(child: &ChildShared) {
    let mut reg = lock();
    if reg.children.remove(&child.id).is_some() {
        if let Some((epoll, _)) = &reg.reaper {
            epoll.remove(child.exit_fd());
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
            if let Some((epoll, _)) = &reg.reaper {
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
/// did not survive the fork, so its epoll set is neutralized the same way, and forgotten with
/// the thread's handle.
pub(crate) fn after_fork_in_child(reg: &mut Registry) {
    for child in reg.children.values() {
        for fd in child.raw_fds() {
            sys::neutralize_fd(fd);
        }
    }
    // Forgotten rather than freed: freeing writes to the allocator's pages, and every page
    // written after a fork is a copy-on-write fault. The child is about to run its target
    // and exit; the parent's copies are its to free.
    if !reg.children.is_empty() {
        std::mem::forget(std::mem::take(&mut reg.children));
    }
    if let Some(reaper) = reg.reaper.take() {
        sys::neutralize_fd(reaper.0.raw_fd());
        // The reaper thread did not survive the fork. Its epoll set and thread handle are
        // forgotten, not dropped (a drop writes to their reference counts on the heap).
        std::mem::forget(reaper);
    }
    if reg.owner.is_some() {
        reg.owner = Some(sys::getpid());
    }
}
