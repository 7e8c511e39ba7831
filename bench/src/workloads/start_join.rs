//! Process start + join: a child that does nothing, started and joined, for each start
//! method (issue 2).
//!
//! - multiproc: `ctx.process(noop, ())`, `start()`, `join()`; the exit code is checked after
//!   the clock stops.
//! - CPython: `ctx.Process(target=noop)`, `start()`, `join()` (`python/start_join.py`).
//! - Floor: `fork` + `_exit` + `waitpid` for fork; `fork` + `execve` of this binary, which
//!   exits at the top of `main`, + `waitpid` for spawn and forkserver.
//!
//! Every cell warms up with one untimed start, so a forkserver is already running when the
//! clock starts; starting it is the row "forkserver first start (server startup)", timed as
//! the first start+join of a fresh process, once per process.

use super::common::{err, exited_zero};
use crate::floor;
use crate::workload::{Case, CellFn, Floor, LATENCY_CPUS, Python, Reps};

/// The child's target.
fn noop(_: ()) {}

/// Starts and joins a child that does nothing, once per repetition, with `method`, and
/// checks that it exited with 0 (as the CPython script does).
pub(super) fn start_join(method: &str, reps: &Reps) -> Result<Vec<f64>, String> {
    let ctx = multiproc::get_context(method).map_err(err)?;
    reps.time(|| {
        let mut p = ctx.process(noop, ());
        p.start().map_err(err)?;
        p.join().map_err(err)?;
        exited_zero(&p)
    })
}

fn lib_fork(reps: &Reps) -> Result<Vec<f64>, String> {
    start_join("fork", reps)
}

fn lib_spawn(reps: &Reps) -> Result<Vec<f64>, String> {
    start_join("spawn", reps)
}

fn lib_forkserver(reps: &Reps) -> Result<Vec<f64>, String> {
    start_join("forkserver", reps)
}

pub(super) fn floor_fork(reps: &Reps) -> Result<Vec<f64>, String> {
    reps.time(|| floor::fork_exit_wait().map_err(err))
}

pub(super) fn floor_exec(reps: &Reps) -> Result<Vec<f64>, String> {
    let exec = floor::ExecFloor::new().map_err(err)?;
    reps.time(|| exec.run().map_err(err))
}

/// The floor of the fork start method.
static FORK_FLOOR: Floor = Floor {
    name: "fork+_exit+waitpid",
    run: floor_fork,
};

/// The fork floor in a process with a second thread (the C library's multi-threaded `fork`).
fn floor_fork_threaded(reps: &Reps) -> Result<Vec<f64>, String> {
    floor::make_multi_threaded();
    floor_fork(reps)
}

fn floor_report(reps: &Reps) -> Result<Vec<f64>, String> {
    reps.time(|| floor::fork_report_wait().map_err(err))
}

fn floor_report_threaded(reps: &Reps) -> Result<Vec<f64>, String> {
    floor::make_multi_threaded();
    floor_report(reps)
}

/// The fork floor with the second thread every multiproc parent has (its reaper).
static FORK_FLOOR_THREADED: Floor = Floor {
    name: "fork+_exit+waitpid, 2 threads",
    run: floor_fork_threaded,
};

/// What any start+join with a result needs: a channel, a pidfd, one message.
static REPORT_FLOOR: Floor = Floor {
    name: "socketpair+fork+send+_exit, pidfd poll+waitid+recv",
    run: floor_report,
};

/// The same, with a second thread.
static REPORT_FLOOR_THREADED: Floor = Floor {
    name: "socketpair+fork+send+_exit, pidfd poll+waitid+recv, 2 threads",
    run: floor_report_threaded,
};

/// A row that measures the fork start method against another floor, without CPython (the
/// row "start+join fork" has it): what the gap to the raw floor is made of.
fn fork_against(name: &'static str, floor: &'static Floor) -> Case {
    Case {
        python: None,
        ..case(name, lib_fork, &["fork"], floor)
    }
}

/// The floor of the spawn and forkserver start methods: a child that runs the program.
static EXEC_FLOOR: Floor = Floor {
    name: "fork+execve+waitpid",
    run: floor_exec,
};

/// A row of this workload: CPython runs `start_join.py METHOD`.
fn case(
    name: &'static str,
    lib: CellFn,
    method: &'static [&'static str],
    floor: &'static Floor,
) -> Case {
    case_on(name, lib, method, floor, LATENCY_CPUS)
}

/// A start+join row on the given CPU sets (also used by `large_parent`).
pub(super) fn case_on(
    name: &'static str,
    lib: CellFn,
    python_args: &'static [&'static str],
    floor: &'static Floor,
    cpus: &'static [&'static [usize]],
) -> Case {
    Case {
        name,
        lib,
        python: Some(Python {
            script: "start_join.py",
            args: python_args,
        }),
        floor: Some(floor),
        cpus,
        fresh_process: false,
    }
}

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("start+join fork", lib_fork, &["fork"], &FORK_FLOOR),
        fork_against(
            "start+join fork, against a floor with a second thread",
            &FORK_FLOOR_THREADED,
        ),
        fork_against(
            "start+join fork, against a floor that reports",
            &REPORT_FLOOR,
        ),
        fork_against(
            "start+join fork, against a floor that reports, with a second thread",
            &REPORT_FLOOR_THREADED,
        ),
        case("start+join spawn", lib_spawn, &["spawn"], &EXEC_FLOOR),
        case(
            "start+join forkserver",
            lib_forkserver,
            &["forkserver"],
            &EXEC_FLOOR,
        ),
        Case {
            fresh_process: true,
            ..case(
                "forkserver first start (server startup)",
                lib_forkserver,
                &["forkserver"],
                &EXEC_FLOOR,
            )
        },
    ]
}
