//! What several test binaries share: waiting for a child process with a deadline, reading its
//! output pipes, running one of this binary's own tests in a fresh process, and watching
//! shared memory segments in /dev/shm.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

pub(crate) mod procs;
pub(crate) mod python;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Waits for `child` up to `deadline`; kills it and panics if it is still running then.
pub(crate) fn wait_until(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within its deadline and was killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pipe to its end on a thread; the text arrives on the returned channel (so the
/// reader can give up waiting for it).
pub(crate) fn collect(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// How long the inner run may take before it is killed and the test fails.
const INNER_RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the `#[ignore]`d test `name` of this very binary, alone, in a fresh process (so it is
/// that process's first and only test entry), with `stdin` as its standard input; fails the
/// calling test unless it passes within [`INNER_RUN_LIMIT`].
pub(crate) fn run_own_ignored_test(name: &str, stdin: &[u8]) {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", name, "--ignored", "--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test binary");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, Instant::now() + INNER_RUN_LIMIT, name);
    let text = |rx: mpsc::Receiver<String>, which: &str| {
        rx.recv_timeout(INNER_RUN_LIMIT)
            .unwrap_or_else(|_| panic!("{name}: its {which} never reached end of file"))
    };
    let (stdout, stderr) = (text(stdout, "stdout"), text(stderr, "stderr"));
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// Whether the shared memory segment `name` is in /dev/shm.
pub(crate) fn shm_exists(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

/// Waits, up to 20 s, until the segment `name` has left /dev/shm; whether it did. (Its
/// tracker runs in another process, so the removal follows the last drop by a message.)
pub(crate) fn shm_gone_soon(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if !shm_exists(name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
