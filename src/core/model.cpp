// parry::Model: the module, TorchScript and callable backends, and module state files.
#include "parry/core/model.hpp"

#include <sys/stat.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <filesystem>
#include <fstream>
#include <unordered_map>
#include <unordered_set>

#include "detail/torch_archive.hpp"
#include "parry/detail/files.hpp"

namespace parry {

namespace detail {

namespace {

// Files written by save_module_state carry this key so that a random
// TorchScript archive or another model's weights are recognised as such.
constexpr const char* kFormatKey = "parry_format";
constexpr const char* kFormatValue = "parry-module-state-v1";
constexpr const char* kTagKey = "parry_module";

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
  torch::serialize::InputArchive archive;
  load_output_archive(path, "model file", archive);
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

// A dropout module: one of torch.nn's dropout classes, or a leaf module whose
// class name contains "Dropout" (a user's own). A module with children is
// never one by name ("FunctionalDropoutCnn" is a network): its functional
// dropout is found by has_only_functional_dropout().
bool is_torchscript_dropout(const torch::jit::Module& m) {
  const auto name = m.type()->name();
  if (!name) return false;
  if (name->qualifiedName().rfind("__torch__.torch.nn.modules.dropout.", 0) == 0) return true;
  return name->name().find("Dropout") != std::string::npos && m.named_children().size() == 0;
}

// --- Functional dropout ------------------------------------------------------

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;
namespace attr = c10::attr;
namespace prim = c10::prim;

// aten::dropout and its variants; all take (Tensor input, float p, bool train).
bool is_dropout_op(const Node* node) {
  static const std::unordered_set<std::string> kOps = {
      "aten::dropout",       "aten::dropout_",       "aten::feature_dropout",       "aten::feature_dropout_",
      "aten::alpha_dropout", "aten::alpha_dropout_", "aten::feature_alpha_dropout", "aten::feature_alpha_dropout_"};
  return kOps.count(node->kind().toQualString()) > 0;
}
constexpr size_t kDropoutTrainArgument = 2;

// What a module does with its own `training` attribute, over all its methods.
struct TrainingUses {
  bool dropout = false;  // the `train` argument of a dropout op
  bool other = false;    // anything else: a branch, batch norm, a call
};

void scan_training_uses(Block* block, Value* self, TrainingUses& uses) {
  for (Node* node : block->nodes()) {
    if (node->kind() == prim::GetAttr && node->input(0) == self && node->s(attr::name) == "training") {
      for (const torch::jit::Use& use : node->output()->uses()) {
        if (is_dropout_op(use.user) && use.offset == kDropoutTrainArgument) {
          uses.dropout = true;
        } else {
          uses.other = true;
        }
      }
    }
    for (Block* inner : node->blocks()) scan_training_uses(inner, self, uses);
  }
}

// Python's F.dropout is a script function (prim::CallFunction) that calls
// aten::dropout; the method graphs are inlined so that the op and the
// attribute it reads meet. Calls into submodules are inlined too, but their
// `training` is read from the submodule, not from `self`, so it does not count.
TrainingUses training_uses(const torch::jit::Module& module) {
  TrainingUses uses;
  for (const auto& method : module.get_methods()) {
    std::shared_ptr<Graph> graph = method.graph()->copy();
    try {
      torch::jit::Inline(*graph);
    } catch (const c10::Error&) {
      // Scan what could not be inlined as it is: a call that receives
      // `training` counts as another use, so the module stays in eval.
    }
    scan_training_uses(graph->block(), graph->inputs().at(0), uses);
  }
  return uses;
}

// A module whose only use of `training` is to switch functional dropout.
bool has_only_functional_dropout(const torch::jit::Module& module) {
  const TrainingUses uses = training_uses(module);
  return uses.dropout && !uses.other;
}

// --- Split at a named layer ---------------------------------------------------

std::string top_level_children(const torch::jit::Module& module) {
  std::string names;
  for (const auto& child : module.named_children()) names += (names.empty() ? "" : ", ") + child.name;
  return names.empty() ? "(none)" : names;
}

[[noreturn]] void fail_layer(const torch::jit::Module& module, const std::string& layer, const std::string& why) {
  throw OptionError("feature layer \"" + layer + "\": " + why + "; the model's top-level submodules are " +
                    top_level_children(module));
}

torch::jit::Module find_submodule(const torch::jit::Module& root, const std::string& layer) {
  torch::jit::Module current = root;
  size_t begin = 0;
  while (true) {
    const size_t dot = layer.find('.', begin);
    const std::string part = layer.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin);
    if (part.empty() || !current.hasattr(part) || !current.attr(part).isModule()) {
      fail_layer(root, layer, "no such submodule");
    }
    current = current.attr(part).toModule();
    if (dot == std::string::npos) return current;
    begin = dot + 1;
  }
}

// Dotted module path of every value that is a submodule reached from `self`
// by a chain of prim::GetAttr ("" for self).
void module_paths(Block* block, std::unordered_map<Value*, std::string>& paths) {
  for (Node* node : block->nodes()) {
    if (node->kind() == prim::GetAttr) {
      const auto parent = paths.find(node->input(0));
      const auto type = node->output()->type()->cast<c10::ClassType>();
      if (parent != paths.end() && type && type->is_module()) {
        const std::string& name = node->s(attr::name);
        paths[node->output()] = parent->second.empty() ? name : parent->second + "." + name;
      }
    }
    for (Block* inner : node->blocks()) module_paths(inner, paths);
  }
}

std::unordered_map<Value*, std::string> module_paths(Graph& graph) {
  std::unordered_map<Value*, std::string> paths{{graph.inputs().at(0), ""}};
  module_paths(graph.block(), paths);
  return paths;
}

// forward()'s graph (a copy) with every method call on `self` or on a module
// enclosing `layer` (e.g. "layer4" for "layer4.1") inlined, so that the call
// of `layer` shows up in it; other calls, including `layer`'s own, stay
// calls. Returns the graph and that call, checked to be the only one, at top
// level and with one tensor argument.
std::pair<std::shared_ptr<Graph>, Node*> inline_to_layer(const torch::jit::Module& module, const std::string& layer) {
  find_submodule(module, layer);  // a clear error for a name that is not a submodule
  std::shared_ptr<Graph> graph = module.get_method("forward").graph()->copy();
  auto encloses = [&](const std::string& path) {
    return path.empty() || (layer.size() > path.size() && layer.compare(0, path.size() + 1, path + ".") == 0);
  };
  std::unordered_map<Value*, std::string> paths;
  for (int rounds = 0;; ++rounds) {
    if (rounds > 10000) fail_layer(module, layer, "forward() is too deeply nested to split");
    paths = module_paths(*graph);
    Node* to_inline = nullptr;
    for (Node* call : torch::jit::findAllNodes(*graph, prim::CallMethod, /*recurse=*/true)) {
      const auto path = paths.find(call->input(0));
      if (path != paths.end() && path->second != layer && encloses(path->second)) {
        to_inline = call;
        break;
      }
    }
    if (!to_inline) break;
    const auto type = to_inline->input(0)->type()->expect<c10::ClassType>();
    // The callee's own graph, not its optimized graph: that one has every
    // call inlined already, the layer's included.
    auto& callee = torch::jit::toGraphFunction(type->getMethod(to_inline->s(attr::name)));
    torch::jit::inlineCallTo(to_inline, &callee, callee.graph().get());
  }
  std::vector<Node*> calls;
  for (Node* call : torch::jit::findAllNodes(*graph, prim::CallMethod, /*recurse=*/true)) {
    const auto path = paths.find(call->input(0));
    if (path != paths.end() && path->second == layer && call->s(attr::name) == "forward") calls.push_back(call);
  }
  if (calls.size() != 1) {
    fail_layer(module, layer,
               "forward() must call it exactly once, but calls it " + std::to_string(calls.size()) + " times");
  }
  Node* call = calls.front();
  if (call->owningBlock() != graph->block()) fail_layer(module, layer, "forward() calls it inside a branch or loop");
  if (call->inputs().size() != 2 || !call->input(1)->type()->isSubtypeOf(*c10::TensorType::get())) {
    fail_layer(module, layer, "forward() must call it with one tensor");
  }
  if (graph->inputs().size() != 2) fail_layer(module, layer, "forward() must take one tensor");
  return {graph, call};
}

// (self, x) -> the input of `layer`: forward() up to the call.
std::shared_ptr<Graph> features_graph(const torch::jit::Module& module, const std::string& layer) {
  auto [graph, call] = inline_to_layer(module, layer);
  Value* features = call->input(1);
  while (!graph->outputs().empty()) graph->eraseOutput(graph->outputs().size() - 1);
  graph->registerOutput(features);
  // Drop the call and everything after it (last first, so nothing dropped is still used).
  std::vector<Node*> after;
  for (Node* node = call; node != graph->return_node(); node = node->next()) after.push_back(node);
  for (auto it = after.rbegin(); it != after.rend(); ++it) (*it)->destroy();
  torch::jit::EliminateDeadCode(graph);
  return graph;
}

// (self, f) -> logits: forward() from the call of `layer` on, with f as the
// layer's input. The rest of forward() must not use anything computed before
// the call other than f (a skip connection around the layer cannot be split).
std::shared_ptr<Graph> head_graph(const torch::jit::Module& module, const std::string& layer) {
  auto [graph, call] = inline_to_layer(module, layer);
  Value* f = graph->addInput("features")->setType(call->input(1)->type());
  call->replaceInput(1, f);
  // Drop what only fed the layer's input (last first); calls have side
  // effects for EliminateDeadCode, so unused nodes are removed here.
  std::vector<Node*> before;
  for (Node* node = graph->param_node()->next(); node != call; node = node->next()) before.push_back(node);
  for (auto it = before.rbegin(); it != before.rend(); ++it) {
    bool used = false;
    for (Value* out : (*it)->outputs()) used = used || out->hasUses();
    if (!used) (*it)->destroy();
  }
  torch::jit::EliminateDeadCode(graph);
  if (graph->inputs().at(1)->hasUses()) {
    fail_layer(module, layer, "forward() uses values computed before it after calling it (a skip connection?)");
  }
  graph->eraseInput(1);
  return graph;
}

// A TorchScript model split at `layer`: functions of (self, x) and (self, f)
// compiled from forward(), so that head(features(x)) runs exactly the ops of
// forward(x). The module is not modified (no method is added to its type).
struct LayerSplit {
  std::shared_ptr<torch::jit::CompilationUnit> unit;  // owns both functions
  torch::jit::Function* features = nullptr;
  torch::jit::Function* head = nullptr;
};

std::shared_ptr<LayerSplit> split_at_layer(const torch::jit::Module& module, const std::string& layer) {
  auto split = std::make_shared<LayerSplit>();
  split->unit = std::make_shared<torch::jit::CompilationUnit>();
  split->features =
      split->unit->create_function(c10::QualifiedName("__parry__.features"), features_graph(module, layer));
  split->head = split->unit->create_function(c10::QualifiedName("__parry__.head"), head_graph(module, layer));
  return split;
}

class TorchScriptBackend final : public ModelBackend {
 public:
  /// `feature_layer`: split at that submodule (Model::with_feature_layer);
  /// empty: exported features()/head() if any.
  explicit TorchScriptBackend(torch::jit::Module module, std::string feature_layer = "")
      : module_(std::move(module)), feature_layer_(std::move(feature_layer)) {
    init_split();
  }

