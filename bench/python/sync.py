"""Shared memory and synchronization (issue 4), with the fork start method.

    python3 sync.py lock|counter|add1|add2|event|condition [--batch N --quick-batch N]
    python3 sync.py array --size N
                    [--reps N] [--budget-ms M] [--no-warmup]

The batch is --batch, or --quick-batch in a cell with no time budget (--quick).

- lock: `Lock()`, a repetition is a batch of `acquire()` + `release()` (the bound methods
  looked up once). Reports the time of 1,000.
- counter: a child and the parent each do a batch of `with lock: v.value += 1` on a
  `RawValue('q')` guarded by a `Lock()`; the parent tells the child to go and waits until it
  is done over a `Pipe`. Reports the time of 1,000 increments (a batch's time / 2 * batch).
- add1: one process, a batch of `with v.get_lock(): v.value += 1` on a `Value('q')` (its
  lock is an RLock, and `.value` takes it again). Reports the time of 1,000.
- add2: as add1 in two processes at once, as the counter. Reports the time of 1,000.
- event: two `Event`s, ping-pong with a child: the parent sets `ping` and waits on `pong`,
  the child waits on `ping`, clears it, sets `pong`; the parent clears `pong`. Reports one
  round trip.
- condition: one `Condition()` and a `RawValue('i')` turn: the parent sets the turn to 1 and
  notifies, then waits until it is 0; the child waits until it is 1, sets it to 0 and
  notifies. Both hold the condition's lock except while they wait. Reports one round trip.
- array: `Array('d', N)` (with its lock), filled with `arr[:] = src` from a list of N floats
  made once (the idiomatic fast way without numpy: one slice assignment under the lock).
  Reports one fill.

Two-process rows start the child once, outside the timed region; if the process may run on
two CPUs or more, the child runs on the last and the parent on the first. At the end the
child is told to stop and its exit code is checked.
"""

import multiprocessing

import harness

PER = 1000


def counter_child(conn, parent_end, lock, v, n):
    parent_end.close()
    while conn.recv_bytes():
        for _ in range(n):
            with lock:
                v.value += 1
        conn.send_bytes(b"d")


def add_child(conn, parent_end, v, n):
    parent_end.close()
    while conn.recv_bytes():
        for _ in range(n):
            with v.get_lock():
                v.value += 1
        conn.send_bytes(b"d")


def event_child(ping, pong, stop):
    while True:
        ping.wait()
        ping.clear()
        if stop.value:
            return
        pong.set()


def condition_child(cond, turn):
    with cond:
        while True:
            while turn.value == 0:
                cond.wait()
            if turn.value == 2:
                return
            turn.value = 0
            cond.notify()


def finish(child):
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"child exited with {child.exitcode}")


def batch_with_child(args, ctx, target, extra, ours, check):
    """The counter and add2 rows: a child doing `n` operations per batch while we do ours."""
    n = harness.batch(args, args.batch, args.quick_batch)
    mine, theirs = ctx.Pipe(duplex=True)
    child = ctx.Process(target=target, args=(theirs, mine) + extra + (n,))
    harness.start_apart(child)
    theirs.close()
    done = [0]

    def one_rep():
        mine.send_bytes(b"g")
        ours(n)
        if mine.recv_bytes() != b"d":
            raise SystemExit("the child did not finish its batch")
        done[0] += 2 * n
        check(done[0])

    harness.run(args, one_rep, per=2 * n / PER)
    mine.send_bytes(b"")
    finish(child)


def main():
    p = harness.parser(__doc__)
    p.add_argument(
        "workload",
        choices=["lock", "counter", "add1", "add2", "event", "condition", "array"],
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--quick-batch", type=int, default=1)
    p.add_argument("--size", type=int, default=0)
    args = p.parse_args()
    ctx = multiprocessing.get_context("fork")
    n = harness.batch(args, args.batch, args.quick_batch)

    if args.workload == "lock":
        lock = ctx.Lock()
        acquire, release = lock.acquire, lock.release

        def one_rep():
            for _ in range(n):
                acquire()
                release()

        harness.run(args, one_rep, per=n / PER)

    elif args.workload == "counter":
        lock = ctx.Lock()
        v = ctx.RawValue("q", 0)

        def ours(n):
            for _ in range(n):
                with lock:
                    v.value += 1

        def check(expected):
            if v.value != expected:
                raise SystemExit(f"the counter reads {v.value}, not {expected}")

        batch_with_child(args, ctx, counter_child, (lock, v), ours, check)

    elif args.workload in ("add1", "add2"):
        v = ctx.Value("q", 0)

        def ours(n):
            for _ in range(n):
                with v.get_lock():
                    v.value += 1

        def check(expected):
            if v.value != expected:
                raise SystemExit(f"the value reads {v.value}, not {expected}")

        if args.workload == "add1":
            harness.run(args, lambda: ours(n), per=n / PER)
        else:
            batch_with_child(args, ctx, add_child, (v,), ours, check)

    elif args.workload == "event":
        ping, pong = ctx.Event(), ctx.Event()
        stop = ctx.RawValue("i", 0)
        child = ctx.Process(target=event_child, args=(ping, pong, stop))
        harness.start_apart(child)

        def one_rep():
            for _ in range(n):
                ping.set()
                pong.wait()
                pong.clear()

        harness.run(args, one_rep, per=n)
        stop.value = 1
        ping.set()
        finish(child)

    elif args.workload == "condition":
        cond = ctx.Condition()
        turn = ctx.RawValue("i", 0)
        child = ctx.Process(target=condition_child, args=(cond, turn))
        harness.start_apart(child)

        def one_rep():
            with cond:
                for _ in range(n):
                    turn.value = 1
                    cond.notify()
                    while turn.value != 0:
                        cond.wait()

        harness.run(args, one_rep, per=n)
        with cond:
            turn.value = 2
            cond.notify()
        finish(child)

    else:
        size = args.size
        arr = ctx.Array("d", size)
        src = [float(i) for i in range(size)]

        def one_rep():
            arr[:] = src

        harness.run(args, one_rep)
        last = size - 1
        if arr[0] != 0.0 or arr[last] != float(last) or arr[size // 2] != float(size // 2):
            raise SystemExit("the array was not filled")


if __name__ == "__main__":
    main()
