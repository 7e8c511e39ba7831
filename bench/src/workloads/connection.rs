//! Connections between a parent and a forked child: a small message's round trip, a stream
//! of small messages, one 64 MiB message.
//!
//! - multiproc: `multiproc::pipe::<Vec<u8>>(true)`, one end handed to a child started with
//!   the fork start method, `send_bytes` / `recv_bytes` (`recv_bytes_into` a buffer
//!   allocated once for the 64 MiB message) (`connection_lib.rs`);
//! - CPython: `multiprocessing.get_context("fork").Pipe()`, `send_bytes` / `recv_bytes`
//!   (`recv_bytes_into` a `bytearray` for 64 MiB) (`python/connection.py`);
//! - floor: an `AF_UNIX` `SOCK_STREAM` socketpair and a forked child, with raw `read` and
//!   `write` of frames (a 4-byte length and the payload) ([`SocketChild`]).
//!
//! Each cell starts its child once, outside the timed region, then times its repetitions;
//! on the two-CPU rows ({0,1}) it starts the child on CPU 1 and then moves itself to CPU 0
//! ([`floor::place_child`](crate::floor::place_child); the CPython script does the same), so that every message crosses
//! CPUs rather than wherever the scheduler happens to put the two processes run by run;
//! at the end it closes its end and checks that the child exited with 0. A repetition of a
//! round trip or stream row is a batch (smaller in `--quick`) and its time is divided by the
//! batch, so the cells read as the time of one round trip or one message; the ratios are
//! then inverse rates.
//!
//! - **round trip**: the parent sends the message, the child echoes it, the parent receives
//!   and compares it. The floor writes header and payload in one `write` and reads the frame
//!   back with as few `read`s as it takes (usually one).
//! - **stream**: 64-byte messages parent → child, then an empty one, which the child
//!   answers with the number it received. The floor writes each frame with one `write`, and
//!   the child reads in 64 KiB chunks (the raw socket's best rate).
//! - **stream, send/recv_bytes_many**: the same stream, sent by one `send_bytes_many` call,
//!   which packs 64 KiB of frames into each write, and received with `recv_bytes_many`,
//!   which hands over every whole message read without a copy; the floor writes 64 KiB of
//!   frames at a time. CPython's side is its `send_bytes` loop again: it has no such calls.
//! - **64 MiB**: one message parent → child, received into a buffer allocated once, and a
//!   4-byte answer.

use super::common::{err, start_apart};
use crate::floor::{SocketChild, SocketJob};
use crate::workload::{Case, CellFn, Floor, LATENCY_CPUS, Python, Reps};

/// Round trips per repetition (per `--quick` repetition).
pub(super) const ROUND_TRIPS: (usize, usize) = (1000, 50);
/// Messages per stream repetition (per `--quick` repetition).
pub(super) const STREAM_MESSAGES: (usize, usize) = (100_000, 2_000);
/// The size of a stream message.
pub(super) const STREAM_SIZE: usize = 64;
/// The size of the one large message.
pub(super) const BULK_SIZE: usize = 64 << 20;

