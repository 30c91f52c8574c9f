// parry::Model: the module, TorchScript and callable backends, and module state files.
#include "parry/core/model.hpp"

#include <sys/stat.h>
#include <filesystem>
#include <fstream>

#include "parry/detail/files.hpp"

namespace parry {

namespace detail {

namespace {

// Files written by save_module_state carry this key so that a random
// TorchScript archive or another model's weights are recognised as such.
constexpr const char* kFormatKey = "parry_format";
constexpr const char* kFormatValue = "parry-module-state-v1";
constexpr const char* kTagKey = "parry_module";

std::string describe_path(const std::string& path) {
  return "file '" + path + "'";
}

}  // namespace

bool is_dropout_module(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::DropoutImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::Dropout2dImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::Dropout3dImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::AlphaDropoutImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::FeatureAlphaDropoutImpl*>(&m) != nullptr;
}

void save_module_state(const torch::nn::Module& module, const std::string& tag, const std::string& path) {
  atomic_write(path, [&](const std::string& tmp) {
    torch::serialize::OutputArchive archive;
    archive.write(kFormatKey, c10::IValue(std::string(kFormatValue)));
    archive.write(kTagKey, c10::IValue(tag));
    torch::NoGradGuard no_grad;
    for (const auto& item : module.named_parameters(/*recurse=*/true)) {
      archive.write("p." + item.key(), item.value());
    }
    for (const auto& item : module.named_buffers(/*recurse=*/true)) {
      archive.write("b." + item.key(), item.value(), /*is_buffer=*/true);
    }
    archive.save_to(tmp);
  });
}

void load_module_state(torch::nn::Module& module, const std::string& tag, const std::string& path) {
  if (!file_exists(path)) {
    throw IoError("model file not found", "no such " + describe_path(path));
  }
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw IoError("model file is corrupt", describe_path(path) + ": " + e.what_without_backtrace());
  }
  c10::IValue format;
  c10::IValue stored_tag;
  if (!archive.try_read(kFormatKey, format) || !format.isString() || format.toStringRef() != kFormatValue) {
    throw IoError("model file has an unknown format", describe_path(path) + " lacks " + kFormatKey);
  }
  if (!archive.try_read(kTagKey, stored_tag) || !stored_tag.isString() || stored_tag.toStringRef() != tag) {
    throw IoError("model file belongs to a different architecture",
                  describe_path(path) + " holds '" +
                      (stored_tag.isString() ? stored_tag.toStringRef() : std::string("?")) + "', expected '" + tag +
                      "'");
  }
  // Read everything into temporaries first so that a mismatch leaves the
  // module exactly as it was.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> updates;
  auto stage = [&](const std::string& key, const torch::Tensor& target) {
    torch::Tensor value;
    if (!archive.try_read(key, value)) {
      throw IoError("model file does not match the model", describe_path(path) + " lacks " + key);
    }
    if (value.sizes() != target.sizes() || value.scalar_type() != target.scalar_type()) {
      throw IoError("model file does not match the model",
                    describe_path(path) + ": " + key + " has a different shape or dtype");
    }
    updates.emplace_back(target, value);
  };
  for (const auto& item : module.named_parameters(true)) stage("p." + item.key(), item.value());
  for (const auto& item : module.named_buffers(true)) stage("b." + item.key(), item.value());
  torch::NoGradGuard no_grad;
  for (auto& [target, value] : updates) target.copy_(value);
}

namespace {

torch::Device first_device(const std::vector<torch::Tensor>& parameters, const std::vector<torch::Tensor>& buffers) {
  if (!parameters.empty()) return parameters.front().device();
  if (!buffers.empty()) return buffers.front().device();
  return torch::kCPU;
}

bool is_torchscript_dropout(const torch::jit::Module& m) {
  const auto name = m.type()->name();
  if (!name) return false;
  const std::string& base = name->name();
  return base.find("Dropout") != std::string::npos;
}

class TorchScriptBackend final : public ModelBackend {
 public:
  explicit TorchScriptBackend(torch::jit::Module module)
      : module_(std::move(module)),
        split_(module_.find_method("features").has_value() && module_.find_method("head").has_value()) {}

