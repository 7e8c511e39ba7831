//! The language-neutral queue tests of CPython's `Lib/test/_test_multiprocessing.py`
//! (`_TestQueue`, `TestSimpleQueue`), ported: the behaviour, not the code.
//!
//! Every test with processes runs under the three start methods, as CPython runs its suite
//! once per method. Every wait is bounded (the blocking forms without a timeout run on a
//! watchdog thread), so a bug fails a test instead of hanging it; the order of events is made
//! with Events, never with sleeps. CPython's `time.sleep(DELTA)` after a put ("the values
//! may be in buffer but not yet in pipe") has no counterpart: a put is in shared memory when
//! it returns.
//!
//! Left out, with the reason:
//! - `test_no_import_lock_contention`: Python's import lock; nothing like it here.
//! - `test_queue_feeder_donot_stop_onexc`, `test_queue_feeder_on_queue_feeder_error`: there
//!   is no feeder thread. Their point (an item that cannot be encoded does not break the
//!   queue or its count) is kept in `an_item_that_cannot_be_encoded_leaves_the_queue_working`.
//! - `test_closed_queue_empty_exceptions`, `TestSimpleQueue.test_empty_exceptions`,
//!   `test_closed`: CPython's `empty()` raises `OSError` once the pipe is closed; here
//!   `empty()` reads shared memory and returns a `bool`, and `close` only refuses later puts
//!   and gets through that handle.
//! - `test_shutdown_*`: `Queue.shutdown` (3.13) is not part of this library.

use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::procs::{LONG, each_method, finish, start};

use multiproc::{Event, GetError, JoinableQueue, PutError, Queue, QueueError, SimpleQueue};
use serde::{Deserialize, Serialize, Serializer};

/// CPython's TIMEOUT1 and TIMEOUT3 (a timeout meant to expire).
const TIMEOUT1: Duration = Duration::from_millis(100);
const TIMEOUT3: Duration = Duration::from_millis(150);
/// How late a timed call may return on a loaded 2-CPU machine.
const SLACK: Duration = Duration::from_millis(1500);

/// Runs a call that has no timeout of its own (`put`, `get`, `join`) on a thread, and fails
/// the test if it has not returned within [`LONG`].
fn within<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LONG)
        .unwrap_or_else(|_| panic!("{what} did not return within {LONG:?}"))
}

/// Times `f`.
fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Asserts that a call that must not wait returned at once (give or take the scheduler).
fn at_once(elapsed: Duration) {
    assert!(elapsed < SLACK, "took {elapsed:?}, expected no wait");
}

