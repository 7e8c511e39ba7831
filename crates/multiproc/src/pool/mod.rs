//! [`Pool`]: a pool of worker processes (CPython's `multiprocessing.Pool`), on which no call
//! ever hangs because a worker died.
//!
//! ```
//! use multiproc::Pool;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
//! let pool = Pool::new(2)?;
//! assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
//! let r = pool.apply_async(square, 7)?;
//! assert_eq!(r.get()?, 49);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A task is a plain function `fn(A) -> R` (or `fn(A, B) -> R` for
//! [`starmap`](Pool::starmap)); its argument goes to a worker and its result comes back
//! through serde, shared objects included (a [`Lock`](crate::Lock), a
//! [`Queue`](crate::Queue), an [`Array`](crate::Array), a [`Connection`](crate::Connection)).
//!
//! How it works (the task and result records, who dispatches and who collects, what happens
//! when a worker dies) is in `pool/README.md`.

mod engine;
mod futures;
mod iter;
mod result;
mod wire;
mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, de::DeserializeOwned};

use crate::callable::{TaskCallable, TrustedFn};
use crate::codec::{self, Codec, CodecError, Postcard};
use crate::context::Context;
use crate::error::{ChildError, ProcessError};
use crate::queue::QueueError;
use crate::shm::segment::{Segment, Transit};

use engine::{Engine, Factory, TaskOpts, WorkerQueues};
use worker::{WorkerBoot, worker_main};

pub use crate::callable::{StateTaskFn, TaskFn};
pub use futures::{AsCompleted, ReturnWhen, Waited, as_completed, wait};
pub use iter::{IMap, IMapUnordered};
pub use result::AsyncResult;
pub(crate) use worker::with_worker_state;
pub use worker::worker_id;

/// An error of the pool itself (as opposed to one task's: [`TaskError`]). Messages follow
/// CPython's where it has one.
///
/// # Examples
///
/// ```
/// use multiproc::{Pool, PoolError};
///
/// assert!(matches!(Pool::new(0), Err(PoolError::NoProcesses)));
/// assert_eq!(PoolError::NoProcesses.to_string(), "Number of processes must be at least 1");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A pool of zero processes was asked for.
    #[error("Number of processes must be at least 1")]
    NoProcesses,
    /// A chunk size below 1.
    #[error("Chunksize must be 1+, not {0}")]
    ChunkSize(usize),
    /// Work was submitted after `close` or `terminate`.
    #[error("Pool not running")]
    NotRunning,
    /// Work was submitted after [`Pool::shutdown`] (the executor's wording).
    #[error("cannot schedule new futures after shutdown")]
    Shutdown,
    /// `join` was called before `close` or `terminate`.
    #[error("Pool is still running")]
    StillRunning,
    /// The pool was terminated before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// `successful` was asked of a result that is not ready.
    #[error("the result is not ready")]
    NotReady,
    /// `join_timeout` ran out before the workers ended.
    #[error("the pool's work and workers did not end in time")]
    JoinTimeout,
    /// A worker could not be started.
    #[error("could not start a pool worker: {0}")]
    Start(#[source] Arc<ProcessError>),
    /// One of the pool's queues failed.
    #[error("a pool queue failed: {0}")]
    Queue(#[source] Arc<QueueError>),
    /// The task's arguments could not be encoded.
    #[error("cannot encode the task's arguments: {0}")]
    Codec(#[source] CodecError),
    /// The function cannot run in a worker (it is not in the program's executable).
    #[error("cannot run this function in a worker: {0}")]
    Function(String),
    /// A thread of the pool could not be started.
    #[error("could not start a pool thread: {0}")]
    Thread(#[source] Arc<std::io::Error>),
}

/// Why one task did not give back its value.
///
/// # Examples
///
/// ```
/// use multiproc::{Pool, TaskError};
///
/// fn check(x: i32) -> i32 {
///     assert!(x >= 0, "negative input {x}");
///     x
/// }
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = Pool::new(1)?;
/// match pool.apply(check, -3) {
///     Err(TaskError::Panicked { message, location }) => {
///         assert_eq!(message, "negative input -3");
///         assert!(location.unwrap().contains(".rs:"));
///     }
///     other => panic!("{other:?}"),
/// }
/// // The worker lives on.
/// assert_eq!(pool.apply(check, 3)?, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked (the worker lives on).
    #[error("the task panicked{}: {message}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panicked {
        /// The panic's message.
        message: String,
        /// `file:line:column`, when known.
        location: Option<String>,
    },
    /// The worker running the task died (a signal, an abort, an exit); it was replaced.
    #[error("worker {pid} died while running the task: {cause}")]
    WorkerDied {
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        cause: ChildError,
    },
    /// The task ran past its time limit: its worker was killed and replaced.
    #[error("the task ran past its time limit of {limit:?}; its worker {pid} was killed")]
    TimeLimit {
        /// The limit.
        limit: Duration,
        /// The worker that was killed.
        pid: u32,
    },
    /// The task was cancelled.
    #[error("the task was cancelled")]
    Cancelled,
    /// `get_timeout` (or a map's timeout) ran out; the task goes on.
    #[error("timed out waiting for the result")]
    Timeout,
    /// The result was already taken by an earlier `get`.
    #[error("the result was already taken")]
    Taken,
    /// The worker could not run the task (its arguments did not decode, its result did
    /// not encode, ...).
    #[error("the worker could not run the task: {0}")]
    Failed(String),
    /// The result came back but could not be decoded.
    #[error("cannot decode the task's result: {0}")]
    Decode(#[source] CodecError),
    /// Workers kept failing in the initializer, so the pool gave up on starting them.
    #[error("the pool's initializer keeps failing: {0}")]
    InitializerFailed(String),
    /// The pool itself failed or was terminated.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Figures of one worker, from [`Pool::worker_stats`].
///
/// # Examples
///
/// ```
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = multiproc::Pool::new(2)?;
/// pool.map(|x: u32| x + 1, 0..100)?;
/// let stats = pool.worker_stats();
/// // CPython's default chunks: ceil(100 / (4 * 2)) = 13 items per task, 8 tasks.
/// assert_eq!(stats.iter().map(|s| s.tasks).sum::<u64>(), 8);
/// assert_eq!(stats.iter().map(|s| s.items).sum::<u64>(), 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker's id in the pool (1, 2, ...; a replacement gets a new one).
    pub id: u32,
    /// Its process id.
    pub pid: u32,
    /// Tasks it finished (a chunk of a map counts once).
    pub tasks: u64,
    /// Items it finished (every item of a chunk).
    pub items: u64,
    /// Time spent running tasks.
    pub busy: Duration,
    /// Time alive and not running a task.
    pub idle: Duration,
    /// Whether it is still part of the pool.
    pub alive: bool,
}

/// When a failed task is tried again: an optional policy of a pool
/// ([`PoolBuilder::retry`]) or of one map ([`MapOptions::retry`]).
///
/// A *crash* is the death of the worker running the task (a signal, an abort, an exit) or
/// its time limit; an *error* is a panic of the task (for a chunk of a map, of any of its
/// items: the whole chunk runs again) or a task that could not run. The task's last outcome
/// is what its result gives.
///
/// # Examples
///
/// ```
/// use multiproc::{Pool, RawValue, Retry};
///
/// /// Kills its worker the first time, works the second.
/// fn flaky(runs: RawValue<u32>) -> u32 {
///     if runs.fetch_add(1) == 0 {
///         std::process::abort();
///     }
///     runs.load()
/// }
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = Pool::builder().processes(1).retry(Retry::new(3)).build()?;
/// let runs = RawValue::new(0u32)?;
/// assert_eq!(pool.apply(flaky, runs.clone())?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    on_crash: bool,
    on_error: bool,
}

impl Retry {
    /// At most `attempts` runs in all (the first included), retrying after a crash only.
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            on_crash: true,
            on_error: false,
        }
    }

    /// Whether a crash (the worker died, or the time limit) is retried (default: yes).
    pub fn on_crash(mut self, yes: bool) -> Self {
        self.on_crash = yes;
        self
    }

    /// Whether an error (a panic, a task that could not run) is retried (default: no).
    pub fn on_error(mut self, yes: bool) -> Self {
        self.on_error = yes;
        self
    }
}

