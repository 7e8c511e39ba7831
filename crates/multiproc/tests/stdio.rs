//! A spawned child's standard streams are its parent's: the channel to the parent travels as
//! the child's standard input during start-up, and the parent's own is put back before the
//! target runs.

use std::io::Read;

use multiproc::{Context, StartMethod};

mod common;

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
    common::run_own_ignored_test(
        "a_spawned_child_reads_the_parents_stdin",
        b"hello from the parent's stdin\n",
    );
}
