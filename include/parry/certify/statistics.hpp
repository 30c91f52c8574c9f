// certify:: statistics: the tests and bounds that turn Monte-Carlo counts of
// a smoothed classifier into a prediction or a certificate (Cohen, Rosenfeld,
// Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML
// 2019, Algorithms 1 and 2), and the normal quantile that turns a probability
// bound into an L2 radius.
//
// All three are Boost.Math's (header-only, Debian's libboost-dev), checked
// against SciPy in tests/test_statistics.cpp (fixture written by
// scripts/make_certify_fixture.py).
#pragma once

#include <cstdint>

namespace parry::certify {

/// The quantile function of the standard normal distribution, Φ⁻¹(p).
/// @param p in (0, 1)
/// @throws parry::OptionError unless 0 < p < 1.
double normal_quantile(double p);

/// The one-sided Clopper–Pearson lower confidence bound on the success
/// probability of a binomial from `successes` out of `trials`: the largest
/// p̲ such that P(X ≥ successes | p̲) ≤ alpha, i.e. the alpha-quantile of
/// Beta(successes, trials − successes + 1); 0 when successes = 0. With
/// probability at least 1 − alpha over the draws, the true probability is at
/// least this bound. It equals SciPy/statsmodels'
/// `proportion_confint(successes, trials, alpha=2*alpha, method="beta")[0]`,
/// which Cohen et al.'s CERTIFY uses.
/// @param successes in [0, trials]
/// @param trials >= 1
/// @param alpha in (0, 1)
/// @throws parry::OptionError for arguments outside these ranges.
double clopper_pearson_lower(int64_t successes, int64_t trials, double alpha);

/// The two-sided p-value of the exact binomial test of `successes` out of
/// `trials` against success probability ½ (SciPy's
/// `binomtest(successes, trials, 0.5).pvalue`): the probability, under ½, of
/// an outcome at least as far from trials/2 as the one seen,
/// min(1, 2·P(X ≤ min(successes, trials − successes))). Cohen et al.'s
/// PREDICT answers the top class when this is at most alpha for the counts
/// of the two most frequent classes.
/// @param successes in [0, trials]
/// @param trials >= 1
/// @throws parry::OptionError for arguments outside these ranges.
double binomial_test_p_value(int64_t successes, int64_t trials);

}  // namespace parry::certify