/// Asserts that `elapsed` is `want` give or take the scheduler.
fn about(elapsed: Duration, want: Duration) {
    assert!(
        elapsed >= want && elapsed <= want + SLACK,
        "took {elapsed:?}, expected about {want:?}"
    );
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_put

fn take_six((q, child_can_start, parent_can_continue): (Queue<u32>, Event, Event)) -> Vec<u32> {
    assert!(child_can_start.wait_timeout(LONG));
    let got = (0..6).map(|_| q.get_timeout(LONG).unwrap()).collect();
    parent_can_continue.set();
    got
}

#[multiproc::test]
fn test_put() {
    each_method(|ctx| {
        const MAXSIZE: usize = 6;
        let q = Queue::new(MAXSIZE).unwrap();
        let child_can_start = Event::new().unwrap();
        let parent_can_continue = Event::new().unwrap();
        let p = start(
            ctx,
            take_six,
            (
                q.clone(),
                child_can_start.clone(),
                parent_can_continue.clone(),
            ),
        );
        assert!(q.empty());
        assert!(!q.full());

        // put(1), put(2, True), put(3, True, None), put(4, False), put(5, False, None),
        // put_nowait(6): the queue has room for all six, so none waits.
        let q2 = q.clone();
        within("put", move || {
            q2.put(1).unwrap();
            q2.put(2).unwrap();
        });
        q.put_timeout(3, LONG).unwrap();
        q.try_put(4).unwrap();
        q.try_put(5).unwrap();
        q.put_nowait(6).unwrap();

        assert!(!q.empty());
        assert!(q.full());
        assert_eq!(q.qsize(), MAXSIZE);

        // put(7, False), put(7, False, None), put_nowait(7): Full at once, the item back.
        let (r, t) = timed(|| q.try_put(7));
        assert!(matches!(r, Err(PutError::Full(7))), "{r:?}");
        at_once(t);
        let (r, t) = timed(|| q.put_nowait(7));
        assert!(matches!(r, Err(PutError::Full(7))), "{r:?}");
        at_once(t);
        // put(7, True, TIMEOUT1): Full after about TIMEOUT1.
        let (r, t) = timed(|| q.put_timeout(7, TIMEOUT1));
        assert!(matches!(r, Err(PutError::Full(7))), "{r:?}");
        about(t, TIMEOUT1);
        // put(7, False, TIMEOUT2): a put that must not block ignores the timeout.
        let (r, t) = timed(|| q.try_put(7));
        assert!(matches!(r, Err(PutError::Full(7))), "{r:?}");
        at_once(t);
        // put(7, True, timeout=TIMEOUT3).
        let (r, t) = timed(|| q.put_timeout(7, TIMEOUT3));
        assert!(matches!(r, Err(PutError::Full(7))), "{r:?}");
        about(t, TIMEOUT3);
        // Nothing of the refused puts went in.
        assert_eq!(q.qsize(), MAXSIZE);

        child_can_start.set();
        assert!(parent_can_continue.wait_timeout(LONG));
        assert!(q.empty());
        assert!(!q.full());
        assert_eq!(finish(p), [1, 2, 3, 4, 5, 6]);
    });
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_get

fn put_two_to_five((q, child_can_start, parent_can_continue): (Queue<u32>, Event, Event)) {
    assert!(child_can_start.wait_timeout(LONG));
    for i in 2..=5 {
        q.put(i).unwrap();
    }
    parent_can_continue.set();
}

#[multiproc::test]
fn test_get() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        let child_can_start = Event::new().unwrap();
        let parent_can_continue = Event::new().unwrap();
        let p = start(
            ctx,
            put_two_to_five,
            (
                q.clone(),
                child_can_start.clone(),
                parent_can_continue.clone(),
            ),
        );
        assert!(q.empty());
        child_can_start.set();
        assert!(parent_can_continue.wait_timeout(LONG));
        assert!(!q.empty());
        assert_eq!(q.qsize(), 4);

        // get(True, None), get(True), get(timeout=1), get_nowait().
        let q2 = q.clone();
        assert_eq!(
            within("get", move || [q2.get().unwrap(), q2.get().unwrap()]),
            [2, 3]
        );
        assert_eq!(q.get_timeout(Duration::from_secs(1)).unwrap(), 4);
        assert_eq!(q.get_nowait().unwrap(), 5);
        assert!(q.empty());

        // get(False), get(False, None), get_nowait(): Empty at once.
        let (r, t) = timed(|| q.try_get());
        assert!(matches!(r, Err(GetError::Empty)), "{r:?}");
        at_once(t);
        let (r, t) = timed(|| q.get_nowait());
        assert!(matches!(r, Err(GetError::Empty)), "{r:?}");
        at_once(t);
        // get(True, TIMEOUT1): Empty after about TIMEOUT1.
        let (r, t) = timed(|| q.get_timeout(TIMEOUT1));
        assert!(matches!(r, Err(GetError::Empty)), "{r:?}");
        about(t, TIMEOUT1);
        // get(False, TIMEOUT2): at once.
        let (r, t) = timed(|| q.try_get());
        assert!(matches!(r, Err(GetError::Empty)), "{r:?}");
        at_once(t);
        // get(timeout=TIMEOUT3).
        let (r, t) = timed(|| q.get_timeout(TIMEOUT3));
        assert!(matches!(r, Err(GetError::Empty)), "{r:?}");
        about(t, TIMEOUT3);

        finish(p);
    });
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_fork

