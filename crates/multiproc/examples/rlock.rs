//! S12 `rlock`: an `RLock` belongs to one process (and thread) with a count. Its owner may
//! acquire it again; another process's non-blocking acquire gives false and its release is an
//! error ('attempt to release recursive lock not owned by thread'); once the owner has
//! released as often as it acquired, the other process gets it. Each step shows the owner and
//! the count, as Python's `repr` does (`<RLock(MainProcess, 1)>`).
//!
//! The seed's last child exits still holding the lock, and CPython's parent is left with a
//! lock held by `SomeOtherProcess` forever. Here the next acquirer learns that the owner died
//! (`AcquireError::OwnerDied`) and gets the lock.

use multiproc::{AcquireError, Process, RLock, RLockGuard, current_process};

/// Python's `repr` of an RLock, with the real owner and count.
fn show(l: &RLock) -> String {
    match l.owner() {
        None => "<RLock(None, 0)>".to_owned(),
        Some((pid, _)) if pid == std::process::id() => {
            format!("<RLock({}, {})>", current_process().name(), l.count())
        }
        Some(_) => format!("<RLock(SomeOtherProcess, {})>", l.count()),
    }
}

/// Python's `l.acquire(block=False)`, keeping the lock held (no guard) if it got it.
fn try_acquire(l: &RLock) -> bool {
    l.try_acquire().map(RLockGuard::forget).is_ok()
}

fn child_acquire(l: RLock) {
    let got = try_acquire(&l);
    println!(
        "{}: acquire(block=False) -> {got}  {}",
        current_process().name(),
        show(&l)
    );
}

fn child_release(l: RLock) {
    match l.release() {
        Ok(()) => println!("{}: release() -> ok?!", current_process().name()),
        Err(e) => println!("{}: release() -> error: {e}", current_process().name()),
    }
}

fn in_child(f: fn(RLock), l: &RLock) -> Result<(), multiproc::ProcessError> {
    let mut p = Process::new(f, l.clone());
    p.start()?;
    p.join()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l = RLock::new()?;
    println!("{}", show(&l));
    println!("MainProcess: acquire(block=False) -> {}", try_acquire(&l));
    println!("{}", show(&l));
    in_child(child_acquire, &l)?;
    in_child(child_release, &l)?;
    println!("MainProcess: acquire(block=False) -> {}", try_acquire(&l));
    println!("{}", show(&l));
    l.release()?;
    println!("MainProcess: release() -> ok  {}", show(&l));
    in_child(child_acquire, &l)?;
    l.release()?;
    println!("MainProcess: release() -> ok  {}", show(&l));
    // Released as often as acquired: another process gets it (and exits holding it).
    in_child(child_acquire, &l)?;
    println!("{}", show(&l));
    match l.try_acquire() {
        Ok(_) => println!("MainProcess: acquire(block=False) -> true?!"),
        Err(AcquireError::OwnerDied(g)) => {
            println!("MainProcess: acquire(block=False) -> true: its owner died holding it");
            println!("{}", show(&l));
            drop(g);
        }
        Err(AcquireError::Timeout) => println!("MainProcess: acquire(block=False) -> false"),
    }
    println!("{}", show(&l));
    Ok(())
}
