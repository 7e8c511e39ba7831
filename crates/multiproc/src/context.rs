//! Start methods and contexts: `get_context`, `set_start_method`, `get_start_method`,
//! `get_all_start_methods`.
//!
//! # The default
//!
//! The default start method is **forkserver**: the fastest method that is safe when the
//! parent has threads. `fork` is faster still, but forking a multi-threaded parent can
//! deadlock the child on a lock another thread held (CPython gh-84559), so it is never the
//! default; `spawn` is as safe as forkserver but pays a full `exec` and program start-up per
//! child. See BENCHMARKS.md for the figures behind the choice.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{ContextError, ProcessError};
use crate::process::Process;

/// How a child process is started.
///
/// # Examples
///
/// ```
/// use multiproc::StartMethod;
///
/// let m: StartMethod = "spawn".parse().unwrap();
/// assert_eq!(m, StartMethod::Spawn);
/// assert_eq!(m.name(), "spawn");
/// assert_eq!(format!("[{:<7}]", StartMethod::Fork), "[fork   ]");
/// assert_eq!(
///     "vfork".parse::<StartMethod>().unwrap_err().to_string(),
///     "cannot find context for \"vfork\""
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StartMethod {
    /// `fork(2)`: the child is a copy of the parent (its memory, its globals) and runs the
    /// target at once. Fastest; unsafe in a parent with threads.
    Fork,
    /// Run the program again (`fork` + `exec`); the child starts clean and receives the
    /// function and its arguments. Needs the start-up hook ([`init`](crate::init)).
    Spawn,
    /// Ask a clean, single-threaded server process (started once, early) to fork the child.
    /// Needs the start-up hook. The default.
    Forkserver,
}

impl StartMethod {
    /// Every method, the default first (as CPython lists them).
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Forkserver,
        StartMethod::Spawn,
        StartMethod::Fork,
    ];

    /// The name CPython uses: `"fork"`, `"spawn"` or `"forkserver"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment (`{:<10}`).
        f.pad(self.name())
    }
}

impl FromStr for StartMethod {
    type Err = ContextError;

    /// Parses `"fork"`, `"spawn"` or `"forkserver"`.
    ///
    /// # Errors
    ///
    /// [`ContextError::Unknown`] for any other name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::Forkserver),
            other => Err(ContextError::Unknown(other.to_owned())),
        }
    }
}

/// The default start method when none was chosen.
pub const DEFAULT_START_METHOD: StartMethod = StartMethod::Forkserver;

static CHOSEN: Mutex<Option<StartMethod>> = Mutex::new(None);

/// Locks the chosen start method (held across `fork`).
pub(crate) fn chosen() -> std::sync::MutexGuard<'static, Option<StartMethod>> {
    CHOSEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The method chosen with `set_start_method` (or inherited), if any.
pub(crate) fn chosen_start_method() -> Option<StartMethod> {
    *chosen()
}

/// In a child: the parent's choice becomes ours.
pub(crate) fn inherit_start_method(m: StartMethod) {
    *chosen() = Some(m);
}

/// Sets the start method that [`Process::new`] and the other constructors use. Call it once,
/// early in `main`.
///
/// # Errors
///
/// [`ContextError::AlreadySet`] ('context has already been set') if a method was already
/// chosen, by an earlier call or by [`get_start_method`]. Use [`set_start_method_force`] to
/// change it anyway.
///
/// # Examples
///
/// ```
/// use multiproc::StartMethod;
/// multiproc::set_start_method(StartMethod::Spawn).unwrap();
/// assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
/// let again = multiproc::set_start_method(StartMethod::Fork).unwrap_err();
/// assert_eq!(again.to_string(), "context has already been set");
/// ```
pub fn set_start_method(method: StartMethod) -> Result<(), ContextError> {
    let mut c = chosen();
    if c.is_some() {
        return Err(ContextError::AlreadySet);
    }
    *c = Some(method);
    Ok(())
}

/// Sets the start method even if one was chosen already (CPython's `force=True`).
///
/// # Examples
///
/// ```
/// use multiproc::StartMethod;
/// multiproc::set_start_method_force(StartMethod::Fork);
/// assert_eq!(multiproc::get_start_method(), StartMethod::Fork);
/// ```
pub fn set_start_method_force(method: StartMethod) {
    *chosen() = Some(method);
}

