//! S20 `start_methods`: fork, spawn and forkserver side by side. The parent holds a large
//! structure (200 MB, touched so it is resident); each child prints its resident memory.
//! The fork child is a copy of the parent, so it is large; spawn and forkserver children
//! start from a fresh program image, so they are small. Choosing the start method a second
//! time is an error.

use multiproc::{StartMethod, get_context};

const BIG: usize = 200 * 1024 * 1024;

/// This process's resident memory in kB, from /proc/self/status.
fn vm_rss_kb(_: ()) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS in kB")
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Choose once; a second choice is refused (CPython: 'context has already been set').
    multiproc::set_start_method(StartMethod::Forkserver)?;
    if let Err(e) = multiproc::set_start_method(StartMethod::Spawn) {
        println!("set_start_method a second time: error: {e}");
    }

    // Filled with ones, not zeros, so every page is really written and resident.
    let big = vec![1u8; BIG];
    println!("parent {}: VmRSS {} kB", std::process::id(), vm_rss_kb(()));

    for method in ["fork", "spawn", "forkserver"] {
        let ctx = get_context(method)?;
        let mut child = ctx.process(vm_rss_kb, ());
        child.start()?;
        let pid = child.pid()?.expect("started");
        let rss = child.join_result()?;
        println!(
            "{method}: {} -> {pid} child VmRSS {rss} kB",
            std::process::id()
        );
    }

    // Keep the structure alive (and resident) until every child has reported.
    std::hint::black_box(&big);
    Ok(())
}