fn put_ten_to_twenty(q: Queue<u32>) {
    for i in 10..20 {
        q.put(i).unwrap();
    }
    // The child returns (and exits) at once: its items are in the queue already.
}

#[multiproc::test]
fn test_fork() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        // Items put before the child starts (in CPython, so that a feeder thread runs when
        // the process forks).
        for i in 0..10 {
            q.put(i).unwrap();
        }
        let p = start(ctx, put_ten_to_twenty, q.clone());
        for i in 0..20 {
            assert_eq!(q.get_timeout(LONG).unwrap(), i, "{}", ctx.start_method());
        }
        assert!(matches!(q.try_get(), Err(GetError::Empty)));
        finish(p);
    });
}

/// The other way round: items put before a child starts are consumed by the child.
fn take_ten(q: Queue<u32>) -> Vec<u32> {
    (0..10).map(|_| q.get_timeout(LONG).unwrap()).collect()
}

#[multiproc::test]
fn test_fork_items_put_before_the_child_starts_are_taken_by_the_child() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        for i in 0..10 {
            q.put(i).unwrap();
        }
        let p = start(ctx, take_ten, q.clone());
        assert_eq!(finish(p), (0..10).collect::<Vec<_>>());
        assert!(q.empty());
    });
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_qsize

#[multiproc::test]
fn test_qsize() {
    let q = Queue::new(0).unwrap();
    assert_eq!(q.qsize(), 0);
    q.put(1).unwrap();
    assert_eq!(q.qsize(), 1);
    q.put(5).unwrap();
    assert_eq!(q.qsize(), 2);
    assert_eq!(q.try_get().unwrap(), 1);
    assert_eq!(q.qsize(), 1);
    assert_eq!(q.try_get().unwrap(), 5);
    assert_eq!(q.qsize(), 0);
}

/// qsize as another process sees it.
fn report_qsize((q, asked, answer): (Queue<u32>, Queue<bool>, Queue<usize>)) {
    while let Ok(true) = asked.get_timeout(LONG) {
        answer.put(q.qsize()).unwrap();
    }
}

#[multiproc::test]
fn test_qsize_seen_from_another_process() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        let asked = Queue::new(0).unwrap();
        let answer = Queue::new(0).unwrap();
        let p = start(
            ctx,
            report_qsize,
            (q.clone(), asked.clone(), answer.clone()),
        );
        let ask = || {
            asked.put(true).unwrap();
            answer.get_timeout(LONG).unwrap()
        };
        assert_eq!(ask(), 0);
        q.put(1).unwrap();
        assert_eq!(ask(), 1);
        q.put(5).unwrap();
        assert_eq!(ask(), 2);
        q.try_get().unwrap();
        assert_eq!(ask(), 1);
        q.try_get().unwrap();
        assert_eq!(ask(), 0);
        asked.put(false).unwrap();
        finish(p);
    });
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_task_done

/// CPython's `for obj in iter(q.get, None): ...; q.task_done()`. Each item is reported on
/// `done` before its task_done, so the parent can tell what `join` waited for.
fn task_done_worker((q, done): (JoinableQueue<Option<u32>>, Queue<u32>)) -> Vec<u32> {
    let mut mine = Vec::new();
    while let Some(item) = q.get_timeout(LONG).unwrap() {
        done.put(item).unwrap();
        mine.push(item);
        q.task_done().unwrap();
    }
    mine
}

