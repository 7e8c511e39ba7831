//! The three start methods, one file each, behind one dispatch: each exposes
//! `launch(&Job) -> Result<Launched, ProcessError>`.
//!
//! - [`fork`]: `fork(2)`; the child runs the target straight away with the parent's memory.
//! - [`spawn`]: `fork` + `exec` of the program itself; the child's start-up hook reads its
//!   instructions from an inherited socket.
//! - [`forkserver`]: a clean, single-threaded server process (started once by spawn) forks
//!   children on request from authenticated clients; the child then reads its instructions
//!   exactly as a spawned child does.

pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::bootstrap::{self, Bootstrap, HookMode, Task};
use crate::callable::{self, Callable};
use crate::codec;
use crate::context::{self, StartMethod};
use crate::error::ProcessError;
use crate::process::child::Launched;
use crate::process::tree::Me;
use crate::sys;

/// What to start: the function, its encoded arguments, who the child will be.
pub(crate) struct Job<'a> {
    pub(crate) callable: Callable,
    pub(crate) args: &'a [u8],
    pub(crate) me: Me,
    pub(crate) executable: Option<&'a Path>,
}

/// Starts a child with `method`.
pub(crate) fn launch(method: StartMethod, job: &Job<'_>) -> Result<Launched, ProcessError> {
    match method {
        StartMethod::Fork => fork::launch(job),
        StartMethod::Spawn => spawn::launch(job),
        StartMethod::Forkserver => forkserver::launch(job),
    }
}

/// The hook this program called, or the error that says how to add it.
pub(crate) fn require_hook() -> Result<HookMode, ProcessError> {
    match bootstrap::hook_mode() {
        None => Err(ProcessError::HookMissing(bootstrap::HOOK_MISSING)),
        Some(HookMode::OffMainThread) => Err(ProcessError::HookMissing(bootstrap::HOOK_OFF_MAIN)),
        Some(mode) => Ok(mode),
    }
}

/// The instructions for a spawned or forkserver child.
pub(crate) fn bootstrap_for(job: &Job<'_>, hook: HookMode) -> Result<Bootstrap, ProcessError> {
    let spec = job
        .callable
        .to_spec()
        .map_err(|e| ProcessError::Function(e.to_string()))?;
    Ok(Bootstrap {
        build_id: callable::build_identity().to_vec(),
        me: job.me.clone(),
        forkserver: forkserver::current_addr(),
        start_method: context::chosen_start_method(),
        hook,
        stdout_attached: false,
        task: Task::Run {
            callable: spec,
            args: job.args.to_vec(),
        },
    })
}

/// Instructions up to this size are written before the child exists: they fit in the
/// socket's buffer, so the write cannot block, and the child finds them at once.
const EARLY_BOOTSTRAP_MAX: usize = 64 * 1024;

/// Sends `boot` now if it is small, and gives it back otherwise (to send once the child
/// exists and can read).
pub(crate) fn send_bootstrap_early(
    channel: &UnixStream,
    boot: Bootstrap,
    stdout: Option<&OwnedFd>,
) -> Result<Option<Bootstrap>, ProcessError> {
    let bytes = codec::encode(&boot)?;
    if bytes.len() > EARLY_BOOTSTRAP_MAX {
        return Ok(Some(boot));
    }
    let fds: Vec<BorrowedFd<'_>> = stdout.iter().map(|fd| fd.as_fd()).collect();
    sys::send_frame(
        channel.as_fd(),
        &bytes,
        &fds,
        Some(bootstrap::HANDSHAKE_TIMEOUT),
    )
    .map_err(ProcessError::Launch)?;
    Ok(None)
}

/// Sends the instructions on the parent's end of a new child's channel. A child that died
/// before reading them is not an error here: its exit status tells.
pub(crate) fn send_bootstrap(
    channel: &UnixStream,
    boot: &Bootstrap,
    stdout: Option<&OwnedFd>,
) -> Result<(), ProcessError> {
    let bytes = codec::encode(boot)?;
    let fds: Vec<BorrowedFd<'_>> = stdout.iter().map(|fd| fd.as_fd()).collect();
    match sys::send_frame(
        channel.as_fd(),
        &bytes,
        &fds,
        Some(bootstrap::HANDSHAKE_TIMEOUT),
    ) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(ProcessError::Launch(e)),
    }
}
