//! `cpu_count()` honours the CPU affinity mask and a cgroup CPU quota, in a real child.

use std::path::PathBuf;

use multiproc::{Context, StartMethod};

/// Pins the calling process to its first allowed CPU, then counts.
fn count_pinned(_: ()) -> (usize, usize) {
    let before = multiproc::cpu_count();
    let allowed = rustix::thread::sched_getaffinity(None).expect("getaffinity");
    let first = (0..rustix::thread::CpuSet::MAX_CPU)
        .find(|&c| allowed.is_set(c))
        .expect("a cpu");
    let mut one = rustix::thread::CpuSet::new();
    one.set(first);
    rustix::thread::sched_setaffinity(None, &one).expect("setaffinity");
    (before, multiproc::cpu_count())
}

#[multiproc::test]
fn the_affinity_mask_is_honoured() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let mut p = Context::new(method).process(count_pinned, ());
        p.start().expect("start");
        let (before, pinned) = p.join_result().expect("result");
        assert!(before >= 1, "{method}");
        assert_eq!(pinned, 1, "{method}: pinned to one CPU");
    }
}

/// Moves the calling process into `cgroup`, then counts.
fn count_in_cgroup(cgroup: PathBuf) -> usize {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .expect("join the cgroup");
    multiproc::cpu_count()
}

/// The cgroup v1 `cpu` controller's directory, if this machine has one we may write to.
fn cpu_controller() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(f[1]))
    })
}

#[multiproc::test]
fn a_cgroup_quota_is_honoured() {
    let Some(root) = cpu_controller() else {
        eprintln!("skipped: no cgroup v1 cpu controller on this machine");
        return;
    };
    let dir = root.join(format!("multiproc-test-{}", std::process::id()));
    if std::fs::create_dir(&dir).is_err() {
        eprintln!("skipped: cannot create a cgroup under {}", root.display());
        return;
    }
    // Half a CPU: the count rounds up to 1, whatever the machine has.
    std::fs::write(dir.join("cpu.cfs_period_us"), "100000").expect("period");
    std::fs::write(dir.join("cpu.cfs_quota_us"), "50000").expect("quota");
    let mut p = Context::new(StartMethod::Fork).process(count_in_cgroup, dir.clone());
    p.start().expect("start");
    let counted = p.join_result();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(
        counted.expect("result"),
        1,
        "a child limited to half a CPU counts 1"
    );
}
