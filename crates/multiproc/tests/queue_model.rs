//! A queue checked against a model (`Mutex<VecDeque>`): random sequences of every call
//! (`put`, `try_put`, `put_timeout`, `get`, `try_get`, `get_timeout`, `qsize`, `empty`,
//! `full`) on queues with a random `maxsize` (0 included) and a small first ring (4 or 8 KiB),
//! with item sizes from 0 bytes to three times the ring. So every path of the ring engine
//! runs: records that wrap after a pad, a ring that fills and links a larger one (several
//! times over), the return to the first ring once the queue is empty in a much larger one,
//! and items above a quarter of the ring that go to a segment of their own (the sizes
//! cluster around that limit too). Then the same with threads of one process putting and
//! getting at once, and positions that wrap at 2^24 units in the first ring and in a grown
//! one.
//!
//! Every run is bounded: the property runs on a thread the test waits for with a timeout,
//! and a blocking call is made only when the model says it cannot block.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use multiproc::{GetError, PutError, Queue};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_bytes::ByteBuf;

/// The bound of every run.
const LONG: Duration = Duration::from_secs(60);

/// How many times over the random tests run: `QUEUE_STRESS=n` in the environment (default
/// 1), to hunt for rare cases. (The bound of a run grows with it.)
fn stress() -> u32 {
    std::env::var("QUEUE_STRESS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Runs `f` on a thread; fails the test if it has not returned within [`LONG`] (a bug that
/// hangs a call then fails the test instead of hanging it).
fn within<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(LONG * stress()) {
        Ok(r) => r,
        // The thread ended without a result: it panicked; show its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not end within {LONG:?}"),
    }
}

/// The bytes of item number `seq`, `len` long (distinct for every `seq`, so a misplaced,
/// repeated or torn item shows).
fn item_bytes(seq: u64, len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    /// A blocking put of an item of this many bytes (a `put_timeout` that must fail, when
    /// the model is full: a blocking put would wait for ever).
    Put(usize),
    TryPut(usize),
    /// `put_timeout` with a tiny timeout (0 or 1 ms).
    PutTimeout(usize, bool),
    /// A blocking get (a `get_timeout` that must fail, when the model is empty).
    Get,
    TryGet,
    /// `get_timeout` with a tiny timeout (0 or 1 ms).
    GetTimeout(bool),
    Qsize,
    Empty,
    Full,
}

/// Item sizes: mostly small, some around the external limit of a 4 KiB ring (a record above
/// 128 units, a payload above 1016 bytes), some up to three times the ring.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..64,
        3 => 64usize..1000,
        2 => 1005usize..1025,
        1 => 1025usize..3 * 4096,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => size().prop_map(Op::Put),
        3 => size().prop_map(Op::TryPut),
        2 => (size(), any::<bool>()).prop_map(|(s, z)| Op::PutTimeout(s, z)),
        4 => Just(Op::Get),
        2 => Just(Op::TryGet),
        2 => any::<bool>().prop_map(Op::GetTimeout),
        1 => Just(Op::Qsize),
        1 => Just(Op::Empty),
        1 => Just(Op::Full),
    ]
}

/// A queue's options: `maxsize` (0, the most common: no limit) and the first ring's size.
fn options() -> impl Strategy<Value = (usize, usize)> {
    let maxsize = prop_oneof![3 => Just(0usize), 1 => 1usize..6, 1 => 6usize..80];
    let capacity = prop_oneof![3 => Just(4096usize), 1 => Just(8192usize)];
    (maxsize, capacity)
}

fn tiny(zero: bool) -> Duration {
    if zero {
        Duration::ZERO
    } else {
        Duration::from_millis(1)
    }
}

/// What the model holds, and its limit.
struct Model {
    items: Mutex<VecDeque<Vec<u8>>>,
    maxsize: usize,
}

impl Model {
    fn len(&self) -> usize {
        self.items.lock().unwrap().len()
    }

    fn full(&self) -> bool {
        self.maxsize != 0 && self.len() >= self.maxsize
    }

    fn push(&self, item: Vec<u8>) {
        self.items.lock().unwrap().push_back(item);
    }

    fn pop(&self) -> Option<Vec<u8>> {
        self.items.lock().unwrap().pop_front()
    }
}

