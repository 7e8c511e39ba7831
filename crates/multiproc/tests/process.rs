//! Process lifecycle tests, ported from the language-neutral process tests of CPython's
//! `Lib/test/_test_multiprocessing.py` (`_TestProcess` and the process parts of its
//! neighbours): arguments and results, exit codes, terminate and kill, the sentinel, close,
//! many processes, recursion, the process tree, `active_children`, daemons.
//!
//! Every test runs under the three start methods in turn, and every assertion message names
//! the method. A child that must still be running while the test acts sleeps for a long time
//! and is ended by the test; every wait is bounded, so a bug fails a test instead of hanging
//! it. Nothing sleeps to synchronise.
//!
//! The tests carry `#[multiproc::test]`: `spawn` and `forkserver` run this binary again to
//! make a child, and the attribute makes the test function the start-up hook.

use std::any::type_name;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::{Duration, Instant};

use multiproc::{
    ChildError, Context, Process, ProcessError, active_children, current_process, get_context,
    parent_process,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bound on every wait that is expected to succeed: generous for a loaded machine, finite so
/// a bug fails rather than hangs.
const LONG: Duration = Duration::from_secs(20);

/// How long a child that must still be running sleeps. Longer than [`LONG`], so a wait that
/// succeeds proves the test ended the child; the test always ends it first.
const FOREVER_MS: u64 = 30_000;

/// Bound on a call that must return at once (a zero-timeout join).
const AT_ONCE: Duration = Duration::from_secs(2);

const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

// -------------------------------------------------------------------------------------------
// Helpers

/// Runs `f` once per start method.
fn each_method(mut f: impl FnMut(&Context)) {
    for name in METHODS {
        let ctx = get_context(name).unwrap_or_else(|e| panic!("get_context({name:?}): {e}"));
        assert_eq!(ctx.start_method().name(), name);
        f(&ctx);
    }
}

/// Starts `p`, failing the test with the method's name if it cannot.
fn start<R: DeserializeOwned>(mut p: Process<R>) -> Process<R> {
    let m = p.start_method();
    p.start()
        .unwrap_or_else(|e| panic!("{m}: start of {} failed: {e}", p.get_name()));
    p
}

/// Waits for `p` to end, at most [`LONG`].
fn join<R: DeserializeOwned>(p: &Process<R>) {
    let m = p.start_method();
    let ended = p
        .join_timeout(LONG)
        .unwrap_or_else(|e| panic!("{m}: join failed: {e}"));
    assert!(ended, "{m}: {} did not end within {LONG:?}", p.get_name());
}

/// Waits for `p` to end, at most [`LONG`], and takes its value.
fn result<R: DeserializeOwned>(p: &mut Process<R>) -> R {
    join(p);
    let (m, name) = (p.start_method(), p.get_name().to_owned());
    p.join_result()
        .unwrap_or_else(|e| panic!("{m}: {name} gave no value: {e}"))
}

/// A started child that is killed when the guard goes, so that a failing test does not leave
/// a long sleeper behind (the exit-time rule would join it).
struct Running<R: DeserializeOwned = ()>(Process<R>);

impl<R: DeserializeOwned> Drop for Running<R> {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

impl<R: DeserializeOwned> Deref for Running<R> {
    type Target = Process<R>;
    fn deref(&self) -> &Process<R> {
        &self.0
    }
}

impl<R: DeserializeOwned> DerefMut for Running<R> {
    fn deref_mut(&mut self) -> &mut Process<R> {
        &mut self.0
    }
}

/// A started child that sleeps [`FOREVER_MS`] (the test must end it).
fn sleeper(ctx: &Context) -> Running {
    Running(start(ctx.process(nap, FOREVER_MS)))
}

fn pid_of<R: DeserializeOwned>(p: &Process<R>) -> u32 {
    p.pid().unwrap().expect("a started process has a pid")
}

/// Whether a process with this pid exists (a zombie counts).
fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn active_pids() -> HashSet<u32> {
    active_children().iter().map(|c| c.pid()).collect()
}

// -------------------------------------------------------------------------------------------
// Targets (what the children run). None of them prints: a fork child of this multi-threaded
// test binary must not take the standard-output lock another thread may have held.

fn echo<T>(value: T) -> T {
    value
}

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn nothing(_: ()) {}

fn my_pid(_: ()) -> u32 {
    std::process::id()
}

/// The line of the `panic!` in [`boom`] (keep the two together).
const BOOM_LINE: u32 = line!() + 3;
fn boom(message: String) {
    // The next line is BOOM_LINE.
    panic!("{message}");
}

fn abort(_: ()) {
    std::process::abort()
}

/// Dies of SIGSEGV, as CPython's `faulthandler._sigsegv` does: the default action is
/// restored first, since the Rust runtime handles SIGSEGV to report stack overflows.
#[allow(unsafe_code)]
fn segfault(_: ()) {
    // SAFETY:
    // - `signal` with `SIG_DFL` installs no handler, so there is no handler code to be
    //   async-signal-safe;
    // - `raise` only sends a signal to this thread; its default action ends the process.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV did not end the process");
}

/// What a process knows about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Who {
    name: String,
    pid: u32,
    identity: Vec<u32>,
    daemon: bool,
    authkey: Vec<u8>,
    /// `parent_process()`: its name, pid, and whether it is alive.
    parent: Option<(String, u32, bool)>,
}

fn who() -> Who {
    let me = current_process();
    Who {
        name: me.name().to_owned(),
        pid: me.pid(),
        identity: me.identity().to_vec(),
        daemon: me.daemon(),
        authkey: me.authkey().to_vec(),
        parent: parent_process().map(|p| (p.name().to_owned(), p.pid(), p.is_alive())),
    }
}

fn whoami(_: ()) -> Who {
    who()
}

/// CPython's `_test_recursion`: report, then start two children one after the other (with the
/// same start method) down to `depth` 0; the reports come back in tree order.
fn tree((method, depth): (String, u32)) -> Vec<Who> {
    let mut reports = vec![who()];
    if depth > 0 {
        let ctx = get_context(&method).unwrap();
        for _ in 0..2 {
            let mut child = start(ctx.process(tree, (method.clone(), depth - 1)));
            reports.extend(result(&mut child));
        }
    }
    reports
}

/// The daemon flag a new process gets by default here, and the one its child reports.
fn default_daemon_of_my_child(method: String) -> (bool, bool) {
    let ctx = get_context(&method).unwrap();
    let p = ctx.process(whoami, ());
    let default = p.is_daemon();
    let mut p = start(p);
    (default, result(&mut p).daemon)
}

/// Starts a child running `nap(ms)` with the daemon flag given and returns its pid without
/// joining it: ending this process must deal with it (join it, or terminate it first if it
/// is a daemon).
fn leave_a_child((method, daemon, ms): (String, bool, u64)) -> u32 {
    let ctx = get_context(&method).unwrap();
    let p = start(ctx.process(nap, ms).daemon(daemon));
    pid_of(&p)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { radius: f64 },
    Square(u32),
    Dot,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    shape: Shape,
    note: Option<String>,
    prices: BTreeMap<String, f32>,
    next: Option<Box<Order>>,
}

fn order() -> Order {
    Order {
        id: u64::MAX - 1,
        customer: "Zoë Ünal ✓".to_owned(),
        lines: vec![("spam".to_owned(), 3), ("eggs".to_owned(), 0)],
        shape: Shape::Circle { radius: 2.5 },
        note: None,
        prices: [("spam".to_owned(), 1.25), ("eggs".to_owned(), -0.5)]
            .into_iter()
            .collect(),
        next: Some(Box::new(Order {
            id: 0,
            customer: String::new(),
            lines: Vec::new(),
            shape: Shape::Square(7),
            note: Some("second".to_owned()),
            prices: BTreeMap::new(),
            next: None,
        })),
    }
}

/// Uses every part of its argument, so the test sees the child really got them.
fn describe((n, s, pair, v, o): (i64, String, (u8, char), Vec<u32>, Option<bool>)) -> String {
    format!(
        "{n}|{s}|{}{}|{}|{o:?}",
        pair.0,
        pair.1,
        v.iter().sum::<u32>()
    )
}

fn total_weight(order: Order) -> f32 {
    order.prices.values().sum::<f32>() + order.lines.iter().map(|l| l.1 as f32).sum::<f32>()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn checksum(data: Vec<u8>) -> (usize, u64) {
    let sum = data
        .iter()
        .enumerate()
        .map(|(i, &b)| (i as u64 % 1000 + 1) * u64::from(b))
        .sum();
    (data.len(), sum)
}

// -------------------------------------------------------------------------------------------
// The main process

#[multiproc::test]
fn current_process_in_main() {
    let me = current_process();
    assert_eq!(me.name(), "MainProcess");
    assert_eq!(me.pid(), std::process::id());
    assert!(!me.daemon());
    assert!(me.identity().is_empty());
    assert_eq!(me.authkey().len(), 32);
    assert!(
        me.authkey().iter().any(|&b| b != 0),
        "the authkey is random, not zeros"
    );
    assert!(parent_process().is_none());
    // Asking twice gives the same process.
    assert_eq!(current_process(), me);
}

// -------------------------------------------------------------------------------------------
// Arguments and results

fn roundtrip<T>(ctx: &Context, value: T)
where
    T: Serialize + DeserializeOwned + Clone + PartialEq + Debug,
{
    let m = ctx.start_method();
    let mut p = start(ctx.process(echo::<T>, value.clone()));
    assert_eq!(
        result(&mut p),
        value,
        "{m}: a {} came back changed",
        type_name::<T>()
    );
    assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
}

#[multiproc::test]
fn arguments_reach_the_child_and_results_come_back() {
    each_method(|ctx| {
        let m = ctx.start_method();
        roundtrip(ctx, 1i32);
        roundtrip(ctx, -7i64);
        roundtrip(ctx, u64::MAX);
        roundtrip(ctx, i128::MIN);
        roundtrip(ctx, std::f64::consts::PI);
        roundtrip(ctx, true);
        roundtrip(ctx, 'é');
        roundtrip(ctx, "str".to_owned());
        roundtrip(ctx, String::new());
        roundtrip(ctx, "héllo, wörld ✓ \0 end".to_owned());
        roundtrip(ctx, (1u8, "two".to_owned(), 3.5f32, [4i16, 5, 6]));
        roundtrip(ctx, (1,));
        roundtrip(ctx, vec![1u32]);
        roundtrip(ctx, (0..1000u32).collect::<Vec<_>>());
        roundtrip(
            ctx,
            vec![
                vec!["a".to_owned()],
                vec![],
                vec!["b".to_owned(), "c".to_owned()],
            ],
        );
        roundtrip(ctx, Some(42u16));
        roundtrip(ctx, None::<String>);
        roundtrip(ctx, Some(Some(())));
        roundtrip(ctx, order());
        roundtrip(
            ctx,
            vec![Shape::Dot, Shape::Square(1), Shape::Circle { radius: -0.0 }],
        );

        let args = (
            -3i64,
            "x".to_owned(),
            (9u8, 'ß'),
            vec![1u32, 2, 3],
            Some(false),
        );
        let mut p = start(ctx.process(describe, args));
        assert_eq!(result(&mut p), "-3|x|9ß|6|Some(false)", "{m}");

        let mut p = start(ctx.process(total_weight, order()));
        assert_eq!(result(&mut p), 3.75, "{m}");
    });
}

/// A 10 MB result (it travels outside the channel's frames) and a 1 MB argument (larger
/// than a socket buffer). Sizes are kept there because the serde codec is slow in the
/// unoptimised test build (about a second per 10 MB each way).
#[multiproc::test]
fn large_result_and_large_argument() {
    const RESULT_LEN: usize = 10 * 1024 * 1024;
    const ARG_LEN: usize = 1024 * 1024;
    let argument = pattern(ARG_LEN);
    let expected_checksum = checksum(argument.clone());
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut big = start(ctx.process(pattern, RESULT_LEN));
        let mut sum = start(ctx.process(checksum, argument.clone()));
        assert_eq!(
            result(&mut sum),
            expected_checksum,
            "{m}: the 1 MB argument reached the child changed"
        );
        let value = result(&mut big);
        assert_eq!(value.len(), RESULT_LEN, "{m}: length of the 10 MB result");
        let first_wrong = value
            .iter()
            .enumerate()
            .position(|(i, &b)| b != (i % 251) as u8);
        assert_eq!(first_wrong, None, "{m}: the 10 MB result came back changed");
        assert_eq!(big.exitcode().unwrap(), Some(0), "{m}");
    });
}

