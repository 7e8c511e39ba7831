//! S01 `process_basics`: a target with arguments runs in a child (the seed's
//! `print(1, 2, 3, sep='-')` prints `1-2-3`); `start` and `join`; starting the same process
//! twice is an error; terminating a sleeping child gives exit code -15 (SIGTERM) and a
//! stopped state.

use std::time::Duration;

use multiproc::{Process, ProcessError};

/// Python's `print(*items, sep=sep)`, in the child.
fn print_sep((items, sep): (Vec<i32>, String)) {
    let text: Vec<String> = items.iter().map(i32::to_string).collect();
    println!("{}", text.join(&sep));
}

fn sleep_secs(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

#[multiproc::main]
fn main() -> Result<(), ProcessError> {
    let mut p1 = Process::new(print_sep, (vec![1, 2, 3], "-".to_owned()));
    p1.start()?;
    p1.join()?;
    println!("p1 exitcode: {:?}", p1.exitcode()?);

    // A process runs once; make a new one to run the same target again.
    match p1.start() {
        Err(e) => println!("p1 started again: error: {e}"),
        Ok(()) => println!("p1 started again: no error?!"),
    }

    let mut p2 = Process::new(sleep_secs, 10);
    p2.start()?;
    p2.terminate()?;
    p2.join_timeout(Duration::from_secs(10))?;
    println!("p2 exitcode: {:?}", p2.exitcode()?);

    println!("{p1:?} {p2:?}");
    Ok(())
}
