//! Process start + join from a parent with 512 MiB resident: what a start costs a program
//! that holds a lot of memory.
//!
//! The same jobs as `start_join`, after the cell's process has filled 512 MiB (so every page
//! is resident). `fork` copies the parent's page tables, so its cost grows with the parent;
//! `spawn` goes through `posix_spawn` (no copy) and `forkserver` forks the small server. The
//! floor is `fork` + `execve`, which pays the copy too. Run on both CPUs only.

use crate::floor;
use crate::workload::{Case, CellFn, Floor, Python, Reps};

/// How much the parent holds.
const PARENT_MIB: usize = 512;

/// Fills the parent's memory; kept alive for the whole cell.
fn fill() -> Vec<u8> {
    vec![1u8; PARENT_MIB << 20]
}

fn noop(_: ()) {}

fn start_join(method: &str, reps: &Reps) -> Result<Vec<f64>, String> {
    let big = fill();
    let ctx = multiproc::get_context(method).map_err(|e| e.to_string())?;
    let samples = reps.time(|| {
        let mut p = ctx.process(noop, ());
        p.start().map_err(|e| e.to_string())?;
        p.join().map_err(|e| e.to_string())?;
        match p.exitcode() {
            Ok(Some(0)) => Ok(()),
            other => Err(format!("the child did not exit with 0: {other:?}")),
        }
    });
    std::hint::black_box(&big);
    samples
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

fn floor_fork(reps: &Reps) -> Result<Vec<f64>, String> {
    let big = fill();
    let samples = reps.time(|| floor::fork_exit_wait().map_err(|e| e.to_string()));
    std::hint::black_box(&big);
    samples
}

fn floor_exec(reps: &Reps) -> Result<Vec<f64>, String> {
    let big = fill();
    let exec = floor::ExecFloor::new().map_err(|e| e.to_string())?;
    let samples = reps.time(|| exec.run().map_err(|e| e.to_string()));
    std::hint::black_box(&big);
    samples
}

static FORK_FLOOR: Floor = Floor {
    name: "fork+_exit+waitpid (512 MiB parent)",
    run: floor_fork,
};

static EXEC_FLOOR: Floor = Floor {
    name: "fork+execve+waitpid (512 MiB parent)",
    run: floor_exec,
};

fn case(
    name: &'static str,
    lib: CellFn,
    method: &'static [&'static str],
    floor: &'static Floor,
) -> Case {
    Case {
        name,
        lib,
        python: Some(Python {
            script: "start_join.py",
            args: method,
        }),
        floor: Some(floor),
        cpus: &[&[0, 1]],
        fresh_process: false,
    }
}

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "start+join fork, 512 MiB parent",
            lib_fork,
            &["fork", "--parent-mib", "512"],
            &FORK_FLOOR,
        ),
        case(
            "start+join spawn, 512 MiB parent",
            lib_spawn,
            &["spawn", "--parent-mib", "512"],
            &EXEC_FLOOR,
        ),
        case(
            "start+join forkserver, 512 MiB parent",
            lib_forkserver,
            &["forkserver", "--parent-mib", "512"],
            &EXEC_FLOOR,
        ),
    ]
}
