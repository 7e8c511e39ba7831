//! The pool across real processes, under kills and beyond CPython, under every start method
//! where it matters:
//!
//! 1. workers killed with SIGKILL at random moments (by a killer thread, and by tasks that
//!    kill themselves) while maps, imaps, `apply_async`s and callbacks run, from two threads:
//!    every task gives its right value or `WorkerDied` naming the worker that was killed (and
//!    a death fails at most the one task it was running), every callback runs once, nothing
//!    hangs, and the pool ends with all its workers; with a retry policy every task gives its
//!    right value; the pool's owner killed, or the forkserver, leave no worker behind or the
//!    pool without workers;
//! 2. the causes of death (SIGABRT, SIGSEGV, `exit(3)`) come back exactly;
//! 3. initializers that panic: once (the pool works) and always (`InitializerFailed`, no hang);
//! 4. time limits (from the task's start, not the worker's), cancelling (waiting, running and
//!    just-finished tasks), retries (with shared objects and descriptors in the retried
//!    arguments), worker state and its exit hook, `worker_id`, `worker_stats`, `join_timeout`;
//! 5. shared objects (`Lock`, `Queue`, `Array`, `RawArray`, `Connection`, `SharedMemory`) as
//!    task arguments and as task results, under the three start methods; results and
//!    arguments never taken or never run leave nothing in /dev/shm;
//! 6. `AsyncResult` as a `Future` (a tiny executor here), several awaited at once in one
//!    thread, one polled while its callback runs, `wait`, `as_completed`, `submit` and
//!    `shutdown`;
//! 7. lazy input: `imap` over endless iterators reads a bounded amount ahead;
//! 8. progress bars with known and unknown lengths;
//! 9. dropping and terminating: prompt, no worker left, held results report an error.
//!
//! Every wait is bounded: results with `get_timeout(LONG)`, imap items with
//! `next_timeout(LONG)`, maps with `MapOptions::timeout(LONG)`, and every test runs inside
//! [`bounded`], which fails it if it has not ended within [`TEST_LIMIT`]. Order is made with
//! Events, Queues and Barriers; a task sleeps only to stay busy, and an assertion never
//! depends on how long a sleep took (a wait meant to run out may, and a wait meant to
//! succeed is far longer than the work). Random choices come from fixed seeds (a failure
//! repeats, up to the scheduler); `POOL_KILLS=n` multiplies the kill test's kills.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

mod common;

use common::procs::{LONG, METHODS, each_method};
use common::{shm_exists, shm_gone_soon};

use multiproc::connection::ConnectionError;
use multiproc::indicatif::ProgressBar;
use multiproc::pool::{ReturnWhen, as_completed, wait, worker_id};
use multiproc::{
    Array, AsyncResult, Barrier, ChildError, Connection, Context, Event, Lock, MapOptions, Pool,
    PoolError, Queue, RawArray, RawValue, Retry, SharedMemory, TaskError, get_context, pipe,
};
use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

/// How long one test (all its start methods) may run before it counts as hung.
const TEST_LIMIT: Duration = Duration::from_secs(150);

/// A time limit meant to run out (tasks under it run far longer).
const LIMIT: Duration = Duration::from_millis(300);

/// Runs `f` on a thread of its own and fails the test if it has not ended within
/// [`TEST_LIMIT`] (so a call with no timeout of its own cannot hang the run).
fn bounded(f: impl FnOnce() + Send + 'static) {
    common::procs::bounded(TEST_LIMIT, f);
}

fn ctx(name: &str) -> Context {
    get_context(name).unwrap()
}

fn pool(ctx: &Context, n: usize) -> Pool {
    Pool::builder()
        .processes(n)
        .context(ctx.clone())
        .build()
        .unwrap()
}

/// Map options whose whole call is bounded by [`LONG`].
fn within_long() -> MapOptions {
    MapOptions::new().timeout(LONG)
}

fn close_and_join(pool: &Pool) {
    pool.close();
    pool.join_timeout(LONG).unwrap();
}

/// Waits (polling, bounded by [`LONG`]) until `cond` holds: for states only a poll can see,
/// such as the pool having replaced a dead worker.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the pool has `n` workers again, none of them in `dead`.
fn full_again(pool: &Pool, n: usize, dead: &HashSet<u32>) {
    eventually("the pool has all its workers again", || {
        let pids = pool.pids();
        pids.len() == n && pids.iter().all(|p| !dead.contains(p))
    });
}

/// The state letter of process `pid` (`R`, `S`, `Z`, ...), `None` if there is no such
/// process.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

/// Sends SIGKILL to `pid`; whether the signal went (the process, or its zombie, was there).
fn sigkill(pid: u32) -> bool {
    match Pid::from_raw(pid as i32) {
        Some(p) => kill_process(p, Signal::KILL).is_ok(),
        None => false,
    }
}

/// Kills the calling process with SIGKILL.
fn kill_self() -> ! {
    sigkill(std::process::id());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Dies of SIGSEGV, as `process.rs` does it: the default action is restored first, since the
/// Rust runtime handles SIGSEGV to report stack overflows.
#[allow(unsafe_code)]
fn segfault() -> ! {
    // SAFETY:
    // - `signal` with `SIG_DFL` installs no handler, so there is no handler code to be
    //   async-signal-safe;
    // - `raise` only sends a signal to this thread; its default action ends the process.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV did not end the process");
}

/// A small seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn square(x: u64) -> u64 {
    x * x
}

fn my_pid(_: ()) -> u32 {
    std::process::id()
}

/// Waits (at most [`LONG`]) for `go`, then returns its pid; says on `started` when it began.
fn hold((started, go): (Queue<u32>, Event)) -> u32 {
    started.put(std::process::id()).unwrap();
    assert!(go.wait_timeout(LONG), "never told to go on");
    std::process::id()
}

/// Says it started, then runs until killed.
fn forever(started: Queue<u32>) -> u32 {
    started.put(std::process::id()).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

// -------------------------------------------------------------------------------------------
// 1. Workers killed at random moments

/// A task of the kill test.
#[derive(Clone, Serialize, Deserialize)]
enum Job {
    /// Computes `3x + 1`, after a nap of this many microseconds.
    Work(u64, u64),
    /// Writes its pid into slot `.0` of `.1`, then kills its own worker.
    Die(usize, RawArray<u32>),
}

fn job(j: Job) -> u64 {
    match j {
        Job::Work(x, nap) => {
            if nap > 0 {
                std::thread::sleep(Duration::from_micros(nap));
            }
            3 * x + 1
        }
        Job::Die(slot, pids) => {
            pids.set(slot, std::process::id()).unwrap();
            kill_self()
        }
    }
}

/// Makes a pipe, sends `x` on it and returns the reading end.
fn pipe_with(x: u64) -> Connection<u64> {
    let (r, mut w) = pipe(false).unwrap();
    w.send(&x).unwrap();
    r
}

/// What one round of the kill test saw.
#[derive(Default)]
struct Seen {
    /// Per worker pid, the tasks whose failure named it (a task: an `apply_async`, or an imap
    /// chunk).
    failures: BTreeMap<u32, BTreeSet<String>>,
    /// Pids named by map_async failures (only the first failed item shows).
    other_pids: BTreeSet<u32>,
    /// Tasks that killed their own worker, with the pid they wrote.
    self_killed: Vec<u32>,
    /// Slots handed out to tasks that kill their worker.
    slots_used: usize,
    ok: usize,
}

impl Seen {
    fn died(&mut self, task: String, e: &TaskError) -> u32 {
        match e {
            TaskError::WorkerDied {
                pid,
                cause: ChildError::Killed { signal: 9 },
            } => {
                self.failures.entry(*pid).or_default().insert(task);
                *pid
            }
            other => panic!("{task}: expected WorkerDied by SIGKILL, got {other:?}"),
        }
    }
}

/// Kills random workers of `pool` until `target` distinct ones were killed or `stop`; returns
/// their pids. A pid from `pool.pids()` is a worker, alive or not yet reaped (a forkserver's
/// worker may be reaped by the server first: its pid could then be reused before the kill,
/// in theory; that takes a wrap of the pid space within microseconds).
fn killer(pool: &Pool, target: usize, seed: u64, stop: &AtomicBool) -> HashSet<u32> {
    let mut rng = Rng(seed);
    let mut killed = HashSet::new();
    let end = Instant::now() + TEST_LIMIT / 2;
    while killed.len() < target && !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let pids = pool.pids();
        let fresh: Vec<u32> = pids.into_iter().filter(|p| !killed.contains(p)).collect();
        if !fresh.is_empty() {
            let pid = fresh[rng.below(fresh.len() as u64) as usize];
            if sigkill(pid) {
                killed.insert(pid);
            }
        }
        // Spacing, so kills land at every stage of a worker's life: starting, taking a task,
        // running it, sending its result, idle.
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
    }
    killed
}

/// One round of work while the killer kills: a map_async, apply_asyncs (some returning
/// connections), and an imap whose items include tasks that kill their worker.
fn kill_round(pool: &Pool, rng: &mut Rng, round: u64, slots: &RawArray<u32>, seen: &mut Seen) {
    let n = 24;
    let nap = |rng: &mut Rng| {
        if rng.below(3) == 0 {
            rng.below(2000)
        } else {
            0
        }
    };
    let work: Vec<Job> = (0..n).map(|x| Job::Work(x, nap(rng))).collect();
    let mapped = pool.map_async(job, work.clone()).unwrap();
    let applied: Vec<(u64, AsyncResult<u64>)> = (0..8)
        .map(|x| {
            let x = round * 100 + x;
            (x, pool.apply_async(job, Job::Work(x, nap(rng))).unwrap())
        })
        .collect();
    let pipes: Vec<(u64, AsyncResult<Connection<u64>>)> = (0..3)
        .map(|x| (x, pool.apply_async(pipe_with, round * 10 + x).unwrap()))
        .collect();
    // An imap whose chunks of 2 may hold a task that kills its worker.
    let mut items = Vec::new();
    let mut dying = Vec::new();
    for x in 0..n {
        if rng.below(40) == 0 && slots.len() > seen.slots_used {
            let slot = seen.slots_used;
            seen.slots_used += 1;
            dying.push((x as usize, slot));
            items.push(Job::Die(slot, slots.clone()));
        } else {
            items.push(Job::Work(x, nap(rng)));
        }
    }
    let opts = within_long().chunksize(2);
    let mut it = pool.imap_with(job, items, &opts).unwrap();
    for x in 0..n as usize {
        let got = it
            .next_timeout(LONG)
            .unwrap_or_else(|| panic!("round {round}: imap ended early at {x}"));
        let chunk = format!("round {round} imap chunk {}", x / 2);
        match (got, dying.iter().find(|d| d.0 == x)) {
            (Ok(v), None) => {
                assert_eq!(v, 3 * x as u64 + 1);
                seen.ok += 1;
            }
            (Ok(v), Some(_)) => panic!("round {round}: a task that kills its worker gave {v}"),
            (Err(e), Some(&(_, slot))) => {
                let pid = seen.died(chunk, &e);
                let wrote = slots.get(slot).unwrap();
                // The killer may have killed it before it wrote its pid.
                if wrote != 0 {
                    assert_eq!(pid, wrote, "round {round}: WorkerDied names another worker");
                    seen.self_killed.push(pid);
                }
            }
            (Err(e), None) => {
                seen.died(chunk, &e);
            }
        }
    }
    assert!(
        it.next_timeout(LONG).is_none(),
        "round {round}: imap gave more items than it was given"
    );
    drop(it);
    for (x, r) in applied {
        match r.get_timeout(LONG) {
            Ok(v) => {
                assert_eq!(v, 3 * x + 1);
                seen.ok += 1;
            }
            Err(e) => {
                seen.died(format!("round {round} apply {x}"), &e);
            }
        }
    }
    for (x, r) in pipes {
        match r.get_timeout(LONG) {
            Ok(mut conn) => {
                assert_eq!(conn.recv_timeout(LONG).unwrap(), round * 10 + x);
                assert!(matches!(conn.recv_timeout(LONG), Err(ConnectionError::Eof)));
                seen.ok += 1;
            }
            Err(e) => {
                seen.died(format!("round {round} pipe {x}"), &e);
            }
        }
    }
    match mapped.get_timeout(LONG) {
        Ok(v) => {
            assert_eq!(v, (0..n).map(|x| 3 * x + 1).collect::<Vec<_>>());
            seen.ok += 1;
        }
        Err(TaskError::WorkerDied {
            pid,
            cause: ChildError::Killed { signal: 9 },
        }) => {
            seen.other_pids.insert(pid);
        }
        Err(e) => panic!("round {round}: map_async failed with {e:?}"),
    }
}

