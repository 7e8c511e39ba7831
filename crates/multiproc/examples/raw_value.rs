//! S31 `raw_value`: `lock=False` (CPython's `RawValue`, `RawArray`) gives shared memory with
//! no lock.
//!
//! A [`RawValue`] has no `get_lock` (there is none to get: the method does not exist) and
//! costs no lock to read or write; a child's `set` is seen by the parent. Its atomic
//! operations need no lock either: four processes adding 10,000 times each with
//! [`RawValue::fetch_add`] reach exactly 40,000. A [`RawArray`] is the same for many
//! elements: two children fill its two halves at once.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use multiproc::{Process, RawArray, RawValue, get_context};

const ADDS: u64 = 10_000;

fn set_42(v: RawValue<i32>) {
    v.set(42);
}

fn add_many(counter: RawValue<u64>) {
    for _ in 0..ADDS {
        counter.fetch_add(1);
    }
}

/// Writes `i` into element `i` of one half of the array.
fn fill_half((a, half): (RawArray<u32>, usize)) {
    let n = a.len() / 2;
    let start = half * n;
    let values: Vec<u32> = (start as u32..(start + n) as u32).collect();
    a.write(start, &values)
        .expect("the half lies within the array");
}

fn join_all(processes: &mut [Process<()>]) -> Result<(), Box<dyn std::error::Error>> {
    for p in processes.iter_mut() {
        p.start()?;
    }
    for p in processes.iter() {
        p.join()?;
        if p.exitcode()? != Some(0) {
            return Err(format!("a process failed: {p:?}").into());
        }
    }
    Ok(())
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    // Python's `Value('i', 0, lock=False)` / `RawValue('i', 0)`.
    let v = RawValue::new(0i32)?;
    println!("raw value: {} (no lock)", v.get());
    join_all(&mut [ctx.process(set_42, v.clone())])?;
    println!("after the child's set(42): {}", v.get());

    let counter = RawValue::new(0u64)?;
    let mut adders: Vec<_> = (0..4)
        .map(|_| ctx.process(add_many, counter.clone()))
        .collect();
    join_all(&mut adders)?;
    println!(
        "4 processes x {ADDS} fetch_add, no lock: {} (expected {})",
        counter.load(),
        4 * ADDS
    );

    // Python's `RawArray('I', 8)`.
    let a = RawArray::<u32>::zeroed(8)?;
    let mut fillers: Vec<_> = (0..2)
        .map(|h| ctx.process(fill_half, (a.clone(), h)))
        .collect();
    join_all(&mut fillers)?;
    println!("raw array filled by two children: {:?}", a.to_vec());
    Ok(())
}