#[multiproc::test]
fn unit_result() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(nothing, ()));
        join(&p);
        assert!(matches!(p.join_result(), Ok(())), "{m}");
        assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
    });
}

#[multiproc::test]
fn join_result_twice() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(echo::<u8>, 5));
        assert_eq!(result(&mut p), 5, "{m}");
        let again = p.join_result().unwrap_err();
        assert!(matches!(again, ProcessError::ResultTaken), "{m}: {again:?}");
        assert_eq!(
            again.to_string(),
            "the result of this process was already taken",
            "{m}"
        );
        // join itself still works.
        p.join().unwrap();
        assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");

        // The same after a child that gave no value.
        let mut p = sleeper(ctx);
        p.kill().unwrap();
        join(&p);
        let first = p.join_result().unwrap_err();
        assert!(
            matches!(first, ProcessError::Child(ChildError::Killed { signal: 9 })),
            "{m}: {first:?}"
        );
        let again = p.join_result().unwrap_err();
        assert!(matches!(again, ProcessError::ResultTaken), "{m}: {again:?}");
    });
}

// -------------------------------------------------------------------------------------------
// Exit codes

#[multiproc::test]
fn exitcode_zero_on_return() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = ctx.process(nothing, ());
        assert_eq!(p.exitcode().unwrap(), None, "{m}: exitcode before start");
        p = start(p);
        join(&p);
        assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
        assert!(!p.is_alive().unwrap(), "{m}");
    });
}

