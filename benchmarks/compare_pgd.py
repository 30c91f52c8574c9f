#!/usr/bin/python3
"""Side-by-side PGD speed, Parry against Python PyTorch, in one run.

    /usr/bin/python3 benchmarks/compare_pgd.py [build dir]

Both use the reference CNN architecture, batch 64, L∞ PGD with 10 steps and
2 threads. Prints a Markdown table; ratio = Python time / Parry time (above
1 means Parry is faster).
"""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build")
bench = os.path.join(build, "benchmarks", "parry_benchmarks")
cpp = json.loads(subprocess.run([bench, "--benchmark_filter=Pgd", "--benchmark_format=json"],
                                check=True, capture_output=True, text=True).stdout)
parry = {b["name"].split("/")[0]: b["real_time"] for b in cpp["benchmarks"]}
# Parry's benchmark calls parry::configure_runtime(), which keeps freed
# memory in the process (glibc mallopt). For a fair comparison Python gets the
# same glibc settings through the environment; without them it is about 4x
# slower on these virtual machines (reported in the last two rows).
same_malloc = dict(os.environ, MALLOC_MMAP_THRESHOLD_="33554432", MALLOC_TRIM_THRESHOLD_="1073741824",
                   MALLOC_TOP_PAD_="67108864")
peer = ["/usr/bin/python3", os.path.join(here, "peer_pgd.py")]
py = json.loads(subprocess.run(peer, env=same_malloc, check=True, capture_output=True, text=True).stdout)
py_default = json.loads(subprocess.run(peer, check=True, capture_output=True, text=True).stdout)
ours = parry["BM_PgdParry"]
print("| implementation | ms per attack (64 images, 10 steps) | images/s | Python / Parry |")
print("| --- | ---: | ---: | ---: |")
rows = [("Parry attack::pgd (input-only gradients)", ours),
        ("Parry loop with loss.backward() (parameter gradients)", parry["BM_PgdWithParameterGradients"]),
        ("Python PyTorch, torch.autograd.grad (input only)", py["input_only"]),
        ("Python PyTorch, loss.backward() (AdverTorch style)", py["backward"]),
        ("Python PyTorch, autograd.grad, default glibc malloc", py_default["input_only"]),
        ("Python PyTorch, loss.backward(), default glibc malloc", py_default["backward"])]
for name, ms in rows:
    print(f"| {name} | {ms:.1f} | {64000 / ms:.0f} | {ms / ours:.2f} |")
