//! The pool's engine, free of the task types: workers, the tasks waiting for them, what each
//! worker holds, and the results as they come back. The typed layer (`mod.rs`, `result.rs`)
//! encodes tasks and decodes results; everything here moves bytes.
//!
//! Who does what (see `README.md` in this directory):
//!
//! - **Dispatching** (moving waiting tasks into workers' queues) is done by whichever thread
//!   holds the state lock when something changes: a submission, a result, a worker's exit.
//! - **Collecting** (reading the result queue) is a role, held by one thread at a time: a
//!   caller waiting for its results takes it, so a result goes straight to the thread that
//!   wants it; when nobody waits, the background thread takes it (after a grace period, or at
//!   once when callbacks or futures need it).
//! - **Watching** (noticing that a worker ended, and enforcing time limits) is the watcher
//!   thread's: it posts an `EXITED` record into the result queue, so the collector learns of
//!   the exit after every result the worker sent before it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::error::{ChildError, ProcessError};
use crate::process::Process;
use crate::queue::Queue;
use crate::queue::ring::{PutFail, TakeFail};
use crate::shm::segment::{Segment, Transit};
use crate::sys;

use super::wire::{self, ResultHeader, TaskHeader};
use super::worker::Status;
use super::{Encoded, PoolError, Retry, TaskError, WorkerStats};
use crate::queue::QueueError;

/// A map keyed by the pool's own ids (tasks, batches, chunk indices): sequential numbers
/// that no peer chooses, so a multiplicative hash does (SipHash, std's default, guards against
/// chosen keys and cost a fifth of the caller's time per task in a chunksize-1 map).
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of one `u64`: spreads sequential ids over the high bits (which the
/// table's control bytes use) as well as the low ones.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The marker type of the pool's internal queues, whose records are raw bytes.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Record;

/// How long the background thread lets results wait for a caller to collect them before it
/// collects them itself (callbacks and futures do not wait).
const GRACE: Duration = Duration::from_millis(2);

/// The longest sleep of the background threads: they notice a dropped pool within this.
const TICK: Duration = Duration::from_millis(50);

/// How much work (by the running average of task time) a worker's queue should hold, so that
/// a worker finishing a task finds the next one waiting without hoarding long tasks.
const QUEUE_AHEAD: Duration = Duration::from_micros(200);

/// How long after a failed worker start the pool tries again.
const START_RETRY: Duration = Duration::from_millis(100);

/// How often the watcher looks whether a task with a time limit has started.
const LIMIT_LOOK: Duration = Duration::from_millis(5);

/// The most tasks a worker's queue holds.
const MAX_DEPTH: usize = 64;

/// How many consecutive initializer failures (with no task finished in between) break the
/// pool, beyond the number of its processes: an initializer that always fails would
/// otherwise replace workers forever.
const INIT_FAILURES_SPARE: u32 = 2;

/// Makes a worker process (not yet started) for a serial number and the queues it uses.
pub(crate) type Factory =
    Box<dyn Fn(WorkerQueues) -> Result<Process<()>, ProcessError> + Send + Sync>;

/// The queues a new worker gets.
pub(crate) struct WorkerQueues {
    pub(crate) serial: u32,
    pub(crate) tasks: Queue<Record>,
    pub(crate) results: Queue<Record>,
    pub(crate) status: Status,
}

/// The pool's life: CPython's RUN, CLOSE, TERMINATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    Closed,
    Terminated,
}

/// The encoded result of one task: one entry per item.
pub(crate) struct Raw {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) items: u32,
    /// Every item returned: the bytes are one postcard sequence of values (otherwise one
    /// entry per item, tagged).
    pub(crate) all_returned: bool,
    /// Shared objects the results name, in transit until decoded: a result thrown away
    /// undecoded takes their transits back (when dropped), so their memory is not kept.
    pub(crate) by_name: Vec<Transit>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        if !self.by_name.is_empty() {
            Segment::take_back_transits(&self.by_name);
        }
    }
}

/// How one task ended.
pub(crate) type Outcome = Result<Raw, TaskError>;

/// Why the pool killed a worker on purpose.
#[derive(Clone, Copy, Debug)]
enum KillReason {
    TimeLimit(Duration),
    Cancelled,
}

/// What is left of a task's retry policy.
#[derive(Clone, Copy, Debug)]
struct RetryLeft {
    left: u32,
    on_crash: bool,
    on_error: bool,
}

/// A task the pool knows of: waiting (it holds its record) or in a worker's queue.
struct Task {
    batch: u64,
    /// Its place in the batch.
    index: u64,
    /// The record (header and body) while the task waits in the pool.
    record: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// Shared objects its arguments name (taken back if it is never sent).
    by_name: Vec<Transit>,
    /// The worker whose queue holds it.
    worker: Option<u32>,
    /// How many items it holds.
    count: u32,
    time_limit: Option<Duration>,
    killed: Option<KillReason>,
    /// Attempts left; a task that may be retried keeps its record and descriptors.
    retry: Option<RetryLeft>,
}

/// What a batch does when it completes, in the thread that completed it.
pub(crate) type OnComplete = Box<dyn FnOnce(&mut BatchOutcomes) + Send>;

/// The finished tasks of a batch, by index, not yet taken by its consumer.
#[derive(Default)]
pub(crate) struct BatchOutcomes {
    pub(crate) ready: IdMap<Outcome>,
    /// Indices in the order their tasks finished (for `imap_unordered`).
    pub(crate) arrival: VecDeque<u64>,
    /// Whatever the completion callback made of them (a decoded value).
    pub(crate) decoded: Option<Box<dyn std::any::Any + Send>>,
}

/// A group of tasks submitted together (one `apply_async`, one `map`), with one consumer.
struct Batch {
    /// Tasks submitted so far.
    submitted: u64,
    /// Tasks finished so far.
    finished: u64,
    /// Whether more tasks may come (lazy input still being read).
    open: bool,
    /// Whether some task failed (an error, or an item that panicked).
    failed: bool,
    outcomes: BatchOutcomes,
    waker: Option<Waker>,
    on_complete: Option<OnComplete>,
    /// Whether the consumer still wants it (a dropped handle discards its results).
    wanted: bool,
    /// Counted in `State::urgent`: a callback or a future waits for it.
    urgent: bool,
    /// Its completion callback is running (its outcomes are out of the batch meanwhile).
    completing: bool,
    /// Some of its tasks were cancelled.
    cancelled: bool,
}

impl Batch {
    fn new(on_complete: Option<OnComplete>) -> Self {
        Self {
            submitted: 0,
            finished: 0,
            open: true,
            failed: false,
            outcomes: BatchOutcomes::default(),
            waker: None,
            urgent: on_complete.is_some(),
            on_complete,
            wanted: true,
            completing: false,
            cancelled: false,
        }
    }

