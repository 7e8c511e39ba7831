//! A pool worker: the child process that runs tasks. It is an ordinary [`Process`] whose
//! target is [`worker_main`]; its arguments are its two queues and its initializer.
//!
//! The loop: take a record from its own task queue, run the task (catching a panic per
//! item), put the result record into the pool's result queue, and go on, until a STOP
//! record, its `maxtasksperchild`, or its parent's end (a pool worker is a daemon).

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::RawValue;
use crate::callable::{TaskCallable, TrustedFn};
use crate::queue::Queue;
use crate::shm::segment::Segment;

use super::engine::Record;
use super::wire::{self, ResultHeader, TaskHeader};

/// A worker's instructions: a Process argument.
#[derive(Serialize, Deserialize)]
#[serde(bound = "I: Serialize + DeserializeOwned + 'static")]
pub(crate) struct WorkerBoot<I: Serialize + DeserializeOwned + 'static, S: 'static> {
    pub(crate) serial: u32,
    pub(crate) tasks: Queue<Record>,
    pub(crate) results: Queue<Record>,
    /// Tasks before the worker exits (0: no limit).
    pub(crate) maxtasks: u64,
    pub(crate) init: Init<I, S>,
    /// Runs with the worker's state when it ends cleanly.
    pub(crate) exit: Option<TrustedFn<fn(S)>>,
    /// What the worker is doing, for the pool to read.
    pub(crate) status: Status,
}

/// Two words a worker writes and its pool reads: the id of the task it runs (0 between
/// tasks) and when it started it (`CLOCK_MONOTONIC` nanoseconds). The start is written
/// before the id, and the pool reads the id on both sides of the start, so a start it
/// accepts is that task's.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) task: RawValue<u64>,
    pub(crate) started: RawValue<u64>,
}

/// The task word of a worker that has not finished its initializer yet.
const INITIALIZING: u64 = u64::MAX;

impl Status {
    pub(crate) fn new() -> Result<Self, crate::ShmError> {
        Ok(Self {
            task: RawValue::new(INITIALIZING)?,
            started: RawValue::new(0)?,
        })
    }

    /// The task running now and when it started, if any.
    pub(crate) fn running(&self) -> Option<(u64, u64)> {
        let id = self.task.load();
        let started = self.started.load();
        (id != 0 && id != INITIALIZING && self.task.load() == id).then_some((id, started))
    }

    /// The worker has not finished its initializer (or not even begun it).
    pub(crate) fn initializing(&self) -> bool {
        self.task.load() == INITIALIZING
    }
}

/// A worker's initializer (which makes its state) and its arguments.
pub(crate) type Init<I, S> = Option<(TrustedFn<fn(I) -> S>, I)>;

static WORKER_ID: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// The state the initializer made, for tasks that take it.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// In a pool worker, its id in the pool (1, 2, ...; a replacement gets a new one); `None`
/// elsewhere.
///
/// # Examples
///
/// ```
/// fn whoami(_: ()) -> Option<u32> {
///     multiproc::pool::worker_id()
/// }
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = multiproc::Pool::new(1)?;
/// assert_eq!(pool.apply(whoami, ())?, Some(1));
/// assert_eq!(multiproc::pool::worker_id(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn worker_id() -> Option<u32> {
    match WORKER_ID.load(Ordering::Relaxed) {
        0 => None,
        id => Some(id),
    }
}

/// Runs `f` on this worker's state. Panics (which fails the task, not the worker) if the
/// worker has no state of type `S`.
pub(crate) fn with_worker_state<S: 'static, T>(f: impl FnOnce(&mut S) -> T) -> T {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut().and_then(|b| b.downcast_mut::<S>()) {
            Some(state) => f(state),
            None => panic!(
                "this task takes a worker state of type {}, which this pool's workers do not \
                 have (see PoolBuilder::worker_state)",
                std::any::type_name::<S>()
            ),
        }
    })
}

