//! Synchronisation primitives across real processes, ported from the language-neutral lock,
//! semaphore, condition, event and barrier tests of CPython's
//! `Lib/test/_test_multiprocessing.py` (`_TestLock`, `_TestSemaphore`, `_TestCondition`,
//! `_TestEvent`, `_TestBarrier`), with processes (and, where CPython mixes them, threads) as
//! the parties, plus what multiproc adds: a holder killed with SIGKILL, waiters whose peer was
//! killed, objects travelling as Process arguments and pipe messages, a stress count, and no
//! segment left in /dev/shm after processes are killed.
//!
//! Tests with processes run under the three start methods. Every wait is bounded, so a bug
//! fails a test instead of hanging it; the order of events is made with Events, Semaphores,
//! Barriers and pipes. A sleep appears only where a test proves that something does *not*
//! happen within a time.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

use common::procs::{LONG, each_method, finish, start};

use common::shm_exists;
use multiproc::{
    AcquireError, Barrier, BoundedSemaphore, Condition, Connection, Context, Event, Lock,
    LockGuard, Process, RLock, Semaphore, SharedMemory, SyncError, get_context, pipe,
};
use serde::{Deserialize, Serialize};

/// How long a test watches for something that must not happen.
const DELTA: Duration = Duration::from_millis(100);
/// A timeout meant to expire (CPython's TIMEOUT1..3 are 0.1 to 0.3 s).
const SHORT: Duration = Duration::from_millis(150);
/// How late a timed wait may return (a loaded 2-CPU machine; a death check is 50 ms).
const SLACK: Duration = Duration::from_millis(1500);

fn pid_of<R: serde::de::DeserializeOwned>(p: &Process<R>) -> u32 {
    p.pid().unwrap().expect("started")
}

/// The guard, whether the previous holder died or not.
fn held(lock: &Lock) -> LockGuard<'_> {
    match lock.acquire() {
        Ok(g) => g,
        Err(e) => e.into_guard().expect("acquire never times out"),
    }
}

/// Asserts that `elapsed` is `want` give or take the scheduler.
fn about(elapsed: Duration, want: Duration) {
    assert!(
        elapsed + Duration::from_millis(2) >= want && elapsed <= want + SLACK,
        "took {elapsed:?}, expected about {want:?}"
    );
}

/// Polls `cond` until it holds, for at most [`LONG`] (for states only a poll can see, such as
/// `n_waiting`).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// -------------------------------------------------------------------------------------------
// Shared counters (CPython's _DummyList): a u64 in shared memory

/// A number in shared memory behind its own lock.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Counter {
    shm: SharedMemory,
    lock: Lock,
}

impl Counter {
    fn new() -> Self {
        Self {
            shm: SharedMemory::create(8).unwrap(),
            lock: Lock::new().unwrap(),
        }
    }

    /// Adds one; returns the new value.
    fn incr(&self) -> u64 {
        let _g = held(&self.lock);
        let v = read_u64(&self.shm, 0) + 1;
        write_u64(&self.shm, 0, v);
        v
    }

    fn get(&self) -> u64 {
        let _g = held(&self.lock);
        read_u64(&self.shm, 0)
    }
}

