// certify::SmoothedClassifier: randomized smoothing with certificates (Cohen,
// Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized
// Smoothing", ICML 2019).
//
// From any base classifier f (a parry::Model; its label is the argmax of its
// logits) it builds the smoothed classifier
//     g(x) = argmax_c P(f(x + δ) = c),   δ ~ N(0, σ² I),
// whose prediction provably cannot change inside an L2 ball: if the top class
// has probability p_A ≥ p̲_A > ½ under the noise, g(x + e) = g(x) for every
// ‖e‖₂ < R = σ·Φ⁻¹(p̲_A) (Theorem 1 of the paper, with p̄_B = 1 − p̲_A).
// g is estimated by Monte Carlo, so each answer holds with probability at
// least 1 − α over the noise; otherwise the classifier abstains.
//   - predict (Algorithm 1, PREDICT): n noisy copies; the top class unless
//     the two-sided binomial test of the two largest counts nA, nB against ½
//     has p-value > α, then abstain. The probability of returning a class
//     other than g(x) is at most α.
//   - certify (Algorithm 2, CERTIFY): n₀ copies pick the class ĉ_A, n fresh
//     copies estimate it; p̲_A is the one-sided Clopper–Pearson lower bound at
//     level α of its count; radius σ·Φ⁻¹(p̲_A), abstain when p̲_A ≤ ½.
// Cohen et al.'s constants are the defaults: n₀ = 100, n = 100,000,
// α = 0.001, noise batches of 1,000 (their code's batch size). The base
// model should be trained with Gaussian noise at the same σ
// (train::ClassifierTrainerOptions::gaussian_noise, `parry train --method
// gaussian`): a plain model is rarely confident under noise and abstains.
//
// Threat model: an attacker with any knowledge, white-box included, who
// perturbs the input by at most the certified radius in L2 (in pixel units
// of the input, before any preprocessing of the Guard) cannot change the
// smoothed classifier's answer, except with probability α per certificate.
// It says nothing about L∞ or other perturbations beyond the radius, nor
// about the base model f, which stays as attackable as before; and an
// abstention is a possible answer that an attacker can provoke. The noise
// must be unknown to the attacker: with SmoothingOptions::seed set, the
// noise of each request follows from the order of requests, so a serving
// classifier is left unseeded (the default) or its seed kept secret.
//
// Noise is drawn in pixel space and not clipped to the pixel range (as in
// the paper), on the base model's device, in batches from generators seeded
// from SmoothingOptions::seed: each call draws fresh streams (CERTIFY two
// per image, PREDICT one), numbered in call order, so with a seed the same
// sequence of calls draws the same noise on every run (concurrent calls get
// distinct streams, numbered by timing). Without a seed the streams start
// from a random key. Images are converted to float32 on the model's device.
// Thread safety: predict() and certify() may be called from many threads.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "parry/core/model.hpp"
#include "parry/detail/arg.hpp"