    /// Every task has finished.
    fn finished_all(&self) -> bool {
        !self.open && self.finished == self.submitted
    }

    /// Every task has finished and the completion callback (if any) has run.
    fn complete(&self) -> bool {
        self.finished_all() && self.on_complete.is_none() && !self.completing
    }
}

/// One live worker as the pool sees it.
struct Worker {
    serial: u32,
    process: Process<()>,
    pid: u32,
    tasks: Queue<Record>,
    /// A copy of its pidfd, for the watcher.
    sentinel: Arc<OwnedFd>,
    /// What it runs now, as it says.
    status: Status,
    /// Tasks in its queue or running, oldest (the one running) first.
    assigned: VecDeque<u64>,
    /// Tasks it may still be given (`maxtasksperchild`); `u64::MAX` without a limit.
    budget: u64,
    /// It was sent STOP, was killed, or has ended: it gets nothing more.
    stopping: bool,
    /// The watcher has posted its exit.
    exit_posted: bool,
    /// Its initializer failed (it said so before exiting).
    init_failed: Option<(String, Option<String>)>,
    stats: WorkerStats,
    born: Instant,
}

/// Everything the engine guards with one lock.
struct State {
    phase: Phase,
    workers: Vec<Worker>,
    next_serial: u32,
    pending: VecDeque<u64>,
    tasks: IdMap<Task>,
    batches: IdMap<Batch>,
    next_task: u64,
    next_batch: u64,
    /// Threads waiting on `changed`.
    waiters: usize,
    /// Batches whose completion must not wait for a caller (callbacks, futures).
    urgent: usize,
    last_collect: Instant,
    /// Running average of how long a task runs in a worker, in nanoseconds.
    avg_task_ns: u64,
    init_failures: u32,
    broken: Option<String>,
    /// Figures of workers that have ended.
    retired: Vec<WorkerStats>,
    /// The background threads should end.
    shutdown: bool,
    /// The executor's `shutdown` was called (submissions get its message).
    executor_shut_down: bool,
    /// `join` has let the workers go: nothing more can run.
    joined: bool,
    /// Workers being started (outside the lock).
    starting: usize,
    /// When starting a worker last failed.
    start_failed: Option<Instant>,
    /// The background thread sleeps long while work is left (someone else collected).
    background_idle: bool,
}

impl State {
    /// A new worker serial number.
    fn take_serial(&mut self) -> u32 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        serial
    }
}

/// The engine shared by a [`Pool`](super::Pool), its results and its background threads.
pub(crate) struct Engine {
    state: Mutex<State>,
    /// Signalled when a task finishes, the collecting role is released, or the pool ends.
    changed: Condvar,
    /// Wakes the background collector.
    background: Condvar,
    results: Queue<Record>,
    /// The collecting role.
    collecting: Mutex<()>,
    /// Someone holds the collecting role (so the background thread need not look often).
    role_taken: AtomicBool,
    factory: Factory,
    processes: usize,
    maxtasks: u64,
    /// Names workers: `ForkPoolWorker`, ...
    worker_name: String,
    /// The pool's retry policy, for tasks that have none of their own.
    retry: Option<Retry>,
}

/// Options of one task.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TaskOpts {
    pub(crate) time_limit: Option<Duration>,
    pub(crate) retry: Option<Retry>,
}

