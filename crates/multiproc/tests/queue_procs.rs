//! Queues under many processes at once, under kills, and on their travels:
//!
//! - producers and consumers in separate processes (of every start method) with random item
//!   sizes up to 200 KiB: every item delivered exactly once, each producer's order kept;
//! - a consumer killed with SIGKILL mid-stream: the others drain everything but the one item
//!   it was moving, and the queue goes on working;
//! - a producer killed again and again while it puts (small first ring: kills land in ring
//!   growth and large items too): what was delivered is whole, in order, never repeated;
//! - a JoinableQueue whose consumer is killed: `join_timeout` says no instead of hanging;
//! - a queue as a Process argument, a pipe message and an item of another queue;
//! - a queue received over TCP: plain items and shared objects, but no descriptors (and a
//!   get through it of an item with descriptors leaves that item for a full handle);
//! - nothing left in /dev/shm after a queue that grew and held large items is gone (nor, while
//!   it lives, the segments of large items taken or refused);
//! - a handle that mapped a ring still works after the ring numbers (1..=255) came round.
//!
//! Every wait is bounded (the `*_timeout` forms, with [`LONG`]); the order of events is made
//! with Events and queues. Random choices come from fixed seeds, so a failure repeats;
//! `QUEUE_STRESS=n` repeats the kill tests' rounds n times over.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::procs::{LONG, METHODS, each_method, finish, start};

use common::{shm_exists, shm_gone_soon};
use multiproc::connection::{Client, Listener};
use multiproc::{
    Connection, Context, Event, GetError, JoinableQueue, Lock, Process, PutError, Queue,
    QueueError, SimpleQueue, get_context, pipe,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

fn ctx(name: &str) -> Context {
    get_context(name).unwrap()
}

/// Kills `p` with SIGKILL and waits for it to be gone.
fn kill<R: DeserializeOwned>(p: &Process<R>) {
    p.kill().unwrap();
    assert!(p.join_timeout(LONG).unwrap(), "a killed child did not end");
    assert_eq!(p.exitcode().unwrap(), Some(-9));
}

/// Waits (polling, bounded by [`LONG`]) until `cond` holds: for states only a poll can see,
/// such as a queue's length while another process fills it.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::yield_now();
    }
}