/// The start method in use. Like CPython, asking fixes the default: a later
/// [`set_start_method`] fails.
///
/// # Examples
///
/// ```
/// assert_eq!(multiproc::get_start_method(), multiproc::DEFAULT_START_METHOD);
/// ```
pub fn get_start_method() -> StartMethod {
    *chosen().get_or_insert(DEFAULT_START_METHOD)
}

/// The start methods this platform has, the default first.
///
/// # Examples
///
/// ```
/// let all = multiproc::get_all_start_methods();
/// assert_eq!(all[0], multiproc::DEFAULT_START_METHOD);
/// assert_eq!(all.len(), 3);
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    StartMethod::ALL.to_vec()
}

/// A start method, and the things made with it.
///
/// # Examples
///
/// ```
/// use multiproc::{Context, StartMethod};
/// fn double(x: u32) -> u32 { x * 2 }
///
/// let ctx = Context::new(StartMethod::Fork);
/// let mut p = ctx.process(double, 21);
/// p.start().unwrap();
/// assert_eq!(p.join_result().unwrap(), 42);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
    executable: Option<Arc<PathBuf>>,
}

impl Context {
    /// A context for `method`.
    pub fn new(method: StartMethod) -> Self {
        Self {
            method,
            executable: None,
        }
    }

    /// The context of the method in use ([`get_start_method`]).
    pub fn default_context() -> Self {
        Self::new(get_start_method())
    }

    /// The start method of this context.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// The program a `spawn` child runs (CPython's `set_executable`). It must be a build of
    /// the same program: a child running a different build refuses to run and says so.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::{Context, ProcessError, StartMethod};
    /// # fn main() {
    /// # multiproc::init();
    /// fn nothing(_: ()) {}
    ///
    /// let mut ctx = Context::new(StartMethod::Spawn);
    /// ctx.set_executable("/nonexistent/program");
    /// assert_eq!(ctx.executable(), Some(std::path::Path::new("/nonexistent/program")));
    /// let mut p = ctx.process(nothing, ());
    /// assert!(matches!(p.start(), Err(ProcessError::Launch(_))));
    /// # }
    /// ```
    pub fn set_executable(&mut self, path: impl Into<PathBuf>) {
        self.executable = Some(Arc::new(path.into()));
    }

    /// The program `spawn` children run, if set.
    pub fn executable(&self) -> Option<&Path> {
        self.executable.as_deref().map(PathBuf::as_path)
    }

    /// A new process with this start method: it will run `target(args)`.
    pub fn process<A, R>(&self, target: fn(A) -> R, args: A) -> Process<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        Process::new(target, args).with_context(self.clone())
    }

    /// Starts this context's forkserver now (a no-op for other methods), so that later starts
    /// do not pay for it and it forks from a clean, early state.
    ///
    /// # Examples
    ///
    /// ```
    /// #[multiproc::main]
    /// fn main() {
    ///     let ctx = multiproc::Context::new(multiproc::StartMethod::Forkserver);
    ///     ctx.ensure_forkserver().expect("the forkserver starts");
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Process::start`] for the forkserver method.
    pub fn ensure_forkserver(&self) -> Result<(), ProcessError> {
        if self.method == StartMethod::Forkserver {
            crate::start::forkserver::ensure_running()?;
        }
        Ok(())
    }
}

/// The context for a method named `"fork"`, `"spawn"` or `"forkserver"`.
///
/// # Errors
///
/// [`ContextError::Unknown`] for another name.
///
/// # Examples
///
/// ```
/// let ctx = multiproc::get_context("spawn").unwrap();
/// assert_eq!(ctx.start_method(), multiproc::StartMethod::Spawn);
/// assert!(multiproc::get_context("vfork").is_err());
/// ```
pub fn get_context(method: &str) -> Result<Context, ContextError> {
    Ok(Context::new(method.parse()?))
}

/// Starts the forkserver now, if the default context uses it.
///
/// # Examples
///
/// ```
/// #[multiproc::main]
/// fn main() {
///     multiproc::ensure_forkserver().expect("the forkserver starts");
///     // Every later start with the default method finds it running.
/// }
/// ```
///
/// # Errors
///
/// As [`Process::start`] for the forkserver method.
pub fn ensure_forkserver() -> Result<(), ProcessError> {
    // Like CPython's `forkserver.ensure_running()`, this does not fix the default method.
    let method = chosen_start_method().unwrap_or(DEFAULT_START_METHOD);
    Context::new(method).ensure_forkserver()
}
