"""Connections between a parent and a forked child: `multiprocessing.Pipe()` (a socketpair)
with `send_bytes` / `recv_bytes`.

    python3 connection.py roundtrip|stream|bulk --size BYTES [--batch N --quick-batch N]
                          [--reps N] [--budget-ms M] [--no-warmup]

The child is started once (fork start method, outside the timed region); if the process may
run on two CPUs or more, the child runs on the last and the parent on the first. Then:

- roundtrip: one repetition is a batch of round trips: the parent sends SIZE bytes, the
  child echoes them back, the parent receives and checks them. Reports the time of one
  round trip.
- stream: one repetition is a batch of SIZE-byte messages parent -> child, then an empty
  message, which the child answers with the number of messages it received. Reports the
  time of one message.
- bulk: one repetition is one SIZE-byte message parent -> child, which the child receives
  with `recv_bytes_into` into a bytearray allocated once, and answers with its length.
  Reports the time of one transfer.

The batch is --batch, or --quick-batch in a cell with no time budget (--quick). Only raw
bytes are measured: `send`/`recv` would add `pickle.dumps`/`loads` on both sides, while
multiproc's `send_bytes` and the raw socket floor pickle nothing, so bytes are the fair
comparison. At the end the parent closes its end, the child sees EOF and exits, and its
exit code is checked.
"""

import multiprocessing
import struct

import harness


def echo(conn, parent_end):
    # The fork child inherits the parent's end too; closed so that EOF can arrive.
    parent_end.close()
    try:
        while True:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        pass


def sink(conn, parent_end):
    parent_end.close()
    count = 0
    try:
        while True:
            if conn.recv_bytes():
                count += 1
            else:
                conn.send_bytes(struct.pack("!I", count))
                count = 0
    except EOFError:
        pass


def bulk(conn, parent_end, size):
    parent_end.close()
    buf = bytearray(size)
    try:
        while True:
            n = conn.recv_bytes_into(buf)
            conn.send_bytes(struct.pack("!I", n))
    except EOFError:
        pass


def main():
    p = harness.parser(__doc__)
    p.add_argument("workload", choices=["roundtrip", "stream", "bulk"])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--quick-batch", type=int, default=1)
    args = p.parse_args()
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe(duplex=True)
    msg = bytes(range(256)) * (args.size // 256) + bytes(args.size % 256)

    if args.workload == "roundtrip":
        child = ctx.Process(target=echo, args=(theirs, ours))
        n = harness.batch(args, args.batch, args.quick_batch)

        def one_rep():
            for _ in range(n):
                ours.send_bytes(msg)
                if ours.recv_bytes() != msg:
                    raise SystemExit("the echo differs")

    elif args.workload == "stream":
        child = ctx.Process(target=sink, args=(theirs, ours))
        n = harness.batch(args, args.batch, args.quick_batch)
        expected = struct.pack("!I", n)

        def one_rep():
            for _ in range(n):
                ours.send_bytes(msg)
            ours.send_bytes(b"")
            if ours.recv_bytes() != expected:
                raise SystemExit("the child counted another number of messages")

    else:
        child = ctx.Process(target=bulk, args=(theirs, ours, args.size))
        n = 1
        expected = struct.pack("!I", args.size)

        def one_rep():
            ours.send_bytes(msg)
            if ours.recv_bytes() != expected:
                raise SystemExit("the child received another length")

    # On two CPUs or more: the child on the last, the parent on the first, so that every
    # message crosses CPUs.
    harness.start_apart(child)
    theirs.close()
    harness.run(args, one_rep, per=n)
    ours.close()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"child exited with {child.exitcode}")


if __name__ == "__main__":
    main()