#[multiproc::test]
fn panic_gives_exitcode_1_with_message_and_location() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(boom, "out of cheese".to_owned()));
        join(&p);
        assert_eq!(p.exitcode().unwrap(), Some(1), "{m}");
        let err = p.join_result().unwrap_err();
        let expected_location = format!("{}:{BOOM_LINE}:5", file!());
        match &err {
            ProcessError::Child(ChildError::Panicked { message, location }) => {
                assert_eq!(message, "out of cheese", "{m}");
                assert_eq!(location.as_deref(), Some(expected_location.as_str()), "{m}");
            }
            other => panic!("{m}: expected a panic, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!("the process panicked at {expected_location}: out of cheese"),
            "{m}"
        );
    });
}

#[multiproc::test]
fn abort_and_segfault_give_minus_the_signal() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut aborted = start(ctx.process(abort, ()));
        let mut segfaulted = start(ctx.process(segfault, ()));
        for (p, signal) in [
            (&mut aborted, libc::SIGABRT),
            (&mut segfaulted, libc::SIGSEGV),
        ] {
            join(p);
            assert_eq!(
                p.exitcode().unwrap(),
                Some(-signal),
                "{m}: {}",
                p.get_name()
            );
            match p.join_result() {
                Err(ProcessError::Child(ChildError::Killed { signal: s })) => {
                    assert_eq!(s, signal, "{m}")
                }
                other => panic!("{m}: a child killed by signal {signal} gave {other:?}"),
            }
        }
    });
}

