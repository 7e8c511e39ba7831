//! S28 `queue_exit` (**trap**): in CPython, a process that put data on a `Queue` can hang at
//! exit unless it calls `close()` (gh-73983). Its puts only hand the items to a feeder thread,
//! which writes them into a pipe; at exit the process joins that thread, and if nobody reads
//! the pipe, the feeder blocks on it for ever and so does the exit. The seed's advice:
//! "if the program deadlocks at its end, check that `Queue.close()` is called".
//!
//! Here a put copies the item into the queue's shared memory before it returns; there is no
//! feeder thread and nothing left to flush. Two producers put far more than any pipe holds
//! (50,000 small items and three of 8 MiB each), and nobody reads while they run. Neither
//! calls `close()`: the first returns from its function, the second ends with
//! `std::process::exit(0)` right after its last put (no destructors, nothing flushed). The
//! parent joins both (they have exited: no hang), and only then reads every item back and
//! checks that none is lost, that each producer's items come in the order put, and that the
//! large ones are intact.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use std::time::Duration;

use multiproc::{GetError, Queue, get_context};
use serde::{Deserialize, Serialize};

/// Small items each producer puts.
const SMALL: u32 = 50_000;

/// The size of a large item.
const LARGE_BYTES: usize = 8 << 20;

/// Where, in each producer's sequence, the large items go (the last is its very last put).
const LARGE_AT: [u32; 3] = [SMALL / 3, 2 * SMALL / 3, SMALL + 2];

/// Items each producer puts in all.
const ITEMS: u32 = SMALL + LARGE_AT.len() as u32;

/// How long the parent waits for a producer to exit before calling it a hang.
const HANG_LIMIT: Duration = Duration::from_secs(30);

/// A pipe's default capacity on Linux: CPython's feeder blocks once this much is unread.
const PIPE_BYTES: usize = 64 << 10;

#[derive(Serialize, Deserialize)]
enum Item {
    Small {
        producer: u8,
        seq: u32,
        text: String,
    },
    Large {
        producer: u8,
        seq: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// The bytes of the large item `seq`: a pattern the reader checks byte for byte (a cycle of
/// 251 bytes, a prime, so it never lines up with a power of two).
fn large_bytes(seq: u32) -> Vec<u8> {
    let cycle: Vec<u8> = (0..251).map(|j| ((seq as usize + j) % 251) as u8).collect();
    let mut bytes = Vec::with_capacity(LARGE_BYTES);
    while bytes.len() < LARGE_BYTES {
        let n = cycle.len().min(LARGE_BYTES - bytes.len());
        bytes.extend_from_slice(&cycle[..n]);
    }
    bytes
}

/// The text of the small item `seq` of `producer`.
fn small_text(producer: u8, seq: u32) -> String {
    format!("item {seq} from producer {producer}")
}

/// A producer: puts all its items, never calls `close()`, and ends (returning, or with
/// `std::process::exit` at once).
fn produce((q, producer, exit_at_once): (Queue<Item>, u8, bool)) {
    for seq in 0..ITEMS {
        let item = if LARGE_AT.contains(&seq) {
            Item::Large {
                producer,
                seq,
                bytes: large_bytes(seq),
            }
        } else {
            Item::Small {
                producer,
                seq,
                text: small_text(producer, seq),
            }
        };
        if let Err(e) = q.put(item) {
            eprintln!("producer {producer}: put {seq} failed: {e}");
            std::process::exit(1);
        }
    }
    if exit_at_once {
        std::process::exit(0);
    }
}

/// What the reader found for one producer.
#[derive(Default)]
struct Found {
    small: u32,
    large: u32,
    /// The next sequence number expected (items come in the order put).
    next: u32,
    /// Items out of order, or with wrong contents.
    bad: u32,
    bytes: usize,
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;

    let q = Queue::<Item>::new(0)?;
    let mut producers = [
        ctx.process(produce, (q.clone(), 1, false)),
        ctx.process(produce, (q.clone(), 2, true)),
    ];
    for p in &mut producers {
        p.start()?;
    }
    let per_producer = SMALL as usize * small_text(1, SMALL).len() + LARGE_AT.len() * LARGE_BYTES;
    println!(
        "2 producers, each putting {SMALL} small items and {} of {} MiB (over {} MiB each; a \
         pipe holds {} KiB); nobody reads, nobody calls close()",
        LARGE_AT.len(),
        LARGE_BYTES >> 20,
        per_producer >> 20,
        PIPE_BYTES >> 10
    );
    for (p, how) in producers
        .iter()
        .zip(["returns from its function", "calls std::process::exit(0)"])
    {
        if !p.join_timeout(HANG_LIMIT)? {
            p.kill()?;
            return Err(format!("{} hangs at exit", p.get_name()).into());
        }
        println!(
            "{} ({how} after its last put) has exited: exitcode {:?}",
            p.get_name(),
            p.exitcode()?
        );
    }

    println!("qsize() after both exited: {}", q.qsize());
    let mut found: [Found; 2] = Default::default();
    let mut other = 0;
    loop {
        let item = match q.try_get() {
            Ok(item) => item,
            Err(GetError::Empty) => break,
            Err(e) => return Err(e.into()),
        };
        let (producer, seq, ok, large, bytes) = match item {
            Item::Small {
                producer,
                seq,
                text,
            } => {
                let ok = text == small_text(producer, seq);
                (producer, seq, ok, false, text.len())
            }
            Item::Large {
                producer,
                seq,
                bytes,
            } => {
                let ok = LARGE_AT.contains(&seq) && bytes == large_bytes(seq);
                (producer, seq, ok, true, bytes.len())
            }
        };
        let Some(f) = found.get_mut(usize::from(producer).wrapping_sub(1)) else {
            other += 1;
            continue;
        };
        if !ok || seq != f.next {
            f.bad += 1;
        }
        f.next = seq + 1;
        if large {
            f.large += 1;
        } else {
            f.small += 1;
        }
        f.bytes += bytes;
    }
    for (i, f) in found.iter().enumerate() {
        let lost = ITEMS - (f.small + f.large).min(ITEMS);
        println!(
            "from producer {}: {} small and {} large items ({} MiB), lost {lost}, out of order \
             or damaged {}",
            i + 1,
            f.small,
            f.large,
            f.bytes >> 20,
            f.bad
        );
    }
    println!("items from nowhere: {other}");
    println!("empty() after reading: {}", q.empty());
    Ok(())
}