/// Options of one map or imap call.
///
/// # Examples
///
/// ```
/// use multiproc::{MapOptions, Pool};
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = Pool::new(2)?;
/// let opts = MapOptions::new().chunksize(10);
/// assert_eq!(pool.map_with(|x: u32| x * 2, 0..100, &opts)?.len(), 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MapOptions {
    chunksize: Option<usize>,
    in_flight: Option<usize>,
    task_timeout: Option<Duration>,
    timeout: Option<Duration>,
    retry: Option<Retry>,
    #[cfg(feature = "progress")]
    progress: Option<indicatif::ProgressBar>,
}

impl MapOptions {
    /// The defaults: CPython's chunk size formula for `map` (1 for imap), a bounded number
    /// of tasks in flight, no time limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Items per task (CPython's `chunksize`); must be at least 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n);
        self
    }

    /// How many tasks may be submitted and not yet consumed at once (imap reads its input
    /// only as far as this allows). Default: 64 per worker.
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = Some(n.max(1));
        self
    }

    /// A time limit for each task: a task still running after it fails with
    /// [`TaskError::TimeLimit`], and its worker is killed and replaced.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// A time limit for the whole call: `map` gives [`TaskError::Timeout`] if its results are
    /// not all in by then, and an imap iterator gives one `Err(TaskError::Timeout)` for the
    /// item it was waiting for, then ends. The tasks still running go on (cancel them with a
    /// per-task [`task_timeout`](Self::task_timeout) instead if they must stop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{MapOptions, TaskError};
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let opts = MapOptions::new().timeout(Duration::from_millis(50));
    /// let slow = [Duration::from_millis(0), Duration::from_secs(5)];
    /// assert!(matches!(pool.map_with(std::thread::sleep, slow, &opts), Err(TaskError::Timeout)));
    /// pool.terminate();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Shows a progress bar (on standard error, when it is a terminal) that advances with
    /// every finished item; its length is the input's when the iterator knows it, and a
    /// count otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let opts = multiproc::MapOptions::new().progress();
    /// assert_eq!(pool.map_with(|x: u32| x, 0..1000, &opts)?.len(), 1000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress(self) -> Self {
        self.progress_bar(indicatif::ProgressBar::new(0))
    }

    /// Advances this progress bar (any indicatif bar: styled, hidden, in a `MultiProgress`)
    /// with every finished item; its length is set to the input's when the iterator knows
    /// it. It is finished when the call has every result.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::indicatif::ProgressBar;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let bar = ProgressBar::hidden();
    /// let opts = multiproc::MapOptions::new().progress_bar(bar.clone());
    /// pool.map_with(|x: u32| x, 0..100, &opts)?;
    /// assert_eq!((bar.position(), bar.length()), (100, Some(100)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress_bar(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = Some(bar);
        self
    }

    /// A retry policy for this call's tasks (instead of the pool's).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    fn task_opts(&self) -> TaskOpts {
        TaskOpts {
            time_limit: self.task_timeout,
            retry: self.retry,
        }
    }
}

