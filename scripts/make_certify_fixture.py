#!/usr/bin/python3
"""Produces tests/fixtures/certify_statistics.json for tests/test_statistics.cpp.

Run with Debian's interpreter (SciPy is python3-scipy):
    /usr/bin/python3 scripts/make_certify_fixture.py tests/fixtures

Reference values for randomized smoothing (Cohen, Rosenfeld, Kolter, ICML
2019), computed as their code computes them:
  - the one-sided Clopper-Pearson lower bound of k successes in n trials at
    level alpha, statsmodels' proportion_confint(k, n, alpha=2*alpha,
    method="beta")[0], which is scipy.stats.beta.ppf(alpha, k, n - k + 1)
    (0 for k = 0);
  - the two-sided p-value of the exact binomial test against 1/2,
    scipy.stats.binomtest(k, n, 0.5).pvalue (Cohen et al. call the older
    scipy.stats.binom_test, the same test);
  - quantiles of the standard normal, scipy.stats.norm.ppf;
  - the certified radius sigma * norm.ppf(lower bound) where it exceeds 1/2.
"""
import json
import os
import sys

from scipy.stats import beta, binomtest, norm


def clopper_pearson_lower(k, n, alpha):
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def main(out_dir):
    grid = [(0, 1), (1, 1), (0, 10), (10, 10), (6, 10), (9, 10), (50, 100), (51, 100), (99, 100), (100, 100),
            (520, 1000), (990, 1000), (1000, 1000), (5000, 10000), (5100, 10000), (9000, 10000), (9999, 10000),
            (10000, 10000), (60000, 100000), (99990, 100000), (100000, 100000), (1, 100000)]
    bounds = []
    for alpha in (0.001, 0.01, 0.05, 0.5):
        for k, n in grid:
            bounds.append({"successes": k, "trials": n, "alpha": alpha, "lower": clopper_pearson_lower(k, n, alpha)})
    tests = []
    for k, n in [(0, 1), (1, 1), (5, 10), (0, 10), (10, 10), (7, 10), (3, 10), (60, 100), (61, 100), (40, 100),
                 (500, 1000), (530, 1000), (20, 20), (14, 20), (501, 1001), (1, 2), (2, 2), (2, 3)]:
        tests.append({"successes": k, "trials": n, "p_value": float(binomtest(k, n, 0.5).pvalue)})
    probabilities = [1e-12, 1e-6, 0.001, 0.01, 0.1, 0.3, 0.5, 0.5000001, 0.6, 0.9, 0.99, 0.999, 0.9993094630025899,
                     0.9999309248330094, 1 - 1e-12]
    quantiles = [{"p": p, "z": float(norm.ppf(p))} for p in probabilities]
    radii = []
    for sigma in (0.12, 0.25, 0.5):
        for k, n in [(9000, 10000), (99990, 100000), (100000, 100000), (600, 1000)]:
            lower = clopper_pearson_lower(k, n, 0.001)
            radii.append({"sigma": sigma, "successes": k, "trials": n, "alpha": 0.001,
                          "radius": float(sigma * norm.ppf(lower)) if lower > 0.5 else 0.0})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "certify_statistics.json"), "w") as f:
        json.dump({"clopper_pearson_lower": bounds, "binomial_test": tests, "normal_quantiles": quantiles,
                   "radii": radii}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
