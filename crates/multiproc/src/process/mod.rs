//! [`Process`]: a function running in a child process.

pub(crate) mod child;
pub(crate) mod registry;
pub(crate) mod tree;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};

use crate::bootstrap::{self, Outcome};
use crate::callable::Callable;
use crate::codec::{self, CodecError};
use crate::connection::endpoint::HeldFds;
use crate::context::Context;
use crate::error::{ChildError, ProcessError};
use crate::shm::segment::{Segment, Transit};
use crate::start::{self, Job};
use crate::sys::{RawExit, Sig};

use child::{ChildShared, exitcode};
use tree::{Me, ParentInfo};

enum State {
    Created,
    Started(Arc<ChildShared>),
    Closed,
}

/// A function that runs in a child process (CPython's `multiprocessing.Process`).
///
/// The target is a plain function `fn(A) -> R` (a closure that captures nothing coerces to
/// one); its argument and its result cross the process boundary through serde, so both
/// must be `Serialize + DeserializeOwned`. `R` is `()` for a target that returns nothing.
///
/// # Examples
///
/// ```
/// use multiproc::{Process, StartMethod};
///
/// fn greet((greeting, name): (String, String)) -> String {
///     format!("{greeting}, {name}!")
/// }
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(greet, ("Hello".to_string(), "bob".to_string()));
/// p.start()?;
/// assert_eq!(p.join_result()?, "Hello, bob!");
/// assert_eq!(p.exitcode()?, Some(0));
/// # Ok::<(), multiproc::ProcessError>(())
/// ```
///
/// # Dropping
///
/// Dropping a `Process` neither waits for the child nor kills it. A running child keeps
/// running and stays in [`active_children`]; when it ends, a background thread reaps it
/// within 50 ms (no zombie); when the program ends normally, daemonic children are
/// terminated and the others joined, as in CPython. A daemonic child also ends when this
/// process dies in any other way, even by SIGKILL.
///
/// # Daemons may have children
///
/// Unlike CPython, a daemonic process may start children (nested pools need it). Its
/// daemonic children end with it; non-daemonic ones outlive it, as they would any parent.
///
/// A type that cannot cross a process boundary is refused when the program is compiled:
///
/// ```compile_fail
/// fn use_it(_: std::rc::Rc<u8>) {}
/// let _ = multiproc::Process::new(use_it, std::rc::Rc::new(1u8));
/// ```
pub struct Process<R = ()> {
    callable: Callable,
    /// The encoded arguments and the descriptors they hold (connections and other shared
    /// objects travel as descriptors).
    args: Result<(Vec<u8>, HeldFds), CodecError>,
    /// The tracked segments in the arguments, counted in transit until the child decodes
    /// them; handed to the child's record at `start` (taken back when it ends), taken back
    /// here if it never starts.
    arg_transits: Vec<Transit>,
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    /// `None`: the default context, looked up at `start` (so making a process does not fix
    /// the default start method, as in CPython).
    context: Option<Context>,
    state: State,
    result_taken: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        // Never started (`start` hands them to the child's record): no child will decode
        // the arguments.
        Segment::take_back_transits(&self.arg_transits);
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Created => "initial".to_owned(),
            State::Started(c) => match ended(c) {
                None => format!("started pid={}", c.pid.as_raw_nonzero()),
                Some(e) => format!("stopped exitcode={}", exitcode(e)),
            },
            State::Closed => "closed".to_owned(),
        };
        write!(
            f,
            "<Process name={:?} {state}{}>",
            self.name,
            if self.daemon { " daemon" } else { "" }
        )
    }
}

