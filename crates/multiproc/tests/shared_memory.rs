//! SharedMemory across real processes: access from children under every start method, names
//! CPython's way, nothing left in /dev/shm after normal use or after SIGKILL, attaching never
//! destroying, untracked segments surviving.

use std::time::Duration;

mod common;

use common::python::{Python, python};
use common::{shm_exists, shm_gone_soon};
use multiproc::{Connection, Context, Process, SharedMemory, ShmError, get_context, pipe};

const LONG: Duration = Duration::from_secs(20);
const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

fn each_method(mut f: impl FnMut(&Context)) {
    for name in METHODS {
        f(&get_context(name).unwrap());
    }
}

fn finish<R: serde::de::DeserializeOwned>(mut p: Process<R>) -> R {
    p.start().unwrap();
    let m = p.start_method();
    assert!(p.join_timeout(LONG).unwrap(), "{m}: child did not end");
    p.join_result()
        .unwrap_or_else(|e| panic!("{m}: child failed: {e}"))
}

fn write_in_child((shm, offset, data): (SharedMemory, usize, Vec<u8>)) -> Vec<u8> {
    shm.write(offset, &data).unwrap();
    shm.to_vec()
}

#[multiproc::test]
fn a_child_writes_what_the_parent_reads_under_every_start_method() {
    each_method(|ctx| {
        let shm = SharedMemory::create(8).unwrap();
        assert!(shm.name().starts_with("psm_") && shm.name().len() == 12);
        let seen = finish(ctx.process(write_in_child, (shm.clone(), 2, vec![1, 2, 3])));
        assert_eq!(seen, [0, 0, 1, 2, 3, 0, 0, 0]);
        assert_eq!(shm.to_vec(), seen);
        let name = shm.name().to_owned();
        drop(shm);
        assert!(shm_gone_soon(&name), "{name} left behind");
    });
}

fn attach_by_name(name: String) -> u8 {
    let shm = SharedMemory::attach(&name).unwrap();
    let mut b = [0u8; 1];
    shm.read(0, &mut b).unwrap();
    b[0]
}

#[multiproc::test]
fn attaching_by_name_in_a_child_does_not_destroy_it_at_the_childs_exit() {
    each_method(|ctx| {
        let shm = SharedMemory::create(4).unwrap();
        shm.write(0, &[42]).unwrap();
        assert_eq!(
            finish(ctx.process(attach_by_name, shm.name().to_owned())),
            42
        );
        assert!(shm_exists(shm.name()));
        assert_eq!(SharedMemory::attach(shm.name()).unwrap().to_vec()[0], 42);
    });
}

fn hold_and_report(conn: Connection<String>) {
    let shm = SharedMemory::create(4096).unwrap();
    let mut conn = conn;
    conn.send(&shm.name().to_owned()).unwrap();
    // Wait for the parent, which kills us.
    let _ = conn.recv();
}

#[multiproc::test]
fn a_segment_of_a_killed_process_is_removed() {
    each_method(|ctx| {
        let (mut here, there) = pipe::<String>(true).unwrap();
        let mut p = ctx.process(hold_and_report, there);
        p.start().unwrap();
        let name = here.recv_timeout(LONG).unwrap();
        assert!(shm_exists(&name));
        p.kill().unwrap();
        p.join_timeout(LONG).unwrap();
        assert!(shm_gone_soon(&name), "{name} outlived its killed creator");
    });
}

fn send_back(conn: Connection<SharedMemory>) {
    let shm = SharedMemory::create(16).unwrap();
    shm.write(0, b"from the child").unwrap();
    let mut conn = conn;
    conn.send(&shm).unwrap();
}

#[multiproc::test]
fn a_segment_sent_by_a_child_that_exits_still_arrives() {
    each_method(|ctx| {
        let (mut here, there) = pipe::<SharedMemory>(true).unwrap();
        finish(ctx.process(send_back, there));
        let shm = here.recv_timeout(LONG).unwrap();
        assert_eq!(&shm.to_vec()[..14], b"from the child");
    });
}

