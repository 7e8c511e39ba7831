//! Queues across real processes: the core behaviours (order, growth, large items, items
//! holding shared objects and descriptors, a producer that exits without closing).

use std::time::Duration;

mod common;

use common::procs::{LONG, each_method, finish, start};

use multiproc::{
    Connection, Event, GetError, JoinableQueue, Lock, PutError, Queue, QueueError, SimpleQueue,
    get_context, pipe,
};
use serde_bytes::ByteBuf;

fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

#[multiproc::test]
fn items_arrive_in_order_from_another_process() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        let p = start(ctx, produce, (q.clone(), 1000));
        for i in 0..1000 {
            assert_eq!(q.get_timeout(LONG).unwrap(), i);
        }
        finish(p);
        assert!(q.empty());
    });
}

#[multiproc::test]
fn a_producer_that_exits_without_closing_loses_nothing_even_past_the_ring() {
    // 100,000 items are far more than the first ring holds: the ring grows, and the
    // producer exits with all of them still in the queue.
    let q = Queue::<u64>::builder().capacity(4096).build().unwrap();
    let p = start(&get_context("fork").unwrap(), produce, (q.clone(), 100_000));
    finish(p);
    assert_eq!(q.qsize(), 100_000);
    for i in 0..100_000 {
        assert_eq!(q.try_get().unwrap(), i);
    }
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
    // Back to the first ring's size once empty, and still working.
    q.put(7).unwrap();
    assert_eq!(q.get().unwrap(), 7);
}

fn echo_large((q, back): (Queue<ByteBuf>, Queue<ByteBuf>)) {
    let item = q.get_timeout(LONG).unwrap();
    back.put(item).unwrap();
}

#[multiproc::test]
fn a_64_mib_item_travels_both_ways() {
    let q = Queue::new(0).unwrap();
    let back = Queue::new(0).unwrap();
    let p = start(
        &get_context("forkserver").unwrap(),
        echo_large,
        (q.clone(), back.clone()),
    );
    // (As bytes, the way a program would send a large buffer: serde_bytes.)
    let big: Vec<u8> = (0..64u32 << 18)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    q.put(ByteBuf::from(big.clone())).unwrap();
    let got = back.get_timeout(LONG).unwrap();
    assert!(got.into_vec() == big, "the item came back changed");
    finish(p);
}

#[multiproc::test]
fn bounded_queue_full_and_empty_as_cpython() {
    let q = Queue::new(3).unwrap();
    for i in 0..3 {
        q.try_put(i).unwrap();
    }
    assert!(q.full());
    assert!(matches!(q.try_put(3), Err(PutError::Full(3))));
    let t = std::time::Instant::now();
    assert!(matches!(
        q.put_timeout(3, Duration::from_millis(100)),
        Err(PutError::Full(3))
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
    for i in 0..3 {
        assert_eq!(q.try_get().unwrap(), i);
    }
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
    let t = std::time::Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(100)),
        Err(GetError::Empty)
    ));
    assert!(t.elapsed() >= Duration::from_millis(100));
}

/// What the child gets: a queue for the objects, a lock, an event, a connection.
type Objects = (
    Queue<(Lock, Event, Connection<String>)>,
    Lock,
    Event,
    Connection<String>,
);

fn locked_and_signalled((q, lock, ev, conn): Objects) {
    // The child puts the objects it was given; the parent takes them from the queue.
    let _ = lock;
    q.put((Lock::new().unwrap(), ev.clone(), conn)).unwrap();
    ev.wait_timeout(LONG);
}

#[multiproc::test]
fn items_holding_shared_objects_and_connections_work_on_the_other_side() {
    each_method(|ctx| {
        let q = Queue::new(0).unwrap();
        let ev = Event::new().unwrap();
        let (mut mine, theirs) = pipe(true).unwrap();
        let p = start(
            ctx,
            locked_and_signalled,
            (q.clone(), Lock::new().unwrap(), ev.clone(), theirs),
        );
        let (lock, ev2, mut conn) = q.get_timeout(LONG).unwrap();
        assert!(lock.acquire().is_ok(), "the lock works");
        conn.send(&"through a queue".to_string()).unwrap();
        assert_eq!(mine.recv().unwrap(), "through a queue");
        ev2.set();
        finish(p);
    });
}

fn consume_all((q, n): (JoinableQueue<u64>, u64)) -> u64 {
    let mut sum = 0;
    for _ in 0..n {
        sum += q.get_timeout(LONG).unwrap();
        q.task_done().unwrap();
    }
    sum
}

#[multiproc::test]
fn joinable_queue_join_waits_for_every_task_done() {
    let q = JoinableQueue::new(0).unwrap();
    for i in 0..100 {
        q.put(i).unwrap();
    }
    assert!(!q.join_timeout(Duration::from_millis(20)));
    let p = start(
        &get_context("forkserver").unwrap(),
        consume_all,
        (q.clone(), 100),
    );
    assert!(q.join_timeout(LONG));
    assert_eq!(finish(p), 4950);
    assert!(matches!(
        q.task_done(),
        Err(QueueError::TaskDoneTooManyTimes)
    ));
}

#[multiproc::test]
fn closed_handles_refuse_and_other_handles_go_on() {
    let q = Queue::new(0).unwrap();
    let other = SimpleQueue::<u8>::new().unwrap();
    q.put(1).unwrap();
    q.close();
    assert!(matches!(
        q.put(2),
        Err(PutError::Failed(QueueError::Closed, 2))
    ));
    assert!(matches!(q.get(), Err(GetError::Failed(QueueError::Closed))));
    other.put(1).unwrap();
    other.close();
    assert!(other.get().is_err());
}

#[multiproc::test]
fn growing_and_shrinking_hundreds_of_times_keeps_every_item_in_order() {
    // Each round outgrows the 4 KiB first ring (a larger ring is linked) and empties the
    // queue (the next put goes back to a ring of the first size): 600 rings in all, so the
    // ring numbers wrap around more than once.
    let q = Queue::<Vec<u8>>::builder().capacity(4096).build().unwrap();
    for round in 0..300u32 {
        for i in 0..40 {
            q.put(vec![(round + i) as u8; 100]).unwrap();
        }
        for i in 0..40 {
            assert_eq!(
                q.try_get().unwrap(),
                vec![(round + i) as u8; 100],
                "round {round}"
            );
        }
    }
    assert!(q.empty());
}

#[multiproc::test]
fn a_refused_item_does_not_keep_the_shared_objects_it_held() {
    // The item's Lock is encoded by name (and counted in transit) before the put finds the
    // queue full; the refused encoding must not keep the Lock's memory alive.
    let q = Queue::new(1).unwrap();
    q.put(Lock::new().unwrap()).unwrap();
    let mut names = Vec::new();
    for _ in 0..3 {
        let lock = Lock::new().unwrap();
        let debug = format!("{lock:?}");
        let name = debug
            .split('"')
            .nth(1)
            .expect("a name in the Debug form")
            .to_owned();
        assert!(common::shm_exists(&name));
        let back = match q.try_put(lock) {
            Err(PutError::Full(back)) => back,
            other => panic!("{other:?}"),
        };
        drop(back);
        names.push(name);
    }
    for name in &names {
        assert!(common::shm_gone_soon(name), "{name} outlived every handle");
    }
}
