// detect::UncertaintyDensity: uncertainty and density combined by logistic regression (Feinman et al. 2017).
#include "parry/detect/uncertainty_density.hpp"

#include <cmath>
#include <sstream>

#include "detect/scoring.hpp"
#include "parry/detail/chunks.hpp"
#include "parry/detail/format.hpp"
#include "parry/detail/generator.hpp"
#include "parry/detail/require.hpp"

namespace parry::detect {

using detail::check_scoring_batch;
using detail::repeats_along_batch;
using parry::detail::format_number;
using parry::detail::require;

UncertaintyDensity::UncertaintyDensity(std::shared_ptr<McDropout> uncertainty, std::shared_ptr<KernelDensity> density,
                                       LogisticRegressionOptions options)
    : uncertainty_(std::move(uncertainty)), density_(std::move(density)), options_(options) {
  if (!uncertainty_ || !density_) throw OptionError("UncertaintyDensity: both detectors must be non-null");
}

std::shared_ptr<const UncertaintyDensity::Combiner> UncertaintyDensity::snapshot(const char* what) const {
  std::shared_ptr<const Combiner> combiner = std::atomic_load(&combiner_);
  if (!combiner) {
    throw StateError("detector is not fitted", std::string("UncertaintyDensity: ") + what + " before fit() or load()");
  }
  return combiner;
}

std::string UncertaintyDensity::describe() const {
  std::ostringstream out;
  out << "UncertaintyDensity(" << uncertainty_->describe() << " + " << density_->describe();
  if (const auto combiner = std::atomic_load(&combiner_)) {
    out << ", weights=[" << combiner->regression.weights()[0] << ", " << combiner->regression.weights()[1]
        << "], bias=" << combiner->regression.bias();
  } else {
    out << ", not fitted";
  }
  out << (is_calibrated() ? ", threshold=" + format_number(threshold()) + ")" : ", uncalibrated)");
  return out.str();
}

torch::Tensor UncertaintyDensity::features(const torch::Tensor& batch, const torch::Tensor& logits,
                                           const Model& model) const {
  c10::InferenceMode inference;
  const torch::Tensor u = uncertainty_->score(DetectorInput{batch, logits, model}).to(torch::kFloat64);
  const torch::Tensor log_k = -density_->score(DetectorInput{batch, logits, model}).to(torch::kFloat64);
  return torch::stack({u, log_k}, 1);
}

CombinerFitReport UncertaintyDensity::fit(const Model& model, const torch::Tensor& clean, const torch::Tensor& noisy,
                                          const torch::Tensor& adversarial, int64_t batch_size) {
  require(batch_size >= 1, "UncertaintyDensity::fit", "batch_size must be at least 1", batch_size);
  if (!density_->is_fitted()) {
    throw StateError("detector is not fitted", "UncertaintyDensity::fit: fit the KernelDensity first");
  }
  auto check = [](const torch::Tensor& t, const char* what, bool may_be_empty) {
    if (!t.defined() || t.dim() != 4 || (!may_be_empty && t.size(0) == 0)) {
      throw OptionError(std::string("UncertaintyDensity::fit: ") + what + " must be an N×C×H×W batch" +
                        (may_be_empty ? "" : " with N >= 1"));
    }
  };
  check(clean, "clean", false);
  check(adversarial, "adversarial", false);
  const bool with_noisy = noisy.defined() && noisy.numel() > 0;
  if (with_noisy) check(noisy, "noisy", false);
  auto features_of = [&](const torch::Tensor& images) {
    c10::InferenceMode inference;
    return parry::detail::map_chunks(
        images, batch_size, [&](const torch::Tensor& chunk) { return features(chunk, model.logits(chunk), model); });
  };
  const torch::Tensor negatives =
      with_noisy ? torch::cat({features_of(clean), features_of(noisy)}) : features_of(clean);
  const torch::Tensor positives = features_of(adversarial);
  const torch::Tensor x = torch::cat({negatives, positives});
  if (!torch::isfinite(x).all().item<bool>()) {
    throw StateError("detector produced non-finite scores", "UncertaintyDensity::fit: a feature is not finite");
  }
  // z-normalisation over the whole training set (scikit-learn's scale(), as in the paper's code).
  const torch::Tensor mean = x.mean(0);
  torch::Tensor scale = x.std(0, /*unbiased=*/false);
  scale = torch::where(scale > 0, scale, torch::ones_like(scale));
  const torch::Tensor y =
      torch::cat({torch::zeros({negatives.size(0)}, torch::kInt64), torch::ones({positives.size(0)}, torch::kInt64)});
  auto combiner = std::make_shared<Combiner>();
  combiner->regression = LogisticRegression(options_);
  LogisticRegression& regression = combiner->regression;
  CombinerFitReport report;
  report.iterations = regression.fit((x - mean) / scale, y);
  report.negatives = negatives.size(0);
  report.positives = positives.size(0);
  report.training_probability = regression.predict_probability((x - mean) / scale);
  for (int k = 0; k < 2; ++k) {
    combiner->mean[k] = mean[k].item<double>();
    combiner->scale[k] = scale[k].item<double>();
  }
  std::atomic_store(&combiner_, std::shared_ptr<const Combiner>(std::move(combiner)));
  return report;
}

torch::Tensor UncertaintyDensity::score(const DetectorInput& input) const {
  const auto c = snapshot("score()");
  const torch::Tensor x = features(input.batch, input.logits, input.model);
  const torch::Tensor mean = torch::tensor({c->mean[0], c->mean[1]}, x.options().dtype(torch::kFloat64));
  const torch::Tensor scale = torch::tensor({c->scale[0], c->scale[1]}, x.options().dtype(torch::kFloat64));
  return c->regression.predict_probability((x - mean) / scale).to(torch::kFloat32);
}

torch::Tensor UncertaintyDensity::differentiable_score(const torch::Tensor& batch, const Model& model) const {
  const auto c = snapshot("differentiable_score()");
  const torch::Tensor u = uncertainty_->differentiable_score(batch, model);
  const torch::Tensor log_k = -density_->differentiable_score(batch, model);
  const auto& w = c->regression.weights();
  const torch::Tensor z =
      w[0] * (u - c->mean[0]) / c->scale[0] + w[1] * (log_k - c->mean[1]) / c->scale[1] + c->regression.bias();
  return torch::sigmoid(z);
}

void UncertaintyDensity::save_state(torch::serialize::OutputArchive& archive) const {
  const auto c = snapshot("save()");
  const auto& w = c->regression.weights();
  archive.write("combiner",
                torch::tensor({c->mean[0], c->mean[1], c->scale[0], c->scale[1], w[0], w[1], c->regression.bias()},
                              torch::kFloat64),
                /*is_buffer=*/true);
  torch::serialize::OutputArchive density;
  save_state_of(*density_, density);
  archive.write("density", density);
}

void UncertaintyDensity::load_state(torch::serialize::InputArchive& archive) {
  torch::Tensor combiner;
  if (!archive.try_read("combiner", combiner, /*is_buffer=*/true) || combiner.dim() != 1 || combiner.numel() != 7 ||
      combiner.scalar_type() != torch::kFloat64 || !torch::isfinite(combiner).all().item<bool>() ||
      combiner[2].item<double>() <= 0 || combiner[3].item<double>() <= 0) {
    throw IoError("detector file is corrupt", "uncertainty-density: bad combiner parameters");
  }
  torch::serialize::InputArchive density;
  if (!archive.try_read("density", density)) {
    throw IoError("detector file is corrupt", "uncertainty-density: no density state");
  }
  load_state_of(*density_, density);
  const auto c = combiner.accessor<double, 1>();
  auto loaded = std::make_shared<Combiner>();
  loaded->regression = LogisticRegression(options_);
  loaded->regression.set_parameters({c[4], c[5]}, c[6]);
  loaded->mean[0] = c[0];
  loaded->mean[1] = c[1];
  loaded->scale[0] = c[2];
  loaded->scale[1] = c[3];
  std::atomic_store(&combiner_, std::shared_ptr<const Combiner>(std::move(loaded)));
}

torch::Tensor noisy_counterparts(const torch::Tensor& clean, const torch::Tensor& adversarial, uint64_t seed,
                                 double clip_min, double clip_max) {
  if (!clean.defined() || !adversarial.defined() || clean.sizes() != adversarial.sizes() || clean.dim() < 2) {
    throw OptionError("noisy_counterparts: clean and adversarial must be batches of the same shape");
  }
  require(std::isfinite(clip_min) && std::isfinite(clip_max) && clip_min < clip_max, "noisy_counterparts",
          "need finite clip_min < clip_max", clip_max - clip_min);
  torch::Generator generator = parry::detail::make_generator(seed, clean.device());
  const torch::Tensor x = clean.detach().to(torch::kFloat32);
  const torch::Tensor target_norm = (adversarial.detach().to(torch::kFloat32) - x).flatten(1).norm(2, 1);
  const torch::Tensor noise = torch::randn(x.sizes(), generator, x.options());
  const torch::Tensor noise_norm = noise.flatten(1).norm(2, 1).clamp_min(1e-12);
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  return (x + noise * (target_norm / noise_norm).view(shape)).clamp(clip_min, clip_max);
}

}  // namespace parry::detect
