#!/usr/bin/python3
"""Side-by-side preprocessing speed: Parry (Google Benchmark) against the
ART-style Python peer, in one run, same shapes and thread count.

    /usr/bin/python3 benchmarks/compare_preprocess.py [build dir]

Prints a Markdown table with milliseconds per batch and the speed-up ratio
(Python time / Parry time; above 1 means Parry is faster).
"""
import json
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "build")
bench = os.path.join(build, "benchmarks", "parry_benchmarks")

cpp = json.loads(subprocess.run(
    [bench, "--benchmark_filter=BM_Preprocess", "--benchmark_format=json"],
    check=True, capture_output=True, text=True).stdout)
parry_ms = {b["label"]: b["real_time"] for b in cpp["benchmarks"]}
python_ms = json.loads(subprocess.run(
    ["/usr/bin/python3", os.path.join(here, "peer_preprocess.py"), "2"],
    check=True, capture_output=True, text=True).stdout)

print("| transform | batch | Parry ms | Python (ART-style) ms | speed-up |")
print("| --- | --- | ---: | ---: | ---: |")
for label, ms in parry_ms.items():
    name, shape = label.split(" ")
    peer = python_ms.get(label)
    if peer is None:
        continue
    print(f"| {name} | {shape} | {ms:.2f} | {peer:.2f} | {peer / ms:.1f}x |")
