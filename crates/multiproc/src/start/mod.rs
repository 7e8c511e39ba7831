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

use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use crate::bootstrap::{self, Bootstrap, HookMode, Payload, Task};
use crate::callable::{self, Callable};
use crate::codec;
use crate::context::{self, StartMethod};
use crate::error::ProcessError;
use crate::process::child::{ChildShared, Launched};
use crate::process::registry;
use crate::process::tree::Me;
use crate::sys;

/// What to start: the function, its encoded arguments, who the child will be.
pub(crate) struct Job<'a> {
    pub(crate) callable: Callable,
    pub(crate) args: &'a [u8],
    /// Descriptors the arguments hold, in index order.
    pub(crate) arg_fds: &'a [OwnedFd],
    pub(crate) me: Me,
    pub(crate) executable: Option<&'a Path>,
}

/// Starts a child with `method` and registers it.
pub(crate) fn launch(method: StartMethod, job: &Job<'_>) -> Result<Arc<ChildShared>, ProcessError> {
    match method {
        // Registers the child itself, inside its fork window.
        StartMethod::Fork => fork::launch(job),
        StartMethod::Spawn | StartMethod::Forkserver => {
            let _window = registry::launch_window();
            let launched = match method {
                StartMethod::Spawn => spawn::launch(job)?,
                _ => forkserver::launch(job)?,
            };
            Ok(register(launched, job))
        }
    }
}

/// Records a child that just started.
pub(crate) fn register(launched: Launched, job: &Job<'_>) -> Arc<ChildShared> {
    let child = Arc::new(ChildShared::new(
        launched,
        job.me.name.clone(),
        job.me.daemon,
    ));
    registry::register(&child);
    child
}

/// The hook this program called, or the error that says how to add it.
pub(crate) fn require_hook() -> Result<HookMode, ProcessError> {
    match bootstrap::hook_mode() {
        None => Err(ProcessError::HookMissing(bootstrap::HOOK_MISSING)),
        Some(HookMode::OffMainThread) => Err(ProcessError::HookMissing(bootstrap::HOOK_OFF_MAIN)),
        Some(mode) => Ok(mode),
    }
}

/// A child's instructions and the descriptors that ride with them (standard input, standard
/// output for a test child, then the memfd of large arguments, then the arguments' own).
pub(crate) struct Instructions {
    pub(crate) boot: Bootstrap,
    pub(crate) fds: Vec<OwnedFd>,
}

/// The instructions for a spawned or forkserver child.
pub(crate) fn instructions_for(
    job: &Job<'_>,
    hook: HookMode,
) -> Result<Instructions, ProcessError> {
    let spec = job
        .callable
        .to_spec()
        .map_err(|e| ProcessError::Function(e.to_string()))?;
    let mut fds = Vec::new();
    let args = if job.args.len() <= bootstrap::INLINE_PAYLOAD_MAX {
        Payload::Inline(job.args.to_vec())
    } else {
        fds.push(sys::memfd_with(job.args).map_err(ProcessError::Launch)?);
        Payload::Memfd(job.args.len() as u64)
    };
    for fd in job.arg_fds {
        fds.push(fd.try_clone().map_err(ProcessError::Launch)?);
    }
    let boot = Bootstrap {
        build_id: callable::build_identity().to_vec(),
        me: job.me.clone(),
        forkserver: forkserver::current_addr(),
        start_method: context::chosen_start_method(),
        hook,
        stdin_attached: false,
        stdout_attached: false,
        task: Task::Run {
            callable: spec,
            args,
            arg_fds: job.arg_fds.len() as u32,
        },
    };
    Ok(Instructions { boot, fds })
}

/// Sends the instructions on the parent's end of a new child's channel, waiting at most
/// the handshake timeout for room. A child that died before reading them is not an error
/// here: its exit status tells.
pub(crate) fn send_instructions(
    channel: &UnixStream,
    ins: &Instructions,
) -> Result<(), ProcessError> {
    send_encoded(channel, &codec::encode(&ins.boot)?, ins)
}

fn send_encoded(
    channel: &UnixStream,
    bytes: &[u8],
    ins: &Instructions,
) -> Result<(), ProcessError> {
    let fds: Vec<BorrowedFd<'_>> = ins.fds.iter().map(|fd| fd.as_fd()).collect();
    let timeout = Some(bootstrap::HANDSHAKE_TIMEOUT);
    match sys::send_frame(channel.as_fd(), bytes, &fds, timeout) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Ok(()),
        Err(e) => Err(ProcessError::Launch(e)),
    }
}

/// Instructions up to this size are written before the child exists: they fit in the
/// socket's buffer, so the write cannot block.
const EARLY_INSTRUCTIONS_MAX: usize = 64 * 1024;

/// Sends the instructions now if they fit in the socket's buffer; false if they must wait
/// until the child exists.
pub(crate) fn send_instructions_if_small(
    channel: &UnixStream,
    ins: &Instructions,
) -> Result<bool, ProcessError> {
    let bytes = codec::encode(&ins.boot)?;
    if bytes.len() > EARLY_INSTRUCTIONS_MAX {
        return Ok(false);
    }
    send_encoded(channel, &bytes, ins)?;
    Ok(true)
}
