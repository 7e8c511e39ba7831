//! The parent's bookkeeping stays bounded and exact: joined children leave nothing open
//! behind, and every exit status is the real one.

use multiproc::{Context, StartMethod};

fn nothing(_: ()) {}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Starts and joins `n` children with `method`; every one must exit 0.
fn start_join(method: StartMethod, n: usize) {
    let ctx = Context::new(method);
    for i in 0..n {
        let mut p = ctx.process(nothing, ());
        p.start()
            .unwrap_or_else(|e| panic!("{method}: start {i}: {e}"));
        p.join()
            .unwrap_or_else(|e| panic!("{method}: join {i}: {e}"));
        assert_eq!(
            p.exitcode().expect("exitcode"),
            Some(0),
            "{method}: child {i}"
        );
    }
}

#[multiproc::test]
fn joined_children_leave_no_descriptors_behind() {
    for method in [StartMethod::Fork, StartMethod::Forkserver] {
        // Warm up: the reaper, the forkserver and its connection open what they keep.
        start_join(method, 5);
        let before = open_descriptors();
        start_join(method, 2000);
        let after = open_descriptors();
        // Other tests of this binary may hold a few at this moment; 2000 leaked would show.
        assert!(
            after <= before + 16,
            "{method}: {before} descriptors open before, {after} after"
        );
    }
}

/// A forkserver child is reported by the server after it dies; the parent must never see it
/// dead without that report (it once, rarely, saw exit code 255).
#[multiproc::test]
fn forkserver_exit_codes_are_exact() {
    start_join(StartMethod::Forkserver, 1000);
}

fn forty_two(_: ()) -> u32 {
    42
}

/// A child that waits for the common start time, then starts a grandchild through the
/// forkserver: a new client of the server, connecting at the same moment as all the others.
fn start_a_grandchild_at(start_at: std::time::SystemTime) -> u32 {
    if let Ok(wait) = start_at.duration_since(std::time::SystemTime::now()) {
        // Makes the burst; nothing below depends on its timing.
        std::thread::sleep(wait);
    }
    let mut p = Context::new(StartMethod::Forkserver).process(forty_two, ());
    p.start().expect("grandchild start");
    p.join_result().expect("grandchild result")
}

/// Many new clients connecting to the forkserver at once (far more than may wait to
/// authenticate together) are all served.
#[multiproc::test]
fn a_burst_of_new_forkserver_clients_is_served() {
    let ctx = Context::new(StartMethod::Forkserver);
    let start_at = std::time::SystemTime::now() + std::time::Duration::from_millis(500);
    let procs: Vec<_> = (0..128)
        .map(|_| {
            let mut p = ctx.process(start_a_grandchild_at, start_at);
            p.start().expect("start");
            p
        })
        .collect();
    for (i, mut p) in procs.into_iter().enumerate() {
        let value = p.join_result_timeout(std::time::Duration::from_secs(60));
        assert_eq!(
            value.unwrap_or_else(|e| panic!("child {i}: {e}")),
            42,
            "child {i}"
        );
    }
}
