#!/usr/bin/python3
"""One epoch of PGD-7 adversarial training, Parry against Python PyTorch,
side by side in one run (docs/training.md).

    /usr/bin/python3 benchmarks/compare_adversarial_training.py [build dir] [N=60000]

Same data (the first N Fashion-MNIST training images), same architecture,
optimiser, schedule, attack and 2 threads. Python gets the glibc malloc
settings that parry::configure_runtime() applies to Parry (see
compare_pgd.py). Prints a Markdown table; ratio = Parry time / Python time
(at most 1.0 means Parry is no slower).
"""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build")
n = sys.argv[2] if len(sys.argv) > 2 else "60000"
same_malloc = dict(os.environ, MALLOC_MMAP_THRESHOLD_="33554432", MALLOC_TRIM_THRESHOLD_="1073741824",
                   MALLOC_TOP_PAD_="67108864")


def run(cmd, env=None):
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


parry = run([os.path.join(build, "benchmarks", "parry_adversarial_epoch"), n])
python = run(["/usr/bin/python3", os.path.join(here, "peer_adversarial_training.py"), n], env=same_malloc)
print(f"| implementation | seconds per epoch ({n} images, PGD-7) | images/s | final loss | Parry / Python |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, r in [("Parry train::AdversarialTrainer::fit", parry), ("Python PyTorch loop", python)]:
    print(f"| {name} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | {r['final_loss']:.4f} | "
          f"{r['seconds'] / python['seconds']:.2f} |")
