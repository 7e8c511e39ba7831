//! S08 `queue_bounds`: `Queue(3)` holds three items. A fourth non-blocking put fails with
//! `Full` (in Rust the item comes back with the error), and a fourth non-blocking get on the
//! emptied queue fails with `Empty`. A put or get with a timeout fails the same way, once the
//! timeout has passed (the measured time is printed).
//!
//! The seed tries it in one process; the queue is shared between processes, so the same
//! bounds hold there: a child fills the queue and is refused a fourth item, the parent sees
//! it full and takes the child's items in order; a child's timed put and get fail after the
//! timeout; and a child blocked in a put (or a get) goes on as soon as the parent takes (or
//! puts) an item.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use std::time::{Duration, Instant};

use multiproc::{Event, GetError, PutError, Queue, get_context};

/// The timeout of the timed puts and gets that are meant to fail.
const TIMEOUT: Duration = Duration::from_millis(200);

/// The timeout of the puts and gets that are meant to succeed (they never take this long).
const PATIENCE: Duration = Duration::from_secs(30);

/// What a put gave, as Python would say it.
fn show_put(r: Result<(), PutError<i32>>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(PutError::Full(item)) => format!("Full (the item came back: {item})"),
        Err(e) => format!("error: {e}"),
    }
}

/// What a get gave.
fn show_get(r: Result<i32, GetError>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(GetError::Empty) => "Empty".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// Runs `f`, and says how long it took, in whole milliseconds.
fn timed<R>(f: impl FnOnce() -> R) -> (R, u128) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed().as_millis())
}

/// A child: fills the queue without blocking (three puts, then a fourth that is refused).
fn fill(q: Queue<i32>) -> Vec<String> {
    (10..=13)
        .map(|i| format!("put({i}, block=False) -> {}", show_put(q.try_put(i))))
        .collect()
}

/// A child: a timed put on the full queue.
fn timed_put(q: Queue<i32>) -> String {
    let (r, ms) = timed(|| q.put_timeout(14, TIMEOUT));
    format!(
        "put(14, timeout={}) -> {} after {ms} ms",
        TIMEOUT.as_secs_f64(),
        show_put(r)
    )
}

/// A child: a timed get on the empty queue.
fn timed_get(q: Queue<i32>) -> String {
    let (r, ms) = timed(|| q.get_timeout(TIMEOUT));
    format!(
        "get(timeout={}) -> {} after {ms} ms",
        TIMEOUT.as_secs_f64(),
        show_get(r)
    )
}

/// A child: says it is about to put, then puts on the full queue, waiting for room.
fn waiting_put((q, about_to): (Queue<i32>, Event)) -> String {
    about_to.set();
    show_put(q.put_timeout(20, PATIENCE))
}

/// A child: says it is about to get, then gets from the empty queue, waiting for an item.
fn waiting_get((q, about_to): (Queue<i32>, Event)) -> String {
    about_to.set();
    show_get(q.get_timeout(PATIENCE))
}

/// Takes every item there is now, without blocking.
fn drain(q: &Queue<i32>) -> Vec<i32> {
    std::iter::from_fn(|| q.try_get().ok()).collect()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    // The seed: `q = Queue(3)`, four `put(i, block=False)`, four `get(block=False)`.
    let q = Queue::<i32>::new(3)?;
    println!("Queue(3): maxsize() -> {}", q.maxsize());
    for i in 1..=4 {
        println!("put({i}, block=False) -> {}", show_put(q.try_put(i)));
    }
    println!("qsize() -> {}, full() -> {}", q.qsize(), q.full());
    for _ in 1..=4 {
        println!("get(block=False) -> {}", show_get(q.try_get()));
    }
    println!("qsize() -> {}, empty() -> {}", q.qsize(), q.empty());

    // With a timeout: the same answers, once the timeout has passed.
    for i in 1..=3 {
        q.put(i).map_err(|e| e.to_string())?;
    }
    println!("put(1), put(2), put(3) -> qsize() {}", q.qsize());
    let (r, ms) = timed(|| q.put_timeout(4, TIMEOUT));
    println!(
        "put(4, timeout={}) -> {} after {ms} ms",
        TIMEOUT.as_secs_f64(),
        show_put(r)
    );
    println!("get() three times -> {:?}", drain(&q));
    let (r, ms) = timed(|| q.get_timeout(TIMEOUT));
    println!(
        "get(timeout={}) -> {} after {ms} ms",
        TIMEOUT.as_secs_f64(),
        show_get(r)
    );

    // Across processes. A child fills the queue and is refused a fourth item.
    let mut p = ctx.process(fill, q.clone());
    p.start()?;
    println!("a child process: {}", p.join_result()?.join(", "));
    println!("parent: qsize() -> {}, full() -> {}", q.qsize(), q.full());
    let mut p = ctx.process(timed_put, q.clone());
    p.start()?;
    println!("a child process: {}", p.join_result()?);
    let taken: Vec<String> = (0..4).map(|_| show_get(q.try_get())).collect();
    println!(
        "parent: get(block=False) four times -> {}",
        taken.join(", ")
    );
    let mut p = ctx.process(timed_get, q.clone());
    p.start()?;
    println!("a child process: {}", p.join_result()?);

    // A child waiting in a put on the full queue goes on when the parent takes an item.
    for i in 1..=3 {
        q.put(i).map_err(|e| e.to_string())?;
    }
    let about_to = Event::new()?;
    let mut p = ctx.process(waiting_put, (q.clone(), about_to.clone()));
    p.start()?;
    if !about_to.wait_timeout(PATIENCE) {
        return Err("the child never came to its put".into());
    }
    let first = show_get(q.get_timeout(PATIENCE));
    println!(
        "a child process: put(20, timeout={}) on the full queue -> {} (the parent took {first})",
        PATIENCE.as_secs(),
        p.join_result()?
    );
    println!("parent: the queue holds {:?}", drain(&q));

    // A child waiting in a get on the empty queue goes on when the parent puts an item.
    let about_to = Event::new()?;
    let mut p = ctx.process(waiting_get, (q.clone(), about_to.clone()));
    p.start()?;
    if !about_to.wait_timeout(PATIENCE) {
        return Err("the child never came to its get".into());
    }
    let put = show_put(q.put_timeout(30, PATIENCE));
    println!(
        "a child process: get(timeout={}) on the empty queue -> {} (the parent's put(30): {put})",
        PATIENCE.as_secs(),
        p.join_result()?
    );
    println!("parent: empty() -> {}", q.empty());
    Ok(())
}