/// A second submitter, beside the rounds: `apply_async_with` (each callback must run
/// exactly once) and large results (long puts into the result queue, for kills to land in),
/// until `done`.
fn side_submitter(pool: &Pool, seed: u64, done: &AtomicBool) -> Seen {
    let mut rng = Rng(seed);
    let mut seen = Seen::default();
    let mut n = 0u64;
    while !done.load(Ordering::Relaxed) {
        if rng.below(3) == 0 {
            let len = 1 + rng.below(1 << 20) as usize;
            let byte = (n % 250) as u8 + 1;
            match pool
                .apply_async(big, (len, byte))
                .unwrap()
                .get_timeout(LONG)
            {
                Ok(b) => {
                    assert!(b.len() == len && b.iter().all(|&x| x == byte));
                    seen.ok += 1;
                }
                Err(e) => {
                    seen.died(format!("side big {n}"), &e);
                }
            }
        } else {
            let calls = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
            let (c1, c2) = (calls.clone(), calls.clone());
            let r = pool
                .apply_async_with(
                    job,
                    Job::Work(n, rng.below(1000)),
                    move |_| {
                        c1.0.fetch_add(1, Ordering::SeqCst);
                    },
                    move |_| {
                        c2.1.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .unwrap();
            let got = r.get_timeout(LONG);
            let (ok, err) = (
                calls.0.load(Ordering::SeqCst),
                calls.1.load(Ordering::SeqCst),
            );
            match got {
                Ok(v) => {
                    assert_eq!(v, 3 * n + 1);
                    assert_eq!((ok, err), (1, 0), "side {n}: callbacks");
                    seen.ok += 1;
                }
                Err(e) => {
                    assert_eq!((ok, err), (0, 1), "side {n}: callbacks");
                    seen.died(format!("side apply {n}"), &e);
                }
            }
        }
        n += 1;
    }
    seen
}

/// Runs kill rounds on a pool of 3 under `method` (whose workers retire after `maxtasks`
/// tasks, 0: never) until `kills` workers were killed by the killer thread, with a second
/// thread submitting beside; checks every outcome; returns how many workers died (killed or
/// by their own hand).
fn kills_under(method: &str, kills: usize, maxtasks: usize, seed: u64) -> usize {
    const N: usize = 3;
    let pool = Pool::builder()
        .processes(N)
        .context(ctx(method))
        .maxtasksperchild(maxtasks)
        .build()
        .unwrap();
    let slots = RawArray::<u32>::zeroed(64).unwrap();
    let mut seen = Seen::default();
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let (killed, side) = std::thread::scope(|s| {
        let k = s.spawn(|| {
            let killed = killer(&pool, kills, seed, &stop);
            done.store(true, Ordering::Relaxed);
            killed
        });
        let side = s.spawn(|| side_submitter(&pool, seed ^ 0xBEEF, &done));
        let mut rng = Rng(seed ^ 0xDEAD);
        let mut round = 0;
        let end = Instant::now() + TEST_LIMIT / 2;
        while !done.load(Ordering::Relaxed) {
            assert!(Instant::now() < end, "{method}: the killer never finished");
            kill_round(&pool, &mut rng, round, &slots, &mut seen);
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        (k.join().unwrap(), side.join().unwrap())
    });
    assert!(
        killed.len() >= kills,
        "{method}: only {} kills",
        killed.len()
    );
    seen.ok += side.ok;
    for (pid, tasks) in side.failures {
        seen.failures.entry(pid).or_default().extend(tasks);
    }
    let dead: HashSet<u32> = killed
        .iter()
        .copied()
        .chain(seen.self_killed.iter().copied())
        .collect();
    full_again(&pool, N, &dead);
    let live = pool.pids();
    for &pid in &live {
        assert!(
            !ended(pid) || maxtasks > 0,
            "{method}: worker {pid} is listed but has ended"
        );
    }
    let v = pool
        .map_with(square, 0..200, &within_long().chunksize(3))
        .unwrap();
    assert_eq!(v, (0..200).map(|x| x * x).collect::<Vec<_>>());
    close_and_join(&pool);
    // Every worker the pool had: the live ones at the end, and exactly the dead ones (with
    // maxtasksperchild, also those that retired).
    let all: HashSet<u32> = pool.worker_stats().iter().map(|s| s.pid).collect();
    let retired: HashSet<u32> = all
        .difference(&live.iter().copied().collect())
        .copied()
        .collect();
    if maxtasks == 0 {
        assert_eq!(
            retired, dead,
            "{method}: the workers that ended are not those killed"
        );
    } else {
        assert!(
            retired.is_superset(&dead),
            "{method}: a killed worker is unknown"
        );
    }
    // Each failure names a worker that died, and a death fails at most the task it ran.
    for (pid, tasks) in &seen.failures {
        assert!(
            dead.contains(pid),
            "{method}: {tasks:?} name {pid}, never killed"
        );
        assert!(
            tasks.len() <= 1,
            "{method}: the death of worker {pid} failed several tasks: {tasks:?}"
        );
    }
    for pid in &seen.other_pids {
        assert!(
            dead.contains(pid),
            "{method}: a map names {pid}, never killed"
        );
    }
    assert!(seen.ok > 0, "{method}: nothing succeeded");
    dead.len()
}

/// How many times over the kill test kills: `POOL_KILLS=n` (default 1).
fn kill_scale() -> usize {
    std::env::var("POOL_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

#[multiproc::test]
fn random_kills_fail_only_the_running_task_and_the_pool_recovers() {
    bounded(|| {
        let s = kill_scale();
        // Fork workers are the cheapest to replace: most kills go to them.
        let deaths = kills_under("fork", 125 * s, 0, 1)
            + kills_under("forkserver", 45 * s, 0, 2)
            + kills_under("spawn", 30 * s, 0, 3)
            // Workers also retire on their own, between kills.
            + kills_under("fork", 40 * s, 4, 4);
        assert!(deaths >= 200 * s, "only {deaths} workers died");
    });
}

/// Under kills with a retry policy of many attempts, every task gives its right value.
fn retried_kills_under(method: &str, kills: usize, seed: u64) {
    let pool = Pool::builder()
        .processes(3)
        .context(ctx(method))
        .retry(Retry::new(100))
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let k = s.spawn(|| killer(&pool, kills, seed, &stop));
        let mut rng = Rng(seed);
        let end = Instant::now() + TEST_LIMIT / 2;
        let mut round = 0u64;
        while !k.is_finished() {
            assert!(Instant::now() < end, "{method}: the killer never finished");
            let items: Vec<Job> = (0..30)
                .map(|x| Job::Work(round * 1000 + x, rng.below(1500)))
                .collect();
            let m = pool.map_async(job, items.clone()).unwrap();
            let got: Vec<u64> = pool
                .imap_unordered_with(job, items, &within_long())
                .unwrap()
                .map(|r| r.unwrap_or_else(|e| panic!("{method}: a retried task failed: {e}")))
                .collect();
            let mut got = got;
            got.sort_unstable();
            let want: Vec<u64> = (0..30).map(|x| 3 * (round * 1000 + x) + 1).collect();
            assert_eq!(got, want);
            assert_eq!(m.get_timeout(LONG).unwrap(), want);
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(k.join().unwrap().len() >= kills);
    });
    close_and_join(&pool);
}

#[multiproc::test]
fn random_kills_with_retries_lose_no_task() {
    bounded(|| {
        retried_kills_under("fork", 30, 11);
        retried_kills_under("forkserver", 10, 12);
        retried_kills_under("spawn", 8, 13);
    });
}

/// A closed pool whose worker is killed while the work drains still finishes it.
#[multiproc::test]
fn a_worker_killed_while_a_closed_pool_drains_is_replaced() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let rs: Vec<_> = (0..40)
                .map(|x| pool.apply_async(job, Job::Work(x, 5000)).unwrap())
                .collect();
            pool.close();
            let victim = pool.pids()[0];
            assert!(sigkill(victim));
            pool.join_timeout(LONG).unwrap();
            let mut failed = 0;
            for (x, r) in rs.into_iter().enumerate() {
                match r.get_timeout(LONG) {
                    Ok(v) => assert_eq!(v, 3 * x as u64 + 1),
                    Err(TaskError::WorkerDied { pid, .. }) => {
                        assert_eq!(pid, victim, "{m}");
                        failed += 1;
                    }
                    Err(e) => panic!("{m}: {e:?}"),
                }
            }
            assert!(failed <= 1, "{m}: one death failed {failed} tasks");
        });
    });
}

// -------------------------------------------------------------------------------------------
// 2. Causes of death

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum Death {
    Abort,
    Segfault,
    Exit3,
}

fn die_by((how, pid): (Death, RawValue<u32>)) -> u64 {
    pid.set(std::process::id());
    match how {
        Death::Abort => std::process::abort(),
        Death::Segfault => segfault(),
        Death::Exit3 => std::process::exit(3),
    }
}

#[multiproc::test]
fn abort_segfault_and_exit_come_back_as_the_workers_cause_of_death() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let cases = [
                (Death::Abort, ChildError::Killed { signal: 6 }, "SIGABRT"),
                (
                    Death::Segfault,
                    ChildError::Killed { signal: 11 },
                    "SIGSEGV",
                ),
                (Death::Exit3, ChildError::Exited(3), "code 3"),
            ];
            let mut dead = HashSet::new();
            for (how, want, text) in cases {
                let pid = RawValue::new(0u32).unwrap();
                let before: Vec<_> = (0..10)
                    .map(|x| pool.apply_async(square, x).unwrap())
                    .collect();
                let r = pool.apply_async(die_by, (how, pid.clone())).unwrap();
                let after: Vec<_> = (10..20)
                    .map(|x| pool.apply_async(square, x).unwrap())
                    .collect();
                match r.get_timeout(LONG) {
                    Err(e @ TaskError::WorkerDied { .. }) => {
                        let TaskError::WorkerDied { pid: died, cause } = &e else {
                            unreachable!()
                        };
                        assert_eq!(*died, pid.get(), "{m} {how:?}: the wrong pid");
                        assert_eq!(cause, &want, "{m} {how:?}");
                        assert!(e.to_string().contains(text), "{m}: {e}");
                        dead.insert(*died);
                    }
                    other => panic!("{m} {how:?}: {other:?}"),
                }
                for (x, r) in before.into_iter().chain(after).enumerate() {
                    assert_eq!(r.get_timeout(LONG).unwrap(), (x * x) as u64, "{m} {how:?}");
                }
            }
            full_again(&pool, 2, &dead);
            assert_eq!(
                pool.map_with(square, 0..10, &within_long()).unwrap().len(),
                10
            );
            let retired: HashSet<u32> = pool
                .worker_stats()
                .iter()
                .filter(|s| !s.alive)
                .map(|s| s.pid)
                .collect();
            assert_eq!(retired, dead, "{m}");
            close_and_join(&pool);
        });
    });
}

// -------------------------------------------------------------------------------------------
// 3. Initializers that panic

fn init_always_panics(_: ()) {
    panic!("no database here");
}

fn init_first_panics(calls: RawValue<u32>) {
    if calls.fetch_add(1) == 0 {
        panic!("the first worker fails");
    }
}

