//! S03 `pool_map`: `Pool(3).map(f, 1..=10)`, where `f` sleeps one second, then prints the
//! seconds passed since the program started, its value `x * x` and its process id. Three
//! workers run the ten tasks three at a time, so the lines come in batches of three about a
//! second apart, from three pids; `map` waits for them all and gives the results in input
//! order, `[1, 4, 9, 16, 25, 36, 49, 64, 81, 100]`, after about 4 s in all.
//!
//! The seed keeps its start time in a module global. Under `spawn` and `forkserver` a worker
//! does not share the parent's globals (S23), so the pool's initializer hands every worker the
//! parent's start time; the tasks read it from a process-global. Each line also says when its
//! task started, which shows that never more than three ran at once.
//!
//! This is the README's main job. Run with a start method as the argument (`fork`, `spawn`,
//! `forkserver`; without one, the library's default).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use multiproc::Pool;

/// The parent's start time, in every worker (set by the pool's initializer).
static START: OnceLock<SystemTime> = OnceLock::new();

/// The pool's initializer: keeps the parent's start time.
fn set_start(start: SystemTime) {
    START
        .set(start)
        .expect("the initializer runs once per worker");
}

/// Seconds since the parent's start.
fn seconds_passed() -> f64 {
    let start = *START.get().expect("the initializer has run");
    SystemTime::now()
        .duration_since(start)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The seed's `f`: sleeps a second, prints the time passed, the value and the pid.
fn f(x: u64) -> u64 {
    let started = seconds_passed();
    std::thread::sleep(Duration::from_secs(1));
    let value = x * x;
    println!(
        "{:.2}s passed...\t{value}\t(pid:{}, started at {started:.2}s)",
        seconds_passed(),
        std::process::id()
    );
    value
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(method) = std::env::args().nth(1) {
        multiproc::set_start_method(method.parse()?)?;
    }
    let start = SystemTime::now();
    let pool = Pool::builder()
        .processes(3)
        .initializer(set_start, start)
        .build()?;
    let results = pool.map(f, 1..=10)?;
    println!("{results:?}");
    println!(
        "{} tasks on {} workers in {:.2}s",
        results.len(),
        pool.processes(),
        start.elapsed()?.as_secs_f64()
    );
    Ok(())
}
