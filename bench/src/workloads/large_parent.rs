//! Process start + join from a parent with 512 MiB resident: what a start costs a program
//! that holds a lot of memory.
//!
//! The jobs of `start_join`, run after the cell's process has filled 512 MiB (so every page
//! is resident). `fork` copies the parent's page tables, so its cost grows with the parent;
//! `spawn` goes through `posix_spawn` (no copy) and `forkserver` forks the small server. The
//! floor is `fork` + `execve`, which pays the copy too. Run on both CPUs only.

use super::start_join::{case_on, floor_exec, floor_fork, start_join};
use crate::workload::{Case, Floor, Reps};

/// How much the parent holds.
const PARENT_MIB: usize = 512;

/// Runs a cell's job while this process holds [`PARENT_MIB`] of written memory.
fn with_large_parent(
    job: impl FnOnce(&Reps) -> Result<Vec<f64>, String>,
    reps: &Reps,
) -> Result<Vec<f64>, String> {
    let big = vec![1u8; PARENT_MIB << 20];
    let samples = job(reps);
    std::hint::black_box(&big);
    samples
}

fn lib_fork(reps: &Reps) -> Result<Vec<f64>, String> {
    with_large_parent(|r| start_join("fork", r), reps)
}

fn lib_spawn(reps: &Reps) -> Result<Vec<f64>, String> {
    with_large_parent(|r| start_join("spawn", r), reps)
}

fn lib_forkserver(reps: &Reps) -> Result<Vec<f64>, String> {
    with_large_parent(|r| start_join("forkserver", r), reps)
}

static FORK_FLOOR: Floor = Floor {
    name: "fork+_exit+waitpid (512 MiB parent)",
    run: |reps| with_large_parent(floor_fork, reps),
};

static EXEC_FLOOR: Floor = Floor {
    name: "fork+execve+waitpid (512 MiB parent)",
    run: |reps| with_large_parent(floor_exec, reps),
};

/// Both CPUs only: the copy dominates, so one pinning says enough.
const BOTH_CPUS: &[&[usize]] = &[&[0, 1]];

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case_on(
            "start+join fork, 512 MiB parent",
            lib_fork,
            &["fork", "--parent-mib", "512"],
            &FORK_FLOOR,
            BOTH_CPUS,
        ),
        case_on(
            "start+join spawn, 512 MiB parent",
            lib_spawn,
            &["spawn", "--parent-mib", "512"],
            &EXEC_FLOOR,
            BOTH_CPUS,
        ),
        case_on(
            "start+join forkserver, 512 MiB parent",
            lib_forkserver,
            &["forkserver", "--parent-mib", "512"],
            &EXEC_FLOOR,
            BOTH_CPUS,
        ),
    ]
}
