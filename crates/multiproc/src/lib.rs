//! # multiproc
//!
//! Python's `multiprocessing`, rebuilt for Rust: the same concepts and names, Rust's types,
//! and none of CPython's traps.
//!
//! This release has processes and start methods, connections, shared memory,
//! synchronisation, queues and the pool; the manager builds on them (see the README's
//! table).
//!
//! ## A first process
//!
//! A child runs a plain function `fn(A) -> R`. The argument goes to the child and the result
//! comes back through serde:
//!
//! ```
//! use multiproc::Process;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[multiproc::main]
//! fn main() -> Result<(), multiproc::ProcessError> {
//!     let mut p = Process::new(square, 12);
//!     p.start()?;
//!     assert_eq!(p.join_result()?, 144);
//!     assert_eq!(p.exitcode()?, Some(0));
//!     Ok(())
//! }
//! ```
//!
//! `#[multiproc::main]` is the **start-up hook**. The default start method, `forkserver`,
//! and `spawn` run the program again to make a child, so the child begins in `main`; the
//! hook, first thing in `main`, turns that run into the child. Without it, starting a
//! process fails at once with an error that says so (nothing runs twice, nothing hangs).
//! `multiproc::init()` as the first line of `main` does the same; in tests, put
//! `#[multiproc::test]` on the test function.
//!
//! ## Start methods
//!
//! | method | how the child starts | needs the hook | safe with threads |
//! |---|---|---|---|
//! | [`StartMethod::Forkserver`] (default) | a clean server process forks it | yes | yes |
//! | [`StartMethod::Spawn`] | the program runs again (`exec`) | yes | yes |
//! | [`StartMethod::Fork`] | a copy of the parent | no | no |
//!
//! ```
//! use multiproc::{get_context, Process};
//!
//! fn pid_of_child(_: ()) -> u32 {
//!     std::process::id()
//! }
//!
//! #[multiproc::main]
//! fn main() {
//!     for method in ["fork", "spawn", "forkserver"] {
//!         let ctx = get_context(method).unwrap();
//!         let mut p = ctx.process(pid_of_child, ());
//!         p.start().unwrap();
//!         let pid = p.join_result().unwrap();
//!         assert_eq!(Some(pid), p.pid().unwrap());
//!     }
//! }
//! ```
//!
//! ## What a child's end tells
//!
//! [`Process::exitcode`] is CPython's: 0, the code of an explicit exit, 1 after a panic,
//! minus the signal number when killed. [`Process::join_result`] gives the value, or a
//! [`ChildError`] that says what happened instead:
//!
//! ```
//! use multiproc::{ChildError, Process, ProcessError, StartMethod};
//!
//! fn fail(_: ()) {
//!     panic!("out of cheese");
//! }
//!
//! # multiproc::set_start_method(StartMethod::Fork).unwrap();
//! let mut p = Process::new(fail, ());
//! p.start().unwrap();
//! match p.join_result() {
//!     Err(ProcessError::Child(ChildError::Panicked { message, .. })) => {
//!         assert_eq!(message, "out of cheese")
//!     }
//!     other => panic!("unexpected: {other:?}"),
//! }
//! assert_eq!(p.exitcode().unwrap(), Some(1));
//! ```
//!
//! ## Shared state
//!
//! [`Value`], [`Array`], [`SharedMemory`] and the synchronisation objects ([`Lock`],
//! [`RLock`], [`Semaphore`], [`Condition`], [`Event`], [`Barrier`]) live in shared memory
//! and can be handed to a child like any argument (or sent in a message), under every start
//! method. A segment is removed when the program's last process lets go of it, however that
//! process ended; a lock whose holder died is taken over by the next acquirer, who is told.
//!
//! ```
//! use multiproc::{Array, Process, StartMethod, Value};
//!
//! fn square_into((i, squares, total): (usize, Array<u64>, Value<u64>)) {
//!     let x = (i * i) as u64;
//!     squares.set(i, x).unwrap();
//!     total.fetch_add(x); // atomic: no lock needed
//! }
//!
//! # multiproc::set_start_method(StartMethod::Fork).unwrap();
//! let squares = Array::<u64>::zeroed(4).unwrap();
//! let total = Value::new(0u64).unwrap();
//! for i in 0..4 {
//!     let mut p = Process::new(square_into, (i, squares.clone(), total.clone()));
//!     p.start().unwrap();
//!     p.join().unwrap();
//! }
//! assert_eq!(squares.to_vec().unwrap(), [0, 1, 4, 9]);
//! assert_eq!(total.load(), 14);
//! ```
//!
//! ## Queues
//!
//! A [`Queue`] carries items of any serde type between any number of processes. A put is in
//! shared memory when it returns: a producer may exit at once without losing anything.
//!
//! ```
//! use multiproc::{Process, Queue, StartMethod};
//!
//! fn worker((tasks, results): (Queue<Option<u64>>, Queue<u64>)) {
//!     while let Ok(Some(n)) = tasks.get() {
//!         results.put(n * n).unwrap();
//!     }
//! }
//!
//! # multiproc::set_start_method(StartMethod::Fork).unwrap();
//! let tasks = Queue::new(0).unwrap();
//! let results = Queue::new(0).unwrap();
//! let mut workers: Vec<_> = (0..2)
//!     .map(|_| Process::new(worker, (tasks.clone(), results.clone())))
//!     .collect();
//! for w in &mut workers {
//!     w.start().unwrap();
//! }
//! for n in 1..=10 {
//!     tasks.put(Some(n)).unwrap();
//! }
//! for _ in &workers {
//!     tasks.put(None).unwrap(); // one stop sign per worker
//! }
//! let total: u64 = (0..10).map(|_| results.get().unwrap()).sum();
//! assert_eq!(total, 385);
//! for w in &mut workers {
//!     w.join().unwrap();
//! }
//! ```
//!
//! ## A pool of workers
//!
//! A [`Pool`] runs tasks (`fn(A) -> R`) on worker processes: CPython's `map`, `imap`,
//! `apply_async` and the executor's `submit`. A worker that dies fails only the task it was
//! running, and is replaced; a panic comes back as an error and the worker goes on.
//!
//! ```
//! use multiproc::{Pool, StartMethod, TaskError};
//!
//! fn collatz_steps(mut n: u64) -> u32 {
//!     let mut steps = 0;
//!     while n != 1 {
//!         n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
//!         steps += 1;
//!     }
//!     steps
//! }
//!
//! fn crash(_: ()) {
//!     std::process::abort();
//! }
//!
//! # multiproc::set_start_method(StartMethod::Fork).unwrap();
//! let pool = Pool::new(2).unwrap();
//! let steps = pool.map(collatz_steps, 1..=10_000).unwrap();
//! assert_eq!(steps[26], 111); // 27 takes 111 steps
//! assert!(matches!(pool.apply(crash, ()), Err(TaskError::WorkerDied { .. })));
//! assert_eq!(pool.apply(collatz_steps, 27).unwrap(), 111); // a new worker took over
//! let mut lazy = pool.imap(collatz_steps, 1..).unwrap(); // endless input, constant memory
//! assert_eq!(lazy.next().unwrap().unwrap(), 0);
//! ```
//!
//! ## Guide
//!
//! [`guide`] maps Python's API onto this one, name by name.