/// How many times over the kill tests repeat their rounds: `QUEUE_STRESS=n` in the
/// environment (default 1), to hunt for rare interleavings.
fn stress() -> u32 {
    std::env::var("QUEUE_STRESS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// A small seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A size from 0 to `max` bytes: half small, the rest spread up to `max`.
    fn size(&mut self, max: usize) -> usize {
        match self.below(10) {
            0..=4 => self.below(1024) as usize,
            5..=7 => self.below(max as u64 / 4) as usize,
            _ => self.below(max as u64 + 1) as usize,
        }
    }
}

/// The bytes of item (`who`, `n`), `len` long: a fill that depends on both, with `who` and
/// `n` at both ends (so an item mixed up with another, or torn, shows), cheap to make and to
/// compare.
fn body(who: u32, n: u32, len: usize) -> Vec<u8> {
    let mut v = vec![(who.wrapping_mul(31) ^ n.wrapping_mul(7)) as u8; len];
    let stamp = ((u64::from(who) << 32) | u64::from(n)).to_le_bytes();
    let k = len.min(8);
    v[..k].copy_from_slice(&stamp[..k]);
    let at = len - k;
    v[at..].copy_from_slice(&stamp[..k]);
    v
}

fn intact(who: u32, n: u32, bytes: &[u8]) -> bool {
    bytes == body(who, n, bytes.len()).as_slice()
}

// -------------------------------------------------------------------------------------------
// (a) P producers and C consumers in separate processes

/// (producer, its number for the item, bytes); `None` ends a consumer.
type Tagged = Option<(u32, u32, ByteBuf)>;

const PER_PRODUCER: u32 = 200;

fn producer((q, who, seed): (Queue<Tagged>, u32, u64)) {
    let mut rng = Rng(seed);
    for n in 0..PER_PRODUCER {
        let len = rng.size(200 << 10);
        q.put_timeout(Some((who, n, ByteBuf::from(body(who, n, len)))), LONG)
            .unwrap();
    }
}

/// Takes items until `None`; returns (producer, number) of each, in the order taken, having
/// checked every item's bytes.
fn consumer(q: Queue<Tagged>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    while let Some((who, n, bytes)) = q.get_timeout(LONG).unwrap() {
        assert!(intact(who, n, &bytes), "item {who}/{n} arrived changed");
        got.push((who, n));
    }
    got
}

#[multiproc::test]
fn producers_and_consumers_in_processes_deliver_each_item_exactly_once() {
    const P: u32 = 3;
    const C: usize = 3;
    // A bounded queue, so producers also wait for room now and then.
    let q = Queue::new(64).unwrap();
    // Each of the six processes under a different start method than its neighbour.
    let consumers: Vec<_> = (0..C)
        .map(|i| start(&ctx(METHODS[i % 3]), consumer, q.clone()))
        .collect();
    let producers: Vec<_> = (0..P)
        .map(|who| {
            let m = METHODS[(who as usize + 1) % 3];
            start(
                &ctx(m),
                producer,
                (q.clone(), who, 0xA11CE + u64::from(who)),
            )
        })
        .collect();
    for p in producers {
        finish(p);
    }
    for _ in 0..C {
        q.put_timeout(None, LONG).unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        let got = finish(c);
        // What one consumer took from one producer, it took in that producer's order.
        for who in 0..P {
            let mine: Vec<u32> = got.iter().filter(|g| g.0 == who).map(|g| g.1).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "a consumer got producer {who}'s items out of order: {mine:?}"
            );
        }
        all.extend(got);
    }
    all.sort_unstable();
    let want: Vec<(u32, u32)> = (0..P)
        .flat_map(|who| (0..PER_PRODUCER).map(move |n| (who, n)))
        .collect();
    assert!(all == want, "items lost or delivered twice");
    assert!(q.empty());
}

// -------------------------------------------------------------------------------------------
// (b) A consumer killed mid-stream

/// Work for the consumers: bytes, or a connection (an item with a descriptor on the queue's
/// side channel), or the end.
#[derive(Serialize, Deserialize)]
enum Work {
    Bytes(u32, ByteBuf),
    Conn(u32, Connection<u32>),
    Stop,
}

/// Takes items and reports each one's number on `seen` right after taking it, until killed.
/// At any moment, at most one item it took is not reported yet.
fn victim((q, seen): (Queue<Work>, Queue<u32>)) {
    loop {
        let id = match q.get_timeout(LONG).unwrap() {
            Work::Bytes(id, bytes) => {
                assert!(intact(id, id, &bytes));
                id
            }
            Work::Conn(id, _) => id,
            Work::Stop => return,
        };
        seen.put(id).unwrap();
    }
}

/// Waits for `go`, then takes items until `Stop`; returns their numbers.
fn survivor((q, go): (Queue<Work>, Event)) -> Vec<u32> {
    assert!(go.wait_timeout(LONG));
    let mut got = Vec::new();
    loop {
        match q.get_timeout(LONG).unwrap() {
            Work::Bytes(id, bytes) => {
                assert!(intact(id, id, &bytes), "item {id} arrived changed");
                got.push(id);
            }
            Work::Conn(id, _) => got.push(id),
            Work::Stop => return got,
        }
    }
}