fn read_u64(shm: &SharedMemory, at: usize) -> u64 {
    let mut b = [0u8; 8];
    shm.read(at, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn write_u64(shm: &SharedMemory, at: usize, v: u64) {
    shm.write(at, &v.to_le_bytes()).unwrap();
}

// -------------------------------------------------------------------------------------------
// Lock and RLock (_TestLock)

#[multiproc::test]
fn lock_acquire_try_release_as_cpython() {
    let lock = Lock::new().unwrap();
    let g = lock.acquire().unwrap();
    assert!(matches!(lock.try_acquire(), Err(AcquireError::Timeout)));
    drop(g);
    assert!(!lock.is_locked());
    assert_eq!(
        lock.release().unwrap_err().to_string(),
        "semaphore or lock released too many times"
    );
    // `with self.Lock(): pass`
    {
        let _g = lock.acquire().unwrap();
        assert_eq!(lock.owner().map(|o| o.0), Some(std::process::id()));
    }
    assert_eq!(lock.owner(), None);
}

#[multiproc::test]
fn rlock_counts_its_owners_acquires() {
    let lock = RLock::new().unwrap();
    let guards: Vec<_> = (0..3).map(|_| lock.acquire().unwrap()).collect();
    assert_eq!(lock.count(), 3);
    drop(guards);
    assert_eq!(lock.count(), 0);
    assert_eq!(
        lock.release().unwrap_err().to_string(),
        "attempt to release recursive lock not owned by thread"
    );
    // Another thread of the same process is not the owner.
    let _g = lock.acquire().unwrap();
    let other = lock.clone();
    let (tried, released) = std::thread::spawn(move || {
        (
            other.try_acquire().is_ok(),
            matches!(other.release(), Err(SyncError::NotOwner)),
        )
    })
    .join()
    .unwrap();
    assert!(!tried && released);
    assert_eq!(lock.count(), 1);
}

/// Tries a lock another process holds, then waits for it; returns (tried, waited).
fn try_then_wait((lock, trying): (Lock, Event)) -> (bool, bool) {
    let tried = lock.try_acquire().is_ok();
    let timed_out = matches!(
        lock.acquire_timeout(Duration::from_millis(20)),
        Err(AcquireError::Timeout)
    );
    trying.set();
    let got = lock.acquire_timeout(LONG).is_ok();
    (tried || !timed_out, got)
}

#[multiproc::test]
fn a_lock_held_by_one_process_excludes_another_until_released() {
    each_method(|ctx| {
        let lock = Lock::new().unwrap();
        let trying = Event::new().unwrap();
        let g = lock.acquire().unwrap();
        let p = start(ctx, try_then_wait, (lock.clone(), trying.clone()));
        assert!(trying.wait_timeout(LONG));
        drop(g);
        assert_eq!(finish(p), (false, true));
        assert!(!lock.is_locked());
    });
}

/// Releases a lock it does not hold (CPython allows it for a Lock).
fn release_anothers(lock: Lock) -> bool {
    lock.release().is_ok()
}

#[multiproc::test]
fn any_process_may_release_a_lock_and_a_stale_guard_then_leaves_it_alone() {
    let ctx = get_context("fork").unwrap();
    let lock = Lock::new().unwrap();
    let stale = lock.acquire().unwrap();
    assert!(finish(start(&ctx, release_anothers, lock.clone())));
    assert!(!lock.is_locked());
    // Another process takes it; the first holder's guard must not release that hold.
    let taker = Event::new().unwrap();
    let done = Event::new().unwrap();
    let p = start(
        &ctx,
        hold_until,
        (lock.clone(), taker.clone(), done.clone()),
    );
    assert!(taker.wait_timeout(LONG));
    drop(stale);
    assert!(
        lock.is_locked(),
        "a stale guard released another process's hold"
    );
    assert!(matches!(lock.try_acquire(), Err(AcquireError::Timeout)));
    done.set();
    finish(p);
}

/// Holds `lock` from `got` until `done`.
fn hold_until((lock, got, done): (Lock, Event, Event)) {
    let g = held(&lock);
    got.set();
    assert!(done.wait_timeout(LONG));
    drop(g);
}

/// S12 from the other side: tries and releases an RLock another process owns, then waits
/// for it; reports (owner pid seen, count seen, try, release error, acquired later).
fn rlock_from_elsewhere((lock, looked): (RLock, Event)) -> (u32, u32, bool, String, bool) {
    let owner = lock.owner().map_or(0, |o| o.0);
    let count = lock.count();
    let tried = lock.try_acquire().is_ok();
    let err = lock.release().unwrap_err().to_string();
    looked.set();
    let g = lock.acquire_timeout(LONG);
    let later = g.is_ok() && lock.count() == 1;
    (owner, count, tried, err, later)
}

#[multiproc::test]
fn an_rlock_belongs_to_one_process_until_released_as_often_as_acquired() {
    each_method(|ctx| {
        let lock = RLock::new().unwrap();
        let looked = Event::new().unwrap();
        let a = lock.acquire().unwrap();
        let b = lock.acquire().unwrap();
        let p = start(ctx, rlock_from_elsewhere, (lock.clone(), looked.clone()));
        assert!(looked.wait_timeout(LONG));
        drop(a);
        assert_eq!(lock.count(), 1, "still ours after one release");
        drop(b);
        let (owner, count, tried, err, later) = finish(p);
        assert_eq!(owner, std::process::id());
        assert_eq!(count, 2);
        assert!(!tried);
        assert_eq!(err, "attempt to release recursive lock not owned by thread");
        assert!(later);
    });
}

#[multiproc::test]
fn lock_timeouts_last_as_long_as_asked() {
    let lock = Lock::new().unwrap();
    let _g = lock.acquire().unwrap();
    let t = Instant::now();
    assert!(matches!(lock.try_acquire(), Err(AcquireError::Timeout)));
    assert!(t.elapsed() < SLACK);
    let t = Instant::now();
    assert!(matches!(
        lock.acquire_timeout(SHORT),
        Err(AcquireError::Timeout)
    ));
    about(t.elapsed(), SHORT);
    let r = RLock::new().unwrap();
    let _rg = r.acquire().unwrap();
    let other = r.clone();
    let t = Instant::now();
    let timed_out = std::thread::spawn(move || other.acquire_timeout(SHORT).is_err())
        .join()
        .unwrap();
    assert!(timed_out);
    about(t.elapsed(), SHORT);
}

// -------------------------------------------------------------------------------------------
// Stress: N processes x M increments under a Lock

/// Adds one `m` times to the u64 in `shm`, under `lock` (a read and a write: lost updates
/// show without mutual exclusion).
fn add_under_lock((shm, lock, rlock, m): (SharedMemory, Lock, RLock, u64)) {
    for i in 0..m {
        if i % 2 == 0 {
            let _g = held(&lock);
            let v = read_u64(&shm, 0);
            write_u64(&shm, 0, v + 1);
        } else {
            // The same count under the RLock, acquired twice.
            let _a = rlock.acquire().unwrap();
            let _b = rlock.acquire().unwrap();
            let v = read_u64(&shm, 8);
            write_u64(&shm, 8, v + 1);
        }
    }
}

#[multiproc::test]
fn n_processes_times_m_increments_under_a_lock_give_n_times_m() {
    const N: u64 = 4;
    const M: u64 = 4000;
    each_method(|ctx| {
        let shm = SharedMemory::create(16).unwrap();
        let lock = Lock::new().unwrap();
        let rlock = RLock::new().unwrap();
        let ps: Vec<_> = (0..N)
            .map(|_| {
                start(
                    ctx,
                    add_under_lock,
                    (shm.clone(), lock.clone(), rlock.clone(), M),
                )
            })
            .collect();
        // The parent takes part too, from two threads.
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let args = (shm.clone(), lock.clone(), rlock.clone(), M);
                std::thread::spawn(move || add_under_lock(args))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for p in ps {
            finish(p);
        }
        let total = read_u64(&shm, 0) + read_u64(&shm, 8);
        assert_eq!(total, (N + 2) * M, "{}", ctx.start_method().name());
        assert!(!lock.is_locked() && rlock.owner().is_none());
    });
}

// -------------------------------------------------------------------------------------------
// A holder killed with SIGKILL

/// Takes `lock`, `lock2` and (twice) `rlock`, says so, and waits to be killed.
fn hold_and_wait_to_die((lock, lock2, rlock, ready): (Lock, Lock, RLock, Event)) {
    LockGuard::forget(held(&lock));
    LockGuard::forget(held(&lock2));
    for _ in 0..2 {
        multiproc::RLockGuard::forget(rlock.acquire().unwrap());
    }
    ready.set();
    std::thread::sleep(LONG);
}

/// Takes `lock` and ends without releasing it.
fn take_and_end(lock: Lock) {
    LockGuard::forget(held(&lock));
}

/// Waits for `lock` (held by a process about to be killed); true if told the owner died.
fn wait_for_dead_owner((lock, waiting): (Lock, Event)) -> (bool, bool) {
    waiting.set();
    let r = lock.acquire_timeout(LONG);
    let died = matches!(r, Err(AcquireError::OwnerDied(_)));
    let holds = lock.owner().map(|o| o.0) == Some(std::process::id());
    drop(r);
    (died, holds)
}

#[multiproc::test]
fn a_holder_killed_with_sigkill_hands_its_locks_to_the_next_acquirer() {
    each_method(|ctx| {
        let (lock, lock2) = (Lock::new().unwrap(), Lock::new().unwrap());
        let rlock = RLock::new().unwrap();
        let ready = Event::new().unwrap();
        let holder = start(
            ctx,
            hold_and_wait_to_die,
            (lock.clone(), lock2.clone(), rlock.clone(), ready.clone()),
        );
        assert!(ready.wait_timeout(LONG));
        let holder_pid = pid_of(&holder);
        assert_eq!(lock.owner().map(|o| o.0), Some(holder_pid));
        assert_eq!(rlock.count(), 2);
        // A waiter already blocked when the holder dies.
        let waiting = Event::new().unwrap();
        let waiter = start(ctx, wait_for_dead_owner, (lock.clone(), waiting.clone()));
        assert!(waiting.wait_timeout(LONG));
        assert!(matches!(lock2.try_acquire(), Err(AcquireError::Timeout)));

        holder.kill().unwrap();
        let t = Instant::now();
        match rlock.acquire_timeout(LONG) {
            Err(AcquireError::OwnerDied(g)) => {
                assert!(t.elapsed() < SLACK, "took {:?}", t.elapsed());
                assert_eq!(rlock.count(), 1);
                assert_eq!(rlock.owner().map(|o| o.0), Some(std::process::id()));
                drop(g);
            }
            Ok(_) => panic!("acquired without being told the owner died"),
            Err(AcquireError::Timeout) => panic!("timed out behind a dead owner"),
        }
        // A non-blocking try learns it at once; so does a wait shorter than a death check.
        assert!(matches!(
            lock2.try_acquire(),
            Err(AcquireError::OwnerDied(_))
        ));
        assert!(!lock2.is_locked());
        LockGuard::forget(lock2.acquire().unwrap());
        lock2.release().unwrap();
        finish(start(ctx, take_and_end, lock2.clone()));
        assert!(matches!(
            lock2.acquire_timeout(Duration::ZERO),
            Err(AcquireError::OwnerDied(_))
        ));
        finish(start(ctx, take_and_end, lock2.clone()));
        assert!(matches!(
            lock2.acquire_timeout(Duration::from_millis(1)),
            Err(AcquireError::OwnerDied(_))
        ));
        assert_eq!(finish(waiter), (true, true));
        // Everything works normally after.
        let again = rlock.acquire();
        assert!(again.is_ok() && rlock.count() == 1);
        drop(again);
        assert_eq!(rlock.count(), 0);
        assert!(lock.acquire().is_ok());
        assert!(lock2.try_acquire().is_ok());
        let trying = Event::new().unwrap();
        let g = lock.acquire().unwrap();
        let p = start(ctx, try_then_wait, (lock.clone(), trying.clone()));
        assert!(trying.wait_timeout(LONG));
        drop(g);
        assert_eq!(finish(p), (false, true));
    });
}

// -------------------------------------------------------------------------------------------
// Semaphore and BoundedSemaphore (_TestSemaphore)

fn check_semaphore_of_two(acquire: impl Fn() -> bool, value: impl Fn() -> u32) {
    assert_eq!(value(), 2);
    assert!(acquire());
    assert_eq!(value(), 1);
    assert!(acquire());
    assert_eq!(value(), 0);
}

#[multiproc::test]
fn semaphore_counts_as_cpython() {
    let sem = Semaphore::new(2).unwrap();
    check_semaphore_of_two(|| sem.try_acquire(), || sem.get_value());
    assert!(!sem.try_acquire());
    assert_eq!(sem.get_value(), 0);
    for want in 1..=4 {
        sem.release().unwrap();
        assert_eq!(sem.get_value(), want);
    }
}

#[multiproc::test]
fn bounded_semaphore_refuses_to_pass_its_bound() {
    let sem = BoundedSemaphore::new(2).unwrap();
    check_semaphore_of_two(|| sem.try_acquire(), || sem.get_value());
    assert!(!sem.try_acquire());
    sem.release().unwrap();
    sem.release().unwrap();
    assert_eq!(sem.get_value(), 2);
    assert_eq!(
        sem.release().unwrap_err().to_string(),
        "semaphore or lock released too many times"
    );
    assert_eq!(sem.get_value(), 2);
}

#[multiproc::test]
fn semaphore_timeouts_last_as_long_as_asked() {
    let sem = Semaphore::new(0).unwrap();
    let t = Instant::now();
    assert!(!sem.try_acquire());
    assert!(!sem.acquire_timeout(Duration::ZERO));
    assert!(t.elapsed() < SLACK);
    for timeout in [SHORT, 2 * SHORT] {
        let t = Instant::now();
        assert!(!sem.acquire_timeout(timeout));
        about(t.elapsed(), timeout);
    }
}

/// Releases `sem` `n` times once `go` is set.
fn release_n((sem, go, n): (Semaphore, Event, u32)) {
    assert!(go.wait_timeout(LONG));
    for _ in 0..n {
        sem.release().unwrap();
    }
}

#[multiproc::test]
fn a_semaphore_released_in_one_process_wakes_waiters_in_another() {
    each_method(|ctx| {
        let sem = Semaphore::new(0).unwrap();
        let go = Event::new().unwrap();
        let p = start(ctx, release_n, (sem.clone(), go.clone(), 3));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = sem.clone();
                std::thread::spawn(move || s.acquire_timeout(LONG))
            })
            .collect();
        assert!(!sem.acquire_timeout(DELTA), "nothing released yet");
        go.set();
        for w in waiters {
            assert!(w.join().unwrap());
        }
        finish(p);
        assert_eq!(sem.get_value(), 0);
    });
}

