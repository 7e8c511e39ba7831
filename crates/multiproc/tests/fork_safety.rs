//! Forking a parent that has other threads: the child must not wait on anything those
//! threads held at the fork, and nothing of a concurrent launch may leak into it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use multiproc::{Context, StartMethod};

const LONG: Duration = Duration::from_secs(20);

fn nothing(_: ()) {}

/// Another thread is inside a (slow) panic hook again and again while this one forks: a fork
/// child that took std's hook lock would wait forever.
#[multiproc::test]
fn fork_children_do_not_wait_on_a_panicking_thread() {
    std::panic::set_hook(Box::new(|_| std::thread::sleep(Duration::from_millis(2))));
    let stop = Arc::new(AtomicBool::new(false));
    let panicker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::panic::catch_unwind(|| panic!("caught"));
            }
        })
    };
    let ctx = Context::new(StartMethod::Fork);
    for i in 0..100 {
        let mut p = ctx.process(nothing, ());
        p.start().expect("start");
        let ended = p.join_timeout(LONG).expect("join");
        if !ended {
            let _ = p.kill();
        }
        assert!(ended, "fork child {i} hung");
        assert_eq!(p.exitcode().expect("exitcode"), Some(0), "fork child {i}");
    }
    stop.store(true, Ordering::Relaxed);
    panicker.join().expect("panicker");
    let _ = std::panic::take_hook();
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(60));
}

