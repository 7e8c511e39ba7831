//! S27 `worker_cache`: five workers take items from a shared source under a `Lock`, skip the
//! items already in a shared list of recent items (kept to the last 10), and process the
//! rest.
//!
//! The seed pops from Redis; here the source is a [`Queue`] the parent fills before the
//! workers start (the Redis-backed variant belongs to the distributed work). The seed's cache
//! is a `Manager().list()` made by each `Worker`, so each worker in fact has its own; here
//! there is one list for all, a [`RawArray`] in shared memory (its length, then the items,
//! oldest first), guarded by the one `Lock`. A worker holds the lock while it takes an item
//! and checks and updates the list, as the seed does, and processes the item after releasing
//! it, so the processing runs in parallel. The workers start together (a [`Barrier`]), so
//! the first one started does not take the whole source before the others begin.
//!
//! Since the takes and the list updates happen one at a time, in the source's order, which
//! items are skipped does not depend on which worker takes what: it is exactly the items equal
//! to one of the last 10 processed before them. The workers print their skips under the lock
//! (so in source order); the parent then checks that every source item was processed or
//! skipped exactly once, that the skips are those a sequential run gives, and that the list
//! ends as the last 10 items processed.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use std::time::Duration;

use multiproc::{Barrier, GetError, Lock, Process, Queue, RawArray, get_context};

/// Worker processes.
const WORKERS: u32 = 5;

/// How many recent items the list keeps.
const WINDOW: usize = 10;

/// Items in the source.
const ITEMS: u32 = 80;

/// How long a worker waits for the others to start (they never take this long).
const PATIENCE: Duration = Duration::from_secs(30);

/// A source entry: (its position in the source, the item).
type Entry = (u32, u32);

/// What one worker did with one item: (source position, item, the result if it processed it).
type Outcome = (u32, u32, Option<u64>);

/// What a worker gets: its id, the lock, the source, the recent list, a start barrier.
type WorkerArgs = (u32, Lock, Queue<Entry>, RawArray<u32>, Barrier);

/// The source: a fixed pseudo-random sequence of values 1..=24 (xorshift32), so the run is
/// the same every time and has both repeats within the window and repeats after it.
fn source_items() -> Vec<u32> {
    let mut x: u32 = 2_463_534_242;
    (0..ITEMS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1 + x % 24
        })
        .collect()
}

/// The work done on an item that is not skipped (real work, so that the workers share the
/// source): the Collatz steps of the numbers `item * 100_000 + k` for `k < 2000`, added.
fn process(item: u32) -> u64 {
    let base = u64::from(item) * 100_000;
    (0..2000)
        .map(|k| {
            let mut n = base + k + 1;
            let mut steps = 0;
            while n != 1 {
                n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
                steps += 1;
            }
            steps
        })
        .sum()
}

/// The seed's `pop_data`: under the lock, takes items until one is not among the recent
/// ones, records it as the newest recent item, and returns it (`None` once the source is
/// empty), with the items it skipped on the way.
fn pop_data(
    id: u32,
    lock: &Lock,
    source: &Queue<Entry>,
    recent: &RawArray<u32>,
) -> (Vec<Entry>, Option<Entry>) {
    let _held = match lock.acquire() {
        Ok(guard) => guard,
        Err(e) => panic!("worker {id}: {e}"),
    };
    let mut skipped = Vec::new();
    loop {
        let (seq, item) = match source.try_get() {
            Ok(taken) => taken,
            Err(GetError::Empty) => return (skipped, None),
            Err(e) => panic!("worker {id}: {e}"),
        };
        let list = recent.to_vec();
        let len = list[0] as usize;
        if list[1..=len].contains(&item) {
            println!("worker {id}: already finished! dump it = {item} (source #{seq})");
            skipped.push((seq, item));
            continue;
        }
        if len == WINDOW {
            // Drop the oldest: shift the others down by one.
            recent.write(1, &list[2..]).expect("within the list");
            recent.set(WINDOW, item).expect("within the list");
        } else {
            recent.set(1 + len, item).expect("within the list");
            recent.set(0, len as u32 + 1).expect("within the list");
        }
        return (skipped, Some((seq, item)));
    }
}