/// Enters the section guarded by `sem` `rounds` times, counting how many are inside.
fn enter_limited((sem, inside, most, rounds): (BoundedSemaphore, Counter, Counter, u32)) {
    for _ in 0..rounds {
        assert!(sem.acquire_timeout(LONG));
        let now = inside.incr();
        {
            let _g = held(&most.lock);
            if now > read_u64(&most.shm, 0) {
                write_u64(&most.shm, 0, now);
            }
        }
        std::thread::yield_now();
        {
            let _g = held(&inside.lock);
            let v = read_u64(&inside.shm, 0);
            write_u64(&inside.shm, 0, v - 1);
        }
        sem.release().unwrap();
    }
}

#[multiproc::test]
fn a_bounded_semaphore_admits_at_most_its_value_at_once() {
    each_method(|ctx| {
        let sem = BoundedSemaphore::new(2).unwrap();
        let (inside, most) = (Counter::new(), Counter::new());
        let ps: Vec<_> = (0..4)
            .map(|_| {
                let args = (sem.clone(), inside.clone(), most.clone(), 200);
                start(ctx, enter_limited, args)
            })
            .collect();
        for p in ps {
            finish(p);
        }
        assert!(
            (1..=2).contains(&most.get()),
            "{} inside at once",
            most.get()
        );
        assert_eq!(inside.get(), 0);
        assert_eq!(sem.get_value(), 2);
    });
}

// -------------------------------------------------------------------------------------------
// Condition (_TestCondition)

/// CPython's `_TestCondition.f`: acquire, say "sleeping", wait, say "woken", release.
fn cond_waiter(
    (cond, sleeping, woken, timeout): (Condition, Semaphore, Semaphore, Option<Duration>),
) -> bool {
    let g = cond.acquire().unwrap();
    sleeping.release().unwrap();
    let r = match timeout {
        Some(t) => cond.wait_timeout(t),
        None => cond.wait(),
    }
    .unwrap();
    woken.release().unwrap();
    drop(g);
    r
}

/// A fresh condition with the two signals of [`cond_waiter`]: "sleeping" and "woken".
fn cond_and_signals() -> (Condition, Semaphore, Semaphore) {
    (
        Condition::new().unwrap(),
        Semaphore::new(0).unwrap(),
        Semaphore::new(0).unwrap(),
    )
}

type Waiters = (Vec<Process<bool>>, Vec<std::thread::JoinHandle<bool>>);

/// Starts `procs` processes and `threads` threads running [`cond_waiter`].
fn start_waiters(
    ctx: &Context,
    (cond, sleeping, woken): (&Condition, &Semaphore, &Semaphore),
    timeout: Option<Duration>,
    procs: usize,
    threads: usize,
) -> Waiters {
    let args = || (cond.clone(), sleeping.clone(), woken.clone(), timeout);
    let ps = (0..procs)
        .map(|_| start(ctx, cond_waiter, args()))
        .collect();
    let ts = (0..threads)
        .map(|_| {
            let a = args();
            std::thread::spawn(move || cond_waiter(a))
        })
        .collect();
    (ps, ts)
}

fn join_waiters((ps, ts): Waiters) -> Vec<bool> {
    let mut r: Vec<bool> = ps.into_iter().map(finish).collect();
    r.extend(ts.into_iter().map(|t| t.join().unwrap()));
    r
}

/// Takes `n` permits, each within [`LONG`]; then checks no more come within [`DELTA`].
fn exactly(sem: &Semaphore, n: usize, what: &str) {
    for i in 0..n {
        assert!(sem.acquire_timeout(LONG), "{what}: only {i} of {n}");
    }
    assert!(!sem.acquire_timeout(DELTA), "{what}: more than {n}");
}

/// The waiters are all inside `wait` once each said "sleeping" and the lock is free: each
/// held the lock from before saying so until `wait` let it go.
fn all_sleeping(sleeping: &Semaphore, n: usize) {
    for i in 0..n {
        assert!(sleeping.acquire_timeout(LONG), "only {i} of {n} started");
    }
}

fn notify(cond: &Condition, n: u32) {
    let _g = cond.acquire().unwrap();
    cond.notify(n).unwrap();
}

#[multiproc::test]
fn condition_notify_wakes_one_waiter_at_a_time() {
    each_method(|ctx| {
        let (cond, sleeping, woken) = cond_and_signals();
        let w = start_waiters(ctx, (&cond, &sleeping, &woken), None, 1, 1);
        all_sleeping(&sleeping, 2);
        exactly(&woken, 0, "before any notify");
        notify(&cond, 1);
        exactly(&woken, 1, "first notify");
        notify(&cond, 1);
        exactly(&woken, 1, "second notify");
        assert_eq!(join_waiters(w), [true, true]);
    });
}

