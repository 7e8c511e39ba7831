//! A spawned child's standard streams are its parent's: the channel to the parent travels as
//! the child's standard input during start-up, and the parent's own is put back before the
//! target runs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use multiproc::{Context, StartMethod};

fn read_stdin(_: ()) -> String {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .expect("read stdin");
    text
}

/// Run by `stdin_reaches_spawned_children`, with a pipe as standard input.
#[multiproc::test]
#[ignore = "run by stdin_reaches_spawned_children, with its standard input piped"]
fn a_spawned_child_reads_the_parents_stdin() {
    let mut p = Context::new(StartMethod::Spawn).process(read_stdin, ());
    p.start().expect("start");
    assert_eq!(
        p.join_result().expect("result"),
        "hello from the parent's stdin\n"
    );
}

#[test]
fn stdin_reaches_spawned_children() {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args([
            "--exact",
            "a_spawned_child_reads_the_parents_stdin",
            "--ignored",
        ])
        .args(["--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test binary");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"hello from the parent's stdin\n")
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