/// A message of `size` bytes (not all zeros, so a mix-up shows).
pub(super) fn message(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

/// `message(size)` framed as on the socket: a 4-byte big-endian length first.
fn frame(size: usize) -> Vec<u8> {
    let mut f = u32::try_from(size)
        .expect("small message")
        .to_be_bytes()
        .to_vec();
    f.extend(message(size));
    f
}

/// Starts a floor child, on another CPU than the parent's on a two-CPU row.
fn start_floor_child(job: SocketJob, buf_len: usize) -> Result<SocketChild, String> {
    start_apart(|| SocketChild::start(job, buf_len).map_err(err))
}

/// The floor of a round trip of `size` bytes.
fn floor_round_trip(size: usize, reps: &Reps) -> Result<Vec<f64>, String> {
    let child = start_floor_child(SocketJob::Echo, 4 + size)?;
    let out = frame(size);
    let mut back = vec![0u8; out.len()];
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            child.write_all(&out).map_err(err)?;
            let got = child.read_frame(&mut back).map_err(err)?;
            if back[..got] != out[..] {
                return Err("the echo differs".to_owned());
            }
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

/// The floor of a stream of 64-byte messages: `per_write` frames in each `write`.
fn floor_stream_by(per_write: usize, reps: &Reps) -> Result<Vec<f64>, String> {
    let child = start_floor_child(SocketJob::Sink, 64 << 10)?;
    let one = frame(STREAM_SIZE);
    let packed = one.repeat(per_write);
    let n = reps.batch(STREAM_MESSAGES.0, STREAM_MESSAGES.1);
    let mut answer = [0u8; 4];
    let samples = reps.time_per(n, || {
        let mut left = n;
        while left > 0 {
            let k = left.min(per_write);
            child.write_all(&packed[..k * one.len()]).map_err(err)?;
            left -= k;
        }
        child.write_all(&[0; 4]).map_err(err)?;
        child.read_exact(&mut answer).map_err(err)?;
        if u32::from_be_bytes(answer) as usize != n {
            return Err("the child counted another number of messages".to_owned());
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

/// The floor of a stream of 64-byte messages, a `write` per frame.
fn floor_stream(reps: &Reps) -> Result<Vec<f64>, String> {
    floor_stream_by(1, reps)
}

/// The same, packed: 64 KiB of frames a `write` (what `send_bytes_many` does, by hand).
fn floor_stream_packed(reps: &Reps) -> Result<Vec<f64>, String> {
    floor_stream_by((64 << 10) / (4 + STREAM_SIZE), reps)
}

/// The floor of one 64 MiB message.
fn floor_bulk(reps: &Reps) -> Result<Vec<f64>, String> {
    let child = start_floor_child(SocketJob::Bulk, BULK_SIZE)?;
    let header = u32::try_from(BULK_SIZE).map_err(err)?.to_be_bytes();
    let payload = message(BULK_SIZE);
    let mut answer = [0u8; 4];
    let samples = reps.time(|| {
        child.write_all(&header).map_err(err)?;
        child.write_all(&payload).map_err(err)?;
        child.read_exact(&mut answer).map_err(err)?;
        if answer != header {
            return Err("the child received another length".to_owned());
        }
        Ok(())
    })?;
    child.finish().map_err(err)?;
    Ok(samples)
}

static ROUND_TRIP_8_FLOOR: Floor = Floor {
    name: "socketpair write+read, child echoes",
    run: |reps| floor_round_trip(8, reps),
};

static ROUND_TRIP_1K_FLOOR: Floor = Floor {
    name: "socketpair write+read, child echoes",
    run: |reps| floor_round_trip(1024, reps),
};

static STREAM_FLOOR: Floor = Floor {
    name: "socketpair: a write per frame, child reads 64 KiB chunks",
    run: floor_stream,
};

static STREAM_PACKED_FLOOR: Floor = Floor {
    name: "socketpair: 64 KiB of frames per write, child reads 64 KiB chunks",
    run: floor_stream_packed,
};

static BULK_FLOOR: Floor = Floor {
    name: "socketpair write, child reads into its buffer",
    run: floor_bulk,
};

/// A row of this workload: CPython runs `connection.py ARGS`.
fn case(
    name: &'static str,
    lib: CellFn,
    python_args: &'static [&'static str],
    floor: &'static Floor,
) -> Case {
    Case {
        name,
        lib,
        python: Some(Python {
            script: "connection.py",
            args: python_args,
        }),
        floor: Some(floor),
        cpus: LATENCY_CPUS,
        fresh_process: false,
    }
}

/// CPython's side of both stream rows (the same `send_bytes` loop).
const STREAM_ARGS: &[&str] = &[
    "stream",
    "--size",
    "64",
    "--batch",
    "100000",
    "--quick-batch",
    "2000",
];

/// The rows of this workload.
pub(crate) fn cases() -> Vec<Case> {
    use super::connection_lib as lib;
    // (the sizes and batches below are the constants above: `tests::python_args_agree`)
    vec![
        case(
            "connection round trip 8 B",
            lib::round_trip_8,
            &[
                "roundtrip",
                "--size",
                "8",
                "--batch",
                "1000",
                "--quick-batch",
                "50",
            ],
            &ROUND_TRIP_8_FLOOR,
        ),
        case(
            "connection round trip 1 KiB",
            lib::round_trip_1k,
            &[
                "roundtrip",
                "--size",
                "1024",
                "--batch",
                "1000",
                "--quick-batch",
                "50",
            ],
            &ROUND_TRIP_1K_FLOOR,
        ),
        case(
            "connection stream 64 B (per message)",
            lib::stream,
            STREAM_ARGS,
            &STREAM_FLOOR,
        ),
        // CPython has no way to send many messages at once: its side is the same loop of
        // `send_bytes` as in the row above.
        case(
            "connection stream 64 B, send/recv_bytes_many (per message)",
            lib::stream_many,
            STREAM_ARGS,
            &STREAM_PACKED_FLOOR,
        ),
        case(
            "connection 64 MiB message",
            lib::bulk_64m,
            &["bulk", "--size", "67108864"],
            &BULK_FLOOR,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::common::python_arg as arg;
    use super::*;

    #[test]
    fn python_args_agree() {
        for case in cases() {
            let args = case.python.expect("a CPython side").args;
            match args[0] {
                "roundtrip" => {
                    assert_eq!(arg(args, "--batch"), ROUND_TRIPS.0);
                    assert_eq!(arg(args, "--quick-batch"), ROUND_TRIPS.1);
                }
                "stream" => {
                    assert_eq!(arg(args, "--size"), STREAM_SIZE);
                    assert_eq!(arg(args, "--batch"), STREAM_MESSAGES.0);
                    assert_eq!(arg(args, "--quick-batch"), STREAM_MESSAGES.1);
                }
                "bulk" => assert_eq!(arg(args, "--size"), BULK_SIZE),
                other => panic!("unknown workload {other}"),
            }
        }
    }
}