#[multiproc::test]
fn condition_notify_all_wakes_every_waiter_and_timeouts_are_clean() {
    each_method(|ctx| {
        let (cond, sleeping, woken) = cond_and_signals();
        // Waiters that time out.
        let w = start_waiters(ctx, (&cond, &sleeping, &woken), Some(SHORT), 3, 3);
        all_sleeping(&sleeping, 6);
        exactly(&woken, 6, "timed out");
        assert_eq!(join_waiters(w), [false; 6]);
        // They left nothing behind: a notify now finds no one.
        notify(&cond, 1);
        // Waiters that are woken.
        let w = start_waiters(ctx, (&cond, &sleeping, &woken), None, 3, 3);
        all_sleeping(&sleeping, 6);
        exactly(&woken, 0, "before notify_all");
        {
            let _g = cond.acquire().unwrap();
            cond.notify_all().unwrap();
        }
        exactly(&woken, 6, "notify_all");
        assert_eq!(join_waiters(w), [true; 6]);
    });
}

#[multiproc::test]
fn condition_notify_n_wakes_exactly_n() {
    each_method(|ctx| {
        let (cond, sleeping, woken) = cond_and_signals();
        let w = start_waiters(ctx, (&cond, &sleeping, &woken), None, 3, 3);
        all_sleeping(&sleeping, 6);
        exactly(&woken, 0, "before notify");
        notify(&cond, 2);
        exactly(&woken, 2, "notify(2)");
        notify(&cond, 4);
        exactly(&woken, 4, "notify(4)");
        notify(&cond, 3);
        exactly(&woken, 0, "notify(3) with no one left");
        assert_eq!(join_waiters(w), [true; 6]);
    });
}

/// Waits on `cond` `rounds` times, each after saying "sleeping"; counts the notified waits.
fn cond_waiter_rounds(
    (cond, sleeping, woken, rounds): (Condition, Semaphore, Semaphore, u32),
) -> u32 {
    let mut notified = 0;
    for _ in 0..rounds {
        let g = cond.acquire().unwrap();
        sleeping.release().unwrap();
        if cond.wait_timeout(LONG).unwrap() {
            notified += 1;
        }
        drop(g);
        woken.release().unwrap();
    }
    notified
}

#[multiproc::test]
fn a_notification_goes_to_a_waiter_that_was_waiting_not_to_a_later_one() {
    each_method(|ctx| {
        let (cond, sleeping, woken) = cond_and_signals();
        const ROUNDS: u32 = 10;
        let p = start(
            ctx,
            cond_waiter_rounds,
            (cond.clone(), sleeping.clone(), woken.clone(), ROUNDS),
        );
        for _ in 0..ROUNDS {
            all_sleeping(&sleeping, 1);
            let g = cond.acquire().unwrap();
            cond.notify(1).unwrap();
            // Waiting right after notifying: the notification was the child's, not ours.
            assert!(
                !cond.wait_timeout(Duration::from_millis(10)).unwrap(),
                "a later waiter took the notification"
            );
            drop(g);
            assert!(woken.acquire_timeout(LONG));
        }
        assert_eq!(finish(p), ROUNDS);
    });
}

#[multiproc::test]
fn condition_wait_times_out_and_demands_the_lock() {
    for cond in [
        Condition::new().unwrap(),
        Condition::with_lock(Lock::new().unwrap()).unwrap(),
    ] {
        assert!(matches!(
            cond.wait_timeout(SHORT),
            Err(SyncError::WaitUnacquired)
        ));
        assert_eq!(
            cond.notify(1).unwrap_err().to_string(),
            "cannot notify on un-acquired lock"
        );
        let _g = cond.acquire().unwrap();
        let t = Instant::now();
        assert!(!cond.wait_timeout(SHORT).unwrap());
        about(t.elapsed(), SHORT);
        assert!(!cond.wait_timeout(Duration::ZERO).unwrap());
        // The lock is held again after the wait.
        let me = Some(std::process::id());
        match cond.lock() {
            multiproc::sync::ConditionLock::Lock(l) => assert_eq!(l.owner().map(|o| o.0), me),
            multiproc::sync::ConditionLock::RLock(l) => assert_eq!(l.count(), 1),
        }
    }
}

/// A recursive hold is given up entirely by `wait` and restored after.
fn notify_when_free((cond, lock): (Condition, RLock)) -> bool {
    let _g = cond.acquire().unwrap();
    let free_while_waiting = lock.count() == 1;
    cond.notify(1).unwrap();
    free_while_waiting
}

#[multiproc::test]
fn wait_releases_every_level_of_an_rlock_and_restores_them() {
    each_method(|ctx| {
        let lock = RLock::new().unwrap();
        let cond = Condition::with_lock(lock.clone()).unwrap();
        let guards: Vec<_> = (0..3).map(|_| cond.acquire().unwrap()).collect();
        assert_eq!(lock.count(), 3);
        let p = start(ctx, notify_when_free, (cond.clone(), lock.clone()));
        assert!(cond.wait_timeout(LONG).unwrap());
        assert_eq!(lock.count(), 3);
        assert_eq!(lock.owner().map(|o| o.0), Some(std::process::id()));
        drop(guards);
        assert!(finish(p));
    });
}

/// CPython's `_test_waitfor_f`: sets the state to 0, notifies, waits for it to reach 4.
fn waitfor_child((cond, state): (Condition, SharedMemory)) -> bool {
    let _g = cond.acquire().unwrap();
    write_u64(&state, 0, 0);
    cond.notify(1).unwrap();
    cond.wait_for(|| read_u64(&state, 0) == 4, None).unwrap() && read_u64(&state, 0) == 4
}

#[multiproc::test]
fn condition_wait_for_waits_for_the_predicate() {
    each_method(|ctx| {
        let cond = Condition::new().unwrap();
        let state = SharedMemory::create(8).unwrap();
        write_u64(&state, 0, u64::MAX);
        let p = start(ctx, waitfor_child, (cond.clone(), state.clone()));
        {
            let _g = cond.acquire().unwrap();
            assert!(
                cond.wait_for(|| read_u64(&state, 0) == 0, Some(LONG))
                    .unwrap()
            );
        }
        for _ in 0..4 {
            let _g = cond.acquire().unwrap();
            write_u64(&state, 0, read_u64(&state, 0) + 1);
            cond.notify(1).unwrap();
        }
        assert!(finish(p));
    });
}

/// CPython's `_test_waitfor_timeout_f`: the predicate never holds; true if `wait_for`
/// returned false no earlier than its timeout.
fn waitfor_timeout_child((cond, state, started): (Condition, SharedMemory, Semaphore)) -> bool {
    started.release().unwrap();
    let _g = cond.acquire().unwrap();
    let t = Instant::now();
    let r = cond
        .wait_for(|| read_u64(&state, 0) == 4, Some(SHORT))
        .unwrap();
    !r && t.elapsed() >= SHORT
}

#[multiproc::test]
fn condition_wait_for_times_out_when_the_predicate_never_holds() {
    each_method(|ctx| {
        let cond = Condition::new().unwrap();
        let state = SharedMemory::create(8).unwrap();
        let started = Semaphore::new(0).unwrap();
        let p = start(
            ctx,
            waitfor_timeout_child,
            (cond.clone(), state.clone(), started.clone()),
        );
        assert!(started.acquire_timeout(LONG));
        // Only three increments: 4 is never reached.
        for _ in 0..3 {
            let _g = cond.acquire().unwrap();
            write_u64(&state, 0, read_u64(&state, 0) + 1);
            cond.notify(1).unwrap();
        }
        assert!(finish(p));
    });
}

fn notify_once(c: Condition) {
    let _g = c.acquire().unwrap();
    c.notify(1).unwrap();
}

#[multiproc::test]
fn condition_wait_result_says_whether_it_was_notified() {
    each_method(|ctx| {
        let c = Condition::new().unwrap();
        let _g = c.acquire().unwrap();
        assert!(!c.wait_timeout(Duration::ZERO).unwrap());
        assert!(!c.wait_timeout(DELTA).unwrap());
        let p = start(ctx, notify_once, c.clone());
        assert!(c.wait_timeout(LONG).unwrap());
        finish(p);
    });
}