#[multiproc::test]
fn test_task_done() {
    each_method(|ctx| {
        let q = JoinableQueue::new(0).unwrap();
        let done = Queue::new(0).unwrap();
        let workers: Vec<_> = (0..4)
            .map(|_| start(ctx, task_done_worker, (q.clone(), done.clone())))
            .collect();
        for i in 0..10 {
            q.put(Some(i)).unwrap();
        }
        let q2 = q.clone();
        within("join", move || q2.join());
        // join returned, so every item was taken and reported done.
        assert_eq!(done.qsize(), 10);
        assert!(q.empty());
        for _ in &workers {
            q.put(None).unwrap();
        }
        let mut all: Vec<u32> = workers.into_iter().flat_map(finish).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        // The four Nones were taken but never marked done.
        assert!(!q.join_timeout(Duration::ZERO));
        for _ in 0..4 {
            q.task_done().unwrap();
        }
        assert!(q.join_timeout(Duration::ZERO));
        assert!(matches!(
            q.task_done(),
            Err(QueueError::TaskDoneTooManyTimes)
        ));
        assert_eq!(
            q.task_done().unwrap_err().to_string(),
            "task_done() called too many times"
        );
    });
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_timeout

#[multiproc::test]
fn test_timeout() {
    let q = Queue::<u8>::new(0).unwrap();
    let want = Duration::from_millis(200);
    let (r, t) = timed(|| q.get_timeout(want));
    assert!(matches!(r, Err(GetError::Empty)), "{r:?}");
    about(t, want);
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_closed_queue_put_get_exceptions

fn assert_closed_put<T>(r: Result<(), PutError<T>>) -> T {
    match r {
        Err(PutError::Failed(e @ QueueError::Closed, item)) => {
            assert!(e.to_string().contains("is closed"), "{e}");
            item
        }
        Err(e) => panic!("expected 'is closed', got {e:?}"),
        Ok(()) => panic!("a put on a closed queue succeeded"),
    }
}

fn assert_closed_get<T: std::fmt::Debug>(r: Result<T, GetError>) {
    match r {
        Err(GetError::Failed(e @ QueueError::Closed)) => {
            assert!(e.to_string().contains("is closed"), "{e}");
        }
        other => panic!("expected 'is closed', got {other:?}"),
    }
}

fn closed_refuses_everything(q: &Queue<String>) {
    q.close();
    assert!(q.is_closed());
    let item = || "foo".to_string();
    assert_eq!(assert_closed_put(q.put(item())), "foo");
    assert_closed_put(q.try_put(item()));
    assert_closed_put(q.put_nowait(item()));
    assert_closed_put(q.put_timeout(item(), LONG));
    // A get on a closed (and empty) queue fails at once rather than waiting for an item.
    let (r, t) = timed(|| q.get());
    assert_closed_get(r);
    at_once(t);
    assert_closed_get(q.try_get());
    assert_closed_get(q.get_nowait());
    assert_closed_get(q.get_timeout(LONG));
    // Closing twice is no error.
    q.close();
}

#[multiproc::test]
fn test_closed_queue_put_get_exceptions() {
    let q = Queue::new(0).unwrap();
    closed_refuses_everything(&q);
    let jq = JoinableQueue::new(0).unwrap();
    closed_refuses_everything(&jq);
    // A clone shares the handle's close; the items already put stay in the queue.
    let q = Queue::new(0).unwrap();
    q.put("kept".to_string()).unwrap();
    let clone = q.clone();
    q.close();
    assert!(clone.is_closed());
    assert_closed_get(clone.try_get());
    assert_eq!(q.qsize(), 1);
}

/// Takes one item through its own handle, which the parent's close does not reach.
fn get_one(q: Queue<String>) -> String {
    q.get_timeout(LONG).unwrap()
}

#[multiproc::test]
fn test_closed_queue_close_is_per_process() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        q.put("after close".to_string()).unwrap();
        q.close();
        let p = start(ctx, get_one, q.clone());
        assert_eq!(finish(p), "after close");
        assert_closed_get(q.try_get());
    });
}

// -------------------------------------------------------------------------------------------
// _TestQueue.test_queue_feeder_donot_stop_onexc, without a feeder