/// Checks a put's outcome against the model: it must have happened unless the model is
/// full, and then the item comes back whole.
fn check_put(
    model: &Model,
    item: Vec<u8>,
    was_full: bool,
    r: Result<(), PutError<ByteBuf>>,
) -> Result<(), TestCaseError> {
    match r {
        Ok(()) => {
            prop_assert!(!was_full, "a put succeeded on a full queue");
            model.push(item);
        }
        Err(PutError::Full(back)) => {
            prop_assert!(was_full, "Full on a queue with room");
            prop_assert!(
                back.into_vec() == item,
                "the refused item came back changed"
            );
        }
        Err(e) => return Err(TestCaseError::fail(format!("put failed: {e:?}"))),
    }
    Ok(())
}

/// Checks a get's outcome against the model.
fn check_get(model: &Model, r: Result<ByteBuf, GetError>) -> Result<(), TestCaseError> {
    let want = model.pop();
    match (r, want) {
        (Ok(got), Some(want)) => prop_assert!(
            got.as_slice() == want.as_slice(),
            "got an item of {} bytes, expected another of {} bytes",
            got.len(),
            want.len()
        ),
        (Err(GetError::Empty), None) => {}
        (Ok(got), None) => {
            return Err(TestCaseError::fail(format!(
                "got an item of {} bytes from an empty queue",
                got.len()
            )));
        }
        (Err(e), want) => {
            return Err(TestCaseError::fail(format!(
                "get failed with {e:?}; the model holds {:?} bytes next",
                want.map(|w| w.len())
            )));
        }
    }
    Ok(())
}

fn run_case(maxsize: usize, capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let q = Queue::<ByteBuf>::builder()
        .maxsize(maxsize)
        .capacity(capacity)
        .build()
        .unwrap();
    prop_assert_eq!(q.maxsize(), maxsize);
    let model = Model {
        items: Mutex::new(VecDeque::new()),
        maxsize,
    };
    let mut seq = 0u64;
    let mut next_item = |len: usize| {
        seq += 1;
        item_bytes(seq, len)
    };
    for op in ops {
        let full = model.full();
        let empty = model.len() == 0;
        match *op {
            Op::Put(len) => {
                let item = next_item(len);
                let r = if full {
                    q.put_timeout(ByteBuf::from(item.clone()), Duration::from_millis(1))
                } else {
                    q.put(ByteBuf::from(item.clone()))
                };
                check_put(&model, item, full, r)?;
            }
            Op::TryPut(len) => {
                let item = next_item(len);
                let r = q.try_put(ByteBuf::from(item.clone()));
                check_put(&model, item, full, r)?;
            }
            Op::PutTimeout(len, zero) => {
                let item = next_item(len);
                let r = q.put_timeout(ByteBuf::from(item.clone()), tiny(zero));
                check_put(&model, item, full, r)?;
            }
            Op::Get => {
                let r = if empty {
                    q.get_timeout(Duration::from_millis(1))
                } else {
                    q.get()
                };
                check_get(&model, r)?;
            }
            Op::TryGet => check_get(&model, q.try_get())?,
            Op::GetTimeout(zero) => check_get(&model, q.get_timeout(tiny(zero)))?,
            Op::Qsize => prop_assert_eq!(q.qsize(), model.len()),
            Op::Empty => prop_assert_eq!(q.empty(), model.len() == 0),
            Op::Full => prop_assert_eq!(q.full(), model.full()),
        }
        prop_assert_eq!(q.qsize(), model.len(), "after {:?}", op);
    }
    // Everything left comes out in order, then the queue is empty and still works (on the
    // first ring's size again, if it had grown).
    while model.len() > 0 {
        check_get(&model, q.try_get())?;
    }
    prop_assert!(matches!(q.try_get(), Err(GetError::Empty)));
    prop_assert!(q.empty());
    let last = next_item(100);
    q.try_put(ByteBuf::from(last.clone())).unwrap();
    prop_assert!(q.try_get().unwrap().into_vec() == last);
    Ok(())
}

#[multiproc::test]
fn random_calls_agree_with_a_model() {
    within("the property", || {
        let mut runner = TestRunner::new(Config {
            cases: 64 * stress(),
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..Config::default()
        });
        let strategy = (options(), prop::collection::vec(op(), 1..300));
        runner
            .run(&strategy, |((maxsize, capacity), ops)| {
                run_case(maxsize, capacity, &ops)
            })
            .unwrap();
    });
}

