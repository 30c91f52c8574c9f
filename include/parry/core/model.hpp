// parry::Model: one handle over any LibTorch image classifier.
//
// A Model is made from
//   (a) a torch::nn module (a holder such as `MyNet` or a std::shared_ptr to the
//       Impl) whose forward(Tensor) returns logits,
//   (b) a TorchScript file exported from Python (torch.jit.script/trace + save),
//   (c) a plain callable Tensor(Tensor).
// It may expose a features/head split (logits == head(features(x))): a module
// with methods `features(Tensor)` and `head(Tensor)`, a TorchScript module that
// exports methods of those names, two callables, or, for any TorchScript
// model, a named layer (with_feature_layer: features are that layer's input).
// Detectors use the split (kernel density on features; MC dropout runs head()
// many times).
//
// Copies of a Model share the underlying module, like LibTorch holders do.
// clone() makes an independent deep copy. Serving code never toggles
// train/eval on a shared module: with_active_dropout() returns a separate copy
// whose dropout layers stay stochastic, for Monte-Carlo dropout.
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "parry/core/errors.hpp"
#include "parry/core/preprocessor.hpp"

namespace parry {

namespace detail {

/// Type-erased operations a Model needs from its backend.
class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual torch::Tensor logits(const torch::Tensor& x) = 0;
  virtual bool has_feature_split() const = 0;
  virtual torch::Tensor features(const torch::Tensor& x) = 0;
  virtual torch::Tensor head(const torch::Tensor& f) = 0;
  virtual std::shared_ptr<ModelBackend> clone() const = 0;
  /// Deep copy in eval mode except for dropout layers, which are in train mode.
  /// Returns the number of dropout layers found through `dropout_layers`.
  virtual std::shared_ptr<ModelBackend> with_active_dropout(int64_t& dropout_layers) const = 0;
  /// A backend whose features() is the input of submodule `layer` and head()
  /// that submodule's forward (Model::with_feature_layer). The default throws
  /// parry::OptionError: only TorchScript backends can be split at a layer.
  virtual std::shared_ptr<ModelBackend> with_feature_layer(const std::string& layer) const;
  virtual std::vector<torch::Tensor> parameters() const = 0;
  /// Buffers (BatchNorm running statistics and the like); none by default.
  virtual std::vector<torch::Tensor> buffers() const { return {}; }
  virtual void set_training(bool on) = 0;
  virtual bool is_training() const = 0;
  virtual void save(const std::string& path) const = 0;
  virtual void load(const std::string& path) = 0;
  virtual std::string kind() const = 0;
  /// Where the parameters live (the first parameter's or buffer's device;
  /// the CPU for a module without any).
  virtual torch::Device device() const = 0;
  /// One line for reports: the kind and any input transform.
  virtual std::string describe() const { return kind(); }
};

/// Device of a module's first parameter or buffer; the CPU if it has none.
torch::Device module_device(const torch::nn::Module& module);

/// True for LibTorch dropout modules (all variants).
bool is_dropout_module(const torch::nn::Module& m);

/// Saves a module's parameters and buffers atomically, tagged with `tag`.
void save_module_state(const torch::nn::Module& module, const std::string& tag, const std::string& path);
/// Loads what save_module_state wrote; a missing, corrupt or mismatched file
/// (different tag, shapes or parameter names) raises parry::IoError.
void load_module_state(torch::nn::Module& module, const std::string& tag, const std::string& path);

template <typename T, typename = void>
struct has_feature_methods : std::false_type {};
template <typename T>
struct has_feature_methods<T, std::void_t<decltype(std::declval<T&>().features(std::declval<torch::Tensor>())),
                                          decltype(std::declval<T&>().head(std::declval<torch::Tensor>()))>>
    : std::true_type {};

/// Backend over a C++ torch::nn module of concrete type Impl.
template <typename Impl>
class ModuleBackend final : public ModelBackend {
 public:
  explicit ModuleBackend(std::shared_ptr<Impl> module) : module_(std::move(module)) {}