#[multiproc::test]
fn a_consumer_killed_mid_stream_loses_at_most_the_item_it_was_moving() {
    const ITEMS: u32 = 800;
    let mut rng = Rng(0xB0B);
    for m in METHODS.repeat(stress() as usize) {
        let q = Queue::new(0).unwrap();
        for id in 0..ITEMS {
            let w = if id % 20 == 7 {
                let (mine, _theirs) = pipe(true).unwrap();
                Work::Conn(id, mine)
            } else {
                Work::Bytes(id, ByteBuf::from(body(id, id, rng.size(100 << 10))))
            };
            q.put(w).unwrap();
        }
        let seen = Queue::new(0).unwrap();
        let go = Event::new().unwrap();
        let v = start(&ctx(m), victim, (q.clone(), seen.clone()));
        let survivors: Vec<_> = METHODS
            .iter()
            .filter(|&&o| o != m)
            .map(|o| start(&ctx(o), survivor, (q.clone(), go.clone())))
            .collect();
        // The victim alone for a while, then all three at once, and then the kill.
        let mut reported = BTreeSet::new();
        for _ in 0..5 + rng.below(60) {
            reported.insert(seen.get_timeout(LONG).unwrap());
        }
        go.set();
        for _ in 0..rng.below(20) {
            reported.insert(seen.get_timeout(LONG).unwrap());
        }
        kill(&v);
        while let Ok(id) = seen.try_get() {
            assert!(reported.insert(id), "{m}: item {id} reported twice");
        }
        // The survivors drain the rest; the Stops come after every item.
        for _ in &survivors {
            q.put_timeout(Work::Stop, LONG).unwrap();
        }
        let mut taken: Vec<u32> = reported.iter().copied().collect();
        for s in survivors {
            taken.extend(finish(s));
        }
        let n = taken.len();
        let distinct: BTreeSet<u32> = taken.into_iter().collect();
        assert_eq!(distinct.len(), n, "{m}: an item was delivered twice");
        assert!(distinct.iter().all(|&id| id < ITEMS));
        let lost = ITEMS as usize - n;
        assert!(
            lost <= 1,
            "{m}: {lost} items lost; only the one the victim was moving may be"
        );
        // The queue works on, at once.
        let t = Instant::now();
        assert!(q.empty());
        q.put_timeout(Work::Bytes(1, ByteBuf::from(body(1, 1, 5))), LONG)
            .unwrap();
        assert!(matches!(q.get_timeout(LONG), Ok(Work::Bytes(1, _))));
        let (mine, mut theirs) = pipe::<u32>(true).unwrap();
        q.put_timeout(Work::Conn(2, mine), LONG).unwrap();
        match q.get_timeout(LONG) {
            Ok(Work::Conn(2, mut c)) => {
                c.send(&42).unwrap();
                assert_eq!(theirs.recv_timeout(LONG).unwrap(), 42);
            }
            _ => panic!("{m}: the connection item did not come back"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{m}: {:?}",
            t.elapsed()
        );
    }
}

// -------------------------------------------------------------------------------------------
// (c) A producer killed again and again while it puts

/// (round, number, bytes).
type Numbered = (u32, u32, ByteBuf);

/// Puts items numbered 0, 1, 2... until killed.
fn endless_producer((q, round, seed): (Queue<Numbered>, u32, u64)) {
    let mut rng = Rng(seed);
    for n in 0..u32::MAX {
        // Up to three times the 4 KiB first ring: growth and large items.
        let len = rng.size(12 << 10);
        q.put_timeout((round, n, ByteBuf::from(body(round, n, len))), LONG)
            .unwrap();
    }
}

#[multiproc::test]
fn a_producer_killed_again_and_again_leaves_the_queue_whole() {
    const ROUNDS: u32 = 12;
    let mut rng = Rng(0xC0FFEE);
    // One queue for every round, with a small first ring: kills land while a ring is linked,
    // while a large item's segment is made, and while records are written.
    let q: Queue<Numbered> = Queue::builder().capacity(4096).build().unwrap();
    for round in 0..ROUNDS * stress() {
        let m = METHODS[round as usize % 3];
        let p = start(&ctx(m), endless_producer, (q.clone(), round, rng.next()));
        let k = 1 + rng.below(150) as usize;
        eventually("the producer puts", || q.qsize() >= k);
        kill(&p);
        // Everything delivered is whole, in order, from 0 on, without a gap or a repeat.
        let count = q.qsize();
        let mut n = 0;
        loop {
            match q.try_get() {
                Ok((r, i, bytes)) => {
                    assert_eq!((r, i), (round, n), "{m}: round {round}");
                    assert!(intact(r, i, &bytes), "{m}: item {r}/{i} arrived changed");
                    n += 1;
                }
                Err(GetError::Empty) => break,
                Err(e) => panic!("{m}: round {round}: {e:?}"),
            }
        }
        assert_eq!(n as usize, count, "{m}: round {round}");
        assert!(n as usize >= k);
        // Usable at once: a put and a get, small and large.
        let t = Instant::now();
        for len in [3, 9000] {
            q.put_timeout((u32::MAX, 0, ByteBuf::from(body(u32::MAX, 0, len))), LONG)
                .unwrap();
            let (r, i, bytes) = q.get_timeout(LONG).unwrap();
            assert!((r, i) == (u32::MAX, 0) && intact(r, i, &bytes));
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{m}: {:?}",
            t.elapsed()
        );
    }
}

// -------------------------------------------------------------------------------------------
// (d) A JoinableQueue whose consumer is killed

/// Takes and finishes `done` items, then takes one more and holds it (never finished).
fn finish_some_then_hold((q, done, holding): (JoinableQueue<u32>, u32, Event)) {
    for _ in 0..done {
        q.get_timeout(LONG).unwrap();
        q.task_done().unwrap();
    }
    q.get_timeout(LONG).unwrap();
    holding.set();
    // Waits to be killed (bounded, as every wait).
    Event::new().unwrap().wait_timeout(LONG);
}

fn finish_all(q: JoinableQueue<u32>) -> u32 {
    let mut n = 0;
    while let Ok(_item) = q.get_timeout(Duration::from_millis(200)) {
        q.task_done().unwrap();
        n += 1;
    }
    n
}

#[multiproc::test]
fn joinable_queue_join_times_out_when_its_consumer_was_killed() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let q = JoinableQueue::new(0).unwrap();
        for i in 0..10 {
            q.put(i).unwrap();
        }
        let holding = Event::new().unwrap();
        let p = start(ctx, finish_some_then_hold, (q.clone(), 4, holding.clone()));
        assert!(holding.wait_timeout(LONG));
        kill(&p);
        // Five items are left and one was taken but never finished: join says no, on time.
        let want = Duration::from_millis(200);
        let t = Instant::now();
        assert!(!q.join_timeout(want), "{m}");
        let took = t.elapsed();
        assert!(
            took >= want && took < want + Duration::from_millis(1500),
            "{m}: {took:?}"
        );
        // Another consumer finishes the rest; the lost item still holds join back...
        let other = start(ctx, finish_all, q.clone());
        assert_eq!(finish(other), 5, "{m}");
        assert!(!q.join_timeout(Duration::from_millis(50)), "{m}");
        // ... until someone says it is done.
        q.task_done().unwrap();
        assert!(q.join_timeout(LONG), "{m}");
    });
}

