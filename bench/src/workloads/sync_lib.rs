//! The multiproc side of the synchronization workloads (see `sync.rs` for what each row
//! does): `Lock`, `RawValue<i64>`, `Value<i64>`, `Event`, `Condition`, `Array<f64>`, with
//! children started with the fork start method.
//!
//! The two-process batch rows (counter, adds) tell their child to go over a
//! `multiproc::pipe` and wait for its answer; the children run until the parent closes its
//! end ([`ConnectionError::Eof`]); any other error panics, so the child exits non-zero and the
//! cell fails. The ping-pong children stop on a third event or a turn value.

use multiproc::connection::ConnectionError;
use multiproc::{Array, Condition, Connection, Event, Lock, Process, RawValue, Value};

use super::common::{err, finish, samples_then, start_fork};
use super::sync::{
    ADD_OPS, ADD2_OPS, ARRAY_LEN, COUNTER_OPS, LOCK_OPS, ROUND_TRIPS, check_fill, units,
};
use crate::workload::Reps;

/// A connection carrying raw bytes: the go/done signal of a batch.
type Conn = Connection<Vec<u8>>;

/// What [`finish`] reports of a child that did not end when told to.
const HUNG: &str = "the child did not end when told to";

/// Runs `job` for every go message on `conn`, answers each with `d`; returns at EOF.
fn batches(mut conn: Conn, mut job: impl FnMut()) {
    loop {
        match conn.recv_bytes() {
            Ok(_) => {
                job();
                conn.send_bytes(b"d").expect("send_bytes");
            }
            Err(ConnectionError::Eof) => return,
            Err(e) => panic!("recv_bytes: {e}"),
        }
    }
}

/// Times batches against a child running [`batches`]: per repetition, tells it to go, runs
/// `ours` (`n` operations), waits for its answer, then `check`s the total. Reports the time
/// of 1,000 operations; then ends the child.
fn with_batch_child(
    mut conn: Conn,
    p: Process<()>,
    n: usize,
    reps: &Reps,
    mut ours: impl FnMut() -> Result<(), String>,
    mut check: impl FnMut(i64) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    let mut total = 0i64;
    let samples = reps.time_per(units(2 * n), || {
        conn.send_bytes(b"g").map_err(err)?;
        ours()?;
        if conn.recv_bytes().map_err(err)? != b"d" {
            return Err("the child did not finish its batch".to_owned());
        }
        total += 2 * n as i64;
        check(total)
    });
    drop(conn);
    samples_then(samples, finish(p, HUNG))
}

// ---------------------------------------------------------------------------------------------
// Lock

pub(super) fn lock_uncontended(reps: &Reps) -> Result<Vec<f64>, String> {
    let lock = Lock::new().map_err(err)?;
    let n = reps.batch(LOCK_OPS.0, LOCK_OPS.1);
    reps.time_per(units(n), || {
        for _ in 0..n {
            let guard = lock.acquire().map_err(err)?;
            drop(guard);
        }
        Ok(())
    })
}

/// `n` increments of `v` under `lock`.
fn locked_increments(lock: &Lock, v: &RawValue<i64>, n: usize) {
    for _ in 0..n {
        let _held = lock.acquire().expect("acquire");
        v.set(v.get() + 1);
    }
}

fn counter_child((conn, lock, v, n): (Conn, Lock, RawValue<i64>, usize)) {
    batches(conn, || locked_increments(&lock, &v, n));
}

