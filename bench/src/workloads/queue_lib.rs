//! The multiproc side of the queue workloads (see `queue.rs` for what each row does):
//! `multiproc::Queue` (unbounded), children started with the fork start method, 64-byte
//! items as `serde_bytes::ByteArray<64>`.
//!
//! The producers are told to go over a `multiproc::pipe` and run until the parent closes its
//! end ([`ConnectionError::Eof`]); the ping-pong child and the consumers stop on a message in
//! their queue. Any other error panics, so the child exits non-zero and the cell fails.

use std::time::Duration;

use multiproc::connection::ConnectionError;
use multiproc::{Connection, Process, Queue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;

use super::common::{err, finish, samples_then, start_fork};
use super::queue::{ITEM_SIZE, MANY_ITEMS, ROUND_TRIPS, STREAM_ITEMS, item_bytes, units};
use crate::workload::Reps;

/// A 64-byte item: a `[u8; 64]` written as one byte string.
type Item = ByteArray<ITEM_SIZE>;

/// A connection carrying raw bytes: a producer's go signal.
type Conn = Connection<Vec<u8>>;

/// What [`finish`] reports of a child that did not end when told to.
const HUNG: &str = "the child did not end when told to";

/// How long the parent waits for a report before it calls the cell failed.
const PATIENCE: Duration = Duration::from_secs(10);

fn item() -> Item {
    ByteArray::new(item_bytes())
}

/// Runs `job` for every go message on `conn`; returns at EOF.
fn on_go(mut conn: Conn, mut job: impl FnMut()) {
    loop {
        match conn.recv_bytes() {
            Ok(_) => job(),
            Err(ConnectionError::Eof) => return,
            Err(e) => panic!("recv_bytes: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1 producer → 1 consumer

/// The producer: `n` items per go.
fn producer((conn, q, n): (Conn, Queue<Item>, usize)) {
    let it = item();
    on_go(conn, || {
        for _ in 0..n {
            q.put(it).expect("put");
        }
    });
}

pub(super) fn one_to_one(reps: &Reps) -> Result<Vec<f64>, String> {
    let n = reps.batch(STREAM_ITEMS.0, STREAM_ITEMS.1);
    let q = Queue::<Item>::new(0).map_err(err)?;
    let (mut go, theirs) = multiproc::pipe::<Vec<u8>>(true).map_err(err)?;
    let p = start_fork(producer, (theirs, q.clone(), n))?;
    let expected = item();
    let samples = reps.time_per(units(n), || {
        go.send_bytes(b"g").map_err(err)?;
        let mut bad = 0;
        for _ in 0..n {
            if q.get().map_err(err)? != expected {
                bad += 1;
            }
        }
        match bad {
            0 => Ok(()),
            bad => Err(format!("{bad} items differ from the item put")),
        }
    });
    // Closing the pipe ends the child.
    drop(go);
    samples_then(samples, finish(p, HUNG))
}

// ---------------------------------------------------------------------------------------------
// Ping-pong

/// What ends the ping-pong child.
const STOP: u64 = u64::MAX;

/// The ping-pong child: puts back into `pong` what it gets from `ping`, until [`STOP`].
fn echo((ping, pong): (Queue<u64>, Queue<u64>)) {
    loop {
        let x = ping.get().expect("get");
        if x == STOP {
            return;
        }
        pong.put(x).expect("put");
    }
}

pub(super) fn ping_pong(reps: &Reps) -> Result<Vec<f64>, String> {
    let ping = Queue::<u64>::new(0).map_err(err)?;
    let pong = Queue::<u64>::new(0).map_err(err)?;
    let p = start_fork(echo, (ping.clone(), pong.clone()))?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let mut i = 0u64;
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            ping.put(i).map_err(err)?;
            let back = pong.get().map_err(err)?;
            if back != i {
                return Err(format!("sent {i}, got {back} back"));
            }
            i += 1;
        }
        Ok(())
    });
    let stopped = ping.put(STOP).map_err(err);
    samples_then(samples, stopped.and_then(|()| finish(p, HUNG)))
}

// ---------------------------------------------------------------------------------------------
// 2 producers → 2 consumers

/// What travels in the two-by-two queue.
#[derive(Serialize, Deserialize, PartialEq)]
enum Msg {
    /// An item.
    Item(Item),
    /// A producer's batch ends here.
    End,
    /// The consumer that takes it reports and exits.
    Stop,
}

/// A two-by-two producer: `n` items and an end mark per go.
fn many_producer((conn, q, n): (Conn, Queue<Msg>, usize)) {
    let it = item();
    on_go(conn, || {
        for _ in 0..n {
            q.put(Msg::Item(it)).expect("put");
        }
        q.put(Msg::End).expect("put");
    });
}

/// A two-by-two consumer: counts items (each checked); on an end mark reports the count
/// since its last report on `done`; on a stop, reports and exits.
fn many_consumer((q, done): (Queue<Msg>, Queue<u64>)) {
    let expected = item();
    let mut count = 0u64;
    loop {
        match q.get().expect("get") {
            Msg::Item(it) => {
                assert!(it == expected, "an item differs from the item put");
                count += 1;
            }
            Msg::End => {
                done.put(count).expect("put");
                count = 0;
            }
            Msg::Stop => {
                done.put(count).expect("put");
                return;
            }
        }
    }
}

/// Starts `target(args)` with the fork start method, on whatever CPUs this process may use
/// (the two-by-two children are not placed).
fn start_unplaced<A>(target: fn(A), args: A) -> Result<Process<()>, String>
where
    A: Serialize + DeserializeOwned,
{
    let ctx = multiproc::get_context("fork").map_err(err)?;
    let mut p = ctx.process(target, args);
    p.start().map_err(err)?;
    Ok(p)
}

/// Gets one report from the consumers, failing after [`PATIENCE`] (a consumer died).
fn report(done: &Queue<u64>) -> Result<u64, String> {
    done.get_timeout(PATIENCE)
        .map_err(|e| format!("no report from the consumers: {e}"))
}

/// Stops the two-by-two children; checks that the consumers took `expected` items in all
/// (`counted` reported before) and that every child exited with 0.
fn stop_many(
    q: &Queue<Msg>,
    done: &Queue<u64>,
    gos: Vec<Conn>,
    children: Vec<Process<()>>,
    mut counted: u64,
    expected: u64,
) -> Result<(), String> {
    // Closing the pipes ends the producers; a stop each ends the consumers.
    drop(gos);
    let mut first = Ok(());
    for _ in 0..2 {
        first = first.and_then(|()| q.put(Msg::Stop).map_err(err));
    }
    for _ in 0..2 {
        if first.is_ok() {
            match report(done) {
                Ok(c) => counted += c,
                Err(e) => first = Err(e),
            }
        }
    }
    for p in children {
        first = first.and(finish(p, HUNG));
    }
    first?;
    if counted != expected {
        return Err(format!(
            "the consumers took {counted} items, not {expected}"
        ));
    }
    Ok(())
}

pub(super) fn two_by_two(reps: &Reps) -> Result<Vec<f64>, String> {
    let n = reps.batch(MANY_ITEMS.0, MANY_ITEMS.1);
    let q = Queue::<Msg>::new(0).map_err(err)?;
    let done = Queue::<u64>::new(0).map_err(err)?;
    let mut gos = Vec::new();
    let mut children = Vec::new();
    for _ in 0..2 {
        let (ours, theirs) = multiproc::pipe::<Vec<u8>>(true).map_err(err)?;
        children.push(start_unplaced(many_producer, (theirs, q.clone(), n))?);
        gos.push(ours);
    }
    for _ in 0..2 {
        children.push(start_unplaced(many_consumer, (q.clone(), done.clone()))?);
    }
    let (mut batches, mut counted) = (0u64, 0u64);
    let samples = reps.time_per(units(2 * n), || {
        for go in &mut gos {
            go.send_bytes(b"g").map_err(err)?;
        }
        batches += 1;
        for _ in 0..2 {
            counted += report(&done)?;
        }
        Ok(())
    });
    let stopped = stop_many(&q, &done, gos, children, counted, batches * 2 * n as u64);
    samples_then(samples, stopped)
}

#[cfg(test)]
mod tests {
    use multiproc::codec::{Codec, Postcard};

    use super::*;

    #[test]
    fn an_item_is_one_byte_string() {
        // The length and the 64 bytes: as compact as pickle's SHORT_BINBYTES.
        let mut bytes = Vec::new();
        Postcard::encode(&item(), &mut bytes).unwrap();
        assert_eq!(bytes.len(), 1 + ITEM_SIZE);
    }
}