  torch::Tensor logits(const torch::Tensor& x) override { return module_.forward({x}).toTensor(); }
  bool has_feature_split() const override { return split_; }
  torch::Tensor features(const torch::Tensor& x) override {
    if (layer_split_) return (*layer_split_->features)({module_._ivalue(), x}).toTensor();
    return call("features", x);
  }
  torch::Tensor head(const torch::Tensor& f) override {
    if (layer_split_) return (*layer_split_->head)({module_._ivalue(), f}).toTensor();
    return call("head", f);
  }
  std::shared_ptr<ModelBackend> clone() const override {
    return std::make_shared<TorchScriptBackend>(module_.deepcopy(), feature_layer_);
  }
  std::shared_ptr<ModelBackend> with_active_dropout(int64_t& dropout_layers) const override {
    torch::jit::Module copy = module_.deepcopy();
    copy.eval();
    dropout_layers = 0;
    for (auto child : copy.modules()) {
      // This module only: Module::train() would also switch its children
      // (BatchNorm and the like) to training mode.
      if (is_torchscript_dropout(child) || has_only_functional_dropout(child)) {
        child.setattr("training", true);
        ++dropout_layers;
      }
    }
    return std::make_shared<TorchScriptBackend>(std::move(copy), feature_layer_);
  }
  std::shared_ptr<ModelBackend> with_feature_layer(const std::string& layer) const override {
    return std::make_shared<TorchScriptBackend>(module_, layer);
  }
  std::vector<torch::Tensor> parameters() const override {
    std::vector<torch::Tensor> out;
    for (const auto& p : module_.parameters()) out.push_back(p);
    return out;
  }
  std::vector<torch::Tensor> buffers() const override {
    std::vector<torch::Tensor> out;
    for (const auto& b : module_.buffers()) out.push_back(b);
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
    torch::jit::Module previous = module_;
    module_ = typed->module_;
    try {
      init_split();
    } catch (...) {
      module_ = std::move(previous);
      init_split();
      throw;
    }
  }
  std::string kind() const override { return "torchscript"; }
  std::string describe() const override {
    return feature_layer_.empty() ? kind() : kind() + " split at " + feature_layer_;
  }
  torch::Device device() const override {
    std::vector<torch::Tensor> buffers;
    for (const auto& b : module_.buffers()) buffers.push_back(b);
    return first_device(parameters(), buffers);
  }

