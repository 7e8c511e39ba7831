//! Shared memory and synchronization (issue 4): locks, a shared counter, atomic adds,
//! event and condition ping-pong, and filling a large shared array.
//!
//! - multiproc: `Lock`, `RawValue<i64>`, `Value<i64>`, `Event`, `Condition`, `Array<f64>`
//!   (`sync_lib.rs`), children started with the fork start method;
//! - CPython: `multiprocessing.get_context("fork")`'s `Lock`, `RawValue`, `Value`, `Event`,
//!   `Condition`, `Array` (`python/sync.py`);
//! - floor: a `MAP_SHARED` mapping of a `memfd` (pre-faulted), a futex mutex (compare-and-swap
//!   0 → 1 to lock, swap to 0 to unlock, `FUTEX_WAKE` only when contended), `fetch_add`,
//!   futex ping-pong, plain stores, and a forked child ([`floor::SyncChild`]).
//!
//! The rows whose operation takes nanoseconds (lock, counter, atomic add) report the time of
//! **1,000 operations** (a repetition is a batch of many thousands; the table prints
//! microseconds with two decimals, too coarse for one operation). Round trips report one
//! round trip; the array rows one fill of 1,000,000 `f64`.
//!
//! Two-process rows start their child once, outside the timed region; on {0,1} the child
//! goes to CPU 1 and the parent to CPU 0 ([`floor::place_child`]; the CPython script does the
//! same). For the counter and atomic-add rows a repetition is a batch: the parent tells the
//! child to go, both do `n` operations, the parent waits until the child is done; the time
//! is divided by `2n`. A batch is a million operations per process in Rust and 20,000 in
//! CPython (milliseconds either way), so the go/done signal (futex words for the floor, a
//! pipe for multiproc and CPython; one wake-up, tens of microseconds across CPUs) is a small
//! part of it and the two processes overlap for nearly all of it.

use std::time::Duration;

use super::common::{err, start_apart};
use crate::floor::{self, SharedMap, SyncChild, SyncJob};
use crate::workload::{Case, CellFn, Floor, LATENCY_CPUS, Python, Reps};

/// One CPU: single-process rows.
pub(super) const ONE_CPU: &[&[usize]] = &[&[0]];
/// Two CPUs only: the ping-pong floor that spins.
pub(super) const TWO_CPUS: &[&[usize]] = &[&[0, 1]];

/// Operations a reported figure stands for (the rows say "per 1,000").
pub(super) const PER: usize = 1000;
/// Uncontended lock acquire+release per repetition (per `--quick` repetition).
pub(super) const LOCK_OPS: (usize, usize) = (200_000, 2_000);
/// Locked increments per process per repetition (per `--quick` repetition). Long enough
/// (milliseconds) that the child's wake-up at the start of a batch (tens of microseconds
/// across CPUs) is a small part of it and the two processes overlap.
pub(super) const COUNTER_OPS: (usize, usize) = (1_000_000, 2_000);
/// Atomic adds per repetition, one process (per `--quick` repetition).
pub(super) const ADD_OPS: (usize, usize) = (200_000, 2_000);
/// Atomic adds per process per repetition, two processes (per `--quick` repetition).
pub(super) const ADD2_OPS: (usize, usize) = (1_000_000, 2_000);
/// Round trips per repetition (per `--quick` repetition).
pub(super) const ROUND_TRIPS: (usize, usize) = (1_000, 50);
/// Elements of the shared array.
pub(super) const ARRAY_LEN: usize = 1_000_000;
/// How long the spinning ping-pong floor spins before it sleeps.
pub(super) const SPIN: Duration = Duration::from_micros(50);

/// The number of operations a repetition reports as units of [`PER`].
pub(super) fn units(ops: usize) -> usize {
    ops.div_ceil(PER)
}

/// Starts a floor child, on another CPU than the parent's on a two-CPU row.
fn start_floor_child(job: SyncJob) -> Result<SyncChild, String> {
    start_apart(|| SyncChild::start(job).map_err(err))
}

fn floor_lock(reps: &Reps) -> Result<Vec<f64>, String> {
    let map = SharedMap::new(size_of::<floor::SyncWords>()).map_err(err)?;
    let w = map.words();
    let n = reps.batch(LOCK_OPS.0, LOCK_OPS.1);
    reps.time_per(units(n), || {
        for _ in 0..n {
            floor::mutex_lock(&w.mutex);
            floor::mutex_unlock(&w.mutex);
        }
        Ok(())
    })
}