// -------------------------------------------------------------------------------------------
// (e) A queue as a Process argument, a pipe message and an item of another queue

#[derive(Serialize, Deserialize)]
enum Msg {
    Text(String),
    Conn(Connection<String>),
}

/// The three kinds of queue, travelling together.
#[derive(Serialize, Deserialize)]
struct Trio {
    q: Queue<Msg>,
    s: SimpleQueue<Msg>,
    j: JoinableQueue<u32>,
}

/// Uses each queue of `t`: answers the text from `q` on `s`, with a connection as a second
/// item (its descriptor goes through the queue's side channel), and finishes one task of `j`.
fn use_trio(t: Trio) {
    let Msg::Text(text) = t.q.get_timeout(LONG).unwrap() else {
        panic!("expected a text");
    };
    assert_eq!(t.q.maxsize(), 5);
    t.s.put(Msg::Text(format!("{text} back"))).unwrap();
    let (mut mine, theirs) = pipe(true).unwrap();
    t.s.put(Msg::Conn(theirs)).unwrap();
    mine.send(&format!("{text} by fd")).unwrap();
    assert_eq!(t.j.get_timeout(LONG).unwrap(), 7);
    t.j.task_done().unwrap();
}

fn trio_by_pipe(mut conn: Connection<Trio>) {
    use_trio(conn.recv_timeout(LONG).unwrap());
}

