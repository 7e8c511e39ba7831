//! S04 `pool_starmap`: `starmap` unpacks each tuple into the function's arguments. CPython's
//! `pool.starmap(f, [(a, b), ...])` calls `f(a, b)`; here the function takes two arguments,
//! `fn(A, B) -> R`, and the items are pairs `(A, B)`. `map` over the same pairs would hand
//! the function the whole tuple instead, so its function takes one `(A, B)` argument.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default).

use multiproc::Pool;

/// Two arguments, as Python's `pow(base, exp)`.
fn power(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

/// Two arguments of different types.
fn repeat(text: String, times: usize) -> String {
    text.repeat(times)
}

/// One argument, the whole pair: what `map` calls.
fn power_of_pair((base, exp): (u64, u32)) -> u64 {
    base.pow(exp)
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(method) = std::env::args().nth(1) {
        multiproc::set_start_method(method.parse()?)?;
    }
    let pool = Pool::new(3)?;

    let pairs = vec![(2u64, 5u32), (3, 2), (10, 3), (7, 0)];
    println!("pairs: {pairs:?}");
    println!(
        "starmap(power, pairs) = {:?}",
        pool.starmap(power, pairs.clone())?
    );
    println!(
        "starmap_async(power, pairs).get() = {:?}",
        pool.starmap_async(power, pairs.clone())?.get()?
    );
    println!(
        "map(power_of_pair, pairs) = {:?}",
        pool.map(power_of_pair, pairs)?
    );

    let words = [("ab", 3), ("-", 5), ("xyz", 1)].map(|(w, n)| (w.to_owned(), n));
    println!("words: {words:?}");
    println!(
        "starmap(repeat, words) = {:?}",
        pool.starmap(repeat, words)?
    );

    pool.close();
    pool.join()?;
    Ok(())
}