#![deny(unsafe_code)]
#![warn(missing_docs)]
// The start-up hook is about `fn main`; its examples must show it.
#![allow(clippy::needless_doctest_main)]

// Lets the crate's own unit tests use `#[multiproc_macros::test]`, whose expansion names
// `::multiproc`.
#[cfg(test)]
extern crate self as multiproc;

mod bootstrap;
mod callable;
pub mod codec;
pub mod connection;
mod context;
mod error;
pub mod guide;
pub mod pool;
mod process;
pub mod queue;
pub mod shm;
mod start;
pub mod sync;
mod sys;

pub use bootstrap::init;
/// bytemuck, whose traits say what a [`Value`] or [`Array`] can hold; its derives work through
/// this re-export with `#[bytemuck(crate = "multiproc::bytemuck")]`.
pub use bytemuck::{self, Pod, Zeroable};
pub use codec::CodecError;
pub use connection::{Connection, pipe, wait};
pub use context::{
    Context, DEFAULT_START_METHOD, StartMethod, ensure_forkserver, get_all_start_methods,
    get_context, get_start_method, set_start_method, set_start_method_force,
};
pub use error::{ChildError, ContextError, ProcessError};
/// indicatif, whose progress bars [`MapOptions::progress_bar`] takes.
#[cfg(feature = "progress")]
pub use indicatif;
pub use multiproc_macros::{main, test};
pub use pool::{
    AsyncResult, IMap, IMapUnordered, MapOptions, Pool, PoolBuilder, PoolError, Retry, TaskError,
    TaskFn, WorkerStats,
};
pub use process::tree::{
    CurrentProcess, ParentProcess, cpu_count, current_process, parent_process,
};
pub use process::{ChildProcess, Process, active_children};
pub use queue::{GetError, JoinableQueue, PutError, Queue, QueueBuilder, QueueError, SimpleQueue};
pub use shm::{
    Array, ArrayError, ArrayGuard, ArrayLockError, AtomicElement, AtomicNumber, Element, RawArray,
    RawValue, Value, ValueGuard, ValueLock, ValueLockGuard,
};
pub use shm::{ListError, ListItem, ShareableList, SharedMemory, SharedMemoryBuilder, ShmError};
pub use sync::{
    AcquireError, Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock, RLockGuard,
    Semaphore, SyncError,
};

