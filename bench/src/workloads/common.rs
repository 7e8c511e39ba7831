//! What several workloads share: errors as strings, a child started on another CPU than its
//! parent's, and a multiproc child ended and checked.

use std::time::Duration;

use multiproc::Process;
use serde::{Serialize, de::DeserializeOwned};

use crate::floor;

/// An error as a cell reports it.
pub(super) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs `start`, which starts a cell's child, so that on a two-CPU row the child sits on
/// another CPU than this thread ([`floor::place_child`]).
pub(super) fn start_apart<T>(start: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let placement = floor::place_child().map_err(err)?;
    let child = start()?;
    placement.place_parent().map_err(err)?;
    Ok(child)
}

/// Starts `target(args)` with the fork start method, apart from this thread
/// ([`start_apart`]).
pub(super) fn start_fork<A>(target: fn(A), args: A) -> Result<Process<()>, String>
where
    A: Serialize + DeserializeOwned,
{
    let ctx = multiproc::get_context("fork").map_err(err)?;
    start_apart(|| {
        let mut p = ctx.process(target, args);
        p.start().map_err(err)?;
        Ok(p)
    })
}

/// Checks that an ended child exited with 0.
pub(super) fn exited_zero(p: &Process<()>) -> Result<(), String> {
    match p.exitcode() {
        Ok(Some(0)) => Ok(()),
        other => Err(format!("the child did not exit with 0: {other:?}")),
    }
}

/// Waits for a child that was told to end (killing it if it has not ended within 10 s,
/// then reporting `hung`) and checks that it exited with 0.
pub(super) fn finish(p: Process<()>, hung: &str) -> Result<(), String> {
    if !p.join_timeout(Duration::from_secs(10)).map_err(err)? {
        let _ = p.kill();
        p.join().map_err(err)?;
        return Err(hung.to_owned());
    }
    exited_zero(&p)
}

/// The result of a cell whose child was ended after its samples were taken: the samples'
/// error first, then the child's.
pub(super) fn samples_then(
    samples: Result<Vec<f64>, String>,
    finished: Result<(), String>,
) -> Result<Vec<f64>, String> {
    let samples = samples?;
    finished?;
    Ok(samples)
}

/// The value after `flag` in a CPython argument list (for the tests that check a row's
/// arguments agree with its constants).
#[cfg(test)]
pub(super) fn python_arg(args: &[&str], flag: &str) -> usize {
    let at = args.iter().position(|a| *a == flag).expect(flag);
    args[at + 1].parse().expect("a number")
}
