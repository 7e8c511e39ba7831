//! Queues between processes (issue 5): a stream of 64-byte items from one producer to one
//! consumer, a ping-pong through two queues, and two producers with two consumers.
//!
//! - multiproc: `multiproc::Queue` (`Queue::new(0)`, unbounded, as CPython's default), with
//!   children started with the fork start method (`queue_lib.rs`). A 64-byte item is a
//!   `serde_bytes::ByteArray<64>`: a `[u8; 64]` that serde writes as one byte string (one
//!   length and 64 bytes, copied in one go, no allocation on either side), the match of
//!   CPython's `bytes` of 64, which pickle writes as one `SHORT_BINBYTES` (a plain `[u8; 64]`
//!   has no serde impl, and a `Vec<u8>` would go byte by byte and allocate on every get);
//! - CPython: `multiprocessing.get_context("fork").Queue()`, `bytes` of 64, `int` for the
//!   ping-pong (`python/queues.py`);
//! - floor: for the stream, a single-producer single-consumer ring of 64-byte slots in a
//!   `MAP_SHARED` mapping, one atomic store per item and side, a futex only to sleep
//!   ([`floor::RingChild`]): the fastest way to move 64-byte items between two processes,
//!   with no lock (there is one producer and one consumer) and no encoding; for the
//!   ping-pong, the futex ping-pong of the synchronization rows ([`floor::SyncChild`] with
//!   [`SyncJob::Pong`], no spin). The two-by-two row has no floor.
//!
//! The rows:
//!
//! - **1 producer → 1 consumer**: the child is the producer, the parent the consumer. A
//!   repetition: the parent tells the child to go (a byte on a pipe; a futex word for the
//!   floor), the child puts a batch of items, the parent gets them all and compares each
//!   with the item put. Reported per **1,000 items** (the table's microseconds then read as
//!   nanoseconds per item: 500 µs per 1,000 is 2,000,000 items/s). A batch is 100,000 items
//!   in Rust and 20,000 in CPython (tens of milliseconds either way), so the go signal (one
//!   wake-up) is a small part of it.
//! - **ping-pong**: the parent puts a `u64` in one queue and gets it back from another; the
//!   child gets from the first and puts what it got into the second. One round trip (a
//!   repetition is 1,000).
//! - **2 producers → 2 consumers**: four children on one queue. A repetition: the parent
//!   tells both producers to go (a pipe each), each puts a batch of items and then an
//!   end-of-batch mark; a consumer that gets a mark reports on a second queue how many items
//!   it took since its last report; the repetition ends when both marks are reported (then
//!   every item before them was taken). At the end the consumers are stopped and the parent
//!   checks that they took every item. Reported per **1,000 items** (a batch is 50,000 items
//!   per producer in Rust, 10,000 in CPython). The children are not placed: on {0,1} the
//!   scheduler puts the five processes where it likes.
//!
//! The one-to-one and ping-pong cells start their child once, outside the timed region; on
//! {0,1} the child goes to CPU 1 and the parent to CPU 0 ([`floor::place_child`]; the
//! CPython script does the same), as in the connection and synchronization rows.
//!
//! Targets (issue 5):
//!
//! - 1 → 1, 64-byte items: at least 2,000,000 items/s (at most 500 µs per 1,000), and at
//!   least 10x CPython's rate;
//! - ping-pong on one CPU: within 1.5x of the futex ping-pong floor, and at least 8x faster
//!   than CPython (also reported on two CPUs);
//! - 2 → 2, 64-byte items: items/s against CPython (no figure set).

use std::time::Duration;

use super::common::{err, start_apart};
use crate::floor::{self, RingChild, SLOT, SyncChild, SyncJob};
use crate::workload::{Case, CellFn, Floor, LATENCY_CPUS, Python, Reps};

/// The size of a stream item.
pub(super) const ITEM_SIZE: usize = SLOT;
/// Operations a reported stream figure stands for (the rows say "per 1,000 items").
pub(super) const PER: usize = 1000;
/// Items per one-to-one repetition (per `--quick` repetition).
pub(super) const STREAM_ITEMS: (usize, usize) = (100_000, 2_000);
/// Round trips per ping-pong repetition (per `--quick` repetition).
pub(super) const ROUND_TRIPS: (usize, usize) = (1_000, 50);
/// Items per producer per two-by-two repetition (per `--quick` repetition).
pub(super) const MANY_ITEMS: (usize, usize) = (50_000, 1_000);
/// How long the ring floor spins before it sleeps, on a two-CPU row.
const SPIN: Duration = Duration::from_micros(50);

