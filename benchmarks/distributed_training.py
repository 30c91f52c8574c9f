#!/usr/bin/python3
"""Data-parallel training throughput: `parry train --nproc N` (1 thread per
rank) against one process with N threads, on the same images, in one run.

Usage: distributed_training.py PARRY_BINARY [IMAGES] [RANKS...]
  default: 2048 training images, ranks 1 2 4.

Each configuration runs one epoch of PGD-7 adversarial training (batch 128)
and one epoch of plain training (batch 128) of the reference CNN on
Fashion-MNIST; the figure is training samples per second (the epoch's training
time, without the held-out evaluation), and for the data-parallel runs rank
0's share of the time spent in collectives (communication plus waiting for
slower ranks). Runs are interleaved: rank counts in turn, each repeated
REPEATS times (env, default 1), medians reported.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

DATA = "/usr/share/datasets/fashion-mnist"


def run(parry, images, method, ranks, distributed):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory() as work:
        threads = 1 if distributed else ranks
        args = [parry, "--threads", str(threads), "--data", DATA, "train", "--limit", str(images), "--epochs", "1",
                "--batch", "128", "--no-augment", "--out", os.path.join(work, "m.pt")]
        if method == "adversarial":
            args += ["--method", "adversarial", "--attack", "pgd", "--steps", "7"]
        if distributed:
            args += ["--nproc", str(ranks)]
        start = time.time()
        r = subprocess.run(args, env=env, capture_output=True, text=True)
        wall = time.time() - start
        if r.returncode != 0:
            sys.exit("failed: %s\n%s" % (" ".join(args), r.stderr[-3000:]))
        if method == "adversarial":
            seconds = float(re.search(r"epoch 1: loss [0-9.]+, lr [0-9.e+-]+, ([0-9.]+) s", r.stderr).group(1))
        else:
            seconds = float(re.search(r"trained in ([0-9.]+) s", r.stderr).group(1))
        comm = re.search(r"rank 0: ([0-9.]+) s in (\d+) collectives", r.stderr)
        return images / seconds, (float(comm.group(1)) / seconds if comm else None), wall


def main():
    parry = sys.argv[1]
    images = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    rank_counts = [int(a) for a in sys.argv[3:]] or [1, 2, 4]
    repeats = int(os.environ.get("REPEATS", "1"))
    print("cores: %d; %d training images, one epoch, batch 128; medians of %d run(s)" %
          (os.cpu_count(), images, repeats))
    for method in ["plain", "adversarial"]:
        results = {}
        for _ in range(repeats):
            for ranks in rank_counts:
                for distributed in [False, True]:
                    results.setdefault((ranks, distributed), []).append(run(parry, images, method, ranks, distributed))
        print("\n%s (PGD-7)" % method if method == "adversarial" else "\n%s" % method)
        print("| ranks or threads | one process, N threads (samples/s) | N ranks × 1 thread (samples/s) | ratio | "
              "rank 0 time in collectives |")
        print("|---|---|---|---|---|")
        for ranks in rank_counts:
            single = statistics.median(r[0] for r in results[(ranks, False)])
            multi = statistics.median(r[0] for r in results[(ranks, True)])
            shares = [r[1] for r in results[(ranks, True)] if r[1] is not None]
            share = "%.0f%%" % (100 * statistics.median(shares)) if shares else "–"
            print("| %d | %.1f | %.1f | %.2f | %s |" % (ranks, single, multi, multi / single, share))


if __name__ == "__main__":
    main()