/// The worker's whole life.
pub(crate) fn worker_main<I, S>(boot: WorkerBoot<I, S>)
where
    I: Serialize + DeserializeOwned + 'static,
    S: 'static,
{
    let WorkerBoot {
        serial,
        tasks,
        results,
        maxtasks,
        init,
        exit,
        status,
    } = boot;
    WORKER_ID.store(serial, Ordering::Relaxed);
    if let Some((TrustedFn(f), args)) = init {
        match crate::bootstrap::catch_panic(|| f(args)) {
            Ok(state) => STATE.with(|cell| *cell.borrow_mut() = Some(Box::new(state))),
            Err(panic) => {
                let mut rec = Vec::new();
                ResultHeader {
                    id: 0,
                    kind: wire::RESULT_INIT_FAILED,
                    worker: serial,
                    busy_ns: 0,
                    names_len: 0,
                }
                .write(&mut rec);
                if <crate::codec::Postcard as crate::codec::Codec>::encode(&panic, &mut rec).is_ok()
                {
                    let _ = results.put_raw(&rec, &[], true, None);
                }
                crate::bootstrap::exit_child(1);
            }
        }
    }
    status.task.store(0);
    let mut record = Vec::new();
    let mut out = Vec::new();
    let mut done = 0u64;
    loop {
        record.clear();
        let Ok(fds) = tasks.take_raw(true, None, &mut record) else {
            // The queue failed: nothing more can reach this worker.
            crate::bootstrap::exit_child(1);
        };
        let Some((h, body)) = TaskHeader::read(&record) else {
            continue;
        };
        if h.kind == wire::TASK_STOP {
            break;
        }
        let started = Instant::now();
        status.started.store(crate::sys::monotonic_ns());
        status.task.store(h.id);
        out.clear();
        out.resize(wire::HEADER, 0);
        let run = TaskCallable::from_offsets(h.runner, h.target)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                // Each item's panic is caught inside; this catches one while decoding the
                // items or encoding the results (a `Serialize` or `Deserialize` that panics).
                crate::bootstrap::catch_panic(|| c.call(body, fds, &mut out))
                    .map_err(|(message, at)| match at {
                        Some(at) => format!("panicked at {at}: {message}"),
                        None => format!("panicked: {message}"),
                    })?
                    .map_err(|e| e.to_string())
            });
        done += 1;
        let mut names_len = 0;
        let (kind, fds, by_name) = match run {
            Ok(ok) => {
                if !ok.by_name.is_empty() {
                    let before = out.len();
                    if <crate::codec::Postcard as crate::codec::Codec>::encode(
                        &ok.by_name,
                        &mut out,
                    )
                    .is_ok()
                    {
                        names_len = (out.len() - before) as u64;
                    }
                }
                let kind = if ok.panicked {
                    wire::RESULT_PANICKED
                } else {
                    wire::RESULT_DONE
                };
                (kind, ok.fds, ok.by_name)
            }
            Err(message) => {
                // (A failed encoding may have left `out` empty: postcard takes the buffer.)
                out.clear();
                out.resize(wire::HEADER, 0);
                out.extend_from_slice(message.as_bytes());
                (wire::RESULT_FAILED, Vec::new(), Vec::new())
            }
        };
        let header = ResultHeader {
            id: h.id,
            kind,
            worker: serial,
            busy_ns: started.elapsed().as_nanos() as u64,
            names_len,
        };
        header.rewrite(&mut out);
        if let Err(e) = results.put_raw(&out, &fds, true, None) {
            // The result itself cannot go (too many descriptors for the socket, ...): say so.
            Segment::take_back_transits(&by_name);
            let message = match e {
                crate::queue::ring::PutFail::Error(e) => e.to_string(),
                crate::queue::ring::PutFail::Full => "the result queue is full".to_owned(),
            };
            // (A failed encoding may have left `out` empty: postcard takes the buffer.)
            out.clear();
            out.resize(wire::HEADER, 0);
            out.extend_from_slice(format!("the result could not be sent: {message}").as_bytes());
            ResultHeader {
                kind: wire::RESULT_FAILED,
                names_len: 0,
                ..header
            }
            .rewrite(&mut out);
            if results.put_raw(&out, &[], true, None).is_err() {
                // Not even that: the pool learns of it as this worker's death.
                crate::bootstrap::exit_child(1);
            }
        }
        status.task.store(0);
        if maxtasks != 0 && done >= maxtasks {
            break;
        }
    }
    if let Some(TrustedFn(hook)) = exit {
        let state = STATE.with(|cell| cell.borrow_mut().take());
        if let Some(state) = state.and_then(|b| b.downcast::<S>().ok()) {
            hook(*state);
        }
    }
}