/// Builds a [`Pool`] with CPython's options.
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// fn hello(greeting: String) {
///     // Runs once in every worker, replacements too.
///     assert_eq!(greeting, "hi");
/// }
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(hello, "hi".to_string())
///     .maxtasksperchild(10)
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PoolBuilder {
    processes: Option<usize>,
    retry: Option<Retry>,
    maxtasks: usize,
    context: Option<Context>,
    init: Option<InitFactory>,
}

/// Makes a worker process given its queues and the pool's `maxtasksperchild`.
type InitFactory = Arc<dyn Fn(WorkerQueues, u64, &Context) -> Process + Send + Sync>;

use crate::process::Process;

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("maxtasksperchild", &self.maxtasks)
            .field("context", &self.context)
            .field("initializer", &self.init.is_some())
            .finish()
    }
}

impl PoolBuilder {
    /// The number of workers (default: [`cpu_count`](crate::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Retries failed tasks by this policy (default: none).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Each worker exits after this many tasks and is replaced (0: never).
    pub fn maxtasksperchild(mut self, n: usize) -> Self {
        self.maxtasks = n;
        self
    }

    /// The start method of the workers (default: the program's).
    pub fn context(mut self, context: Context) -> Self {
        self.context = Some(context);
        self
    }

    /// A function every worker runs once before its first task, with `args` (CPython's
    /// `initializer` and `initargs`). The arguments may hold shared objects: each worker
    /// gets its own handle. A worker whose initializer panics is replaced; when it keeps
    /// failing, the pool's tasks fail with [`TaskError::InitializerFailed`].
    pub fn initializer<I>(mut self, f: fn(I), args: I) -> Self
    where
        I: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.init = Some(Arc::new(
            move |queues: WorkerQueues, maxtasks, context: &Context| {
                worker_process(
                    queues,
                    maxtasks,
                    context,
                    Some((TrustedFn(f), args.clone())),
                    None,
                )
            },
        ));
        self
    }

    /// A state for every worker (mpire's `worker_state`): `init(args)` runs once in each
    /// worker, replacements too, and what it returns is handed (as `&mut S`) to every task
    /// submitted with the `*_state` calls ([`Pool::apply_state`], [`Pool::map_state`], ...).
    /// The state stays in its worker: it need not be serializable (a connection, a cache, a
    /// loaded model). Replaces an [`initializer`](Self::initializer).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::HashMap;
    ///
    /// fn new_cache(_: ()) -> HashMap<u64, u64> {
    ///     HashMap::new()
    /// }
    ///
    /// /// Counts, in this worker, how often each key was seen.
    /// fn seen(cache: &mut HashMap<u64, u64>, key: u64) -> u64 {
    ///     let n = cache.entry(key).or_default();
    ///     *n += 1;
    ///     *n
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::builder()
    ///     .processes(1)
    ///     .worker_state(new_cache, ())
    ///     .build()?;
    /// assert_eq!(pool.map_state(seen, [7, 7, 8, 7])?, [1, 2, 1, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_state<I, S>(mut self, init: fn(I) -> S, args: I) -> Self
    where
        I: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        S: 'static,
    {
        self.init = Some(Arc::new(
            move |queues: WorkerQueues, maxtasks, context: &Context| {
                worker_process(
                    queues,
                    maxtasks,
                    context,
                    Some((TrustedFn(init), args.clone())),
                    None,
                )
            },
        ));
        self
    }

    /// [`worker_state`](Self::worker_state) with an exit hook: `exit(state)` runs in a
    /// worker that ends cleanly (at [`Pool::join`], or after `maxtasksperchild` tasks), not
    /// in one that is killed.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::Queue;
    ///
    /// fn open(log: Queue<String>) -> (Queue<String>, u32) {
    ///     (log, 0)
    /// }
    /// fn work(state: &mut (Queue<String>, u32), x: u32) -> u32 {
    ///     state.1 += 1;
    ///     x
    /// }
    /// fn close((log, n): (Queue<String>, u32)) {
    ///     log.put(format!("worker ran {n} tasks")).unwrap();
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let log = Queue::new(0)?;
    /// let pool = multiproc::Pool::builder()
    ///     .processes(1)
    ///     .worker_state_and_exit(open, log.clone(), close)
    ///     .build()?;
    /// pool.map_state(work, 0..5)?;
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(log.get()?, "worker ran 5 tasks");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_state_and_exit<I, S>(mut self, init: fn(I) -> S, args: I, exit: fn(S)) -> Self
    where
        I: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        S: 'static,
    {
        self.init = Some(Arc::new(
            move |queues: WorkerQueues, maxtasks, context: &Context| {
                worker_process(
                    queues,
                    maxtasks,
                    context,
                    Some((TrustedFn(init), args.clone())),
                    Some(exit),
                )
            },
        ));
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// [`PoolError::NoProcesses`] for zero processes; [`PoolError::Start`] if a worker could
    /// not be started (with `spawn` and `forkserver`, a program that never called
    /// [`init`](crate::init) gets the hook's error here).
    pub fn build(self) -> Result<Pool, PoolError> {
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(PoolError::NoProcesses);
        }
        let context = self.context.unwrap_or_else(Context::default_context);
        let name = match context.start_method() {
            crate::StartMethod::Fork => "ForkPoolWorker",
            crate::StartMethod::Spawn => "SpawnPoolWorker",
            crate::StartMethod::Forkserver => "ForkServerPoolWorker",
        };
        let maxtasks = self.maxtasks as u64;
        let init = self.init;
        let factory: Factory = Box::new(move |queues| {
            let p = match &init {
                Some(make) => make(queues, maxtasks, &context),
                None => worker_process::<(), ()>(queues, maxtasks, &context, None, None),
            };
            Ok(p)
        });
        let engine = Engine::start(processes, maxtasks, name.to_owned(), self.retry, factory)?;
        Ok(Pool { engine })
    }
}