  torch::Tensor logits(const torch::Tensor& x) override { return module_->forward(x); }
  bool has_feature_split() const override { return has_feature_methods<Impl>::value; }
  torch::Tensor features(const torch::Tensor& x) override {
    if constexpr (has_feature_methods<Impl>::value) {
      return module_->features(x);
    } else {
      throw StateError("this model does not expose a features/head split");
    }
  }
  torch::Tensor head(const torch::Tensor& f) override {
    if constexpr (has_feature_methods<Impl>::value) {
      return module_->head(f);
    } else {
      throw StateError("this model does not expose a features/head split");
    }
  }
  std::shared_ptr<ModelBackend> clone() const override { return std::make_shared<ModuleBackend<Impl>>(clone_module()); }
  std::shared_ptr<ModelBackend> with_active_dropout(int64_t& dropout_layers) const override {
    auto copy = clone_module();
    copy->eval();
    dropout_layers = 0;
    for (const auto& child : copy->modules(/*include_self=*/false)) {
      if (is_dropout_module(*child)) {
        child->train(true);
        ++dropout_layers;
      }
    }
    return std::make_shared<ModuleBackend<Impl>>(std::move(copy));
  }
  std::vector<torch::Tensor> parameters() const override { return module_->parameters(); }
  std::vector<torch::Tensor> buffers() const override { return module_->buffers(); }
  void set_training(bool on) override { module_->train(on); }
  bool is_training() const override { return module_->is_training(); }
  void save(const std::string& path) const override { save_module_state(*module_, module_->name(), path); }
  void load(const std::string& path) override { load_module_state(*module_, module_->name(), path); }
  std::string kind() const override { return "module"; }
  torch::Device device() const override { return module_device(*module_); }

  const std::shared_ptr<Impl>& module() const { return module_; }

 private:
  std::shared_ptr<Impl> clone_module() const {
    auto copy = std::dynamic_pointer_cast<Impl>(module_->clone());
    if (!copy) {
      throw StateError("model cannot be cloned",
                       "module clone() returned a different type; derive the Impl from "
                       "torch::nn::Cloneable<Impl>");
    }
    return copy;
  }

  std::shared_ptr<Impl> module_;
};

std::shared_ptr<ModelBackend> make_torchscript_backend(const std::string& path, torch::Device device);
std::shared_ptr<ModelBackend> make_torchscript_backend(torch::jit::Module module);

}  // namespace detail

/// Function types for models made from callables.
using TensorFn = std::function<torch::Tensor(const torch::Tensor&)>;

/// A handle over an image classifier: logits(x) for a batch x of shape
/// N×C×H×W, float, values in the range the model was trained on (Parry's
/// reference model: [0,1]). Copies share the module; see clone().
///
/// Thread safety: logits/features/head are safe to call concurrently as long as
/// nobody calls set_training() or load() on the same handle at the same time.
class Model {
 public:
  /// Wraps a LibTorch module holder (e.g. `ReferenceCnn`, `torch::nn::Sequential`).
  /// Its Impl must derive from torch::nn::Cloneable for clone() and
  /// with_active_dropout() to work.
  template <typename Holder,
            typename = std::enable_if_t<std::is_base_of_v<
                torch::nn::ModuleHolder<typename std::decay_t<Holder>::ContainedType>, std::decay_t<Holder>>>>
  /* implicit */ Model(const Holder& holder) : Model(holder.ptr()) {}

  /// Wraps a module held by shared_ptr; Impl needs forward(Tensor) -> Tensor.
  template <typename Impl, typename = std::enable_if_t<std::is_base_of_v<torch::nn::Module, Impl>>>
  /* implicit */ Model(std::shared_ptr<Impl> module)
      : backend_(std::make_shared<detail::ModuleBackend<Impl>>(check_not_null(std::move(module)))) {}

  /// Loads a TorchScript module saved by Python's torch.jit.save onto `device`
  /// (default the CPU). Methods named `features` and `head`, if exported, form
  /// the feature split.
  /// Threat model: a TorchScript archive is a program, and LibTorch parses and
  /// runs its code; unlike Model::load (whose files are checked before
  /// LibTorch reads them), it must come from a trusted source.
  /// @throws parry::IoError if the file is missing or not a TorchScript archive.
  static Model load_torchscript(const std::string& path, torch::Device device = torch::kCPU);

  /// Wraps an already loaded TorchScript module.
  static Model from_torchscript(torch::jit::Module module);

  /// Wraps a callable returning logits. The optional features/head pair must
  /// satisfy head(features(x)) == logits(x). Callables cannot be cloned deeply:
  /// clone() shares them and with_active_dropout() is unavailable. `device` is
  /// where the callable wants its input (a Guard moves validated input there).
  static Model from_callable(TensorFn logits, TensorFn features = {}, TensorFn head = {},
                             torch::Device device = torch::kCPU);

  /// This model with its own input transform in front: logits(x) =
  /// model.logits(transform(x)), features likewise, head unchanged. This is
  /// model space: the normalisation or resize a network needs (torchvision's
  /// Normalize(mean, std)), kept out of the Guard's pixel-space defenses so
  /// that preprocessors and detectors see pixels. Copies, clone(),
  /// with_active_dropout(), save() and load() keep the transform and act on
  /// the wrapped model; module_as<Impl>() no longer finds the module (its
  /// methods would skip the transform). Call again to chain transforms.
  /// @throws parry::OptionError if `transform` is null, not differentiable or
  ///   not of gradient policy Exact (the attack path and the serving path must
  ///   compute the same function).
  Model with_input_transform(std::shared_ptr<const Preprocessor> transform) const;

