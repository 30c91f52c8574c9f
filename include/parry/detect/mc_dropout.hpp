// detect::McDropout: Bayesian uncertainty from Monte-Carlo dropout, as in
// Feinman, Curtin, Shintre, Gardner, "Detecting Adversarial Samples from
// Artifacts", arXiv:1703.00410, 2017 (section 3.2).
//
// T stochastic forward passes with dropout active give softmax vectors
// ŷ_1..ŷ_T. The score is their variance, averaged over the K classes,
//     U(x) = (1/K) Σ_k [ (1/T) Σ_t ŷ_tk² − ((1/T) Σ_t ŷ_tk)² ],
// which is the paper's U(x) = (1/T) Σ ŷ_tᵀŷ_t − ȳᵀȳ divided by K, exactly the
// authors' code (preds_mc.var(axis=0).mean(axis=1)). Adversarial examples
// sit in regions where the model is unsure, so their variance is higher.
//
// The passes run on a separate dropout-active copy of the model made at
// construction (Model::with_active_dropout): the shared serving model is never
// switched into training mode. Dropout modules count, and so does functional
// dropout in TorchScript (`F.dropout(x, p, self.training)` in Python): only
// the modules that call it are switched, BatchNorm and every other
// mode-dependent layer stay in eval mode.
//
// Fast path: when the model exposes features()/head() (exported methods or
// Model::with_feature_layer) and all its dropout is
// in head(), features() runs once and head() runs T times as one batched call
// on the features repeated T times. Otherwise the input batch is replicated T
// times. Both draw from the same distribution; the fast path costs about one
// plain forward. The fast path checks, on first use, that features() is
// deterministic and refuses to run otherwise.
//
// Randomness: dropout masks come from LibTorch's default CPU generator, so
// `torch::manual_seed(s)` before score() makes a single-threaded run
// reproducible. Concurrent calls are safe but interleave their draws.
//
// Threat model: catches attacks that stop at the decision boundary or land in
// regions the model never saw (FGSM, BIM/PGD, C&W with small confidence). An
// attacker who knows the detector averages gradients over dropout masks (EOT)
// and adds the score to the loss; Carlini & Wagner 2017 ("Adversarial Examples
// Are Not Easily Detected") showed this defeats it at a larger perturbation.
// Parry measures that cost in docs/detectors.md.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <string>

#include "parry/core/detector.hpp"
#include "parry/detail/arg.hpp"

namespace parry::detect {

struct McDropoutOptions {
  PARRY_OPTIONS(McDropoutOptions);
  /// Stochastic passes T (default 50, as in the paper).
  PARRY_CHECKED_ARG(int64_t, samples, 50, v >= 2 && v <= 10000, "must be in 2..10000");
  /// Use the features/head split when the model has one (default true).
  PARRY_ARG(bool, fast_path) = true;
  /// Rows per batched model call (T·N is split into calls of at most this
  /// many rows, bounding memory: a row is one feature vector on the fast path,
  /// one image otherwise), default 256. Keep a call's activations under the
  /// allocator's mmap threshold (32 MB after parry::configure_runtime): larger
  /// calls page-fault on every pass. On the reference CNN 2,048 rows per call
  /// made the replicated path 7.5× slower.
  PARRY_CHECKED_ARG(int64_t, max_rows, 256, v >= 1, "must be at least 1");
};

class McDropout final : public Detector {
 public:
  /// Makes the dropout-active copy of `model`. Score inputs with the same model.
  /// @throws parry::StateError if the model has no dropout layer or cannot be copied.
  explicit McDropout(const Model& model, McDropoutOptions options = McDropoutOptions());

  std::string name() const override { return "mc_dropout"; }
  std::string describe() const override;

  /// U(x) per sample (see above), float32, shape N; 0 when dropout never changes the output.
  torch::Tensor score(const DetectorInput& input) const override;
  using Detector::score;
  /// Same with gradients flowing to `batch` through all T passes (fresh masks
  /// per call, so averaging gradients over calls is EOT over dropout masks).
  torch::Tensor differentiable_score(const torch::Tensor& batch, const Model& model) const override;

  /// The T softmax vectors, shape T×N×K, float32 (no gradient).
  torch::Tensor mc_probabilities(const torch::Tensor& batch) const;

  /// True when score() runs features() once and head() T times.
  bool uses_fast_path() const { return fast_path_; }
  const McDropoutOptions& options() const { return options_; }

 private:
  torch::Tensor probabilities(const torch::Tensor& batch) const;
  void check_fast_path(const torch::Tensor& batch) const;

  McDropoutOptions options_;
  Model stochastic_;
  bool fast_path_ = false;
  mutable std::atomic<bool> fast_path_checked_{false};
};

/// U(x) from Monte-Carlo softmax vectors of shape T×N×K: the population
/// variance over T, averaged over K; shape N.
torch::Tensor mc_dropout_uncertainty(const torch::Tensor& probabilities);

}  // namespace parry::detect