/// A deterministic walk through the paths the random one reaches only by chance: sizes on
/// each side of the external limit, many growths in a row (rings of 4, 8, ... 256 KiB), and the way back.
#[multiproc::test]
fn the_limits_of_a_small_ring_one_by_one() {
    within("the walk", || {
        let q = Queue::<ByteBuf>::builder().capacity(4096).build().unwrap();
        let model = Model {
            items: Mutex::new(VecDeque::new()),
            maxsize: 0,
        };
        let mut seq = 0;
        let mut put = |len: usize| {
            seq += 1;
            let item = item_bytes(seq, len);
            check_put(&model, item.clone(), false, q.put(ByteBuf::from(item))).unwrap();
        };
        // On each side of the limit: a 2-byte length prefix plus 1014 bytes is a payload of
        // 1016 (128 units with the header: a quarter of the ring, inline), plus 1015 is 1017
        // (129 units: external); one way and the other, several times, so the ring wraps
        // with pads in between.
        for round in 0..20 {
            for len in [1013, 1014, 1015, 1016, 0, 7, 8, 9] {
                put(len + round % 3);
            }
            while model.len() > 3 {
                check_get(&model, q.try_get()).unwrap();
            }
        }
        // Many growths in a row: 1 MiB of small items in a queue whose first ring is 4 KiB.
        for _ in 0..4000 {
            put(250);
        }
        // Draining hands every item back in order, and the queue shrinks once empty.
        while model.len() > 0 {
            check_get(&model, q.try_get()).unwrap();
        }
        for len in [0, 3000, 12000, 10] {
            put(len);
        }
        while model.len() > 0 {
            check_get(&model, q.try_get()).unwrap();
        }
        assert!(q.empty());
    });
}

/// A record that ends exactly at the ring's end, then one at its start: in a fresh 4 KiB
/// ring (512 units), three records of 128 units (head 384), one taken (tail 128), and a
/// fourth of 128 units fits the 128 left before the end without a pad.
#[multiproc::test]
fn a_record_that_ends_exactly_at_the_end_of_the_ring() {
    within("the walk", || {
        let q = Queue::<ByteBuf>::builder().capacity(4096).build().unwrap();
        let items: Vec<Vec<u8>> = (1..=5)
            .map(|i| item_bytes(i, if i == 5 { 10 } else { 1014 }))
            .collect();
        for item in &items[..3] {
            q.try_put(ByteBuf::from(item.clone())).unwrap();
        }
        assert!(q.try_get().unwrap().into_vec() == items[0]);
        q.try_put(ByteBuf::from(items[3].clone())).unwrap();
        q.try_put(ByteBuf::from(items[4].clone())).unwrap();
        for item in &items[1..] {
            assert!(q.try_get().unwrap().into_vec() == *item);
        }
        assert!(q.empty());
    });
}

/// Item `seq` for the long streams: cheap to make and compare (a copy of `fill`, with the
/// number at both ends), so the stream's time goes to the queue.
fn stamped(fill: &[u8], seq: u64) -> Vec<u8> {
    let mut v = fill.to_vec();
    let n = v.len();
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v[n - 8..].copy_from_slice(&seq.to_le_bytes());
    v
}

/// Streams items through a queue, never letting it go empty, until the positions (24-bit,
/// counting 8-byte units) have wrapped; `grown`: first outgrow the first ring, so the stream
/// runs in a linked ring (which a queue never leaves while it holds items).
fn stream_until_positions_wrap(grown: bool) {
    // A 16 KiB first ring is 2048 units; a payload of 4064 bytes (2-byte length + 4062) is
    // 509 units with its header (inline: at most 512), so four fit in a lap and a pad
    // follows them.
    let q = Queue::<ByteBuf>::builder()
        .capacity(16 << 10)
        .build()
        .unwrap();
    let fill = item_bytes(0, 4062);
    let per_put = 509u64;
    let mut put_seq = 0u64;
    let mut get_seq = 0u64;
    // Five records (2545 units) outgrow the first ring: a ring of 4096 units is linked.
    let in_flight = if grown { 5 } else { 3 };
    for _ in 0..in_flight {
        put_seq += 1;
        q.try_put(ByteBuf::from(stamped(&fill, put_seq))).unwrap();
    }
    // 2^24 units, and a little more.
    let rounds = (1u64 << 24) / per_put + 100;
    for _ in 0..rounds {
        get_seq += 1;
        let got = q.try_get().unwrap();
        if got.as_slice() != stamped(&fill, get_seq).as_slice() {
            panic!("item {get_seq} came back changed");
        }
        put_seq += 1;
        q.try_put(ByteBuf::from(stamped(&fill, put_seq))).unwrap();
    }
    assert_eq!(q.qsize(), in_flight);
    while let Ok(got) = q.try_get() {
        get_seq += 1;
        assert!(got.as_slice() == stamped(&fill, get_seq).as_slice());
    }
    assert_eq!(get_seq, put_seq);
}

