//! S24 `lock_queue_scenarios`: the seed's four ways to give ten jobs a `Lock` and a `Queue`.
//! Each job prints a few lines under the lock, then puts its index on the queue; a scenario
//! succeeds when all ten indices come back from the queue.
//!
//! 1. a `Pool`, with a plain Lock and Queue passed as task arguments (**trap**: CPython
//!    raises 'Lock objects should only be shared between processes through inheritance');
//! 2. a `Pool`, with a manager's Lock and Queue;
//! 3. single processes, at most `ncores` at a time, with a plain Lock and Queue passed as
//!    Process arguments;
//! 4. single processes, with a manager's Lock and Queue.
//!
//! Scenarios 1 and 3 run here, and so does the seed's answer to scenario 1: the pool's
//! `initializer`/`initargs`, which give every worker the lock and the queue once, when it
//! starts ([`Pool::builder`]`.initializer(f, args)`); the initializer keeps them in a
//! process-global (a `static OnceLock`) where the tasks find them. Scenario 1 itself works
//! here as written: a Lock and a Queue are task arguments like any other value. Scenarios 2
//! and 4 come with the manager; the example says so for each rather than imitating them.
//!
//! The pools have `ncores` workers and run the jobs with `map` (the seed's full script), then
//! `close` and `join`. Scenario 3 follows the seed's `do_job_single_processes`, without its
//! polling: the parent starts processes while fewer than `ncores` run, then waits on their
//! sentinels ([`wait`]) for one to end. `ncores` is the seed's 3, or fewer if [`cpu_count`]
//! says so. The jobs count themselves in and out of a shared counter, so the example reports
//! how many ever ran at once. The lines each job prints under the lock come out whole, never
//! mixed with another job's.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`; without one, the
//! library's default).

use std::sync::OnceLock;

use multiproc::{Context, Lock, Pool, Process, Queue, RawValue, cpu_count, get_context, wait};

/// The seed's `args = range(10)`.
const JOBS: u32 = 10;

/// The seed's `ncores = 3`.
const SEED_NCORES: usize = 3;

/// What one job gets: its index, the lock, the queue, and the counters of jobs running now
/// and of the most that ever ran at once.
type Task = (u32, Lock, Queue<u32>, RawValue<u32>, RawValue<u32>);

/// The seed's `the_job`: prints some lines under the lock, then puts its index on the queue.
fn the_job((idx, lock, queue, running, most): Task) {
    let now = running.fetch_add(1) + 1;
    let mut seen = most.load();
    while now > seen {
        match most.compare_exchange(seen, now) {
            Ok(_) => break,
            Err(current) => seen = current,
        }
    }
    {
        let _held = match lock.acquire() {
            Ok(guard) => guard,
            Err(e) => panic!("job {idx}: {e}"),
        };
        for line in ["I", "was", "here", "!!!!", "1111", "einhundertelfzigelf"] {
            println!("{line}");
        }
        println!("By run {idx}");
    }
    if let Err(e) = queue.put(idx) {
        panic!("job {idx}: put: {e}");
    }
    running.fetch_sub(1);
}

/// What the pool's initializer gives every worker: the lock, the queue and the two counters.
type Inherited = (Lock, Queue<u32>, RawValue<u32>, RawValue<u32>);

/// The worker's copy of what its initializer got (the seed's `global lock`).
static INHERITED: OnceLock<Inherited> = OnceLock::new();

/// The seed's `initialize_lock`: keeps the lock and the queue for this worker's tasks.
fn initialize_lock(inherited: Inherited) {
    if INHERITED.set(inherited).is_err() {
        panic!("the initializer runs once per worker");
    }
}

/// `the_job` for the initializer way: only the index comes with the task; the lock and the
/// queue are the worker's, from its initializer.
fn the_job_inherited(idx: u32) {
    let Some((lock, queue, running, most)) = INHERITED.get() else {
        panic!("job {idx}: the initializer did not run in this worker");
    };
    the_job((
        idx,
        lock.clone(),
        queue.clone(),
        running.clone(),
        most.clone(),
    ));
}

/// The seed's `read_queue`: takes items while the queue is not empty.
fn read_queue(queue: &Queue<u32>) -> Result<Vec<u32>, multiproc::GetError> {
    let mut results = Vec::new();
    while !queue.empty() {
        results.push(queue.get()?);
    }
    Ok(results)
}

/// The seed's `do_job_single_processes`: one process per task, at most `ncores` at a time.
fn do_job_single_processes(
    ctx: &Context,
    tasks: impl IntoIterator<Item = Task>,
    ncores: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = tasks.into_iter();
    let mut running: Vec<Process<()>> = Vec::new();
    loop {
        while running.len() < ncores {
            let Some(task) = tasks.next() else { break };
            let mut p = ctx.process(the_job, task);
            p.start()?;
            running.push(p);
        }
        if running.is_empty() {
            return Ok(());
        }
        // Wait for at least one to end (the seed polls `is_alive` every 0.1 s).
        let ended = {
            let sentinels = running
                .iter()
                .map(Process::sentinel)
                .collect::<Result<Vec<_>, _>>()?;
            wait(&sentinels, None)?
        };
        for i in ended.into_iter().rev() {
            let p = running.remove(i);
            p.join()?;
            if p.exitcode()? != Some(0) {
                return Err(format!("a job failed: {p:?}").into());
            }
        }
    }
}