  torch::Tensor logits(const torch::Tensor& x) override { return module_.forward({x}).toTensor(); }
  bool has_feature_split() const override { return split_; }
  torch::Tensor features(const torch::Tensor& x) override { return call("features", x); }
  torch::Tensor head(const torch::Tensor& f) override { return call("head", f); }
  std::shared_ptr<ModelBackend> clone() const override {
    return std::make_shared<TorchScriptBackend>(module_.deepcopy());
  }
  std::shared_ptr<ModelBackend> with_active_dropout(int64_t& dropout_layers) const override {
    torch::jit::Module copy = module_.deepcopy();
    copy.eval();
    dropout_layers = 0;
    for (auto child : copy.modules()) {
      if (is_torchscript_dropout(child)) {
        child.train(true);
        ++dropout_layers;
      }
    }
    return std::make_shared<TorchScriptBackend>(std::move(copy));
  }
  std::vector<torch::Tensor> parameters() const override {
    std::vector<torch::Tensor> out;
    for (const auto& p : module_.parameters()) out.push_back(p);
    return out;
  }
  void set_training(bool on) override { module_.train(on); }
  bool is_training() const override { return module_.is_training(); }
  void save(const std::string& path) const override {
    atomic_write(path, [&](const std::string& tmp) { module_.save(tmp); });
  }
  void load(const std::string& path) override {
    auto loaded = make_torchscript_backend(path, device());
    auto* typed = dynamic_cast<TorchScriptBackend*>(loaded.get());
    module_ = typed->module_;
    split_ = typed->split_;
  }
  std::string kind() const override { return "torchscript"; }
  torch::Device device() const override {
    std::vector<torch::Tensor> buffers;
    for (const auto& b : module_.buffers()) buffers.push_back(b);
    return first_device(parameters(), buffers);
  }

 private:
  torch::Tensor call(const char* method, const torch::Tensor& x) {
    if (!split_) throw StateError("this model does not expose a features/head split");
    return module_.get_method(method)({x}).toTensor();
  }

  torch::jit::Module module_;
  bool split_;
};

class CallableBackend final : public ModelBackend {
 public:
  CallableBackend(TensorFn logits, TensorFn features, TensorFn head, torch::Device device)
      : logits_(std::move(logits)), features_(std::move(features)), head_(std::move(head)), device_(device) {}

  torch::Tensor logits(const torch::Tensor& x) override { return logits_(x); }
  bool has_feature_split() const override { return features_ && head_; }
  torch::Tensor features(const torch::Tensor& x) override {
    if (!has_feature_split()) throw StateError("this model does not expose a features/head split");
    return features_(x);
  }
  torch::Tensor head(const torch::Tensor& f) override {
    if (!has_feature_split()) throw StateError("this model does not expose a features/head split");
    return head_(f);
  }
  std::shared_ptr<ModelBackend> clone() const override {
    return std::make_shared<CallableBackend>(logits_, features_, head_, device_);
  }
  std::shared_ptr<ModelBackend> with_active_dropout(int64_t&) const override {
    throw StateError("a model made from a callable has no dropout layers to activate");
  }
  std::vector<torch::Tensor> parameters() const override { return {}; }
  void set_training(bool) override {}
  bool is_training() const override { return false; }
  void save(const std::string&) const override { throw StateError("a model made from a callable cannot be saved"); }
  void load(const std::string&) override { throw StateError("a model made from a callable cannot be loaded"); }
  std::string kind() const override { return "callable"; }
  torch::Device device() const override { return device_; }

 private:
  TensorFn logits_;
  TensorFn features_;
  TensorFn head_;
  torch::Device device_;
};

// A model with its input transform in front (Model::with_input_transform).
class TransformedBackend final : public ModelBackend {
 public:
  TransformedBackend(std::shared_ptr<ModelBackend> inner, std::shared_ptr<const Preprocessor> transform)
      : inner_(std::move(inner)), transform_(std::move(transform)) {}