#[multiproc::test]
fn positions_wrap_at_2_pow_24_units_in_the_first_ring() {
    within("the stream", || stream_until_positions_wrap(false));
}

#[multiproc::test]
fn positions_wrap_at_2_pow_24_units_in_a_grown_ring() {
    within("the stream", || stream_until_positions_wrap(true));
}

// -------------------------------------------------------------------------------------------
// Threads of one process

/// A small seeded generator (xorshift64*), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An item: which producer, its number there, and bytes derived from both.
type Tagged = (u8, u32, ByteBuf);

fn tagged_bytes(producer: u8, n: u32, len: usize) -> Vec<u8> {
    item_bytes((u64::from(producer) << 32) | u64::from(n), len)
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0..=4 => rng.below(64) as usize,
        5..=7 => 64 + rng.below(960) as usize,
        8 => 1005 + rng.below(20) as usize,
        _ => 1025 + rng.below(3 * 4096 - 1025) as usize,
    }
}

fn threads_agree(maxsize: usize, seed: u64) {
    const PRODUCERS: u8 = 3;
    const CONSUMERS: usize = 3;
    const PER_PRODUCER: u32 = 1500;
    let total = PRODUCERS as usize * PER_PRODUCER as usize;
    let q = Queue::<Tagged>::builder()
        .maxsize(maxsize)
        .capacity(4096)
        .build()
        .unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (u64::from(p) + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
                for n in 0..PER_PRODUCER {
                    let len = random_size(&mut rng);
                    let mut item = (p, n, ByteBuf::from(tagged_bytes(p, n, len)));
                    // Every form of put; the ones that may fail go again until they succeed.
                    // Without a limit only a put that must not wait long may fail (it
                    // waits for the lock a little: another thread may be linking a ring).
                    loop {
                        let kind = rng.below(3);
                        let r = match kind {
                            0 => q.put(item),
                            1 => q.try_put(item),
                            _ => q.put_timeout(item, Duration::from_micros(rng.below(500))),
                        };
                        match r {
                            Ok(()) => break,
                            Err(PutError::Full(back)) => {
                                assert!(
                                    maxsize != 0 || kind != 0,
                                    "put() gave Full without a limit"
                                );
                                item = back;
                            }
                            Err(e) => panic!("put failed: {e:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| {
            let q = q.clone();
            let taken = taken.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ (c as u64 + 100).wrapping_mul(0x0F0F_1234_5678_9ABD));
                let mut got = Vec::new();
                while taken.load(Ordering::SeqCst) < total {
                    let r = match rng.below(3) {
                        0 => q.try_get(),
                        1 => q.get_timeout(Duration::from_micros(rng.below(500))),
                        _ => q.get_timeout(Duration::from_millis(20)),
                    };
                    match r {
                        Ok((p, n, bytes)) => {
                            assert!(
                                bytes.as_slice() == tagged_bytes(p, n, bytes.len()).as_slice(),
                                "item {p}/{n} came back changed"
                            );
                            taken.fetch_add(1, Ordering::SeqCst);
                            got.push((p, n));
                        }
                        Err(GetError::Empty) => {}
                        Err(e) => panic!("get failed: {e:?}"),
                    }
                }
                got
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        let got = c.join().unwrap();
        // What one consumer took from one producer, it took in that producer's order.
        for p in 0..PRODUCERS {
            let mine: Vec<u32> = got.iter().filter(|g| g.0 == p).map(|g| g.1).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "a consumer got producer {p}'s items out of order"
            );
        }
        all.extend(got);
    }
    all.sort_unstable();
    let want: Vec<(u8, u32)> = (0..PRODUCERS)
        .flat_map(|p| (0..PER_PRODUCER).map(move |n| (p, n)))
        .collect();
    assert!(all == want, "items lost or repeated (seed {seed:#x})");
    assert!(q.empty());
}

#[multiproc::test]
fn threads_of_one_process_put_and_get_at_once() {
    within("the threads", || {
        for round in 0..u64::from(stress()) {
            for (maxsize, seed) in [(0, 0x5EED_0001), (7, 0x5EED_0002), (1, 0x5EED_0003)] {
                threads_agree(maxsize, seed + (round << 8));
            }
        }
    });
}
