//! The main job: multiproc at work, in one run.
//!
//! 1. CPU-bound work (counting primes below 2,000,000, or the first argument) split over
//!    `cpu_count()` processes, with each start method; the counts come back as typed values
//!    and add up to the same total.
//! 2. A child that crashes in native code (abort) is contained: the parent learns the signal
//!    and carries on.
//! 3. A runaway child is stopped by a timeout: `join_timeout`, then `kill`.
//! 4. A panic comes back with its message and where it happened.
//! 5. Workers stream partial counts back over one-way pipes as they go; `wait` takes whichever
//!    pipe is ready, and end of file says a worker is done.
//! 6. Shared memory: workers add their counts to a shared `Value` with an atomic add (no lock)
//!    and write them into a shared `Array`; a worker killed while it holds a `Lock` does not
//!    block the next one, which learns that the holder died.
//! 7. A work queue: a producer process puts the chunks on a `Queue` and exits at once (no
//!    feeder thread to flush, nothing lost); a worker killed while it waits in `get` wedges
//!    nothing; the other workers drain the queue and send their counts back on another.

use std::time::{Duration, Instant};

use multiproc::connection::ConnectionError;
use multiproc::{
    AcquireError, Array, ChildError, Connection, Context, Event, Lock, LockGuard, Process,
    ProcessError, Queue, StartMethod, Value,
};

/// A chunk of the range to count, or `None`: stop.
type Task = Option<(u64, u64)>;

/// How many chunks the work queue carries.
const CHUNKS: u64 = 64;