/// Locks a mutex whatever happened to a thread that held it: the pool's state stays
/// consistent at every unlock, and a panicking callback runs outside the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Starts `processes` workers and the background threads.
    pub(crate) fn start(
        processes: usize,
        maxtasks: u64,
        worker_name: String,
        retry: Option<Retry>,
        factory: Factory,
    ) -> Result<Arc<Self>, PoolError> {
        let results = Queue::<Record>::builder()
            .capacity(1 << 20)
            .build()
            .map_err(|e| PoolError::Queue(Arc::new(e)))?;
        let engine = Arc::new(Self {
            state: Mutex::new(State {
                phase: Phase::Running,
                workers: Vec::with_capacity(processes),
                next_serial: 1,
                pending: VecDeque::new(),
                tasks: IdMap::default(),
                batches: IdMap::default(),
                next_task: 1,
                next_batch: 1,
                waiters: 0,
                urgent: 0,
                last_collect: Instant::now(),
                avg_task_ns: 0,
                init_failures: 0,
                broken: None,
                retired: Vec::new(),
                shutdown: false,
                executor_shut_down: false,
                joined: false,
                starting: 0,
                start_failed: None,
                background_idle: false,
            }),
            changed: Condvar::new(),
            background: Condvar::new(),
            results,
            collecting: Mutex::new(()),
            role_taken: AtomicBool::new(false),
            factory,
            processes,
            maxtasks,
            worker_name,
            retry,
        });
        {
            let mut st = lock(&engine.state);
            for _ in 0..processes {
                if let Err(e) = engine.start_worker(&mut st) {
                    st.shutdown = true;
                    drop(st);
                    engine.terminate();
                    return Err(e);
                }
            }
        }
        let weak = Arc::downgrade(&engine);
        let watcher = std::thread::Builder::new()
            .name("multiproc-pool-watch".to_owned())
            .spawn(move || watch(&weak));
        let weak = Arc::downgrade(&engine);
        let collector = watcher.and_then(|_| {
            std::thread::Builder::new()
                .name("multiproc-pool-results".to_owned())
                .spawn(move || background(&weak))
        });
        if let Err(e) = collector {
            engine.terminate();
            engine.shutdown();
            return Err(PoolError::Thread(Arc::new(e)));
        }
        Ok(engine)
    }

    pub(crate) fn processes(&self) -> usize {
        self.processes
    }

    pub(crate) fn phase(&self) -> Phase {
        lock(&self.state).phase
    }

    /// Starts one worker into `st.workers`.
    fn start_worker(&self, st: &mut State) -> Result<(), PoolError> {
        let serial = st.take_serial();
        let w = self.make_worker(serial)?;
        st.workers.push(w);
        Ok(())
    }

    /// Starts workers until the pool has its number again: with no lock held while a
    /// process starts (a fork takes std's output locks, which a thread waiting for the state
    /// lock may hold). A start that fails is tried again at the next change after
    /// `START_RETRY`; with no worker left, the tasks waiting fail with its error.
    fn replenish(&self) {
        loop {
            let serial = {
                let mut st = lock(&self.state);
                let done = st.phase == Phase::Terminated
                    || st.joined
                    || st.broken.is_some()
                    || st.workers.len() + st.starting >= self.processes
                    || st.start_failed.is_some_and(|at| at.elapsed() < START_RETRY);
                if done {
                    return;
                }
                st.starting += 1;
                st.take_serial()
            };
            let made = self.make_worker(serial);
            let mut st = lock(&self.state);
            st.starting -= 1;
            match made {
                Ok(w) => {
                    if st.phase == Phase::Terminated || st.joined {
                        let _ = w.process.kill();
                        return;
                    }
                    st.workers.push(w);
                    st.start_failed = None;
                    self.dispatch(&mut st);
                }
                Err(e) => {
                    st.start_failed = Some(Instant::now());
                    if st.workers.is_empty() && st.starting == 0 {
                        // No worker, and none can be made now: what waits fails rather
                        // than waiting for ever.
                        self.fail_pending(&mut st, &TaskError::Pool(e));
                    }
                    drop(st);
                    self.run_deferred_if_any();
                    return;
                }
            }
            drop(st);
            self.run_deferred_if_any();
        }
    }

    /// Whether the pool is short of workers (so [`replenish`](Self::replenish) has work).
    fn short_of_workers(&self, st: &State) -> bool {
        st.workers.len() + st.starting < self.processes
            && st.phase != Phase::Terminated
            && !st.joined
            && st.broken.is_none()
    }

    /// Makes and starts one worker process.
    fn make_worker(&self, serial: u32) -> Result<Worker, PoolError> {
        let tasks = Queue::<Record>::builder()
            .capacity(64 << 10)
            .build()
            .map_err(|e| PoolError::Queue(Arc::new(e)))?;
        let status = Status::new().map_err(|e| PoolError::Queue(Arc::new(QueueError::Shm(e))))?;
        let mut process = (self.factory)(WorkerQueues {
            serial,
            tasks: tasks.clone(),
            results: self.results.clone(),
            status: status.clone(),
        })
        .map_err(|e| PoolError::Start(Arc::new(e)))?;
        process = process
            .name(format!("{}-{serial}", self.worker_name))
            .daemon(true);
        process.start().map_err(|e| PoolError::Start(Arc::new(e)))?;
        let pid = process.pid().ok().flatten().unwrap_or(0);
        let sentinel = process
            .sentinel()
            .and_then(|fd| fd.try_clone_to_owned().map_err(ProcessError::Io))
            .map_err(|e| PoolError::Start(Arc::new(e)))?;
        let now = Instant::now();
        Ok(Worker {
            serial,
            process,
            pid,
            tasks,
            sentinel: Arc::new(sentinel),
            status,
            assigned: VecDeque::new(),
            budget: if self.maxtasks == 0 {
                u64::MAX
            } else {
                self.maxtasks
            },
            stopping: false,
            exit_posted: false,
            init_failed: None,
            stats: WorkerStats {
                id: serial,
                pid,
                ..WorkerStats::default()
            },
            born: now,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Submitting

    /// Opens a batch, to which [`add_task`](Self::add_task) adds tasks until
    /// [`seal`](Self::seal). `on_complete` runs once every task has finished.
    pub(crate) fn new_batch(&self, on_complete: Option<OnComplete>) -> Result<u64, PoolError> {
        let mut st = lock(&self.state);
        if st.executor_shut_down {
            return Err(PoolError::Shutdown);
        }
        if st.phase != Phase::Running {
            return Err(PoolError::NotRunning);
        }
        let id = st.next_batch;
        st.next_batch += 1;
        let batch = Batch::new(on_complete);
        if batch.urgent {
            st.urgent += 1;
        }
        st.batches.insert(id, batch);
        Ok(id)
    }

    /// Adds one task to a batch: encoded items for the function at `offsets`. Dispatches at
    /// once if a worker has room. Returns the task's index in the batch.
    pub(crate) fn add_task(
        &self,
        batch: u64,
        offsets: (u64, u64),
        items: Encoded,
        opts: TaskOpts,
    ) -> Result<u64, PoolError> {
        let TaskOpts { time_limit, retry } = opts;
        let retry = retry
            .or(self.retry)
            .filter(|r| r.attempts > 1)
            .map(|r| RetryLeft {
                left: r.attempts - 1,
                on_crash: r.on_crash,
                on_error: r.on_error,
            });
        let Encoded {
            body,
            fds,
            by_name,
            count,
        } = items;
        let mut st = lock(&self.state);
        if st.phase == Phase::Terminated || st.joined {
            Segment::take_back_transits(&by_name);
            return Err(PoolError::NotRunning);
        }
        let id = st.next_task;
        st.next_task += 1;
        let mut record = Vec::with_capacity(wire::HEADER + body.len());
        TaskHeader {
            id,
            kind: wire::TASK_RUN,
            count,
            runner: offsets.0,
            target: offsets.1,
        }
        .write(&mut record);
        record.extend_from_slice(&body);
        let Some(b) = st.batches.get_mut(&batch) else {
            Segment::take_back_transits(&by_name);
            return Err(PoolError::NotRunning);
        };
        let index = b.submitted;
        b.submitted += 1;
        st.tasks.insert(
            id,
            Task {
                batch,
                index,
                record,
                fds,
                by_name,
                worker: None,
                count,
                time_limit,
                killed: None,
                retry,
            },
        );
        st.pending.push_back(id);
        if let Some(reason) = st.broken.clone() {
            self.fail_pending(&mut st, &TaskError::InitializerFailed(reason));
        }
        self.dispatch(&mut st);
        let short = self.short_of_workers(&st);
        drop(st);
        self.run_deferred_if_any();
        if short {
            self.replenish();
        }
        Ok(index)
    }

    /// No more tasks will be added to `batch`.
    pub(crate) fn seal(&self, batch: u64) {
        let mut st = lock(&self.state);
        if let Some(b) = st.batches.get_mut(&batch) {
            b.open = false;
            if b.finished_all() {
                let done = Self::take_completion(&mut st, batch);
                Self::defer_completions(batch, done);
            }
        }
        self.wake_waiters(&st);
        drop(st);
        self.run_deferred_if_any();
    }

    /// Moves waiting tasks into workers' queues while some worker has room.
    fn dispatch(&self, st: &mut State) {
        let depth = depth_for(st.avg_task_ns);
        while let Some(&id) = st.pending.front() {
            let Some(w) = st
                .workers
                .iter_mut()
                .filter(|w| !w.stopping && w.budget > 0 && w.assigned.len() < depth)
                .min_by_key(|w| w.assigned.len())
            else {
                return;
            };
            let Some(task) = st.tasks.get_mut(&id) else {
                st.pending.pop_front();
                continue;
            };
            match w.tasks.put_raw(&task.record, &task.fds, false, None) {
                Ok(()) => {
                    st.pending.pop_front();
                    if task.retry.is_none() {
                        task.record = Vec::new();
                        task.fds.clear();
                    }
                    task.worker = Some(w.serial);
                    w.assigned.push_back(id);
                    // At 0 it exits after this task: nothing more goes to it (unless a task
                    // is taken back from its queue, which gives the budget back).
                    w.budget -= 1;
                }
                // Its queue is busy (its lock held for long): try again at the next change.
                Err(PutFail::Full) => return,
                Err(PutFail::Error(e)) => {
                    st.pending.pop_front();
                    let task = st.tasks.remove(&id);
                    if let Some(task) = task {
                        Segment::take_back_transits(&task.by_name);
                        let done = Self::finish(
                            st,
                            &task,
                            Err(TaskError::Pool(PoolError::Queue(Arc::new(e)))),
                        );
                        Self::defer_completions(task.batch, done);
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Completing

    /// Records a task's outcome in its batch; returns the batch's completion work if this
    /// completed it.
    fn finish(st: &mut State, task: &Task, outcome: Outcome) -> Option<OnComplete> {
        let b = st.batches.get_mut(&task.batch)?;
        b.finished += 1;
        if outcome.is_err() {
            b.failed = true;
        }
        if b.wanted {
            b.outcomes.ready.insert(task.index, outcome);
            b.outcomes.arrival.push_back(task.index);
        }
        if let Some(w) = b.waker.take() {
            wake_later(w);
        }
        if b.finished_all() {
            return Self::take_completion(st, task.batch);
        }
        None
    }

    /// A batch's tasks have all finished: wake its future, hand out its callback (which
    /// runs outside the lock), forget it if its consumer is gone.
    fn take_completion(st: &mut State, batch: u64) -> Option<OnComplete> {
        let b = st.batches.get_mut(&batch)?;
        if let Some(w) = b.waker.take() {
            wake_later(w);
        }
        if b.urgent {
            b.urgent = false;
            st.urgent = st.urgent.saturating_sub(1);
        }
        let b = st.batches.get_mut(&batch)?;
        let done = b.on_complete.take();
        if done.is_some() {
            b.completing = true;
        } else if !b.wanted {
            st.batches.remove(&batch);
        }
        done
    }

    /// Completion work found while the state is locked runs after it is unlocked.
    fn defer_completions(batch: u64, done: Option<OnComplete>) {
        if let Some(f) = done {
            DEFERRED.with(|d| d.borrow_mut().push((batch, f)));
        }
    }

    /// Runs a completion callback (outside the state lock: a callback may use the pool).
    fn run_completion(&self, batch: u64, f: OnComplete) {
        let mut outcomes = {
            let mut st = lock(&self.state);
            match st.batches.get_mut(&batch) {
                Some(b) => std::mem::take(&mut b.outcomes),
                None => return,
            }
        };
        // (The callbacks catch their own panics: see `result::callbacks`.)
        f(&mut outcomes);
        let mut st = lock(&self.state);
        if let Some(b) = st.batches.get_mut(&batch) {
            b.outcomes = outcomes;
            b.completing = false;
            // A future polled while the callback ran waits for this moment.
            if let Some(w) = b.waker.take() {
                wake_later(w);
            }
            if !b.wanted {
                st.batches.remove(&batch);
            }
        }
        self.changed.notify_all();
    }

    fn run_deferred(&self) {
        let work: Vec<(u64, OnComplete)> = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
        for (batch, f) in work {
            self.run_completion(batch, f);
        }
    }

    /// After a caller lets the collecting role go: the background thread takes over if a
    /// callback or future waits, or if work is left and it is in its long sleep.
    fn wake_background_if_needed(&self, st: &State) {
        if st.urgent > 0 || (st.background_idle && !st.tasks.is_empty()) {
            self.background.notify_one();
        }
    }

    fn wake_waiters(&self, st: &State) {
        if st.waiters > 0 {
            self.changed.notify_all();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Consuming a batch

    /// Waits until `ready(batch)` holds or the deadline passes, collecting results meanwhile
    /// if no other thread does. True if it holds.
    pub(crate) fn wait_batch(
        &self,
        batch: u64,
        ready: impl Fn(&BatchView<'_>) -> bool,
        deadline: Option<Instant>,
    ) -> bool {
        self.wait_any(&[batch], ready, deadline).is_some()
    }

    /// Waits until `ready` holds for one of `batches` (a batch that is gone counts as
    /// ready) or the deadline passes; returns the position of one for which it holds.
    pub(crate) fn wait_any(
        &self,
        batches: &[u64],
        ready: impl Fn(&BatchView<'_>) -> bool,
        deadline: Option<Instant>,
    ) -> Option<usize> {
        let which = |st: &State| -> Option<usize> {
            batches.iter().position(|id| match st.batches.get(id) {
                Some(b) => ready(&BatchView { batch: b }),
                None => true,
            })
        };
        let check = |st: &State| which(st).is_some();
        self.wait_for(&check, deadline)
            .then(|| which(&lock(&self.state)))
            .flatten()
    }

    /// Waits until `check(state)` or the deadline, collecting results meanwhile if no other
    /// thread does. True if it holds.
    fn wait_for(&self, check: &dyn Fn(&State) -> bool, deadline: Option<Instant>) -> bool {
        let mut st = lock(&self.state);
        loop {
            if check(&st) {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            if let Some(role) = self.try_role() {
                drop(st);
                let met = self.collect(check, deadline);
                drop(role);
                st = lock(&self.state);
                self.wake_waiters(&st);
                self.wake_background_if_needed(&st);
                if met {
                    return true;
                }
                continue;
            }
            st.waiters += 1;
            let wait = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(TICK),
                None => TICK,
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.waiters -= 1;
        }
    }

    /// Runs `f` on a batch's state.
    pub(crate) fn with_batch<T>(
        &self,
        batch: u64,
        f: impl FnOnce(Option<&mut BatchOutcomes>, &BatchView<'_>) -> T,
    ) -> T {
        let mut st = lock(&self.state);
        match st.batches.get_mut(&batch) {
            Some(b) => {
                let mut outcomes = std::mem::take(&mut b.outcomes);
                let r = f(Some(&mut outcomes), &BatchView { batch: b });
                b.outcomes = outcomes;
                r
            }
            None => {
                let mut gone = Batch::new(None);
                gone.open = false;
                f(None, &BatchView { batch: &gone })
            }
        }
    }

    /// Registers the waker of a future awaiting `batch` (the background thread collects for
    /// it from now on).
    pub(crate) fn set_waker(&self, batch: u64, waker: &Waker) -> bool {
        let mut st = lock(&self.state);
        let Some(b) = st.batches.get_mut(&batch) else {
            return false;
        };
        if b.complete() {
            return false;
        }
        if let Some(old) = b.waker.replace(waker.clone()) {
            if !old.will_wake(waker) {
                // Another task's waker: dropped (and woken, harmlessly) after the lock.
                wake_later(old);
            }
        }
        if !b.urgent {
            b.urgent = true;
            st.urgent += 1;
            self.background.notify_one();
        }
        drop(st);
        self.run_deferred_if_any();
        true
    }

    /// The consumer of `batch` is gone: its results are thrown away, its waiting tasks
    /// dropped.
    pub(crate) fn drop_batch(&self, batch: u64) {
        let mut st = lock(&self.state);
        let Some(b) = st.batches.get_mut(&batch) else {
            return;
        };
        b.wanted = false;
        let outcomes = std::mem::take(&mut b.outcomes);
        if let Some(w) = b.waker.take() {
            wake_later(w);
        }
        let unurgent = b.urgent && b.on_complete.is_none();
        if unurgent {
            b.urgent = false;
        }
        let complete = b.complete();
        if unurgent {
            st.urgent = st.urgent.saturating_sub(1);
        }
        if complete {
            st.batches.remove(&batch);
        }
        drop(st);
        // Dropped without the lock: a result may hold anything.
        drop(outcomes);
        self.run_deferred_if_any();
    }

    // -----------------------------------------------------------------------------------------
    // Collecting

    /// Takes the collecting role if nobody holds it (a role left by a thread that panicked
    /// is taken all the same: the state it guards is the result queue's, always whole).
    fn try_role(&self) -> Option<MutexGuard<'_, ()>> {
        match self.collecting.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Holding the collecting role: reads results until `done(state)` or the deadline.
    fn collect(&self, done: &dyn Fn(&State) -> bool, deadline: Option<Instant>) -> bool {
        struct Taken<'a>(&'a AtomicBool);
        impl Drop for Taken<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        self.role_taken.store(true, Ordering::Relaxed);
        let _taken = Taken(&self.role_taken);
        let mut rec = Vec::new();
        // A record the blocking take below brought (its bytes are in `rec`).
        let mut woken: Option<Vec<OwnedFd>> = None;
        loop {
            // That record and everything already there, under one lock.
            let mut st = lock(&self.state);
            let mut got = 0usize;
            if let Some(fds) = woken.take() {
                self.on_record(&mut st, &rec, fds);
                got += 1;
            }
            loop {
                rec.clear();
                match self.results.take_raw(false, None, &mut rec) {
                    Ok(fds) => {
                        self.on_record(&mut st, &rec, fds);
                        got += 1;
                        if got >= 256 {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            st.last_collect = Instant::now();
            if got > 0 {
                self.dispatch(&mut st);
                self.wake_waiters(&st);
            }
            let met = done(&st);
            let short = self.short_of_workers(&st);
            drop(st);
            self.run_deferred_if_any();
            if short {
                self.replenish();
            }
            if met {
                return true;
            }
            if got > 0 {
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            let slice = deadline.map_or(now + TICK, |d| d.min(now + TICK));
            rec.clear();
            match self.results.take_raw(true, Some(slice), &mut rec) {
                Ok(fds) => woken = Some(fds),
                Err(TakeFail::Empty) => {}
                Err(TakeFail::Error(_)) => {
                    // The result queue itself failed: nothing more will come through it.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn run_deferred_if_any(&self) {
        if DEFERRED.with(|d| !d.borrow().is_empty()) {
            self.run_deferred();
        }
        let wakers = WAKE.with(|w| std::mem::take(&mut *w.borrow_mut()));
        for w in wakers {
            // An executor's waker that panics must not take the collecting thread with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
        }
    }

    /// Handles one record from the result queue.
    fn on_record(&self, st: &mut State, rec: &[u8], fds: Vec<OwnedFd>) {
        let Some((h, body)) = ResultHeader::read(rec) else {
            return;
        };
        match h.kind {
            wire::RESULT_DONE | wire::RESULT_PANICKED | wire::RESULT_FAILED => {
                self.on_result(st, h, body, fds)
            }
            wire::RESULT_INIT_FAILED => {
                let failure: (String, Option<String>) = crate::codec::decode(body)
                    .unwrap_or_else(|e| (format!("(undecodable: {e})"), None));
                if let Some(w) = st.workers.iter_mut().find(|w| w.serial == h.worker) {
                    w.init_failed = Some(failure);
                }
            }
            wire::RESULT_EXITED => self.on_exit(st, h.worker),
            _ => {}
        }
    }

    fn on_result(&self, st: &mut State, h: ResultHeader, body: &[u8], fds: Vec<OwnedFd>) {
        let items = st.tasks.get(&h.id).map_or(0, |t| u64::from(t.count));
        if let Some(w) = st.workers.iter_mut().find(|w| w.serial == h.worker) {
            w.stats.items += items;
            if let Some(pos) = w.assigned.iter().position(|&id| id == h.id) {
                w.assigned.remove(pos);
            }
            w.stats.tasks += 1;
            w.stats.busy += Duration::from_nanos(h.busy_ns);
        }
        st.init_failures = 0;
        st.avg_task_ns = if st.avg_task_ns == 0 {
            h.busy_ns.max(1)
        } else {
            (st.avg_task_ns * 7 + h.busy_ns) / 8
        }
        .max(1);
        let (entries, names) = split_names(body, h.names_len);
        let Some(task) = st.tasks.remove(&h.id) else {
            // Nobody wants it (the pool was terminated meanwhile).
            Segment::take_back_transits(&names);
            return;
        };
        let cancelled = matches!(task.killed, Some(KillReason::Cancelled));
        let failed = matches!(h.kind, wire::RESULT_FAILED | wire::RESULT_PANICKED);
        let Some(task) = (if failed && !cancelled {
            Self::try_retry(st, h.id, task, false)
        } else {
            Some(task)
        }) else {
            Segment::take_back_transits(&names);
            return;
        };
        let outcome = match h.kind {
            // Cancelled while it finished: `cancel` said yes, so the result says so too.
            _ if matches!(task.killed, Some(KillReason::Cancelled)) => {
                Segment::take_back_transits(&names);
                Err(TaskError::Cancelled)
            }
            wire::RESULT_FAILED => Err(TaskError::Failed(
                String::from_utf8_lossy(entries).into_owned(),
            )),
            _ => Ok(Raw {
                bytes: entries.to_vec(),
                fds,
                items: task.count,
                all_returned: h.kind == wire::RESULT_DONE,
                by_name: names,
            }),
        };
        let panicked = h.kind == wire::RESULT_PANICKED;
        if panicked {
            if let Some(b) = st.batches.get_mut(&task.batch) {
                b.failed = true;
            }
        }
        let done = Self::finish(st, &task, outcome);
        Self::defer_completions(task.batch, done);
    }

    /// A worker ended: its results are all in (they came before this record); what it
    /// still held goes back to waiting, except the task it was running, which fails.
    fn on_exit(&self, st: &mut State, serial: u32) {
        let Some(pos) = st.workers.iter().position(|w| w.serial == serial) else {
            return;
        };
        let mut w = st.workers.remove(pos);
        let cause = match w.process.join_result_timeout(Duration::from_secs(5)) {
            Ok(()) => None,
            Err(ProcessError::Child(c)) => Some(c),
            Err(e) => Some(ChildError::StatusLost(e.to_string())),
        };
        // Ended on its own before its initializer finished (an exit, an abort, a crash; a
        // kill from outside is not the initializer's doing): a failed initializer too.
        let own_end = !matches!(cause, Some(ChildError::Killed { signal: 9 | 15 }));
        if w.init_failed.is_none() && w.status.initializing() && own_end {
            let how = cause
                .as_ref()
                .map_or("it exited".to_owned(), ToString::to_string);
            w.init_failed = Some((format!("the worker ended in its initializer: {how}"), None));
        }
        // Take back what it never took.
        let mut recovered: HashMap<u64, (Vec<u8>, Vec<OwnedFd>)> = HashMap::new();
        let mut rec = Vec::new();
        loop {
            rec.clear();
            match w.tasks.take_raw(false, None, &mut rec) {
                Ok(fds) => {
                    if let Some((h, _)) = TaskHeader::read(&rec) {
                        recovered.insert(h.id, (rec.clone(), fds));
                    }
                }
                Err(_) => break,
            }
        }
        let mut back = Vec::new();
        for id in w.assigned.drain(..) {
            if let Some((record, fds)) = recovered.remove(&id) {
                if let Some(t) = st.tasks.get_mut(&id) {
                    t.record = record;
                    t.fds = fds;
                    t.worker = None;
                    t.killed = None;
                    back.push(id);
                }
                continue;
            }
            let Some(task) = st.tasks.remove(&id) else {
                continue;
            };
            let crashed = !matches!(task.killed, Some(KillReason::Cancelled));
            let Some(task) = (if crashed {
                Self::try_retry(st, id, task, true)
            } else {
                Some(task)
            }) else {
                continue;
            };
            let error = match task.killed {
                Some(KillReason::TimeLimit(limit)) => TaskError::TimeLimit { limit, pid: w.pid },
                Some(KillReason::Cancelled) => TaskError::Cancelled,
                None => TaskError::WorkerDied {
                    pid: w.pid,
                    cause: cause.clone().unwrap_or(ChildError::Exited(0)),
                },
            };
            let done = Self::finish(st, &task, Err(error));
            Self::defer_completions(task.batch, done);
        }
        for id in back.into_iter().rev() {
            st.pending.push_front(id);
        }
        w.stats.idle = w.born.elapsed().saturating_sub(w.stats.busy);
        st.retired.push(w.stats.clone());
        if let Some((message, location)) = w.init_failed.take() {
            st.init_failures += 1;
            if st.init_failures >= self.processes as u32 + INIT_FAILURES_SPARE {
                let at = location.map(|l| format!(" at {l}")).unwrap_or_default();
                let reason = format!("{message}{at}");
                st.broken = Some(reason.clone());
                self.fail_pending(st, &TaskError::InitializerFailed(reason));
            }
        }
        if let Some(reason) = st.broken.clone() {
            // What it held and went back to waiting would wait for ever.
            self.fail_pending(st, &TaskError::InitializerFailed(reason));
        }
        // Its replacement starts once the state lock is let go (`replenish`).
        self.dispatch(st);
    }

    /// Puts a failed task back to wait if its retry policy allows it (`crash`: its worker
    /// died or ran out of time; otherwise it failed or panicked); gives it back otherwise.
    fn try_retry(st: &mut State, id: u64, mut task: Task, crash: bool) -> Option<Task> {
        let Some(r) = task.retry.as_mut() else {
            return Some(task);
        };
        if r.left == 0 || !(if crash { r.on_crash } else { r.on_error }) {
            return Some(task);
        }
        r.left -= 1;
        // The worker took the shared objects the arguments name; the next one takes them
        // again.
        Segment::add_transits(&task.by_name);
        task.worker = None;
        task.killed = None;
        st.tasks.insert(id, task);
        st.pending.push_front(id);
        None
    }

    /// Takes back the tasks a worker has not started: out of its queue, to the front of the
    /// waiting line, in their order. Returns their ids.
    fn reclaim(st: &mut State, serial: u32) -> Vec<u64> {
        let Some(w) = st.workers.iter_mut().find(|w| w.serial == serial) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let mut rec = Vec::new();
        loop {
            rec.clear();
            match w.tasks.take_raw(false, None, &mut rec) {
                Ok(fds) => {
                    if let Some((h, _)) = TaskHeader::read(&rec) {
                        if let Some(pos) = w.assigned.iter().position(|&id| id == h.id) {
                            w.assigned.remove(pos);
                        }
                        w.budget = w.budget.saturating_add(1);
                        taken.push((h.id, rec.clone(), fds));
                    }
                }
                Err(_) => break,
            }
        }
        let mut ids = Vec::new();
        for (id, record, fds) in taken.into_iter().rev() {
            if let Some(t) = st.tasks.get_mut(&id) {
                t.record = record;
                t.fds = fds;
                t.worker = None;
                st.pending.push_front(id);
                ids.push(id);
            }
        }
        ids
    }

    /// Cancels every unfinished task of a batch: one still waiting (in the pool or in a
    /// worker's queue) is dropped, a running one has its worker killed (and replaced). True
    /// if any task was cancelled.
    pub(crate) fn cancel(&self, batch: u64) -> bool {
        let mut st = lock(&self.state);
        let mut ids: Vec<u64> = st
            .tasks
            .iter()
            .filter(|(_, t)| t.batch == batch)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let mut any = false;
        for id in ids {
            let Some(serial) = st.tasks.get(&id).map(|t| t.worker) else {
                continue;
            };
            if let Some(serial) = serial {
                Self::reclaim(&mut st, serial);
            }
            if let Some(pos) = st.pending.iter().position(|&p| p == id) {
                st.pending.remove(pos);
                if let Some(task) = st.tasks.remove(&id) {
                    Segment::take_back_transits(&task.by_name);
                    let done = Self::finish(&mut st, &task, Err(TaskError::Cancelled));
                    Self::defer_completions(task.batch, done);
                    any = true;
                }
                continue;
            }
            // Out of the queue: running (only killing its worker stops it), or finished with
            // its result on the way (then there is nothing to cancel).
            let State { workers, tasks, .. } = &mut *st;
            if let (Some(task), Some(serial)) = (tasks.get_mut(&id), serial) {
                if let Some(w) = workers.iter_mut().find(|w| w.serial == serial) {
                    let running = w.status.running().is_some_and(|(r, _)| r == id);
                    if running && task.killed.is_none() {
                        task.killed = Some(KillReason::Cancelled);
                        w.stopping = true;
                        let _ = w.process.kill();
                        any = true;
                    }
                }
            }
        }
        if any {
            if let Some(b) = st.batches.get_mut(&batch) {
                b.cancelled = true;
            }
        }
        self.dispatch(&mut st);
        self.wake_waiters(&st);
        drop(st);
        self.run_deferred_if_any();
        any
    }

    /// Fails every waiting task (not yet in a worker's queue) with `error`.
    fn fail_pending(&self, st: &mut State, error: &TaskError) {
        let pending: Vec<u64> = st.pending.drain(..).collect();
        for id in pending {
            if let Some(task) = st.tasks.remove(&id) {
                Segment::take_back_transits(&task.by_name);
                let done = Self::finish(st, &task, Err(error.clone()));
                Self::defer_completions(task.batch, done);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Closing

    /// CPython's `close`: no new work; what was submitted still runs.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        if st.phase == Phase::Running {
            st.phase = Phase::Closed;
        }
    }

    /// The executor's `shutdown`: `close`, and with `cancel` every task not yet in a
    /// worker's queue fails as cancelled.
    pub(crate) fn shut_down(&self, cancel: bool) {
        let mut st = lock(&self.state);
        st.executor_shut_down = true;
        if st.phase == Phase::Running {
            st.phase = Phase::Closed;
        }
        if cancel {
            // Every task not started, also those in the workers' queues.
            let serials: Vec<u32> = st.workers.iter().map(|w| w.serial).collect();
            for serial in serials {
                Self::reclaim(&mut st, serial);
            }
            self.fail_pending(&mut st, &TaskError::Cancelled);
        }
        self.wake_waiters(&st);
        drop(st);
        self.run_deferred_if_any();
    }

    /// CPython's `terminate`: kill the workers; everything unfinished fails.
    pub(crate) fn terminate(&self) {
        let mut st = lock(&self.state);
        if st.phase == Phase::Terminated {
            return;
        }
        st.phase = Phase::Terminated;
        for w in &mut st.workers {
            w.stopping = true;
            let _ = w.process.kill();
        }
        // What waits in the workers' queues will never be decoded: back to the pool, so
        // that the shared objects its arguments name are released below.
        let serials: Vec<u32> = st.workers.iter().map(|w| w.serial).collect();
        for serial in serials {
            Self::reclaim(&mut st, serial);
        }
        let ids: Vec<u64> = st.tasks.keys().copied().collect();
        st.pending.clear();
        for id in ids {
            if let Some(task) = st.tasks.remove(&id) {
                if task.worker.is_none() {
                    Segment::take_back_transits(&task.by_name);
                }
                let done =
                    Self::finish(&mut st, &task, Err(TaskError::Pool(PoolError::Terminated)));
                Self::defer_completions(task.batch, done);
            }
        }
        self.changed.notify_all();
        drop(st);
        self.run_deferred_if_any();
    }

    /// CPython's `join`, after `close` or `terminate`: waits for the submitted work, stops
    /// the workers and waits for them to end.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<(), PoolError> {
        match self.phase() {
            Phase::Running => return Err(PoolError::StillRunning),
            Phase::Closed => {
                // All the work first (collecting if nobody else does).
                if !self.wait_all(deadline) {
                    // As documented: what is left is ended.
                    self.terminate();
                    let _ = self.join(Some(Instant::now() + Duration::from_secs(5)));
                    return Err(PoolError::JoinTimeout);
                }
            }
            Phase::Terminated => {}
        }
        let workers: Vec<Worker> = {
            let mut st = lock(&self.state);
            for w in &mut st.workers {
                if !w.stopping {
                    w.stopping = true;
                    let mut stop = Vec::new();
                    TaskHeader {
                        id: 0,
                        kind: wire::TASK_STOP,
                        count: 0,
                        runner: 0,
                        target: 0,
                    }
                    .write(&mut stop);
                    if w.tasks.put_raw(&stop, &[], true, None).is_err() {
                        let _ = w.process.kill();
                    }
                }
            }
            // Nothing more will run: a stream still open gets 'Pool not running'.
            st.joined = true;
            st.workers.drain(..).collect()
        };
        let mut st_retired = Vec::new();
        for mut w in workers {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ended = match left {
                Some(t) => w.process.join_timeout(t).unwrap_or(true),
                None => {
                    let _ = w.process.join();
                    true
                }
            };
            if !ended {
                let _ = w.process.kill();
                let _ = w.process.join();
            }
            w.stats.idle = w.born.elapsed().saturating_sub(w.stats.busy);
            st_retired.push(w.stats);
        }
        let mut st = lock(&self.state);
        st.retired.extend(st_retired);
        st.shutdown = true;
        self.background.notify_all();
        Ok(())
    }

    /// Waits until no task is left, collecting as needed.
    fn wait_all(&self, deadline: Option<Instant>) -> bool {
        self.wait_for(&|st: &State| st.tasks.is_empty(), deadline)
    }

    /// Per-worker figures: the live workers, then those that have ended.
    pub(crate) fn stats(&self) -> Vec<WorkerStats> {
        let st = lock(&self.state);
        let mut all: Vec<WorkerStats> = st
            .workers
            .iter()
            .map(|w| {
                let mut s = w.stats.clone();
                s.idle = w.born.elapsed().saturating_sub(s.busy);
                s.alive = true;
                s
            })
            .collect();
        all.extend(st.retired.iter().cloned());
        all
    }

    /// The pids of the live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        lock(&self.state).workers.iter().map(|w| w.pid).collect()
    }

    /// Asks the pool to stop its background threads (the pool handle is gone).
    pub(crate) fn shutdown(&self) {
        let mut st = lock(&self.state);
        st.shutdown = true;
        self.background.notify_all();
    }

    // -----------------------------------------------------------------------------------------
    // Watching

    /// What the watcher watches: each live worker's sentinel, and when the next time limit
    /// may run out.
    fn watch_list(&self) -> WatchList {
        let st = lock(&self.state);
        let list = st
            .workers
            .iter()
            .filter(|w| !w.exit_posted)
            .map(|w| (w.serial, w.sentinel.clone()))
            .collect();
        let mut next: Option<Instant> = None;
        let (now, now_ns) = (Instant::now(), sys::monotonic_ns());
        for w in st.workers.iter().filter(|w| !w.exit_posted && !w.stopping) {
            let timed = |id: &u64| {
                st.tasks
                    .get(id)
                    .filter(|t| t.killed.is_none())
                    .and_then(|t| t.time_limit)
            };
            let at = match w.status.running() {
                Some((id, started)) => timed(&id).map(|limit| {
                    let ran = Duration::from_nanos(now_ns.saturating_sub(started));
                    now + limit.saturating_sub(ran)
                }),
                // A timed task waits in its queue: look again soon, to see it start.
                None => w
                    .assigned
                    .iter()
                    .any(|id| timed(id).is_some())
                    .then(|| now + LIMIT_LOOK),
            };
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        WatchList {
            sentinels: list,
            next_limit: next,
            shutdown: st.shutdown,
        }
    }

    /// Posts a worker's exit into the result queue (once).
    fn post_exit(&self, serial: u32) {
        {
            let mut st = lock(&self.state);
            match st.workers.iter_mut().find(|w| w.serial == serial) {
                Some(w) if !w.exit_posted => {
                    w.exit_posted = true;
                    w.stopping = true;
                }
                _ => return,
            }
        }
        if !self.post(wire::RESULT_EXITED, serial) {
            // Not posted: the watcher tries again at its next look.
            if let Some(w) = lock(&self.state)
                .workers
                .iter_mut()
                .find(|w| w.serial == serial)
            {
                w.exit_posted = false;
            }
        }
    }

    fn post(&self, kind: u32, worker: u32) -> bool {
        let mut rec = Vec::with_capacity(wire::HEADER);
        ResultHeader {
            id: 0,
            kind,
            worker,
            busy_ns: 0,
            names_len: 0,
        }
        .write(&mut rec);
        self.results.put_raw(&rec, &[], true, None).is_ok()
    }

    /// Kills the workers whose running task has run out of time.
    fn enforce_time_limits(&self) {
        let mut st = lock(&self.state);
        let now_ns = sys::monotonic_ns();
        let State { workers, tasks, .. } = &mut *st;
        for w in workers.iter_mut() {
            let Some((id, started)) = w.status.running() else {
                continue;
            };
            let Some(task) = tasks.get_mut(&id) else {
                continue;
            };
            if let Some(limit) = task.time_limit {
                let ran = Duration::from_nanos(now_ns.saturating_sub(started));
                if task.killed.is_none() && ran >= limit {
                    task.killed = Some(KillReason::TimeLimit(limit));
                    w.stopping = true;
                    let _ = w.process.kill();
                }
            }
        }
    }
}

thread_local! {
    /// Wakers to wake once the state lock is released (a waker may call into the pool).
    static WAKE: std::cell::RefCell<Vec<Waker>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Wakes `w` once this thread lets the state lock go.
fn wake_later(w: Waker) {
    WAKE.with(|q| q.borrow_mut().push(w));
}

thread_local! {
    /// Completion callbacks found under the state lock, run once it is released.
    static DEFERRED: std::cell::RefCell<Vec<(u64, OnComplete)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// What the watcher watches: each live worker's sentinel (by serial), and when the next time
/// limit may run out.
struct WatchList {
    sentinels: Vec<(u32, Arc<OwnedFd>)>,
    next_limit: Option<Instant>,
    shutdown: bool,
}

/// What a consumer may look at in its batch while waiting.
pub(crate) struct BatchView<'a> {
    batch: &'a Batch,
}

impl BatchView<'_> {
    pub(crate) fn complete(&self) -> bool {
        self.batch.complete()
    }
    pub(crate) fn failed(&self) -> bool {
        self.batch.failed
    }
    pub(crate) fn cancelled(&self) -> bool {
        self.batch.cancelled
    }
    pub(crate) fn has_ready(&self) -> bool {
        !self.batch.outcomes.arrival.is_empty()
    }
    pub(crate) fn is_ready(&self, index: u64) -> bool {
        self.batch.outcomes.ready.contains_key(&index)
    }
    pub(crate) fn submitted(&self) -> u64 {
        self.batch.submitted
    }
}

/// Splits a result body into its entries and the names of the shared objects they hold.
fn split_names(body: &[u8], names_len: u64) -> (&[u8], Vec<Transit>) {
    let n = usize::try_from(names_len).unwrap_or(usize::MAX);
    if n == 0 || n > body.len() {
        return (body, Vec::new());
    }
    let (entries, names) = body.split_at(body.len() - n);
    (entries, crate::codec::decode(names).unwrap_or_default())
}

/// How many tasks a worker's queue should hold, given the average task time.
fn depth_for(avg_task_ns: u64) -> usize {
    if avg_task_ns == 0 {
        return 2;
    }
    let ahead = QUEUE_AHEAD.as_nanos() as u64;
    (ahead / avg_task_ns).clamp(1, MAX_DEPTH as u64) as usize
}

/// The watcher thread: worker exits and time limits.
fn watch(engine: &Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else {
            return;
        };
        let WatchList {
            sentinels: list,
            next_limit,
            shutdown,
        } = e.watch_list();
        if shutdown {
            return;
        }
        drop(e);
        let now = Instant::now();
        let wait = next_limit.map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
        let fds: Vec<_> = list.iter().map(|(_, fd)| fd.as_fd()).collect();
        let ready = if fds.is_empty() {
            std::thread::sleep(wait);
            Vec::new()
        } else {
            sys::poll_fds(&fds, Some(wait)).unwrap_or_default()
        };
        let Some(e) = engine.upgrade() else {
            return;
        };
        for i in ready {
            e.post_exit(list[i].0);
        }
        if next_limit.is_some() {
            e.enforce_time_limits();
        }
    }
}

/// The background collector: collects when callbacks or futures wait for results, or when
/// results wait and no caller has collected for a while.
fn background(engine: &Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else {
            return;
        };
        let short = {
            let st = lock(&e.state);
            e.short_of_workers(&st)
        };
        if short {
            e.replenish();
        }
        let collect = {
            let st = lock(&e.state);
            if st.shutdown {
                return;
            }
            let work = !st.tasks.is_empty() || !e.results.empty();
            let due = st.urgent > 0 || st.last_collect.elapsed() >= GRACE;
            if work && due {
                true
            } else {
                // A caller collecting wakes this thread if a callback or future needs it.
                let quiet = !work || e.role_taken.load(Ordering::Relaxed);
                let wait = if quiet { TICK } else { GRACE };
                let mut st = st;
                // A caller that lets the role go with work left wakes this thread then.
                st.background_idle = work && quiet;
                let mut st = e
                    .background
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                st.background_idle = false;
                false
            }
        };
        if collect {
            if let Some(role) = e.try_role() {
                // Until nothing is left to do, or a caller may want the role (checked at
                // every tick).
                let until = Instant::now() + TICK;
                e.collect(
                    &|st: &State| st.shutdown || (st.tasks.is_empty() && st.urgent == 0),
                    Some(until),
                );
                drop(role);
                e.wake_waiters(&lock(&e.state));
            } else {
                // A caller collects; it wakes this thread if a callback or future needs it.
                let st = lock(&e.state);
                let _ = e.background.wait_timeout(st, TICK);
            }
        }
        drop(e);
    }
}
