//! S11 `lock`: a `Lock`: the first non-blocking acquire gives true, a second gives false;
//! release; a second release is an error ('semaphore or lock released too many times').
//!
//! The lock is shared between processes: while the parent holds it, a child's non-blocking
//! acquire gives false; once it is free, the child gets it. Idiomatic Rust holds a lock
//! through a guard that releases it when dropped; Python's explicit `release()` is here as
//! well, for a lock held without a guard (`LockGuard::forget`).

use multiproc::{Lock, LockGuard, Process};

/// Python's `l.acquire(block=False)`, then a release if it got the lock.
fn try_in_child(l: Lock) {
    match l.try_acquire() {
        Ok(_guard) => println!("a child process: acquire(block=False) -> true"),
        Err(_) => println!("a child process: acquire(block=False) -> false"),
    }
}

fn run_child(l: &Lock) -> Result<(), multiproc::ProcessError> {
    let mut p = Process::new(try_in_child, l.clone());
    p.start()?;
    p.join()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l = Lock::new()?;
    for _ in 0..2 {
        // Python's `l.acquire(block=False)`: keep the lock held, without a guard.
        let got = l.try_acquire().map(LockGuard::forget).is_ok();
        println!("acquire(block=False) -> {got}");
    }
    run_child(&l)?;
    for _ in 0..2 {
        match l.release() {
            Ok(()) => println!("release() -> ok"),
            Err(e) => println!("release() -> error: {e}"),
        }
    }
    run_child(&l)?;

    // The same with a guard.
    {
        let _held = l.acquire().map_err(|e| e.to_string())?;
        println!("with a guard: locked = {}", l.is_locked());
    }
    println!("after the guard: locked = {}", l.is_locked());
    Ok(())
}
