//! Children for tests: started daemonic under each start method, finished with a deadline.

use std::time::Duration;

use multiproc::{Context, Process, get_context};
use serde::{Serialize, de::DeserializeOwned};

/// The bound of every wait that should succeed.
pub(crate) const LONG: Duration = Duration::from_secs(20);
/// The three start methods, by name.
pub(crate) const METHODS: [&str; 3] = ["fork", "spawn", "forkserver"];

/// Runs `f` with a context of each start method.
pub(crate) fn each_method(mut f: impl FnMut(&Context)) {
    for name in METHODS {
        f(&get_context(name).unwrap());
    }
}

/// Starts a daemonic child (so a failing test never leaves one blocking the exit).
pub(crate) fn start<A, R>(ctx: &Context, f: fn(A) -> R, args: A) -> Process<R>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let mut p = ctx.process(f, args).daemon(true);
    p.start().unwrap();
    p
}

/// Joins a child within [`LONG`] and returns its result; panics (naming the start method) if
/// it did not end or failed.
pub(crate) fn finish<R: DeserializeOwned>(mut p: Process<R>) -> R {
    let m = p.start_method();
    assert!(p.join_timeout(LONG).unwrap(), "{m}: child did not end");
    p.join_result()
        .unwrap_or_else(|e| panic!("{m}: child failed: {e}"))
}

/// Runs `f` on a thread of its own and fails the test if it has not ended within `limit` (so
/// a call with no timeout of its own cannot hang the run); a panic in `f` fails the test with
/// its message.
pub(crate) fn bounded(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => thread.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not end within {limit:?}: something hangs")
        }
    }
}