#[multiproc::test]
fn an_initializer_that_always_panics_fails_tasks_instead_of_hanging() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = Pool::builder()
                .processes(2)
                .context(ctx.clone())
                .initializer(init_always_panics, ())
                .build()
                .unwrap();
            let check = |e: TaskError| match e {
                TaskError::InitializerFailed(message) => {
                    assert!(message.contains("no database here"), "{m}: {message}");
                    assert!(message.contains("pool_procs.rs"), "{m}: {message}");
                }
                other => panic!("{m}: {other:?}"),
            };
            let r = pool.apply_async(square, 3).unwrap();
            check(r.get_timeout(LONG).unwrap_err());
            check(pool.map_with(square, 0..10, &within_long()).unwrap_err());
            // Once broken, new work fails at once.
            check(
                pool.apply_async(square, 4)
                    .unwrap()
                    .get_timeout(LONG)
                    .unwrap_err(),
            );
            let mut it = pool.imap_with(square, 0..3, &within_long()).unwrap();
            for _ in 0..3 {
                check(it.next_timeout(LONG).unwrap().unwrap_err());
            }
            assert!(it.next_timeout(LONG).is_none());
            drop(it);
            assert!(pool.worker_stats().len() >= 2, "{m}");
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn a_worker_whose_initializer_panics_is_replaced_and_the_pool_works() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let calls = RawValue::new(0u32).unwrap();
            let pool = Pool::builder()
                .processes(2)
                .context(ctx.clone())
                .initializer(init_first_panics, calls.clone())
                .build()
                .unwrap();
            let v = pool.map_with(square, 0..100, &within_long()).unwrap();
            assert_eq!(v, (0..100).map(|x| x * x).collect::<Vec<_>>(), "{m}");
            eventually("the failed worker is replaced", || {
                pool.pids().len() == 2 && pool.worker_stats().len() == 3
            });
            close_and_join(&pool);
            // Two workers at the start and one replacement ran the initializer.
            assert_eq!(calls.get(), 3, "{m}");
            let stats = pool.worker_stats();
            assert_eq!(stats.len(), 3, "{m}: {stats:?}");
            assert_eq!(stats.iter().map(|s| s.items).sum::<u64>(), 100, "{m}");
        });
    });
}

// -------------------------------------------------------------------------------------------
// 4. Time limits, cancel, retries, worker state, worker ids, stats

#[multiproc::test]
fn a_task_past_its_time_limit_has_its_worker_killed_and_replaced() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let started = Queue::new(0).unwrap();
            let r = pool
                .apply_async_timeout(forever, started.clone(), LIMIT)
                .unwrap();
            let quick: Vec<_> = (0..10)
                .map(|x| pool.apply_async(square, x).unwrap())
                .collect();
            let pid = started.get_timeout(LONG).unwrap();
            match r.get_timeout(LONG) {
                Err(TaskError::TimeLimit { limit, pid: p }) => {
                    assert_eq!((limit, p), (LIMIT, pid), "{m}");
                }
                other => panic!("{m}: {other:?}"),
            }
            for (x, q) in quick.into_iter().enumerate() {
                assert_eq!(q.get_timeout(LONG).unwrap(), (x * x) as u64);
            }
            full_again(&pool, 2, &HashSet::from([pid]));
            eventually("the timed-out worker is gone", || ended(pid));
            assert_eq!(pool.apply(square, 9).unwrap(), 81);
            close_and_join(&pool);
        });
    });
}

/// Sleeps `ms` milliseconds (`u64::MAX`: until killed) and returns `ms`.
fn sleep_ms(ms: u64) -> u64 {
    if ms == u64::MAX {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[multiproc::test]
fn a_maps_task_timeout_fails_only_the_slow_items() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let inf = u64::MAX;
            let items = [0, inf, 1, 0, inf, 2, 0];
            let opts = within_long().chunksize(1).task_timeout(LIMIT);
            let got: Vec<_> = pool.imap_with(sleep_ms, items, &opts).unwrap().collect();
            assert_eq!(got.len(), items.len());
            for (x, g) in items.iter().zip(got) {
                match g {
                    Ok(v) => assert_eq!(v, *x, "{m}"),
                    Err(TaskError::TimeLimit { limit, .. }) => {
                        assert_eq!((*x, limit), (inf, LIMIT), "{m}")
                    }
                    Err(e) => panic!("{m}: {e:?}"),
                }
            }
            // map gives the first failed item's error.
            let e = pool.map_with(sleep_ms, [0, inf, 0], &opts).unwrap_err();
            assert!(matches!(e, TaskError::TimeLimit { .. }), "{m}: {e:?}");
            assert_eq!(
                pool.map_with(square, 0..5, &within_long()).unwrap().len(),
                5
            );
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn a_time_limit_counts_from_when_the_task_starts_not_when_it_was_submitted() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let started = Queue::new(0).unwrap();
        let go = Event::new().unwrap();
        let first = pool
            .apply_async(hold, (started.clone(), go.clone()))
            .unwrap();
        let pid = started.get_timeout(LONG).unwrap();
        let second = pool.apply_async_timeout(square, 5, LIMIT).unwrap();
        // It waits behind the first task for longer than its limit...
        assert!(!second.wait_timeout(LIMIT * 3));
        go.set();
        // ... yet its limit is for its own run.
        assert_eq!(first.get_timeout(LONG).unwrap(), pid);
        assert_eq!(second.get_timeout(LONG).unwrap(), 25);
        assert_eq!(pool.pids(), [pid], "a worker was killed");
        close_and_join(&pool);
    });
}

fn init_waits(go: Event) {
    assert!(go.wait_timeout(LONG), "the initializer was never let go");
}

/// A worker's start and its initializer are not part of its first task's time limit: the
/// worker is not killed while it initializes.
#[multiproc::test]
fn a_time_limit_does_not_count_the_workers_initializer() {
    bounded(|| {
        let go = Event::new().unwrap();
        let pool = Pool::builder()
            .processes(1)
            .context(ctx("fork"))
            .initializer(init_waits, go.clone())
            .build()
            .unwrap();
        let first = pool.pids();
        let r = pool.apply_async_timeout(square, 5, LIMIT).unwrap();
        // The initializer holds the worker for longer than the limit...
        let early = r.wait_timeout(LIMIT * 3);
        let stats = pool.worker_stats();
        go.set();
        // ... but the task had not started.
        let got = r.get_timeout(LONG);
        assert!(
            !early && matches!(got, Ok(25)),
            "a task that never started ran out of time: {got:?}"
        );
        assert_eq!(
            stats.len(),
            1,
            "the worker was killed in its initializer, for the time limit of a task it had \
             not started (workers {first:?}, then {stats:?})"
        );
        close_and_join(&pool);
    });
}

/// A task that runs forever under a time limit ends with `TimeLimit`, also when it waited in
/// the queue of a worker that was still in its initializer.
#[multiproc::test]
fn a_time_limit_holds_for_a_task_that_waited_behind_an_initializer() {
    bounded(|| {
        let go = Event::new().unwrap();
        let pool = Pool::builder()
            .processes(1)
            .context(ctx("fork"))
            .initializer(init_waits, go.clone())
            .build()
            .unwrap();
        let started = Queue::new(0).unwrap();
        let r = pool
            .apply_async_timeout(forever, started.clone(), LIMIT)
            .unwrap();
        // Meant to run out: the worker is in its initializer meanwhile.
        let _ = r.wait_timeout(LIMIT * 3);
        go.set();
        let pid = started.get_timeout(LONG).unwrap();
        // It runs now, forever: its limit must end it soon.
        let bound = LIMIT * 10 + Duration::from_secs(2);
        match r.get_timeout(bound) {
            Err(TaskError::TimeLimit { limit, pid: p }) => assert_eq!((limit, p), (LIMIT, pid)),
            other => panic!(
                "a task past its limit of {LIMIT:?} still ran {bound:?} after it started: \
                 {other:?} (workers: {:?})",
                pool.worker_stats()
            ),
        }
        pool.terminate();
    });
}

#[multiproc::test]
fn cancelling_a_waiting_task_drops_it_and_keeps_the_worker() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 1);
            let started = Queue::new(0).unwrap();
            let go = Event::new().unwrap();
            let running = pool
                .apply_async(hold, (started.clone(), go.clone()))
                .unwrap();
            let pid = started.get_timeout(LONG).unwrap();
            // Queued behind it: one in the worker's own queue, more in the pool's line.
            let waiting: Vec<_> = (0..6)
                .map(|x| pool.apply_async(square, x).unwrap())
                .collect();
            let map = pool.map_async(square, 0..20).unwrap();
            assert!(waiting[0].cancel(), "{m}");
            assert!(waiting[4].cancel(), "{m}");
            assert!(map.cancel(), "{m}");
            assert!(waiting[0].cancelled() && map.cancelled());
            assert!(!waiting[1].cancelled());
            go.set();
            assert_eq!(running.get_timeout(LONG).unwrap(), pid);
            for (x, w) in waiting.iter().enumerate() {
                match (x, w.get_timeout(LONG)) {
                    (0 | 4, Err(TaskError::Cancelled)) => {}
                    (0 | 4, other) => panic!("{m}: {other:?}"),
                    (_, r) => assert_eq!(r.unwrap(), (x * x) as u64, "{m}"),
                }
            }
            assert!(matches!(map.get_timeout(LONG), Err(TaskError::Cancelled)));
            // Nothing was killed: the same worker ran everything.
            assert_eq!(pool.apply(my_pid, ()).unwrap(), pid, "{m}");
            assert_eq!(pool.worker_stats().len(), 1, "{m}");
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn cancelling_a_running_task_kills_its_worker_only() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let started = Queue::new(0).unwrap();
            let r = pool.apply_async(forever, started.clone()).unwrap();
            let pid = started.get_timeout(LONG).unwrap();
            let others: Vec<_> = (0..10)
                .map(|x| pool.apply_async(square, x).unwrap())
                .collect();
            assert!(r.cancel(), "{m}");
            assert!(matches!(r.get_timeout(LONG), Err(TaskError::Cancelled)));
            assert!(r.cancelled());
            assert!(!r.cancel(), "{m}: cancelled twice");
            for (x, o) in others.into_iter().enumerate() {
                assert_eq!(o.get_timeout(LONG).unwrap(), (x * x) as u64, "{m}");
            }
            eventually("the cancelled task's worker is gone", || ended(pid));
            full_again(&pool, 2, &HashSet::from([pid]));
            // A finished task cannot be cancelled.
            let done = pool.apply_async(square, 3).unwrap();
            assert_eq!(done.get_timeout(LONG).unwrap(), 9);
            assert!(!done.cancel() && !done.cancelled());
            close_and_join(&pool);
        });
    });
}

/// A map cancelled half-way: the chunks done stay done, the rest is cancelled.
#[multiproc::test]
fn cancelling_a_map_midway_cancels_what_is_left() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let started = Queue::new(0).unwrap();
        let go = Event::new().unwrap();
        let first = pool
            .apply_async(hold, (started.clone(), go.clone()))
            .unwrap();
        started.get_timeout(LONG).unwrap();
        let map = pool.map_async(square, 0..40).unwrap();
        let after = pool.apply_async(square, 7).unwrap();
        assert!(map.cancel());
        go.set();
        assert!(first.get_timeout(LONG).is_ok());
        assert!(matches!(map.get_timeout(LONG), Err(TaskError::Cancelled)));
        assert_eq!(after.get_timeout(LONG).unwrap(), 49);
        close_and_join(&pool);
    });
}

/// Aborts its worker on the first run of item `i`; returns `10 i` after.
fn flaky_item((i, runs): (usize, RawArray<u32>)) -> u64 {
    if runs.fetch_add(i, 1).unwrap() == 0 {
        std::process::abort();
    }
    10 * i as u64
}

/// Panics on the first run of item `i`.
fn panicky_item((i, runs): (usize, RawArray<u32>)) -> u64 {
    if runs.fetch_add(i, 1).unwrap() == 0 {
        panic!("first run of {i}");
    }
    10 * i as u64
}

/// Always aborts, counting its runs.
fn always_aborts(runs: RawValue<u32>) -> u64 {
    runs.fetch_add(1);
    std::process::abort()
}

