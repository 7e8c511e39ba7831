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
//! Only scenario 3 runs here for now: scenarios 1 and 2 (and the seed's answer, the pool's
//! `initializer`/`initargs`) come with the pool, scenarios 2 and 4 with the manager. The
//! example says so for each rather than imitating them.
//!
//! Scenario 3 follows the seed's `do_job_single_processes`, without its polling: the parent
//! starts processes while fewer than `ncores` run, then waits on their sentinels ([`wait`])
//! for one to end. `ncores` is the seed's 3, or fewer if [`cpu_count`] says so. The jobs
//! count themselves in and out of a shared counter, so the example reports how many ever ran
//! at once. The lines each job prints under the lock come out whole, never mixed with another
//! job's.
//!
//! Run with a start method as the argument (`fork`, `spawn`, `forkserver`: the default).

use multiproc::{Lock, Process, Queue, RawValue, cpu_count, get_context, wait};

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
    ctx: &multiproc::Context,
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

/// Scenario 3: single processes, a plain Lock and Queue, no manager.
fn scenario_3_single_processes_no_manager(
    ctx: &multiproc::Context,
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
    let method = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "forkserver".to_owned());
    let ctx = get_context(&method)?;
    let cpus = cpu_count();
    let ncores = SEED_NCORES.min(cpus);

    println!(
        "Scenario 1 (Pool, plain Lock and Queue as task arguments; CPython: RuntimeError: Lock \
         objects should only be shared between processes through inheritance): not yet, it \
         comes with the pool"
    );
    println!(
        "Scenario 1 with Pool(initializer, initargs) giving every worker the lock: not yet, it \
         comes with the pool"
    );
    println!(
        "Scenario 2 (Pool, manager's Lock and Queue): not yet, it comes with the pool and the \
         manager"
    );

    println!(
        "Scenario 3 (single processes, plain Lock and Queue as Process arguments, ncores = \
         {ncores}: the seed's {SEED_NCORES}, cpu_count() = {cpus}):"
    );
    let (results, most) = scenario_3_single_processes_no_manager(&ctx, ncores)?;
    println!("read back from the queue: {results:?}");
    println!("most jobs running at once: {most} (ncores = {ncores})");
    let mut sorted = results.clone();
    sorted.sort_unstable();
    let args: Vec<u32> = (0..JOBS).collect();
    if sorted == args {
        println!("Scenario 3 successful! All {JOBS} indices came back.");
    } else {
        println!("Scenario 3 fails: {args:?} != {sorted:?}");
    }

    println!(
        "Scenario 4 (single processes, manager's Lock and Queue): not yet, it comes with the \
         manager"
    );
    Ok(())
}
