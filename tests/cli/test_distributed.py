#!/usr/bin/python3
"""End-to-end test of data-parallel `parry train`, run by ctest (cli.distributed).

Usage: test_distributed.py PARRY_BINARY FASHION_MNIST_DIR WORK_DIR

1. `parry train --nproc 2` (plain, then adversarial with checkpoints) finishes,
   rank 0 alone saves the model and prints the test accuracy;
2. two ranks started by hand with --world-size/--rank/--master: rank 1 is
   killed with SIGKILL after the first checkpoint; rank 0 must fail within
   --dist-timeout with a message naming rank 1, the checkpoint must still
   load, and a rerun of both ranks must resume from it and finish;
3. bad distributed options are clear errors.
Standard library only.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from support import check, fail






def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parry, data, work = sys.argv[1:4]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    common = [parry, "--threads", "1", "--data", data]

    # 1. --nproc 2, plain and adversarial.
    out = os.path.join(work, "plain.pt")
    r = subprocess.run(common + ["train", "--limit", "256", "--epochs", "1", "--batch", "64", "--nproc", "2",
                                 "--out", out], env=env, capture_output=True, text=True, timeout=600)
    check(r.returncode == 0, "plain --nproc 2 failed: " + r.stderr[-2000:])
    check(os.path.exists(out), "rank 0 did not save the model")
    check(r.stdout.count("test accuracy:") == 1, "expected one test accuracy line (rank 0): " + r.stdout)
    check("starting 2 local ranks" in r.stderr, r.stderr[-2000:])

    # 2. A killed rank.
    checkpoints = os.path.join(work, "checkpoints")
    port = free_port()
    adversarial = common + ["train", "--method", "adversarial", "--steps", "1", "--limit", "512", "--epochs", "4",
                            "--batch", "64", "--checkpoint-dir", checkpoints, "--out", os.path.join(work, "adv.pt"),
                            "--world-size", "2", "--master", "127.0.0.1:%d" % port, "--dist-timeout", "30"]
    logs = [open(os.path.join(work, "rank%d.log" % i), "w+") for i in range(2)]
    ranks = [subprocess.Popen(adversarial + ["--rank", str(i)], env=env, stdout=logs[i], stderr=subprocess.STDOUT)
             for i in range(2)]
    checkpoint = os.path.join(checkpoints, "checkpoint.pt")
    deadline = time.time() + 400
    while not os.path.exists(checkpoint) and time.time() < deadline and ranks[0].poll() is None:
        time.sleep(0.2)
    check(os.path.exists(checkpoint), "no checkpoint after the first epoch")
    time.sleep(1.0)  # into epoch 2
    ranks[1].send_signal(signal.SIGKILL)
    ranks[1].wait()
    killed_at = time.time()
    try:
        ranks[0].wait(timeout=120)
    except subprocess.TimeoutExpired:
        ranks[0].kill()
        fail("rank 0 did not fail within 120 s of rank 1's death")
    took = time.time() - killed_at
    logs[0].seek(0)
    log0 = logs[0].read()
    check(ranks[0].returncode != 0, "rank 0 succeeded although rank 1 died: " + log0[-2000:])
    check("rank 1 stopped" in log0, "rank 0's error does not name rank 1: " + log0[-2000:])
    print("rank 0 failed %.1f s after rank 1 was killed" % took)

    # The checkpoint survived and both ranks resume from it.
    port = free_port()
    resumed = [a if not a.startswith("127.0.0.1:") else "127.0.0.1:%d" % port for a in adversarial]
    ranks = [subprocess.Popen(resumed + ["--rank", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in ranks]
    check(all(p.returncode == 0 for p in ranks), "the resumed run failed: " + outputs[0][-2000:] + outputs[1][-2000:])
    check("resumed from epoch" in outputs[0], "rank 0 did not resume: " + outputs[0][-2000:])
    check("epoch 4" in outputs[0], "the resumed run did not reach epoch 4: " + outputs[0][-2000:])

    # 3. Bad options.
    for args, expected in [(["--world-size", "2", "--rank", "2"], "--rank must lie in [0, --world-size = 2)"),
                           (["--world-size", "2", "--master", "nowhere"], "--master must be HOST:PORT"),
                           (["--nproc", "2", "--world-size", "2"], "either --nproc or --world-size")]:
        r = subprocess.run(common + ["train", "--limit", "64", "--epochs", "1", "--out",
                                     os.path.join(work, "bad.pt")] + args, env=env, capture_output=True, text=True,
                           timeout=120)
        check(r.returncode != 0 and expected in r.stderr, "%s: expected '%s', got %s" % (args, expected, r.stderr))
    print("cli.distributed: OK")


if __name__ == "__main__":
    main()