/// Runs past any time limit the first time, returns at once after.
fn slow_first(runs: RawValue<u32>) -> u32 {
    if runs.fetch_add(1) == 0 {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    runs.get()
}

/// Aborts the first time; sends on the connection and puts into the queue after.
fn crash_then_send((mut conn, q, runs): (Connection<u64>, Queue<u64>, RawValue<u32>)) -> u32 {
    if runs.fetch_add(1) == 0 {
        std::process::abort();
    }
    conn.send(&42).unwrap();
    q.put(43).unwrap();
    runs.get()
}

#[multiproc::test]
fn retries_rerun_crashed_tasks_with_their_shared_objects_and_descriptors() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = Pool::builder()
                .processes(2)
                .context(ctx.clone())
                .retry(Retry::new(3))
                .build()
                .unwrap();
            // Every item crashes its worker once; each comes back right.
            let runs = RawArray::<u32>::zeroed(8).unwrap();
            let items: Vec<_> = (0..8).map(|i| (i, runs.clone())).collect();
            let opts = within_long().chunksize(1);
            let v = pool.map_with(flaky_item, items, &opts).unwrap();
            assert_eq!(v, (0..8).map(|i| 10 * i).collect::<Vec<_>>(), "{m}");
            assert_eq!(runs.to_vec(), [2; 8], "{m}");
            // A connection and a queue in the arguments survive the crash of the first run.
            let (mut rx, tx) = pipe(false).unwrap();
            let q = Queue::new(0).unwrap();
            let runs = RawValue::new(0u32).unwrap();
            let r = pool.apply_async(crash_then_send, (tx, q.clone(), runs.clone()));
            assert_eq!(r.unwrap().get_timeout(LONG).unwrap(), 2, "{m}");
            assert_eq!(rx.recv_timeout(LONG).unwrap(), 42, "{m}");
            assert_eq!(q.get_timeout(LONG).unwrap(), 43, "{m}");
            // Attempts run out: the last crash is the result.
            let runs = RawValue::new(0u32).unwrap();
            let e = pool
                .apply_async(always_aborts, runs.clone())
                .unwrap()
                .get_timeout(LONG)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    TaskError::WorkerDied {
                        cause: ChildError::Killed { signal: 6 },
                        ..
                    }
                ),
                "{m}: {e:?}"
            );
            assert_eq!(runs.get(), 3, "{m}");
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn retry_policies_of_a_map_choose_what_is_retried() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        let items = |runs: &RawArray<u32>| (0..6).map(|i| (i, runs.clone())).collect::<Vec<_>>();
        // No policy: nothing is retried.
        let runs = RawArray::<u32>::zeroed(6).unwrap();
        let opts = within_long().chunksize(1);
        let e = pool
            .map_with(panicky_item, items(&runs), &opts)
            .unwrap_err();
        assert!(matches!(e, TaskError::Panicked { .. }), "{e:?}");
        assert_eq!(runs.to_vec(), [1; 6]);
        // Crashes only (the default): a panic is not retried.
        let runs = RawArray::<u32>::zeroed(6).unwrap();
        let crash_only = opts.clone().retry(Retry::new(2));
        let got: Vec<_> = pool
            .imap_with(panicky_item, items(&runs), &crash_only)
            .unwrap()
            .collect();
        assert!(got.iter().all(|r| matches!(r, Err(TaskError::Panicked { message, .. }) if message.starts_with("first run of"))));
        assert_eq!(runs.to_vec(), [1; 6]);
        // Errors too: every panic is retried once.
        let runs = RawArray::<u32>::zeroed(6).unwrap();
        let on_error = opts.clone().retry(Retry::new(2).on_error(true));
        let v = pool
            .map_with(panicky_item, items(&runs), &on_error)
            .unwrap();
        assert_eq!(v, (0..6).map(|i| 10 * i).collect::<Vec<_>>());
        assert_eq!(runs.to_vec(), [2; 6]);
        // Not after a crash: each crash is final.
        let runs = RawArray::<u32>::zeroed(6).unwrap();
        let no_crash = opts.clone().retry(Retry::new(5).on_crash(false));
        let got: Vec<_> = pool
            .imap_with(flaky_item, items(&runs), &no_crash)
            .unwrap()
            .collect();
        assert!(
            got.iter()
                .all(|r| matches!(r, Err(TaskError::WorkerDied { .. })))
        );
        assert_eq!(runs.to_vec(), [1; 6]);
        // A time limit is a crash: retried, and the second run is quick.
        let runs = RawValue::new(0u32).unwrap();
        let limited = opts.clone().task_timeout(LIMIT).retry(Retry::new(2));
        let v = pool.map_with(slow_first, [runs.clone()], &limited).unwrap();
        assert_eq!((v, runs.get()), (vec![2], 2));
        close_and_join(&pool);
    });
}

/// A worker's state: its log, its id, and how many tasks it ran. Not serializable on
/// purpose (an `Rc`).
struct Ledger {
    log: Queue<(u32, u64)>,
    id: u32,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

fn open_ledger(log: Queue<(u32, u64)>) -> Ledger {
    Ledger {
        log,
        id: worker_id().expect("not in a pool worker"),
        count: std::rc::Rc::default(),
    }
}

fn close_ledger(l: Ledger) {
    l.log.put((l.id, l.count.get())).unwrap();
}

fn record(l: &mut Ledger, x: u64) -> (u32, u64) {
    l.count.set(l.count.get() + 1);
    (l.id, x)
}

fn abort_in_state(_: &mut Ledger, _: ()) -> u64 {
    std::process::abort()
}

fn wrong_state(s: &mut u8, _: ()) -> u8 {
    *s
}

#[multiproc::test]
fn worker_state_lives_per_worker_and_its_exit_hook_runs_on_clean_ends_only() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let log = Queue::new(0).unwrap();
            let pool = Pool::builder()
                .processes(2)
                .context(ctx.clone())
                .worker_state_and_exit(open_ledger, log.clone(), close_ledger)
                .build()
                .unwrap();
            let v = pool.map_state(record, 0..40).unwrap();
            assert_eq!(
                v.iter().map(|p| p.1).collect::<Vec<_>>(),
                (0..40).collect::<Vec<_>>()
            );
            assert!(v.iter().all(|p| p.0 == 1 || p.0 == 2), "{m}: {v:?}");
            assert_eq!(pool.apply_state(record, 7).unwrap().1, 7);
            // A task asking for a state the workers do not have fails; the worker lives on.
            let before = pool.pids();
            match pool.apply_state(wrong_state, ()) {
                Err(TaskError::Panicked { message, .. }) => {
                    assert!(message.contains("worker state"), "{m}: {message}")
                }
                other => panic!("{m}: {other:?}"),
            }
            // A killed worker runs no exit hook; its replacement gets a new id and state.
            let e = pool.apply_state(abort_in_state, ()).unwrap_err();
            assert!(matches!(e, TaskError::WorkerDied { .. }), "{m}: {e:?}");
            let dead: HashSet<u32> = before.iter().copied().filter(|p| ended(*p)).collect();
            assert_eq!(dead.len(), 1, "{m}");
            full_again(&pool, 2, &dead);
            let v = pool.map_state(record, 0..20).unwrap();
            assert_eq!(v.len(), 20);
            let live: BTreeSet<u32> = pool
                .worker_stats()
                .iter()
                .filter(|s| s.alive)
                .map(|s| s.id)
                .collect();
            assert!(
                live.contains(&3),
                "{m}: the replacement is not worker 3: {live:?}"
            );
            close_and_join(&pool);
            let mut ended_ids = BTreeSet::new();
            for _ in 0..2 {
                let (id, _count) = log.get_timeout(LONG).unwrap();
                ended_ids.insert(id);
            }
            assert_eq!(ended_ids, live, "{m}: the exit hooks that ran");
            assert!(
                log.try_get().is_err(),
                "{m}: an exit hook ran in a killed worker"
            );
        });
    });
}

#[multiproc::test]
fn the_exit_hook_runs_when_a_worker_retires_after_maxtasksperchild() {
    bounded(|| {
        let log = Queue::new(0).unwrap();
        let pool = Pool::builder()
            .processes(1)
            .context(ctx("fork"))
            .maxtasksperchild(3)
            .worker_state_and_exit(open_ledger, log.clone(), close_ledger)
            .build()
            .unwrap();
        for x in 0..9 {
            assert_eq!(pool.apply_state(record, x).unwrap().1, x);
        }
        let mut counts = Vec::new();
        for _ in 0..3 {
            counts.push(log.get_timeout(LONG).unwrap());
        }
        assert_eq!(counts, [(1, 3), (2, 3), (3, 3)]);
        close_and_join(&pool);
        // A fourth worker may have started before the close; it ran nothing.
        while let Ok((id, n)) = log.try_get() {
            assert_eq!((id, n), (4, 0));
        }
    });
}

fn meet((b, _): (Barrier, u64)) -> (Option<u32>, u32) {
    b.wait_timeout(LONG).unwrap();
    (worker_id(), std::process::id())
}

#[multiproc::test]
fn worker_ids_match_pids_and_stats_and_replacements_get_new_ids() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 3);
            assert_eq!(worker_id(), None);
            // Three tasks that wait for each other run on three different workers.
            let b = Barrier::new(3).unwrap();
            let rs: Vec<_> = (0..3)
                .map(|x| pool.apply_async(meet, (b.clone(), x)).unwrap())
                .collect();
            let ids: BTreeMap<u32, u32> = rs
                .into_iter()
                .map(|r| {
                    let (id, pid) = r.get_timeout(LONG).unwrap();
                    (id.unwrap(), pid)
                })
                .collect();
            assert_eq!(ids.keys().copied().collect::<Vec<_>>(), [1, 2, 3], "{m}");
            let stats: BTreeMap<u32, u32> =
                pool.worker_stats().iter().map(|s| (s.id, s.pid)).collect();
            assert_eq!(stats, ids, "{m}");
            // Kill worker 2: its replacement is worker 4.
            assert!(sigkill(ids[&2]));
            full_again(&pool, 3, &HashSet::from([ids[&2]]));
            let b = Barrier::new(3).unwrap();
            let rs: Vec<_> = (0..3)
                .map(|x| pool.apply_async(meet, (b.clone(), x)).unwrap())
                .collect();
            let now: BTreeMap<u32, u32> = rs
                .into_iter()
                .map(|r| {
                    let (id, pid) = r.get_timeout(LONG).unwrap();
                    (id.unwrap(), pid)
                })
                .collect();
            assert_eq!(now.keys().copied().collect::<Vec<_>>(), [1, 3, 4], "{m}");
            assert_eq!((now[&1], now[&3]), (ids[&1], ids[&3]), "{m}");
            let dead: Vec<_> = pool
                .worker_stats()
                .into_iter()
                .filter(|s| !s.alive)
                .collect();
            assert_eq!(dead.len(), 1, "{m}");
            assert_eq!((dead[0].id, dead[0].pid), (2, ids[&2]), "{m}");
            close_and_join(&pool);
        });
    });
}

fn nap_item(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x
}

#[multiproc::test]
fn worker_stats_count_tasks_items_and_busy_time() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        let opts = within_long().chunksize(4);
        assert_eq!(pool.map_with(nap_item, 0..40, &opts).unwrap().len(), 40);
        let stats = pool.worker_stats();
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|s| s.alive));
        assert_eq!(stats.iter().map(|s| s.tasks).sum::<u64>(), 10);
        assert_eq!(stats.iter().map(|s| s.items).sum::<u64>(), 40);
        let busy: Duration = stats.iter().map(|s| s.busy).sum();
        assert!(busy >= Duration::from_millis(80), "busy only {busy:?}");
        let mut pids: Vec<u32> = stats.iter().map(|s| s.pid).collect();
        pids.sort_unstable();
        let mut live = pool.pids();
        live.sort_unstable();
        assert_eq!(pids, live);
        // A worker that dies keeps its figures, no longer alive; the task it died in is not
        // counted. One worker is kept busy, so the other (the least loaded) gets the task.
        let started = Queue::new(0).unwrap();
        let go = Event::new().unwrap();
        let busy_one = pool
            .apply_async(hold, (started.clone(), go.clone()))
            .unwrap();
        let holder = started.get_timeout(LONG).unwrap();
        let pid = RawValue::new(0u32).unwrap();
        let death = pool
            .apply_async(die_by, (Death::Exit3, pid.clone()))
            .unwrap();
        assert!(death.get_timeout(LONG).is_err());
        go.set();
        busy_one.get_timeout(LONG).unwrap();
        let died = pid.get();
        assert_ne!(died, holder);
        let before = stats.iter().find(|s| s.pid == died).unwrap().clone();
        full_again(&pool, 2, &HashSet::from([died]));
        let stats = pool.worker_stats();
        let gone = stats.iter().find(|s| s.pid == died).unwrap();
        assert!(!gone.alive);
        assert_eq!(
            (gone.id, gone.tasks, gone.items),
            (before.id, before.tasks, before.items)
        );
        assert_eq!(stats.iter().filter(|s| s.alive).count(), 2);
        close_and_join(&pool);
    });
}

