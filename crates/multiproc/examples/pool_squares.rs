//! S25 `pool_squares`: the `multiprocessing` documentation's first example,
//! `with Pool(5) as p: print(p.map(f, [1, 2, 3]))` with `f(x) = x * x`, prints `[1, 4, 9]`.
//!
//! `#[multiproc::main]` stands for the seed's `if __name__ == '__main__':` guard.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default).

use multiproc::Pool;

fn f(x: u64) -> u64 {
    x * x
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(method) = std::env::args().nth(1) {
        multiproc::set_start_method(method.parse()?)?;
    }
    // Leaving CPython's `with` block terminates the pool; so does dropping it here.
    let p = Pool::new(5)?;
    println!("{:?}", p.map(f, [1, 2, 3])?);
    Ok(())
}