namespace parry::certify {

/// The label of an abstention.
inline constexpr int64_t kAbstain = -1;

struct SmoothingOptions {
  PARRY_OPTIONS(SmoothingOptions);
  /// σ, the standard deviation of the Gaussian noise, in pixel units (Cohen
  /// et al. use 0.12, 0.25, 0.5 and 1.0 on [0, 1] images). The certified
  /// radius scales with it; so does the accuracy lost to the noise.
  PARRY_CHECKED_ARG(double, sigma, 0.25, v > 0 && std::isfinite(v), "must be positive and finite");
  /// Noisy copies per forward pass of the base model (memory: batch_size
  /// images). Does not change the result, only its speed.
  PARRY_CHECKED_ARG(int64_t, batch_size, 1000, v >= 1, "must be at least 1");
  /// Seed of the noise streams; unset (the default): a random key per object.
  PARRY_ARG(std::optional<uint64_t>, seed);
};

/// Algorithm 1 (PREDICT).
struct SmoothedPredictOptions {
  PARRY_OPTIONS(SmoothedPredictOptions);
  /// Noisy copies per image. More copies abstain less often near the
  /// decision boundary; the cost is n forward passes per image.
  PARRY_CHECKED_ARG(int64_t, n, 1000, v >= 1, "must be at least 1");
  /// Level of the binomial test: a wrong (non-abstaining) answer has
  /// probability at most alpha.
  PARRY_CHECKED_ARG(double, alpha, 0.001, v > 0 && v < 1, "must be in (0, 1)");
};

/// Algorithm 2 (CERTIFY).
struct CertifyOptions {
  PARRY_OPTIONS(CertifyOptions);
  /// Copies used to select the top class (Cohen et al.: 100); at most n.
  PARRY_CHECKED_ARG(int64_t, n0, 100, v >= 1, "must be at least 1");
  /// Copies used to estimate its probability (Cohen et al.: 100,000). The
  /// largest p̲_A is α^(1/n) (all n copies agree), which caps the radius at
  /// σ·Φ⁻¹(α^(1/n)): 2.46σ for n = 1,000, 3.20σ for 10,000 and 3.81σ for
  /// 100,000 at α = 0.001.
  PARRY_CHECKED_ARG(int64_t, n, 100000, v >= 1, "must be at least 1");
  /// Failure probability of the certificate (Cohen et al.: 0.001).
  PARRY_CHECKED_ARG(double, alpha, 0.001, v > 0 && v < 1, "must be in (0, 1)");
};

/// What CERTIFY says of one image.
struct Certificate {
  /// The certified class, or kAbstain.
  int64_t label = kAbstain;
  /// Certified L2 radius σ·Φ⁻¹(p̲_A) in pixel units; 0 when abstaining.
  double radius = 0.0;
  /// The lower confidence bound p̲_A on the selected class's probability.
  double p_lower = 0.0;
  /// Copies of the estimation sample (of n) that the base model gave the selected class.
  int64_t top_count = 0;
  /// The estimation sample's votes: int64 K, how many copies went to each class.
  torch::Tensor votes;
  bool abstained() const { return label == kAbstain; }
};

class SmoothedClassifier {
 public:
  /// @param base the base classifier f (eval mode; its logits' argmax is its label).
  /// @param options σ, the noise batch and the seed.
  /// @throws parry::StateError if `base` is in training mode.
  SmoothedClassifier(Model base, SmoothingOptions options);
  SmoothedClassifier(const SmoothedClassifier&) = delete;
  SmoothedClassifier& operator=(const SmoothedClassifier&) = delete;

  /// PREDICT for each image of x (C×H×W or N×C×H×W, pixel units).
  /// @param votes if not null, receives the base model's votes, int64 N×K
  ///   (how many of the n copies of each image it put in each class).
  /// @return one label per image, kAbstain where the test fails.
  /// @throws parry::InputError if x is not a non-empty floating-point image or batch.
  std::vector<int64_t> predict(const torch::Tensor& x, const SmoothedPredictOptions& options = {},
                               torch::Tensor* votes = nullptr) const;

  /// CERTIFY for each image of x (C×H×W or N×C×H×W, pixel units).
  /// @throws parry::OptionError if n0 > n; parry::InputError as predict().
  std::vector<Certificate> certify(const torch::Tensor& x, const CertifyOptions& options = {}) const;

  /// The base model's votes under noise: how many of n copies x + δ it
  /// labels with each class. x is one image C×H×W; returns int64 counts of
  /// shape K (the number of logits) on the CPU, summing to n. Each call
  /// draws a fresh noise stream.
  /// @throws parry::OptionError if n < 1; parry::InputError for a bad image.
  torch::Tensor vote_counts(const torch::Tensor& image, int64_t n) const;

  /// The logits an attacker of the smoothed classifier differentiates
  /// (Salman et al., "Provably Robust Deep Learning via Adversarially
  /// Trained Smoothed Classifiers", NeurIPS 2019): log of the base model's
  /// softmax averaged over `samples` noise draws per image,
  ///     log( (1/m) Σ_k softmax(f(x + δ_k)) ),   δ_k ~ N(0, σ² I),
  /// differentiable with respect to x; its cross-entropy is the loss of
  /// their SmoothAdv attack, an EOT estimate of the smoothed soft classifier.
  /// Each call draws fresh noise from a generator seeded with `seed`; the
  /// returned function is not thread-safe (it advances that generator).
  /// @throws parry::OptionError if samples < 1.
  TensorFn attack_logits(int64_t samples, uint64_t seed) const;

  const Model& base() const { return base_; }
  const SmoothingOptions& options() const { return options_; }
  /// One line for reports: σ and the base model.
  std::string describe() const;

 private:
  torch::Tensor batch_of_images(const torch::Tensor& x, const char* where) const;
  torch::Tensor counts_from_stream(const torch::Tensor& image, int64_t n, uint64_t stream) const;
  uint64_t next_stream() const { return stream_counter_.fetch_add(1, std::memory_order_relaxed); }

  Model base_;
  SmoothingOptions options_;
  uint64_t key_;
  mutable std::atomic<uint64_t> stream_counter_{0};
};

}  // namespace parry::certify