// -------------------------------------------------------------------------------------------
// terminate and kill (CPython's `_kill_process`)

fn check_ending(ctx: &Context, end: fn(&Process) -> Result<(), ProcessError>, signal: i32) {
    let m = ctx.start_method();
    let mut p = Running(start(ctx.process(nap, FOREVER_MS).daemon(true)));
    let pid = pid_of(&p);
    assert!(p.is_alive().unwrap(), "{m}");
    assert!(
        active_pids().contains(&pid),
        "{m}: a running child is in active_children"
    );
    assert_eq!(p.exitcode().unwrap(), None, "{m}");

    let t = Instant::now();
    assert!(
        !p.join_timeout(Duration::ZERO).unwrap(),
        "{m}: join(0) of a running child"
    );
    assert!(t.elapsed() < AT_ONCE, "{m}: join(0) took {:?}", t.elapsed());
    assert!(p.is_alive().unwrap(), "{m}");

    end(&p).unwrap();
    join(&p);
    assert!(!p.is_alive().unwrap(), "{m}");
    assert!(
        !active_pids().contains(&pid),
        "{m}: an ended child is not in active_children"
    );
    assert_eq!(p.exitcode().unwrap(), Some(-signal), "{m}");
    // Joining again returns at once.
    let t = Instant::now();
    p.join().unwrap();
    assert!(p.join_timeout(Duration::ZERO).unwrap(), "{m}");
    assert!(t.elapsed() < AT_ONCE, "{m}");
    match p.join_result() {
        Err(ProcessError::Child(ChildError::Killed { signal: s })) => assert_eq!(s, signal, "{m}"),
        other => panic!("{m}: expected death by signal {signal}, got {other:?}"),
    }
    // Signalling a process that ended does nothing.
    p.terminate().unwrap();
    p.kill().unwrap();
    assert_eq!(p.exitcode().unwrap(), Some(-signal), "{m}");
}

#[multiproc::test]
fn terminate_a_sleeping_child() {
    each_method(|ctx| check_ending(ctx, Process::terminate, libc::SIGTERM));
}

#[multiproc::test]
fn kill_a_sleeping_child() {
    each_method(|ctx| check_ending(ctx, Process::kill, libc::SIGKILL));
}

#[multiproc::test]
fn terminate_after_the_end_keeps_the_exitcode() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let p = start(ctx.process(nothing, ()));
        join(&p);
        p.terminate().unwrap();
        p.kill().unwrap();
        assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
    });
}

// -------------------------------------------------------------------------------------------
// The sentinel

#[multiproc::test]
fn sentinel_times_out_while_running_and_is_ready_after_the_end() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let p = ctx.process(nap, FOREVER_MS);
        let err = p.sentinel().unwrap_err();
        assert_eq!(
            err.to_string(),
            "can only get the sentinel of a started process",
            "{m}"
        );

        let p = Running(start(p));
        let sentinel = [p.sentinel().unwrap()];
        assert!(
            multiproc::wait(&sentinel, Some(Duration::ZERO))
                .unwrap()
                .is_empty(),
            "{m}"
        );
        let ready = multiproc::wait(&sentinel, Some(Duration::from_millis(100))).unwrap();
        assert!(
            ready.is_empty(),
            "{m}: the sentinel of a running child is not ready"
        );

        p.kill().unwrap();
        let ready = multiproc::wait(&sentinel, Some(LONG)).unwrap();
        assert_eq!(
            ready.len(),
            1,
            "{m}: the sentinel is ready once the child is killed"
        );
        join(&p);
        assert_eq!(
            multiproc::wait(&sentinel, Some(Duration::ZERO))
                .unwrap()
                .len(),
            1,
            "{m}: and stays ready"
        );
        assert_eq!(p.exitcode().unwrap(), Some(-9), "{m}");
    });
}

#[multiproc::test]
fn wait_returns_the_sentinel_of_the_child_that_ended() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let slow = sleeper(ctx);
        let quick = start(ctx.process(nothing, ()));
        let sentinels = [slow.sentinel().unwrap(), quick.sentinel().unwrap()];
        let ready = multiproc::wait(&sentinels, Some(LONG)).unwrap();
        assert_eq!(ready, [1], "{m}: only the quick child's sentinel is ready");
        join(&quick);
        assert_eq!(quick.exitcode().unwrap(), Some(0), "{m}");
        assert!(slow.is_alive().unwrap(), "{m}");
    });
}

