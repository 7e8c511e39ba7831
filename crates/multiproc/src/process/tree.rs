//! Who this process is: its name, identity, authkey and parent.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::sys::{self, Pid};

/// What a process knows about itself; inherited (fork) or sent (spawn, forkserver).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Me {
    pub(crate) name: String,
    /// `[]` in the main process, `[1]` for its first child, `[1, 1]` for that child's first.
    pub(crate) identity: Vec<u32>,
    pub(crate) daemon: bool,
    pub(crate) authkey: [u8; 32],
    pub(crate) parent: Option<ParentInfo>,
    /// The number the next child made here gets.
    pub(crate) next_child: u32,
}

/// The parent as the child knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ParentInfo {
    pub(crate) name: String,
    pub(crate) pid: i32,
}

static ME: Mutex<Option<Me>> = Mutex::new(None);

fn fresh_main() -> Me {
    Me {
        name: "MainProcess".to_owned(),
        identity: Vec::new(),
        daemon: false,
        authkey: sys::random_bytes::<32>(),
        parent: None,
        next_child: 1,
    }
}

/// Locks this process's identity (made on first use: the main process, a fresh authkey).
/// Held across `fork` so the child finds it consistent.
pub(crate) fn lock() -> MutexGuard<'static, Option<Me>> {
    let mut guard = ME.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(fresh_main);
    guard
}

/// Runs `f` on this process's identity.
pub(crate) fn with<T>(f: impl FnOnce(&mut Me) -> T) -> T {
    let mut guard = ME.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(fresh_main))
}

/// Replaces the identity (in a new child).
pub(crate) fn become_(me: Me) {
    *ME.lock().unwrap_or_else(|e| e.into_inner()) = Some(me);
}

/// This process's name, if its identity is not locked right now (for the panic report, which
/// must not wait).
pub(crate) fn try_name() -> Option<String> {
    let guard = ME.try_lock().ok()?;
    Some(
        guard
            .as_ref()
            .map_or_else(|| "MainProcess".to_owned(), |me| me.name.clone()),
    )
}

/// Identity and default name for a new child of this process.
pub(crate) fn next_child_identity() -> (Vec<u32>, String) {
    with(|me| {
        let mut identity = me.identity.clone();
        identity.push(me.next_child);
        me.next_child += 1;
        let name = format!(
            "Process-{}",
            identity
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(":")
        );
        (identity, name)
    })
}

/// A snapshot of the current process, as [`current_process`] returns it.
///
/// # Examples
///
/// In a child, the name and identity are its own and the authkey is the program's:
///
/// ```
/// use multiproc::{Process, StartMethod};
///
/// fn who(_: ()) -> (String, Vec<u32>, [u8; 32]) {
///     let me = multiproc::current_process();
///     (me.name().to_owned(), me.identity().to_vec(), *me.authkey())
/// }
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(who, ()).name("worker");
/// p.start()?;
/// let (name, identity, key) = p.join_result()?;
/// assert_eq!(name, "worker");
/// assert_eq!(identity.len(), 1);
/// assert_eq!(&key, multiproc::current_process().authkey());
/// # Ok::<(), multiproc::ProcessError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentProcess {
    name: String,
    pid: u32,
    daemon: bool,
    authkey: [u8; 32],
    identity: Vec<u32>,
}

impl CurrentProcess {
    /// The name: `MainProcess`, or `Process-1`, `Process-1:2`, ... or the name given.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Whether this process was started as a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
    /// The program's 32-byte authentication key: random, made in the main process and
    /// inherited by every child. Connections and the forkserver authenticate with it.
    pub fn authkey(&self) -> &[u8; 32] {
        &self.authkey
    }
    /// The position in the process tree: empty in the main process, `[1, 2]` for the
    /// second child of the first child.
    pub fn identity(&self) -> &[u32] {
        &self.identity
    }
}

/// The process that is running this code.
///
/// # Examples
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id());
/// assert_eq!(me.authkey().len(), 32);
/// ```
pub fn current_process() -> CurrentProcess {
    with(|me| CurrentProcess {
        name: me.name.clone(),
        pid: sys::getpid().as_raw_nonzero().get() as u32,
        daemon: me.daemon,
        authkey: me.authkey,
        identity: me.identity.clone(),
    })
}

/// The parent of a process started by multiproc.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, StartMethod};
///
/// fn parent(_: ()) -> Option<(String, u32, bool)> {
///     multiproc::parent_process().map(|p| (p.name().to_owned(), p.pid(), p.is_alive()))
/// }
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(parent, ());
/// p.start()?;
/// let expected = ("MainProcess".to_owned(), std::process::id(), true);
/// assert_eq!(p.join_result()?, Some(expected));
/// # Ok::<(), multiproc::ProcessError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentProcess {
    name: String,
    pid: u32,
}

impl ParentProcess {
    /// The parent's name (`MainProcess` for a child of the main process).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The parent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Whether the parent still runs.
    pub fn is_alive(&self) -> bool {
        Pid::from_raw(self.pid as i32).is_some_and(|p| sys::pidfd_open(p).is_ok())
    }
}

/// The process that started this one, or `None` in the main process.
///
/// # Examples
///
/// ```
/// assert!(multiproc::parent_process().is_none());
/// ```
pub fn parent_process() -> Option<ParentProcess> {
    with(|me| {
        me.parent.as_ref().map(|p| ParentProcess {
            name: p.name.clone(),
            pid: p.pid as u32,
        })
    })
}

/// The number of CPUs this process may use: the affinity mask and a cgroup CPU quota are
/// honoured (a container limited to 1.5 CPUs gets 1, a process pinned to one core gets 1).
/// Never less than 1.
///
/// # Examples
///
/// ```
/// assert!(multiproc::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
