//! Pools (issue 6): the per-task overhead of a map of no-op tasks, the round trip of one
//! task at a time, and the speed-up of a CPU-bound map over all cores.
//!
//! - multiproc: `multiproc::Pool` of 2 workers started with the fork start method
//!   (`Pool::builder().processes(2).context(fork)`), tasks `fn(u64) -> u64`
//!   (`pool_lib.rs`);
//! - CPython: `multiprocessing.get_context("fork").Pool(2)`, and
//!   `concurrent.futures.ProcessPoolExecutor(2, mp_context=fork)` for the submit row
//!   (`python/pool.py`; fork is also Python 3.11's default on Linux);
//! - floor: [`floor::RawPool`], a minimal pool written with raw system calls: 2 forked
//!   workers, a pipe to each and one back, tasks and results as fixed-size binary messages
//!   (`chunk` native-endian `u64`s), each worker taking one task at a time (one `read`, one
//!   `write`), the parent keeping up to 64 tasks in flight per worker and reading the
//!   results in batches (`poll`, then one `read` of whatever is there), then refilling a
//!   worker with as many tasks as it finished in one `write`.
//!
//! The pool is started (and warmed up by the cell's untimed repetition) outside the timed
//! part; at the end it is closed and joined (the floor's workers must exit with 0). The
//! workers are not placed: on {0,1} the scheduler puts the parent and the two workers where
//! it likes (three processes on two CPUs).
//!
//! The rows:
//!
//! - **map, chunksize 1**: `map` of a no-op (`x -> x`) over the integers `0..100,000`, one
//!   item per task; reported per task. The results are checked (length and three values in
//!   every repetition, all of them after the last).
//! - **map, default chunks**: the same map with CPython's default chunk size,
//!   `ceil(100,000 / (4 * 2)) = 12,500` items per task (8 tasks); reported per 1,000 items
//!   (the table's microseconds then read as nanoseconds per item).
//! - **apply_async + get**: one task at a time, `apply_async(noop, i)` then `get()`; one
//!   round trip (a repetition is 1,000 in Rust, 200 in CPython). The floor writes 8 bytes to
//!   its first worker and reads 8 back.
//! - **submit + result**: the same with `submit` (the executor's API): multiproc's
//!   `Pool::submit(...).get()` against CPython's `ProcessPoolExecutor(2).submit(...).result()`.
//! - **CPU-bound map**: a map over all the CPUs the row may use (2 workers on {0,1}; only
//!   there: on one CPU there is nothing to gain), 20 tasks per worker, each a fixed loop of
//!   integer work ([`SPIN_ITERS`] steps of xorshift-multiply-add, about 9 ms here), default
//!   chunks. The floor is the same tasks run serially in one process, so `multiproc / floor`
//!   is 1 / speed-up (0.50x is a speed-up of 2). CPython's tasks are the same loop in
//!   Python, sized (`--iters`) to take about as long per task here, so `CPython /
//!   multiproc` compares the pools' wall time for tasks of about the same length, not the
//!   same work. The row is only as good as the machine is quiet: work from elsewhere on one
//!   CPU takes it from the pool, not from the serial floor.
//!
//! Targets (issue 6): chunksize 1 at least 10x faster than CPython and within 3x of the
//! raw pool; default chunks at least 5x faster than CPython; apply_async+get at least 10x
//! faster than CPython and within 2x of the raw pool's round trip; the CPU-bound map at
//! least 0.9 x the core count as fast as serial.

use std::hint::black_box;

use super::common::err;
use crate::floor::{self, RawPool};
use crate::workload::{Case, CellFn, Floor, LATENCY_CPUS, Python, Reps};

/// Workers of the map and round-trip rows (CPython's `Pool(2)`).
pub(super) const WORKERS: usize = 2;
/// Items per map repetition (per `--quick` repetition), on every side.
pub(super) const MAP_ITEMS: (usize, usize) = (100_000, 2_000);
/// Items a default-chunks figure stands for (that row says "per 1,000 items").
pub(super) const PER: usize = 1000;
/// Round trips per repetition (per `--quick` repetition).
pub(super) const ROUND_TRIPS: (usize, usize) = (1_000, 50);
/// Tasks per worker of the CPU-bound map (per `--quick` repetition).
pub(super) const CPU_TASKS_PER_WORKER: (usize, usize) = (20, 2);
/// Steps of a CPU-bound task's loop: about 9 ms on the machine of BENCHMARKS.md.
pub(super) const SPIN_ITERS: u64 = 5_500_000;

/// The no-op task.
pub(super) fn noop(x: u64) -> u64 {
    x
}

/// The CPU-bound task: [`SPIN_ITERS`] [`step`]s from `seed` (each depends on the last, so
/// nothing can skip or overlap them). CPython's `spin` is the same loop.
pub(super) fn spin(seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..SPIN_ITERS {
        x = step(x);
    }
    x
}