fn trio_by_queue(outer: Queue<Trio>) {
    use_trio(outer.get_timeout(LONG).unwrap());
}

fn new_trio() -> Trio {
    Trio {
        q: Queue::new(5).unwrap(),
        s: SimpleQueue::new().unwrap(),
        j: JoinableQueue::new(0).unwrap(),
    }
}

fn clone_trio(t: &Trio) -> Trio {
    Trio {
        q: t.q.clone(),
        s: t.s.clone(),
        j: t.j.clone(),
    }
}

/// Gives the child its work through `t` and checks what came back.
fn check_trio(t: &Trio, what: &str) {
    t.q.put(Msg::Text(what.to_string())).unwrap();
    t.j.put(7).unwrap();
    match t.s.get_timeout(LONG).unwrap() {
        Msg::Text(s) => assert_eq!(s, format!("{what} back")),
        Msg::Conn(_) => panic!("{what}: expected a text"),
    }
    match t.s.get_timeout(LONG).unwrap() {
        Msg::Conn(mut c) => assert_eq!(c.recv_timeout(LONG).unwrap(), format!("{what} by fd")),
        Msg::Text(_) => panic!("{what}: expected a connection"),
    }
    assert!(t.j.join_timeout(LONG), "{what}");
}

#[multiproc::test]
fn queues_travel_as_arguments_pipe_messages_and_queue_items() {
    each_method(|ctx| {
        let m = ctx.start_method();
        // A Process argument.
        let t = new_trio();
        let p = start(ctx, use_trio, clone_trio(&t));
        check_trio(&t, &format!("{m} argument"));
        finish(p);
        // A pipe message.
        let t = new_trio();
        let (mut mine, theirs) = pipe(true).unwrap();
        let p = start(ctx, trio_by_pipe, theirs);
        mine.send(&clone_trio(&t)).unwrap();
        check_trio(&t, &format!("{m} pipe"));
        finish(p);
        // An item of another queue.
        let t = new_trio();
        let outer = Queue::new(0).unwrap();
        let p = start(ctx, trio_by_queue, outer.clone());
        outer.put(clone_trio(&t)).unwrap();
        check_trio(&t, &format!("{m} queue item"));
        finish(p);
    });
}

// -------------------------------------------------------------------------------------------
// (f) A queue received over TCP

#[derive(Debug, Serialize, Deserialize)]
enum Held {
    Plain(u64),
    Lock(Lock),
    Conn(Connection<u32>),
}

/// Connects over TCP, receives a queue, and tries three items on it; returns what each put
/// said.
fn over_tcp((address, lock): (String, Lock)) -> (bool, bool, bool) {
    let mut conn: Connection<Queue<Held>> = Client::new(address.as_str())
        .authkey(b"queue key")
        .connect()
        .unwrap();
    let q = conn.recv_timeout(LONG).unwrap();
    let plain = q.put(Held::Plain(5)).is_ok();
    let with_lock = q.put(Held::Lock(lock)).is_ok();
    let (mine, _theirs) = pipe(true).unwrap();
    let refused = match q.put(Held::Conn(mine)) {
        Err(PutError::Failed(QueueError::NoDescriptorChannel, Held::Conn(_))) => true,
        other => panic!("expected NoDescriptorChannel, got {other:?}"),
    };
    (plain, with_lock, refused)
}