fn floor_counter(reps: &Reps) -> Result<Vec<f64>, String> {
    let n = reps.batch(COUNTER_OPS.0, COUNTER_OPS.1);
    let mut child = start_floor_child(SyncJob::LockedIncrements(n as u64))?;
    let mut expected = 0u64;
    let samples = reps.time_per(units(2 * n), || {
        child.batch(|w| floor::locked_increments(w, n as u64));
        expected += 2 * n as u64;
        let got = child
            .words()
            .counter
            .load(std::sync::atomic::Ordering::Relaxed);
        if got != expected {
            return Err(format!("the counter reads {got}, not {expected}"));
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

fn floor_add_one(reps: &Reps) -> Result<Vec<f64>, String> {
    let map = SharedMap::new(size_of::<floor::SyncWords>()).map_err(err)?;
    let w = map.words();
    let n = reps.batch(ADD_OPS.0, ADD_OPS.1);
    reps.time_per(units(n), || {
        floor::fetch_adds(w, n as u64);
        Ok(())
    })
}

fn floor_add_two(reps: &Reps) -> Result<Vec<f64>, String> {
    let n = reps.batch(ADD2_OPS.0, ADD2_OPS.1);
    let mut child = start_floor_child(SyncJob::FetchAdds(n as u64))?;
    let mut expected = 0i64;
    let samples = reps.time_per(units(2 * n), || {
        child.batch(|w| floor::fetch_adds(w, n as u64));
        expected += 2 * n as i64;
        let got = child
            .words()
            .value
            .load(std::sync::atomic::Ordering::Relaxed);
        if got != expected {
            return Err(format!("the value reads {got}, not {expected}"));
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

fn floor_ping_pong(spin: Duration, reps: &Reps) -> Result<Vec<f64>, String> {
    let child = start_floor_child(SyncJob::Pong(spin))?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            child.ping(spin);
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

/// A pre-faulted mapping of [`ARRAY_LEN`] `f64`.
fn array_map() -> Result<SharedMap, String> {
    SharedMap::new(ARRAY_LEN * size_of::<f64>()).map_err(err)
}

/// Checks a filled array: element `i` holds `i`.
pub(super) fn check_fill(a: &[f64]) -> Result<(), String> {
    let last = ARRAY_LEN - 1;
    if a.len() < ARRAY_LEN
        || a[0] != 0.0
        || a[last] != last as f64
        || a[ARRAY_LEN / 2] != (ARRAY_LEN / 2) as f64
    {
        return Err("the array was not filled".to_owned());
    }
    Ok(())
}

fn floor_fill_loop(reps: &Reps) -> Result<Vec<f64>, String> {
    let mut map = array_map()?;
    let a = &mut map.f64s()[..ARRAY_LEN];
    let samples = reps.time(|| {
        for (i, x) in a.iter_mut().enumerate() {
            *x = i as f64;
        }
        std::hint::black_box(&mut *a);
        Ok(())
    })?;
    check_fill(a)?;
    Ok(samples)
}

fn floor_fill_copy(reps: &Reps) -> Result<Vec<f64>, String> {
    let mut map = array_map()?;
    let a = &mut map.f64s()[..ARRAY_LEN];
    let src: Vec<f64> = (0..ARRAY_LEN).map(|i| i as f64).collect();
    let samples = reps.time(|| {
        a.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut *a);
        Ok(())
    })?;
    check_fill(a)?;
    Ok(samples)
}

static LOCK_FLOOR: Floor = Floor {
    name: "futex mutex in MAP_SHARED: CAS 0→1, swap 0",
    run: floor_lock,
};

static COUNTER_FLOOR: Floor = Floor {
    name: "futex mutex + u64 in MAP_SHARED, FUTEX_WAIT/WAKE when contended",
    run: floor_counter,
};

static ADD_ONE_FLOOR: Floor = Floor {
    name: "AtomicI64::fetch_add in MAP_SHARED",
    run: floor_add_one,
};

static ADD_TWO_FLOOR: Floor = Floor {
    name: "AtomicI64::fetch_add in MAP_SHARED",
    run: floor_add_two,
};

static PING_PONG_FLOOR: Floor = Floor {
    name: "futex ping-pong on one shared word (wake only a sleeper)",
    run: |reps| floor_ping_pong(Duration::ZERO, reps),
};

static PING_PONG_SPIN_FLOOR: Floor = Floor {
    name: "futex ping-pong, spinning up to 50 µs before FUTEX_WAIT",
    run: |reps| floor_ping_pong(SPIN, reps),
};

static FILL_LOOP_FLOOR: Floor = Floor {
    name: "store loop into a pre-faulted MAP_SHARED mapping",
    run: floor_fill_loop,
};

static FILL_COPY_FLOOR: Floor = Floor {
    name: "memcpy into a pre-faulted MAP_SHARED mapping",
    run: floor_fill_copy,
};

/// A row of this workload: CPython runs `sync.py ARGS` (or nothing).
fn case(
    name: &'static str,
    lib: CellFn,
    python_args: Option<&'static [&'static str]>,
    floor: &'static Floor,
    cpus: &'static [&'static [usize]],
) -> Case {
    Case {
        name,
        lib,
        python: python_args.map(|args| Python {
            script: "sync.py",
            args,
        }),
        floor: Some(floor),
        cpus,
        fresh_process: false,
    }
}

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    use super::sync_lib as lib;
    // (the batches below are the constants above: `tests::python_args_agree`)
    vec![
        case(
            "sync lock acquire+release, uncontended (per 1,000)",
            lib::lock_uncontended,
            Some(&["lock", "--batch", "200000", "--quick-batch", "2000"]),
            &LOCK_FLOOR,
            ONE_CPU,
        ),
        case(
            "sync locked counter, 2 processes (per 1,000 increments)",
            lib::locked_counter,
            Some(&["counter", "--batch", "20000", "--quick-batch", "500"]),
            &COUNTER_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "sync Value fetch_add, 1 process (per 1,000)",
            lib::fetch_add_one,
            Some(&["add1", "--batch", "200000", "--quick-batch", "2000"]),
            &ADD_ONE_FLOOR,
            ONE_CPU,
        ),
        case(
            "sync Value fetch_add, 2 processes (per 1,000)",
            lib::fetch_add_two,
            Some(&["add2", "--batch", "20000", "--quick-batch", "500"]),
            &ADD_TWO_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "sync Event ping-pong round trip",
            lib::event_ping_pong,
            Some(&["event", "--batch", "1000", "--quick-batch", "50"]),
            &PING_PONG_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "sync Event ping-pong round trip (vs spinning floor)",
            lib::event_ping_pong,
            None,
            &PING_PONG_SPIN_FLOOR,
            TWO_CPUS,
        ),
        case(
            "sync Condition ping-pong round trip",
            lib::condition_ping_pong,
            Some(&["condition", "--batch", "1000", "--quick-batch", "50"]),
            &PING_PONG_FLOOR,
            LATENCY_CPUS,
        ),
        case(
            "sync Array<f64> 1M fill through lock()",
            lib::fill_through_lock,
            Some(&["array", "--size", "1000000"]),
            &FILL_LOOP_FLOOR,
            ONE_CPU,
        ),
        case(
            "sync Array<f64> 1M fill with write()",
            lib::fill_with_write,
            Some(&["array", "--size", "1000000"]),
            &FILL_COPY_FLOOR,
            ONE_CPU,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::common::python_arg as arg;
    use super::*;

    /// CPython's batches of the two-process counter and adds, smaller than ours: its
    /// operation takes about a microsecond, so 20,000 already make tens of milliseconds.
    const PY_COUNTER_OPS: (usize, usize) = (20_000, 500);
    const PY_ADD2_OPS: (usize, usize) = (20_000, 500);

    #[test]
    fn python_args_agree() {
        for case in cases() {
            let Some(py) = case.python else { continue };
            let args = py.args;
            let expected = match args[0] {
                "lock" => LOCK_OPS,
                "counter" => PY_COUNTER_OPS,
                "add1" => ADD_OPS,
                "add2" => PY_ADD2_OPS,
                "event" | "condition" => ROUND_TRIPS,
                "array" => {
                    assert_eq!(arg(args, "--size"), ARRAY_LEN);
                    continue;
                }
                other => panic!("unknown workload {other}"),
            };
            assert_eq!(arg(args, "--batch"), expected.0, "{}", case.name);
            assert_eq!(arg(args, "--quick-batch"), expected.1, "{}", case.name);
        }
    }
}