/// A bounded queue of u64 in shared memory: two conditions over one lock (CPython's
/// `queue.Queue` shape). Layout: head, tail, then `CAP` slots.
#[derive(Clone, Serialize, Deserialize)]
struct BoundedQueue {
    shm: SharedMemory,
    not_empty: Condition,
    not_full: Condition,
}

const CAP: u64 = 3;

impl BoundedQueue {
    fn new() -> Self {
        let lock = RLock::new().unwrap();
        Self {
            shm: SharedMemory::create(8 * (2 + CAP as usize)).unwrap(),
            not_empty: Condition::with_lock(lock.clone()).unwrap(),
            not_full: Condition::with_lock(lock).unwrap(),
        }
    }

    fn len(&self) -> u64 {
        read_u64(&self.shm, 8) - read_u64(&self.shm, 0)
    }

    fn put(&self, v: u64) {
        let _g = self.not_full.acquire().unwrap();
        assert!(
            self.not_full
                .wait_for(|| self.len() < CAP, Some(LONG))
                .unwrap(),
            "put: never room"
        );
        let tail = read_u64(&self.shm, 8);
        write_u64(&self.shm, 16 + 8 * (tail % CAP) as usize, v);
        write_u64(&self.shm, 8, tail + 1);
        self.not_empty.notify(1).unwrap();
    }

    fn get(&self) -> u64 {
        let _g = self.not_empty.acquire().unwrap();
        assert!(
            self.not_empty
                .wait_for(|| self.len() > 0, Some(LONG))
                .unwrap(),
            "get: never an item"
        );
        let head = read_u64(&self.shm, 0);
        let v = read_u64(&self.shm, 16 + 8 * (head % CAP) as usize);
        write_u64(&self.shm, 0, head + 1);
        self.not_full.notify(1).unwrap();
        v
    }
}

fn produce((q, n): (BoundedQueue, u64)) {
    for v in 1..=n {
        q.put(v);
    }
}

/// Takes items until a 0; returns their sum.
fn consume(q: BoundedQueue) -> u64 {
    let mut sum = 0;
    loop {
        match q.get() {
            0 => return sum,
            v => sum += v,
        }
    }
}

#[multiproc::test]
fn producers_and_consumers_through_a_bounded_queue_lose_nothing() {
    const ITEMS: u64 = 300;
    each_method(|ctx| {
        let q = BoundedQueue::new();
        let producers: Vec<_> = (0..2)
            .map(|_| start(ctx, produce, (q.clone(), ITEMS)))
            .collect();
        let consumers: Vec<_> = (0..2).map(|_| start(ctx, consume, q.clone())).collect();
        // The parent consumes too, from a thread, and produces from another.
        let mine = {
            let q = q.clone();
            std::thread::spawn(move || consume(q))
        };
        let q2 = q.clone();
        std::thread::spawn(move || produce((q2, ITEMS)))
            .join()
            .unwrap();
        for p in producers {
            finish(p);
        }
        for _ in 0..3 {
            q.put(0);
        }
        let mut total: u64 = consumers.into_iter().map(finish).sum();
        total += mine.join().unwrap();
        assert_eq!(total, 3 * ITEMS * (ITEMS + 1) / 2);
        assert_eq!(q.len(), 0);
    });
}

/// Answers `rounds` pings with pongs, through two events.
fn pong_events((ping, pong, rounds): (Event, Event, u32)) {
    for _ in 0..rounds {
        assert!(ping.wait_timeout(LONG));
        ping.clear();
        pong.set();
    }
}

/// Takes turns with the parent: waits for an odd turn, makes it even.
fn take_turns((cond, turn, rounds): (Condition, SharedMemory, u64)) {
    let _g = cond.acquire().unwrap();
    for i in 0..rounds {
        assert!(
            cond.wait_for(|| read_u64(&turn, 0) == 2 * i + 1, Some(LONG))
                .unwrap()
        );
        write_u64(&turn, 0, 2 * i + 2);
        cond.notify(1).unwrap();
    }
}

#[multiproc::test]
fn ping_pong_with_events_and_with_a_condition() {
    const ROUNDS: u32 = 500;
    each_method(|ctx| {
        let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
        let p = start(ctx, pong_events, (ping.clone(), pong.clone(), ROUNDS));
        for _ in 0..ROUNDS {
            ping.set();
            assert!(pong.wait_timeout(LONG));
            pong.clear();
        }
        finish(p);

        let cond = Condition::new().unwrap();
        let turn = SharedMemory::create(8).unwrap();
        let p = start(
            ctx,
            take_turns,
            (cond.clone(), turn.clone(), u64::from(ROUNDS)),
        );
        let _g = cond.acquire().unwrap();
        for i in 0..u64::from(ROUNDS) {
            write_u64(&turn, 0, 2 * i + 1);
            cond.notify(1).unwrap();
            assert!(
                cond.wait_for(|| read_u64(&turn, 0) == 2 * i + 2, Some(LONG))
                    .unwrap()
            );
        }
        drop(_g);
        finish(p);
    });
}

#[multiproc::test]
fn a_waiter_killed_while_waiting_does_not_swallow_a_notify() {
    each_method(|ctx| {
        let (cond, sleeping, woken) = cond_and_signals();
        let doomed = start(
            ctx,
            cond_waiter,
            (cond.clone(), sleeping.clone(), woken.clone(), None),
        );
        all_sleeping(&sleeping, 1);
        // Inside `wait` once the lock is free.
        drop(cond.acquire().unwrap());
        doomed.kill().unwrap();
        assert!(doomed.join_timeout(LONG).unwrap());
        let w = start_waiters(ctx, (&cond, &sleeping, &woken), None, 1, 0);
        all_sleeping(&sleeping, 1);
        notify(&cond, 1);
        exactly(&woken, 1, "the live waiter");
        assert_eq!(join_waiters(w), [true]);
    });
}

// -------------------------------------------------------------------------------------------
// Event (_TestEvent)

fn set_event(e: Event) {
    e.set();
}

#[multiproc::test]
fn event_as_cpython() {
    each_method(|ctx| {
        let event = Event::new().unwrap();
        assert!(!event.is_set());
        let t = Instant::now();
        assert!(!event.wait_timeout(Duration::ZERO));
        assert!(t.elapsed() < SLACK);
        let t = Instant::now();
        assert!(!event.wait_timeout(SHORT));
        about(t.elapsed(), SHORT);
        event.set();
        assert!(event.is_set());
        let t = Instant::now();
        assert!(event.wait());
        assert!(event.wait_timeout(SHORT));
        assert!(t.elapsed() < SLACK);
        event.clear();
        assert!(!event.is_set());
        let p = start(ctx, set_event, event.clone());
        assert!(event.wait_timeout(LONG));
        finish(p);
    });
}

/// Says "waiting", then waits for `e` (at most [`LONG`]).
fn wait_event((e, waiting): (Event, Semaphore)) -> bool {
    waiting.release().unwrap();
    e.wait_timeout(LONG)
}

/// The third field of /proc/PID/task/TID/stat: `S` while blocked in a system call.
fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Waits until every thread of `pid` sleeps (in the kernel) at once.
fn all_threads_asleep(pid: u32) {
    eventually("the waiter sleeps", || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.filter_map(Result::ok).all(|t| {
            let tid = t.file_name().to_string_lossy().parse().unwrap_or(0);
            thread_state(pid, tid) == Some('S')
        })
    });
}

#[multiproc::test]
fn an_event_set_then_cleared_at_once_still_wakes_the_waiters() {
    // Python: wait() returns True "if the flag has been set to true ... after the wait
    // starts", even if it is cleared again before the waiter runs.
    each_method(|ctx| {
        let e = Event::new().unwrap();
        let waiting = Semaphore::new(0).unwrap();
        let p = start(ctx, wait_event, (e.clone(), waiting.clone()));
        assert!(waiting.acquire_timeout(LONG));
        all_threads_asleep(pid_of(&p));
        e.set();
        e.clear();
        assert!(finish(p), "the waiter missed the set");
        assert!(!e.is_set());
    });
}

