//! S05 `pool_imap`: `imap` hands back each result as soon as it and those before it are done,
//! in input order, while the later tasks still run. Three workers run `f(x)`, which sleeps and
//! returns `x * x`, over `0..10`: the parent takes `0, 1, 4` after about a second, `9, 16, 25`
//! after two, `36, 49, 64` after three and `81` after four. (`map`, and `map_async`'s `get`,
//! would give nothing until all ten are done.)
//!
//! The seed's `f` sleeps 10 s, so its batches come 10 s apart; here it sleeps 1 s, so they
//! come a second apart and the example ends in about 4 s.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default).

use std::time::{Duration, Instant};

use multiproc::Pool;

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
    let start = Instant::now();
    let pool = Pool::new(3)?;
    let it = pool.imap(f, 0..10)?;
    println!(
        "imap(f, 0..10) returned after {:.2}s",
        start.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    for value in it {
        let value = value?;
        println!(
            "next(it) = {value}\tafter {:.2}s",
            start.elapsed().as_secs_f64()
        );
        results.push(value);
    }
    println!("all results: {results:?}");
    Ok(())
}