// -------------------------------------------------------------------------------------------
// 5. Shared objects as arguments and results

fn try_lock(l: Lock) -> bool {
    l.try_acquire().is_ok()
}

fn new_lock(_: ()) -> Lock {
    Lock::new().unwrap()
}

fn put_into((q, x): (Queue<u64>, u64)) -> u32 {
    q.put(x * 2).unwrap();
    std::process::id()
}

fn take_from(q: Queue<u64>) -> u64 {
    q.get_timeout(LONG).unwrap()
}

/// A queue made in the worker, holding `0..n`.
fn new_queue(n: u64) -> Queue<u64> {
    let q = Queue::new(0).unwrap();
    for x in 0..n {
        q.put(x).unwrap();
    }
    q
}

fn set_square((a, i): (Array<u64>, usize)) {
    a.set(i, (i * i) as u64).unwrap();
}

fn set_cube((a, i): (RawArray<u64>, usize)) {
    a.set(i, (i * i * i) as u64).unwrap();
}

fn new_raw_array(n: usize) -> RawArray<u64> {
    let a = RawArray::zeroed(n).unwrap();
    for i in 0..n {
        a.set(i, i as u64 + 100).unwrap();
    }
    a
}

fn new_array(n: usize) -> Array<u64> {
    Array::from_slice(&(0..n as u64).map(|x| x + 7).collect::<Vec<_>>()).unwrap()
}

fn send_on((mut c, x): (Connection<u64>, u64)) -> u64 {
    c.send(&x).unwrap();
    x
}

/// Echoes one message on a duplex connection, plus one.
fn echo(mut c: Connection<u64>) -> u64 {
    let x = c.recv_timeout(LONG).unwrap();
    c.send(&(x + 1)).unwrap();
    x
}

/// Shared memory made in the worker, filled with `byte`.
fn new_shm((len, byte): (usize, u8)) -> SharedMemory {
    let shm = SharedMemory::create(len).unwrap();
    shm.write(0, &vec![byte; len]).unwrap();
    shm
}

#[multiproc::test]
fn locks_go_to_tasks_and_come_back_from_them() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let lock = Lock::new().unwrap();
            let held = lock.acquire().unwrap();
            assert!(!pool.apply(try_lock, lock.clone()).unwrap(), "{m}");
            drop(held);
            assert!(pool.apply(try_lock, lock.clone()).unwrap(), "{m}");
            // The worker's guard was dropped when the task ended.
            assert!(!lock.is_locked(), "{m}");
            // A lock made in a worker.
            let made = pool.apply(new_lock, ()).unwrap();
            let g = made.acquire_timeout(LONG).unwrap();
            assert!(!pool.apply(try_lock, made.clone()).unwrap(), "{m}");
            drop(g);
            assert!(pool.apply(try_lock, made.clone()).unwrap(), "{m}");
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn queues_go_to_tasks_and_come_back_from_them_and_outlive_their_maker() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let q = Queue::new(0).unwrap();
            let items: Vec<_> = (0..20).map(|x| (q.clone(), x)).collect();
            pool.map_with(put_into, items, &within_long()).unwrap();
            let mut got: Vec<u64> = (0..20).map(|_| q.get_timeout(LONG).unwrap()).collect();
            got.sort_unstable();
            assert_eq!(got, (0..20).map(|x| 2 * x).collect::<Vec<_>>(), "{m}");
            // A queue made in a worker, which then ends.
            let made = pool.apply(new_queue, 3).unwrap();
            pool.terminate();
            pool.join_timeout(LONG).unwrap();
            drop(pool);
            for x in 0..3 {
                assert_eq!(made.get_timeout(LONG).unwrap(), x, "{m}");
            }
            // It still works, in the parent and in the workers of a new pool.
            let pool2 = self::pool(ctx, 2);
            made.put(99).unwrap();
            assert_eq!(pool2.apply(take_from, made.clone()).unwrap(), 99, "{m}");
            let queues = pool2
                .map_with(new_queue, [1, 2, 3], &within_long())
                .unwrap();
            for (n, q) in queues.iter().enumerate() {
                for x in 0..=n as u64 {
                    assert_eq!(q.get_timeout(LONG).unwrap(), x, "{m}");
                }
                assert!(q.empty());
            }
            close_and_join(&pool2);
        });
    });
}

#[multiproc::test]
fn arrays_go_to_tasks_and_come_back_from_them() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let a = Array::<u64>::zeroed(16).unwrap();
            let items: Vec<_> = (0..16).map(|i| (a.clone(), i)).collect();
            pool.map_with(set_square, items, &within_long().chunksize(3))
                .unwrap();
            assert_eq!(
                a.to_vec().unwrap(),
                (0..16u64).map(|i| i * i).collect::<Vec<_>>(),
                "{m}"
            );
            let r = RawArray::<u64>::zeroed(16).unwrap();
            let items: Vec<_> = (0..16).map(|i| (r.clone(), i)).collect();
            pool.map_with(set_cube, items, &within_long()).unwrap();
            assert_eq!(
                r.to_vec(),
                (0..16u64).map(|i| i * i * i).collect::<Vec<_>>(),
                "{m}"
            );
            // Made in workers.
            let made = pool.apply(new_raw_array, 5).unwrap();
            assert_eq!(made.to_vec(), [100, 101, 102, 103, 104], "{m}");
            let arrays = pool.map_with(new_array, 1..6, &within_long()).unwrap();
            for (k, a) in arrays.iter().enumerate() {
                assert_eq!(a.len(), k + 1);
                assert_eq!(
                    a.to_vec().unwrap(),
                    (7..8 + k as u64).collect::<Vec<_>>(),
                    "{m}"
                );
            }
            pool.terminate();
            drop(pool);
            // They outlive the workers that made them.
            made.set(0, 5).unwrap();
            assert_eq!(made.get(0), Some(5));
            assert_eq!(arrays[4].get(4).unwrap(), 11);
        });
    });
}

#[multiproc::test]
fn connections_go_to_tasks_and_come_back_from_them() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            // The writing end of a pipe, given away: the reader sees the message, then the
            // end of file once the worker dropped it.
            let (mut rx, tx) = pipe::<u64>(false).unwrap();
            assert_eq!(pool.apply(send_on, (tx, 5)).unwrap(), 5);
            assert_eq!(rx.recv_timeout(LONG).unwrap(), 5, "{m}");
            assert!(
                matches!(rx.recv_timeout(LONG), Err(ConnectionError::Eof)),
                "{m}"
            );
            // One end of a duplex pipe: a conversation with the task.
            let (mut here, there) = pipe::<u64>(true).unwrap();
            let r = pool.apply_async(echo, there).unwrap();
            here.send(&41).unwrap();
            assert_eq!(here.recv_timeout(LONG).unwrap(), 42, "{m}");
            assert_eq!(r.get_timeout(LONG).unwrap(), 41);
            // Connections made in workers: one, and many through an imap of chunks.
            let mut c = pool.apply(pipe_with, 8).unwrap();
            assert_eq!(c.recv_timeout(LONG).unwrap(), 8, "{m}");
            let opts = within_long().chunksize(3);
            let conns: Vec<_> = pool.imap_with(pipe_with, 0..20, &opts).unwrap().collect();
            for (x, c) in conns.into_iter().enumerate() {
                let mut c = c.unwrap();
                assert_eq!(c.recv_timeout(LONG).unwrap(), x as u64, "{m}");
                assert!(matches!(c.recv_timeout(LONG), Err(ConnectionError::Eof)));
            }
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn shared_memory_made_in_a_worker_outlives_it_and_is_removed_after() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let one = pool.apply(new_shm, (4096, 7)).unwrap();
            let many = pool
                .map_with(new_shm, (0..12).map(|b| (100, b)), &within_long())
                .unwrap();
            pool.terminate();
            drop(pool);
            assert!(one.to_vec().iter().all(|&b| b == 7), "{m}");
            for (b, s) in many.iter().enumerate() {
                assert_eq!(s.to_vec()[..100], [b as u8; 100], "{m}");
            }
            let names: Vec<String> = std::iter::once(&one)
                .chain(&many)
                .map(|s| s.name().to_owned())
                .collect();
            for name in &names {
                assert!(shm_exists(name), "{m}: {name} is not in /dev/shm");
            }
            drop((one, many));
            for name in names {
                assert!(shm_gone_soon(&name), "{m}: {name} left in /dev/shm");
            }
        });
    });
}

/// The segments of `names` still in /dev/shm after up to 5 s (the tracker acts on its
/// messages within milliseconds).
fn left_in_shm<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = names
            .iter()
            .map(|n| n.as_ref().to_owned())
            .filter(|n| shm_exists(n))
            .collect();
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Shared memory made in the worker; its name goes to `names` first, and it is returned
/// once `go` is set.
fn new_shm_when((names, go): (Queue<String>, Option<Event>)) -> SharedMemory {
    let shm = SharedMemory::create(64).unwrap();
    names.put(shm.name().to_owned()).unwrap();
    if let Some(go) = go {
        assert!(go.wait_timeout(LONG));
    }
    shm
}

fn first_byte(shm: SharedMemory) -> u8 {
    shm.to_vec()[0]
}

#[multiproc::test]
fn shared_memory_in_a_result_never_taken_is_not_leaked() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        let names = Queue::new(0).unwrap();
        // Taken: the control.
        let r = pool
            .apply_async(new_shm_when, (names.clone(), None))
            .unwrap();
        let taken = r.get_timeout(LONG).unwrap();
        let name = names.get_timeout(LONG).unwrap();
        assert_eq!(taken.name(), name);
        drop(taken);
        assert_eq!(left_in_shm(&[&name]), [""; 0], "even a taken result leaks");
        // Ready, but dropped without a get.
        let r = pool
            .apply_async(new_shm_when, (names.clone(), None))
            .unwrap();
        assert!(r.wait_timeout(LONG));
        let name = names.get_timeout(LONG).unwrap();
        assert!(shm_exists(&name));
        drop(r);
        assert_eq!(
            left_in_shm(&[&name]),
            [""; 0],
            "the result of a dropped AsyncResult stays in /dev/shm"
        );
        close_and_join(&pool);
    });
}

#[multiproc::test]
fn shared_memory_in_a_result_whose_handle_was_dropped_first_is_not_leaked() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let names = Queue::new(0).unwrap();
        let go = Event::new().unwrap();
        let r = pool
            .apply_async(new_shm_when, (names.clone(), Some(go.clone())))
            .unwrap();
        let name = names.get_timeout(LONG).unwrap();
        drop(r);
        go.set();
        // The pool has the result (and threw it away) once the work is all done.
        close_and_join(&pool);
        assert_eq!(
            left_in_shm(&[&name]),
            [""; 0],
            "the result of a task whose handle was dropped stays in /dev/shm"
        );
    });
}

#[multiproc::test]
fn shared_memory_in_the_results_of_a_dropped_imap_is_not_leaked() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        let names = Queue::new(0).unwrap();
        let items: Vec<_> = (0..8).map(|_| (names.clone(), None)).collect();
        let opts = within_long().in_flight(8);
        let mut it = pool.imap_with(new_shm_when, items, &opts).unwrap();
        let first = it.next_timeout(LONG).unwrap().unwrap();
        drop(it);
        close_and_join(&pool);
        drop(first);
        let names: Vec<String> = (0..8).map(|_| names.get_timeout(LONG).unwrap()).collect();
        let left = left_in_shm(&names);
        assert!(
            left.is_empty(),
            "left in /dev/shm by a dropped imap: {left:?}"
        );
    });
}

