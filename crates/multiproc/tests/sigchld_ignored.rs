//! A program that ignores SIGCHLD: the forkserver it starts inherits that, and must still
//! learn (and report) how its children ended.
//!
//! # Safety
//!
//! This test opts in to `unsafe` for one `signal(2)` call that sets SIGCHLD to SIG_IGN.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use multiproc::{Context, StartMethod};

fn seven(_: ()) -> u32 {
    7
}

#[multiproc::test]
fn forkserver_statuses_are_exact_when_sigchld_is_ignored() {
    // SAFETY:
    // - installing SIG_IGN runs no code in signal context; this test binary has no other
    //   test that relies on SIGCHLD.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let ctx = Context::new(StartMethod::Forkserver);
    for i in 0..20 {
        let t = Instant::now();
        let mut p = ctx.process(seven, ());
        p.start().expect("start");
        assert_eq!(p.join_result().expect("result"), 7, "child {i}");
        assert_eq!(p.exitcode().expect("exitcode"), Some(0), "child {i}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "child {i} took {:?}",
            t.elapsed()
        );
    }
}