 private:
  void init_split() {
    layer_split_ = feature_layer_.empty() ? nullptr : split_at_layer(module_, feature_layer_);
    split_ = layer_split_ != nullptr ||
             (module_.find_method("features").has_value() && module_.find_method("head").has_value());
  }

  torch::Tensor call(const char* method, const torch::Tensor& x) {
    if (!split_) throw StateError("this model does not expose a features/head split");
    return module_.get_method(method)({x}).toTensor();
  }

  torch::jit::Module module_;
  std::string feature_layer_;
  std::shared_ptr<LayerSplit> layer_split_;
  bool split_ = false;
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
  std::shared_ptr<ModelBackend> with_feature_layer(const std::string& layer) const override {
    return std::make_shared<TransformedBackend>(inner_->with_feature_layer(layer), transform_);
  }
  std::vector<torch::Tensor> parameters() const override { return inner_->parameters(); }
  std::vector<torch::Tensor> buffers() const override { return inner_->buffers(); }
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

std::shared_ptr<ModelBackend> ModelBackend::with_feature_layer(const std::string& layer) const {
  throw OptionError("feature layer \"" + layer +
                    "\": only TorchScript models can be split at a named layer; this is a " + kind() +
                    " model: give it features() and head() methods instead");
}

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

Model Model::with_feature_layer(const std::string& layer) const {
  if (layer.empty()) throw OptionError("Model::with_feature_layer: the layer name is empty");
  return Model(backend_->with_feature_layer(layer));
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