#[multiproc::test]
fn shared_memory_in_the_arguments_of_tasks_that_never_ran_is_not_leaked() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let started = Queue::new(0).unwrap();
        let running = pool.apply_async(forever, started.clone()).unwrap();
        started.get_timeout(LONG).unwrap();
        // Queued: the first in the worker's own queue, the others in the pool's line; one
        // of those cancelled (the control).
        let mut names = Vec::new();
        let mut results = Vec::new();
        for b in 0..4u8 {
            let shm = SharedMemory::create(16).unwrap();
            shm.write(0, &[b]).unwrap();
            names.push(shm.name().to_owned());
            results.push(pool.apply_async(first_byte, shm).unwrap());
        }
        assert!(results[3].cancel());
        assert_eq!(
            left_in_shm(&names[3..]),
            [""; 0],
            "a cancelled task's argument leaks"
        );
        pool.terminate();
        pool.join_timeout(LONG).unwrap();
        for r in &results[..3] {
            assert!(r.get_timeout(LONG).is_err());
        }
        drop((running, results, pool));
        let left = left_in_shm(&names);
        assert!(
            left.is_empty(),
            "arguments of unrun tasks left in /dev/shm: {left:?}"
        );
    });
}

/// Counts its runs in the first byte of `shm`; aborts its worker on the first.
fn crash_once_shm(shm: SharedMemory) -> u8 {
    let runs = shm.to_vec()[0] + 1;
    shm.write(0, &[runs]).unwrap();
    if runs == 1 {
        std::process::abort();
    }
    runs
}

/// The control of the leak tests above: arguments of tasks retried after a crash, and of
/// tasks whose retries ran out, leave /dev/shm once the program lets go of them.
#[multiproc::test]
fn shared_memory_in_the_arguments_of_retried_tasks_is_not_leaked() {
    bounded(|| {
        let pool = Pool::builder()
            .processes(1)
            .context(ctx("fork"))
            .retry(Retry::new(2))
            .build()
            .unwrap();
        let retried = SharedMemory::create(8).unwrap();
        assert_eq!(pool.apply(crash_once_shm, retried.clone()).unwrap(), 2);
        let once = Pool::builder()
            .processes(1)
            .context(ctx("fork"))
            .build()
            .unwrap();
        let failed = SharedMemory::create(8).unwrap();
        assert!(once.apply(crash_once_shm, failed.clone()).is_err());
        let names = [retried.name().to_owned(), failed.name().to_owned()];
        assert_eq!(failed.to_vec()[0], 1);
        drop((retried, failed));
        close_and_join(&pool);
        close_and_join(&once);
        assert_eq!(left_in_shm(&names), [""; 0]);
    });
}

/// Tells it is about to return, then returns `x`.
fn tell_and_return((told, x): (Queue<u32>, u64)) -> u64 {
    told.put(std::process::id()).unwrap();
    x
}

/// `cancel` says whether it cancelled: when it says yes, the result is `Cancelled`, and when
/// the result is a value, `cancelled()` says no.
#[multiproc::test]
fn cancel_agrees_with_the_result_when_the_task_just_finished() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let told = Queue::new(0).unwrap();
        let mut disagreements = Vec::new();
        for x in 0..100 {
            let r = pool
                .apply_async(tell_and_return, (told.clone(), x))
                .unwrap();
            if told.get_timeout(LONG).is_err() {
                panic!(
                    "task {x} did not run: {:?}",
                    r.get_timeout(Duration::from_secs(1))
                );
            }
            // The task has returned or is about to: its result is on its way.
            let said = r.cancel();
            let got = r.get_timeout(LONG);
            match (said, &got) {
                (true, Err(TaskError::Cancelled)) => {}
                (false, Ok(v)) if *v == x && !r.cancelled() => {}
                _ => disagreements.push(format!(
                    "cancel() = {said}, cancelled() = {}, get = {got:?}",
                    r.cancelled()
                )),
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} of 100 disagree ({} workers were killed for it): {:?}",
            disagreements.len(),
            pool.worker_stats().len() - 1,
            &disagreements[..disagreements.len().min(3)]
        );
        close_and_join(&pool);
    });
}

fn big((len, byte): (usize, u8)) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![byte; len])
}

fn sum_bytes(b: serde_bytes::ByteBuf) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

/// Arguments and results larger than the pool's queues' rings.
#[multiproc::test]
fn large_arguments_and_results_pass() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let len = 3 << 20;
            let v = pool
                .map_with(big, (1..=6).map(|b| (len, b)), &within_long())
                .unwrap();
            for (b, x) in v.iter().enumerate() {
                assert!(x.len() == len && x.iter().all(|&y| y == b as u8 + 1), "{m}");
            }
            let sums = pool.map_with(sum_bytes, v, &within_long()).unwrap();
            assert_eq!(
                sums,
                (1..=6).map(|b| b * len as u64).collect::<Vec<_>>(),
                "{m}"
            );
            close_and_join(&pool);
        });
    });
}

// -------------------------------------------------------------------------------------------
// 6. Futures

/// Wakes the thread that waits in [`block_on`], counting the wakes.
struct Unpark {
    thread: std::thread::Thread,
    wakes: AtomicUsize,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Runs a future to its end on this thread, parking between polls; fails if it is not done
/// within [`LONG`]. Returns its output and how many times it was woken.
fn block_on<F: Future>(f: F) -> (F::Output, usize) {
    let (v, wakes) = block_on_with(&Unpark::here(), LONG, f);
    (v.expect("the future was never woken within LONG"), wakes)
}

impl Unpark {
    /// A waker of the calling thread.
    fn here() -> Arc<Self> {
        Arc::new(Self {
            thread: std::thread::current(),
            wakes: AtomicUsize::new(0),
        })
    }
}

/// [`block_on`] with a given waker (of this thread) and time limit: `None` if the future was
/// not done in time.
fn block_on_with<F: Future>(
    unpark: &Arc<Unpark>,
    limit: Duration,
    f: F,
) -> (Option<F::Output>, usize) {
    let waker = Waker::from(unpark.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = pin!(f);
    let end = Instant::now() + limit;
    loop {
        let seen = unpark.wakes.load(Ordering::SeqCst);
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return (Some(v), unpark.wakes.load(Ordering::SeqCst));
        }
        // Park until woken (a park may also end early: then poll again).
        while unpark.wakes.load(Ordering::SeqCst) == seen {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return (None, unpark.wakes.load(Ordering::SeqCst));
            };
            std::thread::park_timeout(left);
        }
    }
}

/// Awaits all of several futures at once, in one task.
struct JoinAll<F: Future + Unpin> {
    futures: Vec<Option<F>>,
    out: Vec<Option<F::Output>>,
    /// The order in which they finished (shared, for a thread that watches).
    order: Arc<Mutex<Vec<usize>>>,
}

fn join_all<F: Future + Unpin>(futures: Vec<F>, order: Arc<Mutex<Vec<usize>>>) -> JoinAll<F> {
    let n = futures.len();
    JoinAll {
        futures: futures.into_iter().map(Some).collect(),
        out: (0..n).map(|_| None).collect(),
        order,
    }
}

impl<F: Future + Unpin> Future for JoinAll<F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        for (i, slot) in this.futures.iter_mut().enumerate() {
            if let Some(f) = slot {
                if let Poll::Ready(v) = Pin::new(f).poll(cx) {
                    this.out[i] = Some(v);
                    this.order.lock().unwrap().push(i);
                    *slot = None;
                }
            }
        }
        if this.futures.iter().all(Option::is_none) {
            let out = this.out.iter_mut().map(|o| o.take().unwrap()).collect();
            Poll::Ready(out)
        } else {
            Poll::Pending
        }
    }
}

/// A future that says (once) when its first poll found it pending.
struct OnPending<F> {
    inner: F,
    tell: Option<mpsc::Sender<()>>,
}

impl<F: Future + Unpin> Future for OnPending<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let p = Pin::new(&mut self.inner).poll(cx);
        if p.is_pending() {
            if let Some(tell) = self.tell.take() {
                let _ = tell.send(());
            }
        }
        p
    }
}

/// Waits for `go` then returns `x`.
fn when_set((x, go): (u64, Event)) -> u64 {
    assert!(go.wait_timeout(LONG));
    x
}

/// Submits `n` tasks `when_set(x)`, each held until its own event (the first returned) is set.
fn submit_gated(pool: &Pool, n: u64) -> (Vec<Event>, Vec<AsyncResult<u64>>) {
    let events: Vec<Event> = (0..n).map(|_| Event::new().unwrap()).collect();
    let futs = (0..n)
        .map(|x| {
            pool.submit(when_set, (x, events[x as usize].clone()))
                .unwrap()
        })
        .collect();
    (events, futs)
}

#[multiproc::test]
fn an_async_result_is_a_future_under_every_start_method() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let (v, _) = block_on(pool.submit(square, 7).unwrap());
            assert_eq!(v.unwrap(), 49, "{m}");
            // One that is not ready at its first poll is woken.
            let go = Event::new().unwrap();
            let (tell, pending) = mpsc::channel();
            let fut = OnPending {
                inner: pool.submit(when_set, (5, go.clone())).unwrap(),
                tell: Some(tell),
            };
            let setter = {
                let go = go.clone();
                std::thread::spawn(move || {
                    pending.recv_timeout(LONG).unwrap();
                    go.set();
                })
            };
            let (v, wakes) = block_on(fut);
            setter.join().unwrap();
            assert_eq!(v.unwrap(), 5, "{m}");
            assert!(wakes >= 1, "{m}");
            // A worker's death comes through the future.
            let pid = RawValue::new(0u32).unwrap();
            let (v, _) = block_on(pool.submit(die_by, (Death::Abort, pid.clone())).unwrap());
            match v {
                Err(TaskError::WorkerDied { pid: p, .. }) => assert_eq!(p, pid.get(), "{m}"),
                other => panic!("{m}: {other:?}"),
            }
            close_and_join(&pool);
        });
    });
}

/// Polls an `AsyncResult`; once the result's callback has begun, a pending poll lets the
/// callback end.
struct PollDuringCallback {
    inner: AsyncResult<u64>,
    callback_began: Arc<AtomicBool>,
    let_it_end: Option<mpsc::Sender<()>>,
}

impl Future for PollDuringCallback {
    type Output = Result<u64, TaskError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<u64, TaskError>> {
        let began = self.callback_began.load(Ordering::SeqCst);
        let p = Pin::new(&mut self.inner).poll(cx);
        if p.is_pending() && began {
            if let Some(tx) = self.let_it_end.take() {
                let _ = tx.send(());
            }
        }
        p
    }
}

/// A future of a result with a callback, polled while the callback runs, is woken when the
/// result is complete.
#[multiproc::test]
fn a_future_polled_while_its_callback_runs_is_woken_after() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let unpark = Unpark::here();
        let began = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (b, u) = (began.clone(), unpark.clone());
        let r = pool
            .apply_async_with(
                square,
                3,
                move |_| {
                    b.store(true, Ordering::SeqCst);
                    // Make the executor poll now, while this callback runs...
                    u.wake_by_ref();
                    // ... and end once it has (a poll then finds the result not complete).
                    rx.recv_timeout(LONG).unwrap();
                },
                |e| panic!("{e}"),
            )
            .unwrap();
        let fut = PollDuringCallback {
            inner: r,
            callback_began: began,
            let_it_end: Some(tx),
        };
        let (v, wakes) = block_on_with(&unpark, Duration::from_secs(5), fut);
        assert!(
            v.is_some(),
            "the future was never woken after its callback ended ({wakes} wakes)"
        );
        assert_eq!(v.unwrap().unwrap(), 9);
        close_and_join(&pool);
    });
}

#[multiproc::test]
fn several_futures_awaited_at_once_in_one_thread_finish_in_their_order() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 4);
        let (events, futs) = submit_gated(&pool, 4);
        let finished = Arc::new(Mutex::new(Vec::new()));
        let all = join_all(futs, finished.clone());
        // Another thread releases them in the order 2, 0, 3, 1, each once the executor has
        // seen the one before finish.
        let release = [2usize, 0, 3, 1];
        let ((v, wakes), order) = std::thread::scope(|s| {
            let events = &events;
            let seen = finished.clone();
            s.spawn(move || {
                for (k, &i) in release.iter().enumerate() {
                    events[i].set();
                    eventually("the executor sees the task finish", || {
                        seen.lock().unwrap().len() > k
                    });
                }
            });
            let got = block_on(all);
            (got, finished.lock().unwrap().clone())
        });
        let v: Vec<u64> = v.into_iter().map(Result::unwrap).collect();
        assert_eq!(v, [0, 1, 2, 3]);
        assert_eq!(order, release);
        // Woken, and not polled in a busy loop. (Not necessarily once per release: a task that
        // finishes while the executor is still polling after the previous wake is seen in that
        // same poll, with no wake of its own.)
        assert!((1..=40).contains(&wakes), "{wakes} wakes");
        close_and_join(&pool);
    });
}