/// The number of items a repetition reports, as units of [`PER`].
pub(super) fn units(items: usize) -> usize {
    items.div_ceil(PER)
}

/// The item every producer puts (not all zeros, so a mix-up shows); CPython's is
/// `bytes(range(64))`.
pub(super) fn item_bytes() -> [u8; ITEM_SIZE] {
    std::array::from_fn(|i| i as u8)
}

fn floor_stream(reps: &Reps) -> Result<Vec<f64>, String> {
    // Spinning pays only when the two sides run on CPUs of their own.
    let spin = if floor::allowed_cpus().map_err(err)?.count() > 1 {
        SPIN
    } else {
        Duration::ZERO
    };
    let n = reps.batch(STREAM_ITEMS.0, STREAM_ITEMS.1);
    let item = item_bytes();
    let mut child = start_apart(|| RingChild::start(item, n as u64, spin).map_err(err))?;
    let samples = reps.time_per(units(n), || match child.batch(|got| *got == item) {
        0 => Ok(()),
        bad => Err(format!("{bad} items differ from the item put")),
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

fn floor_ping_pong(reps: &Reps) -> Result<Vec<f64>, String> {
    let child = start_apart(|| SyncChild::start(SyncJob::Pong(Duration::ZERO)).map_err(err))?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            child.ping(Duration::ZERO);
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

static STREAM_FLOOR: Floor = Floor {
    name: "SPSC ring of 64 B slots in MAP_SHARED, futex only to sleep (spins 50 µs on 2 CPUs)",
    run: floor_stream,
};

static PING_PONG_FLOOR: Floor = Floor {
    name: "futex ping-pong on one shared word (wake only a sleeper)",
    run: floor_ping_pong,
};

/// A row of this workload: CPython runs `queues.py ARGS`.
fn case(
    name: &'static str,
    lib: CellFn,
    python_args: &'static [&'static str],
    floor: Option<&'static Floor>,
) -> Case {
    Case {
        name,
        lib,
        python: Some(Python {
            script: "queues.py",
            args: python_args,
        }),
        floor,
        cpus: LATENCY_CPUS,
        fresh_process: false,
    }
}

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    use super::queue_lib as lib;
    // (the sizes and batches below are the constants above: `tests::python_args_agree`)
    vec![
        case(
            "queue 1 producer → 1 consumer, 64 B items (per 1,000 items)",
            lib::one_to_one,
            &[
                "stream",
                "--size",
                "64",
                "--batch",
                "20000",
                "--quick-batch",
                "500",
            ],
            Some(&STREAM_FLOOR),
        ),
        case(
            "queue ping-pong round trip through two queues (u64)",
            lib::ping_pong,
            &["pingpong", "--batch", "1000", "--quick-batch", "50"],
            Some(&PING_PONG_FLOOR),
        ),
        case(
            "queue 2 producers → 2 consumers, 64 B items (per 1,000 items)",
            lib::two_by_two,
            &[
                "many",
                "--size",
                "64",
                "--batch",
                "10000",
                "--quick-batch",
                "250",
            ],
            None,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::common::python_arg as arg;
    use super::*;

    /// CPython's batches, smaller than ours: its item takes microseconds, so these already
    /// make tens of milliseconds.
    const PY_STREAM_ITEMS: (usize, usize) = (20_000, 500);
    const PY_MANY_ITEMS: (usize, usize) = (10_000, 250);

    #[test]
    fn python_args_agree() {
        for case in cases() {
            let args = case.python.expect("a CPython side").args;
            let expected = match args[0] {
                "stream" => PY_STREAM_ITEMS,
                "pingpong" => ROUND_TRIPS,
                "many" => PY_MANY_ITEMS,
                other => panic!("unknown workload {other}"),
            };
            if args[0] != "pingpong" {
                assert_eq!(arg(args, "--size"), ITEM_SIZE, "{}", case.name);
            }
            assert_eq!(arg(args, "--batch"), expected.0, "{}", case.name);
            assert_eq!(arg(args, "--quick-batch"), expected.1, "{}", case.name);
        }
    }

    #[test]
    fn the_item_is_python_s() {
        // `bytes(range(64))`
        assert_eq!(item_bytes().to_vec(), (0..64).collect::<Vec<u8>>());
    }
}
