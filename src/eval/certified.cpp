// eval::evaluate_certified: certified accuracy of randomized smoothing against radius, with the empirical
// accuracy under SmoothAdv-style PGD-L2 / APGD-L2 attacks at the same radii.
#include "parry/eval/certified.hpp"

#include <algorithm>
#include <chrono>

#include "parry/attack/apgd.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/certify/smoothed_classifier.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/format.hpp"

namespace parry::eval {

namespace {

using Clock = std::chrono::steady_clock;

// Images attacked at once: each gradient evaluation holds this many times
// attack_samples noisy copies.
constexpr int64_t kAttackChunk = 32;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void tell(const std::function<void(const std::string&)>& progress, const std::string& line) {
  if (progress) progress(line);
}

// Plain forward passes of the base model on `rows` copies of `image`: the
// work CERTIFY cannot avoid. Returns their wall time in seconds.
double forward_seconds(const Model& model, const torch::Tensor& image, int64_t rows) {
  c10::InferenceMode inference;
  const torch::Tensor copies = image.unsqueeze(0).expand({rows, image.size(0), image.size(1), image.size(2)}).contiguous();
  const auto start = Clock::now();
  model.logits(copies);
  return seconds_since(start);
}

}  // namespace

double CertifiedOutcome::certified_accuracy_at(double radius) const {
  if (correct_radius.empty()) return 0.0;
  const auto certified = std::count_if(correct_radius.begin(), correct_radius.end(),
                                       [radius](double r) { return r >= 0 && r >= radius; });
  return static_cast<double>(certified) / static_cast<double>(correct_radius.size());
}

void check_certified(const config::CertifiedSpec& spec, const data::ImageSource& test) {
  if (spec.sigmas.empty()) return;
  for (const double sigma : spec.sigmas) certify::SmoothingOptions().sigma(sigma);  // positive and finite
  certify::CertifyOptions().n0(spec.n0).n(spec.n).alpha(spec.alpha);
  parry::detail::require(spec.n0 <= spec.n, "evaluation.certified", "n0 must not exceed n = " + std::to_string(spec.n),
                         spec.n0);
  parry::detail::require(spec.attack_images >= 0 && spec.attack_images <= spec.images, "evaluation.certified",
                         "attack_images must be in 0..images = " + std::to_string(spec.images), spec.attack_images);
  if (spec.images < 1 || test.size() < spec.images) {
    throw OptionError("evaluation.certified: images = " + std::to_string(spec.images) + " but " + test.name() +
                      " has " + std::to_string(test.size()) + " test images");
  }
}

std::vector<CertifiedOutcome> evaluate_certified(const Model& model, const data::ImageSource& test,
                                                 const config::CertifiedSpec& spec, uint64_t seed,
                                                 const std::function<void(const std::string&)>& progress) {
  std::vector<CertifiedOutcome> outcomes;
  if (spec.sigmas.empty()) return outcomes;
  check_certified(spec, test);
  const data::LabeledImages data = test.read(0, spec.images);
  const auto certify_options = certify::CertifyOptions().n0(spec.n0).n(spec.n).alpha(spec.alpha);
  const auto predict_options = certify::SmoothedPredictOptions().n(spec.predict_n).alpha(spec.alpha);
  for (const double sigma : spec.sigmas) {
    CertifiedOutcome outcome;
    outcome.sigma = sigma;
    outcome.images = spec.images;
    outcome.n0 = spec.n0;
    outcome.n = spec.n;
    outcome.alpha = spec.alpha;
    outcome.radii = spec.radii;
    const certify::SmoothedClassifier smoothed(
        model, certify::SmoothingOptions().sigma(sigma).batch_size(spec.noise_batch).seed(seed));

    tell(progress, "certified σ=" + parry::detail::format_number(sigma) + ": CERTIFY on " +
                      std::to_string(spec.images) + " images (n0 " + std::to_string(spec.n0) + ", n " +
                      std::to_string(spec.n) + ")");
    // The reference for the cost ratio is timed interleaved with CERTIFY:
    // after each image, one batch of plain copies of it. Timed once at the
    // end, the reference would see a second or two of the machine while
    // CERTIFY sees minutes (one run measured so swung from 0.88x to 5.06x).
    const int64_t reference_rows = std::min(spec.noise_batch, spec.n0 + spec.n);
    forward_seconds(model, data.images[0], reference_rows);  // warm-up
    int64_t abstained = 0;
    double reference_seconds = 0.0;
    for (int64_t i = 0; i < spec.images; ++i) {
      const auto started = Clock::now();
      const auto c = smoothed.certify(data.images[i], certify_options)[0];
      outcome.certify_seconds += seconds_since(started);
      abstained += c.abstained();
      outcome.correct_radius.push_back(!c.abstained() && c.label == data.labels[i].item<int64_t>() ? c.radius : -1.0);
      reference_seconds += forward_seconds(model, data.images[i], reference_rows);
    }
    const double reference_passes = static_cast<double>(spec.images * reference_rows);
    const double certify_passes = static_cast<double>(spec.images * (spec.n0 + spec.n));
    outcome.certify_cost_ratio = outcome.certify_seconds / (reference_seconds / reference_passes * certify_passes);
    outcome.abstention_rate = static_cast<double>(abstained) / static_cast<double>(spec.images);
    for (const double r : spec.radii) outcome.certified_accuracy.push_back(outcome.certified_accuracy_at(r));

    outcome.attack_images = spec.attack_images;
    if (spec.attack_images > 0) {
      const torch::Tensor x = data.images.slice(0, 0, spec.attack_images);
      const torch::Tensor y = data.labels.slice(0, 0, spec.attack_images);
      for (size_t k = 0; k < spec.radii.size(); ++k) {
        const double r = spec.radii[k];
        if (r > 0) {
          tell(progress, "certified σ=" + parry::detail::format_number(sigma) + ": PGD-L2 and APGD-L2 at ε=" +
                            parry::detail::format_number(r) + " with EOT over " +
                            std::to_string(spec.attack_samples) + " noise draws");
        }
        const auto logits = smoothed.attack_logits(spec.attack_samples, seed + 1000 + k);
        int64_t unbroken = 0;
        // In chunks: each gradient evaluation holds chunk × attack_samples noisy copies.
        parry::detail::for_each_chunk(spec.attack_images, kAttackChunk, [&](int64_t begin, int64_t end) {
          const torch::Tensor xs = x.slice(0, begin, end), ys = y.slice(0, begin, end);
          std::vector<torch::Tensor> candidates;
          if (r == 0) {
            candidates.push_back(xs);
          } else {
            attack::GradientSettings settings;
            settings.seed = seed + k + static_cast<uint64_t>(begin);
            candidates.push_back(
                attack::pgd(logits, xs, ys,
                            attack::PgdOptions(r, attack::Norm::L2).steps(spec.attack_steps).settings(settings))
                    .adversarial);
            candidates.push_back(
                attack::apgd(logits, xs, ys,
                             attack::ApgdOptions(r, attack::Norm::L2).steps(spec.attack_steps).settings(settings))
                    .adversarial);
          }
          // Broken only by a wrong answer: an abstention proves nothing.
          std::vector<bool> broken(static_cast<size_t>(end - begin), false);
          for (const auto& candidate : candidates) {
            const auto labels = smoothed.predict(candidate, predict_options);
            for (size_t i = 0; i < labels.size(); ++i) {
              if (labels[i] != certify::kAbstain && labels[i] != ys[static_cast<int64_t>(i)].item<int64_t>()) {
                broken[i] = true;
              }
            }
          }
          unbroken += std::count(broken.begin(), broken.end(), false);
        });
        outcome.empirical_accuracy.push_back(static_cast<double>(unbroken) / static_cast<double>(spec.attack_images));
      }
    }
    std::string line = "certified σ=" + parry::detail::format_number(sigma) + ":";
    for (size_t k = 0; k < spec.radii.size(); ++k) {
      line += " r=" + parry::detail::format_number(spec.radii[k]) + " " +
              parry::detail::format_fixed(100 * outcome.certified_accuracy[k], 1) + "%";
      if (!outcome.empirical_accuracy.empty()) {
        line += " (attack " + parry::detail::format_fixed(100 * outcome.empirical_accuracy[k], 1) + "%)";
      }
    }
    tell(progress, line + "; abstained " + parry::detail::format_fixed(100 * outcome.abstention_rate, 1) + "%");
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace parry::eval