#[multiproc::test]
fn setting_an_event_wakes_every_waiting_process() {
    each_method(|ctx| {
        let e = Event::new().unwrap();
        let waiting = Semaphore::new(0).unwrap();
        let ps: Vec<_> = (0..4)
            .map(|_| start(ctx, wait_event, (e.clone(), waiting.clone())))
            .collect();
        for _ in 0..4 {
            assert!(waiting.acquire_timeout(LONG));
        }
        e.set();
        for p in ps {
            assert!(finish(p));
        }
    });
}

// -------------------------------------------------------------------------------------------
// Waiters whose peer was killed return by their timeout

/// Waits to be killed before doing what it was meant to (set an event, notify...).
fn never_gets_to_it((ready, _e): (Event, Event)) {
    ready.set();
    std::thread::sleep(LONG);
}

/// On `go`, takes the condition's lock (once the waiter has let it go in `wait`) and dies
/// holding it.
fn take_cond_lock_and_wait_to_die((cond, go, got): (Condition, Event, Event)) {
    assert!(go.wait_timeout(LONG));
    std::mem::forget(cond.acquire().unwrap());
    got.set();
    std::thread::sleep(LONG);
}

/// Waits on `cond` for [`SHORT`]; reports what the wait returned and how long it took.
fn timed_cond_wait((cond, waiting): (Condition, Semaphore)) -> (String, Duration) {
    let _g = cond.acquire().unwrap();
    waiting.release().unwrap();
    let t = Instant::now();
    let r = cond.wait_timeout(SHORT);
    (format!("{r:?}"), t.elapsed())
}

#[multiproc::test]
fn waiters_return_by_their_timeout_when_the_peer_was_killed() {
    each_method(|ctx| {
        // Event: the process that would set it is killed.
        let e = Event::new().unwrap();
        let ready = Event::new().unwrap();
        let setter = start(ctx, never_gets_to_it, (ready.clone(), e.clone()));
        assert!(ready.wait_timeout(LONG));
        setter.kill().unwrap();
        let t = Instant::now();
        assert!(!e.wait_timeout(SHORT));
        about(t.elapsed(), SHORT);

        // Condition: the process holding its lock dies while a waiter waits; the waiter
        // returns at its timeout, holding the lock, and is told the holder died.
        let cond = Condition::new().unwrap();
        let waiting = Semaphore::new(0).unwrap();
        let (go, got) = (Event::new().unwrap(), Event::new().unwrap());
        // Started first, so it takes the lock well within the waiter's timeout.
        let taker = start(
            ctx,
            take_cond_lock_and_wait_to_die,
            (cond.clone(), go.clone(), got.clone()),
        );
        let w = start(ctx, timed_cond_wait, (cond.clone(), waiting.clone()));
        assert!(waiting.acquire_timeout(LONG));
        go.set();
        assert!(got.wait_timeout(LONG));
        taker.kill().unwrap();
        let (r, took) = finish(w);
        assert_eq!(r, "Err(OwnerDied)");
        about(took, SHORT);

        // Barrier: a party dies inside `wait`; the others break it by their timeout (at the
        // latest: the death itself breaks it).
        let b = Barrier::new(3).unwrap();
        let party = start(ctx, barrier_wait_forever, b.clone());
        eventually("the party waits", || b.n_waiting() == 1);
        party.kill().unwrap();
        let t = Instant::now();
        assert!(matches!(
            b.wait_timeout(SHORT),
            Err(SyncError::BrokenBarrier)
        ));
        assert!(t.elapsed() <= SHORT + SLACK, "took {:?}", t.elapsed());
        assert!(b.broken());
    });
}

fn barrier_wait_forever(b: Barrier) {
    let _ = b.wait();
}

/// Waits on `b` with no timeout; reports whether it was broken.
fn barrier_wait_broken(b: Barrier) -> bool {
    matches!(b.wait(), Err(SyncError::BrokenBarrier))
}

fn barrier_wait_ok(b: Barrier) -> bool {
    b.wait().is_ok()
}

#[multiproc::test]
fn a_party_killed_inside_wait_breaks_the_barrier_and_reset_recovers_it() {
    each_method(|ctx| {
        let b = Barrier::new(3).unwrap();
        let doomed = start(ctx, barrier_wait_forever, b.clone());
        let other = start(ctx, barrier_wait_broken, b.clone());
        eventually("both wait", || b.n_waiting() == 2);
        doomed.kill().unwrap();
        // Waiting with no timeout: the death breaks the barrier, nobody hangs.
        assert!(finish(other));
        assert!(b.broken());
        b.reset();
        assert!(!b.broken());
        let ps: Vec<_> = (0..2)
            .map(|_| start(ctx, barrier_wait_ok, b.clone()))
            .collect();
        assert!(
            b.wait_timeout(LONG).is_ok(),
            "the barrier works after reset"
        );
        for p in ps {
            assert!(finish(p));
        }
    });
}

// -------------------------------------------------------------------------------------------
// Barrier (_TestBarrier)

/// CPython's N: parties in the barrier tests (N - 1 processes and the test's own thread).
const N: u32 = 5;

/// Runs `f(args)` in N - 1 processes and here (CPython's `run_threads`); returns the
/// children's results.
fn run_parties<A, R>(ctx: &Context, f: fn(A) -> R, args: A) -> Vec<R>
where
    A: Serialize + serde::de::DeserializeOwned + Clone,
    R: Serialize + serde::de::DeserializeOwned,
{
    let ps: Vec<_> = (1..N).map(|_| start(ctx, f, args.clone())).collect();
    let mine = f(args);
    let mut r: Vec<R> = ps.into_iter().map(finish).collect();
    r.push(mine);
    r
}

fn barrier() -> Barrier {
    Barrier::builder(N).timeout(LONG).build().unwrap()
}

/// CPython's `multipass`: the barrier is passed in lockstep.
fn multipass((b, results, passes): (Barrier, [Counter; 2], u64)) {
    let m = u64::from(b.parties());
    for i in 0..passes {
        results[0].incr();
        assert_eq!(results[1].get(), i * m);
        b.wait().unwrap();
        results[1].incr();
        assert_eq!(results[0].get(), (i + 1) * m);
        b.wait().unwrap();
    }
    assert_eq!(b.n_waiting(), 0);
    assert!(!b.broken());
}

#[multiproc::test]
fn barrier_is_passed_in_lockstep() {
    each_method(|ctx| {
        let results = [Counter::new(), Counter::new()];
        run_parties(ctx, multipass, (barrier(), results, 10));
    });
}

/// Waits `rounds` times; returns the indices it got.
fn wait_rounds((b, rounds): (Barrier, u32)) -> Vec<u32> {
    (0..rounds).map(|_| b.wait().unwrap()).collect()
}

#[multiproc::test]
fn every_round_gives_each_index_once_and_one_zero() {
    each_method(|ctx| {
        const ROUNDS: usize = 20;
        let all = run_parties(ctx, wait_rounds, (barrier(), ROUNDS as u32));
        for round in 0..ROUNDS {
            let mut got: Vec<u32> = all.iter().map(|v| v[round]).collect();
            got.sort_unstable();
            assert_eq!(got, (0..N).collect::<Vec<_>>(), "round {round}");
        }
    });
}

/// The counter the barrier action counts with, in whichever process runs the action.
static ACTIONS: Mutex<Option<Counter>> = Mutex::new(None);

fn count_action() {
    ACTIONS
        .lock()
        .unwrap()
        .as_ref()
        .expect("the counter is set before the barrier")
        .incr();
}

