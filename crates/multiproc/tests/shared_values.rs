//! Value, RawValue, Array and RawArray across real processes, under every start method:
//! access from children, exact totals under the lock and with lock-free atomics, ranges,
//! decoding as the wrong type, derived structs, guards, and a holder's death.

use std::time::Duration;

use multiproc::bytemuck::{CheckedBitPattern, NoUninit};
use multiproc::{
    AcquireError, Array, ArrayError, ArrayLockError, Condition, Connection, Context, Event, Lock,
    Process, RLock, RawArray, RawValue, Value, ValueLock, Zeroable, get_context, pipe,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

const LONG: Duration = Duration::from_secs(30);
const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

fn each_method(mut f: impl FnMut(&Context)) {
    for name in METHODS {
        f(&get_context(name).unwrap());
    }
}

fn finish<R: DeserializeOwned>(mut p: Process<R>) -> R {
    p.start().unwrap();
    let m = p.start_method();
    assert!(p.join_timeout(LONG).unwrap(), "{m}: child did not end");
    p.join_result()
        .unwrap_or_else(|e| panic!("{m}: child failed: {e}"))
}

/// Starts `n` children running `target(args)` and waits for them all to succeed.
fn run_all<A: Serialize + DeserializeOwned + Clone>(
    ctx: &Context,
    n: usize,
    target: fn(A),
    args: A,
) {
    let mut ps: Vec<Process<()>> = (0..n).map(|_| ctx.process(target, args.clone())).collect();
    for p in &mut ps {
        p.start().unwrap();
    }
    for mut p in ps {
        let m = p.start_method();
        assert!(p.join_timeout(LONG).unwrap(), "{m}: child did not end");
        p.join_result()
            .unwrap_or_else(|e| panic!("{m}: child failed: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Access from children

type Everything = (Value<i32>, RawValue<f64>, Array<u16>, RawArray<u8>);

fn read_and_write((v, rv, a, ra): Everything) -> (i32, f64, Vec<u16>, Vec<u8>) {
    let seen = (v.get(), rv.get(), a.to_vec().unwrap(), ra.to_vec());
    v.set(-7);
    rv.set(0.5);
    a.write(1, &[10, 11]).unwrap();
    ra.set(2, 99).unwrap();
    seen
}

#[multiproc::test]
fn children_read_what_the_parent_wrote_and_the_parent_reads_what_they_write() {
    each_method(|ctx| {
        let v = Value::new(41).unwrap();
        let rv = RawValue::new(2.25).unwrap();
        let a = Array::from_slice(&[1u16, 2, 3]).unwrap();
        let ra = RawArray::from_slice(&[4u8, 5, 6]).unwrap();
        let seen = finish(ctx.process(
            read_and_write,
            (v.clone(), rv.clone(), a.clone(), ra.clone()),
        ));
        assert_eq!(seen, (41, 2.25, vec![1, 2, 3], vec![4, 5, 6]));
        assert_eq!(v.get(), -7);
        assert_eq!(rv.get(), 0.5);
        assert_eq!(a.to_vec().unwrap(), [1, 10, 11]);
        assert_eq!(ra.to_vec(), [4, 5, 99]);
    });
}

fn add_from_pipe(conn: Connection<Value<u64>>) {
    let mut conn = conn;
    let v = conn.recv_timeout(LONG).unwrap();
    v.fetch_add(5);
    conn.send(&v).unwrap();
}

#[multiproc::test]
fn a_value_travels_inside_pipe_messages_both_ways() {
    each_method(|ctx| {
        let (mut here, there) = pipe::<Value<u64>>(true).unwrap();
        let mut p = ctx.process(add_from_pipe, there);
        p.start().unwrap();
        let v = Value::new(1u64).unwrap();
        here.send(&v).unwrap();
        let back = here.recv_timeout(LONG).unwrap();
        assert!(p.join_timeout(LONG).unwrap());
        assert_eq!(back.get(), 6);
        assert_eq!(v.get(), 6);
        back.set(9);
        assert_eq!(v.get(), 9);
    });
}

// ---------------------------------------------------------------------------------------------
// Exact totals

const CHILDREN: usize = 4;
const INCREMENTS: u32 = 2_000;

fn increment_under_the_lock((v, a): (Value<u32>, Array<u32>)) {
    for i in 0..INCREMENTS {
        match i % 3 {
            // The guard, as `with v.get_lock(): v.value += 1`.
            0 => *v.lock().map_err(|e| e.to_string()).unwrap() += 1,
            // One locked step.
            1 => {
                v.update(|x| x + 1);
            }
            // Python's pattern: the lock, then get and set (which do not wait for it).
            _ => {
                let _held = v.get_lock().acquire().map_err(|e| e.to_string()).unwrap();
                v.set(v.get() + 1);
            }
        }
        let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
        g[1] += 1;
    }
}

#[multiproc::test]
fn n_processes_times_m_increments_under_the_lock_give_exactly_n_times_m() {
    each_method(|ctx| {
        let v = Value::new(0u32).unwrap();
        let a = Array::<u32>::zeroed(3).unwrap();
        run_all(
            ctx,
            CHILDREN,
            increment_under_the_lock,
            (v.clone(), a.clone()),
        );
        assert_eq!(v.get(), CHILDREN as u32 * INCREMENTS);
        assert_eq!(a.to_vec().unwrap(), [0, CHILDREN as u32 * INCREMENTS, 0]);
    });
}

/// Lock-free counters of several kinds.
type Counters = (
    Value<i64>,
    RawValue<u32>,
    Array<u64>,
    Value<f64>,
    RawArray<i16>,
);

fn increment_lock_free((v, rv, a, f, ra): Counters) {
    for i in 0..INCREMENTS {
        v.fetch_add(1);
        rv.fetch_add(2);
        a.fetch_add((i % 2) as usize, 1).unwrap();
        f.fetch_add(0.5);
        ra.fetch_sub(0, 1).unwrap();
    }
}

#[multiproc::test]
fn n_processes_times_m_fetch_adds_without_a_lock_give_exactly_n_times_m() {
    each_method(|ctx| {
        let v = Value::new(0i64).unwrap();
        let rv = RawValue::new(0u32).unwrap();
        let a = Array::<u64>::zeroed(2).unwrap();
        let f = Value::new(0.0f64).unwrap();
        let ra = RawArray::<i16>::zeroed(1).unwrap();
        run_all(
            ctx,
            CHILDREN,
            increment_lock_free,
            (v.clone(), rv.clone(), a.clone(), f.clone(), ra.clone()),
        );
        let n = CHILDREN as u64 * u64::from(INCREMENTS);
        assert_eq!(v.load(), n as i64);
        assert_eq!(rv.load(), 2 * n as u32);
        assert_eq!(a.to_vec().unwrap(), [n / 2, n / 2]);
        assert_eq!(f.load(), n as f64 / 2.0); // halves add exactly
        assert_eq!(ra.load(0).unwrap(), -(n as i16));
    });
}

#[multiproc::test]
fn atomic_operations_do_what_std_atomics_do() {
    let v = Value::new(5u8).unwrap();
    assert_eq!(v.swap(7), 5);
    assert_eq!(v.compare_exchange(7, 8), Ok(7));
    assert_eq!(v.compare_exchange(7, 9), Err(8));
    assert_eq!(v.fetch_sub(9), 8);
    assert_eq!(v.load(), u8::MAX); // wraps
    v.store(1);
    assert_eq!(v.get(), 1);

    let b = RawValue::new(false).unwrap();
    assert_eq!(b.compare_exchange(false, true), Ok(false));
    assert!(b.get());

    let f = RawValue::new(-0.0f32).unwrap();
    assert_eq!(f.compare_exchange(0.0, 1.0), Err(-0.0)); // bitwise
    assert_eq!(f.compare_exchange(-0.0, 1.0), Ok(-0.0));
    assert_eq!(f.fetch_add(0.5), 1.0);
    assert_eq!(f.load(), 1.5);

    let a = RawArray::from_slice(&[usize::MAX, 0]).unwrap();
    assert_eq!(a.fetch_add(0, 1).unwrap(), usize::MAX);
    assert_eq!(a.to_vec(), [0, 0]);
    assert!(matches!(
        a.fetch_add(2, 1),
        Err(ArrayError::IndexOutOfRange { index: 2, len: 2 })
    ));
}

// ---------------------------------------------------------------------------------------------
// Ranges

fn ranges_in_child((a, ra): (Array<i32>, RawArray<i32>)) -> Vec<String> {
    let mut seen = Vec::new();
    seen.push(format!("{:?}", a.read(2..5).unwrap()));
    seen.push(format!("{:?}", a.read(..=1).unwrap()));
    seen.push(format!("{:?}", a.read(8..).unwrap()));
    seen.push(format!("{:?}", a.read(4..4).unwrap()));
    seen.push(format!("{}", a.read(9..11).unwrap_err()));
    #[allow(clippy::reversed_empty_ranges)]
    seen.push(format!("{}", a.read(5..3).unwrap_err()));
    seen.push(format!("{}", a.write(9, &[1, 2]).unwrap_err()));
    seen.push(format!("{}", a.get(10).unwrap_err()));
    a.write(0, &[-1, -2]).unwrap();
    let mut buf = [0; 3];
    ra.read_into(7, &mut buf).unwrap();
    seen.push(format!("{buf:?}"));
    ra.write(7, &[70, 80, 90]).unwrap();
    seen.push(format!("{}", ra.read_into(8, &mut buf).unwrap_err()));
    seen
}

#[multiproc::test]
fn array_ranges_read_and_write_in_children_and_errors_name_the_bounds() {
    each_method(|ctx| {
        let values: Vec<i32> = (0..10).collect();
        let a = Array::from_slice(&values).unwrap();
        let ra = RawArray::from_slice(&values).unwrap();
        let seen = finish(ctx.process(ranges_in_child, (a.clone(), ra.clone())));
        assert_eq!(
            seen,
            [
                "[2, 3, 4]",
                "[0, 1]",
                "[8, 9]",
                "[]",
                "range 9..11 is outside the array of 10 items",
                "range 5..3 is outside the array of 10 items",
                "range 9..11 is outside the array of 10 items",
                "invalid index 10 (the array has 10 items)",
                "[7, 8, 9]",
                "range 8..11 is outside the array of 10 items",
            ]
        );
        assert_eq!(a.read(..3).unwrap(), [-1, -2, 2]);
        assert_eq!(ra.read(6..).unwrap(), [6, 70, 80, 90]);
        assert_eq!(a.fill(3), Ok(()));
        assert_eq!(a.to_vec().unwrap(), [3; 10]);
    });
}

fn empty_in_child((a, ra): (Array<f64>, RawArray<u8>)) -> (usize, bool, Vec<f64>, Vec<u8>) {
    (a.len(), ra.is_empty(), a.to_vec().unwrap(), ra.to_vec())
}

#[multiproc::test]
fn empty_arrays_travel_and_read_as_empty() {
    each_method(|ctx| {
        let a = Array::<f64>::zeroed(0).unwrap();
        let ra = RawArray::<u8>::from_slice(&[]).unwrap();
        assert_eq!(
            finish(ctx.process(empty_in_child, (a.clone(), ra))),
            (0, true, vec![], vec![])
        );
        assert!(a.lock().map_err(|e| e.to_string()).unwrap().is_empty());
        assert!(a.get(0).is_err());
    });
}

fn fill_big(a: Array<f64>) -> f64 {
    let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
    for (i, x) in g.iter_mut().enumerate() {
        *x = i as f64;
    }
    g.iter().sum()
}

#[multiproc::test]
fn a_million_elements_filled_through_a_childs_guard() {
    each_method(|ctx| {
        let a = Array::<f64>::zeroed(1_000_000).unwrap();
        let sum = finish(ctx.process(fill_big, a.clone()));
        assert_eq!(sum, 999_999.0 * 1_000_000.0 / 2.0);
        assert_eq!(a.get(123_456).unwrap(), 123_456.0);
        let v = a.read(999_998..).unwrap();
        assert_eq!(v, [999_998.0, 999_999.0]);
    });
}

// ---------------------------------------------------------------------------------------------
// Decoding as the wrong type

fn send_various(conn: Connection<()>) {
    let mut conn = conn;
    conn.send_as(&Value::new(7u32).unwrap()).unwrap();
    conn.send_as(&Value::new(7u32).unwrap()).unwrap();
    conn.send_as(&Value::new(7u32).unwrap()).unwrap();
    conn.send_as(&Array::from_slice(&[1u32, 2]).unwrap())
        .unwrap();
    conn.send_as(&Array::from_slice(&[1u32, 2]).unwrap())
        .unwrap();
    conn.send_as(&RawValue::new(7u32).unwrap()).unwrap();
    conn.send_as(&Value::new(7u32).unwrap()).unwrap();
    // Wait until the parent has read everything (the values must outlive their transit).
    let _ = conn.recv_as::<()>();
}

fn wrong<T: DeserializeOwned + std::fmt::Debug>(conn: &mut Connection<()>) -> String {
    match conn.recv_as::<T>() {
        Ok(v) => panic!("decoded as the wrong type: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[multiproc::test]
fn decoding_as_the_wrong_type_is_an_error() {
    each_method(|ctx| {
        let (mut here, there) = pipe::<()>(true).unwrap();
        let mut p = ctx.process(send_various, there);
        p.start().unwrap();
        let errors = [
            wrong::<Value<f32>>(&mut here),    // same size, other type
            wrong::<Value<i64>>(&mut here),    // other size
            wrong::<Array<u32>>(&mut here),    // a Value is not an Array
            wrong::<Array<i32>>(&mut here),    // other element type
            wrong::<RawArray<u32>>(&mut here), // an Array is not a RawArray
            wrong::<Value<u32>>(&mut here),    // a RawValue is not a Value
        ];
        // (The codec keeps only that decoding failed, not the header check's words.)
        for e in &errors {
            assert!(e.contains("cannot decode"), "{e}");
        }
        // The right type still decodes.
        assert_eq!(here.recv_as::<Value<u32>>().unwrap().get(), 7);
        here.send(&()).unwrap();
        assert!(p.join_timeout(LONG).unwrap());
    });
}

// ---------------------------------------------------------------------------------------------
// Types through derives

#[derive(Clone, Copy, Debug, PartialEq, multiproc::Pod, multiproc::Zeroable)]
#[bytemuck(crate = "multiproc::bytemuck")]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    mass: f32,
    id: u64,
}

#[derive(
    Clone, Copy, Debug, PartialEq, NoUninit, CheckedBitPattern, Zeroable, Serialize, Deserialize,
)]
#[bytemuck(crate = "multiproc::bytemuck")]
#[repr(u8)]
enum Phase {
    Idle = 0,
    Running = 1,
    Done = 2,
}

fn move_particles((ps, p, phase): (Array<Particle>, Value<Particle>, Value<Phase>)) -> Phase {
    let seen = phase.get();
    {
        let mut g = ps.lock().map_err(|e| e.to_string()).unwrap();
        for q in g.iter_mut() {
            q.pos[0] += 1.0;
        }
    }
    let mut g = p.lock().map_err(|e| e.to_string()).unwrap();
    g.mass *= 2.0;
    drop(g);
    phase.set(Phase::Done);
    seen
}

#[multiproc::test]
fn derived_structs_and_enums_live_in_values_and_arrays() {
    each_method(|ctx| {
        let particle = Particle {
            pos: [1.0, 2.0, 3.0],
            mass: 1.5,
            id: 42,
        };
        let ps = Array::from_slice(&[particle; 3]).unwrap();
        let p = Value::new(particle).unwrap();
        let phase = Value::new(Phase::Idle).unwrap();
        phase.set(Phase::Running);
        let seen = finish(ctx.process(move_particles, (ps.clone(), p.clone(), phase.clone())));
        assert_eq!(seen, Phase::Running);
        assert_eq!(phase.get(), Phase::Done);
        assert_eq!(p.get().mass, 3.0);
        assert_eq!(p.get().id, 42);
        for q in ps.to_vec().unwrap() {
            assert_eq!(q.pos, [2.0, 2.0, 3.0]);
        }
    });
}

#[multiproc::test]
fn bools_chars_and_fixed_arrays_are_elements() {
    let flags = Array::from_slice(&[true, false, true]).unwrap();
    assert_eq!(flags.to_vec().unwrap(), [true, false, true]);
    assert!(flags.swap(0, false).unwrap());
    assert_eq!(flags.get(0), Ok(false));
    let letters = RawArray::from_slice(&['a', 'ß', '€']).unwrap();
    assert_eq!(letters.read(1..).unwrap(), ['ß', '€']);
    let block = Value::new([[1u8; 3]; 5]).unwrap();
    assert_eq!(block.get()[4], [1, 1, 1]);
    let odd = RawValue::new([7u8; 3]).unwrap(); // 3 bytes: copied a byte at a time
    assert_eq!(odd.get(), [7; 3]);
    let wide = RawValue::new(u128::MAX - 1).unwrap(); // two 8-byte chunks
    assert_eq!(wide.get(), u128::MAX - 1);
    let unit = Array::from_slice(&[(), ()]).unwrap(); // no bytes at all
    assert_eq!(unit.to_vec().unwrap(), [(), ()]);
}

// ---------------------------------------------------------------------------------------------
// Locks and guards

#[multiproc::test]
fn a_shared_plain_lock_guards_several_objects_without_waiting_for_itself() {
    let lock = Lock::new().unwrap();
    let x = Value::with_lock(1i32, lock.clone()).unwrap();
    let a = Array::from_slice_with_lock(&[0i32; 2], lock.clone()).unwrap();
    assert!(matches!(x.get_lock(), ValueLock::Lock(_)));
    let held = lock.acquire().map_err(|e| e.to_string()).unwrap();
    // The holder's own calls go through (CPython's would wait forever on a plain Lock).
    x.set(x.get() + 1);
    a.set(0, x.get()).unwrap();
    *x.lock().map_err(|e| e.to_string()).unwrap() += 1;
    // A guard on the array cannot share a plain lock held outside it.
    assert!(matches!(a.lock(), Err(ArrayLockError::HeldByCaller)));
    drop(held);
    assert_eq!((x.get(), a.to_vec().unwrap()), (3, vec![2, 0]));
    // Free again: the guard works, and the value's calls wait for it in other threads.
    let g = a.lock().map_err(|e| e.to_string()).unwrap();
    let other = std::thread::spawn({
        let x = x.clone();
        move || x.get_lock().try_acquire().is_err()
    });
    assert!(
        other.join().unwrap(),
        "another thread took the lock a guard holds"
    );
    drop(g);
}

#[multiproc::test]
fn an_arrays_own_calls_refuse_while_the_callers_guard_lives() {
    let a = Array::from_slice(&[1u64, 2, 3]).unwrap();
    {
        let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
        g[0] = 10;
        assert_eq!(a.get(0), Err(ArrayError::GuardHeld));
        assert_eq!(a.set(0, 5), Err(ArrayError::GuardHeld));
        assert_eq!(a.to_vec(), Err(ArrayError::GuardHeld));
        assert_eq!(a.fill(0), Err(ArrayError::GuardHeld));
        assert_eq!(a.fetch_add(1, 1), Err(ArrayError::GuardHeld));
        assert!(matches!(a.lock(), Err(ArrayLockError::HeldByCaller)));
        assert!(matches!(
            a.clone().try_lock(),
            Err(ArrayLockError::HeldByCaller)
        ));
        assert_eq!(&*g, &[10, 2, 3]);
        // The raw lock may be taken again (an RLock) and gives no access by itself.
        let _level = a
            .get_lock()
            .try_acquire()
            .map_err(|e| e.to_string())
            .unwrap();
    }
    assert_eq!(a.to_vec().unwrap(), [10, 2, 3]);
    // Holding the RLock outside a guard is fine for the array's calls and for a guard.
    let _held = a.get_lock().acquire().map_err(|e| e.to_string()).unwrap();
    assert_eq!(a.get(1), Ok(2));
    let g = a.lock().map_err(|e| e.to_string()).unwrap();
    assert_eq!(g.len(), 3);
}

#[multiproc::test]
fn a_values_guard_works_on_a_copy_written_back_once() {
    let v = Value::new(1i32).unwrap();
    let mut g = v.lock().map_err(|e| e.to_string()).unwrap();
    *g = 5;
    // Lock-free operations never touch the guard's copy; the guard's write-back comes last.
    assert_eq!(v.load(), 1);
    v.fetch_add(100);
    assert_eq!(*g, 5);
    drop(g);
    assert_eq!(v.get(), 5);
    // A guard that changes nothing writes nothing back.
    let g = v.lock().map_err(|e| e.to_string()).unwrap();
    v.fetch_add(1);
    drop(g);
    assert_eq!(v.get(), 6);
    // Nested guards of an RLock in one thread are each a step.
    let mut a = v.lock().map_err(|e| e.to_string()).unwrap();
    {
        let mut b = v.try_lock().map_err(|e| e.to_string()).unwrap();
        *b += 1;
    }
    assert_eq!(v.get(), 7);
    *a = 0;
    drop(a);
    assert_eq!(v.get(), 0);
}

fn hold_guard_until_told((a, held, go): (Array<u32>, Event, Event)) {
    let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
    held.set();
    assert!(go.wait_timeout(LONG));
    g[0] = 10;
}

#[multiproc::test]
fn an_atomic_operation_waits_for_another_processs_guard() {
    each_method(|ctx| {
        let a = Array::<u32>::zeroed(1).unwrap();
        let (held, go) = (Event::new().unwrap(), Event::new().unwrap());
        let mut p = ctx.process(hold_guard_until_told, (a.clone(), held.clone(), go.clone()));
        p.start().unwrap();
        assert!(held.wait_timeout(LONG));
        let adder = std::thread::spawn({
            let a = a.clone();
            move || a.fetch_add(0, 1).unwrap()
        });
        // Give the adder time to reach the array while the guard lives (the result is the
        // same if it is late).
        std::thread::sleep(Duration::from_millis(50));
        go.set();
        assert_eq!(adder.join().unwrap(), 10, "the add ran inside the guard");
        assert!(p.join_timeout(LONG).unwrap());
        assert_eq!(a.get(0).unwrap(), 11);
    });
}

fn die_holding((v, a, held): (Value<i32>, Array<i32>, Event)) {
    let mut g = v.lock().map_err(|e| e.to_string()).unwrap();
    *g = 99; // never written back: the process dies first
    let mut ag = a.lock().map_err(|e| e.to_string()).unwrap();
    ag[0] = 99; // in place: lands at once
    held.set();
    std::thread::sleep(LONG);
}

#[multiproc::test]
fn a_holder_killed_with_its_guards_is_reported_and_the_objects_work_after() {
    each_method(|ctx| {
        let v = Value::new(1).unwrap();
        let a = Array::from_slice(&[1, 2]).unwrap();
        let held = Event::new().unwrap();
        let mut p = ctx.process(die_holding, (v.clone(), a.clone(), held.clone()));
        p.start().unwrap();
        assert!(held.wait_timeout(LONG));
        p.kill().unwrap();
        assert!(p.join_timeout(LONG).unwrap());

        match v.lock() {
            Err(AcquireError::OwnerDied(g)) => assert_eq!(*g, 1),
            Ok(_) => panic!("the value's lock did not report its holder's death"),
            Err(AcquireError::Timeout) => panic!("timed out"),
        }
        assert_eq!(v.get(), 1);
        // The dead holder's guard word does not stop the array's atomics or calls.
        assert_eq!(a.fetch_add(1, 1).unwrap(), 2);
        assert_eq!(a.to_vec().unwrap(), [99, 3]);
        let g = a.lock().map_err(|e| e.to_string()).unwrap();
        assert_eq!(&*g, &[99, 3]);
    });
}

#[multiproc::test]
fn an_array_guard_reports_its_dead_predecessor() {
    each_method(|ctx| {
        let v = Value::new(0).unwrap();
        let a = Array::from_slice(&[5]).unwrap();
        let held = Event::new().unwrap();
        let mut p = ctx.process(die_holding, (v, a.clone(), held.clone()));
        p.start().unwrap();
        assert!(held.wait_timeout(LONG));
        p.kill().unwrap();
        assert!(p.join_timeout(LONG).unwrap());
        match a.lock() {
            Err(ArrayLockError::OwnerDied(g)) => assert_eq!(&*g, &[99]),
            Ok(_) => panic!("the array's lock did not report its holder's death"),
            Err(e) => panic!("{e}"),
        }
        assert_eq!(a.get(0).unwrap(), 99);
    });
}

fn wait_for_ready((v, cond): (Value<u32>, Condition)) -> u32 {
    let _held = cond.acquire().map_err(|e| e.to_string()).unwrap();
    assert!(cond.wait_for(|| v.get() == 3, Some(LONG)).unwrap());
    v.get()
}

#[multiproc::test]
fn a_condition_shares_a_values_lock() {
    each_method(|ctx| {
        let v = Value::with_lock(0u32, RLock::new().unwrap()).unwrap();
        let cond = Condition::with_lock(v.get_lock().clone()).unwrap();
        let mut p = ctx.process(wait_for_ready, (v.clone(), cond.clone()));
        p.start().unwrap();
        for _ in 0..3 {
            let _held = cond.acquire().map_err(|e| e.to_string()).unwrap();
            v.set(v.get() + 1); // under the condition's lock, which is the value's
            cond.notify_all().unwrap();
        }
        assert!(p.join_timeout(LONG).unwrap());
        assert_eq!(p.join_result().unwrap(), 3);
    });
}

/// Runs `f` in a thread and tells whether it is still running after a while.
fn still_running_after_a_while<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> (std::thread::JoinHandle<R>, bool) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = f();
        let _ = tx.send(());
        r
    });
    let running = rx.recv_timeout(Duration::from_millis(200)).is_err();
    (t, running)
}

#[multiproc::test]
fn a_guard_stays_exclusive_when_its_plain_lock_is_released_from_under_it() {
    let lock = Lock::new().unwrap();
    let a = Array::from_slice_with_lock(&[0u32, 0], lock.clone()).unwrap();
    let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
    lock.release().unwrap();
    // The caller's own calls still refuse; a second guard too.
    assert_eq!(a.set(0, 42), Err(ArrayError::GuardHeld));
    assert_eq!(a.get(0), Err(ArrayError::GuardHeld));
    assert_eq!(a.fetch_add(0, 1), Err(ArrayError::GuardHeld));
    assert!(matches!(a.try_lock(), Err(ArrayLockError::HeldByCaller)));
    // Another thread's calls wait for the guard, though the lock is free.
    let (setter, running) = still_running_after_a_while({
        let a = a.clone();
        move || a.set(0, 42)
    });
    let (adder, adder_running) = still_running_after_a_while({
        let a = a.clone();
        move || a.fetch_add(1, 5)
    });
    assert!(running, "another thread wrote under a live guard");
    assert!(adder_running, "an atomic operation ran under a live guard");
    assert_eq!(g[0], 0);
    g[0] = 7;
    g[1] = 1;
    drop(g);
    assert_eq!(setter.join().unwrap(), Ok(()));
    assert_eq!(adder.join().unwrap(), Ok(1));
    assert_eq!(a.to_vec().unwrap(), [42, 6]);
}

#[multiproc::test]
fn a_guard_stays_exclusive_when_its_rlock_level_is_released_from_under_it() {
    let a = Array::from_slice(&[0u32]).unwrap();
    let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
    let ValueLock::RLock(l) = a.get_lock() else {
        panic!("the default lock is an RLock")
    };
    l.release().unwrap();
    assert_eq!(l.owner(), None);
    let (setter, running) = still_running_after_a_while({
        let a = a.clone();
        move || a.set(0, 42)
    });
    let (locker, locker_running) = still_running_after_a_while({
        let a = a.clone();
        move || {
            a.lock_timeout(Duration::from_millis(100))
                .map(|g| g[0])
                .map_err(|e| e.to_string())
        }
    });
    assert!(running, "another thread wrote under a live guard");
    assert!(!locker_running);
    assert_eq!(locker.join().unwrap(), Err("timed out".to_owned()));
    assert_eq!(g[0], 0);
    g[0] = 1;
    drop(g);
    assert_eq!(setter.join().unwrap(), Ok(()));
    assert_eq!(a.get(0).unwrap(), 42);
}

#[multiproc::test]
fn atomic_operations_never_overlap_another_threads_guard() {
    const GUARDS: u64 = 2_000;
    let a = Array::<u64>::zeroed(1).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let adders: Vec<_> = (0..2)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    a.fetch_add(0, 1).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    for _ in 0..GUARDS {
        let mut g = a.lock().map_err(|e| e.to_string()).unwrap();
        let before = g[0];
        for _ in 0..50 {
            std::hint::spin_loop();
        }
        // Read again (through an opaque reference, so the load is made).
        let again = *std::hint::black_box(&g[0]);
        assert_eq!(before, again, "an atomic add ran under the guard");
        g[0] += 1_000_000;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let adds: u64 = adders.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(a.get(0).unwrap(), adds + GUARDS * 1_000_000);
}

#[multiproc::test]
fn shared_memory_reads_and_writes_at_any_offset_while_other_threads_do() {
    let shm = multiproc::SharedMemory::create(4096 + 13).unwrap();
    // Every offset and length around word boundaries, the last bytes of the object included.
    for (offset, len) in [(0, 1), (1, 6), (3, 5), (5, 11), (7, 30), (8, 8), (4090, 19)] {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a)
            .collect();
        shm.write(offset, &data).unwrap();
        let mut back = vec![0u8; len];
        shm.read(offset, &mut back).unwrap();
        assert_eq!(back, data, "at {offset}, {len} bytes");
    }
    assert!(shm.write(4096 + 10, &[0; 4]).is_err());
    // Writers of neighbouring bytes that share 8-byte words never undo each other.
    let writers: Vec<_> = (0..8u8)
        .map(|k| {
            let shm = shm.clone();
            std::thread::spawn(move || {
                for round in 0..2_000u32 {
                    let v = [k.wrapping_add(round as u8); 3];
                    shm.write(100 + 3 * usize::from(k), &v).unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let shm = shm.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 24];
            for _ in 0..2_000 {
                shm.read(100, &mut buf).unwrap();
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    let mut last = [0u8; 24];
    shm.read(100, &mut last).unwrap();
    for k in 0..8u8 {
        let want = k.wrapping_add(1_999u32 as u8);
        assert_eq!(&last[3 * usize::from(k)..][..3], &[want; 3], "writer {k}");
    }
}