#[multiproc::test]
fn a_queue_received_over_tcp_carries_plain_items_and_locks_but_no_descriptors() {
    each_method(|ctx| {
        let mut listener = Listener::builder()
            .address("127.0.0.1:0")
            .authkey(b"queue key")
            .bind()
            .unwrap();
        let lock = Lock::new().unwrap();
        let p = start(
            ctx,
            over_tcp,
            (listener.address().to_string(), lock.clone()),
        );
        let mut conn: Connection<Queue<Held>> = listener.accept_timeout(LONG).unwrap();
        let q = Queue::new(0).unwrap();
        conn.send(&q).unwrap();
        assert_eq!(finish(p), (true, true, true));
        assert!(matches!(q.get_timeout(LONG), Ok(Held::Plain(5))));
        match q.get_timeout(LONG) {
            Ok(Held::Lock(l)) => {
                // The same lock: held through one handle, the other sees it taken.
                let g = l.acquire_timeout(LONG).unwrap();
                assert!(lock.try_acquire().is_err());
                drop(g);
                assert!(lock.try_acquire().is_ok());
            }
            other => panic!("{other:?}"),
        }
        // The refused item was not put.
        assert!(matches!(q.try_get(), Err(GetError::Empty)));
    });
}

/// Receives a queue over TCP and tries to take one item from it.
fn get_over_tcp(address: String) -> String {
    let mut conn: Connection<Queue<Held>> = Client::new(address.as_str())
        .authkey(b"queue key")
        .connect()
        .unwrap();
    let q = conn.recv_timeout(LONG).unwrap();
    match q.get_timeout(LONG) {
        Ok(h) => format!("got {h:?}"),
        Err(e) => format!("{e}"),
    }
}

/// A handle that arrived over TCP cannot receive an item's descriptors: its get must fail
/// without taking the item, which a full handle then gets.
#[multiproc::test]
fn a_get_over_tcp_of_an_item_with_descriptors_leaves_the_item_in_the_queue() {
    let mut listener = Listener::builder()
        .address("127.0.0.1:0")
        .authkey(b"queue key")
        .bind()
        .unwrap();
    let q = Queue::new(0).unwrap();
    let (mine, mut theirs) = pipe::<u32>(true).unwrap();
    q.put(Held::Conn(mine)).unwrap();
    q.put(Held::Plain(9)).unwrap();
    let p = start(&ctx("fork"), get_over_tcp, listener.address().to_string());
    let mut conn: Connection<Queue<Held>> = listener.accept_timeout(LONG).unwrap();
    conn.send(&q).unwrap();
    let said = finish(p);
    assert!(
        said.contains("descriptor channel"),
        "the TCP handle's get said: {said}"
    );
    match q.try_get() {
        Ok(Held::Conn(mut c)) => {
            c.send(&1).unwrap();
            assert_eq!(theirs.recv_timeout(LONG).unwrap(), 1);
        }
        other => panic!(
            "the item with a descriptor is gone after the TCP handle's failed get: {other:?}"
        ),
    }
    assert!(matches!(q.try_get(), Ok(Held::Plain(9))));
}

// -------------------------------------------------------------------------------------------
// (g) Nothing left in /dev/shm

/// Every item starts with this test's own marker, so the segments holding items (rings and
/// large items' own segments) can be found in /dev/shm by their bytes.
fn marked(marker: &[u8; 16], n: u32, len: usize) -> ByteBuf {
    let mut v = marker.to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v.resize(16 + 4 + len, n as u8);
    ByteBuf::from(v)
}

/// The segments in /dev/shm whose first bytes hold `marker`: each name, with the item's
/// number when the segment is a large item's own (the encoded item at its start: a length,
/// the marker, the number), `None` for a ring.
fn holding_marker(marker: &[u8; 16]) -> Vec<(String, Option<u32>)> {
    use std::io::Read;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        let mut head = Vec::new();
        if f.take(8192).read_to_end(&mut head).is_err() {
            continue;
        }
        if let Some(at) = head.windows(16).position(|w| w == marker) {
            let n = (at <= 4)
                .then(|| head.get(at + 16..at + 20))
                .flatten()
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
            found.push((e.file_name().to_string_lossy().into_owned(), n));
        }
    }
    found
}

