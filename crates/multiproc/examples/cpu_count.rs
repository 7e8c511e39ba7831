//! S21 `cpu_count`: the number of CPUs this process may use. It honours the affinity mask
//! (run it under `taskset -c 0` and it says 1) and a cgroup CPU quota. (The scenario's second
//! half, a pool's default size, waits for the pool.)

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

fn main() {
    let n = multiproc::cpu_count();
    let mask = affinity_count();
    println!("cpu_count: {n}");
    println!("CPUs in the affinity mask: {mask}");
    // A cgroup quota below the mask would lower cpu_count further.
    println!("cpu_count equals the affinity mask: {}", n == mask);
}
