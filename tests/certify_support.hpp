// Shared by the randomized-smoothing tests: a linear two-class model whose
// smoothed classifier is known in closed form, and the smallest radius that
// CERTIFY can plausibly return for it.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "parry/certify/statistics.hpp"
#include "parry/core/model.hpp"

namespace parry::testing {

// Class 1 where (x − ½)·w > 0 on C×H×W pixels (1×4×4 unless given), w of
// unit length: the image
// ½ + t·w lies at signed distance t from the boundary. Under noise
// N(0, σ² I), P(f(x + δ) = 1) = Φ(t/σ), so the exact certified radius
// σ·Φ⁻¹(p_A) equals |t| (Cohen et al., Section 3.1: the certificate is tight
// for linear classifiers), and |t| is also the L2 budget an attacker needs.
struct LinearTwoClass {
  std::vector<int64_t> shape;  // C, H, W
  torch::Tensor w;             // C·H·W, unit length

  explicit LinearTwoClass(uint64_t seed = 7, std::vector<int64_t> image_shape = {1, 4, 4})
      : shape(std::move(image_shape)) {
    torch::manual_seed(seed);
    w = torch::randn({shape[0] * shape[1] * shape[2]});
    w /= w.norm();
  }
  Model model(double logit_scale = 1.0) const {
    const torch::Tensor weights = w;
    return Model::from_callable([weights, logit_scale](const torch::Tensor& x) {
      const torch::Tensor margin = (x.flatten(1) - 0.5).matmul(weights) * logit_scale;
      return torch::stack({torch::zeros_like(margin), margin}, 1);
    });
  }
  torch::Tensor at(double t) const { return (0.5 + t * w).reshape(shape); }
};

// Φ(z) from the complementary error function.
inline double normal_cdf(double z) {
  return 0.5 * std::erfc(-z / std::sqrt(2.0));
}

// The radius CERTIFY returns for the linear model at distance d when its
// count of n falls 4 standard deviations below the expected n·Φ(d/σ): a floor
// that a correct implementation misses with probability about 3e-5.
inline double radius_floor(double distance, double sigma, int64_t n, double alpha) {
  const double p = normal_cdf(std::abs(distance) / sigma);
  const double low_count = n * p - 4.0 * std::sqrt(n * p * (1.0 - p));
  const auto k = std::clamp<int64_t>(static_cast<int64_t>(std::floor(low_count)), 0, n);
  const double bound = certify::clopper_pearson_lower(k, n, alpha);
  return bound > 0.5 ? sigma * certify::normal_quantile(bound) : 0.0;
}

}  // namespace parry::testing