fn worker_process<I, S>(
    queues: WorkerQueues,
    maxtasks: u64,
    context: &Context,
    init: worker::Init<I, S>,
    exit: Option<fn(S)>,
) -> Process
where
    I: Serialize + DeserializeOwned + 'static,
    S: 'static,
{
    context.process(
        worker_main::<I, S>,
        WorkerBoot {
            serial: queues.serial,
            tasks: queues.tasks,
            results: queues.results,
            maxtasks,
            init,
            exit: exit.map(TrustedFn),
            status: queues.status,
        },
    )
}

/// A pool of worker processes: CPython's `multiprocessing.Pool`.
///
/// Tasks go to the workers through shared-memory queues; a worker that dies (a signal, an
/// abort, the OOM killer, a segfault in native code) fails only the task it was running,
/// with [`TaskError::WorkerDied`] naming its pid and how it ended, and is replaced at once;
/// the tasks it had not started go to the others. A panic in a task comes back as
/// [`TaskError::Panicked`] and the worker goes on.
///
/// # Under the `fork` start method
///
/// Starting a worker by `fork` takes std's standard-output and standard-error locks for the
/// moment of the fork (so the child finds them consistent). A thread that holds
/// `std::io::stdout().lock()` while it waits for a result that needs a new worker (a
/// replacement after a death or after `maxtasksperchild`) would wait for ever: do not hold
/// those locks across pool calls there. `spawn` and `forkserver` have no such rule.
///
/// # Dropping
///
/// Dropping a pool terminates it, as leaving CPython's `with Pool() as p:` block does: the
/// workers are killed, and tasks not yet finished fail with [`PoolError::Terminated`]. To
/// let submitted work finish, call [`close`](Self::close) then [`join`](Self::join) first.
///
/// # Examples
///
/// ```
/// use multiproc::Pool;
///
/// fn add((a, b): (u32, u32)) -> u32 {
///     a + b
/// }
///
/// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
/// let pool = Pool::new(3)?;
/// let sums = pool.map(add, vec![(1, 2), (3, 4)])?;
/// assert_eq!(sums, [3, 7]);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.engine.processes())
            .field("state", &self.engine.phase())
            .finish()
    }
}

/// A task's items, encoded.
pub(crate) struct Encoded {
    pub(crate) body: Vec<u8>,
    /// The descriptors they hold.
    pub(crate) fds: Vec<std::os::fd::OwnedFd>,
    /// The shared objects they name (in transit until a worker decodes them).
    pub(crate) by_name: Vec<Transit>,
    /// How many items.
    pub(crate) count: u32,
}

/// Encodes a task's items.
fn encode_items<T: Serialize>(items: &[T]) -> Result<Encoded, PoolError> {
    let mut body = Vec::new();
    let (r, fds, by_name) =
        codec::fds::encoding_segments_by_name(|| Postcard::encode(items, &mut body));
    match r {
        Ok(()) => Ok(Encoded {
            body,
            fds,
            by_name,
            count: items.len() as u32,
        }),
        Err(e) => {
            Segment::take_back_transits(&by_name);
            Err(PoolError::Codec(e))
        }
    }
}

/// A task function ready to go to workers: its code offsets, with the types of its items
/// and results.
pub(crate) struct Func<T, R> {
    offsets: (u64, u64),
    _types: std::marker::PhantomData<fn(T) -> R>,
}

impl<T, R> Clone for Func<T, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, R> Copy for Func<T, R> {}

impl<T, R> Func<T, R> {
    fn from_callable(c: TaskCallable) -> Result<Self, PoolError> {
        let offsets = c
            .to_offsets()
            .map_err(|e| PoolError::Function(e.to_string()))?;
        Ok(Self {
            offsets,
            _types: std::marker::PhantomData,
        })
    }

    fn plain<F: TaskFn<Item = T, Output = R>>(f: F) -> Result<Self, PoolError> {
        Self::from_callable(TaskCallable::new(f))
    }

    fn with_state<F: StateTaskFn<Item = T, Output = R>>(f: F) -> Result<Self, PoolError> {
        Self::from_callable(TaskCallable::with_state(f))
    }
}

