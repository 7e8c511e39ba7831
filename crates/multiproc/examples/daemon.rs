//! S02 `daemon`: a daemon child dies with its parent, a daemon flag can only be set before
//! `start`, and a non-daemon child keeps its parent waiting at exit.
//!
//! `daemon [MARKER]` runs the three demonstrations; the last child writes `MARKER` (default:
//! a file in the temp directory) after the parent's `main` has returned.
//! `daemon kill-parent [METHOD]` starts a daemon child (start method METHOD, default
//! forkserver), prints its pid and waits forever: kill this process with SIGKILL and the
//! daemon ends too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multiproc::Process;

fn sleep_secs(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

/// A child that starts a long-sleeping daemon of its own and returns at once.
fn start_daemon_grandchild(_: ()) -> u32 {
    let mut daemon = Process::new(sleep_secs, 60).name("grandchild").daemon(true);
    daemon.start().expect("start the daemon grandchild");
    daemon.pid().expect("pid").expect("started")
}

/// Works a little, then leaves a marker: proof that it finished after `main` returned.
fn work_then_mark(marker: PathBuf) {
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&marker, format!("written by {}\n", std::process::id())).expect("write marker");
}

/// Whether `pid` has ended: /proc/<pid> is gone, or it is a zombie waiting to be reaped.
fn has_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn ended_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !has_ended(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn kill_parent_mode(method: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ctx = multiproc::get_context(method)?;
    let mut daemon = ctx.process(sleep_secs, 3600).daemon(true);
    daemon.start()?;
    println!("daemon pid: {}", daemon.pid()?.expect("started"));
    println!(
        "parent pid: {}; waiting forever, kill me",
        std::process::id()
    );
    loop {
        std::thread::park();
    }
}

fn demos(marker: &Path) -> Result<(), Box<dyn std::error::Error>> {
    // 1. A daemon dies with its parent: the child returns, and on its way out terminates
    //    its daemonic children.
    let mut child = Process::new(start_daemon_grandchild, ());
    child.start()?;
    let grandchild = child.join_result()?;
    println!("child exited with {:?}", child.exitcode()?);
    let ended = ended_within(grandchild, Duration::from_secs(5));
    println!("daemon grandchild {grandchild} ended with its parent: {ended}");

    // 2. The daemon flag must be set before start.
    let mut p = Process::new(sleep_secs, 0);
    p.start()?;
    match p.set_daemon(true) {
        Err(e) => println!("set_daemon after start: error: {e}"),
        Ok(()) => println!("set_daemon after start: no error?!"),
    }
    p.join()?;

    // 3. A non-daemon child keeps the parent waiting at exit: main returns without joining
    //    it, and the process ends only after the child has written its marker.
    let _ = std::fs::remove_file(marker);
    let mut worker = Process::new(work_then_mark, marker.to_owned());
    worker.start()?;
    println!(
        "non-daemon child {} writes {}",
        worker.pid()?.expect("started"),
        marker.display()
    );
    println!(
        "main returns without joining it; marker exists now: {}",
        marker.exists()
    );
    Ok(())
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    match (args.next(), args.next()) {
        (Some(mode), method) if mode == "kill-parent" => {
            kill_parent_mode(method.as_deref().unwrap_or("forkserver"))
        }
        (Some(marker), _) => demos(Path::new(&marker)),
        (None, _) => {
            let name = format!("multiproc-daemon-{}.marker", std::process::id());
            demos(&std::env::temp_dir().join(name))
        }
    }
}