#[multiproc::test]
fn untracked_segments_outlive_their_handles_until_unlinked() {
    let name = format!("mp_test_untracked_{}", std::process::id());
    let shm = SharedMemory::builder()
        .name(&name)
        .size(10)
        .untracked()
        .create()
        .unwrap();
    drop(shm);
    let again = SharedMemory::attach(&name).unwrap();
    assert_eq!(again.size(), 10);
    again.unlink().unwrap();
    assert!(!shm_exists(&name));
    assert!(matches!(again.unlink(), Err(ShmError::NotFound(_))));
}

#[multiproc::test]
fn bad_names_and_sizes_are_typed_errors() {
    assert!(matches!(SharedMemory::create(0), Err(ShmError::ZeroSize)));
    assert!(matches!(
        SharedMemory::attach("a/b"),
        Err(ShmError::InvalidName(_))
    ));
    assert!(matches!(
        SharedMemory::attach("psm_definitely_missing"),
        Err(ShmError::NotFound(_))
    ));
    let shm = SharedMemory::create(4).unwrap();
    assert!(matches!(
        shm.write(3, &[1, 2]),
        Err(ShmError::OutOfBounds { .. })
    ));
}

// -------------------------------------------------------------------------------------------
// CPython interop: by name, both ways

/// `python3` (required) and CPython 3.13 from pyenv (skipped with a message if missing).
fn interpreters() -> Vec<Python> {
    ["3.11", "3.13"].into_iter().filter_map(python).collect()
}

/// Attaches (or creates) without letting Python's resource tracker unlink the segment at
/// Python's exit (CPython gh-82300): `track=False` where it exists (3.13), else unregister.
const PY: &str = r#"
import sys
from multiprocessing import shared_memory, resource_tracker
op, name = sys.argv[1], sys.argv[2]
kw = {"track": False} if sys.version_info >= (3, 13) else {}
if op == "attach":
    shm = shared_memory.SharedMemory(name=name, **kw)
    print(bytes(shm.buf[:4]).decode(), shm.size >= 16)
    shm.buf[4:6] = b"py"
else:
    shm = shared_memory.SharedMemory(name=name, create=True, size=32, **kw)
    shm.buf[:5] = b"hello"
if not kw:
    resource_tracker.unregister(shm._name, "shared_memory")
shm.close()
"#;