/// CPython's default chunk size for `map`: `ceil(len / (4 * workers))`.
fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(4 * workers).max(1)
}

impl Pool {
    /// A pool of `processes` workers with the program's start method (CPython's
    /// `Pool(processes)`).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn new(processes: usize) -> Result<Self, PoolError> {
        Self::builder().processes(processes).build()
    }

    /// Options: processes, initializer, maxtasksperchild, context.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::builder().build()?;
    /// assert_eq!(pool.processes(), multiproc::cpu_count());
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            retry: None,
            maxtasks: 0,
            context: None,
            init: None,
        }
    }

    /// The number of workers.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// assert_eq!(multiproc::Pool::new(3)?.processes(), 3);
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.engine.processes()
    }

    /// The process ids of the live workers.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// assert_eq!(pool.pids().len(), 2);
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn pids(&self) -> Vec<u32> {
        self.engine.pids()
    }

    /// Figures of every worker the pool has had: the live ones first.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// pool.apply(|x: u8| x, 1)?;
    /// assert_eq!(pool.worker_stats()[0].tasks, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.engine.stats()
    }

    /// Submits one task; its result comes later (`apply_async`).
    ///
    /// # Errors
    ///
    /// 'Pool not running' after `close` or `terminate`; [`PoolError::Codec`] if the argument
    /// cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let r = pool.apply_async(|s: String| s.len(), "four".to_string())?;
    /// assert_eq!(r.get()?, 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.submit_one(Func::plain(f), args, None, None)
    }

    /// [`apply_async`](Self::apply_async) with CPython's `callback` and `error_callback`: one
    /// of them runs with the outcome as soon as the task finishes, on the thread collecting
    /// the pool's results (keep it short, and do not wait in it for another result of the
    /// same pool: that thread would be the one to collect it). A panic in a callback is
    /// printed and goes no further. The result is still there for [`AsyncResult::get`].
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Self::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async_with(
    ///     |x: u32| x * 3,
    ///     5,
    ///     move |v: &u32| tx.send(*v).unwrap(),
    ///     |e| panic!("{e}"),
    /// )?;
    /// assert_eq!(rx.recv()?, 15);
    /// assert_eq!(r.get()?, 15);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&TaskError) + Send + 'static,
    ) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let on_complete = result::callbacks::<R>(callback, error_callback);
        self.submit_one(Func::plain(f), args, Some(on_complete), None)
    }

    /// [`apply_async`](Self::apply_async) with a time limit: if the task still runs after
    /// `limit`, its worker is killed and replaced and the task fails with
    /// [`TaskError::TimeLimit`].
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Self::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::TaskError;
    ///
    /// fn forever(_: ()) {
    ///     loop {
    ///         std::thread::sleep(Duration::from_secs(1));
    ///     }
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async_timeout(forever, (), Duration::from_millis(100))?;
    /// assert!(matches!(r.get(), Err(TaskError::TimeLimit { .. })));
    /// assert_eq!(pool.apply(|x: u8| x + 1, 1)?, 2); // a new worker took over
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async_timeout<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        limit: Duration,
    ) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.submit_one(Func::plain(f), args, None, Some(limit))
    }

    fn submit_one<A, R>(
        &self,
        func: Result<Func<A, R>, PoolError>,
        args: A,
        on_complete: Option<engine::OnComplete>,
        limit: Option<Duration>,
    ) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let offsets = func?.offsets;
        let encoded = encode_items(std::slice::from_ref(&args))?;
        let batch = self.engine.new_batch(on_complete)?;
        let opts = TaskOpts {
            time_limit: limit,
            retry: None,
        };
        let added = self.engine.add_task(batch, offsets, encoded, opts);
        self.engine.seal(batch);
        let result = AsyncResult::new(self.engine.clone(), batch, result::decode_one::<R>);
        added.map(|_| result)
    }

    /// Runs one task and waits for its result (`apply`).
    ///
    /// # Errors
    ///
    /// The task's [`TaskError`], or the pool's as [`TaskError::Pool`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// assert_eq!(pool.apply(|(a, b): (i32, i32)| a * b, (6, 7))?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async(f, args)?.get()
    }

    /// Applies `f` to every item and returns the results in input order (`map`). Waits for
    /// every task, then returns the values or the error of the first item (in input order)
    /// that failed.
    ///
    /// Items go in chunks of CPython's default size, `ceil(len / (4 * processes))`, when the
    /// iterator knows its length (otherwise it is read whole first, as CPython does).
    ///
    /// # Errors
    ///
    /// The first failed item's [`TaskError`]; the pool's as [`TaskError::Pool`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let lens = pool.map(|s: String| s.len(), ["a", "bb", "ccc"].map(String::from))?;
    /// assert_eq!(lens, [1, 2, 3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_with(f, items, &MapOptions::new())
    }

    /// [`map`](Self::map) with options (chunk size, tasks in flight, a time limit per task).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map); [`PoolError::ChunkSize`] for a chunk size of 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::MapOptions;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let v = pool.map_with(|x: u64| x * x, 0..10, &MapOptions::new().chunksize(3))?;
    /// assert_eq!(v, (0..10).map(|x| x * x).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        options: &MapOptions,
    ) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_fn(Func::plain(f), items, options)
    }

    /// Applies `f` to the two parts of every pair (CPython's `starmap`, for two arguments).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// # Examples
    ///
    /// ```
    /// fn power(base: u64, exp: u32) -> u64 {
    ///     base.pow(exp)
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// assert_eq!(pool.starmap(power, [(2, 10), (3, 3)])?, [1024, 27]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn starmap<A, B, R, I>(&self, f: fn(A, B) -> R, items: I) -> Result<Vec<R>, TaskError>
    where
        A: Serialize + DeserializeOwned + 'static,
        B: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = (A, B)>,
    {
        self.map_fn(Func::plain(f), items, &MapOptions::new())
    }

    fn map_fn<T: Serialize, R: DeserializeOwned, I: IntoIterator<Item = T>>(
        &self,
        f: Result<Func<T, R>, PoolError>,
        items: I,
        options: &MapOptions,
    ) -> Result<Vec<R>, TaskError> {
        let f = f?;
        let items = items.into_iter();
        let (lo, hi) = items.size_hint();
        if options.chunksize.is_none() && hi != Some(lo) {
            // Unknown length: read it whole, as CPython does, for the default chunk size.
            let all: Vec<T> = items.collect();
            return self.map_known(f, all.into_iter(), options);
        }
        self.map_known(f, items, options)
    }

    fn map_known<T: Serialize, R: DeserializeOwned, I: Iterator<Item = T>>(
        &self,
        f: Func<T, R>,
        items: I,
        options: &MapOptions,
    ) -> Result<Vec<R>, TaskError> {
        let len = items.size_hint().0;
        let chunksize = match options.chunksize {
            Some(0) => return Err(PoolError::ChunkSize(0).into()),
            Some(n) => n,
            None => default_chunksize(len, self.processes()),
        };
        let mut stream = iter::Stream::open(self, f, items, chunksize, options, false)?;
        // Chunks are put in order as they come: one that arrives early waits in `later`.
        let mut out: Vec<R> = Vec::with_capacity(len.min(1 << 16));
        let mut later: std::collections::BTreeMap<u64, result::Values<R>> =
            std::collections::BTreeMap::new();
        let mut next = 0u64;
        let mut first_error: Option<TaskError> = None;
        let mut place = |chunk: result::Values<R>, first_error: &mut Option<TaskError>| {
            let chunk = match chunk {
                result::Values::All(values) => {
                    if first_error.is_none() {
                        out.extend(values);
                    }
                    return;
                }
                result::Values::Each(items) => items,
            };
            for item in chunk {
                match item {
                    Ok(v) if first_error.is_none() => out.push(v),
                    Ok(_) => {}
                    // In input order, so the first seen is the first item that failed.
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        };
        loop {
            let (index, chunk) = match stream.next_chunk(None)? {
                iter::Next::Chunk(index, chunk) => (index, chunk),
                iter::Next::TimedOut => return Err(TaskError::Timeout),
                iter::Next::End => break,
            };
            if index != next {
                later.insert(index, chunk);
                continue;
            }
            place(chunk, &mut first_error);
            next += 1;
            while let Some(chunk) = later.remove(&next) {
                place(chunk, &mut first_error);
                next += 1;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if later.is_empty() => Ok(out),
            None => Err(TaskError::Failed("a result is missing".to_owned())),
        }
    }

    /// Submits a whole map and returns at once (`map_async`); the input is read and encoded
    /// now.
    ///
    /// # Errors
    ///
    /// 'Pool not running'; [`PoolError::Codec`]; [`PoolError::ChunkSize`].
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let r = pool.map_async(|x: i64| -x, vec![1, 2, 3])?;
    /// assert_eq!(r.get()?, [-1, -2, -3]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_async<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_async_fn(Func::plain(f), items, None)
    }

    /// [`starmap`](Self::starmap), returning at once (`starmap_async`).
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let r = pool.starmap_async(|a: u8, b: u8| a + b, [(1, 2), (3, 4)])?;
    /// assert_eq!(r.get()?, [3, 7]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn starmap_async<A, B, R, I>(
        &self,
        f: fn(A, B) -> R,
        items: I,
    ) -> Result<AsyncResult<Vec<R>>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        B: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = (A, B)>,
    {
        self.map_async_fn(Func::plain(f), items, None)
    }

    fn map_async_fn<T: Serialize, R: DeserializeOwned + 'static, I: IntoIterator<Item = T>>(
        &self,
        f: Result<Func<T, R>, PoolError>,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError> {
        let f = f?;
        let items: Vec<T> = items.into_iter().collect();
        let chunksize = match chunksize {
            Some(0) => return Err(PoolError::ChunkSize(0)),
            Some(n) => n,
            None => default_chunksize(items.len(), self.processes()),
        };
        let offsets = f.offsets;
        let batch = self.engine.new_batch(None)?;
        let result = AsyncResult::new(self.engine.clone(), batch, result::decode_all::<R>);
        let mut items = items.into_iter().peekable();
        let mut added = Ok(());
        while added.is_ok() && items.peek().is_some() {
            let chunk: Vec<T> = items.by_ref().take(chunksize).collect();
            added = encode_items(&chunk).and_then(|e| {
                self.engine
                    .add_task(batch, offsets, e, TaskOpts::default())
                    .map(drop)
            });
        }
        self.engine.seal(batch);
        if let Err(e) = added {
            // Half a map is no map: what went in is cancelled, and the batch is let go.
            result.cancel();
            return Err(e);
        }
        Ok(result)
    }

    /// Results in input order as they become available, while later tasks still run
    /// (`imap`). The input is read lazily: at most a bounded number of tasks are in flight,
    /// so an endless iterator works in constant memory. Chunk size 1 unless set with
    /// [`imap_with`](Self::imap_with).
    ///
    /// # Errors
    ///
    /// 'Pool not running'; each item is a `Result` of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let mut squares = pool.imap(|x: u64| x * x, 1..)?; // endless input
    /// assert_eq!(squares.next().unwrap()?, 1);
    /// assert_eq!(squares.next().unwrap()?, 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Result<IMap<'_, I::IntoIter, R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_with(f, items, &MapOptions::new())
    }

    /// [`imap`](Self::imap) with options.
    ///
    /// # Errors
    ///
    /// As [`imap`](Self::imap); [`PoolError::ChunkSize`] for a chunk size of 0.
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::MapOptions;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let opts = MapOptions::new().chunksize(4).in_flight(8);
    /// let v: Result<Vec<u32>, _> = pool.imap_with(|x: u32| x + 1, 0..20, &opts)?.collect();
    /// assert_eq!(v?, (1..21).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        options: &MapOptions,
    ) -> Result<IMap<'_, I::IntoIter, R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_stream(Func::plain(f), items, options, true)
    }

    /// Results in the order the tasks finish (`imap_unordered`); each comes with nothing
    /// but its value, as in CPython. Lazy input as [`imap`](Self::imap).
    ///
    /// # Errors
    ///
    /// As [`imap`](Self::imap).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let mut v: Vec<u32> = pool
    ///     .imap_unordered(|x: u32| x * 10, 0..5)?
    ///     .collect::<Result<_, _>>()?;
    /// v.sort();
    /// assert_eq!(v, [0, 10, 20, 30, 40]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Result<IMapUnordered<'_, I::IntoIter, R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_unordered_with(f, items, &MapOptions::new())
    }

    /// [`imap_unordered`](Self::imap_unordered) with options.
    ///
    /// # Errors
    ///
    /// As [`imap_with`](Self::imap_with).
    ///
    /// # Examples
    ///
    /// ```
    /// use multiproc::MapOptions;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let n = pool
    ///     .imap_unordered_with(|x: u32| x, 0..100, &MapOptions::new().chunksize(7))?
    ///     .count();
    /// assert_eq!(n, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap_unordered_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        options: &MapOptions,
    ) -> Result<IMapUnordered<'_, I::IntoIter, R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_stream(Func::plain(f), items, options, false)
    }

    /// Submits one task and returns its future (`ProcessPoolExecutor.submit`): the same
    /// as [`apply_async`](Self::apply_async), whose [`AsyncResult`] is also a
    /// [`std::future::Future`].
    ///
    /// # Errors
    ///
    /// 'cannot schedule new futures after shutdown' after [`shutdown`](Self::shutdown);
    /// otherwise as [`apply_async`](Self::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(2)?;
    /// let fut = pool.submit(|x: u64| x.pow(2), 9)?;
    /// assert_eq!(fut.get()?, 81);
    /// pool.shutdown(true, false)?;
    /// assert_eq!(
    ///     pool.submit(|x: u64| x, 1).unwrap_err().to_string(),
    ///     "cannot schedule new futures after shutdown"
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>, PoolError>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async(f, args)
    }

    /// The executor's `shutdown(wait, cancel_futures)`: no more tasks may be submitted;
    /// with `cancel_futures`, tasks not yet started fail with [`TaskError::Cancelled`]; with
    /// `wait`, waits for the rest and for the workers' end (as [`join`](Self::join)).
    ///
    /// # Errors
    ///
    /// Only with `wait`: as [`join`](Self::join).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use multiproc::{Event, TaskError};
    ///
    /// fn nap(started: Event) {
    ///     started.set();
    ///     std::thread::sleep(Duration::from_millis(200));
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let started = Event::new()?;
    /// let running = pool.submit(nap, started.clone())?;
    /// let queued: Vec<_> = (0..100).map(|i| pool.submit(|x: u32| x, i)).collect::<Result<_, _>>()?;
    /// started.wait();
    /// pool.shutdown(true, true)?;
    /// assert!(running.get().is_ok()); // it had started
    /// assert!(queued.iter().all(|f| matches!(f.get(), Err(TaskError::Cancelled))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) -> Result<(), PoolError> {
        self.engine.shut_down(cancel_futures);
        if wait { self.join() } else { Ok(()) }
    }

    /// [`apply_async`](Self::apply_async) for a task that takes its worker's state (see
    /// [`PoolBuilder::worker_state`]).
    ///
    /// # Errors
    ///
    /// As [`apply_async`](Self::apply_async). A pool whose workers have no state of type
    /// `S` fails the task with a panic that says so.
    ///
    /// # Examples
    ///
    /// ```
    /// fn zero(_: ()) -> u64 {
    ///     0
    /// }
    /// fn add(total: &mut u64, x: u64) -> u64 {
    ///     *total += x;
    ///     *total
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::builder().processes(1).worker_state(zero, ()).build()?;
    /// pool.apply_state(add, 5)?;
    /// assert_eq!(pool.apply_async_state(add, 2)?.get()?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_async_state<S, A, R>(
        &self,
        f: fn(&mut S, A) -> R,
        args: A,
    ) -> Result<AsyncResult<R>, PoolError>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.submit_one(Func::with_state(f), args, None, None)
    }

    /// [`apply`](Self::apply) for a task that takes its worker's state.
    ///
    /// # Errors
    ///
    /// As [`apply_async_state`](Self::apply_async_state) and [`apply`](Self::apply).
    ///
    /// # Examples
    ///
    /// ```
    /// fn name(_: ()) -> String {
    ///     format!("worker {}", multiproc::pool::worker_id().unwrap())
    /// }
    /// fn greet(me: &mut String, who: String) -> String {
    ///     format!("{who}, from {me}")
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::builder().processes(1).worker_state(name, ()).build()?;
    /// assert_eq!(pool.apply_state(greet, "hi".to_string())?, "hi, from worker 1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn apply_state<S, A, R>(&self, f: fn(&mut S, A) -> R, args: A) -> Result<R, TaskError>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async_state(f, args)?.get()
    }

    /// [`map_with`](Self::map_with) for a task that takes its worker's state.
    ///
    /// # Errors
    ///
    /// As [`map_with`](Self::map_with).
    ///
    /// # Examples
    ///
    /// See [`PoolBuilder::worker_state`].
    pub fn map_state<S, A, R, I>(
        &self,
        f: fn(&mut S, A) -> R,
        items: I,
    ) -> Result<Vec<R>, TaskError>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.map_fn(Func::with_state(f), items, &MapOptions::new())
    }

    /// [`imap_with`](Self::imap_with) for a task that takes its worker's state.
    ///
    /// # Errors
    ///
    /// As [`imap_with`](Self::imap_with).
    ///
    /// # Examples
    ///
    /// ```
    /// fn offset(base: u32) -> u32 {
    ///     base
    /// }
    /// fn shift(base: &mut u32, x: u32) -> u32 {
    ///     *base + x
    /// }
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::builder().processes(2).worker_state(offset, 100).build()?;
    /// let v: Vec<u32> = pool
    ///     .imap_state(shift, 0..3, &multiproc::MapOptions::new())?
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(v, [100, 101, 102]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn imap_state<S, A, R, I>(
        &self,
        f: fn(&mut S, A) -> R,
        items: I,
        options: &MapOptions,
    ) -> Result<IMap<'_, I::IntoIter, R>, PoolError>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.imap_stream(Func::with_state(f), items, options, true)
    }

    /// An imap iterator over `items` (chunk size 1 unless the options say).
    fn imap_stream<T: Serialize, R: DeserializeOwned, I: IntoIterator<Item = T>>(
        &self,
        f: Result<Func<T, R>, PoolError>,
        items: I,
        options: &MapOptions,
        ordered: bool,
    ) -> Result<IMap<'_, I::IntoIter, R>, PoolError> {
        let chunksize = options.chunksize.unwrap_or(1);
        if chunksize == 0 {
            return Err(PoolError::ChunkSize(0));
        }
        let stream = iter::Stream::open(self, f?, items.into_iter(), chunksize, options, ordered)?;
        Ok(IMap::new(stream))
    }

    /// No more tasks may be submitted; those submitted still run (`close`).
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// pool.close();
    /// assert_eq!(pool.apply_async(|x: u8| x, 1).unwrap_err().to_string(), "Pool not running");
    /// pool.join()?;
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn close(&self) {
        self.engine.close();
    }

    /// Kills the workers at once; unfinished tasks fail with [`PoolError::Terminated`]
    /// (`terminate`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// let r = pool.apply_async(std::thread::sleep, Duration::from_secs(60))?;
    /// pool.terminate();
    /// assert!(r.get().is_err());
    /// pool.join()?;
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn terminate(&self) {
        self.engine.terminate();
    }

    /// Waits for the submitted work and the workers' end, after [`close`](Self::close) or
    /// [`terminate`](Self::terminate) (`join`).
    ///
    /// # Errors
    ///
    /// 'Pool is still running' before `close` or `terminate`.
    ///
    /// # Examples
    ///
    /// ```
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// assert_eq!(pool.join().unwrap_err().to_string(), "Pool is still running");
    /// let r = pool.apply_async(|x: u8| x * 2, 21)?;
    /// pool.close();
    /// pool.join()?;
    /// assert_eq!(r.get()?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self) -> Result<(), PoolError> {
        self.engine.join(None)
    }

    /// [`join`](Self::join), waiting at most `timeout` (then the workers left are killed).
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join); [`PoolError::JoinTimeout`] when the work did not finish in
    /// time.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # multiproc::set_start_method(multiproc::StartMethod::Fork).unwrap();
    /// let pool = multiproc::Pool::new(1)?;
    /// pool.close();
    /// pool.join_timeout(Duration::from_secs(5))?;
    /// # Ok::<(), multiproc::PoolError>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), PoolError> {
        self.engine.join(Some(Instant::now() + timeout))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.engine.terminate();
        let _ = self
            .engine
            .join(Some(Instant::now() + Duration::from_secs(5)));
        self.engine.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpython_default_chunksize() {
        // divmod(len, 4 * workers), plus one if there is a remainder.
        assert_eq!(default_chunksize(100, 4), 7);
        assert_eq!(default_chunksize(16, 4), 1);
        assert_eq!(default_chunksize(17, 4), 2);
        assert_eq!(default_chunksize(0, 4), 1);
        assert_eq!(default_chunksize(100_000, 2), 12_500);
    }
}
