"""Queues between processes (issue 5): `multiprocessing.get_context("fork").Queue()`.

    python3 queues.py stream|many --size BYTES --batch N --quick-batch N
    python3 queues.py pingpong --batch N --quick-batch N
                     [--reps N] [--budget-ms M] [--no-warmup]

The batch is --batch, or --quick-batch in a cell with no time budget (--quick). Items are
`bytes` of SIZE (`bytes(range(SIZE))` for 64), put and got with `put` / `get` (pickled, as
any object a Queue carries).

- stream: a child produces, the parent consumes. A repetition: the parent sends a go byte on
  a `Pipe`, the child puts a batch of items, the parent gets them all and compares each with
  the item put. Reports the time of 1,000 items.
- pingpong: two queues; the parent puts an int in the first and gets it back from the
  second, the child gets from the first and puts into the second. Reports one round trip.
- many: two producers and two consumers on one queue. A repetition: the parent sends a go
  byte to each producer (a `Pipe` each), each puts a batch of items and then `None`; a
  consumer that gets `None` puts on a second queue the number of items it took since its
  last report; the repetition ends when both `None`s are reported. At the end each consumer
  gets "stop", reports and exits (a producer stops on an empty message), and the parent checks that they took every item. Reports
  the time of 1,000 items.

The stream and pingpong children are started once, outside the timed region; if the process
may run on two CPUs or more, the child runs on the last and the parent on the first. The
many children are not placed. Every child's exit code is checked at the end.
"""

import os
import sys

import multiprocessing

import harness

PER = 1000
PATIENCE = 10.0


def producer(go, parent_end, q, item, n):
    parent_end.close()
    try:
        while True:
            go.recv_bytes()
            for _ in range(n):
                q.put(item)
    except EOFError:
        pass


def echo(ping, pong):
    while True:
        x = ping.get()
        if x is None:
            return
        pong.put(x)


def many_producer(go, parent_end, q, item, n):
    # (the other children hold the parent's ends too, so an empty message stops it, not EOF)
    parent_end.close()
    while go.recv_bytes():
        for _ in range(n):
            q.put(item)
        q.put(None)


def many_consumer(q, done, item):
    get = q.get
    count = 0
    while True:
        x = get()
        if x == item:
            count += 1
        elif x is None:
            done.put(count)
            count = 0
        elif x == "stop":
            done.put(count)
            return
        else:
            raise SystemExit("an item differs from the item put")


def finish(child):
    child.join(PATIENCE)
    if child.exitcode is None:
        child.kill()
        child.join()
        raise SystemExit("a child did not end when told to")
    if child.exitcode != 0:
        raise SystemExit(f"child exited with {child.exitcode}")


def main():
    p = harness.parser(__doc__)
    p.add_argument("workload", choices=["stream", "pingpong", "many"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--quick-batch", type=int, required=True)
    args = p.parse_args()
    ctx = multiprocessing.get_context("fork")
    n = harness.batch(args, args.batch, args.quick_batch)
    item = bytes(range(256)) * (args.size // 256) + bytes(range(args.size % 256))

    if args.workload == "stream":
        q = ctx.Queue()
        go, theirs = ctx.Pipe(duplex=True)
        child = ctx.Process(target=producer, args=(theirs, go, q, item, n))
        harness.start_apart(child)
        theirs.close()
        get = q.get

        def one_rep():
            go.send_bytes(b"g")
            bad = 0
            for _ in range(n):
                if get() != item:
                    bad += 1
            if bad:
                raise SystemExit(f"{bad} items differ from the item put")

        harness.run(args, one_rep, per=n / PER)
        go.close()
        finish(child)

    elif args.workload == "pingpong":
        ping, pong = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=echo, args=(ping, pong))
        harness.start_apart(child)
        counter = [0]

        def one_rep():
            i = counter[0]
            for _ in range(n):
                ping.put(i)
                back = pong.get()
                if back != i:
                    raise SystemExit(f"sent {i}, got {back} back")
                i += 1
            counter[0] = i

        harness.run(args, one_rep, per=n)
        ping.put(None)
        finish(child)

    else:
        q, done = ctx.Queue(), ctx.Queue()
        gos, children = [], []
        for _ in range(2):
            go, theirs = ctx.Pipe(duplex=True)
            child = ctx.Process(target=many_producer, args=(theirs, go, q, item, n))
            child.start()
            theirs.close()
            gos.append(go)
            children.append(child)
        for _ in range(2):
            child = ctx.Process(target=many_consumer, args=(q, done, item))
            child.start()
            children.append(child)
        state = {"batches": 0, "counted": 0}

        def one_rep():
            for go in gos:
                go.send_bytes(b"g")
            state["batches"] += 1
            for _ in range(2):
                state["counted"] += done.get(timeout=PATIENCE)

        harness.run(args, one_rep, per=2 * n / PER)
        for go in gos:
            go.send_bytes(b"")
        for _ in range(2):
            q.put("stop")
        for _ in range(2):
            state["counted"] += done.get(timeout=PATIENCE)
        for child in children:
            finish(child)
        expected = state["batches"] * 2 * n
        if state["counted"] != expected:
            raise SystemExit(f"the consumers took {state['counted']} items, not {expected}")


if __name__ == "__main__":
    main()
