"""Process start + join of a child that does nothing, with one start method.

    python3 start_join.py fork|spawn|forkserver [--parent-mib M] [--reps N] [--budget-ms M]
                          [--no-warmup]

One repetition: `ctx.Process(target=noop)`, `start()`, `join()`, and a check that the exit
code is 0. The warm-up start also starts the forkserver; with --no-warmup the first
repetition of a fresh interpreter includes it (the "forkserver first start" row).
With --parent-mib, the parent first fills that many MiB of memory (the "large parent" rows).
"""

import multiprocessing

import harness


def noop():
    pass


def main():
    p = harness.parser(__doc__)
    p.add_argument("method", choices=["fork", "spawn", "forkserver"])
    p.add_argument("--parent-mib", type=int, default=0)
    args = p.parse_args()
    # Every page written, so it is resident.
    big = bytearray(b"\x01") * (args.parent_mib << 20)
    ctx = multiprocessing.get_context(args.method)

    def one_rep():
        proc = ctx.Process(target=noop)
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"child exited with {proc.exitcode}")

    harness.run(args, one_rep)
    del big


if __name__ == "__main__":
    main()
