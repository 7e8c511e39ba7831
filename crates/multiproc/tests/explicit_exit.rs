//! A child that ends with `std::process::exit(code)` gives that code, under every start
//! method (a port of CPython's exit-code test).
//!
//! In a binary of its own: `std::process::exit` runs std's clean-up, which takes a lock std
//! also holds while any thread of the process starts or ends. A fork child of a parent whose
//! other threads come and go (libtest runs a binary's tests on threads) could inherit it held
//! and wait forever: the hazard of forking a multi-threaded parent, which this test must not
//! depend on luck to avoid. Here the test's thread is alone.

use std::time::Duration;

use multiproc::{ChildError, Process, ProcessError, get_context};

fn exit_with(code: i32) {
    std::process::exit(code)
}

#[multiproc::test]
fn exitcode_of_explicit_exit() {
    for m in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(m).expect("context");
        let mut procs: Vec<(i32, Process)> = [0, 1, 3, 42, 255]
            .into_iter()
            .map(|code| {
                let mut p = ctx.process(exit_with, code);
                p.start().unwrap_or_else(|e| panic!("{m}: start: {e}"));
                (code, p)
            })
            .collect();
        let hung: Vec<i32> = procs
            .iter()
            .filter(|(_, p)| !p.join_timeout(Duration::from_secs(20)).expect("join"))
            .map(|(code, _)| *code)
            .collect();
        if !hung.is_empty() {
            // Kill them first: a failing test whose children still run would wait for them at
            // exit (CPython's rule), and hang instead of failing.
            for (_, p) in &procs {
                let _ = p.kill();
            }
            panic!("{m}: the children that exit with {hung:?} hung");
        }
        for (code, p) in &mut procs {
            assert_eq!(p.exitcode().unwrap(), Some(*code), "{m}: exit({code})");
            match p.join_result() {
                Err(ProcessError::Child(ChildError::Exited(c))) => assert_eq!(c, *code, "{m}"),
                other => panic!("{m}: exit({code}) gave {other:?}"),
            }
        }
    }
}