/// Scenario 1: a pool, a plain Lock and Queue passed with every task, no manager.
fn scenario_1_pool_no_manager(
    ctx: &Context,
    ncores: usize,
) -> Result<(Vec<u32>, u32), Box<dyn std::error::Error>> {
    let mypool = Pool::builder()
        .processes(ncores)
        .context(ctx.clone())
        .build()?;
    let lock = Lock::new()?;
    let queue = Queue::new(0)?;
    let running = RawValue::new(0u32)?;
    let most = RawValue::new(0u32)?;
    let iterator = (0..JOBS).map(|idx| {
        (
            idx,
            lock.clone(),
            queue.clone(),
            running.clone(),
            most.clone(),
        )
    });
    mypool.map(the_job, iterator)?;
    mypool.close();
    mypool.join()?;
    Ok((read_queue(&queue)?, most.load()))
}

/// The seed's answer to scenario 1: the lock and the queue go to every worker through the
/// pool's initializer, and the tasks carry only their index.
fn scenario_1_pool_initializer(
    ctx: &Context,
    ncores: usize,
) -> Result<(Vec<u32>, u32), Box<dyn std::error::Error>> {
    let lock = Lock::new()?;
    let queue = Queue::new(0)?;
    let running = RawValue::new(0u32)?;
    let most = RawValue::new(0u32)?;
    let mypool = Pool::builder()
        .processes(ncores)
        .context(ctx.clone())
        .initializer(
            initialize_lock,
            (lock, queue.clone(), running, most.clone()),
        )
        .build()?;
    mypool.map(the_job_inherited, 0..JOBS)?;
    mypool.close();
    mypool.join()?;
    Ok((read_queue(&queue)?, most.load()))
}

/// Prints a scenario's outcome, as the seed's `start_scenario` does.
fn report(name: &str, (results, most): (Vec<u32>, u32), ncores: usize) {
    println!("read back from the queue: {results:?}");
    println!("most jobs running at once: {most} (ncores = {ncores})");
    let mut sorted = results;
    sorted.sort_unstable();
    let args: Vec<u32> = (0..JOBS).collect();
    if sorted == args {
        println!("{name} successful! All {JOBS} indices came back.");
    } else {
        println!("{name} fails: {args:?} != {sorted:?}");
    }
}

/// Scenario 3: single processes, a plain Lock and Queue, no manager.
fn scenario_3_single_processes_no_manager(
    ctx: &Context,
    ncores: usize,
) -> Result<(Vec<u32>, u32), Box<dyn std::error::Error>> {
    let lock = Lock::new()?;
    let queue = Queue::new(0)?;
    let running = RawValue::new(0u32)?;
    let most = RawValue::new(0u32)?;
    let tasks = (0..JOBS).map(|idx| {
        (
            idx,
            lock.clone(),
            queue.clone(),
            running.clone(),
            most.clone(),
        )
    });
    do_job_single_processes(ctx, tasks, ncores)?;
    Ok((read_queue(&queue)?, most.load()))
}

#[multiproc::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = match std::env::args().nth(1) {
        Some(method) => get_context(&method)?,
        None => Context::default_context(),
    };
    let cpus = cpu_count();
    let ncores = SEED_NCORES.min(cpus);

    println!(
        "Scenario 1 (Pool, plain Lock and Queue as task arguments, ncores = {ncores}; CPython: \
         RuntimeError: Lock objects should only be shared between processes through \
         inheritance):"
    );
    report(
        "Scenario 1",
        scenario_1_pool_no_manager(&ctx, ncores)?,
        ncores,
    );

    println!(
        "Scenario 1 with Pool(initializer, initargs) giving every worker the lock and the \
         queue, ncores = {ncores}:"
    );
    report(
        "Scenario 1 with the initializer",
        scenario_1_pool_initializer(&ctx, ncores)?,
        ncores,
    );

    println!("Scenario 2 (Pool, manager's Lock and Queue): not yet, it comes with the manager");

    println!(
        "Scenario 3 (single processes, plain Lock and Queue as Process arguments, ncores = \
         {ncores}: the seed's {SEED_NCORES}, cpu_count() = {cpus}):"
    );
    report(
        "Scenario 3",
        scenario_3_single_processes_no_manager(&ctx, ncores)?,
        ncores,
    );

    println!(
        "Scenario 4 (single processes, manager's Lock and Queue): not yet, it comes with the \
         manager"
    );
    Ok(())
}