/// An item whose encoding fails (CPython's `NotSerializable`).
#[derive(Debug, PartialEq, Deserialize)]
enum Item {
    Fine(bool),
    NotSerializable,
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fine(b) => s.serialize_newtype_variant("Item", 0, "Fine", b),
            Self::NotSerializable => Err(serde::ser::Error::custom("cannot serialize this")),
        }
    }
}

#[multiproc::test]
fn an_item_that_cannot_be_encoded_leaves_the_queue_working() {
    for maxsize in [0, 1] {
        let q = Queue::new(maxsize).unwrap();
        match q.put(Item::NotSerializable) {
            Err(PutError::Failed(QueueError::Codec(_), Item::NotSerializable)) => {}
            other => panic!("{other:?}"),
        }
        // bpo-33078: the count is right after the failure (with maxsize 1, the next put
        // finds room).
        assert_eq!(q.qsize(), 0);
        q.put_timeout(Item::Fine(true), LONG).unwrap();
        assert_eq!(q.qsize(), 1);
        assert_eq!(q.get_timeout(LONG).unwrap(), Item::Fine(true));
        assert!(q.empty());
    }
}

// -------------------------------------------------------------------------------------------
// TestSimpleQueue

fn put_empty_twice((q, child_can_start, parent_can_continue): (SimpleQueue<bool>, Event, Event)) {
    assert!(child_can_start.wait_timeout(LONG));
    // Issue 30301: could fail under spawn and forkserver.
    q.put(q.empty()).unwrap();
    q.put(q.empty()).unwrap();
    parent_can_continue.set();
}

#[multiproc::test]
fn test_simple_queue_empty() {
    each_method(|ctx| {
        let q = SimpleQueue::new().unwrap();
        let child_can_start = Event::new().unwrap();
        let parent_can_continue = Event::new().unwrap();
        let p = start(
            ctx,
            put_empty_twice,
            (
                q.clone(),
                child_can_start.clone(),
                parent_can_continue.clone(),
            ),
        );
        assert!(q.empty());
        child_can_start.set();
        assert!(parent_can_continue.wait_timeout(LONG));
        assert!(!q.empty());
        let q2 = q.clone();
        assert_eq!(
            within("get", move || [q2.get().unwrap(), q2.get().unwrap()]),
            [true, false]
        );
        assert!(q.empty());
        finish(p);
    });
}

/// Echoes strings back until it gets "stop"; returns how many it echoed.
fn simple_echo((inbox, outbox): (SimpleQueue<String>, SimpleQueue<String>)) -> usize {
    let mut n = 0;
    loop {
        let s = inbox.get_timeout(LONG).unwrap();
        if s == "stop" {
            return n;
        }
        outbox.put(s.to_uppercase()).unwrap();
        n += 1;
    }
}

#[multiproc::test]
fn test_simple_queue_put_and_get_across_processes() {
    each_method(|ctx| {
        let inbox = SimpleQueue::new().unwrap();
        let outbox = SimpleQueue::new().unwrap();
        let p = start(ctx, simple_echo, (inbox.clone(), outbox.clone()));
        for w in ["hello", "", "world"] {
            inbox.put(w.to_string()).unwrap();
        }
        for w in ["HELLO", "", "WORLD"] {
            assert_eq!(outbox.get_timeout(LONG).unwrap(), w);
        }
        assert!(matches!(
            outbox.get_timeout(Duration::from_millis(10)),
            Err(GetError::Empty)
        ));
        inbox.put("stop".to_string()).unwrap();
        assert_eq!(finish(p), 3);
        assert!(inbox.empty() && outbox.empty());
    });
}

#[multiproc::test]
fn test_simple_queue_close() {
    let q = SimpleQueue::<u8>::new().unwrap();
    q.put(1).unwrap();
    q.close();
    // Closing a queue twice does not fail.
    q.close();
    assert_eq!(assert_closed_put(q.put(2)), 2);
    let (r, t) = timed(|| q.get());
    assert_closed_get(r);
    at_once(t);
    assert_closed_get(q.get_timeout(LONG));
}
