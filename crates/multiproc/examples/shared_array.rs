//! S14 `shared_array`: `Array('i', range(10))` shared with a child. The child prints `a[:]`;
//! the parent sets `a[0] = 100`; the child, printing again, sees the parent's write.
//!
//! The seed orders the two sides with `time.sleep`; here two [`Event`]s do it, so the output
//! is the same on every run.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use std::time::Duration;

use multiproc::{Array, Event, get_context};

/// How long either side waits for the other before giving up (it never takes this long).
const PATIENCE: Duration = Duration::from_secs(30);

/// The seed's `f(a)`: prints the array, lets the parent go on, waits for its write, prints
/// again.
fn f((a, printed, written): (Array<i32>, Event, Event)) {
    println!("child: a[:] = {:?}", a.to_vec().expect("read the array"));
    printed.set();
    if !written.wait_timeout(PATIENCE) {
        println!("child: the parent never wrote");
        return;
    }
    println!("child: a[:] = {:?}", a.to_vec().expect("read the array"));
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    let values: Vec<i32> = (0..10).collect();
    let a = Array::from_slice(&values)?;
    let (printed, written) = (Event::new()?, Event::new()?);
    let mut p = ctx.process(f, (a.clone(), printed.clone(), written.clone()));
    p.start()?;

    if !printed.wait_timeout(PATIENCE) {
        return Err("the child never printed".into());
    }
    a.set(0, 100)?;
    println!("parent: a[0] = 100");
    written.set();

    p.join()?;
    println!("parent: a[:] = {:?}", a.to_vec()?);
    println!("child exitcode: {:?}", p.exitcode()?);
    Ok(())
}