/// One step of [`spin`]: a xorshift, a multiply and an add (64-bit, wrapping). The
/// xorshift keeps the compiler from folding several steps into one (as it does with a
/// plain multiply-add).
fn step(x: u64) -> u64 {
    (x ^ (x >> 31))
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
}

/// CPython's default chunk size for `map`: `ceil(len / (4 * workers))`.
pub(super) fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(4 * workers).max(1)
}

/// The items of a map (`0..n`, as `u64`s).
pub(super) fn items(n: usize) -> std::ops::Range<u64> {
    0..n as u64
}

/// The check of a no-op map's results made in every repetition: the length and three
/// values.
pub(super) fn spot_check(out: &[u64], n: usize) -> Result<(), String> {
    let ok = out.len() == n && [0, n / 2, n - 1].iter().all(|&i| out[i] == i as u64);
    if ok {
        Ok(())
    } else {
        Err(format!("the map gave back {} wrong results", out.len()))
    }
}

/// The full check of a no-op map's results, made after the last repetition.
pub(super) fn full_check(out: &[u64], n: usize) -> Result<(), String> {
    let bad = out
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x != i as u64)
        .count();
    if out.len() != n || bad > 0 {
        return Err(format!(
            "{bad} of the map's {} results differ from its items",
            out.len()
        ));
    }
    Ok(())
}

/// How many workers the CPU-bound row uses: the CPUs this process may run on.
pub(super) fn all_cpus() -> Result<usize, String> {
    Ok((floor::allowed_cpus().map_err(err)?.count() as usize).max(1))
}

// ---------------------------------------------------------------------------------------------
// Floors

/// A no-op map of `n` items on a raw pool whose tasks are `chunk` items; reported per `per`
/// items.
fn floor_map(
    reps: &Reps,
    chunk: impl FnOnce(usize) -> usize,
    per: usize,
) -> Result<Vec<f64>, String> {
    let n = reps.batch(MAP_ITEMS.0, MAP_ITEMS.1);
    let chunk = chunk(n);
    if n % chunk != 0 {
        return Err(format!("{n} items do not make whole chunks of {chunk}"));
    }
    let mut pool = RawPool::start(WORKERS, chunk, noop).map_err(err)?;
    let input: Vec<u64> = items(n).collect();
    let mut out = vec![u64::MAX; n];
    let samples = reps.time_per(n / per, || {
        pool.map(&input, &mut out).map_err(err)?;
        spot_check(&out, n)
    });
    let samples = samples.and_then(|s| full_check(&out, n).map(|()| s));
    let finished = pool.finish().map_err(err);
    let samples = samples?;
    finished?;
    Ok(samples)
}

fn floor_map_one(reps: &Reps) -> Result<Vec<f64>, String> {
    floor_map(reps, |_| 1, 1)
}

fn floor_map_default(reps: &Reps) -> Result<Vec<f64>, String> {
    floor_map(reps, |n| default_chunksize(n, WORKERS), PER)
}

fn floor_round_trip(reps: &Reps) -> Result<Vec<f64>, String> {
    let mut pool = RawPool::start(WORKERS, 1, noop).map_err(err)?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let mut i = 0u64;
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            let back = pool.round_trip(i).map_err(err)?;
            if back != i {
                return Err(format!("sent {i}, got {back} back"));
            }
            i += 1;
        }
        Ok(())
    });
    let finished = pool.finish().map_err(err);
    let samples = samples?;
    finished?;
    Ok(samples)
}

/// The CPU-bound tasks run one after the other in this process.
fn floor_serial(reps: &Reps) -> Result<Vec<f64>, String> {
    let tasks = reps.batch(CPU_TASKS_PER_WORKER.0, CPU_TASKS_PER_WORKER.1) * all_cpus()?;
    reps.time(|| {
        let out: Vec<u64> = items(tasks).map(|s| spin(black_box(s))).collect();
        black_box(out);
        Ok(())
    })
}

static MAP_ONE_FLOOR: Floor = Floor {
    name: "raw pool: 2 forked workers, a pipe each way, 8-byte tasks, ≤ 64 in flight per \
           worker, poll + batched reads and refills",
    run: floor_map_one,
};

static MAP_DEFAULT_FLOOR: Floor = Floor {
    name: "raw pool: 2 forked workers, a pipe each way, a chunk of 12,500 u64 as one message",
    run: floor_map_default,
};

static ROUND_TRIP_FLOOR: Floor = Floor {
    name: "raw pool: 8 bytes down a pipe to a worker, 8 bytes back",
    run: floor_round_trip,
};

static SERIAL_FLOOR: Floor = Floor {
    name: "the same tasks serially in one process (multiproc / floor = 1 / speed-up)",
    run: floor_serial,
};