  torch::Tensor logits(const torch::Tensor& x) override { return inner_->logits(transform_->apply(x)); }
  bool has_feature_split() const override { return inner_->has_feature_split(); }
  torch::Tensor features(const torch::Tensor& x) override { return inner_->features(transform_->apply(x)); }
  torch::Tensor head(const torch::Tensor& f) override { return inner_->head(f); }
  std::shared_ptr<ModelBackend> clone() const override {
    return std::make_shared<TransformedBackend>(inner_->clone(), transform_);
  }
  std::shared_ptr<ModelBackend> with_active_dropout(int64_t& dropout_layers) const override {
    return std::make_shared<TransformedBackend>(inner_->with_active_dropout(dropout_layers), transform_);
  }
  std::vector<torch::Tensor> parameters() const override { return inner_->parameters(); }
  void set_training(bool on) override { inner_->set_training(on); }
  bool is_training() const override { return inner_->is_training(); }
  void save(const std::string& path) const override { inner_->save(path); }
  void load(const std::string& path) override { inner_->load(path); }
  std::string kind() const override { return inner_->kind(); }
  std::string describe() const override { return inner_->describe() + " after " + transform_->describe(); }
  torch::Device device() const override { return inner_->device(); }

 private:
  std::shared_ptr<ModelBackend> inner_;
  std::shared_ptr<const Preprocessor> transform_;
};

}  // namespace

std::shared_ptr<ModelBackend> make_torchscript_backend(torch::jit::Module module) {
  module.eval();
  return std::make_shared<TorchScriptBackend>(std::move(module));
}

torch::Device module_device(const torch::nn::Module& module) {
  return first_device(module.parameters(), module.buffers());
}

std::shared_ptr<ModelBackend> make_torchscript_backend(const std::string& path, torch::Device device) {
  if (!file_exists(path)) {
    throw IoError("model file not found", "no such " + describe_path(path));
  }
  try {
    return make_torchscript_backend(torch::jit::load(path, device));
  } catch (const c10::Error& e) {
    throw IoError("model file is not a valid TorchScript archive",
                  describe_path(path) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw IoError("model file is not a valid TorchScript archive", describe_path(path) + ": " + e.what());
  }
}

}  // namespace detail

Model::Model(std::shared_ptr<detail::ModelBackend> backend) : backend_(std::move(backend)) {
  if (!backend_) throw OptionError("parry::Model: backend is null");
}

Model Model::load_torchscript(const std::string& path, torch::Device device) {
  return Model(detail::make_torchscript_backend(path, device));
}

Model Model::from_torchscript(torch::jit::Module module) {
  return Model(detail::make_torchscript_backend(std::move(module)));
}

Model Model::from_callable(TensorFn logits, TensorFn features, TensorFn head, torch::Device device) {
  if (!logits) throw OptionError("parry::Model::from_callable: the logits callable is empty");
  if (static_cast<bool>(features) != static_cast<bool>(head)) {
    throw OptionError("parry::Model::from_callable: give both features and head, or neither");
  }
  return Model(
      std::make_shared<detail::CallableBackend>(std::move(logits), std::move(features), std::move(head), device));
}

torch::Tensor Model::features(const torch::Tensor& x) const {
  return backend_->features(x);
}

torch::Tensor Model::head(const torch::Tensor& f) const {
  return backend_->head(f);
}

Model Model::with_input_transform(std::shared_ptr<const Preprocessor> transform) const {
  if (!transform) throw OptionError("Model::with_input_transform: transform is null");
  if (!transform->is_differentiable() || transform->gradient_policy() != GradientPolicy::Exact) {
    throw OptionError("Model::with_input_transform: " + transform->describe() +
                      " must be differentiable with gradient policy 'exact', so that attacks differentiate the "
                      "model the Guard serves");
  }
  return Model(std::make_shared<detail::TransformedBackend>(backend_, std::move(transform)));
}

Model Model::with_active_dropout() const {
  int64_t dropout_layers = 0;
  auto copy = backend_->with_active_dropout(dropout_layers);
  if (dropout_layers == 0) {
    throw StateError("the model has no dropout layers; Monte-Carlo dropout needs at least one");
  }
  return Model(std::move(copy));
}

}  // namespace parry