/// After `wait` says a sentinel is ready, the process has ended: `is_alive`, `exitcode` and
/// `active_children` must say so at once, without a join (the pattern CPython's `Pool` and
/// `concurrent.futures` use: wait on the sentinels, then look at the exit codes; and
/// `active_children` "also reaps"). Checked many times, since a gap would be a race.
#[multiproc::test]
fn exit_is_known_as_soon_as_the_sentinel_is_ready() {
    each_method(|ctx| {
        let m = ctx.start_method();
        for i in 0..30 {
            let p = start(ctx.process(nothing, ()));
            let sentinel = [p.sentinel().unwrap()];
            let ready = multiproc::wait(&sentinel, Some(LONG)).unwrap().len();
            assert_eq!(
                ready, 1,
                "{m}: round {i}: the sentinel of a child that returned"
            );
            let listed = active_pids().contains(&pid_of(&p));
            let (alive, code) = (p.is_alive().unwrap(), p.exitcode().unwrap());
            join(&p);
            assert!(
                !listed,
                "{m}: round {i}: active_children() lists a child whose sentinel is ready"
            );
            assert!(
                !alive,
                "{m}: round {i}: is_alive() is true after the sentinel became ready"
            );
            assert_eq!(
                code,
                Some(0),
                "{m}: round {i}: exitcode() after the sentinel became ready"
            );
        }
    });
}

// -------------------------------------------------------------------------------------------
// close

fn assert_closed<T: Debug>(m: impl std::fmt::Display, what: &str, r: Result<T, ProcessError>) {
    match r {
        Err(e @ ProcessError::Closed) => {
            assert_eq!(e.to_string(), "process object is closed", "{m}: {what}")
        }
        other => panic!("{m}: {what} after close gave {other:?}"),
    }
}

#[multiproc::test]
fn close_while_running_fails_and_after_close_every_call_fails() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = sleeper(ctx);
        let err = p.close().unwrap_err();
        assert!(matches!(err, ProcessError::CloseRunning), "{m}: {err:?}");
        assert_eq!(
            err.to_string(),
            "Cannot close a process while it is still running. You should first call join() or terminate().",
            "{m}"
        );
        // The failed close changed nothing.
        assert!(p.is_alive().unwrap(), "{m}");
        p.terminate().unwrap();
        join(&p);
        assert_eq!(p.exitcode().unwrap(), Some(-15), "{m}");
        p.close().unwrap();

        assert_closed(m, "pid", p.pid());
        assert_closed(m, "join", p.join());
        assert_closed(m, "join_timeout", p.join_timeout(Duration::ZERO));
        assert_closed(m, "join_result", p.join_result());
        assert_closed(m, "is_alive", p.is_alive());
        assert_closed(m, "exitcode", p.exitcode());
        assert_closed(m, "terminate", p.terminate());
        assert_closed(m, "kill", p.kill());
        assert_closed(m, "sentinel", p.sentinel().map(|_| ()));
        assert_closed(m, "start", p.start());
        assert_closed(m, "set_daemon", p.set_daemon(true));
        // As in CPython, closing twice is allowed.
        p.close().unwrap();

        // A child that returned: its value is gone with the close.
        let mut p = start(ctx.process(echo::<u8>, 1));
        join(&p);
        p.close().unwrap();
        assert_closed(m, "join_result", p.join_result());

        // A process never started can be closed.
        let mut p = ctx.process(nothing, ());
        p.close().unwrap();
        assert_closed(m, "start", p.start());
    });
}

// -------------------------------------------------------------------------------------------
// Errors in CPython's words

#[multiproc::test]
fn misuse_errors_use_cpythons_wording() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = ctx.process(nothing, ());
        let not_started = |r: Result<(), ProcessError>, op: &str| {
            let e = r.unwrap_err();
            assert!(matches!(e, ProcessError::NotStarted(_)), "{m}: {e:?}");
            assert_eq!(
                e.to_string(),
                format!("can only {op} a started process"),
                "{m}"
            );
        };
        not_started(p.join(), "join");
        not_started(p.join_timeout(Duration::ZERO).map(|_| ()), "join");
        not_started(p.join_result(), "join");
        not_started(p.terminate(), "terminate");
        not_started(p.kill(), "kill");
        assert_eq!(p.pid().unwrap(), None, "{m}");
        assert_eq!(p.exitcode().unwrap(), None, "{m}");
        assert!(!p.is_alive().unwrap(), "{m}");
        p.set_daemon(true).unwrap();
        assert!(p.is_daemon(), "{m}");
        p.set_daemon(false).unwrap();

        p.start().unwrap();
        let twice = p.start().unwrap_err();
        assert!(
            matches!(twice, ProcessError::StartedTwice),
            "{m}: {twice:?}"
        );
        assert_eq!(twice.to_string(), "cannot start a process twice", "{m}");
        let late = p.set_daemon(true).unwrap_err();
        assert!(
            matches!(late, ProcessError::AlreadyStarted),
            "{m}: {late:?}"
        );
        assert_eq!(late.to_string(), "process has already started", "{m}");
        assert!(
            !p.is_daemon(),
            "{m}: the refused set_daemon changed nothing"
        );

        join(&p);
        assert_eq!(
            p.start().unwrap_err().to_string(),
            "cannot start a process twice",
            "{m}: after the end"
        );
        assert_eq!(
            p.set_daemon(true).unwrap_err().to_string(),
            "process has already started",
            "{m}"
        );
        assert_eq!(
            p.exitcode().unwrap(),
            Some(0),
            "{m}: the refused start changed nothing"
        );
    });
}

