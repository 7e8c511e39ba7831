//! The `spawn` start method: `exec` the program again; the child's start-up hook reads its
//! instructions from a socket it inherits (named by `MULTIPROC_BOOTSTRAP`).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::bootstrap::{self, HookMode};
use crate::error::ProcessError;
use crate::process::child::{Launched, Reaper};
use crate::start::{self, Instructions, Job};
use crate::sys::{self, SpawnCommand};

pub(crate) fn launch(job: &Job<'_>) -> Result<Launched, ProcessError> {
    let hook = start::require_hook()?;
    let ins = start::instructions_for(job, hook)?;
    spawn_with(job.executable.unwrap_or(sys::self_exe()), ins)
}

/// The libtest arguments that make a test binary run one test and print nothing of its own
/// (`--include-ignored`: the entry may be an `#[ignore]`d test run with `--ignored`).
fn test_args(entry: &str) -> Vec<OsString> {
    [
        "--exact",
        entry,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// Starts `exe` as a child that will carry out `ins` (also used to start the forkserver).
///
/// The instructions are written once `exec` has succeeded: the child is then still starting
/// its runtime, so they are there before it looks, and a large write cannot block on a
/// child that does not exist.
pub(crate) fn spawn_with(exe: &Path, mut ins: Instructions) -> Result<Launched, ProcessError> {
    let (parent_end, child_end) = sys::channel_pair().map_err(ProcessError::Launch)?;
    let mut cmd = SpawnCommand::new(exe);
    match &ins.boot.hook {
        HookMode::Main { args, arg0 } => {
            if let Some(a0) = arg0 {
                cmd.arg0(a0);
            }
            cmd.args(args);
        }
        HookMode::Test { entry } => {
            // libtest prints a banner before running the test: send it to /dev/null and hand
            // the real standard output over with the instructions.
            cmd.args(test_args(entry)).null_stdout();
            if let Some(stdout) = bootstrap::stdout_for_child() {
                ins.fds.insert(0, stdout);
                ins.boot.stdout_attached = true;
            }
        }
        HookMode::OffMainThread => {
            return Err(ProcessError::HookMissing(bootstrap::HOOK_OFF_MAIN));
        }
    }
    // The channel goes in as the child's standard input; the parent's own standard input
    // rides along with the instructions, and the child puts it back.
    if let Some(stdin) = sys::dup_stdin() {
        ins.fds.insert(0, stdin);
        ins.boot.stdin_attached = true;
    }
    cmd.env(bootstrap::ENV_BOOTSTRAP, bootstrap::CHANNEL_ON_STDIN);
    cmd.channel_as_stdin(OwnedFd::from(child_end));
    let pid = cmd.spawn().map_err(ProcessError::Launch)?;
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // Unwatchable: end it now rather than leave it running unknown, then a zombie.
            sys::kill_and_reap(pid);
            return Err(ProcessError::Launch(e));
        }
    };
    parent_end
        .set_nonblocking(true)
        .map_err(ProcessError::Launch)?;
    if let Err(e) = start::send_instructions(&parent_end, &ins) {
        // A child that will never get its instructions: end it rather than leave a zombie.
        sys::kill_and_reap(pid);
        return Err(e);
    }
    Ok(Launched {
        pid,
        pidfd,
        channel: parent_end,
        reaper: Reaper::Us,
    })
}