fn run_python(py: &Python, op: &str, name: &str) -> String {
    let out = std::process::Command::new(&py.exe)
        .args(["-c", PY, op, name])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.exe.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{} {op}: {stderr}",
        py.exe.display()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[multiproc::test]
fn cpython_attaches_to_ours_and_we_attach_to_cpythons() {
    for py in interpreters() {
        let ours = SharedMemory::create(16).unwrap();
        ours.write(0, b"rust").unwrap();
        assert_eq!(run_python(&py, "attach", ours.name()), "rust True");
        assert_eq!(&ours.to_vec()[..6], b"rustpy");

        let name = format!("psm_interop_{}", std::process::id());
        run_python(&py, "create", &name);
        let theirs = SharedMemory::attach(&name).unwrap();
        assert_eq!(&theirs.to_vec()[..5], b"hello");
        assert_eq!(theirs.size(), 32);
        drop(theirs);
        // Attaching and letting go never removes what someone else made.
        std::thread::sleep(Duration::from_millis(50));
        assert!(shm_exists(&name), "{name} removed by an attacher");
        SharedMemory::attach(&name).unwrap().unlink().unwrap();
    }
}

// -------------------------------------------------------------------------------------------
// The main process killed

fn hold(shm: SharedMemory) {
    // A daemonic child: it dies with its parent, however the parent dies.
    let _keep = shm;
    std::thread::sleep(Duration::from_secs(120));
}

/// The body of a separate program (this test binary run again, see below): makes a segment,
/// gives it to a daemonic child, prints its name, and waits to be killed.
#[multiproc::test]
#[ignore = "run by a_killed_main_process_leaves_nothing_behind as its own program"]
fn program_that_is_killed() {
    if std::env::var_os("MULTIPROC_TEST_KILLED_PROGRAM").is_none() {
        return;
    }
    let shm = SharedMemory::create(4096).unwrap();
    let lock = multiproc::Lock::new().unwrap();
    let mut child = get_context("spawn")
        .unwrap()
        .process(hold, shm.clone())
        .daemon(true);
    child.start().unwrap();
    println!("NAMES {} {:?}", shm.name(), lock);
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_killed_main_process_leaves_nothing_behind() {
    use std::io::BufRead;
    let mut program = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "program_that_is_killed",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_KILLED_PROGRAM", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = program.stdout.take().unwrap();
    let line = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("NAMES ").map(|(_, rest)| rest.to_owned()))
        .expect("the program printed its segments");
    let shm_name = line.split(' ').next().unwrap().to_owned();
    let lock_name = line
        .split('"')
        .nth(1)
        .expect("the lock's segment name")
        .to_owned();
    assert!(shm_exists(&shm_name) && shm_exists(&lock_name));
    program.kill().unwrap(); // SIGKILL
    program.wait().unwrap();
    assert!(
        shm_gone_soon(&shm_name),
        "{shm_name} outlived the killed program"
    );
    assert!(
        shm_gone_soon(&lock_name),
        "{lock_name} outlived the killed program"
    );
}

// -------------------------------------------------------------------------------------------
// Names that outlive their senders

fn make_and_return(_: ()) -> SharedMemory {
    let shm = SharedMemory::create(8).unwrap();
    shm.write(0, b"result").unwrap();
    shm
}

#[multiproc::test]
fn a_segment_returned_by_a_child_arrives_even_if_the_parent_never_used_shared_memory() {
    // (Results travel without descriptors, by name: the tracker keeps names in transit.)
    each_method(|ctx| {
        let shm = finish(ctx.process(make_and_return, ()));
        assert_eq!(&shm.to_vec()[..6], b"result");
    });
}

fn attach_after_parent_dropped(name: String) -> u8 {
    SharedMemory::attach(&name).unwrap().to_vec()[0]
}

fn hold_then_attach_by_name((shm, go): (SharedMemory, multiproc::Event)) -> u8 {
    assert!(go.wait_timeout(LONG));
    // The parent has dropped its handle; this process still holds one, so the name must
    // still be there (for another attach, or to hand to CPython).
    let by_name = attach_after_parent_dropped(shm.name().to_owned());
    drop(shm);
    by_name
}

#[multiproc::test]
fn a_name_outlives_the_senders_handle_while_the_receiver_holds_it() {
    each_method(|ctx| {
        let shm = SharedMemory::create(8).unwrap();
        shm.write(0, &[9]).unwrap();
        let go = multiproc::Event::new().unwrap();
        let mut p = ctx.process(hold_then_attach_by_name, (shm.clone(), go.clone()));
        p.start().unwrap();
        drop(shm);
        go.set();
        assert!(p.join_timeout(LONG).unwrap());
        assert_eq!(p.join_result().unwrap(), 9);
    });
}

#[multiproc::test]
fn over_tcp_shared_objects_travel_by_name() {
    // TCP carries no descriptors: a segment goes by name there (and a Descriptor refuses).
    let mut listener = multiproc::connection::Listener::bind("127.0.0.1:0").unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || -> Result<Connection<multiproc::Lock>, _> {
        multiproc::connection::Client::new(address).connect()
    });
    let mut server: Connection<multiproc::Lock> = listener.accept_timeout(LONG).unwrap();
    let mut client = client.join().unwrap().unwrap();
    let lock = multiproc::Lock::new().unwrap();
    let _held = lock.acquire().ok().unwrap();
    server.send(&lock).unwrap();
    let received = client.recv_timeout(LONG).unwrap();
    assert!(received.is_locked(), "the same lock, reached by its name");
}