impl<R: Serialize + DeserializeOwned> Process<R> {
    /// A process that will run `target(args)` with the default start method.
    ///
    /// The name defaults to `Process-N` (`Process-1:2` for a child's child); the daemon flag
    /// defaults to the current process's.
    pub fn new<A: Serialize + DeserializeOwned>(target: fn(A) -> R, args: A) -> Self {
        let (identity, name) = tree::next_child_identity();
        let (bytes, fds, mut arg_transits) = crate::codec::fds::encoding(|| codec::encode(&args));
        if bytes.is_err() {
            Segment::take_back_transits(&std::mem::take(&mut arg_transits));
        }
        Self {
            callable: Callable::new(target),
            args: bytes.map(|b| (b, HeldFds::new(fds))),
            arg_transits,
            name,
            identity,
            daemon: tree::with(|me| me.daemon),
            context: None,
            state: State::Created,
            result_taken: false,
            _result: PhantomData,
        }
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Sets the name (builder form).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the daemon flag (builder form). A daemonic process is terminated when its parent
    /// exits normally, and killed when the parent dies any other way (even by SIGKILL).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Uses this context's start method (builder form).
    pub fn with_context(mut self, context: Context) -> Self {
        self.context = Some(context);
        self
    }

    /// Sets the daemon flag.
    ///
    /// # Errors
    ///
    /// 'process has already started' after [`start`](Self::start); 'process object is
    /// closed' after [`close`](Self::close).
    pub fn set_daemon(&mut self, daemon: bool) -> Result<(), ProcessError> {
        match self.state {
            State::Created => {
                self.daemon = daemon;
                Ok(())
            }
            State::Started(_) => Err(ProcessError::AlreadyStarted),
            State::Closed => Err(ProcessError::Closed),
        }
    }

    /// Sets the name (allowed at any time, as in CPython; a running child keeps the name it
    /// started with).
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// The process's name.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// Whether the process is daemonic.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// The start method this process uses (for one made without a context: the method in
    /// use now, without fixing it).
    pub fn start_method(&self) -> crate::StartMethod {
        match &self.context {
            Some(c) => c.start_method(),
            None => crate::context::chosen_start_method().unwrap_or(crate::DEFAULT_START_METHOD),
        }
    }

    fn started(&self, op: &'static str) -> Result<&Arc<ChildShared>, ProcessError> {
        match &self.state {
            State::Created => Err(ProcessError::NotStarted(op)),
            State::Started(c) => Ok(c),
            State::Closed => Err(ProcessError::Closed),
        }
    }

    /// Starts the child.
    ///
    /// # Errors
    ///
    /// - 'cannot start a process twice'; 'process object is closed';
    /// - [`ProcessError::HookMissing`] with the `spawn` and `forkserver` methods when the
    ///   program's `main` never called [`init`](crate::init) (nothing is started then);
    /// - [`ProcessError::Launch`] when the child cannot be started (missing executable,
    ///   `exec` failure, forkserver unreachable);
    /// - [`ProcessError::Codec`] when the arguments could not be encoded.
    pub fn start(&mut self) -> Result<(), ProcessError> {
        match self.state {
            State::Created => {}
            State::Started(_) => return Err(ProcessError::StartedTwice),
            State::Closed => return Err(ProcessError::Closed),
        }
        bootstrap::ensure_not_pending_child();
        let (args, arg_fds) = match &self.args {
            Ok((bytes, fds)) => (bytes.as_slice(), fds.as_slice()),
            Err(e) => return Err(e.clone().into()),
        };
        let me = tree::with(|me| Me {
            name: self.name.clone(),
            identity: self.identity.clone(),
            daemon: self.daemon,
            authkey: me.authkey,
            parent: Some(ParentInfo {
                name: me.name.clone(),
                pid: crate::sys::getpid().as_raw_nonzero().get(),
            }),
            next_child: 1,
        });
        let context = self.context.get_or_insert_with(Context::default_context);
        let job = Job {
            callable: self.callable,
            args,
            arg_fds,
            me,
            executable: context.executable(),
        };
        let child = start::launch(context.start_method(), &job)?;
        child.hold_arg_transits(std::mem::take(&mut self.arg_transits));
        self.state = State::Started(child);
        // The child has its own copies now; the parent's must not keep the other ends of
        // its pipes open (a reader would never see end of file).
        if let Ok((_, fds)) = &mut self.args {
            fds.clear();
        }
        Ok(())
    }

    /// The child's process id, once started.
    ///
    /// # Errors
    ///
    /// 'process object is closed' after [`close`](Self::close).
    pub fn pid(&self) -> Result<Option<u32>, ProcessError> {
        match &self.state {
            State::Created => Ok(None),
            State::Started(c) => Ok(Some(c.pid.as_raw_nonzero().get() as u32)),
            State::Closed => Err(ProcessError::Closed),
        }
    }

    /// Waits until the child ends.
    ///
    /// # Errors
    ///
    /// 'can only join a started process'; 'process object is closed'; an OS error.
    pub fn join(&self) -> Result<(), ProcessError> {
        wait_ended(self.started("join")?, None)?;
        Ok(())
    }

    /// Waits at most `timeout` for the child to end; true if it has. A zero timeout only
    /// checks.
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join).
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, ProcessError> {
        Ok(wait_ended(self.started("join")?, Some(timeout))?.is_some())
    }

