//! The multiproc side of the pool workloads (see `pool.rs` for what each row does): a
//! `multiproc::Pool` with the fork start method, started before the timed part, closed and
//! joined after it.

use multiproc::{MapOptions, Pool};

use super::common::err;
use super::pool::{
    CPU_TASKS_PER_WORKER, MAP_ITEMS, PER, ROUND_TRIPS, WORKERS, all_cpus, full_check, items, noop,
    spin, spot_check,
};
use crate::workload::Reps;

/// A pool of `workers` workers started with the fork start method.
fn fork_pool(workers: usize) -> Result<Pool, String> {
    let ctx = multiproc::get_context("fork").map_err(err)?;
    Pool::builder()
        .processes(workers)
        .context(ctx)
        .build()
        .map_err(err)
}

/// Lets the pool's work finish and its workers end (`close` + `join`).
fn close_join(pool: Pool) -> Result<(), String> {
    pool.close();
    pool.join().map_err(err)
}

/// The result of a cell: the samples' error first, then the pool's.
fn samples_then(
    samples: Result<Vec<f64>, String>,
    closed: Result<(), String>,
) -> Result<Vec<f64>, String> {
    let samples = samples?;
    closed?;
    Ok(samples)
}

/// A no-op map of [`MAP_ITEMS`] items with `options`; reported per `per` items.
fn map(reps: &Reps, options: &MapOptions, per: usize) -> Result<Vec<f64>, String> {
    let n = reps.batch(MAP_ITEMS.0, MAP_ITEMS.1);
    let pool = fork_pool(WORKERS)?;
    let mut last = Vec::new();
    let samples = reps.time_per(n / per, || {
        let out = pool.map_with(noop, items(n), options).map_err(err)?;
        spot_check(&out, n)?;
        last = out;
        Ok(())
    });
    let samples = samples.and_then(|s| full_check(&last, n).map(|()| s));
    samples_then(samples, close_join(pool))
}

pub(super) fn map_one(reps: &Reps) -> Result<Vec<f64>, String> {
    map(reps, &MapOptions::new().chunksize(1), 1)
}

pub(super) fn map_default(reps: &Reps) -> Result<Vec<f64>, String> {
    map(reps, &MapOptions::new(), PER)
}

/// One task at a time, `submit(pool, i)` then its result, [`ROUND_TRIPS`] per repetition.
fn round_trips(
    reps: &Reps,
    submit: impl Fn(&Pool, u64) -> Result<multiproc::AsyncResult<u64>, multiproc::PoolError>,
) -> Result<Vec<f64>, String> {
    let pool = fork_pool(WORKERS)?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let mut i = 0u64;
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            let back = submit(&pool, i).map_err(err)?.get().map_err(err)?;
            if back != i {
                return Err(format!("sent {i}, got {back} back"));
            }
            i += 1;
        }
        Ok(())
    });
    samples_then(samples, close_join(pool))
}

pub(super) fn apply_round_trip(reps: &Reps) -> Result<Vec<f64>, String> {
    round_trips(reps, |pool, i| pool.apply_async(noop, i))
}

pub(super) fn submit_round_trip(reps: &Reps) -> Result<Vec<f64>, String> {
    round_trips(reps, |pool, i| pool.submit(noop, i))
}

/// The CPU-bound map over every CPU this process may use, default chunks.
pub(super) fn cpu_bound(reps: &Reps) -> Result<Vec<f64>, String> {
    let workers = all_cpus()?;
    let tasks = reps.batch(CPU_TASKS_PER_WORKER.0, CPU_TASKS_PER_WORKER.1) * workers;
    let pool = fork_pool(workers)?;
    let mut last = Vec::new();
    let samples = reps.time(|| {
        let out = pool.map(spin, items(tasks)).map_err(err)?;
        if out.len() != tasks {
            return Err(format!("{} results for {tasks} tasks", out.len()));
        }
        last = out;
        Ok(())
    });
    // Two of the results, computed here.
    let checked = samples.and_then(|s| {
        for seed in [0, tasks - 1] {
            if last[seed] != spin(seed as u64) {
                return Err(format!("task {seed} gave a wrong result"));
            }
        }
        Ok(s)
    });
    samples_then(checked, close_join(pool))
}
