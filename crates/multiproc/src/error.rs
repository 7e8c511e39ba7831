//! Error types. Messages follow CPython's wording where CPython has one.

use std::io;

use crate::codec::CodecError;

/// An error from a [`Process`](crate::Process) call.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, ProcessError, StartMethod};
///
/// fn nothing(_: ()) {}
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(nothing, ());
/// assert!(matches!(p.join(), Err(ProcessError::NotStarted("join"))));
/// p.start()?;
/// let twice = p.start().unwrap_err();
/// assert_eq!(twice.to_string(), "cannot start a process twice");
/// p.join()?;
/// # Ok::<(), ProcessError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// `start` was called on a process that was already started.
    #[error("cannot start a process twice")]
    StartedTwice,
    /// A call that needs a started process was made before `start`.
    #[error("can only {0} a started process")]
    NotStarted(&'static str),
    /// An option that must be set before `start` was set after it.
    #[error("process has already started")]
    AlreadyStarted,
    /// `close` was called while the process still runs.
    #[error(
        "Cannot close a process while it is still running. You should first call join() or terminate()."
    )]
    CloseRunning,
    /// A call was made after `close`.
    #[error("process object is closed")]
    Closed,
    /// The start method re-runs the program, and the program never called the start-up hook.
    #[error("{0}")]
    HookMissing(&'static str),
    /// The process could not be started (the executable is missing, `exec` failed, the
    /// forkserver is unreachable, ...).
    #[error("could not start the process: {0}")]
    Launch(#[source] io::Error),
    /// The target function cannot be started in another process.
    #[error("cannot start this function in a child: {0}")]
    Function(String),
    /// The arguments could not be encoded, or the result decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The child ended without giving back a value (see [`ChildError`]).
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The process did not end within the time given.
    #[error("the process did not end within {0:?}")]
    Timeout(std::time::Duration),
    /// The value of the process was already taken by an earlier `join_result`.
    #[error("the result of this process was already taken")]
    ResultTaken,
    /// An operating-system error while watching or signalling the process.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How a child ended without returning a value.
///
/// # Examples
///
/// ```
/// use multiproc::{ChildError, Process, ProcessError, StartMethod};
///
/// fn quit(code: i32) -> u8 {
///     std::process::exit(code)
/// }
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(quit, 3);
/// p.start()?;
/// let err = p.join_result().unwrap_err();
/// assert!(matches!(err, ProcessError::Child(ChildError::Exited(3))));
/// assert_eq!(err.to_string(), "the process exited with code 3 before returning a value");
/// # Ok::<(), ProcessError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The target panicked.
    #[error("the process panicked{}: {message}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panicked {
        /// The panic's message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The process exited (for example through `std::process::exit`) before returning.
    #[error("the process exited with code {0} before returning a value")]
    Exited(i32),
    /// A signal ended the process (SIGKILL, a segfault, the OOM killer, ...).
    #[error("the process was killed by signal {signal} ({})", signal_name(*signal))]
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// The child could not run its target (a different build, undecodable arguments, ...).
    #[error("the process failed to run its target: {0}")]
    Failed(String),
    /// The exit status could not be learned (the forkserver that reaped it went away).
    #[error("the exit status of the process is unknown: {0}")]
    StatusLost(String),
}

/// A short name for a signal number (`SIGKILL`), or the number.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

/// An error choosing a start method.
///
/// # Examples
///
/// ```
/// assert_eq!(
///     multiproc::get_context("vfork").unwrap_err(),
///     multiproc::ContextError::Unknown("vfork".to_owned())
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// `set_start_method` was called a second time.
    #[error("context has already been set")]
    AlreadySet,
    /// The name is not one of `fork`, `spawn`, `forkserver`.
    #[error("cannot find context for {0:?}")]
    Unknown(String),
}