    /// Waits until the child ends and returns the value its target returned.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Child`] when the child did not return a value: it panicked (with the
    /// message and location), exited early, was killed by a signal, or could not run its
    /// target; 'the result of this process was already taken' on a second call; and the
    /// errors of [`join`](Self::join).
    pub fn join_result(&mut self) -> Result<R, ProcessError> {
        self.join_result_within(None)
    }

    /// Like [`join_result`](Self::join_result), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Timeout`] if the child still runs after `timeout` (the value can be
    /// taken by a later call); otherwise as [`join_result`](Self::join_result).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Process, ProcessError, StartMethod};
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// # multiproc::set_start_method(StartMethod::Fork).unwrap();
    /// let mut p = Process::new(nap, 60_000);
    /// p.start()?;
    /// assert!(matches!(p.join_result_timeout(Duration::from_millis(10)), Err(ProcessError::Timeout(_))));
    /// p.kill()?;
    /// # Ok::<(), ProcessError>(())
    /// ```
    pub fn join_result_timeout(&mut self, timeout: Duration) -> Result<R, ProcessError> {
        self.join_result_within(Some(timeout))
    }

    fn join_result_within(&mut self, timeout: Option<Duration>) -> Result<R, ProcessError> {
        if self.result_taken {
            return Err(ProcessError::ResultTaken);
        }
        let child = self.started("join")?.clone();
        let Some(exit) = wait_ended(&child, timeout)? else {
            return Err(ProcessError::Timeout(timeout.unwrap_or_default()));
        };
        self.result_taken = true;
        let (outcome, lost) = child.take_outcome();
        match outcome {
            Some(Outcome::Returned(bytes, transits)) => {
                let value = codec::decode(&bytes);
                if value.is_err() {
                    // Part of it may be decoded: taking back what was is harmless.
                    Segment::take_back_transits(&transits);
                }
                Ok(value?)
            }
            Some(Outcome::Panicked { message, location }) => {
                Err(ChildError::Panicked { message, location }.into())
            }
            Some(Outcome::Failed(msg)) => Err(ChildError::Failed(msg).into()),
            None => Err(match (exit, lost) {
                (_, Some(why)) => ChildError::StatusLost(why),
                (RawExit::Signal(signal), None) => ChildError::Killed { signal },
                (RawExit::Code(code), None) => ChildError::Exited(code),
            }
            .into()),
        }
    }

    /// Whether the child is running (false before start and after it ends; reaps it).
    ///
    /// # Errors
    ///
    /// 'process object is closed'.
    pub fn is_alive(&self) -> Result<bool, ProcessError> {
        match &self.state {
            State::Created => Ok(false),
            State::Started(c) => Ok(ended(c).is_none()),
            State::Closed => Err(ProcessError::Closed),
        }
    }

    /// `None` while the child runs (or before start); then 0, the code it exited with, 1
    /// after a panic, or minus the signal number that killed it (-15 for SIGTERM).
    ///
    /// # Errors
    ///
    /// 'process object is closed'.
    pub fn exitcode(&self) -> Result<Option<i32>, ProcessError> {
        match &self.state {
            State::Created => Ok(None),
            State::Started(c) => Ok(ended(c).map(exitcode)),
            State::Closed => Err(ProcessError::Closed),
        }
    }

    /// Sends SIGTERM (nothing happens if the child already ended).
    ///
    /// # Errors
    ///
    /// 'can only terminate a started process'; 'process object is closed'.
    pub fn terminate(&self) -> Result<(), ProcessError> {
        Ok(self.started("terminate")?.signal(Sig::Term)?)
    }

