//! Runs every example in `examples/` (one per seed scenario, ../shared/SCENARIOS.md) and
//! checks what it prints, and what it leaves behind: files, exit codes, processes.
//!
//! The examples are separate binaries in `target/<profile>/examples/`; the first test to need
//! one builds them with cargo (see [`example`]), so `cargo test --test examples` and `cargo
//! nextest run` work on their own. Every run has a deadline, so a hanging example fails its
//! test rather than hanging it.

mod common;

use common::{collect, shm_exists, wait_until};
use multiproc::connection::{Address, AuthenticationError, Client, ConnectionError};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// How long one example may run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How long building the examples may take.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

/// How long a process may take to disappear after its end was caused.
const END_LIMIT: Duration = Duration::from_secs(5);

/// The built example binary `name`.
///
/// Tests run from `target/<profile>/deps/`, and cargo puts examples in
/// `target/<profile>/examples/`. A plain `cargo test` builds them, but `cargo test --test
/// examples` and `cargo nextest run --test examples` do not, and a binary built earlier may be
/// stale; so the first call builds them with cargo (a no-op when they are up to date).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let built = BUILT.get_or_init(|| build_examples(profile_dir));
    let path = profile_dir.join("examples").join(name);
    if let Err(why) = built {
        assert!(
            path.is_file(),
            "the example binary {} is missing and could not be built ({why}): build the \
             examples first with `cargo build -p multiproc --examples`",
            path.display()
        );
        eprintln!("warning: using {} as it is: {why}", path.display());
    }
    path
}

/// Runs `cargo build --examples` for this package, into the target directory and profile
/// this test was built for.
fn build_examples(profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .ok_or("no profile directory")?;
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--offline",
        "--examples",
        "-p",
        env!("CARGO_PKG_NAME"),
    ])
    .arg("--manifest-path")
    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // `target/<profile>`, or `target/<triple>/<profile>` when built for an explicit target.
    let above = profile_dir.parent().ok_or("no target directory")?;
    if above.join("CACHEDIR.TAG").is_file() {
        cmd.arg("--target-dir").arg(above);
    } else {
        let triple = above.file_name().ok_or("no target triple")?;
        cmd.arg("--target").arg(triple);
        cmd.arg("--target-dir")
            .arg(above.parent().ok_or("no target directory")?);
    }
    let run = try_run_command(cmd, "cargo build --examples", BUILD_LIMIT)
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if run.status.success() {
        Ok(())
    } else {
        Err(format!("cargo build failed: {}", run.stderr.trim()))
    }
}

