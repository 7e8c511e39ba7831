//! S13 `shared_value`: `Value('i', 100)` shared with a child. The child prints 100; the parent
//! adds 1; the child, printing again, sees 101.
//!
//! The seed orders the two sides with `time.sleep`; here two [`Event`]s do it, so the output
//! is the same on every run, however slow the machine. The parent's `+= 1` holds the value's
//! lock ([`Value::lock`]), so it is one step even if other processes add at the same time.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use std::time::Duration;

use multiproc::{Event, Value, get_context};

/// How long either side waits for the other before giving up (it never takes this long).
const PATIENCE: Duration = Duration::from_secs(30);

/// The seed's `f(v)`: prints the value, lets the parent go on, waits for its change, prints
/// again.
fn f((v, printed, added): (Value<i32>, Event, Event)) {
    println!("child: v.value = {}", v.get());
    printed.set();
    if !added.wait_timeout(PATIENCE) {
        println!("child: the parent never added");
        return;
    }
    println!("child: v.value = {}", v.get());
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    let v = Value::new(100i32)?;
    let (printed, added) = (Event::new()?, Event::new()?);
    let mut p = ctx.process(f, (v.clone(), printed.clone(), added.clone()));
    p.start()?;

    if !printed.wait_timeout(PATIENCE) {
        return Err("the child never printed".into());
    }
    {
        // Python's `v.value += 1`, as one step under the value's lock.
        let mut value = v.lock().map_err(|e| e.to_string())?;
        *value += 1;
    }
    println!("parent: v.value += 1");
    added.set();

    p.join()?;
    println!("parent: v.value = {}", v.get());
    println!("child exitcode: {:?}", p.exitcode()?);
    Ok(())
}