/// Counts the primes in `[lo, hi)` by trial division: honest CPU work.
fn count_primes((lo, hi): (u64, u64)) -> u64 {
    (lo.max(2)..hi)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// Stands for a native library that crashes the process.
fn crash_in_native_code(_: ()) {
    std::process::abort();
}

/// Stands for work that never finishes.
fn runaway(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Counts the primes of its range in four chunks, sending each chunk's count as soon as it
/// has it.
fn report_progress((mut conn, (lo, hi)): (Connection<u64>, (u64, u64))) {
    let chunk = (hi - lo).div_ceil(4).max(1);
    let mut at = lo;
    while at < hi {
        let end = (at + chunk).min(hi);
        conn.send(&count_primes((at, end)))
            .expect("the parent reads");
        at = end;
    }
}

/// Counts its share of the primes into shared memory: its own slot of `counts`, and the
/// running `total` by an atomic add.
fn count_into_shared((total, counts, i, (lo, hi)): (Value<u64>, Array<u64>, usize, (u64, u64))) {
    let n = count_primes((lo, hi));
    counts.set(i, n).expect("a slot per worker");
    total.fetch_add(n);
}

/// Takes the lock, says so, and hangs while holding it (until it is killed).
fn hold_lock_and_hang((lock, holding): (Lock, Event)) {
    if let Ok(guard) = lock.acquire() {
        LockGuard::forget(guard);
    }
    holding.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn produce_chunks((tasks, workers, limit): (Queue<Task>, u64, u64)) {
    for i in 0..CHUNKS {
        tasks.put(Some(share(i, CHUNKS, limit))).unwrap();
    }
    for _ in 0..workers {
        tasks.put(None).unwrap();
    }
} // returns at once: every item is in the queue's shared memory already

fn wait_for_a_task((tasks, waiting): (Queue<Task>, Event)) {
    waiting.set();
    let _ = tasks.get();
}

fn take_chunks((tasks, results): (Queue<Task>, Queue<u64>)) {
    while let Ok(Some(range)) = tasks.get() {
        results.put(count_primes(range)).unwrap();
    }
}

fn divide((a, b): (u32, u32)) -> u32 {
    a.checked_div(b).expect("the divisor must not be zero")
}

/// Worker `i`'s part of `[0, limit)` split over `workers`.
fn share(i: u64, workers: u64, limit: u64) -> (u64, u64) {
    let step = limit.div_ceil(workers);
    // With more workers than numbers, the last shares are empty (never reversed).
    ((i * step).min(limit), ((i + 1) * step).min(limit))
}

/// Splits `[0, limit)` over `workers` processes made with `method`, and adds up their counts.
fn primes_with(method: StartMethod, workers: u64, limit: u64) -> Result<u64, ProcessError> {
    let ctx = Context::new(method);
    let mut procs = Vec::new();
    for i in 0..workers {
        let mut p = ctx.process(count_primes, share(i, workers, limit));
        p.start()?;
        procs.push(p);
    }
    procs.iter_mut().map(|p| p.join_result()).sum()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The first argument, if any, is where counting stops.
    let limit = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let workers = multiproc::cpu_count() as u64;
    println!("1. primes below {limit}, split over {workers} processes:");
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ] {
        let t = Instant::now();
        let total = primes_with(method, workers, limit)?;
        println!(
            "   {method:<10} {total} primes in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    println!("2. a crash in native code stays in its process:");
    let mut p = Process::new(crash_in_native_code, ());
    p.start()?;
    match p.join_result() {
        Err(ProcessError::Child(e @ ChildError::Killed { .. })) => println!("   {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    println!("   exitcode {:?}; the parent carries on", p.exitcode()?);

    println!("3. a runaway child is stopped by a timeout:");
    let mut p = Process::new(runaway, ()).name("runaway");
    p.start()?;
    if !p.join_timeout(Duration::from_millis(200))? {
        println!("   still running after 200 ms: kill");
        p.kill()?;
        p.join()?;
    }
    println!("   exitcode {:?}", p.exitcode()?);

    println!("4. a panic comes back with its message and location:");
    let mut p = Process::new(divide, (1, 0));
    p.start()?;
    if let Err(e) = p.join_result() {
        println!("   {e}");
    }
    println!("   exitcode {:?}", p.exitcode()?);

    println!("5. workers stream partial counts over pipes; wait() takes whichever is ready:");
    let mut readers = Vec::new();
    for i in 0..workers {
        let (reader, writer) = multiproc::pipe::<u64>(false)?;
        Process::new(report_progress, (writer, share(i, workers, limit))).start()?;
        readers.push(reader);
    }
    let (mut total, mut messages) = (0, 0);
    while !readers.is_empty() {
        // Highest index first, so removing a finished reader keeps the others' indices.
        for i in multiproc::wait(&readers, Some(Duration::from_secs(60)))?
            .into_iter()
            .rev()
        {
            match readers[i].recv() {
                Ok(count) => {
                    total += count;
                    messages += 1;
                }
                Err(ConnectionError::Eof) => drop(readers.swap_remove(i)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    println!("   {messages} messages from {workers} workers: {total} primes");

    println!("6. shared memory: a Value, an Array, and a Lock whose holder is killed:");
    let total = Value::new(0u64)?;
    let counts = Array::<u64>::zeroed(workers as usize)?;
    let mut procs = Vec::new();
    for i in 0..workers {
        let range = share(i, workers, limit);
        let args = (total.clone(), counts.clone(), i as usize, range);
        let mut p = Process::new(count_into_shared, args);
        p.start()?;
        procs.push(p);
    }
    for p in procs {
        p.join()?;
    }
    println!(
        "   per worker {:?}, total {} primes",
        counts.to_vec()?,
        total.load()
    );
    let (lock, holding) = (Lock::new()?, Event::new()?);
    let mut holder = Process::new(hold_lock_and_hang, (lock.clone(), holding.clone()));
    holder.start()?;
    holding.wait_timeout(Duration::from_secs(60));
    holder.kill()?;
    holder.join()?;
    match lock.acquire_timeout(Duration::from_secs(10)) {
        Err(AcquireError::OwnerDied(_guard)) => {
            println!("   the holder was killed; the next acquirer got the lock and was told")
        }
        Ok(_) => println!("   unexpected: acquired with no word of the holder's death"),
        Err(AcquireError::Timeout) => println!("   unexpected: the lock stayed held"),
    }

    println!("7. a work queue: a producer that exits at once, a worker killed in get():");
    let tasks = Queue::<Task>::new(0)?;
    let results = Queue::<u64>::new(0)?;
    let waiting = Event::new()?;
    let mut victim = Process::new(wait_for_a_task, (tasks.clone(), waiting.clone()));
    victim.start()?;
    waiting.wait_timeout(Duration::from_secs(60));
    victim.kill()?;
    victim.join()?;
    let mut producer = Process::new(produce_chunks, (tasks.clone(), workers, limit));
    producer.start()?;
    producer.join()?;
    println!(
        "   the producer exited (exitcode {:?}) with {} items queued, none lost",
        producer.exitcode()?,
        tasks.qsize()
    );
    let mut procs = Vec::new();
    for _ in 0..workers {
        let mut p = Process::new(take_chunks, (tasks.clone(), results.clone()));
        p.start()?;
        procs.push(p);
    }
    let total: u64 = (0..CHUNKS)
        .map(|_| results.get_timeout(Duration::from_secs(60)))
        .sum::<Result<u64, _>>()?;
    for p in procs {
        p.join()?;
    }
    println!("   the killed worker wedged nothing: {CHUNKS} chunks, {total} primes");
    Ok(())
}
