//! The multiproc side of the connection workloads (see `connection.rs` for what each row
//! does): `multiproc::pipe::<Vec<u8>>(true)`, the child's end handed as the argument of a
//! child started with the fork start method, `send_bytes` and `recv_bytes` (`recv_bytes_into`
//! a buffer allocated once for the 64 MiB message).
//!
//! The children run until the parent closes its end ([`ConnectionError::Eof`]: a fork child
//! does not keep its parent's connection ends open); any other error panics, so the child
//! exits non-zero and the cell fails.

use multiproc::Connection;
use multiproc::connection::ConnectionError;

use super::common::{err, finish, samples_then, start_fork};
use super::connection::{BULK_SIZE, ROUND_TRIPS, STREAM_MESSAGES, STREAM_SIZE, message};
use crate::workload::Reps;

/// A connection carrying raw bytes.
type Conn = Connection<Vec<u8>>;

/// The child of a round trip: echoes every message.
fn echo(mut conn: Conn) {
    loop {
        match conn.recv_bytes() {
            Ok(b) => conn.send_bytes(&b).expect("echo: send_bytes"),
            Err(ConnectionError::Eof) => return,
            Err(e) => panic!("echo: recv_bytes: {e}"),
        }
    }
}

/// The child of a stream: counts messages; answers an empty one with the count.
fn sink(mut conn: Conn) {
    let mut count: u32 = 0;
    loop {
        match conn.recv_bytes() {
            Ok(b) if b.is_empty() => {
                conn.send_bytes(&count.to_be_bytes())
                    .expect("sink: send_bytes");
                count = 0;
            }
            Ok(_) => count += 1,
            Err(ConnectionError::Eof) => return,
            Err(e) => panic!("sink: recv_bytes: {e}"),
        }
    }
}

/// The child of a packed stream: the same as [`sink`], receiving with `recv_bytes_many`.
fn sink_many(mut conn: Conn) {
    let mut count: u32 = 0;
    let mut answers = Vec::new();
    loop {
        let got = conn.recv_bytes_many(usize::MAX, |m| {
            if m.is_empty() {
                answers.push(count);
                count = 0;
            } else {
                count += 1;
            }
        });
        match got {
            Ok(_) => {
                for n in answers.drain(..) {
                    conn.send_bytes(&n.to_be_bytes())
                        .expect("sink_many: send_bytes");
                }
            }
            Err(ConnectionError::Eof) => return,
            Err(e) => panic!("sink_many: recv_bytes_many: {e}"),
        }
    }
}

/// The child of the large message: receives into a buffer allocated once, answers with the
/// length.
fn bulk(mut conn: Conn) {
    let mut buf = vec![0u8; BULK_SIZE];
    loop {
        match conn.recv_bytes_into(&mut buf, 0) {
            Ok(n) => {
                let n = u32::try_from(n).expect("at most 64 MiB");
                conn.send_bytes(&n.to_be_bytes()).expect("bulk: send_bytes");
            }
            Err(ConnectionError::Eof) => return,
            Err(e) => panic!("bulk: recv_bytes_into: {e}"),
        }
    }
}

/// Starts `target` with the fork start method on one end of a new duplex pipe, runs `job`
/// on the other, then closes it, which ends the child, and checks that the child exited with
/// 0 (even if `job` failed).
fn with_child(
    target: fn(Conn),
    job: impl FnOnce(&mut Conn) -> Result<Vec<f64>, String>,
) -> Result<Vec<f64>, String> {
    let (mut ours, theirs) = multiproc::pipe::<Vec<u8>>(true).map_err(err)?;
    let p = start_fork(target, theirs)?;
    let samples = job(&mut ours);
    // Closing our end ends the child.
    drop(ours);
    let finished = finish(
        p,
        "the child did not end when its parent closed the connection",
    );
    samples_then(samples, finished)
}

fn round_trip(size: usize, reps: &Reps) -> Result<Vec<f64>, String> {
    with_child(echo, |conn| {
        let msg = message(size);
        let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
        reps.time_per(n, || {
            for _ in 0..n {
                conn.send_bytes(&msg).map_err(err)?;
                if conn.recv_bytes().map_err(err)? != msg {
                    return Err("the echo differs".to_owned());
                }
            }
            Ok(())
        })
    })
}

pub(super) fn round_trip_8(reps: &Reps) -> Result<Vec<f64>, String> {
    round_trip(8, reps)
}

pub(super) fn round_trip_1k(reps: &Reps) -> Result<Vec<f64>, String> {
    round_trip(1024, reps)
}

/// A stream of `n` 64-byte messages, sent by `send` (given the connection, the message and
/// `n`), then an empty one, which the child answers with the number it received.
fn stream_by(
    reps: &Reps,
    child: fn(Conn),
    send: fn(&mut Conn, &[u8], usize) -> Result<(), ConnectionError>,
) -> Result<Vec<f64>, String> {
    with_child(child, |conn| {
        let msg = message(STREAM_SIZE);
        let n = reps.batch(STREAM_MESSAGES.0, STREAM_MESSAGES.1);
        let expected = u32::try_from(n).map_err(err)?.to_be_bytes();
        reps.time_per(n, || {
            send(conn, &msg, n).map_err(err)?;
            conn.send_bytes(&[]).map_err(err)?;
            if conn.recv_bytes().map_err(err)? != expected {
                return Err("the child counted another number of messages".to_owned());
            }
            Ok(())
        })
    })
}

pub(super) fn stream(reps: &Reps) -> Result<Vec<f64>, String> {
    stream_by(reps, sink, |conn, msg, n| {
        (0..n).try_for_each(|_| conn.send_bytes(msg))
    })
}

/// The stream again, every message sent by one `send_bytes_many` call and received by
/// `recv_bytes_many`.
pub(super) fn stream_many(reps: &Reps) -> Result<Vec<f64>, String> {
    stream_by(reps, sink_many, |conn, msg, n| {
        conn.send_bytes_many(std::iter::repeat_n(msg, n))
    })
}

pub(super) fn bulk_64m(reps: &Reps) -> Result<Vec<f64>, String> {
    with_child(bulk, |conn| {
        let payload = message(BULK_SIZE);
        let expected = u32::try_from(BULK_SIZE).map_err(err)?.to_be_bytes();
        reps.time(|| {
            conn.send_bytes(&payload).map_err(err)?;
            if conn.recv_bytes().map_err(err)? != expected {
                return Err("the child received another length".to_owned());
            }
            Ok(())
        })
    })
}