/// Runs in a child: one thread starts daemonic forkserver children while another starts
/// non-daemonic fork children, then it writes their pids to `dir` and waits to be killed.
fn launch_both_ways(dir: PathBuf) {
    let daemons = std::thread::spawn(|| {
        let ctx = Context::new(StartMethod::Forkserver);
        (0..30)
            .map(|_| {
                let mut p = ctx.process(sleep_long, ()).daemon(true);
                p.start().expect("start daemon");
                p.pid().expect("pid").expect("started")
            })
            .collect::<Vec<u32>>()
    });
    let ctx = Context::new(StartMethod::Fork);
    let forked: Vec<u32> = (0..30)
        .map(|_| {
            let mut p = ctx.process(sleep_long, ());
            p.start().expect("start fork child");
            p.pid().expect("pid").expect("started")
        })
        .collect();
    let daemons = daemons.join().expect("daemon thread");
    let list = |pids: &[u32]| {
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    std::fs::write(dir.join("forked"), list(&forked)).expect("write");
    std::fs::write(dir.join("daemons.tmp"), list(&daemons)).expect("write");
    std::fs::rename(dir.join("daemons.tmp"), dir.join("daemons")).expect("rename");
    std::thread::sleep(Duration::from_secs(60));
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .expect("pids")
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

/// The daemons must end when their parent is killed, although fork children made at the
/// same time by another thread are still running (and must not hold their channels).
#[multiproc::test]
fn daemons_die_with_a_killed_parent_despite_concurrent_forks() {
    let dir = std::env::temp_dir().join(format!("multiproc-fork-safety-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut parent = Context::new(StartMethod::Fork).process(launch_both_ways, dir.clone());
    parent.start().expect("start");
    let deadline = Instant::now() + LONG;
    while !dir.join("daemons").exists() {
        assert!(
            Instant::now() < deadline,
            "the children were not started in time"
        );
        assert!(
            parent.is_alive().expect("is_alive"),
            "the parent died early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let daemons = read_pids(&dir.join("daemons"));
    let forked = read_pids(&dir.join("forked"));
    parent.kill().expect("kill");
    parent.join_timeout(LONG).expect("join");
    let deadline = Instant::now() + Duration::from_secs(5);
    let survivors = loop {
        let survivors: Vec<u32> = daemons.iter().copied().filter(|p| alive(*p)).collect();
        if survivors.is_empty() || Instant::now() > deadline {
            break survivors;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let forked_alive = forked.iter().filter(|p| alive(**p)).count();
    for pid in &forked {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        forked_alive,
        forked.len(),
        "the fork children should still have been running"
    );
    assert!(
        survivors.is_empty(),
        "daemons alive 5 s after their parent was killed: {survivors:?}"
    );
}

fn answer(_: ()) -> u32 {
    42
}

/// Ends the test process at once: deadlocked threads may hold the standard-output lock, so
/// neither this test's panic nor libtest's summary could be printed, and the run would hang.
fn deadlocked(what: &str) -> ! {
    let msg = format!("deadlock: {what}\n");
    let _ = rustix::io::write(rustix::stdio::stderr(), msg.as_bytes());
    std::process::abort()
}

/// One thread holds the standard-output lock while it starts processes; another forks all
/// the while. (The fork path once took the launch window before the standard-output lock,
/// and the two threads waited for each other forever.)
#[multiproc::test]
fn starting_while_holding_stdout_does_not_deadlock_with_a_fork() {
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let forker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ctx = Context::new(StartMethod::Fork);
            while !stop.load(Ordering::Relaxed) {
                let mut p = ctx.process(nothing, ());
                p.start().expect("fork start");
                assert!(p.join_timeout(LONG).expect("join"));
            }
            done_tx.send(()).expect("send");
        })
    };
    let (starts_tx, starts_rx) = std::sync::mpsc::channel();
    let starter = std::thread::spawn(move || {
        let ctx = Context::new(StartMethod::Forkserver);
        for _ in 0..300 {
            let mut p = ctx.process(answer, ());
            {
                let _out = std::io::stdout().lock();
                p.start().expect("start");
            }
            starts_tx
                .send(p.join_result_timeout(LONG).expect("result"))
                .expect("send");
        }
    });
    for i in 0..300 {
        match starts_rx.recv_timeout(LONG) {
            Ok(value) => assert_eq!(value, 42, "start {i}"),
            Err(_) => deadlocked(&format!("start {i} gave no answer")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    if done_rx.recv_timeout(LONG).is_err() {
        deadlocked("the forking thread did not finish");
    }
    starter.join().expect("starter");
    forker.join().expect("forker");
}

fn forty_two(_: ()) -> u32 {
    42
}

fn panics(_: ()) -> u32 {
    panic!("from a child started in a destructor")
}

/// What the starts from the destructor below saw: the returned value and the panic message.
static SEEN_IN_DESTRUCTOR: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct StartsOnDrop;

impl Drop for StartsOnDrop {
    fn drop(&mut self) {
        let ctx = Context::new(StartMethod::Fork);
        let mut seen = Vec::new();
        let mut p = ctx.process(forty_two, ());
        p.start().unwrap();
        seen.push(format!("{:?}", p.join_result()));
        let mut p = ctx.process(panics, ());
        p.start().unwrap();
        seen.push(format!("{:?}", p.join_result().map_err(|e| e.to_string())));
        *SEEN_IN_DESTRUCTOR.lock().unwrap() = seen;
    }
}

thread_local! {
    static STARTS_ON_DROP: StartsOnDrop = const { StartsOnDrop };
}

/// A fork start from a thread-local's destructor, after other thread-locals of this thread
/// (multiproc's own among them, registered by an earlier start) are gone: the child runs,
/// returns and panics as anywhere else.
#[multiproc::test]
fn a_fork_start_from_a_thread_local_destructor_works() {
    std::thread::spawn(|| {
        let ctx = Context::new(StartMethod::Fork);
        // Made first: its encoding registers some of multiproc's thread-locals before the
        // destructor's (so they are destroyed after it)...
        let mut p = ctx.process(forty_two, ());
        STARTS_ON_DROP.with(|_| ());
        // ...the start registers the rest after it (destroyed before it runs).
        p.start().unwrap();
        assert_eq!(p.join_result().unwrap(), 42);
    })
    .join()
    .unwrap();
    let seen = SEEN_IN_DESTRUCTOR.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], "Ok(42)");
    assert!(
        seen[1].contains("from a child started in a destructor"),
        "{seen:?}"
    );
}
