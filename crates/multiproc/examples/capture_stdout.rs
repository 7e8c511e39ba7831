//! S26 `capture_stdout`: each child writes its own output to `<pid>.out` (the seed sets
//! `sys.stdout = open(str(os.getpid()) + ".out", "w")`): its module and name, its parent's
//! pid, its own pid, and 'hello bob' / 'hello fred'.
//!
//! `capture_stdout [DIR]` writes the files into DIR (default: a new temp directory) and
//! prints them.

use std::io::Write;
use std::path::PathBuf;

use multiproc::{Process, ProcessError};

fn info(out: &mut impl Write, title: &str) -> std::io::Result<()> {
    let me = multiproc::current_process();
    // The process that started this one (under forkserver the OS parent is the server).
    let parent = multiproc::parent_process().map_or(0, |p| p.pid());
    writeln!(out, "{title}")?;
    writeln!(out, "module name: {}", module_path!())?;
    writeln!(out, "process name: {}", me.name())?;
    writeln!(out, "parent process: {parent}")?;
    writeln!(out, "process id: {}", me.pid())
}

/// Writes this child's output to `<dir>/<pid>.out`; returns that path.
fn f((dir, name): (PathBuf, String)) -> PathBuf {
    let path = dir.join(format!("{}.out", std::process::id()));
    let mut out = std::fs::File::create(&path).expect("create the output file");
    info(&mut out, "function f").expect("write");
    writeln!(out, "hello {name}").expect("write");
    path
}

#[multiproc::main]
fn main() -> Result<(), ProcessError> {
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("capture_stdout-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    println!("main process id: {}", std::process::id());

    let mut p = Process::new(f, (dir.clone(), "bob".to_owned()));
    p.start()?;
    let mut q = Process::new(f, (dir, "fred".to_owned()));
    q.start()?;
    let files = [p.join_result()?, q.join_result()?];

    for path in files {
        println!("--- {}", path.display());
        print!("{}", std::fs::read_to_string(&path)?);
    }
    Ok(())
}
