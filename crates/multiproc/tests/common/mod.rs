//! What several test binaries share: waiting for a child process with a deadline, and running
//! one of this binary's own tests in a fresh process.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

pub(crate) mod python;

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
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
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
    let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_until(&mut child, Instant::now() + INNER_RUN_LIMIT, name);
    let (stdout, stderr) = (
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr"),
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}
