#!/usr/bin/python3
"""Produces tests/fixtures/wilson_intervals.json for tests/test_metrics.cpp.

Run with Debian's interpreter (SciPy is python3-scipy):
    /usr/bin/python3 scripts/make_wilson_fixture.py tests/fixtures

The Wilson score interval (Wilson 1927) of k successes in n trials at
confidence c, with p = k/n and z = Phi^-1(1 - (1 - c)/2) from
scipy.stats.norm.ppf:
    center     = (p + z^2/(2n)) / (1 + z^2/n)
    half-width = z * sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n)
clipped to [0, 1]. statsmodels' proportion_confint(method="wilson") computes
the same; it is not packaged here, so the formula is written out. Also
writes quantiles of the standard normal (norm.ppf) for the inverse CDF.
"""
import json
import math
import os
import sys

from scipy.stats import norm


def wilson(k, n, confidence):
    z = norm.ppf(1 - (1 - confidence) / 2)
    p = k / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def main(out_dir):
    cases = []
    grid = [(0, 1), (1, 1), (0, 5), (5, 5), (2, 5), (0, 20), (20, 20), (7, 20), (133, 150), (150, 150),
            (0, 150), (75, 150), (1, 150), (500, 1000), (999, 1000), (0, 10000), (8870, 10000), (10000, 10000),
            (3, 10000)]
    for confidence in (0.95, 0.9, 0.99, 0.5, 0.999):
        for k, n in grid:
            low, high = wilson(k, n, confidence)
            cases.append({"successes": k, "trials": n, "confidence": confidence, "low": low, "high": high})
    probabilities = [1e-300, 1e-20, 1e-10, 1e-5, 0.001, 0.01, 0.02425, 0.025, 0.05, 0.1, 0.25, 0.4, 0.5, 0.6,
                     0.75, 0.9, 0.95, 0.975, 0.97575, 0.99, 0.999, 0.99999, 1 - 1e-10]
    quantiles = [{"p": p, "z": float(norm.ppf(p))} for p in probabilities]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "wilson_intervals.json"), "w") as f:
        json.dump({"method": "Wilson score interval, z = scipy.stats.norm.ppf(1 - (1 - confidence) / 2)",
                   "intervals": cases, "normal_quantiles": quantiles}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