// -------------------------------------------------------------------------------------------
// Many processes

const MANY: usize = 100;

#[multiproc::test]
fn many_processes_start_then_join() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut procs: Vec<_> = (0..MANY).map(|_| start(ctx.process(my_pid, ()))).collect();
        let mut pids = HashSet::new();
        for p in &mut procs {
            let reported = result(p);
            assert_eq!(
                Some(reported),
                p.pid().unwrap(),
                "{m}: the child's own pid is Process::pid"
            );
            assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
            pids.insert(reported);
        }
        assert_eq!(pids.len(), MANY, "{m}: pids are distinct");
    });
}

#[multiproc::test]
fn many_processes_start_then_terminate() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let procs: Vec<_> = (0..MANY).map(|_| sleeper(ctx)).collect();
        for p in &procs {
            p.terminate().unwrap();
        }
        for p in &procs {
            join(p);
            assert_eq!(p.exitcode().unwrap(), Some(-15), "{m}: {}", p.get_name());
        }
    });
}

// -------------------------------------------------------------------------------------------
// The process tree

#[multiproc::test]
fn recursion_names_parents_and_authkey() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let top = ctx.process(tree, (m.name().to_owned(), 2));
        let top_name = top.get_name().to_owned();
        let mut top = start(top);
        let reports = result(&mut top);

        // CPython's expected order: [], [0], [0,0], [0,1], [1], [1,0], [1,1].
        let n = reports[0]
            .identity
            .first()
            .copied()
            .expect("the top child has an identity");
        let paths: [&[u32]; 7] = [&[], &[1], &[1, 1], &[1, 2], &[2], &[2, 1], &[2, 2]];
        let expected: Vec<Vec<u32>> = paths.iter().map(|p| [&[n][..], p].concat()).collect();
        let identities: Vec<_> = reports.iter().map(|r| r.identity.clone()).collect();
        assert_eq!(identities, expected, "{m}: identities in tree order");
        let names: Vec<_> = reports.iter().map(|r| r.name.clone()).collect();
        let expected_names: Vec<_> = expected
            .iter()
            .map(|id| {
                format!(
                    "Process-{}",
                    id.iter().map(u32::to_string).collect::<Vec<_>>().join(":")
                )
            })
            .collect();
        assert_eq!(names, expected_names, "{m}: default names");
        assert_eq!(
            names[0], top_name,
            "{m}: the name the parent gave is the child's"
        );

        let me = current_process();
        let by_identity: BTreeMap<_, _> = reports.iter().map(|r| (r.identity.clone(), r)).collect();
        for r in &reports {
            assert_eq!(
                r.authkey,
                me.authkey(),
                "{m}: {} inherits the authkey",
                r.name
            );
            assert!(!r.daemon, "{m}: {} is not a daemon", r.name);
            let (parent_name, parent_pid, parent_alive) =
                r.parent.clone().expect("a child has a parent");
            assert!(parent_alive, "{m}: {}'s parent runs while it does", r.name);
            if r.identity.len() == 1 {
                assert_eq!(
                    (parent_name.as_str(), parent_pid),
                    ("MainProcess", me.pid()),
                    "{m}"
                );
            } else {
                let parent = by_identity[&r.identity[..r.identity.len() - 1]];
                assert_eq!(
                    (&parent_name, parent_pid),
                    (&parent.name, parent.pid),
                    "{m}: parent of {}",
                    r.name
                );
            }
        }
        let pids: HashSet<_> = reports.iter().map(|r| r.pid).chain([me.pid()]).collect();
        assert_eq!(
            pids.len(),
            reports.len() + 1,
            "{m}: every process of the tree has its own pid"
        );
    });
}

#[multiproc::test]
fn child_knows_its_parent() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(whoami, ()));
        let child = result(&mut p);
        assert_eq!(
            child.parent,
            Some(("MainProcess".to_owned(), std::process::id(), true)),
            "{m}"
        );
        assert_eq!(child.pid, pid_of(&p), "{m}");
        assert_eq!(child.authkey, current_process().authkey(), "{m}");
    });
}