/// CPython's `_test_action_f`: after each round, the action has run exactly once more.
fn action_rounds((b, actions, rounds): (Barrier, Counter, u64)) {
    *ACTIONS.lock().unwrap() = Some(actions.clone());
    for round in 0..rounds {
        b.wait().unwrap();
        assert_eq!(actions.get(), 2 * round + 1);
        // Nobody runs ahead into the next round before all have looked.
        b.wait().unwrap();
    }
}

#[multiproc::test]
fn the_action_runs_once_per_round_before_anyone_is_released() {
    each_method(|ctx| {
        let actions = Counter::new();
        let b = Barrier::builder(N)
            .action(count_action)
            .timeout(LONG)
            .build()
            .unwrap();
        run_parties(ctx, action_rounds, (b, actions.clone(), 5));
        // The action runs at both waits of each round.
        assert_eq!(actions.get(), 10);
    });
}

fn panicking_action() {
    panic!("the action fails");
}

#[multiproc::test]
fn a_panicking_action_breaks_the_barrier() {
    let b = Barrier::builder(2)
        .action(panicking_action)
        .timeout(LONG)
        .build()
        .unwrap();
    let other = b.clone();
    let t = std::thread::spawn(move || other.wait());
    let mine = b.wait();
    let theirs = t.join().unwrap();
    assert!(matches!(mine, Err(SyncError::BrokenBarrier)));
    assert!(matches!(theirs, Err(SyncError::BrokenBarrier)));
    assert!(b.broken());
}

/// CPython's `_test_abort_f`.
fn abort_f((b, results1, results2): (Barrier, Counter, Counter)) {
    match b.wait() {
        Ok(i) if i == N / 2 => b.abort(),
        Ok(_) => match b.wait() {
            Ok(_) => {
                results1.incr();
            }
            Err(SyncError::BrokenBarrier) => {
                results2.incr();
            }
            Err(e) => panic!("{e}"),
        },
        Err(e) => panic!("{e}"),
    }
}

#[multiproc::test]
fn abort_breaks_the_barrier_for_everyone() {
    each_method(|ctx| {
        let b = barrier();
        let (r1, r2) = (Counter::new(), Counter::new());
        run_parties(ctx, abort_f, (b.clone(), r1.clone(), r2.clone()));
        assert_eq!(r1.get(), 0);
        assert_eq!(r2.get(), u64::from(N - 1));
        assert!(b.broken());
    });
}

/// CPython's `_test_reset_f`.
fn reset_f((b, r1, r2, r3): (Barrier, Counter, Counter, Counter)) {
    let i = b.wait().unwrap();
    if i == N / 2 {
        eventually("the others wait", || b.n_waiting() == N - 1);
        b.reset();
    } else {
        match b.wait() {
            Ok(_) => r1.incr(),
            Err(_) => r2.incr(),
        };
    }
    b.wait().unwrap();
    r3.incr();
}

#[multiproc::test]
fn reset_frees_the_waiters_and_the_barrier_works_after() {
    each_method(|ctx| {
        let (r1, r2, r3) = (Counter::new(), Counter::new(), Counter::new());
        run_parties(
            ctx,
            reset_f,
            (barrier(), r1.clone(), r2.clone(), r3.clone()),
        );
        assert_eq!(r1.get(), 0);
        assert_eq!(r2.get(), u64::from(N - 1));
        assert_eq!(r3.get(), u64::from(N));
    });
}

/// CPython's `_test_abort_and_reset_f`.
fn abort_and_reset_f((b, b2, r1, r2, r3): (Barrier, Barrier, Counter, Counter, Counter)) {
    match b.wait() {
        Ok(i) if i == N / 2 => b.abort(),
        Ok(_) => {
            match b.wait() {
                Ok(_) => r1.incr(),
                Err(_) => r2.incr(),
            };
        }
        Err(e) => panic!("{e}"),
    }
    // Everyone has left `b` before the reset, and no one enters it before.
    if b2.wait().unwrap() == N / 2 {
        b.reset();
    }
    b2.wait().unwrap();
    b.wait().unwrap();
    r3.incr();
}

#[multiproc::test]
fn a_broken_barrier_can_be_reset() {
    each_method(|ctx| {
        let b2 = barrier();
        let (r1, r2, r3) = (Counter::new(), Counter::new(), Counter::new());
        let args = (barrier(), b2, r1.clone(), r2.clone(), r3.clone());
        run_parties(ctx, abort_and_reset_f, args);
        assert_eq!(r1.get(), 0);
        assert_eq!(r2.get(), u64::from(N - 1));
        assert_eq!(r3.get(), u64::from(N));
    });
}

/// CPython's `_test_timeout_f`, with the late party waiting for the break instead of
/// sleeping: all parties see the barrier broken. `timeout` `None`: the default one.
fn timeout_f((b, results, timeout): (Barrier, Counter, Option<Duration>)) {
    let i = b.wait_timeout(LONG).unwrap();
    if i == N / 2 {
        // One party is late: the others time out without it.
        eventually("the others break the barrier", || b.broken());
    }
    let r = match timeout {
        Some(t) => b.wait_timeout(t),
        None => b.wait(),
    };
    if matches!(r, Err(SyncError::BrokenBarrier)) {
        results.incr();
    }
}

#[multiproc::test]
fn a_timeout_breaks_the_barrier() {
    each_method(|ctx| {
        let results = Counter::new();
        run_parties(ctx, timeout_f, (barrier(), results.clone(), Some(SHORT)));
        assert_eq!(results.get(), u64::from(N));
    });
}

#[multiproc::test]
fn the_default_timeout_breaks_the_barrier() {
    each_method(|ctx| {
        let b = Barrier::builder(N).timeout(SHORT).build().unwrap();
        let results = Counter::new();
        run_parties(ctx, timeout_f, (b.clone(), results.clone(), None));
        assert_eq!(results.get(), u64::from(N));
    });
}

#[multiproc::test]
fn a_barrier_of_one_never_waits() {
    let b = Barrier::new(1).unwrap();
    assert_eq!(b.wait().unwrap(), 0);
    assert_eq!(b.wait().unwrap(), 0);
    assert_eq!((b.parties(), b.n_waiting(), b.broken()), (1, 0, false));
}

/// A log of u32 in shared memory: the length at 0, entries after.
#[derive(Clone, Serialize, Deserialize)]
struct Log {
    shm: SharedMemory,
    lock: Lock,
}

impl Log {
    fn new(cap: usize) -> Self {
        Self {
            shm: SharedMemory::create(8 + 4 * cap).unwrap(),
            lock: Lock::new().unwrap(),
        }
    }

    fn push(&self, v: u32) {
        let _g = held(&self.lock);
        let n = read_u64(&self.shm, 0);
        self.shm
            .write(8 + 4 * n as usize, &v.to_le_bytes())
            .unwrap();
        write_u64(&self.shm, 0, n + 1);
    }

