//! S22 `zombies`: a child that finished and was never joined leaves no zombie behind.
//! (CPython leaves one in the process table until `is_alive`, `join` or exit.) The parent
//! waits for each child's end through its sentinel, never joins it, and watches /proc: the
//! entry disappears at once, reaped by multiproc. A `std::process::Command` child that is
//! never waited for, by contrast, stays a zombie.

use std::time::{Duration, Instant};

use multiproc::get_context;

fn quick(_: ()) -> u32 {
    std::process::id()
}

/// The state letter of `pid` in /proc (`R`, `S`, `Z`, ...), or `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// Polls until `done(state)` holds or `limit` passes; the last state seen.
fn poll_state(pid: u32, limit: Duration, done: impl Fn(Option<char>) -> bool) -> Option<char> {
    let deadline = Instant::now() + limit;
    loop {
        let state = proc_state(pid);
        if done(state) || Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn describe(state: Option<char>) -> String {
    match state {
        None => "gone from /proc (no zombie)".to_owned(),
        Some('Z') => "a zombie (Z)".to_owned(),
        Some(s) => format!("still there, state {s}"),
    }
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut children = Vec::new();
    for method in ["fork", "spawn", "forkserver"] {
        let mut p = get_context(method)?.process(quick, ());
        p.start()?;
        let pid = p.pid()?.expect("started");
        // The sentinel becomes readable when the child ends; nothing here reaps it.
        let sentinel = [p.sentinel()?];
        let ended = multiproc::wait(&sentinel, Some(Duration::from_secs(10)))?.len() == 1;
        assert!(ended, "the {method} child did not end in time");
        let state = poll_state(pid, Duration::from_secs(2), |s| s != Some('Z'));
        println!(
            "{method}: child {pid} ended, never joined: {}",
            describe(state)
        );
        children.push(p); // kept, unjoined, until the end of main
    }

    let mut plain = std::process::Command::new("true").spawn()?;
    let state = poll_state(plain.id(), Duration::from_secs(2), |s| {
        s == Some('Z') || s.is_none()
    });
    println!(
        "std::process::Command child {}, never waited: {}",
        plain.id(),
        describe(state)
    );
    plain.wait()?;
    Ok(())
}
