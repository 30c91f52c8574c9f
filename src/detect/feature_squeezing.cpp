// detect::FeatureSqueezing: L1 distance between predictions on the input and its squeezed versions (Xu et al. 2018).
#include "parry/detect/feature_squeezing.hpp"

#include "detect/scoring.hpp"
#include "parry/detail/format.hpp"
#include "parry/detail/require.hpp"
#include "parry/preprocess/bit_depth.hpp"
#include "parry/preprocess/median_smoothing.hpp"
#include "parry/preprocess/non_local_means.hpp"

namespace parry::detect {

using detail::check_scoring_batch;
using detail::repeats_along_batch;
using parry::detail::format_number;
using parry::detail::require;

FeatureSqueezing::FeatureSqueezing(std::vector<std::shared_ptr<const Preprocessor>> squeezers)
    : squeezers_(std::move(squeezers)) {
  if (squeezers_.empty()) throw OptionError("FeatureSqueezing: need at least one squeezer");
  for (const auto& s : squeezers_) {
    if (!s) throw OptionError("FeatureSqueezing: a squeezer is null");
  }
}

FeatureSqueezing FeatureSqueezing::for_grayscale() {
  return FeatureSqueezing({std::make_shared<preprocess::BitDepth>(preprocess::BitDepthOptions(1)),
                           std::make_shared<preprocess::MedianSmoothing>(preprocess::MedianSmoothingOptions(2))});
}

FeatureSqueezing FeatureSqueezing::for_color() {
  using namespace preprocess;
  return FeatureSqueezing(
      {std::make_shared<BitDepth>(BitDepthOptions(5)), std::make_shared<MedianSmoothing>(MedianSmoothingOptions(2)),
       std::make_shared<NonLocalMeans>(NonLocalMeansOptions().search_window(13).patch_size(3).strength(2))});
}

FeatureSqueezing FeatureSqueezing::for_channels(int64_t channels) {
  if (channels == 1) return for_grayscale();
  if (channels == 3) return for_color();
  throw OptionError(
      "FeatureSqueezing::for_channels: Xu et al. configure grayscale (1 channel) and colour (3 "
      "channels) images, but got " +
      std::to_string(channels) + " channels; list the squeezers explicitly");
}

std::string FeatureSqueezing::describe() const {
  std::string text = "FeatureSqueezing(";
  for (size_t i = 0; i < squeezers_.size(); ++i) text += (i ? ", " : "") + squeezers_[i]->describe();
  text += is_calibrated() ? "; threshold=" + format_number(threshold()) + ")" : "; uncalibrated)";
  return text;
}

torch::Tensor FeatureSqueezing::score(const DetectorInput& input) const {
  c10::InferenceMode inference;
  check_scoring_batch("FeatureSqueezing", input.batch);
  const torch::Tensor original = torch::softmax(input.logits.to(torch::kFloat32), 1);
  torch::Tensor largest;
  for (const auto& squeezer : squeezers_) {
    const torch::Tensor squeezed =
        torch::softmax(input.model.logits(squeezer->apply(input.batch)).to(torch::kFloat32), 1);
    const torch::Tensor distance = (original - squeezed).abs().sum(1);
    largest = largest.defined() ? torch::maximum(largest, distance) : distance;
  }
  return largest;
}

torch::Tensor FeatureSqueezing::differentiable_score(const torch::Tensor& batch, const Model& model) const {
  check_scoring_batch("FeatureSqueezing", batch);
  const torch::Tensor original = torch::softmax(model.logits(batch).to(torch::kFloat32), 1);
  torch::Tensor largest;
  for (const auto& squeezer : squeezers_) {
    const torch::Tensor squeezed =
        torch::softmax(model.logits(squeezer->apply_differentiable(batch)).to(torch::kFloat32), 1);
    const torch::Tensor distance = (original - squeezed).abs().sum(1);
    largest = largest.defined() ? torch::maximum(largest, distance) : distance;
  }
  return largest;
}

}  // namespace parry::detect
