//! S29 `shm_no_leak` (**trap** in CPython: its resource tracker warns at shutdown of "leaked
//! shared_memory objects", and a process killed with SIGKILL leaves its segments behind).
//!
//! Here the parent and three workers create, use and drop shared memory; one worker is killed
//! with SIGKILL while it holds its own segment and the parent's; another hands its segment
//! to the parent through a pipe and exits before the parent reads it. Afterwards nothing is
//! left in /dev/shm and nothing is printed on standard error: the example checks that and
//! says so. (A small tracker process unlinks each segment when the last process of the
//! program that uses it lets go, however that process ended.)

use std::path::Path;
use std::time::{Duration, Instant};

use multiproc::{Connection, Process, SharedMemory};

/// What the parent tells each worker.
type Job = (usize, SharedMemory, Connection<SharedMemory>, bool);

/// Reads the parent's segment, makes one of its own and sends it to the parent; the last
/// worker then waits to be killed, holding both.
fn worker((n, parents, mut conn, wait_to_be_killed): Job) {
    let mut greeting = vec![0u8; 21];
    parents.read(0, &mut greeting).expect("read");
    let mine = SharedMemory::create(1024).expect("create");
    let text = format!("made by worker {n}");
    mine.write(0, text.as_bytes()).expect("write");
    conn.send(&mine).expect("send");
    if wait_to_be_killed {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn text_of(shm: &SharedMemory, len: usize) -> String {
    String::from_utf8_lossy(&shm.to_vec()[..len]).into_owned()
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let parents = SharedMemory::create(64)?;
    parents.write(0, b"hello from the parent")?;
    println!("the parent made a segment of {} bytes", parents.size());
    let mut names = vec![parents.name().to_owned()];

    let mut workers = Vec::new();
    let mut received = Vec::new();
    for n in 1..=3 {
        let (mut here, there) = multiproc::pipe::<SharedMemory>(true)?;
        let mut p = Process::new(worker, (n, parents.clone(), there, n == 3));
        p.start()?;
        let theirs = here.recv_timeout(Duration::from_secs(20))?;
        names.push(theirs.name().to_owned());
        received.push(theirs);
        workers.push(p);
    }
    let killed = workers.pop().expect("three workers");
    killed.kill()?;
    killed.join()?;
    println!(
        "worker 3 was killed with SIGKILL (exit code {:?}) holding two segments",
        killed.exitcode()?
    );
    for p in workers {
        p.join()?;
    }
    println!("workers 1 and 2 have exited");
    for (n, shm) in received.iter().enumerate() {
        println!(
            "worker {}'s segment, read after its end: '{}'",
            n + 1,
            text_of(shm, 16)
        );
    }
    println!(
        "the parent's segment after the kill: '{}'",
        text_of(&parents, 21)
    );
    drop(received);
    drop(parents);
    println!("every handle dropped");

    // The tracker unlinks asynchronously: give it a moment (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left: Vec<&String> = names
            .iter()
            .filter(|n| Path::new("/dev/shm").join(n).exists())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("segments: {}", names.join(" "));
    if left.is_empty() {
        println!("left in /dev/shm: none");
    } else {
        println!("left in /dev/shm: {left:?}");
        std::process::exit(1);
    }
    Ok(())
}
