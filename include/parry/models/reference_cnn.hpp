// Parry's reference classifier for 28×28 grayscale images (Fashion-MNIST).
//
//   features: conv3x3(1→32w) BN ReLU maxpool2 (26→13) → conv3x3(32w→64w) BN
//             ReLU maxpool2 (11→5) → flatten(64w·5·5) → linear(1600w→128w) ReLU
//   head:     dropout(p) → linear(128w→10)
//
// w is the width multiplier, 1 by default (the reference model of the
// docs). Adversarial training at ε = 0.1 is short of capacity at w = 1;
// w = 2 (about 4× the compute) is the wider model of docs/training.md.
//
// Dropout sits only in the head, so Monte-Carlo dropout can run features()
// once and head() many times (Feinman et al. 2017's uncertainty) with exactly
// the same distribution as full stochastic forward passes. The dropout mask
// is drawn as uniform < 1 - p (the same distribution as torch::nn::Dropout,
// cheaper on CPU); the registered Dropout module still holds the mode. Convolutions are
// unpadded: on this LibTorch build the padded 1→32 layer is 5× slower. The 128w-d features
// are the "last hidden layer" used by kernel density detection.
#pragma once

#include <torch/torch.h>

#include "parry/core/model.hpp"

namespace parry::models {

struct ReferenceCnnOptions {
  /// Dropout probability in the head (default 0.5), in [0, 1).
  ReferenceCnnOptions& dropout(double p);
  double dropout() const { return dropout_; }
  /// Number of output classes (default 10).
  ReferenceCnnOptions& classes(int64_t k);
  int64_t classes() const { return classes_; }
  /// Width multiplier w in [1, 16] (default 1): 32w and 64w filters and a
  /// 128w-unit hidden layer; the compute grows about as w².
  ReferenceCnnOptions& width(int64_t w);
  int64_t width() const { return width_; }

 private:
  double dropout_ = 0.5;
  int64_t classes_ = 10;
  int64_t width_ = 1;
};

class ReferenceCnnImpl : public torch::nn::Cloneable<ReferenceCnnImpl> {
 public:
  explicit ReferenceCnnImpl(ReferenceCnnOptions options = {});
  void reset() override;

  /// Logits N×classes for x of shape N×1×28×28.
  torch::Tensor forward(const torch::Tensor& x);
  /// Last hidden layer, N×128w (after ReLU).
  torch::Tensor features(const torch::Tensor& x);
  /// Logits from features.
  torch::Tensor head(const torch::Tensor& f);

  const ReferenceCnnOptions& options() const { return options_; }

 private:
  ReferenceCnnOptions options_;
  torch::nn::Conv2d conv1_{nullptr};
  torch::nn::BatchNorm2d bn1_{nullptr};
  torch::nn::Conv2d conv2_{nullptr};
  torch::nn::BatchNorm2d bn2_{nullptr};
  torch::nn::Linear fc1_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear fc2_{nullptr};
};
TORCH_MODULE(ReferenceCnn);

/// Loads a reference model saved with parry::Model::save, in eval mode. The
/// width is read from the file (its first layer's filter count); `options`
/// give the dropout and the number of classes, and their width is ignored.
/// @throws parry::IoError on a missing, corrupt or mismatched file.
ReferenceCnn load_reference_cnn(const std::string& path, ReferenceCnnOptions options = {});

}  // namespace parry::models
