//! S15 `shared_array_lock`: while the parent holds the array's lock, the child's write
//! `a[0] = 100` waits; once the parent releases it, the write lands.
//!
//! The seed shows it with `time.sleep`; here the order is certain. The child first tries the
//! lock without waiting (refused: the parent holds it), tells the parent it is about to
//! write, and writes, which waits for the lock. The parent, still holding the lock, reads
//! `a[:]` (its own reads do not wait for the lock it holds) and sees no 100; then it says so
//! and releases. The child's write can only finish after that, so its report comes last.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use std::time::Duration;

use multiproc::{Array, Event, get_context};

/// How long either side waits for the other before giving up (it never takes this long).
const PATIENCE: Duration = Duration::from_secs(30);

/// The seed's `f(a)`: `a[0] = 100`, which waits while the parent holds the lock.
fn f((a, writing): (Array<i32>, Event)) {
    match a.get_lock().try_acquire() {
        Err(_) => println!("child: the lock is held; a[0] = 100 waits for it"),
        Ok(_) => println!("child: the lock was free?!"),
    }
    writing.set();
    a.set(0, 100).expect("write a[0]");
    println!("child: a[0] = 100 written");
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    let values: Vec<i32> = (0..10).collect();
    let a = Array::from_slice(&values)?;
    let writing = Event::new()?;

    // Python's `a.acquire()`.
    let held = a.get_lock().acquire().map_err(|e| e.to_string())?;
    println!("parent: holds the array's lock");
    let mut p = ctx.process(f, (a.clone(), writing.clone()));
    p.start()?;
    if !writing.wait_timeout(PATIENCE) {
        return Err("the child never started its write".into());
    }
    println!("parent: a[:] = {:?}", a.to_vec()?);
    println!("parent: releases the lock");
    // Python's `a.release()`.
    drop(held);

    p.join()?;
    println!("parent: a[:] = {:?}", a.to_vec()?);
    println!("child exitcode: {:?}", p.exitcode()?);
    Ok(())
}
