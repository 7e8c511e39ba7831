//! S10 `bounded_semaphore`: `BoundedSemaphore(3)`: after three acquires, releasing a fourth
//! time (here from a child process: the bound holds across processes) fails with CPython's
//! 'semaphore or lock released too many times', and the value stays 3.

use multiproc::{BoundedSemaphore, Process};

/// Python's four `s.release()`: the last one passes the bound.
fn release_four(s: BoundedSemaphore) {
    for _ in 0..4 {
        match s.release() {
            Ok(()) => println!("release() in a child process -> ok"),
            Err(e) => println!("release() in a child process -> error: {e}"),
        }
    }
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let s = BoundedSemaphore::new(3)?;
    println!("BoundedSemaphore(3)");
    println!("get_value() -> {}", s.get_value());
    for _ in 0..4 {
        println!("acquire(block=False) -> {}", s.try_acquire());
    }
    println!("get_value() -> {}", s.get_value());

    let mut p = Process::new(release_four, s.clone());
    p.start()?;
    p.join()?;
    println!("get_value() -> {}", s.get_value());

    // The same in this process.
    match s.release() {
        Ok(()) => println!("release() -> ok?!"),
        Err(e) => println!("release() -> error: {e}"),
    }
    println!("get_value() -> {}", s.get_value());
    Ok(())
}
