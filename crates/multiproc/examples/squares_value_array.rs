//! S30 `squares_value_array`: six processes, one per number 0..=5, each write `number²` into
//! an `Array` and add it to a `Value` total: `[0, 1, 4, 9, 16, 25]`, total 55.
//!
//! The seed's `squared_nums_total.value += squared_num` reads, adds and writes in three
//! steps without the lock, so two processes adding at once can lose one of the additions.
//! Here the addition is [`Value::fetch_add`]: one atomic step, no lock, nothing lost. To
//! show it, the six processes then add their squares 10,000 times more each, once with
//! `fetch_add` and once under the value's lock ([`Value::update`]): both totals are exact.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use multiproc::{Array, Process, Value, get_context};

/// How often each process adds its square in the second round.
const ROUNDS: i32 = 10_000;

/// The seed's `parallel_func`.
fn parallel_func((number, squared_nums, squared_nums_total): (i32, Array<i32>, Value<i32>)) {
    let squared_num = number * number;
    squared_nums
        .set(number as usize, squared_num)
        .expect("the array has a place for every number");
    squared_nums_total.fetch_add(squared_num);
}

/// Adds `number²` `ROUNDS` times to each total: lock-free, and under the lock.
fn add_many((number, atomic_total, locked_total): (i64, Value<i64>, Value<i64>)) {
    for _ in 0..ROUNDS {
        atomic_total.fetch_add(number * number);
        locked_total.update(|t| t + number * number);
    }
}

fn run_all<A>(
    ctx: &multiproc::Context,
    target: fn(A),
    args: impl Iterator<Item = A>,
) -> Result<(), Box<dyn std::error::Error>>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut processes: Vec<Process<()>> = args.map(|a| ctx.process(target, a)).collect();
    for p in &mut processes {
        p.start()?;
    }
    for p in &processes {
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

    let nums = [0, 1, 2, 3, 4, 5];
    let squared_nums = Array::<i32>::zeroed(nums.len())?;
    let squared_nums_total = Value::new(0i32)?;
    run_all(
        &ctx,
        parallel_func,
        nums.iter()
            .map(|&n| (n, squared_nums.clone(), squared_nums_total.clone())),
    )?;
    println!("squared_nums: {:?}", squared_nums.to_vec()?);
    println!("squared_nums_total: {}", squared_nums_total.get());

    let atomic_total = Value::new(0i64)?;
    let locked_total = Value::new(0i64)?;
    run_all(
        &ctx,
        add_many,
        nums.iter()
            .map(|&n| (i64::from(n), atomic_total.clone(), locked_total.clone())),
    )?;
    println!(
        "{} processes x {ROUNDS} additions: fetch_add total {}, locked total {} (expected {})",
        nums.len(),
        atomic_total.get(),
        locked_total.get(),
        55 * i64::from(ROUNDS)
    );
    Ok(())
}