    fn entries(&self) -> Vec<u32> {
        let _g = held(&self.lock);
        let n = read_u64(&self.shm, 0) as usize;
        let bytes = self.shm.to_vec();
        bytes[8..8 + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// CPython's `_test_thousand_f`: after each pass, logs the pass number under a lock.
fn thousand_f((b, passes, log): (Barrier, u32, Log)) {
    for i in 0..passes {
        b.wait().unwrap();
        log.push(i);
    }
}

#[multiproc::test]
fn a_thousand_passes_in_lockstep() {
    const PASSES: u32 = 1000;
    const PROCS: u32 = 4;
    each_method(|ctx| {
        let b = Barrier::builder(PROCS).timeout(LONG).build().unwrap();
        let log = Log::new((PASSES * PROCS) as usize);
        let ps: Vec<_> = (0..PROCS)
            .map(|_| start(ctx, thousand_f, (b.clone(), PASSES, log.clone())))
            .collect();
        for p in ps {
            finish(p);
        }
        let want: Vec<u32> = (0..PASSES)
            .flat_map(|i| std::iter::repeat_n(i, PROCS as usize))
            .collect();
        assert!(log.entries() == want, "the passes were not in lockstep");
    });
}

// -------------------------------------------------------------------------------------------
// Every object goes anywhere: Process arguments and pipe messages

/// One of each.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Kit {
    lock: Lock,
    rlock: RLock,
    sem: Semaphore,
    bsem: BoundedSemaphore,
    cond: Condition,
    event: Event,
    barrier: Barrier,
}

impl Kit {
    fn new() -> Self {
        Self {
            lock: Lock::new().unwrap(),
            rlock: RLock::new().unwrap(),
            sem: Semaphore::new(0).unwrap(),
            bsem: BoundedSemaphore::new(1).unwrap(),
            cond: Condition::new().unwrap(),
            event: Event::new().unwrap(),
            barrier: Barrier::builder(2).timeout(LONG).build().unwrap(),
        }
    }
}

/// Uses every object of a kit the parent holds the other side of; returns what it saw.
fn use_kit(k: Kit) -> Vec<String> {
    let mut seen = Vec::new();
    // The parent holds the lock and the rlock.
    seen.push(format!("lock busy {}", k.lock.try_acquire().is_err()));
    seen.push(format!("rlock busy {}", k.rlock.try_acquire().is_err()));
    seen.push(format!("bsem {}", k.bsem.release().is_err()));
    k.sem.release().unwrap();
    k.event.set();
    // Meet the parent; it lets go of its locks after this.
    seen.push(format!("barrier {}", k.barrier.wait().is_ok()));
    seen.push(format!(
        "lock free {}",
        k.lock.acquire_timeout(LONG).is_ok()
    ));
    seen.push(format!(
        "rlock free {}",
        k.rlock.acquire_timeout(LONG).is_ok()
    ));
    let _g = k.cond.acquire().unwrap();
    k.cond.notify(1).unwrap();
    seen
}

fn use_kit_from_pipe(mut conn: Connection<Kit>) -> Vec<String> {
    use_kit(conn.recv().unwrap())
}

/// Plays the parent's side of [`use_kit`] while `child` runs it (`child` is called once the
/// parent holds the locks).
fn parent_side(k: &Kit, child: impl FnOnce() -> Vec<String> + Send) {
    let g = k.lock.acquire().unwrap();
    let rg = k.rlock.acquire().unwrap();
    let cg = k.cond.acquire().unwrap();
    let seen = std::thread::scope(|s| {
        let h = s.spawn(child);
        assert!(k.sem.acquire_timeout(LONG));
        assert!(k.event.wait_timeout(LONG));
        assert!(k.barrier.wait().is_ok());
        drop((g, rg));
        // The child notifies once it has taken both locks.
        assert!(k.cond.wait_timeout(LONG).unwrap());
        drop(cg);
        h.join().unwrap()
    });
    assert_eq!(
        seen,
        [
            "lock busy true",
            "rlock busy true",
            "bsem true",
            "barrier true",
            "lock free true",
            "rlock free true"
        ]
    );
}

#[multiproc::test]
fn every_object_works_as_a_process_argument_and_through_a_pipe() {
    each_method(|ctx| {
        let k = Kit::new();
        parent_side(&k, || finish(start(ctx, use_kit, k.clone())));

        let k = Kit::new();
        let (mut here, there) = pipe::<Kit>(true).unwrap();
        let p = start(ctx, use_kit_from_pipe, there);
        // Sent once the parent holds its locks.
        let kit = k.clone();
        parent_side(&k, move || {
            here.send(&kit).unwrap();
            finish(p)
        });
    });
}

// -------------------------------------------------------------------------------------------
// Nothing left in /dev/shm

fn dev_shm() -> HashSet<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The segment names in an object's `Debug` form (every quoted string).
fn names_in(debug: &str) -> Vec<String> {
    debug
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Makes one of every object and a SharedMemory, uses them a little with the parent's lock,
/// sends their names, then either returns (dropping them) or waits to be killed.
fn make_and_report((mut conn, shared, die): (Connection<Vec<String>>, Lock, bool)) {
    let k = Kit::new();
    let shm = SharedMemory::create(4096).unwrap();
    shm.write(0, b"scratch").unwrap();
    drop(held(&shared));
    k.event.set();
    k.sem.release().unwrap();
    let mut names = names_in(&format!("{k:?}"));
    names.push(shm.name().to_owned());
    conn.send(&names).unwrap();
    if die {
        std::thread::sleep(LONG);
    }
}

#[multiproc::test]
fn processes_killed_with_sigkill_leave_nothing_in_dev_shm() {
    let before = dev_shm();
    let shared = Lock::new().unwrap();
    let shared_name = names_in(&format!("{shared:?}")).remove(0);
    let mut reported: Vec<String> = Vec::new();
    each_method(|ctx| {
        let mut killed = Vec::new();
        let mut ended = Vec::new();
        for die in [true, false, true, false] {
            let (mut here, there) = pipe::<Vec<String>>(true).unwrap();
            let p = start(ctx, make_and_report, (there, shared.clone(), die));
            let names = here.recv_timeout(LONG).unwrap();
            assert_eq!(names.len(), 9, "{names:?}");
            assert!(
                names
                    .iter()
                    .all(|n| n.starts_with("mp_") || n.starts_with("psm_"))
            );
            if die {
                assert!(
                    names.iter().all(|n| shm_exists(n)),
                    "made and held: {names:?}"
                );
                killed.push(p);
            } else {
                ended.push(p);
            }
            reported.extend(names);
        }
        for p in killed {
            p.kill().unwrap();
            assert!(p.join_timeout(LONG).unwrap());
        }
        for p in ended {
            finish(p);
        }
    });
    // The parent's lock, held by killed children too, is still the parent's.
    assert!(shm_exists(&shared_name));
    assert!(shared.try_acquire().is_ok());
    let end = Instant::now() + LONG;
    loop {
        let left: Vec<_> = reported.iter().filter(|n| shm_exists(n)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "left in /dev/shm: {left:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(shared);
    eventually("the parent's lock is removed", || !shm_exists(&shared_name));
    // Of what this test made, nothing is new in /dev/shm.
    let new: Vec<_> = dev_shm()
        .difference(&before)
        .filter(|n| reported.contains(n) || **n == shared_name)
        .cloned()
        .collect();
    assert!(new.is_empty(), "{new:?}");
}

fn notify_and_die_holding(cond: Condition) {
    let g = cond.acquire().ok().unwrap_or_else(|| panic!("acquire"));
    cond.notify(1).unwrap();
    std::mem::forget(g);
}

#[multiproc::test]
fn a_waiter_without_timeout_learns_that_its_notifier_died_holding_the_lock() {
    // The notify moves the waiter onto the lock's futex; the notifier then exits holding
    // the lock. The waiter must not sleep there for ever: it takes the lock over and says so.
    each_method(|ctx| {
        let cond = Condition::new().unwrap();
        let g = cond.acquire().ok().unwrap_or_else(|| panic!("acquire"));
        let p = start(ctx, notify_and_die_holding, cond.clone());
        // A watchdog, so a hang fails the run instead of blocking it.
        let (done, watched) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watched.recv_timeout(LONG).is_err() {
                eprintln!("wait() hung after its notifier died holding the lock");
                std::process::abort();
            }
        });
        let r = cond.wait();
        done.send(()).unwrap();
        watchdog.join().unwrap();
        assert!(matches!(r, Err(SyncError::OwnerDied)), "{r:?}");
        std::mem::forget(g);
        finish(p);
    });
}