#[doc(hidden)]
pub mod __private {
    pub use crate::bootstrap::test_hook;
}

/// Thin wrappers of the wire parsers for `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod __fuzz {
    use crate::connection::auth::{self, Digest};
    use crate::connection::{AuthenticationError, framing};

    /// `framing::parse_header`: `Ok(None)` if incomplete, `Ok(Some((size, len)))`, or
    /// `Err(length)` for a corrupt header.
    pub fn parse_header(buf: &[u8]) -> Result<Option<(usize, u64)>, i32> {
        match framing::parse_header(buf) {
            Ok(framing::Header::Incomplete) => Ok(None),
            Ok(framing::Header::Complete { size, len }) => Ok(Some((size, len))),
            Err(e) => Err(e.0),
        }
    }

    /// `framing::write_header`: the header for a payload of `len` bytes.
    pub fn write_header(len: u64) -> Vec<u8> {
        let mut h = [0; framing::HEADER_MAX];
        let at = framing::write_header(len, &mut h);
        h[at..].to_vec()
    }

    /// `auth::digest_and_payload`, the digest by name (`None`: legacy, bare MD5).
    pub fn digest_and_payload(
        message: &[u8],
    ) -> Result<(Option<&'static str>, &[u8]), AuthenticationError> {
        let (d, payload) = auth::digest_and_payload(message)?;
        Ok((d.map(Digest::name), payload))
    }

    /// `auth::parse_challenge`.
    pub fn parse_challenge(message: &[u8]) -> Result<&[u8], AuthenticationError> {
        auth::parse_challenge(message)
    }

    /// `auth::response`.
    pub fn response(authkey: &[u8], message: &[u8]) -> Result<Vec<u8>, AuthenticationError> {
        auth::response(authkey, message)
    }

    /// `auth::verify`.
    pub fn verify(
        authkey: &[u8],
        message: &[u8],
        answer: &[u8],
    ) -> Result<(), AuthenticationError> {
        auth::verify(authkey, message, answer)
    }
}
