//! S32 `executor_shared_array` (a CPython trap): the seed squares the numbers 0..=5 in a
//! `ProcessPoolExecutor(max_workers=3)`, each task writing `number²` into a synchronized
//! `Array` and adding it to a `Value` total. CPython refuses: `executor.submit(parallel_func,
//! num, squared_nums, squared_nums_total)` fails with 'RuntimeError: SynchronizedArray objects
//! should only be shared between processes through inheritance', and the seed falls back to
//! one `Process` per number, losing the bounded number of workers.
//!
//! Here the executor is a [`Pool`] of three workers and its [`Pool::submit`]: the `Array` and
//! the `Value` (each with its lock) travel as part of the task's argument like any other
//! value, the tasks write into them, and the parent reads the results back:
//! `[0, 1, 4, 9, 16, 25]`, total 55. Each task returns its worker's pid, to show that the six
//! ran in at most three processes. After `shutdown`, `submit` fails with the executor's
//! message.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default).

use std::collections::BTreeSet;

use multiproc::{Array, Pool, Value};

/// The seed's `MAX_WORKERS`.
const MAX_WORKERS: usize = 3;

/// The seed's `parallel_func`; returns the pid of the worker that ran it.
fn parallel_func((number, squared_nums, squared_nums_total): (i32, Array<i32>, Value<i32>)) -> u32 {
    let squared_num = number * number;
    squared_nums
        .set(number as usize, squared_num)
        .expect("the array has a place for every number");
    // The seed's `+=` reads, adds and writes without the lock; this adds in one step.
    squared_nums_total.fetch_add(squared_num);
    std::process::id()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(method) = std::env::args().nth(1) {
        multiproc::set_start_method(method.parse()?)?;
    }
    let nums = [0, 1, 2, 3, 4, 5];
    let squared_nums = Array::<i32>::zeroed(nums.len())?;
    let squared_nums_total = Value::new(0i32)?;

    let executor = Pool::new(MAX_WORKERS)?;
    let futures = nums
        .iter()
        .map(|&num| {
            executor.submit(
                parallel_func,
                (num, squared_nums.clone(), squared_nums_total.clone()),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut pids = BTreeSet::new();
    for future in &futures {
        pids.insert(future.get()?);
    }
    // Leaving the seed's `with ProcessPoolExecutor(...)` block: shutdown(wait=True).
    executor.shutdown(true, false)?;

    println!("squared_nums: {:?}", squared_nums.to_vec()?);
    println!("squared_nums_total: {}", squared_nums_total.get());
    println!(
        "{} tasks ran in {} worker processes (max_workers = {MAX_WORKERS})",
        futures.len(),
        pids.len()
    );
    match executor.submit(parallel_func, (0, squared_nums, squared_nums_total)) {
        Err(e) => println!("submit after shutdown: {e}"),
        Ok(_) => println!("submit after shutdown: accepted?!"),
    }
    Ok(())
}
