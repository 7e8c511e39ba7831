//! S40 `spawn_without_init` (a CPython trap): CPython's spawn without the
//! `if __name__ == '__main__'` guard fails with a long bootstrapping error. The equivalent
//! mistake here, a `main` without `#[multiproc::main]`, gets a short error from `start()`
//! that names the fix; nothing runs twice and nothing hangs. The fork start method needs no
//! hook.

use multiproc::get_context;

fn answer(_: ()) -> u32 {
    42
}

// Deliberately no #[multiproc::main] here.
fn main() {
    println!("main started (pid {})", std::process::id());
    for method in ["spawn", "forkserver"] {
        let mut p = get_context(method)
            .expect("a known method")
            .process(answer, ());
        match p.start() {
            Err(e) => println!("{method}: start() failed: {e}"),
            Ok(()) => println!("{method}: started?! result {:?}", p.join_result()),
        }
    }
    let mut p = get_context("fork")
        .expect("a known method")
        .process(answer, ());
    let result = p.start().and_then(|()| p.join_result());
    println!("fork: needs no hook: {result:?}");
}