/// The seed's `working`: takes items until the source is empty, processing those not
/// skipped (outside the lock); returns what it did with each item it took.
fn working((id, lock, source, recent, start): WorkerArgs) -> Vec<Outcome> {
    // All begin together, so that the first one started does not take everything.
    start
        .wait_timeout(PATIENCE)
        .expect("all the workers at the start barrier");
    let mut outcomes = Vec::new();
    loop {
        let (skipped, next) = pop_data(id, &lock, &source, &recent);
        outcomes.extend(skipped.into_iter().map(|(seq, item)| (seq, item, None)));
        let Some((seq, item)) = next else {
            return outcomes;
        };
        outcomes.push((seq, item, Some(process(item))));
    }
}

/// What a sequential run gives: for each source item, whether it is skipped (equal to one of
/// the last `WINDOW` items processed before it); and the recent list at the end.
fn sequential(items: &[u32]) -> (Vec<bool>, Vec<u32>) {
    let mut recent: Vec<u32> = Vec::new();
    let skips = items
        .iter()
        .map(|item| {
            if recent.contains(item) {
                return true;
            }
            if recent.len() == WINDOW {
                recent.remove(0);
            }
            recent.push(*item);
            false
        })
        .collect();
    (skips, recent)
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    let items = source_items();
    println!("source: {} items: {items:?}", items.len());
    let source = Queue::new(0)?;
    for (seq, &item) in (0..).zip(&items) {
        source.put((seq, item)).map_err(|e| e.to_string())?;
    }
    let lock = Lock::new()?;
    let recent = RawArray::<u32>::zeroed(1 + WINDOW)?;
    let start = Barrier::new(WORKERS)?;
    println!("{WORKERS} workers, one Lock, a shared list of the last {WINDOW} items processed");

    let mut workers: Vec<Process<Vec<Outcome>>> = (1..=WORKERS)
        .map(|id| {
            ctx.process(
                working,
                (
                    id,
                    lock.clone(),
                    source.clone(),
                    recent.clone(),
                    start.clone(),
                ),
            )
        })
        .collect();
    for w in &mut workers {
        w.start()?;
    }
    // What happened to each source item, and how many each worker took.
    let mut seen: Vec<Vec<Option<u64>>> = vec![Vec::new(); items.len()];
    let mut per_worker = Vec::new();
    for (id, w) in (1..).zip(&mut workers) {
        let outcomes = w.join_result()?;
        let processed = outcomes.iter().filter(|o| o.2.is_some()).count();
        per_worker.push(format!(
            "worker {id}: processed {processed}, skipped {}",
            outcomes.len() - processed
        ));
        for (seq, item, result) in outcomes {
            let slot = seen
                .get_mut(seq as usize)
                .filter(|_| items[seq as usize] == item)
                .ok_or_else(|| format!("an item not in the source: #{seq} = {item}"))?;
            slot.push(result);
        }
    }
    for line in per_worker {
        println!("{line}");
    }

    let once = seen.iter().all(|s| s.len() == 1);
    let skipped: Vec<usize> = (0..items.len())
        .filter(|&i| matches!(seen[i].as_slice(), [None]))
        .collect();
    let processed = items.len() - skipped.len();
    println!(
        "processed {processed}, skipped {}, of {} items",
        skipped.len(),
        items.len()
    );
    println!("every source item processed or skipped exactly once: {once}");
    let listed: Vec<String> = skipped
        .iter()
        .map(|&i| format!("#{i}={}", items[i]))
        .collect();
    println!("skipped: {}", listed.join(" "));
    let results_right = (0..items.len()).all(|i| match seen[i].as_slice() {
        [Some(r)] => *r == process(items[i]),
        _ => true,
    });
    println!("every processed result right: {results_right}");

    let (model_skips, model_recent) = sequential(&items);
    let model: Vec<usize> = (0..items.len()).filter(|&i| model_skips[i]).collect();
    println!(
        "the skips are exactly the repeats of one of the last {WINDOW} processed: {}",
        once && skipped == model
    );
    // Items seen before, but long enough ago to have left the list: processed again.
    let again: Vec<String> = (0..items.len())
        .filter(|&i| !model_skips[i] && items[..i].contains(&items[i]))
        .map(|i| format!("#{i}={}", items[i]))
        .collect();
    println!(
        "processed again after leaving the list: {}",
        again.join(" ")
    );
    let list = recent.to_vec();
    let end = &list[1..=list[0] as usize];
    println!("recent items at the end: {end:?}");
    println!(
        "the last {WINDOW} processed: {}",
        end == model_recent.as_slice()
    );
    Ok(())
}
