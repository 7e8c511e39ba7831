"""Pools (issue 6): `multiprocessing.Pool` and `concurrent.futures.ProcessPoolExecutor`.

    python3 pool.py map --items N --quick-items N [--chunksize N] [--per N]
    python3 pool.py apply|submit --batch N --quick-batch N
    python3 pool.py cpu --tasks-per-worker N --quick-tasks-per-worker N --iters N
                    [--start-method fork|spawn|forkserver] [--workers N]
                    [--reps N] [--budget-ms M] [--no-warmup]

Every pool has 2 workers (`--workers`; for cpu, one per CPU this process may use), started
with --start-method (this Python's default if not given) before the timed part, and is
closed and joined at the end; every worker must have exited with 0. The quick sizes are for a cell with no time budget (--quick).

- map: `pool.map(noop, range(N), chunksize)` (CPython's default chunking without
  --chunksize); checks the length and three results in every repetition, all of them after
  the last. Reports the time of --per items (default 1).
- apply: `pool.apply_async(noop, (i,)).get()`, one at a time. Reports one round trip.
- submit: the same with `ProcessPoolExecutor(2).submit(noop, i).result()`.
- cpu: `pool.map(spin, range(tasks))` with tasks = N per worker, default chunking; `spin`
  is ITERS steps of a xorshift-multiply-add on 64 bits in Python (the Rust side runs the same loop, with its own
  number of steps). Reports the time of one whole map.
"""

import concurrent.futures
import functools
import multiprocessing
import os

import harness


def noop(x):
    return x


def spin(iters, seed):
    x = seed
    for _ in range(iters):
        x = ((x ^ (x >> 31)) * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
    return x


def spot_check(out, n):
    if len(out) != n or any(out[i] != i for i in (0, n // 2, n - 1)):
        raise SystemExit(f"the map gave back {len(out)} wrong results")


def full_check(out, n):
    if out != list(range(n)):
        raise SystemExit(f"the map's {len(out)} results differ from its items")


def check_exit_codes(procs):
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"worker {proc.pid} exited with {proc.exitcode}")


def round_trips(args, call):
    n = harness.batch(args, args.batch, args.quick_batch)
    counter = [0]

    def one_rep():
        i = counter[0]
        for _ in range(n):
            back = call(i)
            if back != i:
                raise SystemExit(f"sent {i}, got {back} back")
            i += 1
        counter[0] = i

    harness.run(args, one_rep, per=n)


def main():
    p = harness.parser(__doc__)
    p.add_argument("workload", choices=["map", "apply", "submit", "cpu"])
    p.add_argument("--start-method", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--items", type=int)
    p.add_argument("--quick-items", type=int)
    p.add_argument("--chunksize", type=int, default=None)
    p.add_argument("--per", type=int, default=1)
    p.add_argument("--batch", type=int)
    p.add_argument("--quick-batch", type=int)
    p.add_argument("--tasks-per-worker", type=int)
    p.add_argument("--quick-tasks-per-worker", type=int)
    p.add_argument("--iters", type=int)
    args = p.parse_args()
    ctx = multiprocessing.get_context(args.start_method)

    if args.workload == "submit":
        ex = concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=ctx)
        # (the executor starts its workers on the first submit: the warm-up does it)
        round_trips(args, lambda i: ex.submit(noop, i).result())
        # (the executor forgets its processes on shutdown: take them first)
        procs = list(ex._processes.values())
        ex.shutdown(wait=True)
        check_exit_codes(procs)
        return

    workers = len(os.sched_getaffinity(0)) if args.workload == "cpu" else args.workers
    pool = ctx.Pool(workers)

    if args.workload == "map":
        n = harness.batch(args, args.items, args.quick_items)
        last = [None]

        def one_rep():
            out = pool.map(noop, range(n), args.chunksize)
            spot_check(out, n)
            last[0] = out

        harness.run(args, one_rep, per=n / args.per)
        full_check(last[0], n)

    elif args.workload == "apply":
        round_trips(args, lambda i: pool.apply_async(noop, (i,)).get())

    else:
        tasks = workers * harness.batch(
            args, args.tasks_per_worker, args.quick_tasks_per_worker
        )
        task = functools.partial(spin, args.iters)
        last = [None]

        def one_rep():
            out = pool.map(task, range(tasks))
            if len(out) != tasks:
                raise SystemExit(f"{len(out)} results for {tasks} tasks")
            last[0] = out

        harness.run(args, one_rep)
        for seed in (0, tasks - 1):
            if last[0][seed] != spin(args.iters, seed):
                raise SystemExit(f"task {seed} gave a wrong result")

    procs = list(pool._pool)  # (the pool's worker processes; no public accessor)
    pool.close()
    pool.join()
    check_exit_codes(procs)


if __name__ == "__main__":
    main()
