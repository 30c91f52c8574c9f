// eval::evaluate_certified: certified accuracy of randomized smoothing against radius, with the empirical
// accuracy under SmoothAdv-style PGD-L2 / APGD-L2 attacks at the same radii.
#include "parry/eval/certified.hpp"

#include <algorithm>
#include <chrono>

#include "parry/attack/apgd.hpp"
#include "parry/attack/pgd.hpp"
#include "parry/certify/smoothed_classifier.hpp"
#include "parry/detail/format.hpp"

namespace parry::eval {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void say(const std::function<void(const std::string&)>& progress, const std::string& line) {
  if (progress) progress(line);
}

// The time of `passes` plain forward passes of the base model at `batch`
// copies of `image` (the work CERTIFY cannot avoid), measured on up to 20
// batches and scaled.
double forward_seconds(const Model& model, const torch::Tensor& image, int64_t batch, int64_t passes) {
  c10::InferenceMode inference;
  const int64_t rows = std::min(batch, passes);
  const torch::Tensor copies = image.unsqueeze(0).expand({rows, image.size(0), image.size(1), image.size(2)}).contiguous();
  model.logits(copies);  // warm-up
  const int64_t calls = std::max<int64_t>(1, std::min<int64_t>(20, passes / rows));
  const auto start = Clock::now();
  for (int64_t i = 0; i < calls; ++i) model.logits(copies);
  return seconds_since(start) / static_cast<double>(calls * rows) * static_cast<double>(passes);
}

}  // namespace

double CertifiedOutcome::certified_accuracy_at(double radius) const {
  if (correct_radius.empty()) return 0.0;
  const auto certified = std::count_if(correct_radius.begin(), correct_radius.end(),
                                       [radius](double r) { return r >= 0 && r >= radius; });
  return static_cast<double>(certified) / static_cast<double>(correct_radius.size());
}

std::vector<CertifiedOutcome> evaluate_certified(const Model& model, const data::ImageSource& test,
                                                 const config::CertifiedSpec& spec, uint64_t seed,
                                                 const std::function<void(const std::string&)>& progress) {
  std::vector<CertifiedOutcome> outcomes;
  if (spec.sigmas.empty()) return outcomes;
  if (test.size() < spec.images) {
    throw OptionError("evaluation.certified: images = " + std::to_string(spec.images) + " but " + test.name() +
                      " has " + std::to_string(test.size()) + " test images");
  }
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

    say(progress, "certified σ=" + parry::detail::format_number(sigma) + ": CERTIFY on " +
                      std::to_string(spec.images) + " images (n0 " + std::to_string(spec.n0) + ", n " +
                      std::to_string(spec.n) + ")");
    const auto started = Clock::now();
    int64_t abstained = 0;
    for (int64_t i = 0; i < spec.images; ++i) {
      const auto c = smoothed.certify(data.images[i], certify_options)[0];
      abstained += c.abstained();
      outcome.correct_radius.push_back(!c.abstained() && c.label == data.labels[i].item<int64_t>() ? c.radius : -1.0);
    }
    outcome.certify_seconds = seconds_since(started);
    outcome.certify_cost_ratio =
        outcome.certify_seconds /
        forward_seconds(model, data.images[0], spec.noise_batch, spec.images * (spec.n0 + spec.n));
    outcome.abstention_rate = static_cast<double>(abstained) / static_cast<double>(spec.images);
    for (const double r : spec.radii) outcome.certified_accuracy.push_back(outcome.certified_accuracy_at(r));

    outcome.attack_images = spec.attack_images;
    if (spec.attack_images > 0) {
      const torch::Tensor x = data.images.slice(0, 0, spec.attack_images);
      const torch::Tensor y = data.labels.slice(0, 0, spec.attack_images);
      for (size_t k = 0; k < spec.radii.size(); ++k) {
        const double r = spec.radii[k];
        torch::Tensor robust = torch::ones({spec.attack_images}, torch::kBool);
        std::vector<torch::Tensor> candidates;
        if (r == 0) {
          candidates.push_back(x);
        } else {
          say(progress, "certified σ=" + parry::detail::format_number(sigma) + ": PGD-L2 and APGD-L2 at ε=" +
                            parry::detail::format_number(r) + " with EOT over " +
                            std::to_string(spec.attack_samples) + " noise draws");
          attack::GradientSettings settings;
          settings.seed = seed + k;
          const auto logits = smoothed.attack_logits(spec.attack_samples, seed + 1000 + k);
          candidates.push_back(
              attack::pgd(logits, x, y, attack::PgdOptions(r, attack::Norm::L2).steps(spec.attack_steps).settings(settings))
                  .adversarial);
          candidates.push_back(attack::apgd(logits, x, y,
                                            attack::ApgdOptions(r, attack::Norm::L2).steps(spec.attack_steps).settings(
                                                settings))
                                   .adversarial);
        }
        for (const auto& candidate : candidates) {
          const auto labels = smoothed.predict(candidate, predict_options);
          robust &= torch::tensor(labels, torch::kInt64).eq(y);
        }
        outcome.empirical_accuracy.push_back(robust.to(torch::kFloat64).mean().item<double>());
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
    say(progress, line + "; abstained " + parry::detail::format_fixed(100 * outcome.abstention_rate, 1) + "%");
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace parry::eval