/// Puts items `from..from + n`; every `large`-th is larger than a quarter of the 4 KiB ring
/// (a segment of its own).
fn fill_marked((q, marker, from, n, large): (Queue<ByteBuf>, [u8; 16], u32, u32, u32)) {
    for i in from..from.saturating_add(n) {
        let len = if i % large == 0 {
            3000 + i as usize % 5000
        } else {
            40
        };
        q.put_timeout(marked(&marker, i, len), LONG).unwrap();
    }
}

/// Takes `n` items; returns their numbers.
fn take_marked((q, n): (Queue<ByteBuf>, u32)) -> Vec<u32> {
    (0..n)
        .map(|_| u32::from_le_bytes(q.get_timeout(LONG).unwrap()[16..20].try_into().unwrap()))
        .collect()
}

/// The queue's segment name, from its Debug form.
fn queue_name<T>(q: &Queue<T>) -> String {
    let d = format!("{q:?}");
    let start = d.find("name: \"").expect("the name in the Debug form") + 7;
    let len = d[start..].find('"').unwrap();
    d[start..start + len].to_string()
}

fn rings_of(name: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("{name}.r")))
        .collect()
}

#[multiproc::test]
fn no_segment_is_left_after_a_grown_queue_with_large_items_is_gone() {
    let mut marker = [0u8; 16];
    let seed = (u64::from(std::process::id()) << 32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    let mut rng = Rng(seed);
    marker[..8].copy_from_slice(&rng.next().to_le_bytes());
    marker[8..].copy_from_slice(&rng.next().to_le_bytes());

    let q: Queue<ByteBuf> = Queue::builder().capacity(4096).build().unwrap();
    let name = queue_name(&q);
    assert!(shm_exists(&name));
    // Producers of two start methods fill it far past its first ring, with large items; a
    // consumer takes part of it; the rest stays in the queue.
    let producers = [
        start(&ctx("fork"), fill_marked, (q.clone(), marker, 0, 600, 10)),
        start(
            &ctx("spawn"),
            fill_marked,
            (q.clone(), marker, 600, 600, 10),
        ),
    ];
    for p in producers {
        finish(p);
    }
    let c = start(&ctx("forkserver"), take_marked, (q.clone(), 300));
    let taken: BTreeSet<u32> = finish(c).into_iter().collect();
    assert_eq!(q.qsize(), 900);
    // The large items taken are gone from /dev/shm already (their taker unlinks them); the
    // others are there, each in a segment of its own, and so are the rings.
    let now = holding_marker(&marker);
    let large: BTreeSet<u32> = now.iter().filter_map(|f| f.1).collect();
    assert!(
        large.is_disjoint(&taken),
        "large items taken are still in /dev/shm: {:?}",
        large.intersection(&taken).collect::<Vec<_>>()
    );
    assert_eq!(
        large.len(),
        120 - taken.iter().filter(|&&i| i % 10 == 0).count()
    );
    assert!(!rings_of(&name).is_empty(), "the queue did not grow");

    // A large item refused by a full bounded queue made a segment, which goes at once (while
    // the queue lives on).
    let bounded: Queue<ByteBuf> = Queue::builder().maxsize(1).capacity(4096).build().unwrap();
    let bounded_name = queue_name(&bounded);
    let mut refused_marker = marker;
    refused_marker[0] ^= 0xFF;
    bounded.put(marked(&refused_marker, 1, 10)).unwrap();
    for _ in 0..20 {
        assert!(matches!(
            bounded.try_put(marked(&refused_marker, 2, 5000)),
            Err(PutError::Full(_))
        ));
    }
    for (f, n) in holding_marker(&refused_marker) {
        if n.is_some() {
            assert!(shm_gone_soon(&f), "the refused item's segment {f} is left");
        }
    }

    // A producer of large items killed while it puts: whatever it was making when it died
    // goes too, at the latest with the queue.
    let p = start(
        &ctx("fork"),
        fill_marked,
        (q.clone(), marker, 10_000, u32::MAX, 1),
    );
    eventually("the producer puts", || q.qsize() >= 950);
    kill(&p);

    drop(q);
    drop(bounded);
    assert!(shm_gone_soon(&name), "{name} is left");
    assert!(shm_gone_soon(&bounded_name), "{bounded_name} is left");
    // Whatever still holds a marker (or is one of the rings) must go too, soon.
    let left: Vec<String> = holding_marker(&marker)
        .into_iter()
        .chain(holding_marker(&refused_marker))
        .map(|f| f.0)
        .chain(rings_of(&name))
        .filter(|f| !shm_gone_soon(f))
        .collect();
    assert!(
        left.is_empty(),
        "left in /dev/shm after the queue was gone: {left:?}"
    );
    assert!(!Path::new("/dev/shm").join(&name).exists());
}

// -------------------------------------------------------------------------------------------
// Ring numbers wrap: a handle that mapped ring N long ago

/// Makes 255 rings through its own handle (so ring numbers, 1..=255, come round to the one
/// that was current when it started), draining after each; then takes what the parent put
/// through its old handle, and puts an answer.
fn make_255_rings((q, name, ready, put_done): (Queue<ByteBuf>, String, Event, Event)) -> String {
    let mut made = 0;
    let mut n = 0u32;
    while made < 255 {
        let before = rings_of(&name);
        n += 1;
        q.put_timeout(ByteBuf::from(body(9, n, 500)), LONG).unwrap();
        if rings_of(&name).iter().any(|r| !before.contains(r)) {
            made += 1;
            while let Ok(got) = q.try_get() {
                let i = u32::from_le_bytes(got[..4].try_into().unwrap());
                assert!(intact(9, i, &got), "item {i} arrived changed");
            }
        }
    }
    while let Ok(got) = q.try_get() {
        let i = u32::from_le_bytes(got[..4].try_into().unwrap());
        assert!(intact(9, i, &got));
    }
    ready.set();
    assert!(put_done.wait_timeout(LONG));
    let got = match q.get_timeout(Duration::from_secs(2)) {
        Ok(b) if intact(1, 1, &b) => "the parent's item".to_string(),
        Ok(b) => format!("another item ({} bytes)", b.len()),
        Err(e) => format!("an error: {e}"),
    };
    q.put_timeout(ByteBuf::from(body(2, 2, 500)), LONG).unwrap();
    got
}

#[multiproc::test]
fn a_handle_that_mapped_a_ring_before_the_ring_numbers_wrapped_still_works() {
    let q: Queue<ByteBuf> = Queue::builder().capacity(4096).build().unwrap();
    let name = queue_name(&q);
    // This handle puts and gets in ring 1 (twice the first), and keeps it mapped.
    let mut n = 0;
    while rings_of(&name).is_empty() {
        n += 1;
        q.put(ByteBuf::from(body(0, n, 500))).unwrap();
    }
    while q.try_get().is_ok() {}
    assert_eq!(rings_of(&name), [format!("{name}.r1")]);
    // Another process makes 255 rings: ring 1 again, a new segment.
    let ready = Event::new().unwrap();
    let put_done = Event::new().unwrap();
    let p = start(
        &ctx("spawn"),
        make_255_rings,
        (q.clone(), name.clone(), ready.clone(), put_done.clone()),
    );
    eventually("the rings are made", || {
        ready.is_set() || !p.is_alive().unwrap()
    });
    if !ready.is_set() {
        finish(p);
        panic!("the child ended early");
    }
    q.put_timeout(ByteBuf::from(body(1, 1, 500)), LONG).unwrap();
    put_done.set();
    let child_got = finish(p);
    let parent_got = match q.get_timeout(Duration::from_secs(2)) {
        Ok(b) if intact(2, 2, &b) => "the child's item".to_string(),
        Ok(b) => format!("another item ({} bytes)", b.len()),
        Err(e) => format!("an error: {e}"),
    };
    assert_eq!(
        (child_got.as_str(), parent_got.as_str()),
        ("the parent's item", "the child's item")
    );
}