#[multiproc::test]
fn wait_and_as_completed_follow_the_tasks_as_they_finish() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 3);
        let (events, futs) = submit_gated(&pool, 3);
        // Nothing finished: a short wait says so.
        let w = wait(
            &futs,
            Some(Duration::from_millis(50)),
            ReturnWhen::FirstCompleted,
        );
        assert_eq!((w.done.len(), w.not_done.len()), (0, 3));
        // as_completed yields them in the order they are released.
        let mut it = as_completed(&futs, Some(LONG));
        for i in [2usize, 0, 1] {
            events[i].set();
            let f = it.next().unwrap().unwrap();
            assert_eq!(f.get_timeout(LONG).unwrap(), i as u64);
        }
        assert!(it.next().is_none());
        // FirstCompleted, FirstException, AllCompleted.
        let go = Event::new().unwrap();
        let futs = vec![
            pool.submit(when_set, (0, go.clone())).unwrap(),
            pool.submit(square, 3).unwrap(),
        ];
        let w = wait(&futs, Some(LONG), ReturnWhen::FirstCompleted);
        assert_eq!((w.done, w.not_done), (vec![1], vec![0]));
        let failing = vec![
            pool.submit(when_set, (0, go.clone())).unwrap(),
            pool.submit(|x: u64| -> u64 { panic!("bad {x}") }, 1)
                .unwrap(),
        ];
        let w = wait(&failing, Some(LONG), ReturnWhen::FirstException);
        assert_eq!((w.done, w.not_done), (vec![1], vec![0]));
        go.set();
        let w = wait(&futs, Some(LONG), ReturnWhen::AllCompleted);
        assert_eq!((w.done, w.not_done), (vec![0, 1], vec![]));
        // as_completed with a timeout: the one that never finishes gives one Timeout.
        let never = Event::new().unwrap();
        let futs = vec![
            pool.submit(square, 4).unwrap(),
            pool.submit(when_set, (0, never.clone())).unwrap(),
        ];
        assert!(futs[0].wait_timeout(LONG));
        let got: Vec<_> = as_completed(&futs, Some(Duration::from_millis(300))).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].is_ok());
        assert!(matches!(got[1], Err(TaskError::Timeout)));
        futs[1].cancel();
        pool.terminate();
    });
}

#[multiproc::test]
fn wait_and_as_completed_take_results_of_several_pools() {
    bounded(|| {
        let a = pool(&ctx("fork"), 1);
        let b = pool(&ctx("forkserver"), 1);
        let go = Event::new().unwrap();
        let futs = vec![
            a.submit(when_set, (1, go.clone())).unwrap(),
            b.submit(square, 5).unwrap(),
        ];
        let w = wait(&futs, Some(LONG), ReturnWhen::FirstCompleted);
        assert_eq!((w.done, w.not_done), (vec![1], vec![0]));
        let mut it = as_completed(&futs, Some(LONG));
        assert_eq!(it.next().unwrap().unwrap().get_timeout(LONG).unwrap(), 25);
        go.set();
        assert_eq!(it.next().unwrap().unwrap().get_timeout(LONG).unwrap(), 1);
        assert!(it.next().is_none());
        close_and_join(&a);
        close_and_join(&b);
    });
}

#[multiproc::test]
fn shutdown_waits_or_cancels_and_refuses_new_futures() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            // shutdown(wait=true, cancel_futures=false): everything runs.
            let pool = pool(ctx, 2);
            let futs: Vec<_> = (0..20).map(|x| pool.submit(square, x).unwrap()).collect();
            pool.shutdown(true, false).unwrap();
            for (x, f) in futs.into_iter().enumerate() {
                assert_eq!(f.get_timeout(LONG).unwrap(), (x * x) as u64, "{m}");
            }
            let e = pool.submit(square, 1).unwrap_err();
            assert_eq!(e.to_string(), "cannot schedule new futures after shutdown");
            assert!(matches!(
                pool.map(square, 0..3),
                Err(TaskError::Pool(PoolError::Shutdown))
            ));
            // shutdown(wait=false, cancel_futures=true): the running ones finish, the
            // waiting ones are cancelled.
            let pool = self::pool(ctx, 1);
            let started = Queue::new(0).unwrap();
            let go = Event::new().unwrap();
            let running = pool.submit(hold, (started.clone(), go.clone())).unwrap();
            let pid = started.get_timeout(LONG).unwrap();
            let waiting: Vec<_> = (0..30).map(|x| pool.submit(square, x).unwrap()).collect();
            pool.shutdown(false, true).unwrap();
            assert!(matches!(pool.submit(square, 1), Err(PoolError::Shutdown)));
            go.set();
            assert_eq!(running.get_timeout(LONG).unwrap(), pid, "{m}");
            let mut cancelled = 0;
            for (x, f) in waiting.iter().enumerate() {
                match f.get_timeout(LONG) {
                    Ok(v) => assert_eq!(v, (x * x) as u64),
                    Err(TaskError::Cancelled) => cancelled += 1,
                    Err(e) => panic!("{m}: {e:?}"),
                }
            }
            // At most the worker's own queue (a few tasks) escaped the cancelling.
            assert!(cancelled >= 25, "{m}: only {cancelled} cancelled");
            pool.join_timeout(LONG).unwrap();
        });
    });
}

#[multiproc::test]
fn a_callback_may_submit_more_work_to_its_pool() {
    bounded(|| {
        let pool = Arc::new(pool(&ctx("fork"), 2));
        let (tx, rx) = mpsc::channel();
        let p = pool.clone();
        let r = pool
            .apply_async_with(
                square,
                3,
                move |v: &u64| {
                    let next = p.apply_async(square, *v).unwrap();
                    tx.send(next).unwrap();
                },
                |e| panic!("{e}"),
            )
            .unwrap();
        assert_eq!(r.get_timeout(LONG).unwrap(), 9);
        let next = rx.recv_timeout(LONG).unwrap();
        assert_eq!(next.get_timeout(LONG).unwrap(), 81);
        close_and_join(&pool);
    });
}

/// The last handle of a pool, held by a callback, is dropped on the pool's own thread when
/// the callback ends: the pool terminates without hanging.
#[multiproc::test]
fn a_pool_whose_last_handle_a_callback_drops_ends_cleanly() {
    bounded(|| {
        let pool = Arc::new(pool(&ctx("fork"), 2));
        let pids = pool.pids();
        let started = Queue::new(0).unwrap();
        let go = Event::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let keep = pool.clone();
        let r = pool
            .apply_async_with(
                hold,
                (started.clone(), go.clone()),
                move |_| {
                    let _last = keep;
                    tx.send(()).unwrap();
                },
                |e| panic!("{e}"),
            )
            .unwrap();
        started.get_timeout(LONG).unwrap();
        drop(pool);
        go.set();
        rx.recv_timeout(LONG).unwrap();
        assert!(r.get_timeout(LONG).is_ok());
        eventually("the workers of the dropped pool end", || {
            pids.iter().all(|&p| ended(p))
        });
    });
}

// -------------------------------------------------------------------------------------------
// 7. Lazy input

#[multiproc::test]
fn imap_over_an_endless_iterator_reads_only_a_window_ahead() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            for (chunksize, window) in [(1usize, 4usize), (3, 5), (1, 1)] {
                let read = Arc::new(AtomicUsize::new(0));
                let counter = read.clone();
                let input = (0u64..).inspect(move |_| {
                    counter.fetch_add(1, Ordering::Relaxed);
                });
                let opts = within_long().chunksize(chunksize).in_flight(window);
                let mut it = pool.imap_with(square, input, &opts).unwrap();
                // Nothing is read before the first item is asked for.
                assert_eq!(read.load(Ordering::Relaxed), 0, "{m}");
                let n = 100;
                for x in 0..n as u64 {
                    assert_eq!(it.next_timeout(LONG).unwrap().unwrap(), x * x, "{m}");
                    let r = read.load(Ordering::Relaxed);
                    let bound = (x as usize / chunksize + window) * chunksize;
                    assert!(r <= bound, "{m}: read {r} items to give {}", x + 1);
                }
                drop(it);
                assert!(read.load(Ordering::Relaxed) >= n);
            }
            // The default window, with `repeat`, unordered.
            let read = Arc::new(AtomicUsize::new(0));
            let counter = read.clone();
            let input = std::iter::repeat(3u64).inspect(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            });
            let got: Vec<u64> = pool
                .imap_unordered(square, input)
                .unwrap()
                .take(50)
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, [9; 50]);
            let r = read.load(Ordering::Relaxed);
            assert!(r <= 50 + 64 * 2, "{m}: read {r}");
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn dropping_an_imap_early_does_not_hang_and_the_pool_goes_on() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let opts = within_long().in_flight(8);
            let mut it = pool.imap_with(nap_item, 0.., &opts).unwrap();
            for x in 0..5 {
                assert_eq!(it.next_timeout(LONG).unwrap().unwrap(), x);
            }
            drop(it);
            let mut u = pool.imap_unordered_with(nap_item, 0.., &opts).unwrap();
            assert!(u.next_timeout(LONG).unwrap().is_ok());
            drop(u);
            // Dropped before its first item.
            drop(pool.imap(square, 0..).unwrap());
            assert_eq!(pool.apply(square, 6).unwrap(), 36, "{m}");
            let v = pool.map_with(square, 0..10, &within_long()).unwrap();
            assert_eq!(v.len(), 10);
            close_and_join(&pool);
        });
    });
}

#[multiproc::test]
fn a_long_imap_runs_in_bounded_memory() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let opts = within_long().chunksize(50).in_flight(4);
        let mut total = 0u64;
        let mut it = pool
            .imap_unordered_with(
                square,
                (0..40_000u64).inspect(move |_| {
                    counter.fetch_add(1, Ordering::Relaxed);
                }),
                &opts,
            )
            .unwrap();
        let mut taken = 0;
        while let Some(v) = it.next_timeout(LONG) {
            total += v.unwrap();
            taken += 1;
            // Chunks of 50: never more than 4 chunks beyond what was taken, plus the one
            // being taken apart.
            let r = read.load(Ordering::Relaxed);
            assert!(r <= taken + 50 * 5, "read {r} having taken {taken}");
        }
        assert_eq!(taken, 40_000);
        assert_eq!(total, (0..40_000u64).map(|x| x * x).sum::<u64>());
        drop(it);
        close_and_join(&pool);
    });
}

#[multiproc::test]
fn an_input_iterator_that_panics_or_uses_the_pool_leaves_it_working() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        // The input panics after 10 items: the panic is the caller's, and the pool goes on.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let input = (0u64..).inspect(|&x| assert!(x < 10, "the input gives out at {x}"));
            let mut it = pool
                .imap_with(square, input, &within_long().in_flight(4))
                .unwrap();
            while let Some(r) = it.next_timeout(LONG) {
                r.unwrap();
            }
        }));
        assert!(caught.is_err());
        assert_eq!(pool.apply(square, 4).unwrap(), 16);
        // The input itself runs tasks on the same pool.
        let input = (0..20u64).map(|x| pool.apply(square, x).unwrap());
        let v: Vec<u64> = pool
            .imap_with(square, input, &within_long().in_flight(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(v, (0..20u64).map(|x| x.pow(4)).collect::<Vec<_>>());
        close_and_join(&pool);
    });
}

// -------------------------------------------------------------------------------------------
// 8. Progress

fn maybe_panic(x: u64) -> u64 {
    assert!(x % 10 != 3, "item {x}");
    x
}

