// models::ReferenceCnn: the Fashion-MNIST reference network.
#include "parry/models/reference_cnn.hpp"

#include "detail/torch_archive.hpp"

namespace parry::models {

ReferenceCnnOptions& ReferenceCnnOptions::dropout(double p) {
  if (!(p >= 0.0 && p < 1.0)) {
    throw OptionError("ReferenceCnnOptions::dropout: probability must be in [0, 1), but got " + std::to_string(p));
  }
  dropout_ = p;
  return *this;
}

ReferenceCnnOptions& ReferenceCnnOptions::classes(int64_t k) {
  if (k < 2) throw OptionError("ReferenceCnnOptions::classes: need at least 2, but got " + std::to_string(k));
  classes_ = k;
  return *this;
}

ReferenceCnnOptions& ReferenceCnnOptions::width(int64_t w) {
  if (w < 1 || w > 16) {
    throw OptionError("ReferenceCnnOptions::width: multiplier must be in [1, 16], but got " + std::to_string(w));
  }
  width_ = w;
  return *this;
}

ReferenceCnnImpl::ReferenceCnnImpl(ReferenceCnnOptions options) : options_(options) {
  reset();
}

void ReferenceCnnImpl::reset() {
  const int64_t w = options_.width();
  conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32 * w, 3)));
  bn1_ = register_module("bn1", torch::nn::BatchNorm2d(32 * w));
  conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32 * w, 64 * w, 3)));
  bn2_ = register_module("bn2", torch::nn::BatchNorm2d(64 * w));
  fc1_ = register_module("fc1", torch::nn::Linear(64 * w * 5 * 5, 128 * w));
  dropout_ = register_module("dropout", torch::nn::Dropout(options_.dropout()));
  fc2_ = register_module("fc2", torch::nn::Linear(128 * w, options_.classes()));
}

torch::Tensor ReferenceCnnImpl::features(const torch::Tensor& x) {
  torch::Tensor h = torch::max_pool2d(torch::relu(bn1_->forward(conv1_->forward(x))), 2);
  h = torch::max_pool2d(torch::relu(bn2_->forward(conv2_->forward(h))), 2);
  return torch::relu(fc1_->forward(h.flatten(1)));
}

torch::Tensor ReferenceCnnImpl::head(const torch::Tensor& f) {
  // The dropout module's mode decides (Model::with_active_dropout switches
  // it), but the mask is drawn as uniform < keep: the same Bernoulli(1 - p)
  // keep-and-rescale as torch::nn::Dropout, about 3× cheaper on CPU than its
  // bernoulli_ kernel. Monte-Carlo dropout's head runs T·N rows, so this is
  // most of its cost.
  const double p = options_.dropout();
  if (!dropout_->is_training() || p == 0.0) return fc2_->forward(f);
  const double keep = 1.0 - p;
  return fc2_->forward(f * torch::rand_like(f).lt_(keep).mul_(1.0 / keep));
}

torch::Tensor ReferenceCnnImpl::forward(const torch::Tensor& x) {
  return head(features(x));
}

namespace {

// The width multiplier of the reference model saved at `path`: conv1's filter
// count over 32. A file that does not say (another architecture, a missing
// key, a count that is no multiple) gives 1, and Model::load then names what
// does not match.
int64_t stored_width(const std::string& path) {
  torch::serialize::InputArchive archive;
  detail::load_output_archive(path, "model file", archive);
  torch::Tensor conv1_weight;
  if (!archive.try_read("p.conv1.weight", conv1_weight) || conv1_weight.dim() != 4) return 1;
  const int64_t filters = conv1_weight.size(0);
  if (filters % 32 != 0 || filters < 32 || filters > 32 * 16) return 1;
  return filters / 32;
}

}  // namespace

ReferenceCnn load_reference_cnn(const std::string& path, ReferenceCnnOptions options) {
  options.width(stored_width(path));
  ReferenceCnn net(options);
  Model(net).load(path);
  net->eval();
  return net;
}

}  // namespace parry::models