// ---------------------------------------------------------------------------------------------
// Rows

/// Both CPUs only: a speed-up over all cores means nothing on one.
const BOTH_CPUS: &[&[usize]] = &[&[0, 1]];

/// A row of this workload: CPython runs `pool.py ARGS`.
fn case(
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
            script: "pool.py",
            args: python_args,
        }),
        floor: Some(floor),
        cpus,
        fresh_process: false,
    }
}

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    use super::pool_lib as lib;
    // (the sizes and batches below are the constants above: `tests::python_args_agree`)
    vec![
        case(
            "pool map no-op, 100k items, chunksize 1 (per task)",
            lib::map_one,
            &[
                "map",
                "--start-method",
                "fork",
                "--chunksize",
                "1",
                "--items",
                "100000",
                "--quick-items",
                "2000",
            ],
            &MAP_ONE_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "pool map no-op, 100k items, default chunks (per 1,000 items)",
            lib::map_default,
            &[
                "map",
                "--start-method",
                "fork",
                "--items",
                "100000",
                "--quick-items",
                "2000",
                "--per",
                "1000",
            ],
            &MAP_DEFAULT_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "pool apply_async+get round trip (Pool)",
            lib::apply_round_trip,
            &[
                "apply",
                "--start-method",
                "fork",
                "--batch",
                "200",
                "--quick-batch",
                "20",
            ],
            &ROUND_TRIP_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "pool submit+result round trip (ProcessPoolExecutor)",
            lib::submit_round_trip,
            &[
                "submit",
                "--start-method",
                "fork",
                "--batch",
                "200",
                "--quick-batch",
                "20",
            ],
            &ROUND_TRIP_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "pool cpu-bound map, 20 tasks of ~10 ms per CPU (floor: serial)",
            lib::cpu_bound,
            &[
                "cpu",
                "--start-method",
                "fork",
                "--tasks-per-worker",
                "20",
                "--quick-tasks-per-worker",
                "2",
                "--iters",
                "65000",
            ],
            &SERIAL_FLOOR,
            BOTH_CPUS,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::common::python_arg as arg;
    use super::*;

    /// CPython's round trips per repetition: each takes hundreds of microseconds.
    const PY_ROUND_TRIPS: (usize, usize) = (200, 20);

    #[test]
    fn python_args_agree() {
        for case in cases() {
            let args = case.python.expect("a CPython side").args;
            match args[0] {
                "map" => {
                    assert_eq!(arg(args, "--items"), MAP_ITEMS.0, "{}", case.name);
                    assert_eq!(arg(args, "--quick-items"), MAP_ITEMS.1, "{}", case.name);
                    if args.contains(&"--per") {
                        assert_eq!(arg(args, "--per"), PER, "{}", case.name);
                    }
                }
                "apply" | "submit" => {
                    assert_eq!(arg(args, "--batch"), PY_ROUND_TRIPS.0, "{}", case.name);
                    assert_eq!(
                        arg(args, "--quick-batch"),
                        PY_ROUND_TRIPS.1,
                        "{}",
                        case.name
                    );
                }
                "cpu" => {
                    let per = arg(args, "--tasks-per-worker");
                    assert_eq!(per, CPU_TASKS_PER_WORKER.0, "{}", case.name);
                    let quick = arg(args, "--quick-tasks-per-worker");
                    assert_eq!(quick, CPU_TASKS_PER_WORKER.1, "{}", case.name);
                }
                other => panic!("unknown workload {other}"),
            }
        }
    }

    #[test]
    fn default_chunks_are_cpython_s() {
        assert_eq!(default_chunksize(100_000, 2), 12_500);
        assert_eq!(default_chunksize(2_000, 2), 250);
        assert_eq!(default_chunksize(40, 2), 5);
    }

    #[test]
    fn the_raw_pool_maps_and_round_trips() {
        fn double(x: u64) -> u64 {
            2 * x
        }
        for chunk in [1, 5] {
            let mut pool = RawPool::start(2, chunk, double).unwrap();
            for n in [0, 5, 1_000, 100_000] {
                let input: Vec<u64> = items(n).collect();
                let mut out = vec![0; n];
                pool.map(&input, &mut out).unwrap();
                assert!(out.iter().enumerate().all(|(i, &x)| x == 2 * i as u64));
            }
            if chunk == 1 {
                assert_eq!(pool.round_trip(21).unwrap(), 42);
            }
            pool.finish().unwrap();
        }
    }

    #[test]
    fn spin_is_python_s_loop() {
        // As Python computes them:
        // ((x ^ (x >> 31)) * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        assert_eq!(step(0), 1_442_695_040_888_963_407);
        assert_eq!(step(1), 7_806_831_264_735_756_412);
        assert_eq!(step(1 << 40), 5_579_118_915_573_111_631);
    }
}
