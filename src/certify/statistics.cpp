// certify:: statistics: Φ⁻¹, the one-sided Clopper–Pearson lower bound and the exact binomial test, from Boost.Math.
#include "parry/certify/statistics.hpp"

#include <boost/math/distributions/binomial.hpp>
#include <boost/math/distributions/normal.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "parry/detail/require.hpp"

namespace parry::certify {

namespace {

// Errors are reported as parry::OptionError by the checks below; Boost's
// policy would otherwise throw std::domain_error.
using Policy = boost::math::policies::policy<boost::math::policies::domain_error<boost::math::policies::errno_on_error>,
                                             boost::math::policies::overflow_error<boost::math::policies::errno_on_error>>;

void require_counts(const char* where, int64_t successes, int64_t trials) {
  detail::require(trials >= 1, where, "trials must be at least 1", trials);
  detail::require(successes >= 0 && successes <= trials, where,
                  "successes must be in [0, trials = " + std::to_string(trials) + "]", successes);
}

}  // namespace

double normal_quantile(double p) {
  detail::require(p > 0.0 && p < 1.0, "parry::certify::normal_quantile", "p must be in (0, 1)", p);
  return boost::math::quantile(boost::math::normal_distribution<double, Policy>(), p);
}

double clopper_pearson_lower(int64_t successes, int64_t trials, double alpha) {
  require_counts("parry::certify::clopper_pearson_lower", successes, trials);
  detail::require(alpha > 0.0 && alpha < 1.0, "parry::certify::clopper_pearson_lower", "alpha must be in (0, 1)",
                  alpha);
  if (successes == 0) return 0.0;
  // Boost's clopper_pearson_exact_interval is the same beta quantile; it is
  // written out so that the bound's definition is visible here.
  return boost::math::ibeta_inv(static_cast<double>(successes), static_cast<double>(trials - successes + 1), alpha,
                                Policy());
}

double binomial_test_p_value(int64_t successes, int64_t trials) {
  require_counts("parry::certify::binomial_test_p_value", successes, trials);
  const int64_t tail = std::min(successes, trials - successes);
  if (2 * tail == trials) return 1.0;  // the outcome at the centre: every outcome is at least as far
  const boost::math::binomial_distribution<double, Policy> half(static_cast<double>(trials), 0.5);
  return std::min(1.0, 2.0 * boost::math::cdf(half, static_cast<double>(tail)));
}

}  // namespace parry::certify
