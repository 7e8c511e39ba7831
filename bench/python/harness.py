"""The CPython side of the benchmarks: the repetition loop and the output format.

Every script parses its arguments with `parser()`, then hands one repetition to `run()`.
The runner appends `--reps N --budget-ms M [--no-warmup]`; `run()` follows the very same
rule as the Rust side (`Reps` in bench/src/workload.rs): one untimed warm-up unless
`--no-warmup`, then at most N timed repetitions, stopping early once there are 5 and M
milliseconds have passed. It prints the seconds of each repetition as a JSON list on the
last line of standard output.
"""

import argparse
import json
import os
import sys
import time

MIN_REPS = 5


def parser(description):
    """An argument parser that already knows the runner's arguments."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--budget-ms", type=int, default=3000)
    p.add_argument("--no-warmup", action="store_true")
    return p


def batch(args, full, quick):
    """How many operations one repetition does when each is too quick to time alone: `full`,
    or `quick` in a cell with no time budget (--quick). Same rule as `Reps::batch`."""
    return quick if args.budget_ms == 0 else full


def start_apart(child):
    """Starts the `multiprocessing.Process` `child`: if this process may run on two CPUs or
    more, on the last of them, then moves this process to the first (as the Rust cells do
    with `floor::place_child`), so that parent and child always sit on different CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})
    child.start()
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[0]})


def run(args, one_rep, per=1):
    """Times `one_rep()` as the runner asked and prints the timings, each divided by `per`
    (the number of operations one repetition does, to report the time of one)."""
    if not args.no_warmup:
        one_rep()
    min_reps = min(MIN_REPS, args.reps)
    budget = args.budget_ms / 1000.0
    times = []
    start = time.perf_counter()
    while len(times) < args.reps and (
        len(times) < min_reps or time.perf_counter() - start < budget
    ):
        t0 = time.perf_counter()
        one_rep()
        times.append((time.perf_counter() - t0) / per)
    sys.stdout.write(json.dumps(times) + "\n")
    sys.stdout.flush()
