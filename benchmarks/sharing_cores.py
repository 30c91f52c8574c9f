#!/usr/bin/python3
"""Sharing the cores: one epoch of `parry train --method adversarial` alone and
beside another busy 2-thread LibTorch process, in one run (issue 18, target:
beside <= 2.5x alone).

Usage: sharing_cores.py PARRY_BINARY [IMAGES]
  default: 4096 training images, PGD-7 adversarial training, batch 128.

The neighbour is a Python PyTorch process with 2 intra-op threads multiplying
256x256 matrices without pause, with libgomp's default wait policy (what an
unrelated program on a user's machine does). Three configurations,
each alone and beside the neighbour, interleaved, REPEATS times (env, default
2), medians reported:
  default                  parry's defaults: as many intra-op threads as cores
                           were idle at start-up, OpenMP workers sleep while they wait
  --threads 2, PASSIVE     the same policy, the first release's fixed 2 threads
  --threads 2, ACTIVE      the first release (spinning workers, 2 threads)
The figure is the epoch's training time that `parry train` prints (without the
held-out evaluation). Also prints the neighbour's own matrix products per
second in each case, so that a faster parry is not bought with a stalled
neighbour.
"""
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

DATA = "/usr/share/datasets/fashion-mnist"

NEIGHBOUR = r"""
import signal, sys, time, torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
count = 0
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
print("ready", flush=True)
start = time.time()
while not stop:
    a = torch.tanh(a @ a)
    count += 1
print("%f" % (count / (time.time() - start)), flush=True)
"""


def stop_neighbour(neighbour):
    """The neighbour's matrix products per second over its whole run."""
    neighbour.send_signal(signal.SIGINT)
    out, _ = neighbour.communicate(timeout=60)
    return float(out.split()[-1])


def train_epoch(parry, images, policy, threads):
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory() as work:
        args = [parry] + (["--threads", threads] if threads else []) + ["--data", DATA, "train", "--limit", str(images), "--epochs", "1", "--batch",
                "128", "--no-augment", "--method", "adversarial", "--attack", "pgd", "--steps", "7", "--out",
                os.path.join(work, "m.pt")]
        r = subprocess.run(args, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("failed: %s\n%s" % (" ".join(args), r.stderr[-3000:]))
        return float(re.search(r"epoch 1: loss [0-9.]+, lr [0-9.e+-]+, ([0-9.]+) s", r.stderr).group(1))


def beside_neighbour(parry, images, policy, threads):
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    neighbour = subprocess.Popen(["/usr/bin/python3", "-c", NEIGHBOUR], env=env, stdout=subprocess.PIPE, text=True)
    try:
        neighbour.stdout.readline()  # ready
        seconds = train_epoch(parry, images, policy, threads)
        rate = stop_neighbour(neighbour)
    finally:
        if neighbour.poll() is None:
            neighbour.kill()
            neighbour.wait()
    return seconds, rate


def neighbour_alone(seconds=20):
    neighbour = subprocess.Popen(["/usr/bin/python3", "-c", NEIGHBOUR], stdout=subprocess.PIPE, text=True)
    neighbour.stdout.readline()  # ready
    time.sleep(seconds)
    return stop_neighbour(neighbour)


def main():
    parry = sys.argv[1]
    images = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    repeats = int(os.environ.get("REPEATS", "2"))
    print("cores: %d; %d training images, one epoch of PGD-7 adversarial training, batch 128; "
          "medians of %d interleaved run(s)" % (os.cpu_count(), images, repeats))
    # (label, OMP_WAIT_POLICY, --threads): parry's default, its default policy
    # with the first release's fixed two threads, and the first release.
    configs = [("default (idle cores, PASSIVE)", None, None), ("--threads 2, PASSIVE", None, "2"),
               ("--threads 2, ACTIVE (first release)", "ACTIVE", "2")]
    times = {label: {"alone": [], "beside": []} for label, _, _ in configs}
    rates = {label: [] for label, _, _ in configs}
    for _ in range(repeats):
        for label, policy, threads in configs:
            times[label]["alone"].append(train_epoch(parry, images, policy, threads))
            seconds, rate = beside_neighbour(parry, images, policy, threads)
            times[label]["beside"].append(seconds)
            rates[label].append(rate)
    solo_rate = neighbour_alone()
    print("| parry | alone | beside the neighbour | ratio | neighbour's products/s (alone: %.0f) |" % solo_rate)
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, _, _ in configs:
        alone = statistics.median(times[label]["alone"])
        beside = statistics.median(times[label]["beside"])
        print("| %s | %.1f s | %.1f s | %.2fx | %.0f |" % (label, alone, beside, beside / alone,
                                                           statistics.median(rates[label])))
    ratio = statistics.median(times[configs[0][0]]["beside"]) / statistics.median(times[configs[0][0]]["alone"])
    print("target beside <= 2.5x alone: %s (%.2fx)" % ("met" if ratio <= 2.5 else "missed", ratio))


if __name__ == "__main__":
    main()
