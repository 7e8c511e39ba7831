//! S21 `cpu_count`: the number of CPUs this process may use, and a pool's default size, which
//! equals it (the seed: "by default it is the number of CPUs"). It honours the affinity mask
//! (run it under `taskset -c 0` and it says 1, for the pool too) and a cgroup CPU quota.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default): the pool's workers use it.

use multiproc::Pool;

/// The CPUs in this process's affinity mask, from `Cpus_allowed_list` (e.g. `0-3,8`).
fn affinity_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line")
        .trim();
    list.split(',')
        .map(|range| match range.split_once('-') {
            Some((lo, hi)) => hi.parse::<usize>().unwrap() - lo.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(method) = std::env::args().nth(1) {
        multiproc::set_start_method(method.parse()?)?;
    }
    let n = multiproc::cpu_count();
    let mask = affinity_count();
    println!("cpu_count: {n}");
    println!("CPUs in the affinity mask: {mask}");
    // A cgroup quota below the mask would lower cpu_count further.
    println!("cpu_count equals the affinity mask: {}", n == mask);

    // CPython's `Pool()`: as many workers as cpu_count().
    let pool = Pool::builder().build()?;
    let size = pool.processes();
    println!("Pool::builder().build()?.processes(): {size}");
    println!("live workers: {}", pool.pids().len());
    println!("a pool's default size equals cpu_count: {}", size == n);
    Ok(())
}