    /// Sends SIGKILL (nothing happens if the child already ended).
    ///
    /// # Errors
    ///
    /// 'can only kill a started process'; 'process object is closed'.
    pub fn kill(&self) -> Result<(), ProcessError> {
        Ok(self.started("kill")?.signal(Sig::Kill)?)
    }

    /// A descriptor that becomes readable when the child ends (a pidfd), for
    /// [`wait`](crate::wait) or any poll loop.
    ///
    /// # Errors
    ///
    /// 'can only get the sentinel of a started process'; 'process object is closed'.
    pub fn sentinel(&self) -> Result<BorrowedFd<'_>, ProcessError> {
        Ok(self.started("get the sentinel of")?.pidfd())
    }

    /// Releases the process's resources. Every later call fails with 'process object is
    /// closed'.
    ///
    /// # Errors
    ///
    /// 'Cannot close a process while it is still running...' if it runs.
    pub fn close(&mut self) -> Result<(), ProcessError> {
        if let State::Started(c) = &self.state {
            if ended(c).is_none() {
                return Err(ProcessError::CloseRunning);
            }
        }
        self.state = State::Closed;
        Ok(())
    }
}

/// `poll_exit`, forgetting the child in the registry once it has ended.
fn ended(child: &ChildShared) -> Option<RawExit> {
    let exit = child.poll_exit();
    if exit.is_some() {
        registry::forget(child);
    }
    exit
}

/// `wait_exit`, forgetting the child in the registry once it has ended.
fn wait_ended(child: &ChildShared, timeout: Option<Duration>) -> std::io::Result<Option<RawExit>> {
    let exit = child.wait_exit(timeout)?;
    if exit.is_some() {
        registry::forget(child);
    }
    Ok(exit)
}

/// A running child of this process, as [`active_children`] lists it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Process, StartMethod};
///
/// fn nap(ms: u64) {
///     std::thread::sleep(Duration::from_millis(ms));
/// }
///
/// # multiproc::set_start_method(StartMethod::Fork).unwrap();
/// let mut p = Process::new(nap, 60_000).name("napper");
/// p.start()?;
/// let children = multiproc::active_children();
/// let child = children.iter().find(|c| c.name() == "napper").expect("listed");
/// assert_eq!(Some(child.pid()), p.pid()?);
/// assert!(child.is_alive());
/// child.kill()?;
/// assert_eq!(child.join_timeout(Duration::from_secs(10))?, Some(-9));
/// assert!(multiproc::active_children().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ChildProcess {
    shared: Arc<ChildShared>,
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name())
            .field("pid", &self.pid())
            .finish()
    }
}

impl ChildProcess {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.shared.pid.as_raw_nonzero().get() as u32
    }
    /// Whether it is daemonic.
    pub fn is_daemon(&self) -> bool {
        self.shared.daemon
    }
    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        ended(&self.shared).is_none()
    }
    /// Sends SIGTERM.
    ///
    /// # Errors
    ///
    /// An OS error from `pidfd_send_signal`.
    pub fn terminate(&self) -> std::io::Result<()> {
        self.shared.signal(Sig::Term)
    }
    /// Sends SIGKILL.
    ///
    /// # Errors
    ///
    /// An OS error from `pidfd_send_signal`.
    pub fn kill(&self) -> std::io::Result<()> {
        self.shared.signal(Sig::Kill)
    }
    /// Waits at most `timeout` for it to end; its exit code if it did.
    ///
    /// # Errors
    ///
    /// An OS error while waiting.
    pub fn join_timeout(&self, timeout: Duration) -> std::io::Result<Option<i32>> {
        Ok(wait_ended(&self.shared, Some(timeout))?.map(exitcode))
    }
}

/// The children of this process that are still running. Finished ones are reaped on the way
/// (a background thread reaps them anyway, so none stays a zombie).
///
/// # Examples
///
/// ```
/// assert!(multiproc::active_children().is_empty());
/// ```
pub fn active_children() -> Vec<ChildProcess> {
    registry::active()
        .into_iter()
        .map(|shared| ChildProcess { shared })
        .collect()
}
