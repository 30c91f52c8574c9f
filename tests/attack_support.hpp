// Shared set-up for the attack tests: a linear model with a closed-form
// gradient, and correctly classified Fashion-MNIST test images for the
// reference model.
#pragma once

#include "parry/attack.hpp"
#include "parry/data/idx.hpp"
#include "parry/models/reference_cnn.hpp"
#include "test_support.hpp"

namespace parry::testing {

/// logits = x.flatten(1) · Wᵀ + b.
struct LinearModel {
  torch::Tensor weight;  // K × D
  torch::Tensor bias;    // K
  attack::LogitsFn fn() const {
    auto w = weight, b = bias;
    return [w, b](const torch::Tensor& x) { return torch::addmm(b, x.flatten(1), w.t()); };
  }
};

/// The shipped reference CNN (eval mode).
inline Model reference_model() {
  static auto net = models::load_reference_cnn(parry::testing::fixture_path("reference_cnn.pt"));
  return Model(net);
}

/// The first `n` test images the reference model classifies correctly.
inline data::LabeledImages correctly_classified(int64_t n) {
  auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 4 * n);
  torch::NoGradGuard no_grad;
  auto correct = reference_model().logits(test.images).argmax(1).eq(test.labels).nonzero().flatten().slice(0, 0, n);
  return {test.images.index_select(0, correct), test.labels.index_select(0, correct)};
}

/// Accuracy of the reference model on a batch.
inline double reference_accuracy(const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  return reference_model().logits(x).argmax(1).eq(y).to(torch::kFloat64).mean().item<double>();
}

}  // namespace parry::testing