pub(super) fn locked_counter(reps: &Reps) -> Result<Vec<f64>, String> {
    let n = reps.batch(COUNTER_OPS.0, COUNTER_OPS.1);
    let lock = Lock::new().map_err(err)?;
    let v = RawValue::new(0i64).map_err(err)?;
    let (ours, theirs) = multiproc::pipe::<Vec<u8>>(true).map_err(err)?;
    let p = start_fork(counter_child, (theirs, lock.clone(), v.clone(), n))?;
    with_batch_child(
        ours,
        p,
        n,
        reps,
        || {
            locked_increments(&lock, &v, n);
            Ok(())
        },
        |total| match v.get() {
            got if got == total => Ok(()),
            got => Err(format!("the counter reads {got}, not {total}")),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Value::fetch_add

fn fetch_adds(v: &Value<i64>, n: usize) {
    for _ in 0..n {
        v.fetch_add(1);
    }
}

pub(super) fn fetch_add_one(reps: &Reps) -> Result<Vec<f64>, String> {
    let v = Value::new(0i64).map_err(err)?;
    let n = reps.batch(ADD_OPS.0, ADD_OPS.1);
    reps.time_per(units(n), || {
        fetch_adds(&v, n);
        Ok(())
    })
}

fn add_child((conn, v, n): (Conn, Value<i64>, usize)) {
    batches(conn, || fetch_adds(&v, n));
}

pub(super) fn fetch_add_two(reps: &Reps) -> Result<Vec<f64>, String> {
    let n = reps.batch(ADD2_OPS.0, ADD2_OPS.1);
    let v = Value::new(0i64).map_err(err)?;
    let (ours, theirs) = multiproc::pipe::<Vec<u8>>(true).map_err(err)?;
    let p = start_fork(add_child, (theirs, v.clone(), n))?;
    with_batch_child(
        ours,
        p,
        n,
        reps,
        || {
            fetch_adds(&v, n);
            Ok(())
        },
        |total| match v.load() {
            got if got == total => Ok(()),
            got => Err(format!("the value reads {got}, not {total}")),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Event and Condition ping-pong

/// The child of the event ping-pong: waits for `ping`, clears it, answers with `pong`;
/// returns when `stop` is set.
fn event_child((ping, pong, stop): (Event, Event, Event)) {
    loop {
        ping.wait();
        ping.clear();
        if stop.is_set() {
            return;
        }
        pong.set();
    }
}

pub(super) fn event_ping_pong(reps: &Reps) -> Result<Vec<f64>, String> {
    let (ping, pong, stop) = (
        Event::new().map_err(err)?,
        Event::new().map_err(err)?,
        Event::new().map_err(err)?,
    );
    let p = start_fork(event_child, (ping.clone(), pong.clone(), stop.clone()))?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let samples = reps.time_per(n, || {
        for _ in 0..n {
            ping.set();
            pong.wait();
            pong.clear();
        }
        Ok(())
    });
    stop.set();
    ping.set();
    samples_then(samples, finish(p, HUNG))
}

/// The turn of the condition ping-pong: the child's when 1, the parent's when 0; 2 stops.
type Turn = RawValue<u32>;

/// The child of the condition ping-pong: under the lock, waits until the turn is 1, sets it
/// to 0 and notifies.
fn condition_child((cond, turn): (Condition, Turn)) {
    let _held = cond.acquire().expect("acquire");
    loop {
        while turn.get() == 0 {
            cond.wait().expect("wait");
        }
        if turn.get() == 2 {
            return;
        }
        turn.set(0);
        cond.notify(1).expect("notify");
    }
}

pub(super) fn condition_ping_pong(reps: &Reps) -> Result<Vec<f64>, String> {
    let cond = Condition::new().map_err(err)?;
    let turn: Turn = RawValue::new(0).map_err(err)?;
    let p = start_fork(condition_child, (cond.clone(), turn.clone()))?;
    let n = reps.batch(ROUND_TRIPS.0, ROUND_TRIPS.1);
    let samples = reps.time_per(n, || {
        let _held = cond.acquire().map_err(err)?;
        for _ in 0..n {
            turn.set(1);
            cond.notify(1).map_err(err)?;
            while turn.get() != 0 {
                cond.wait().map_err(err)?;
            }
        }
        Ok(())
    });
    {
        let _held = cond.acquire().map_err(err)?;
        turn.set(2);
        cond.notify(1).map_err(err)?;
    }
    samples_then(samples, finish(p, HUNG))
}

// ---------------------------------------------------------------------------------------------
// Array<f64>

pub(super) fn fill_through_lock(reps: &Reps) -> Result<Vec<f64>, String> {
    let arr = Array::<f64>::zeroed(ARRAY_LEN).map_err(err)?;
    let samples = reps.time(|| {
        let mut a = arr.lock().map_err(err)?;
        for (i, x) in a.iter_mut().enumerate() {
            *x = i as f64;
        }
        Ok(())
    })?;
    check_fill(&arr.to_vec().map_err(err)?)?;
    Ok(samples)
}

pub(super) fn fill_with_write(reps: &Reps) -> Result<Vec<f64>, String> {
    let arr = Array::<f64>::zeroed(ARRAY_LEN).map_err(err)?;
    let src: Vec<f64> = (0..ARRAY_LEN).map(|i| i as f64).collect();
    let samples = reps.time(|| arr.write(0, std::hint::black_box(&src)).map_err(err))?;
    check_fill(&arr.to_vec().map_err(err)?)?;
    Ok(samples)
}
