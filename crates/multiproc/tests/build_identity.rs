//! A child running a different build of the program refuses to run, and says so; a missing
//! executable is an error at start.

mod common;

use std::path::{Path, PathBuf};

use multiproc::{ChildError, Context, ProcessError, StartMethod};

fn answer(_: ()) -> u32 {
    42
}

/// The bytes of a GNU build-id note header with a 20-byte id: namesz 4, descsz 20, type 3,
/// "GNU\0".
const NOTE_HEADER: [u8; 16] = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];

/// Copies this test binary and flips one byte of its build id: the same code, another build.
fn copy_with_other_build_id(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut bytes = std::fs::read(&exe).expect("read test binary");
    let at = bytes
        .windows(NOTE_HEADER.len())
        .position(|w| w == NOTE_HEADER)
        .expect("the test binary has a GNU build-id note");
    bytes[at + NOTE_HEADER.len()] ^= 0xff;
    let copy = dir.join("other-build");
    std::fs::write(&copy, bytes).expect("write copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multiproc-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[multiproc::test]
fn a_different_build_refuses_to_run() {
    let dir = scratch_dir("build-id");
    let mut ctx = Context::new(StartMethod::Spawn);
    ctx.set_executable(copy_with_other_build_id(&dir));
    let mut p = ctx.process(answer, ());
    p.start().expect("start");
    let err = p
        .join_result()
        .expect_err("a different build must not run the target");
    match err {
        ProcessError::Child(ChildError::Failed(msg)) => {
            assert!(msg.contains("different build of the program"), "{msg}");
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(p.exitcode().expect("exitcode"), Some(1));
    let _ = std::fs::remove_dir_all(dir);
}

#[multiproc::test]
fn the_same_build_runs() {
    let mut p = Context::new(StartMethod::Spawn).process(answer, ());
    p.start().expect("start");
    assert_eq!(p.join_result().expect("result"), 42);
}

#[multiproc::test]
fn a_missing_executable_is_an_error_at_start() {
    let mut ctx = Context::new(StartMethod::Spawn);
    ctx.set_executable("/nonexistent/multiproc/program");
    let mut p = ctx.process(answer, ());
    match p.start() {
        Err(ProcessError::Launch(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        other => panic!("unexpected: {other:?}"),
    }
    // Nothing was started, and join says so.
    assert!(matches!(p.join(), Err(ProcessError::NotStarted("join"))));
}

/// An `#[ignore]`d test run on purpose (`--ignored`) can be the entry its children start in.
#[multiproc::test]
#[ignore = "run by ignored_entry_test_runs_children, with --ignored"]
fn an_ignored_entry_test() {
    let mut p = Context::new(StartMethod::Spawn).process(answer, ());
    p.start().expect("start");
    assert_eq!(p.join_result().expect("result"), 42);
}

#[test]
fn ignored_entry_test_runs_children() {
    common::run_own_ignored_test("an_ignored_entry_test", b"");
}
