#!/usr/bin/python3
"""Crash safety of saved state, run by ctest (cli.crash_safety).

Usage: test_crash_safety.py PARRY_BINARY MODEL FASHION_MNIST_DIR WORK_DIR

For each writer — `parry calibrate` (detector states), adversarial training's
checkpoint, and `parry train --out` (the model) — the state is first written
whole once (the "old" file). Then:
  1. injected: the writer is killed (SIGKILL, by the PARRY_FAULT_KILL_BEFORE_RENAME
     hook of the atomic write) after the new content is written and before the
     rename: the file must be byte for byte the old one (for the checkpoint,
     killed at epoch 2's write: epoch 1's must remain and resume);
  2. random: the writer is killed with SIGKILL at random moments of its run
     (KILLS times, seeded): every state file present must be a whole archive
     (zip CRCs check) and equal to a file some complete run wrote, or for the
     checkpoint (whose content holds timings) load in a resumed run;
and finally a resumed training run must accept the last checkpoint and finish.
Standard library only.
"""
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from support import check
import zipfile

KILLS = int(os.environ.get("PARRY_CRASH_KILLS", "8"))






def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def whole_archive(path):
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except zipfile.BadZipFile:
        return False


def states(directory):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".pt"))


def run(args, env, timeout=900):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def kill_at(args, env, delay):
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()


def main():
    parry, model, data, work = sys.argv[1:5]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chdir(work)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    rng = random.Random(17)
    common = [parry, "--threads", "1", "--data", data]

    # --- calibrate -------------------------------------------------------
    with open("config.json", "w") as f:
        f.write('{"evaluation": {"calibration_images": 300}, "defenses": [{"name": "guarded", '
                '"detectors": [{"type": "kernel_density", "fit_images": 300}, {"type": "softmax_confidence"}, '
                '{"type": "feature_squeezing"}]}]}')
    calibrate = common + ["calibrate", "--model", model, "--config", "config.json"]
    start = time.time()
    r = run(calibrate, env)
    full = time.time() - start
    check(r.returncode == 0, "calibrate failed: " + r.stderr[-2000:])
    old = {p: digest(p) for p in states("config.json.state")}
    check(len(old) == 3, "expected 3 detector states, got %s" % sorted(old))
    written = {h for h in old.values()}
    r = run(calibrate, env)
    second = {p: digest(p) for p in states("config.json.state")}
    deterministic = second == old  # then a killed run can only leave the content of a complete one
    written |= set(second.values())
    for path in old:
        env_fault = dict(env, PARRY_FAULT_KILL_BEFORE_RENAME=os.path.basename(path))
        r = run(calibrate, env_fault)
        check(r.returncode == -signal.SIGKILL, "the injected kill did not happen for %s" % path)
        check(digest(path) == old[path] or digest(path) in written, "%s changed by a killed write" % path)
    for _ in range(KILLS):
        kill_at(calibrate, env, rng.uniform(0.0, full))
        for p in states("config.json.state"):
            check(whole_archive(p), "%s is not a whole archive after a kill" % p)
            check(not deterministic or digest(p) in written, "%s holds content no complete run wrote" % p)
    print("calibrate: %d random kills and %d injected ones, every state file whole%s (a run takes %.1f s)" %
          (KILLS, len(old), " and equal to a complete run's" if deterministic else "", full))

    # --- training checkpoint ---------------------------------------------
    train = common + ["train", "--method", "adversarial", "--steps", "1", "--limit", "256", "--batch", "64",
                      "--epochs", "3", "--checkpoint-dir", "runs", "--out", "robust.pt"]
    checkpoint = os.path.join("runs", "checkpoint.pt")
    # Killed while writing epoch 2's checkpoint: epoch 1's must remain, whole, and resume.
    r = run(train, dict(env, PARRY_FAULT_KILL_BEFORE_RENAME="checkpoint.pt#2"))
    check(r.returncode == -signal.SIGKILL, "the injected kill did not happen for the checkpoint: " + r.stderr[-2000:])
    check(os.path.exists(checkpoint) and whole_archive(checkpoint), "epoch 1's checkpoint did not survive")
    start = time.time()
    r = run(train, env)
    full = time.time() - start
    check(r.returncode == 0, "the resumed run failed: " + r.stderr[-2000:])
    check("resumed from epoch 1" in r.stderr, "the run did not resume from epoch 1: " + r.stderr[-2000:])
    shutil.rmtree("runs")
    for _ in range(KILLS):
        kill_at(train, env, rng.uniform(0.0, full))
        if os.path.exists(checkpoint):
            check(whole_archive(checkpoint), "the checkpoint is not a whole archive after a kill")
    r = run(train, env)
    check(r.returncode == 0, "resuming from the checkpoint left by the kills failed: " + r.stderr[-2000:])
    print("checkpoint: %d random kills and 1 injected one; every checkpoint left resumed (a run takes %.1f s)" %
          (KILLS, full))

    # --- the trained model -----------------------------------------------
    save = common + ["train", "--limit", "256", "--epochs", "1", "--out", "plain.pt"]
    r = run(save, env)
    check(r.returncode == 0, "plain training failed: " + r.stderr[-2000:])
    old = digest("plain.pt")
    r = run(save[:-1] + ["plain.pt"], dict(env, PARRY_FAULT_KILL_BEFORE_RENAME="plain.pt"))
    check(r.returncode == -signal.SIGKILL, "the injected kill did not happen for the model")
    check(digest("plain.pt") == old, "the model file changed although its write was killed before the rename")
    print("cli.crash_safety: OK")


if __name__ == "__main__":
    main()