#[multiproc::test]
fn progress_bars_reach_the_item_count_with_known_and_unknown_lengths() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        // A known length.
        let bar = ProgressBar::hidden();
        let opts = within_long().progress_bar(bar.clone());
        pool.map_with(square, 0..100, &opts).unwrap();
        assert_eq!((bar.position(), bar.length()), (100, Some(100)));
        assert!(bar.is_finished());
        // An unknown length (filter gives no exact size hint), through imap and map.
        let bar = ProgressBar::hidden();
        let opts = within_long().chunksize(7).progress_bar(bar.clone());
        let n = pool
            .imap_with(square, (0..300).filter(|x| x % 3 == 0), &opts)
            .unwrap()
            .count();
        assert_eq!(n, 100);
        assert_eq!((bar.position(), bar.length()), (100, None));
        assert!(bar.is_finished());
        let bar = ProgressBar::hidden();
        let opts = within_long().chunksize(7).progress_bar(bar.clone());
        let v = pool
            .map_with(square, (0..300).filter(|x| x % 3 == 0), &opts)
            .unwrap();
        assert_eq!(v.len(), 100);
        assert_eq!(bar.position(), 100);
        // Failed items count as finished.
        let bar = ProgressBar::hidden();
        let opts = within_long().chunksize(4).progress_bar(bar.clone());
        let got: Vec<_> = pool
            .imap_unordered_with(maybe_panic, 0..50, &opts)
            .unwrap()
            .collect();
        assert_eq!(got.iter().filter(|r| r.is_err()).count(), 5);
        assert_eq!((bar.position(), bar.length()), (50, Some(50)));
        close_and_join(&pool);
    });
}

// -------------------------------------------------------------------------------------------
// 9. Dropping and terminating

#[multiproc::test]
fn dropping_a_busy_pool_is_prompt_leaves_no_worker_and_fails_held_results() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let started = Queue::new(0).unwrap();
            let running: Vec<_> = (0..2)
                .map(|_| pool.apply_async(forever, started.clone()).unwrap())
                .collect();
            let waiting: Vec<_> = (0..50)
                .map(|x| pool.apply_async(square, x).unwrap())
                .collect();
            for _ in 0..2 {
                started.get_timeout(LONG).unwrap();
            }
            let pids = pool.pids();
            // A thread blocked in get (no timeout) is released too.
            let blocked = pool.apply_async(square, 1000).unwrap();
            let late = pool.submit(square, 1001).unwrap();
            let (tx, rx) = mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let _ = tx.send(running[0].get());
                running
            });
            let t = Instant::now();
            drop(pool);
            let took = t.elapsed();
            assert!(took < Duration::from_secs(5), "{m}: dropping took {took:?}");
            for &pid in &pids {
                assert!(ended(pid), "{m}: worker {pid} still runs after the drop");
            }
            let got = rx
                .recv_timeout(LONG)
                .expect("a blocked get was not released");
            assert!(
                matches!(got, Err(TaskError::Pool(PoolError::Terminated))),
                "{m}: {got:?}"
            );
            let running = waiter.join().unwrap();
            assert!(matches!(
                running[1].get_timeout(LONG),
                Err(TaskError::Pool(PoolError::Terminated))
            ));
            // Both workers ran forever: nothing waiting could finish.
            for w in waiting.iter().chain([&blocked]) {
                let r = w.get_timeout(LONG);
                assert!(
                    matches!(r, Err(TaskError::Pool(PoolError::Terminated))),
                    "{m}: {r:?}"
                );
            }
            // A future awaited after the drop ends at once.
            let (v, _) = block_on(late);
            assert!(
                matches!(v, Err(TaskError::Pool(PoolError::Terminated))),
                "{m}: {v:?}"
            );
            eventually("the workers are reaped", || {
                pids.iter().all(|&p| proc_state(p).is_none())
            });
        });
    });
}

#[multiproc::test]
fn terminate_fails_unfinished_work_calls_error_callbacks_and_joins() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let started = Queue::new(0).unwrap();
            let (tx, rx) = mpsc::channel();
            let r = pool
                .apply_async_with(
                    forever,
                    started.clone(),
                    |_| panic!("a task that never ends succeeded"),
                    move |e| tx.send(e.to_string()).unwrap(),
                )
                .unwrap();
            let map = pool.map_async(sleep_ms, [0, 5000, 5000, 5000]).unwrap();
            started.get_timeout(LONG).unwrap();
            let pids = pool.pids();
            pool.terminate();
            assert_eq!(
                rx.recv_timeout(LONG).unwrap(),
                "the pool was terminated before the task finished"
            );
            assert!(matches!(
                r.get_timeout(LONG),
                Err(TaskError::Pool(PoolError::Terminated))
            ));
            assert!(matches!(
                map.get_timeout(LONG),
                Err(TaskError::Pool(PoolError::Terminated))
            ));
            assert!(matches!(
                pool.apply_async(square, 1),
                Err(PoolError::NotRunning)
            ));
            pool.join_timeout(LONG).unwrap();
            for &pid in &pids {
                assert!(ended(pid), "{m}: worker {pid} survived terminate + join");
            }
            assert!(pool.pids().is_empty(), "{m}: {:?}", pool.pids());
        });
    });
}

#[multiproc::test]
fn terminate_from_another_thread_ends_a_running_map() {
    bounded(|| {
        each_method(|ctx| {
            let m = ctx.start_method();
            let pool = pool(ctx, 2);
            let started = Queue::new(0).unwrap();
            let got = std::thread::scope(|s| {
                // A map of two tasks that never end (a map has no timeout here).
                let mapper = s.spawn(|| {
                    let opts = MapOptions::new().chunksize(1);
                    pool.map_with(forever, vec![started.clone(); 2], &opts)
                });
                for _ in 0..2 {
                    started.get_timeout(LONG).unwrap();
                }
                pool.terminate();
                mapper.join().unwrap()
            });
            assert!(
                matches!(got, Err(TaskError::Pool(PoolError::Terminated))),
                "{m}: {got:?}"
            );
            pool.join_timeout(LONG).unwrap();
        });
    });
}

/// Builds a pool of 2 under `method`, sends its workers' pids, and waits to be killed.
fn pool_owner((method, pids): (String, Queue<Vec<u32>>)) {
    let pool = pool(&ctx(&method), 2);
    assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
    pids.put(pool.pids()).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A pool whose owner is killed with SIGKILL leaves no worker behind (CPython's do).
#[multiproc::test]
fn the_workers_end_when_the_pools_owner_is_killed() {
    bounded(|| {
        for method in METHODS {
            let pids = Queue::new(0).unwrap();
            let mut owner = ctx("fork")
                .process(pool_owner, (method.to_owned(), pids.clone()))
                .daemon(true);
            owner.start().unwrap();
            let workers = pids.get_timeout(LONG).unwrap();
            assert_eq!(workers.len(), 2);
            owner.kill().unwrap();
            assert!(owner.join_timeout(LONG).unwrap());
            eventually(
                &format!("{method}: the workers of a killed owner end"),
                || workers.iter().all(|&p| ended(p)),
            );
        }
    });
}

/// The forkserver is killed under a forkserver pool: the pool replaces its workers through a
/// new one. Run in a process of its own, since the forkserver is the whole program's.
#[multiproc::test]
fn a_forkserver_pool_survives_the_death_of_the_forkserver() {
    common::run_own_ignored_test("forkserver_pool_after_forkserver_death", b"");
}

/// The parent process of `pid`.
fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[multiproc::test]
#[ignore = "run by a_forkserver_pool_survives_the_death_of_the_forkserver in its own process"]
fn forkserver_pool_after_forkserver_death() {
    bounded(|| {
        let pool = pool(&ctx("forkserver"), 2);
        assert_eq!(
            pool.map_with(square, 0..10, &within_long()).unwrap().len(),
            10
        );
        let workers = pool.pids();
        let server = ppid(workers[0]);
        assert_ne!(server, std::process::id());
        assert!(sigkill(server));
        // Its workers go on, or end with it: either way the pool must get back to two.
        let victim = workers[1];
        sigkill(victim);
        let mut results = Vec::new();
        for x in 0..20 {
            results.push(pool.apply_async(square, x).unwrap());
        }
        for (x, r) in results.into_iter().enumerate() {
            match r.get_timeout(LONG) {
                Ok(v) => assert_eq!(v, (x * x) as u64),
                Err(TaskError::WorkerDied { .. }) => {}
                Err(e) => panic!("after the forkserver died: {e:?}"),
            }
        }
        let end = Instant::now() + LONG;
        loop {
            let pids = pool.pids();
            if pids.len() == 2 && !pids.contains(&victim) && pids.iter().all(|p| !ended(*p)) {
                break;
            }
            assert!(
                Instant::now() < end,
                "the pool never got its workers back: {pids:?} (stats {:?})",
                pool.worker_stats()
            );
            std::thread::sleep(Duration::from_millis(5));
            // The pool learns of deaths only as it works.
            let _ = pool.apply_async(square, 1).unwrap().get_timeout(LONG);
        }
        assert_eq!(
            pool.map_with(square, 0..50, &within_long()).unwrap().len(),
            50
        );
        close_and_join(&pool);
    });
}

/// `join_timeout` that runs out kills the workers left, as its documentation says.
#[multiproc::test]
fn join_timeout_that_runs_out_kills_the_workers_left() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 1);
        let started = Queue::new(0).unwrap();
        let r = pool.apply_async(forever, started.clone()).unwrap();
        let pid = started.get_timeout(LONG).unwrap();
        pool.close();
        assert!(matches!(
            pool.join_timeout(LIMIT),
            Err(PoolError::JoinTimeout)
        ));
        let end = Instant::now() + LONG / 4;
        while !ended(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let alive = !ended(pid);
        let result = r.get_timeout(Duration::from_millis(1));
        drop(pool);
        assert!(
            !alive,
            "worker {pid} still runs {:?} after join_timeout ran out (its task: {result:?})",
            LONG / 4
        );
    });
}

/// Builds a pool of 2 under `method` inside a pool worker, sends its workers' pids, and
/// blocks on it for good.
fn nested_forever((method, pids): (String, Queue<Vec<u32>>)) -> u64 {
    let inner = pool(&ctx(&method), 2);
    assert_eq!(inner.map(square, 0..10).unwrap().len(), 10);
    pids.put(inner.pids()).unwrap();
    let started = Queue::new(0).unwrap();
    inner.apply(forever, started).unwrap().into()
}

/// A pool in a pool worker: when the outer task runs out of time and its worker is killed,
/// the inner pool's workers end too.
#[multiproc::test]
fn a_nested_pools_workers_end_with_the_killed_worker_that_owns_it() {
    bounded(|| {
        let outer = pool(&ctx("fork"), 1);
        for method in METHODS {
            let pids = Queue::new(0).unwrap();
            let r = outer
                .apply_async_timeout(
                    nested_forever,
                    (method.to_owned(), pids.clone()),
                    Duration::from_secs(3),
                )
                .unwrap();
            let inner = pids.get_timeout(LONG).unwrap();
            assert!(
                matches!(r.get_timeout(LONG), Err(TaskError::TimeLimit { .. })),
                "{method}"
            );
            eventually(
                &format!("{method}: the nested pool's workers end with their owner"),
                || inner.iter().all(|&p| ended(p)),
            );
        }
        close_and_join(&outer);
    });
}

/// More connections than one message can carry, as a result and as an argument: a clear
/// error, and the pool goes on.
#[multiproc::test]
fn too_many_descriptors_give_an_error_not_a_hang() {
    bounded(|| {
        let pool = pool(&ctx("fork"), 2);
        let opts = within_long().chunksize(300);
        let got: Vec<_> = pool.imap_with(pipe_with, 0..300, &opts).unwrap().collect();
        assert_eq!(got.len(), 300);
        for (x, g) in got.into_iter().enumerate() {
            match g {
                Ok(mut c) => assert_eq!(c.recv_timeout(LONG).unwrap(), x as u64),
                // The reason (at most 253 descriptors a message) is lost on the way: postcard
                // keeps no custom message.
                Err(TaskError::Failed(message)) => {
                    assert!(message.contains("could not encode its result"), "{message}")
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        let conns: Vec<Connection<u64>> = (0..300).map(pipe_with).collect();
        match pool.apply_async(|c: Vec<Connection<u64>>| c.len(), conns) {
            Err(PoolError::Codec(e)) => assert!(e.to_string().contains("encode"), "{e}"),
            Ok(r) => assert_eq!(r.get_timeout(LONG).unwrap(), 300),
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        close_and_join(&pool);
    });
}

#[multiproc::test]
fn dropping_a_pool_right_after_building_it_is_prompt() {
    bounded(|| {
        for name in METHODS {
            let t = Instant::now();
            for _ in 0..3 {
                drop(pool(&ctx(name), 3));
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{name}: {:?}",
                t.elapsed()
            );
        }
    });
}
