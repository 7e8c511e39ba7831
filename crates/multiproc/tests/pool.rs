//! The pool across real workers, under every start method: CPython's calls, and the
//! behaviours beyond them (a dead worker fails only its task, panics come back, time limits).

use std::time::{Duration, Instant};

mod common;

use common::procs::each_method;

use multiproc::{ChildError, MapOptions, Pool, PoolError, TaskError};

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u32) -> u32 {
    std::process::id()
}

fn die(code: i32) -> u32 {
    if code < 0 {
        let _ = rustix_kill_self(-code);
    }
    std::process::exit(code)
}

fn rustix_kill_self(sig: i32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(std::process::id().to_string())
        .status()?;
    assert!(status.success());
    std::thread::sleep(Duration::from_secs(10));
    Ok(())
}

fn pool_with(ctx: &multiproc::Context, n: usize) -> Pool {
    Pool::builder()
        .processes(n)
        .context(ctx.clone())
        .build()
        .unwrap()
}

#[multiproc::test]
fn map_apply_and_imap_give_the_right_values() {
    each_method(|ctx| {
        let pool = pool_with(ctx, 2);
        assert_eq!(
            pool.map(square, 0..100).unwrap(),
            (0..100).map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(pool.apply(square, 12).unwrap(), 144);
        let r = pool.apply_async(square, 5).unwrap();
        assert_eq!(r.get().unwrap(), 25);
        let v: Vec<u64> = pool
            .imap(square, 0..50)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(v, (0..50).map(|x| x * x).collect::<Vec<_>>());
        let mut u: Vec<u64> = pool
            .imap_unordered(square, 0..50)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        u.sort();
        assert_eq!(u, (0..50).map(|x| x * x).collect::<Vec<_>>());
        pool.close();
        pool.join().unwrap();
    });
}

#[multiproc::test]
fn a_killed_worker_fails_only_its_task_and_is_replaced() {
    each_method(|ctx| {
        let pool = pool_with(ctx, 2);
        let before = pool.pids();
        let dying = pool.apply_async(die, -9).unwrap();
        let others: Vec<_> = (0..20)
            .map(|x| pool.apply_async(square, x).unwrap())
            .collect();
        match dying.get() {
            Err(TaskError::WorkerDied {
                pid,
                cause: ChildError::Killed { signal: 9 },
            }) => assert!(before.contains(&pid), "{pid} not in {before:?}"),
            other => panic!("{}: {other:?}", ctx.start_method()),
        }
        for (x, r) in others.into_iter().enumerate() {
            assert_eq!(r.get().unwrap(), (x * x) as u64);
        }
        let t = Instant::now();
        while pool.pids().len() < 2 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.pids().len(), 2);
        assert_eq!(pool.apply(square, 3).unwrap(), 9);
    });
}

#[multiproc::test]
fn a_panic_comes_back_and_the_worker_lives_on() {
    let ctx = multiproc::get_context("fork").unwrap();
    let pool = pool_with(&ctx, 1);
    let pid = pool.apply(pid_of, 0).unwrap();
    let r = pool.apply(|x: u32| -> u32 { panic!("bad input {x}") }, 7);
    match r {
        Err(TaskError::Panicked { message, location }) => {
            assert_eq!(message, "bad input 7");
            assert!(location.unwrap().contains("pool.rs"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.apply(pid_of, 0).unwrap(), pid);
}

#[multiproc::test]
fn zero_processes_and_closed_pools_give_cpythons_errors() {
    assert_eq!(
        Pool::new(0).unwrap_err().to_string(),
        "Number of processes must be at least 1"
    );
    let pool = Pool::builder()
        .processes(1)
        .context(multiproc::get_context("fork").unwrap())
        .build()
        .unwrap();
    assert!(matches!(pool.join(), Err(PoolError::StillRunning)));
    pool.close();
    assert!(matches!(
        pool.apply_async(square, 1),
        Err(PoolError::NotRunning)
    ));
    pool.join().unwrap();
    let _ = MapOptions::new();
}
