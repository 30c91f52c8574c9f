#include "parry/certify/statistics.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "parry/core/errors.hpp"
#include "test_paths.hpp"

using namespace parry;

namespace {
// Reference values from SciPy (scripts/make_certify_fixture.py).
nlohmann::json certify_fixture() {
  std::ifstream in(parry::testing::fixture_path("certify_statistics.json"));
  EXPECT_TRUE(in.good()) << "tests/fixtures/certify_statistics.json is missing";
  return nlohmann::json::parse(in);
}

void expect_relatively_near(double got, double expected, double tolerance, const std::string& what) {
  EXPECT_NEAR(got, expected, tolerance * std::max(1e-300, std::abs(expected))) << what;
}
}  // namespace

TEST(CertifyStatistics, ClopperPearsonLowerBoundMatchesScipy) {
  const auto fixture = certify_fixture();
  ASSERT_GE(fixture["clopper_pearson_lower"].size(), 80u);
  for (const auto& c : fixture["clopper_pearson_lower"]) {
    const int64_t k = c["successes"], n = c["trials"];
    const double alpha = c["alpha"], expected = c["lower"];
    const double got = certify::clopper_pearson_lower(k, n, alpha);
    if (expected == 0.0) {
      EXPECT_EQ(got, 0.0) << k << "/" << n;
    } else {
      expect_relatively_near(got, expected, 1e-9, std::to_string(k) + "/" + std::to_string(n) + " at " +
                                                      std::to_string(alpha));
    }
  }
}

TEST(CertifyStatistics, ClopperPearsonLowerBoundCoversTheTruthAtItsLevel) {
  // The bound's defining property: P(X >= k | p = bound) = alpha, so at the
  // bound the observed count is just barely as unlikely as alpha allows.
  for (const auto& [k, n] : {std::pair<int64_t, int64_t>{7, 10}, {600, 1000}, {9990, 10000}}) {
    const double alpha = 0.01;
    const double p = certify::clopper_pearson_lower(k, n, alpha);
    double upper_tail = 0.0;  // P(X >= k) for X ~ Bin(n, p), summed in logs
    for (int64_t i = k; i <= n; ++i) {
      upper_tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) +
                             i * std::log(p) + (n - i) * std::log1p(-p));
    }
    EXPECT_NEAR(upper_tail, alpha, 1e-8) << k << "/" << n;
  }
  // All n successes: alpha^(1/n), the ceiling of every certificate of n samples.
  EXPECT_NEAR(certify::clopper_pearson_lower(10000, 10000, 0.001), std::pow(0.001, 1e-4), 1e-12);
}

TEST(CertifyStatistics, BinomialTestMatchesScipy) {
  const auto fixture = certify_fixture();
  ASSERT_GE(fixture["binomial_test"].size(), 15u);
  for (const auto& c : fixture["binomial_test"]) {
    const int64_t k = c["successes"], n = c["trials"];
    expect_relatively_near(certify::binomial_test_p_value(k, n), c["p_value"].get<double>(), 1e-9,
                           std::to_string(k) + "/" + std::to_string(n));
  }
}

TEST(CertifyStatistics, NormalQuantileAndRadiiMatchScipy) {
  const auto fixture = certify_fixture();
  for (const auto& q : fixture["normal_quantiles"]) {
    const double p = q["p"], z = q["z"];
    EXPECT_NEAR(certify::normal_quantile(p), z, 1e-9 * std::max(1.0, std::abs(z))) << "p = " << p;
  }
  for (const auto& r : fixture["radii"]) {
    const double lower = certify::clopper_pearson_lower(r["successes"], r["trials"], r["alpha"]);
    const double radius = lower > 0.5 ? r["sigma"].get<double>() * certify::normal_quantile(lower) : 0.0;
    EXPECT_NEAR(radius, r["radius"].get<double>(), 1e-9);
  }
}

TEST(CertifyStatistics, RejectArgumentsOutsideTheirRanges) {
  EXPECT_THROW(certify::normal_quantile(0.0), OptionError);
  EXPECT_THROW(certify::normal_quantile(1.0), OptionError);
  EXPECT_THROW(certify::normal_quantile(std::nan("")), OptionError);
  EXPECT_THROW(certify::clopper_pearson_lower(5, 4, 0.01), OptionError);
  EXPECT_THROW(certify::clopper_pearson_lower(-1, 4, 0.01), OptionError);
  EXPECT_THROW(certify::clopper_pearson_lower(1, 0, 0.01), OptionError);
  EXPECT_THROW(certify::clopper_pearson_lower(1, 4, 0.0), OptionError);
  EXPECT_THROW(certify::clopper_pearson_lower(1, 4, 1.0), OptionError);
  EXPECT_THROW(certify::binomial_test_p_value(3, 2), OptionError);
  try {
    certify::clopper_pearson_lower(1, 4, 1.5);
    FAIL() << "no exception";
  } catch (const OptionError& e) {
    EXPECT_STREQ(e.what(), "parry::certify::clopper_pearson_lower: alpha must be in (0, 1), but got 1.5");
  }
}
