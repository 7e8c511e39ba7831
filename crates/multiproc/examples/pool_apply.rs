//! S06 `pool_apply`: `apply` runs one task in a worker and blocks until its result is ready;
//! `apply_async` returns an [`AsyncResult`] at once, and its `get` blocks until the result is
//! ready. `f(x)` sleeps, then returns `x * x`: `apply(f, 2)` gives 4 after about a second,
//! `apply_async(f, 3)` returns at once, not ready, and its `get()` gives 9 a second later.
//!
//! The seed's `f` sleeps 10 s; here it sleeps 1 s. (As in CPython, `apply` is `apply_async`
//! followed by `get`.)
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default).

use std::time::{Duration, Instant};

use multiproc::{AsyncResult, Pool};

/// How long each task sleeps (the seed's 10 s, shortened).
const SLEEP: Duration = Duration::from_secs(1);

/// The seed's `f`.
fn f(x: u64) -> u64 {
    std::thread::sleep(SLEEP);
    x * x
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(method) = std::env::args().nth(1) {
        multiproc::set_start_method(method.parse()?)?;
    }
    let pool = Pool::new(3)?;

    let t = Instant::now();
    let result1 = pool.apply(f, 2)?;
    println!(
        "apply(f, 2) = {result1}\tafter {:.2}s (it waited for the result)",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let result2: AsyncResult<u64> = pool.apply_async(f, 3)?;
    println!(
        "apply_async(f, 3) returned after {:.2}s: ready() = {}",
        t.elapsed().as_secs_f64(),
        result2.ready()
    );
    println!("print(result1, result2): {result1} {result2:?}");
    let value = result2.get()?;
    println!(
        "result2.get() = {value}\tafter {:.2}s (it waited for the result)",
        t.elapsed().as_secs_f64()
    );
    println!("ready() = {}", result2.ready());

    pool.close();
    pool.join()?;
    Ok(())
}