#[multiproc::test]
fn active_children_lists_running_children_only() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let never_started = ctx.process(nothing, ()).name(format!("never-{m}"));
        let a = Running(start(ctx.process(nap, FOREVER_MS).name(format!("a-{m}"))));
        let b = Running(start(
            ctx.process(nap, FOREVER_MS)
                .name(format!("b-{m}"))
                .daemon(true),
        ));
        let mut joined = start(ctx.process(echo::<u8>, 1));
        result(&mut joined);

        let active = active_children();
        let find = |pid: u32| active.iter().find(|c| c.pid() == pid);
        let ca = find(pid_of(&a)).unwrap_or_else(|| panic!("{m}: a running child is listed"));
        assert_eq!(
            (ca.name(), ca.is_daemon(), ca.is_alive()),
            (format!("a-{m}").as_str(), false, true),
            "{m}"
        );
        let cb = find(pid_of(&b)).unwrap_or_else(|| panic!("{m}: a running daemon is listed"));
        assert_eq!(
            (cb.name(), cb.is_daemon()),
            (format!("b-{m}").as_str(), true),
            "{m}"
        );
        assert!(
            find(pid_of(&joined)).is_none(),
            "{m}: a joined child is not listed"
        );
        assert!(
            !active.iter().any(|c| c.name() == never_started.get_name()),
            "{m}"
        );

        a.kill().unwrap();
        join(&a);
        let pids = active_pids();
        assert!(
            !pids.contains(&pid_of(&a)) && pids.contains(&pid_of(&b)),
            "{m}"
        );
        // A listed child can be ended through the list.
        let listed = active_children()
            .into_iter()
            .find(|c| c.pid() == pid_of(&b))
            .unwrap();
        listed.terminate().unwrap();
        assert_eq!(listed.join_timeout(LONG).unwrap(), Some(-15), "{m}");
        assert!(!listed.is_alive(), "{m}");
        join(&b);
        assert_eq!(b.exitcode().unwrap(), Some(-15), "{m}");
        assert!(!active_pids().contains(&pid_of(&b)), "{m}");
    });
}

// -------------------------------------------------------------------------------------------
// Daemons, and the rule when a child ends

#[multiproc::test]
fn a_non_daemon_childs_children_are_joined_when_it_ends() {
    const GRANDCHILD_MS: u64 = 300;
    each_method(|ctx| {
        let m = ctx.start_method();
        let t = Instant::now();
        let mut p = start(ctx.process(leave_a_child, (m.name().to_owned(), false, GRANDCHILD_MS)));
        let grandchild = result(&mut p);
        assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
        assert!(
            t.elapsed() >= Duration::from_millis(GRANDCHILD_MS),
            "{m}: the child ended after {:?}, before its child could have",
            t.elapsed()
        );
        assert!(
            !pid_exists(grandchild),
            "{m}: the grandchild {grandchild} still exists after its parent ended"
        );
    });
}

#[multiproc::test]
fn a_childs_daemon_children_are_terminated_when_it_ends() {
    each_method(|ctx| {
        let m = ctx.start_method();
        // The grandchild would sleep longer than the join below waits.
        let mut p = Running(start(
            ctx.process(leave_a_child, (m.name().to_owned(), true, FOREVER_MS)),
        ));
        let grandchild = result(&mut p);
        assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
        assert!(
            !pid_exists(grandchild),
            "{m}: the daemonic grandchild {grandchild} outlived its parent"
        );
    });
}

#[multiproc::test]
fn daemon_flag_default_is_inherited() {
    each_method(|ctx| {
        let m = ctx.start_method();
        assert!(
            !ctx.process(nothing, ()).is_daemon(),
            "{m}: a child of the main process is not a daemon by default"
        );
        for daemon in [false, true] {
            let mut p = start(
                ctx.process(default_daemon_of_my_child, m.name().to_owned())
                    .daemon(daemon),
            );
            assert_eq!(
                result(&mut p),
                (daemon, daemon),
                "{m}: the child of a process with daemon={daemon} (default flag, flag it sees)"
            );
        }
    });
}

#[multiproc::test]
fn daemon_flag_reaches_the_child() {
    each_method(|ctx| {
        let m = ctx.start_method();
        for daemon in [false, true] {
            let mut p = start(ctx.process(whoami, ()).daemon(daemon));
            assert_eq!(result(&mut p).daemon, daemon, "{m}");
            assert_eq!(p.is_daemon(), daemon, "{m}");
        }
    });
}

// -------------------------------------------------------------------------------------------
// Names

#[multiproc::test]
fn the_name_given_is_the_childs_name() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(whoami, ()).name("SomeProcess ✓"));
        assert_eq!(p.get_name(), "SomeProcess ✓", "{m}");
        assert_eq!(result(&mut p).name, "SomeProcess ✓", "{m}");

        let mut p = ctx.process(whoami, ());
        p.set_name("renamed");
        let mut p = start(p);
        // Renaming a started process does not rename the running child.
        p.set_name("too late");
        assert_eq!(result(&mut p).name, "renamed", "{m}");
        assert_eq!(p.get_name(), "too late", "{m}");
    });
}

#[multiproc::test]
fn default_name_is_process_n() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let p = ctx.process(whoami, ());
        let name = p.get_name().to_owned();
        let mut p = start(p);
        let child = result(&mut p);
        assert_eq!(child.name, name, "{m}");
        assert_eq!(child.identity.len(), 1, "{m}: a child of the main process");
        assert_eq!(name, format!("Process-{}", child.identity[0]), "{m}");

        // Each new process takes the next number.
        let next = ctx.process(nothing, ());
        let number = |n: &str| {
            n.strip_prefix("Process-")
                .and_then(|s| s.parse::<u32>().ok())
        };
        assert!(
            number(next.get_name()) > number(&name),
            "{m}: {} after {name}",
            next.get_name()
        );
    });
}