/// What a finished run left.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    /// The first stdout line starting with `prefix`, without the prefix.
    fn after(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line starts with {prefix:?} in:\n{}", self.stdout))
    }

    fn assert_success(&self) {
        assert!(
            self.status.success(),
            "the example failed ({}):\n--- stdout\n{}--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `cmd` to its end, within [`RUN_LIMIT`]; panics if it cannot start.
fn run_command(cmd: Command, what: &str) -> Run {
    try_run_command(cmd, what, RUN_LIMIT).unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Runs `cmd` to its end, within `limit` (killed and a panic after it).
fn try_run_command(cmd: Command, what: &str, limit: Duration) -> std::io::Result<Run> {
    run_probing(cmd, what, limit, || ()).map(|(run, ())| run)
}

/// Runs `cmd` to its end, within `limit`, and calls `probe` the moment it has exited (before
/// waiting for its output pipes, which its own children may still hold).
fn run_probing<T>(
    mut cmd: Command,
    what: &str,
    limit: Duration,
    probe: impl FnOnce() -> T,
) -> std::io::Result<(Run, T)> {
    let start = Instant::now();
    let deadline = start + limit;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, deadline, what);
    let elapsed = start.elapsed();
    let probed = probe();
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(END_LIMIT);
    let text = |rx: mpsc::Receiver<String>, which: &str| {
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("{what}: its {which} never reached end of file"))
    };
    let run = Run {
        status,
        stdout: text(stdout, "stdout"),
        stderr: text(stderr, "stderr"),
        elapsed,
    };
    eprintln!(
        "--- {what} ({:?})\n{}{}",
        run.elapsed, run.stdout, run.stderr
    );
    Ok((run, probed))
}

fn run_example(name: &str, args: &[&std::ffi::OsStr]) -> Run {
    let mut cmd = Command::new(example(name));
    cmd.args(args);
    run_command(cmd, name)
}

/// A fresh, empty directory for one test.
fn scratch_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("multiproc-examples-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The state letter of `pid` in /proc, or `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

/// The parent pid of `pid`, from /proc.
fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid` has ended: gone from /proc, or a zombie. (An orphan's zombie is reaped by
/// init, on init's schedule, not the library's.)
fn has_ended(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

/// Polls until `pid` has ended, up to [`END_LIMIT`].
fn ends_in_time(pid: u32) -> bool {
    let deadline = Instant::now() + END_LIMIT;
    while !has_ended(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn parse<T: std::str::FromStr>(text: &str) -> T {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

#[test]
fn s01_process_basics() {
    let run = run_example("process_basics", &[]);
    run.assert_success();
    assert_eq!(
        run.stdout,
        "1-2-3\n\
         p1 exitcode: Some(0)\n\
         p1 started again: error: cannot start a process twice\n\
         p2 exitcode: Some(-15)\n\
         <Process name=\"Process-1\" stopped exitcode=0> <Process name=\"Process-2\" stopped exitcode=-15>\n"
    );
}

#[test]
fn s02_daemon() {
    let dir = scratch_dir("daemon");
    let marker = dir.join("non-daemon.marker");
    let mut cmd = Command::new(example("daemon"));
    cmd.arg(&marker);
    // Read the marker the moment the parent has exited: it must be there already.
    let (run, marker_at_exit) = run_probing(cmd, "daemon", RUN_LIMIT, || {
        std::fs::read_to_string(&marker).ok()
    })
    .expect("run the daemon example");
    run.assert_success();

    assert_eq!(run.after("child exited with "), "Some(0)");
    let grandchild = run.after("daemon grandchild ");
    let (pid, verdict) = grandchild.split_once(' ').expect("pid and verdict");
    assert_eq!(verdict, "ended with its parent: true");
    assert!(
        has_ended(parse(pid)),
        "the daemon grandchild {pid} still runs"
    );

    assert_eq!(
        run.after("set_daemon after start: "),
        "error: process has already started"
    );

    // The parent's main returned before the non-daemon child wrote its marker, and the
    // parent's exit waited for it.
    assert!(
        run.stdout
            .contains("main returns without joining it; marker exists now: false")
    );
    let worker: u32 = parse(
        run.after("non-daemon child ")
            .split_once(' ')
            .expect("pid")
            .0,
    );
    let written = marker_at_exit.expect("the marker exists when the parent has exited");
    assert_eq!(written, format!("written by {worker}\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `daemon kill-parent <method>`, SIGKILLs that parent once its daemon runs, and
/// checks that the daemon (and under forkserver the fork server) ends too.
fn daemon_ends_when_its_parent_is_killed(method: &str) {
    let mut parent = Command::new(example("daemon"))
        .args(["kill-parent", method])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the daemon example");
    let (tx, lines) = mpsc::channel();
    let stdout = parent.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let daemon: u32 = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(pid) = line.strip_prefix("daemon pid: ") {
                    break parse(pid);
                }
            }
            Err(_) => {
                let _ = parent.kill();
                let _ = parent.wait();
                panic!("{method}: the example never printed the daemon's pid");
            }
        }
    };
    if daemon == parent.id() || has_ended(daemon) {
        let _ = parent.kill();
        let _ = parent.wait();
        panic!("{method}: the daemon {daemon} is not a running child");
    }
    // Under forkserver the daemon's OS parent is the fork server: it must not linger either.
    let server = proc_ppid(daemon).filter(|&p| p != parent.id());
    eprintln!(
        "{method}: parent {}, daemon {daemon}, fork server {server:?}",
        parent.id()
    );

    parent.kill().expect("SIGKILL the parent");
    let status = wait_until(&mut parent, Instant::now() + END_LIMIT, "the killed parent");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    for (pid, what) in [(Some(daemon), "daemon"), (server, "fork server")] {
        let Some(pid) = pid else { continue };
        if !ends_in_time(pid) {
            // Do not leave it behind (it would also hold this test's stderr open).
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{method}: the {what} {pid} outlived its SIGKILLed parent");
        }
    }
}

#[test]
fn s02_daemon_ends_when_its_parent_is_killed_forkserver() {
    daemon_ends_when_its_parent_is_killed("forkserver");
}

#[test]
fn s02_daemon_ends_when_its_parent_is_killed_spawn() {
    daemon_ends_when_its_parent_is_killed("spawn");
}

#[test]
fn s02_daemon_ends_when_its_parent_is_killed_fork() {
    daemon_ends_when_its_parent_is_killed("fork");
}

/// One child line of `start_methods`: `<method>: <parent> -> <child> child VmRSS <kB> kB`.
fn rss_line(run: &Run, method: &str) -> (u32, u32, u64) {
    let line = run.after(&format!("{method}: "));
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [parent, "->", child, "child", "VmRSS", kb, "kB"] => {
            (parse(parent), parse(child), parse(kb))
        }
        _ => panic!("unexpected line for {method}: {line:?}"),
    }
}

#[test]
fn s20_start_methods() {
    let run = run_example("start_methods", &[]);
    run.assert_success();
    assert_eq!(
        run.after("set_start_method a second time: "),
        "error: context has already been set"
    );

    let (fork_parent, fork_child, fork_rss) = rss_line(&run, "fork");
    let (spawn_parent, spawn_child, spawn_rss) = rss_line(&run, "spawn");
    let (fs_parent, fs_child, fs_rss) = rss_line(&run, "forkserver");
    assert_eq!(fork_parent, spawn_parent);
    assert_eq!(fork_parent, fs_parent);
    let pids: HashSet<u32> = [fork_parent, fork_child, spawn_child, fs_child].into();
    assert_eq!(pids.len(), 4, "every child has its own pid: {pids:?}");

    // The parent holds 200 MB; the fork child maps all of it, the others none of it.
    const MARGIN_KB: u64 = 100 * 1024;
    assert!(
        fork_rss > 150 * 1024,
        "the fork child should be large: {fork_rss} kB"
    );
    assert!(
        fork_rss > spawn_rss + MARGIN_KB,
        "fork {fork_rss} kB vs spawn {spawn_rss} kB"
    );
    assert!(
        fork_rss > fs_rss + MARGIN_KB,
        "fork {fork_rss} kB vs forkserver {fs_rss} kB"
    );
}

/// A cgroup v2 CPU quota on this machine, which lowers `cpu_count` below the affinity mask.
fn cgroup_cpu_quota() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/cpu.max").is_ok_and(|s| !s.starts_with("max"))
}

/// Checks `cpu_count`'s lines on the pool's default size: `n` workers, all of them live.
fn assert_pool_default_size(run: &Run, n: usize, what: &str) {
    assert_eq!(
        parse::<usize>(run.after("Pool::builder().build()?.processes(): ")),
        n,
        "{what}"
    );
    assert_eq!(parse::<usize>(run.after("live workers: ")), n, "{what}");
    assert_eq!(
        run.after("a pool's default size equals cpu_count: "),
        "true",
        "{what}"
    );
}

#[test]
fn s21_cpu_count() {
    let run = run_example("cpu_count", &[]);
    run.assert_success();
    assert!(run.stderr.is_empty(), "unexpected stderr: {}", run.stderr);
    let n: usize = parse(run.after("cpu_count: "));
    let mask: usize = parse(run.after("CPUs in the affinity mask: "));
    assert!(n >= 1);
    if cgroup_cpu_quota() {
        assert!(n <= mask, "cpu_count {n} above the affinity mask {mask}");
    } else {
        assert_eq!(n, mask);
        assert_eq!(run.after("cpu_count equals the affinity mask: "), "true");
    }
    assert_eq!(n, multiproc::cpu_count(), "the test's own cpu_count");
    assert_pool_default_size(&run, n, "default start method");
    for method in START_METHODS {
        let run = run_example("cpu_count", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        assert_eq!(parse::<usize>(run.after("cpu_count: ")), n, "{method}");
        assert_pool_default_size(&run, n, method);
    }

    let has_taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_taskset {
        eprintln!(
            "skipped: `taskset` is not installed, so cpu_count under a one-CPU affinity is not checked"
        );
        return;
    }
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg("0").arg(example("cpu_count"));
    let pinned = run_command(cmd, "taskset -c 0 cpu_count");
    pinned.assert_success();
    assert_eq!(pinned.after("cpu_count: "), "1");
    assert_eq!(pinned.after("CPUs in the affinity mask: "), "1");
    assert_pool_default_size(&pinned, 1, "taskset -c 0");
}

#[test]
fn s22_zombies() {
    let run = run_example("zombies", &[]);
    run.assert_success();
    let mut pids = HashSet::new();
    for method in ["fork", "spawn", "forkserver"] {
        let line = run.after(&format!("{method}: child "));
        let (pid, verdict) = line.split_once(' ').expect("pid and verdict");
        assert_eq!(
            verdict, "ended, never joined: gone from /proc (no zombie)",
            "{method}"
        );
        assert!(pids.insert(parse::<u32>(pid)));
    }
    // The contrast: a std child that nobody waits for stays a zombie.
    let plain = run.after("std::process::Command child ");
    assert!(plain.ends_with("never waited: a zombie (Z)"), "{plain}");
}

#[test]
fn s23_spawn_globals() {
    let run = run_example("spawn_globals", &[]);
    run.assert_success();
    let list = r#"["func0: 0", "func1: 1", "func0: 2", "func1: 3", "func0: 4", "func1: 5", "func0: 6", "func1: 7", "func0: 8", "func1: 9"]"#;
    let expected = [
        r#"plugin loaded in the parent: Some(["func0", "func1"])"#.to_owned(),
        "spawn, global: error: the plugin registry is None in this child".to_owned(),
        "forkserver, global: error: the plugin registry is None in this child".to_owned(),
        format!("fork, global: {list}"),
        format!("spawn, argument: {list}"),
        format!("forkserver, argument: {list}"),
        "fork child added a plugin: the child has 3".to_owned(),
        "the parent still has 2: a fork child's change stays in the child".to_owned(),
    ];
    assert_eq!(run.lines(), expected);
}

#[test]
fn s26_capture_stdout() {
    let dir = scratch_dir("capture_stdout");
    let run = run_example("capture_stdout", &[dir.as_os_str()]);
    run.assert_success();
    let main_pid: u32 = parse(run.after("main process id: "));

    let mut greetings = Vec::new();
    let mut pids = HashSet::new();
    for entry in std::fs::read_dir(&dir).expect("read the output dir") {
        let path = entry.expect("dir entry").path();
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("out"),
            "{}",
            path.display()
        );
        let pid: u32 = parse(path.file_stem().and_then(|s| s.to_str()).expect("a pid"));
        let text = std::fs::read_to_string(&path).expect("read an output file");
        let lines: Vec<&str> = text.lines().collect();
        let [title, module, name, parent, own, hello] = lines.as_slice() else {
            panic!("unexpected content of {}:\n{text}", path.display());
        };
        assert_eq!(*title, "function f");
        assert_eq!(*module, "module name: capture_stdout");
        assert!(name.starts_with("process name: Process-"), "{name}");
        assert_eq!(*parent, format!("parent process: {main_pid}"));
        assert_eq!(
            *own,
            format!("process id: {pid}"),
            "the file is named after its writer"
        );
        assert_ne!(pid, main_pid);
        assert!(pids.insert(pid));
        greetings.push(hello.to_string());
        // The example also prints each file it collected.
        assert!(
            run.stdout.contains(&text),
            "the example did not print {}",
            path.display()
        );
    }
    greetings.sort();
    assert_eq!(greetings, ["hello bob", "hello fred"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn s40_spawn_without_init() {
    let run = run_example("spawn_without_init", &[]);
    run.assert_success();
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
    let started = run
        .lines()
        .iter()
        .filter(|l| l.starts_with("main started"))
        .count();
    assert_eq!(started, 1, "main ran more than once:\n{}", run.stdout);
    for method in ["spawn", "forkserver"] {
        let error = run.after(&format!("{method}: start() failed: "));
        assert!(
            error.contains("#[multiproc::main]"),
            "{method}: the error does not name the fix: {error}"
        );
        assert!(error.contains("multiproc::init()"), "{method}: {error}");
    }
    assert_eq!(run.after("fork: needs no hook: "), "Ok(42)");
    assert!(run.stderr.is_empty(), "unexpected stderr: {}", run.stderr);
}

#[test]
fn tour_main_job() {
    // A smaller job than the README's run: the test binaries are not optimised.
    let run = run_example("tour", &["200000".as_ref()]);
    run.assert_success();
    let lines: Vec<&str> = run.stdout.lines().map(str::trim).collect();
    // pi(200,000) = 17,984, whichever way the work was started.
    for method in ["fork", "spawn", "forkserver"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(method) && l.contains(" 17984 primes in ")),
            "{method}: {}",
            run.stdout
        );
    }
    let streamed = lines
        .iter()
        .find(|l| l.contains(" messages from "))
        .unwrap_or_else(|| panic!("no streaming line in:\n{}", run.stdout));
    assert!(streamed.ends_with(": 17984 primes"), "{streamed}");
    let shared = lines
        .iter()
        .find(|l| l.starts_with("per worker "))
        .unwrap_or_else(|| panic!("no shared memory line in:\n{}", run.stdout));
    assert!(shared.ends_with(", total 17984 primes"), "{shared}");
    let queued = lines
        .iter()
        .find(|l| l.starts_with("the producer exited "))
        .unwrap_or_else(|| panic!("no work queue line in:\n{}", run.stdout));
    let workers = multiproc::cpu_count();
    assert!(
        queued.ends_with(&format!("with {} items queued, none lost", 64 + workers)),
        "{queued}"
    );
    assert!(
        lines.contains(&"the killed worker wedged nothing: 64 chunks, 17984 primes"),
        "{}",
        run.stdout
    );
    for expected in [
        "the process was killed by signal 6 (SIGABRT)",
        "exitcode Some(-6); the parent carries on",
        "still running after 200 ms: kill",
        "exitcode Some(-9)",
        "exitcode Some(1)",
        "the holder was killed; the next acquirer got the lock and was told",
    ] {
        assert!(
            lines.contains(&expected),
            "missing {expected:?} in:\n{}",
            run.stdout
        );
    }
    let panic_line = lines
        .iter()
        .find(|l| l.starts_with("the process panicked at "))
        .unwrap_or_else(|| panic!("no panic report in:\n{}", run.stdout));
    assert!(panic_line.contains("examples/tour.rs:"), "{panic_line}");
    assert!(
        panic_line.ends_with(": the divisor must not be zero"),
        "{panic_line}"
    );
    // The child's own report on stderr, CPython style.
    assert!(run.stderr.contains("Process Process-"), "{}", run.stderr);
    assert!(
        run.stderr.contains("the divisor must not be zero"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Connections: S07, S17, S18, S19 and the echo server.

/// Whether `python3` runs here (the CPython interop checks are skipped, with a note, if not).
fn have_python3() -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: `python3` is not installed, so the CPython side is not checked");
    }
    found
}

/// Runs `python3 -c script args...` to its end, within [`RUN_LIMIT`].
fn run_python(script: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    run_command(cmd, "python3")
}

#[test]
fn s07_pipe() {
    let run = run_example("pipe", &[]);
    run.assert_success();
    assert_eq!(
        run.lines(),
        [
            "poll before the child sends: false",
            "poll once the child has sent: true",
            "parent received [42, None, 'hello']",
            "poll after recv: false",
            "child received 'a'",
            "child received ['b', 'c']",
            "child exitcode: Some(0)",
            "one-way ends: reader readable=true writable=false, writer readable=false writable=true",
            "the one-way pipe carried 'one way'",
            "send on the reading end: error: connection is read-only",
            "recv on the writing end: error: connection is write-only",
        ]
    );
}

#[test]
fn s17_listener_client() {
    let run = run_example("listener_client", &[]);
    run.assert_success();
    let lines = run.lines();
    let listening = run.after("listening on ");
    let (address, family) = listening.split_once(' ').expect("address and family");
    assert_eq!(family, "(AF_INET)");
    let port: u16 = parse(address.rsplit_once(':').expect("host:port").1);
    assert_ne!(port, 0, "the actual port is printed");
    let peer = run.after("connection accepted from ");
    assert!(
        peer.starts_with("127.0.0.1:") || peer.starts_with("[::1]:"),
        "{peer}"
    );
    assert_eq!(
        lines[2..],
        [
            "client received [2.25, None, 'junk', <class 'float'>]",
            "client received b'hello'",
            "client recv_bytes_into read 8 bytes",
            "client buffer: array('i', [42, 1729, 0, 0, 0])",
            "client exitcode: Some(0)",
            "wrong authkey, listener side: error: digest received was wrong",
            "wrong authkey, client side: error: digest sent was rejected",
            "wrong port: error: Connection refused (os error 111) (ConnectionRefused)",
        ]
    );
}

#[test]
fn s17_listener_client_cpython() {
    if !have_python3() {
        return;
    }
    let run = run_example("listener_client_cpython", &[]);
    run.assert_success();
    let lines = run.lines();
    assert!(
        lines[0].starts_with("listening on 127.0.0.1:"),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1..],
        [
            "connection accepted",
            "python received [2.25, None, 'junk', 'float']",
            "python received b'hello'",
            "python recv_bytes_into read 8",
            "python buffer array('i', [42, 1729, 0, 0, 0])",
            r#"rust received Reply { greeting: "hello from CPython", sum: 1771, nothing: None }"#,
            r#"rust received the object back: [Float(2.25), None, Str("junk"), Str("float")]"#,
            "the same as sent: true",
            "python exited with exit status: 0",
            "wrong authkey, python side: AuthenticationError: digest sent was rejected",
            "wrong authkey, rust side: error: digest received was wrong",
        ]
    );
}

#[test]
fn s18_wait_many() {
    let run = run_example("wait_many", &[]);
    run.assert_success();
    let lines = run.lines();
    let fds: Vec<i32> = lines[0]
        .split(", ")
        .map(|part| parse(part.split_once(": ").expect("name: fd").1))
        .collect();
    assert_eq!(fds.len(), 3, "{}", lines[0]);
    assert_eq!(
        lines[1..],
        [
            "receiving...",
            "received r1: 100",
            "receiving...",
            "received r2: 200",
            "receiving...",
            "received r3: 300",
            "receiving...",
            "received r1: 400",
            "receiving...",
            "r1 closed: dropped",
            "receiving...",
            "r2 closed: dropped",
            "receiving...",
            "r3 closed: dropped",
            "finished",
            "child exitcode: Some(0)",
            "acknowledged events: 7",
        ]
    );
}

#[test]
fn s19_wait_eof() {
    let run = run_example("wait_eof", &[]);
    run.assert_success();
    assert_eq!(
        run.lines(),
        [
            "0",
            "1",
            "2",
            "3",
            "4",
            "finished",
            "child exitcode: Some(0)"
        ]
    );
}

/// A running `echo_server`, killed when dropped.
struct EchoServer {
    child: std::process::Child,
    address: String,
    stderr: Option<mpsc::Receiver<String>>,
}

impl EchoServer {
    /// Starts `echo_server args...` and waits for its `listening on ADDRESS` line.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(example("echo_server"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start echo_server");
        let stderr = collect(child.stderr.take().expect("stderr"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = EchoServer {
            child,
            address: String::new(),
            stderr: Some(stderr),
        };
        match lines.recv_timeout(RUN_LIMIT) {
            Ok(line) => match line.strip_prefix("listening on ") {
                Some(address) => server.address = address.to_owned(),
                None => panic!("unexpected first line {line:?}; stderr:\n{}", server.stop()),
            },
            Err(_) => panic!(
                "echo_server never said it listens; stderr:\n{}",
                server.stop()
            ),
        }
        server
    }

    /// Kills the server and returns what it wrote on stderr.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = wait_until(&mut self.child, Instant::now() + END_LIMIT, "echo_server");
        self.stderr
            .take()
            .and_then(|rx| rx.recv_timeout(END_LIMIT).ok())
            .unwrap_or_default()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let stderr = self.stop();
        if !stderr.is_empty() {
            eprintln!("--- echo_server stderr\n{stderr}");
        }
    }
}

/// Connects a Rust client with `key`.
fn echo_client(
    address: &str,
    key: &[u8],
) -> Result<multiproc::Connection<(), multiproc::codec::Postcard>, ConnectionError> {
    Client::new(address).authkey(key).connect()
}

/// Echoes of several messages, from the empty one to 1 MiB, and of a value through `send` /
/// `recv` (its encoded bytes come back unchanged).
fn rust_client_echoes(address: &str, key: &[u8]) {
    let mut conn = echo_client(address, key).expect("connect");
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let messages: [&[u8]; 5] = [b"hello", b"", &big, &[0], b"last"];
    for m in messages {
        conn.send_bytes(m).expect("send");
    }
    for m in messages {
        assert_eq!(conn.recv_bytes().expect("echo"), m);
    }
    let mut conn: multiproc::Connection<Vec<String>> = conn.retype();
    let value = vec!["a value".to_owned(), String::new()];
    conn.send(&value).expect("send a value");
    assert_eq!(conn.recv().expect("the value back"), value);
}

/// A client that writes bytes with no handshake and no framing (a length header of 2 GiB,
/// then garbage) is dropped: its socket reaches end of file (or is reset).
fn raw_garbage_client(address: &str) {
    let timeout = Some(RUN_LIMIT);
    let mut stream: Box<dyn ReadWrite> = match address.parse::<Address>().expect("address") {
        Address::Tcp(sa) => {
            let s = std::net::TcpStream::connect(sa).expect("connect");
            s.set_read_timeout(timeout).expect("timeout");
            Box::new(s)
        }
        Address::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
            s.set_read_timeout(timeout).expect("timeout");
            Box::new(s)
        }
        other => panic!("unexpected address {other:?}"),
    };
    let _ = stream.write_all(b"\x7f\xff\xff\xffgarbage");
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not drop a garbage client: {e}"),
    }
    // What the server wrote before giving up: its challenge.
    assert!(rest.is_empty() || rest.windows(11).any(|w| w == b"#CHALLENGE#"));
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// CPython's client: echoes of several messages (empty and 1 MiB included), of an object
/// (pickled by `send`, unpickled by `recv`), then clients the server must drop: a wrong key,
/// and after a good handshake a length header over the server's limit and a corrupt one.
const PYTHON_ECHO_CLIENT: &str = r#"
import struct, sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

address, key = sys.argv[1], sys.argv[2].encode()
if not address.startswith('/'):
    host, port = address.rsplit(':', 1)
    address = (host, int(port))

with Client(address, authkey=key) as c:
    for m in [b'hello', b'', bytes(range(256)) * 4096, b'x']:
        c.send_bytes(m)
        assert c.recv_bytes() == m, len(m)
    c.send([1, 'two', None, 2.5])
    assert c.recv() == [1, 'two', None, 2.5]
print('python echoes: ok', flush=True)

try:
    Client(address, authkey=b'not ' + key)
    print('wrong key: connected?!')
except AuthenticationError as e:
    print('wrong key:', e, flush=True)

for name, header in [('huge', struct.pack('!i', 0x7fffffff)),
                     ('huge64', struct.pack('!iQ', -1, 1 << 62)),
                     ('corrupt', struct.pack('!i', -2))]:
    with Client(address, authkey=key) as c:
        c._send(header)
        try:
            c.recv_bytes()
            print(name + ': echoed?!')
        except (EOFError, ConnectionResetError) as e:
            print(name + ': dropped', flush=True)
"#;

/// Drives a running echo server at `address` with every kind of client, in turn, checking
/// after each bad one that the next good one is served.
fn exercise_echo_server(server: &mut EchoServer, key: &str) {
    let address = server.address.clone();
    rust_client_echoes(&address, key.as_bytes());

    let err = echo_client(&address, b"wrong key").expect_err("a wrong key must fail");
    assert!(
        matches!(
            err,
            ConnectionError::Authentication(AuthenticationError::DigestRejected)
        ),
        "{err}"
    );
    rust_client_echoes(&address, key.as_bytes());

    raw_garbage_client(&address);
    rust_client_echoes(&address, key.as_bytes());

    if have_python3() {
        let run = run_python(PYTHON_ECHO_CLIENT, &[&address, key]);
        run.assert_success();
        assert_eq!(
            run.lines(),
            [
                "python echoes: ok",
                "wrong key: digest sent was rejected",
                "huge: dropped",
                "huge64: dropped",
                "corrupt: dropped",
            ]
        );
        rust_client_echoes(&address, key.as_bytes());
    }

    let log = server.stop();
    eprintln!("--- echo_server stderr\n{log}");
    for expected in [
        "echoed 6 message(s), client closed",
        "refused a client: digest received was wrong",
        "refused a client: authentication failed",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
    if have_python3() {
        for expected in [
            "dropped: message of 2147483647 bytes exceeds this connection's maximum of 67108864 bytes",
            "dropped: message of 4611686018427387904 bytes exceeds",
            "dropped: corrupt message header (length -2)",
        ] {
            assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
        }
    }
}

#[test]
fn echo_server_unix_socket() {
    let dir = scratch_dir("echo_server_unix");
    let path = dir.join("echo.sock");
    let path = path.to_str().expect("a UTF-8 temp path");
    let mut server = EchoServer::start(&[path, "secret password"]);
    assert_eq!(server.address, path);
    exercise_echo_server(&mut server, "secret password");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn echo_server_tcp() {
    let mut server = EchoServer::start(&["127.0.0.1:0", "secret password"]);
    let port: u16 = parse(
        server
            .address
            .strip_prefix("127.0.0.1:")
            .unwrap_or_else(|| panic!("not a TCP address: {}", server.address)),
    );
    assert_ne!(port, 0, "the actual port is printed");
    exercise_echo_server(&mut server, "secret password");
}

#[test]
fn echo_server_once() {
    let mut server = EchoServer::start(&["127.0.0.1:0", "k", "--once"]);
    rust_client_echoes(&server.address, b"k");
    let status = wait_until(
        &mut server.child,
        Instant::now() + RUN_LIMIT,
        "echo_server --once",
    );
    assert!(status.success(), "{status}");
}

#[test]
fn echo_server_bad_arguments() {
    for args in [
        &[][..],
        &["127.0.0.1:0"],
        &["a", "b", "c"],
        &["", "key"],
        &["x:0", "k", "--twice"],
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let run = run_example("echo_server", &args);
        assert_eq!(run.status.code(), Some(2), "{args:?}");
        assert!(
            run.stderr.contains("usage: echo_server ADDRESS AUTHKEY"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
}

#[test]
fn s09_semaphore() {
    let run = run_example("semaphore", &[]);
    run.assert_success();
    assert_eq!(
        run.lines(),
        [
            "Semaphore(3)",
            "get_value() -> 3",
            "acquire(block=False) -> true",
            "acquire(block=False) -> true",
            "acquire(block=False) -> true",
            "acquire(block=False) -> false",
            "get_value() -> 0",
            "release() -> ok",
            "release() -> ok",
            "release() -> ok",
            "release() -> ok",
            "get_value() -> 4",
            "a child process: acquire(block=False) twice -> [true, true]",
            "get_value() in the parent -> 2",
        ]
    );
}

#[test]
fn s10_bounded_semaphore() {
    let run = run_example("bounded_semaphore", &[]);
    run.assert_success();
    let too_many = "semaphore or lock released too many times";
    assert_eq!(
        run.lines(),
        [
            "BoundedSemaphore(3)",
            "get_value() -> 3",
            "acquire(block=False) -> true",
            "acquire(block=False) -> true",
            "acquire(block=False) -> true",
            "acquire(block=False) -> false",
            "get_value() -> 0",
            "release() in a child process -> ok",
            "release() in a child process -> ok",
            "release() in a child process -> ok",
            &format!("release() in a child process -> error: {too_many}"),
            "get_value() -> 3",
            &format!("release() -> error: {too_many}"),
            "get_value() -> 3",
        ]
    );
}

#[test]
fn s11_lock() {
    let run = run_example("lock", &[]);
    run.assert_success();
    assert_eq!(
        run.lines(),
        [
            "acquire(block=False) -> true",
            "acquire(block=False) -> false",
            "a child process: acquire(block=False) -> false",
            "release() -> ok",
            "release() -> error: semaphore or lock released too many times",
            "a child process: acquire(block=False) -> true",
            "with a guard: locked = true",
            "after the guard: locked = false",
        ]
    );
}

#[test]
fn s12_rlock() {
    let run = run_example("rlock", &[]);
    run.assert_success();
    assert_eq!(
        run.lines(),
        [
            "<RLock(None, 0)>",
            "MainProcess: acquire(block=False) -> true",
            "<RLock(MainProcess, 1)>",
            "Process-1: acquire(block=False) -> false  <RLock(SomeOtherProcess, 1)>",
            "Process-2: release() -> error: attempt to release recursive lock not owned by thread",
            "MainProcess: acquire(block=False) -> true",
            "<RLock(MainProcess, 2)>",
            "MainProcess: release() -> ok  <RLock(MainProcess, 1)>",
            "Process-3: acquire(block=False) -> false  <RLock(SomeOtherProcess, 1)>",
            "MainProcess: release() -> ok  <RLock(None, 0)>",
            "Process-4: acquire(block=False) -> true  <RLock(Process-4, 1)>",
            "<RLock(SomeOtherProcess, 1)>",
            "MainProcess: acquire(block=False) -> true: its owner died holding it",
            "<RLock(MainProcess, 1)>",
            "<RLock(None, 0)>",
        ]
    );
}

#[test]
fn s29_shm_no_leak() {
    let run = run_example("shm_no_leak", &[]);
    run.assert_success();
    assert!(run.stderr.is_empty(), "a warning: {}", run.stderr);
    let names: Vec<&str> = run.after("segments: ").split(' ').collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let lines = run.lines();
    assert_eq!(
        lines[..lines.len() - 2],
        [
            "the parent made a segment of 64 bytes",
            "worker 3 was killed with SIGKILL (exit code Some(-9)) holding two segments",
            "workers 1 and 2 have exited",
            "worker 1's segment, read after its end: 'made by worker 1'",
            "worker 2's segment, read after its end: 'made by worker 2'",
            "worker 3's segment, read after its end: 'made by worker 3'",
            "the parent's segment after the kill: 'hello from the parent'",
            "every handle dropped",
        ]
    );
    assert_eq!(lines.last(), Some(&"left in /dev/shm: none"));
    for name in names {
        assert!(name.starts_with("psm_"), "{name}");
        assert!(!shm_exists(name), "{name} left behind");
    }
}

/// Runs the example `name` under each start method (its first argument) and checks that it
/// succeeds and prints `expected`, whatever the method.
fn run_under_every_start_method(name: &str, expected: &[&str]) {
    for method in ["fork", "spawn", "forkserver"] {
        let run = run_example(name, &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{name} {method}: {}", run.stderr);
        assert_eq!(run.lines(), expected, "{name} under {method}");
    }
}

#[test]
fn s13_shared_value() {
    run_under_every_start_method(
        "shared_value",
        &[
            "child: v.value = 100",
            "parent: v.value += 1",
            "child: v.value = 101",
            "parent: v.value = 101",
            "child exitcode: Some(0)",
        ],
    );
}

#[test]
fn s14_shared_array() {
    run_under_every_start_method(
        "shared_array",
        &[
            "child: a[:] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
            "parent: a[0] = 100",
            "child: a[:] = [100, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
            "parent: a[:] = [100, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
            "child exitcode: Some(0)",
        ],
    );
}

#[test]
fn s15_shared_array_lock() {
    run_under_every_start_method(
        "shared_array_lock",
        &[
            "parent: holds the array's lock",
            "child: the lock is held; a[0] = 100 waits for it",
            "parent: a[:] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
            "parent: releases the lock",
            "child: a[0] = 100 written",
            "parent: a[:] = [100, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
            "child exitcode: Some(0)",
        ],
    );
}

#[test]
fn s30_squares_value_array() {
    run_under_every_start_method(
        "squares_value_array",
        &[
            "squared_nums: [0, 1, 4, 9, 16, 25]",
            "squared_nums_total: 55",
            "6 processes x 10000 additions: fetch_add total 550000, locked total 550000 \
             (expected 550000)",
        ],
    );
}

#[test]
fn s31_raw_value() {
    run_under_every_start_method(
        "raw_value",
        &[
            "raw value: 0 (no lock)",
            "after the child's set(42): 42",
            "4 processes x 10000 fetch_add, no lock: 40000 (expected 40000)",
            "raw array filled by two children: [0, 1, 2, 3, 4, 5, 6, 7]",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Queues: S08, S24, S27, S28.

const START_METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

/// `line` with every `after <n> ms` replaced by `after <ms> ms`, and the `n`s found.
fn mask_millis(line: &str) -> (String, Vec<u128>) {
    let mut masked = String::new();
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("after ") {
        let (head, tail) = rest.split_at(at + "after ".len());
        masked.push_str(head);
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        if digits > 0 && tail[digits..].starts_with(" ms") {
            found.push(parse(&tail[..digits]));
            masked.push_str("<ms>");
            rest = &tail[digits..];
        } else {
            rest = tail;
        }
    }
    masked.push_str(rest);
    (masked, found)
}

#[test]
fn s08_queue_bounds() {
    // A failed put or get with a timeout of 200 ms returns after it, and not much later.
    const TIMEOUT_MS: u128 = 200;
    const LATE_MS: u128 = 5_000;
    let expected = [
        "Queue(3): maxsize() -> 3",
        "put(1, block=False) -> ok",
        "put(2, block=False) -> ok",
        "put(3, block=False) -> ok",
        "put(4, block=False) -> Full (the item came back: 4)",
        "qsize() -> 3, full() -> true",
        "get(block=False) -> 1",
        "get(block=False) -> 2",
        "get(block=False) -> 3",
        "get(block=False) -> Empty",
        "qsize() -> 0, empty() -> true",
        "put(1), put(2), put(3) -> qsize() 3",
        "put(4, timeout=0.2) -> Full (the item came back: 4) after <ms> ms",
        "get() three times -> [1, 2, 3]",
        "get(timeout=0.2) -> Empty after <ms> ms",
        "a child process: put(10, block=False) -> ok, put(11, block=False) -> ok, \
         put(12, block=False) -> ok, put(13, block=False) -> Full (the item came back: 13)",
        "parent: qsize() -> 3, full() -> true",
        "a child process: put(14, timeout=0.2) -> Full (the item came back: 14) after <ms> ms",
        "parent: get(block=False) four times -> 10, 11, 12, Empty",
        "a child process: get(timeout=0.2) -> Empty after <ms> ms",
        "a child process: put(20, timeout=30) on the full queue -> ok (the parent took 1)",
        "parent: the queue holds [2, 3, 20]",
        "a child process: get(timeout=30) on the empty queue -> 30 (the parent's put(30): ok)",
        "parent: empty() -> true",
    ];
    for method in START_METHODS {
        let run = run_example("queue_bounds", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        let mut waits = Vec::new();
        let masked: Vec<String> = run
            .lines()
            .into_iter()
            .map(|l| {
                let (line, ms) = mask_millis(l);
                waits.extend(ms);
                line
            })
            .collect();
        assert_eq!(masked, expected, "under {method}");
        assert_eq!(waits.len(), 4, "{method}: {waits:?}");
        for ms in waits {
            assert!(
                (TIMEOUT_MS..TIMEOUT_MS + LATE_MS).contains(&ms),
                "{method}: a 200 ms timeout took {ms} ms"
            );
        }
    }
}

#[test]
fn s28_queue_exit() {
    let expected = [
        "2 producers, each putting 50000 small items and 3 of 8 MiB (over 25 MiB each; a pipe \
         holds 64 KiB); nobody reads, nobody calls close()",
        "Process-1 (returns from its function after its last put) has exited: exitcode Some(0)",
        "Process-2 (calls std::process::exit(0) after its last put) has exited: exitcode Some(0)",
        "qsize() after both exited: 100006",
        "from producer 1: 50000 small and 3 large items (25 MiB), lost 0, out of order or \
         damaged 0",
        "from producer 2: 50000 small and 3 large items (25 MiB), lost 0, out of order or \
         damaged 0",
        "items from nowhere: 0",
        "empty() after reading: true",
    ];
    for method in START_METHODS {
        let run = run_example("queue_exit", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        assert_eq!(run.lines(), expected, "under {method}");
    }
}

/// The worker_cache model, independent of the example's: which source items are skipped
/// (equal to one of the last `window` processed before them), and the last `window` processed.
fn recent_items_model(items: &[u32], window: usize) -> (Vec<bool>, Vec<u32>) {
    let mut recent = std::collections::VecDeque::new();
    let mut skips = Vec::new();
    for item in items {
        let skip = recent.contains(item);
        if !skip {
            recent.push_back(*item);
            if recent.len() > window {
                recent.pop_front();
            }
        }
        skips.push(skip);
    }
    (skips, recent.into())
}

/// `[1, 2, 3]` as numbers.
fn parse_list(text: &str) -> Vec<u32> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a list: {text:?}"));
    inner
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(parse)
        .collect()
}

#[test]
fn s27_worker_cache() {
    const WORKERS: usize = 5;
    const WINDOW: usize = 10;
    for method in START_METHODS {
        let run = run_example("worker_cache", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        let (count, list) = run
            .after("source: ")
            .split_once(" items: ")
            .expect("the source line");
        let items = parse_list(list);
        assert_eq!(items.len(), parse::<usize>(count));
        let (skips, recent) = recent_items_model(&items, WINDOW);
        let skipped: Vec<usize> = (0..items.len()).filter(|&i| skips[i]).collect();
        let again: Vec<usize> = (0..items.len())
            .filter(|&i| !skips[i] && items[..i].contains(&items[i]))
            .collect();
        // The source has both kinds of repeat, so the window matters both ways.
        assert!(!skipped.is_empty() && !again.is_empty(), "{items:?}");
        let show = |is: &[usize]| -> String {
            is.iter()
                .map(|&i| format!("#{i}={}", items[i]))
                .collect::<Vec<_>>()
                .join(" ")
        };

        // The workers' own reports of their skips, printed under the lock: in source order.
        let mut dumps_by_worker = [0usize; WORKERS];
        let mut dumped = Vec::new();
        for line in run.lines() {
            let Some((worker, rest)) = line
                .strip_prefix("worker ")
                .and_then(|l| l.split_once(": already finished! dump it = "))
            else {
                continue;
            };
            let worker: usize = parse(worker);
            dumps_by_worker[worker - 1] += 1;
            let (item, seq) = rest.split_once(" (source #").expect("item and position");
            let seq: usize = parse(seq.strip_suffix(')').expect("closing parenthesis"));
            assert_eq!(items[seq], parse::<u32>(item), "{method}: {line}");
            dumped.push(seq);
        }
        assert_eq!(dumped, skipped, "{method}: the skips, in source order");

        // Each worker's count of skips agrees with its reports; the counts add up.
        let mut processed = 0;
        for (k, dumps) in dumps_by_worker.iter().enumerate() {
            let counts = run.after(&format!("worker {}: processed ", k + 1));
            let (p, s) = counts.split_once(", skipped ").expect("two counts");
            assert_eq!(parse::<usize>(s), *dumps, "{method}: worker {}", k + 1);
            processed += parse::<usize>(p);
        }
        assert_eq!(processed + skipped.len(), items.len(), "{method}");

        let summary: Vec<&str> = run
            .lines()
            .into_iter()
            .skip_while(|l| !l.starts_with("processed "))
            .collect();
        assert_eq!(
            summary,
            [
                format!(
                    "processed {processed}, skipped {}, of {} items",
                    skipped.len(),
                    items.len()
                ),
                "every source item processed or skipped exactly once: true".to_owned(),
                format!("skipped: {}", show(&skipped)),
                "every processed result right: true".to_owned(),
                format!(
                    "the skips are exactly the repeats of one of the last {WINDOW} processed: true"
                ),
                format!("processed again after leaving the list: {}", show(&again)),
                format!("recent items at the end: {recent:?}"),
                format!("the last {WINDOW} processed: true"),
            ],
            "under {method}"
        );
    }
}

/// The lines a scenario of `lock_queue_scenarios` prints after its heading: ten jobs' blocks,
/// each whole (the lock kept them apart), every index once, then the indices read back from
/// the queue, the most jobs that ran at once (at most `ncores`), and the verdict. Returns the
/// lines after them.
fn check_lock_queue_scenario<'a>(
    lines: &'a [&'a str],
    name: &str,
    ncores: usize,
    what: &str,
) -> &'a [&'a str] {
    const BLOCK: [&str; 6] = ["I", "was", "here", "!!!!", "1111", "einhundertelfzigelf"];
    let size = 10 * (BLOCK.len() + 1);
    assert!(lines.len() >= size + 3, "{what}: {lines:#?}");
    let jobs = &lines[..size];
    let mut runs = Vec::new();
    for block in jobs.chunks(BLOCK.len() + 1) {
        assert_eq!(block[..BLOCK.len()], BLOCK, "{what}: {jobs:#?}");
        runs.push(parse::<u32>(
            block[BLOCK.len()].strip_prefix("By run ").expect("By run"),
        ));
    }
    runs.sort_unstable();
    assert_eq!(runs, (0..10).collect::<Vec<u32>>(), "{what}");

    let rest = &lines[size..];
    let mut back = parse_list(
        rest[0]
            .strip_prefix("read back from the queue: ")
            .unwrap_or_else(|| panic!("{what}: {}", rest[0])),
    );
    back.sort_unstable();
    assert_eq!(back, (0..10).collect::<Vec<u32>>(), "{what}");
    let most: usize = parse(
        rest[1]
            .strip_prefix("most jobs running at once: ")
            .and_then(|r| r.strip_suffix(&format!(" (ncores = {ncores})")))
            .unwrap_or_else(|| panic!("{what}: {}", rest[1])),
    );
    assert!((1..=ncores).contains(&most), "{what}: {most} at once");
    assert_eq!(
        rest[2],
        format!("{name} successful! All 10 indices came back."),
        "{what}"
    );
    &rest[3..]
}

#[test]
fn s24_lock_queue_scenarios() {
    let cpus = multiproc::cpu_count();
    let ncores = cpus.min(3);
    for method in [None, Some("fork"), Some("spawn"), Some("forkserver")] {
        let what = method.unwrap_or("the default start method");
        let args: Vec<&std::ffi::OsStr> = method.iter().map(|m| m.as_ref()).collect();
        let run = run_example("lock_queue_scenarios", &args);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{what}: {}", run.stderr);
        let lines = run.lines();

        assert_eq!(
            lines[0],
            format!(
                "Scenario 1 (Pool, plain Lock and Queue as task arguments, ncores = {ncores}; \
                 CPython: RuntimeError: Lock objects should only be shared between processes \
                 through inheritance):"
            ),
            "{what}"
        );
        let rest = check_lock_queue_scenario(&lines[1..], "Scenario 1", ncores, what);

        assert_eq!(
            rest[0],
            format!(
                "Scenario 1 with Pool(initializer, initargs) giving every worker the lock and \
                 the queue, ncores = {ncores}:"
            ),
            "{what}"
        );
        let rest =
            check_lock_queue_scenario(&rest[1..], "Scenario 1 with the initializer", ncores, what);

        assert_eq!(
            rest[..2],
            [
                "Scenario 2 (Pool, manager's Lock and Queue): not yet, it comes with the manager",
                &format!(
                    "Scenario 3 (single processes, plain Lock and Queue as Process arguments, \
                     ncores = {ncores}: the seed's 3, cpu_count() = {cpus}):"
                ),
            ],
            "{what}"
        );
        let rest = check_lock_queue_scenario(&rest[2..], "Scenario 3", ncores, what);
        assert_eq!(
            rest,
            [
                "Scenario 4 (single processes, manager's Lock and Queue): not yet, it comes with \
              the manager"
            ],
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The pool: S03, S04, S05, S06, S25, S32 (S21 and S24 are above).

/// `1.23s` as seconds.
fn seconds(text: &str) -> f64 {
    parse(
        text.strip_suffix('s')
            .unwrap_or_else(|| panic!("not seconds: {text:?}")),
    )
}

/// One task line of `pool_map`: `<end>s passed...\t<value>\t(pid:<pid>, started at <start>s)`.
#[derive(Debug)]
struct MapTask {
    start: f64,
    end: f64,
    value: u64,
    pid: u32,
}

fn map_task(line: &str) -> MapTask {
    let fields: Vec<&str> = line.split('\t').collect();
    let [end, value, rest] = fields[..] else {
        panic!("not a task line: {line:?}");
    };
    let (pid, start) = rest
        .strip_prefix("(pid:")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(", started at "))
        .unwrap_or_else(|| panic!("not a task line: {line:?}"));
    MapTask {
        start: seconds(start),
        end: seconds(end.strip_suffix(" passed...").expect("passed...")),
        value: parse(value),
        pid: parse(pid),
    }
}

/// Checks that one-second tasks, the `k`th to end (from 0) ending at `ends[k]` seconds after
/// the start, never ran more than three at a time: by `t` seconds, three workers can have
/// ended at most `3 * floor(t)` of them, so the `k`th ended after at least `k / 3 + 1` s.
fn assert_at_most_three_at_once(ends: &[f64], what: &str) {
    for (k, &end) in ends.iter().enumerate() {
        let least = (k / 3 + 1) as f64;
        assert!(
            end >= least - 0.01,
            "{what}: result {k} after {end}s, before {least}s: more than three at once? {ends:?}"
        );
    }
}

#[test]
fn s03_pool_map() {
    let squares: Vec<u64> = (1..=10).map(|x| x * x).collect();
    for method in START_METHODS {
        let run = run_example("pool_map", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        let lines = run.lines();
        assert_eq!(lines.len(), 12, "{method}: {lines:#?}");

        // map's result, in input order, after the ten tasks' own lines.
        assert_eq!(lines[10], format!("{squares:?}"), "{method}");
        let mut tasks: Vec<MapTask> = lines[..10].iter().map(|l| map_task(l)).collect();
        let mut values: Vec<u64> = tasks.iter().map(|t| t.value).collect();
        values.sort_unstable();
        assert_eq!(values, squares, "{method}: every value computed once");

        // Three workers, each running one task at a time.
        let pids: HashSet<u32> = tasks.iter().map(|t| t.pid).collect();
        assert!((1..=3).contains(&pids.len()), "{method}: {pids:?}");
        for t in &tasks {
            assert!(t.end - t.start >= 0.99, "{method}: {t:?} slept 1 s");
        }
        for pid in &pids {
            let mut mine: Vec<&MapTask> = tasks.iter().filter(|t| t.pid == *pid).collect();
            mine.sort_by(|a, b| a.start.total_cmp(&b.start));
            for pair in mine.windows(2) {
                assert!(pair[1].start >= pair[0].end, "{method}: {pair:?}");
            }
        }

        // Three at a time: never more (the ends), and three did run at once (the overlaps).
        let mut ends: Vec<f64> = tasks.iter().map(|t| t.end).collect();
        ends.sort_by(f64::total_cmp);
        assert_at_most_three_at_once(&ends, method);
        let most_at_once = tasks
            .iter()
            .map(|t| {
                tasks
                    .iter()
                    .filter(|u| u.start <= t.start && t.start < u.end)
                    .count()
            })
            .max();
        assert_eq!(most_at_once, Some(3), "{method}: {tasks:#?}");

        // In batches of three, in input order: the first three to start computed 1, 4, 9, ...
        tasks.sort_by(|a, b| a.start.total_cmp(&b.start));
        let batches: Vec<Vec<u64>> = tasks
            .chunks(3)
            .map(|b| {
                let mut v: Vec<u64> = b.iter().map(|t| t.value).collect();
                v.sort_unstable();
                v
            })
            .collect();
        assert_eq!(
            batches,
            [vec![1, 4, 9], vec![16, 25, 36], vec![49, 64, 81], vec![100]],
            "{method}: {tasks:#?}"
        );

        // About 4 s in all: four rounds of one second.
        let total = seconds(run.after("10 tasks on 3 workers in "));
        assert!((3.5..8.0).contains(&total), "{method}: {total}s in all");
        assert!(
            total >= ends[9] - 0.01,
            "{method}: {total}s, last end {}",
            ends[9]
        );
    }
}

/// The README's main-job command runs S03, which [`s03_pool_map`] checks.
#[test]
fn readme_main_job_runs_pool_map() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&readme).expect("read the README");
    let after = &text[text.find("\nMain job (").expect("a main job paragraph")..];
    let command = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block after the main job paragraph");
    assert_eq!(command.trim(), "cargo run --release --example pool_map");
}

#[test]
fn s04_pool_starmap() {
    run_under_every_start_method(
        "pool_starmap",
        &[
            "pairs: [(2, 5), (3, 2), (10, 3), (7, 0)]",
            "starmap(power, pairs) = [32, 9, 1000, 1]",
            "starmap_async(power, pairs).get() = [32, 9, 1000, 1]",
            "map(power_of_pair, pairs) = [32, 9, 1000, 1]",
            r#"words: [("ab", 3), ("-", 5), ("xyz", 1)]"#,
            r#"starmap(repeat, words) = ["ababab", "-----", "xyz"]"#,
        ],
    );
}

#[test]
fn s05_pool_imap() {
    let squares: Vec<u64> = (0..10).map(|x| x * x).collect();
    for method in START_METHODS {
        let run = run_example("pool_imap", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        let lines = run.lines();
        assert_eq!(lines.len(), 12, "{method}: {lines:#?}");

        // imap returns at once, before any one-second task could have ended.
        let returned = seconds(
            lines[0]
                .strip_prefix("imap(f, 0..10) returned after ")
                .unwrap_or_else(|| panic!("{method}: {}", lines[0])),
        );
        assert!(returned < 1.0, "{method}: imap took {returned}s");

        // The results in input order, each with the time it came.
        let mut values = Vec::new();
        let mut times = Vec::new();
        for line in &lines[1..11] {
            let (value, time) = line
                .strip_prefix("next(it) = ")
                .and_then(|l| l.split_once("\tafter "))
                .unwrap_or_else(|| panic!("{method}: {line}"));
            values.push(parse::<u64>(value));
            times.push(seconds(time));
        }
        assert_eq!(values, squares, "{method}");
        assert_eq!(lines[11], format!("all results: {squares:?}"), "{method}");

        // Three at a time: never more, and the first three came together, in the first
        // second's batch (with two at a time the third would need two seconds) ...
        assert_at_most_three_at_once(&times, method);
        assert!(times[2] < 2.0, "{method}: three at a time? {times:?}");
        // ... long before the last, while the later tasks still ran (about 4 s in all).
        assert!(times[9] >= 4.0 - 0.01, "{method}: {times:?}");
        assert!(times[9] < 8.0, "{method}: {times:?}");
    }
}

#[test]
fn s06_pool_apply() {
    for method in START_METHODS {
        let run = run_example("pool_apply", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        let lines = run.lines();
        assert_eq!(lines.len(), 5, "{method}: {lines:#?}");

        // apply blocks until the one-second task has given its result.
        let blocked = seconds(
            lines[0]
                .strip_prefix("apply(f, 2) = 4\tafter ")
                .and_then(|l| l.strip_suffix(" (it waited for the result)"))
                .unwrap_or_else(|| panic!("{method}: {}", lines[0])),
        );
        assert!(blocked >= 1.0, "{method}: apply returned after {blocked}s");

        // apply_async returns at once, not ready; get blocks until it is.
        let (returned, ready) = lines[1]
            .strip_prefix("apply_async(f, 3) returned after ")
            .and_then(|l| l.split_once(": ready() = "))
            .unwrap_or_else(|| panic!("{method}: {}", lines[1]));
        let returned = seconds(returned);
        assert!(returned < 0.5, "{method}: apply_async took {returned}s");
        assert_eq!(ready, "false", "{method}");
        assert!(
            lines[2].starts_with("print(result1, result2): 4 AsyncResult { "),
            "{method}: {}",
            lines[2]
        );
        let waited = seconds(
            lines[3]
                .strip_prefix("result2.get() = 9\tafter ")
                .and_then(|l| l.strip_suffix(" (it waited for the result)"))
                .unwrap_or_else(|| panic!("{method}: {}", lines[3])),
        );
        assert!(waited >= 1.0, "{method}: get returned after {waited}s");
        assert_eq!(lines[4], "ready() = true", "{method}");
        assert!(run.elapsed < Duration::from_secs(20), "{method}");
    }
}

#[test]
fn s25_pool_squares() {
    let run = run_example("pool_squares", &[]);
    run.assert_success();
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert_eq!(run.lines(), ["[1, 4, 9]"]);
    run_under_every_start_method("pool_squares", &["[1, 4, 9]"]);
}

#[test]
fn s32_executor_shared_array() {
    for method in START_METHODS {
        let run = run_example("executor_shared_array", &[method.as_ref()]);
        run.assert_success();
        assert!(run.stderr.is_empty(), "{method}: {}", run.stderr);
        let lines = run.lines();
        assert_eq!(lines.len(), 4, "{method}: {lines:#?}");
        // The tasks' writes into the Array and the Value, read back by the parent.
        assert_eq!(
            lines[..2],
            [
                "squared_nums: [0, 1, 4, 9, 16, 25]",
                "squared_nums_total: 55"
            ],
            "{method}"
        );
        let workers: usize = parse(
            lines[2]
                .strip_prefix("6 tasks ran in ")
                .and_then(|l| l.strip_suffix(" worker processes (max_workers = 3)"))
                .unwrap_or_else(|| panic!("{method}: {}", lines[2])),
        );
        assert!((1..=3).contains(&workers), "{method}: {workers} workers");
        assert_eq!(
            lines[3], "submit after shutdown: cannot schedule new futures after shutdown",
            "{method}"
        );
    }
}
