//! S09 `semaphore`: `Semaphore(3)` has the value 3; four non-blocking acquires give true,
//! true, true, false; the value is then 0; four releases give the value 4 (a plain semaphore
//! has no upper bound; see `bounded_semaphore` for one that has).
//!
//! The permits are shared between processes: a child that takes two of them leaves the parent
//! with two fewer.

use multiproc::{Process, Semaphore};

/// Takes two permits without blocking; says what it got.
fn take_two(s: Semaphore) {
    let got: Vec<bool> = (0..2).map(|_| s.try_acquire()).collect();
    println!("a child process: acquire(block=False) twice -> {got:?}");
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let s = Semaphore::new(3)?;
    println!("Semaphore(3)");
    println!("get_value() -> {}", s.get_value());
    for _ in 0..4 {
        // Python's `s.acquire(block=False)`.
        println!("acquire(block=False) -> {}", s.try_acquire());
    }
    println!("get_value() -> {}", s.get_value());
    for _ in 0..4 {
        s.release()?;
        println!("release() -> ok");
    }
    println!("get_value() -> {}", s.get_value());

    let mut p = Process::new(take_two, s.clone());
    p.start()?;
    p.join()?;
    println!("get_value() in the parent -> {}", s.get_value());
    Ok(())
}