/// `join_result_timeout`: a timeout while the child runs leaves the value to a later call.
#[multiproc::test]
fn join_result_timeout_then_the_value() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = sleeper(ctx);
        let t = Instant::now();
        match p.join_result_timeout(Duration::from_millis(50)) {
            Err(ProcessError::Timeout(d)) => assert_eq!(d, Duration::from_millis(50), "{m}"),
            other => panic!("{m}: expected a timeout, got {other:?}"),
        }
        assert!(t.elapsed() < LONG, "{m}: the timeout was not honoured");
        p.kill().unwrap();
        // The child ended: the next call gives how (killed), not a timeout.
        match p.join_result_timeout(LONG) {
            Err(ProcessError::Child(ChildError::Killed { signal: 9 })) => {}
            other => panic!("{m}: expected the kill, got {other:?}"),
        }
        let mut q = start(ctx.process(echo::<u32>, 7));
        assert_eq!(q.join_result_timeout(LONG).unwrap(), 7, "{m}");
    });
}

/// Sends this child's standard error to /dev/null, then panics with a message far larger than
/// a socket's buffer.
fn panic_with_a_huge_message(len: usize) {
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    rustix::stdio::dup2_stderr(&null).expect("dup2");
    panic!("{}", "x".repeat(len));
}

/// A report larger than the channel can hold must neither block the child nor the parent.
#[multiproc::test]
fn a_huge_panic_message_comes_back_whole() {
    const LEN: usize = 1 << 20;
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(panic_with_a_huge_message, LEN));
        match p.join_result_timeout(LONG) {
            Err(ProcessError::Child(ChildError::Panicked { message, location })) => {
                assert_eq!(message.len(), LEN, "{m}");
                assert!(location.is_some(), "{m}");
            }
            other => panic!("{m}: expected the panic, got {other:?}"),
        }
        assert_eq!(p.exitcode().unwrap(), Some(1), "{m}");
    });
}

/// Panics the target catches itself are not reported: the target's value comes back (and
/// thousands of them never fill the channel).
fn catch_panics(n: u32) -> u32 {
    let mut caught = 0;
    for _ in 0..n {
        if std::panic::catch_unwind(|| panic!("caught inside")).is_err() {
            caught += 1;
        }
    }
    caught
}

#[multiproc::test]
fn panics_caught_by_the_target_are_not_failures() {
    each_method(|ctx| {
        let m = ctx.start_method();
        for n in [1, 5000] {
            let mut p = start(ctx.process(catch_panics, n));
            assert_eq!(
                p.join_result_timeout(LONG)
                    .unwrap_or_else(|e| panic!("{m}: {e}")),
                n
            );
            assert_eq!(p.exitcode().unwrap(), Some(0), "{m}");
        }
    });
}

/// Panics again while unwinding: the process aborts, with no chance to report on its way
/// out. Standard error goes to /dev/null to keep the test output clean.
fn panic_while_unwinding(_: ()) {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("second, in drop");
        }
    }
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    rustix::stdio::dup2_stderr(&null).expect("dup2");
    let _guard = PanicsOnDrop;
    panic!("first");
}

#[multiproc::test]
fn a_panic_that_aborts_is_still_reported() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(panic_while_unwinding, ()));
        match p.join_result_timeout(LONG) {
            Err(ProcessError::Child(ChildError::Panicked { message, location })) => {
                // The cause first, then what followed while unwinding.
                assert!(
                    message.starts_with("first; then, while unwinding: second, in drop"),
                    "{m}: {message}"
                );
                assert!(location.is_some_and(|l| l.contains("process.rs")), "{m}");
            }
            other => panic!("{m}: expected the panic, got {other:?}"),
        }
        assert_eq!(p.exitcode().unwrap(), Some(-6), "{m}: SIGABRT");
    });
}

/// A caught panic, then `resume_unwind` of another payload (which runs no panic hook): the
/// report is of the payload that ended the target, not of the caught panic.
fn resume_another(_: ()) {
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    rustix::stdio::dup2_stderr(&null).expect("dup2");
    let _ = std::panic::catch_unwind(|| panic!("caught"));
    std::panic::resume_unwind(Box::new("resumed"));
}

#[multiproc::test]
fn resume_unwind_reports_its_own_payload() {
    each_method(|ctx| {
        let m = ctx.start_method();
        let mut p = start(ctx.process(resume_another, ()));
        match p.join_result_timeout(LONG) {
            Err(ProcessError::Child(ChildError::Panicked { message, location })) => {
                assert_eq!(message, "resumed", "{m}");
                assert_eq!(
                    location, None,
                    "{m}: the caught panic's location is not this one's"
                );
            }
            other => panic!("{m}: expected the panic, got {other:?}"),
        }
        assert_eq!(p.exitcode().unwrap(), Some(1), "{m}");
    });
}