  /// Logits, shape N×K, for a batch x of shape N×C×H×W.
  torch::Tensor logits(const torch::Tensor& x) const { return backend_->logits(x); }
  /// Same as logits(x).
  torch::Tensor operator()(const torch::Tensor& x) const { return logits(x); }

  /// True when features()/head() are available.
  bool has_feature_split() const { return backend_->has_feature_split(); }
  /// Last hidden representation, shape N×D. @throws parry::StateError without a split.
  torch::Tensor features(const torch::Tensor& x) const;
  /// Logits from features, shape N×K. @throws parry::StateError without a split.
  torch::Tensor head(const torch::Tensor& f) const;

  /// An independent deep copy (parameters, buffers and training flags).
  Model clone() const { return Model(backend_->clone()); }

  /// An independent copy in eval mode whose dropout layers stay active, for
  /// Monte-Carlo dropout. The original is not touched.
  ///
  /// Dropout layers are dropout modules (torch::nn::Dropout and its variants;
  /// in TorchScript, modules whose type name contains "Dropout") and, in
  /// TorchScript, functional dropout: a module whose methods call
  /// aten::dropout, feature_dropout, alpha_dropout or feature_alpha_dropout
  /// (or their in-place forms) with `train` = its own `training` attribute
  /// (Python's `F.dropout(x, p, self.training)`) counts as one dropout layer,
  /// and only that module's `training` flag is set in the copy. A module that
  /// reads `self.training` for anything else too (an `if self.training:`
  /// branch, functional batch norm) is left in eval mode, so BatchNorm and
  /// every other mode-dependent layer keeps its eval behaviour and running
  /// statistics.
  /// @throws parry::StateError if the model has no dropout layer or cannot be copied.
  Model with_active_dropout() const;

  /// This model with a features/head split at a named layer, for TorchScript
  /// models that do not export `features`/`head` (a stock torchvision ResNet):
  /// features(x) is the input of submodule `layer` (a dotted path from the top
  /// module, e.g. "fc" or "layer4.1") as forward() computes it, head(f) is the
  /// rest of forward() from that call on (for the last layer, its forward(f)),
  /// so head(features(x)) == logits(x) exactly. features() is
  /// not flattened: KernelDensity flattens it to N×D. The split is computed on
  /// the method graphs (forward is inlined down to the call of `layer`); the
  /// module itself is not modified. An input transform in front
  /// (with_input_transform) is kept: features(x) = inner features(transform(x)).
  /// Copies, clone() and with_active_dropout() keep the split.
  /// @throws parry::OptionError if the model is not TorchScript, if `layer` is
  ///   not a submodule, or if forward() does not call its forward exactly once
  ///   (at top level, not inside a branch or loop) with one tensor, or if the
  ///   rest of forward() also uses values computed before the call (a skip
  ///   connection around the layer); the message names the layer and lists
  ///   the top-level submodules.
  Model with_feature_layer(const std::string& layer) const;

  /// Trainable parameters (empty for callables).
  std::vector<torch::Tensor> parameters() const { return backend_->parameters(); }
  /// Buffers of the module (BatchNorm running statistics), shared with the
  /// model: changing them in place changes the model. Empty for callables.
  std::vector<torch::Tensor> buffers() const { return backend_->buffers(); }

  /// Training path only: switches train/eval mode of this handle's module.
  /// Never call this on a model shared with a serving Guard.
  void set_training(bool on) { backend_->set_training(on); }
  bool is_training() const { return backend_->is_training(); }

  /// Saves parameters and buffers atomically (temporary file, then rename).
  /// TorchScript models are saved as TorchScript archives.
  void save(const std::string& path) const { backend_->save(path); }
  /// Loads parameters saved by save() into this model's module.
  /// @throws parry::IoError on a missing, corrupt or mismatched file.
  void load(const std::string& path) { backend_->load(path); }

  /// "module", "torchscript" or "callable"; for logs and reports.
  std::string kind() const { return backend_->kind(); }
  /// The kind and the input transforms, e.g. "torchscript after Normalize(...)".
  std::string describe() const { return backend_->describe(); }
  /// The device of the parameters; the Guard moves validated input there.
  torch::Device device() const { return backend_->device(); }

  /// The wrapped C++ module if this Model was made from Impl, else nullptr.
  template <typename Impl>
  std::shared_ptr<Impl> module_as() const {
    auto typed = std::dynamic_pointer_cast<detail::ModuleBackend<Impl>>(backend_);
    return typed ? typed->module() : nullptr;
  }

  explicit Model(std::shared_ptr<detail::ModelBackend> backend);

 private:
  template <typename Impl>
  static std::shared_ptr<Impl> check_not_null(std::shared_ptr<Impl> module) {
    if (!module) throw OptionError("parry::Model: module pointer is null");
    return module;
  }

  std::shared_ptr<detail::ModelBackend> backend_;
};

}  // namespace parry
