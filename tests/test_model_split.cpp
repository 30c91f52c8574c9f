// Detectors on any model (issue 14): functional dropout in TorchScript
// (Model::with_active_dropout) and features from a named layer
// (Model::with_feature_layer, the config's "feature_layer"), on models exported
// by scripts/make_torchscript_fixture.py.
#include "parry/config/defense_config.hpp"
#include "parry/core/model.hpp"
#include "parry/detect/kernel_density.hpp"
#include "parry/detect/mc_dropout.hpp"
#include "parry/detect/uncertainty_density.hpp"
#include "parry/models/reference_cnn.hpp"
#include "test_support.hpp"

using parry::InputSpec;
using parry::Model;
using parry::OptionError;
using parry::StateError;
using parry::testing::kFixtures;

namespace {

torch::Tensor expected(const std::string& fixture, const char* name) {
  return torch::jit::load(kFixtures + "/" + fixture + "_expected.pt").attr(name).toTensor();
}

// Parameters and buffers of a TorchScript module, copied.
std::vector<torch::Tensor> state_of(const torch::jit::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.clone());
  for (const auto& b : m.buffers()) out.push_back(b.clone());
  return out;
}

bool same_state(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

// The OptionError message of `f`, or "" if it does not throw one.
std::string option_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const OptionError& e) {
    return e.what();
  }
  return "";
}

class ModelSplitTest : public parry::testing::SeededTest {};

}  // namespace

// --- Functional dropout ----------------------------------------------------

TEST_F(ModelSplitTest, FunctionalDropoutLogitsMatchPython) {
  Model model = Model::load_torchscript(kFixtures + "/functional_dropout.pt");
  const auto inputs = expected("functional_dropout", "inputs");
  ASSERT_EQ(inputs.sizes(), (std::vector<int64_t>{6, 3, 32, 32}));
  EXPECT_TRUE(torch::allclose(model.logits(inputs), expected("functional_dropout", "logits"), 0, 1e-5));
  EXPECT_FALSE(model.has_feature_split());
}

TEST_F(ModelSplitTest, FunctionalDropoutIsActivatedAndBatchNormStaysInEval) {
  torch::jit::Module module = torch::jit::load(kFixtures + "/functional_dropout.pt");
  Model model = Model::from_torchscript(module);
  const auto inputs = expected("functional_dropout", "inputs");
  const auto before = state_of(module);

  Model mc = model.with_active_dropout();  // before the fix: "the model has no dropout layers"
  EXPECT_FALSE(torch::equal(mc.logits(inputs), mc.logits(inputs))) << "functional dropout inactive in the copy";
  // Everything before the dropout is deterministic and equals eval mode: the
  // input of fc1 comes after both BatchNorms, which in train mode would use
  // batch statistics (and update their running statistics).
  const Model eval_split = model.with_feature_layer("fc1");
  const Model mc_split = mc.with_feature_layer("fc1");
  const auto eval_features = eval_split.features(inputs);
  for (int i = 0; i < 3; ++i) {
    const auto f = mc_split.features(inputs);
    EXPECT_TRUE(torch::equal(f, eval_features)) << (f - eval_features).abs().max();
  }
  // A single image gives the same features as within the batch (no batch
  // statistics; rounding of the batched convolution aside).
  const auto single = mc_split.features(inputs.narrow(0, 0, 1));
  EXPECT_TRUE(torch::allclose(single, eval_features.narrow(0, 0, 1), 0, 1e-5))
      << (single - eval_features.narrow(0, 0, 1)).abs().max();
  EXPECT_TRUE(torch::equal(eval_split.features(inputs), eval_features)) << "eval features not deterministic";
  // The mean over many dropout passes approaches the eval logits (inverted
  // dropout keeps the expectation of each unit).
  torch::Tensor sum = torch::zeros_like(model.logits(inputs));
  const int passes = 400;
  for (int i = 0; i < passes; ++i) sum += mc.logits(inputs);
  EXPECT_LT((sum / passes - expected("functional_dropout", "logits")).abs().max().item<double>(), 0.35);

  // The shared model is untouched: eval mode, same state, Python's logits.
  EXPECT_FALSE(model.is_training());
  EXPECT_FALSE(module.is_training());
  for (const auto& child : module.modules()) EXPECT_FALSE(child.is_training());
  EXPECT_TRUE(same_state(before, state_of(module)));
  EXPECT_TRUE(torch::allclose(model.logits(inputs), expected("functional_dropout", "logits"), 0, 1e-5));
}

TEST_F(ModelSplitTest, McDropoutOnFunctionalDropout) {
  Model model = Model::load_torchscript(kFixtures + "/functional_dropout.pt");
  const auto inputs = expected("functional_dropout", "inputs");
  parry::detect::McDropout detector(model, parry::detect::McDropoutOptions().samples(20));
  EXPECT_FALSE(detector.uses_fast_path());
  const auto probabilities = detector.mc_probabilities(inputs);
  ASSERT_EQ(probabilities.sizes(), (std::vector<int64_t>{20, 6, 10}));
  EXPECT_FALSE(torch::equal(probabilities[0], probabilities[1])) << "the T passes do not differ";
  torch::manual_seed(1);
  const auto a = detector.score(inputs, model);
  torch::manual_seed(2);
  const auto b = detector.score(inputs, model);
  torch::manual_seed(1);
  const auto a_again = detector.score(inputs, model);
  EXPECT_TRUE((a > 0).all().item<bool>());
  EXPECT_FALSE(torch::equal(a, b)) << "scores do not vary with the generator's draws";
  EXPECT_TRUE(torch::equal(a, a_again)) << "a seeded single-threaded run must be reproducible";
}

TEST_F(ModelSplitTest, McDropoutFastPathOnANamedLayer) {
  Model model = Model::load_torchscript(kFixtures + "/functional_dropout.pt");
  const auto inputs = expected("functional_dropout", "inputs");
  // Split before the dropout: features deterministic, the fast path runs.
  parry::detect::McDropout fast(model.with_feature_layer("fc1"), parry::detect::McDropoutOptions().samples(50));
  ASSERT_TRUE(fast.uses_fast_path());
  parry::detect::McDropout slow(model, parry::detect::McDropoutOptions().samples(50));
  const auto fast_score = fast.score(inputs, model);
  const auto slow_score = slow.score(inputs, model);
  EXPECT_TRUE((fast_score > 0).all().item<bool>());
  // Same distribution, different draws: means of 50 passes agree roughly.
  EXPECT_LT((fast_score.mean() / slow_score.mean() - 1).abs().item<double>(), 0.5);
  // Split after the dropout (fc2's input is the dropout's output): the
  // stochastic-features check refuses the fast path.
  parry::detect::McDropout wrong(model.with_feature_layer("fc2"));
  ASSERT_TRUE(wrong.uses_fast_path());
  EXPECT_THROW(wrong.score(inputs, model), StateError);
  parry::detect::McDropout replicated(model.with_feature_layer("fc2"),
                                      parry::detect::McDropoutOptions().fast_path(false));
  EXPECT_NO_THROW(replicated.score(inputs, model));
}

TEST_F(ModelSplitTest, DropoutModulesStillCount) {
  // tiny_cnn has an nn.Dropout module and no functional dropout.
  Model model = Model::load_torchscript(kFixtures + "/tiny_cnn.pt");
  const auto inputs = torch::jit::load(kFixtures + "/tiny_cnn_expected.pt").attr("inputs").toTensor();
  Model mc = model.with_active_dropout();
  EXPECT_FALSE(torch::equal(mc.logits(inputs), mc.logits(inputs)));
  // The ResNet has no dropout at all: a clear error, as before.
  EXPECT_THROW(Model::load_torchscript(kFixtures + "/resnet_small.pt").with_active_dropout(), StateError);
}

// --- Features from a named layer --------------------------------------------

TEST_F(ModelSplitTest, ResNetLogitsMatchPython) {
  Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  const auto inputs = expected("resnet_small", "inputs");
  ASSERT_EQ(inputs.sizes(), (std::vector<int64_t>{4, 3, 32, 32}));
  EXPECT_TRUE(torch::allclose(model.logits(inputs), expected("resnet_small", "logits"), 0, 1e-5));
  EXPECT_FALSE(model.has_feature_split());
}

TEST_F(ModelSplitTest, ResNetSplitAtFc) {
  const Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  const Model split = model.with_feature_layer("fc");
  ASSERT_TRUE(split.has_feature_split());
  EXPECT_FALSE(model.has_feature_split()) << "the original handle changed";
  EXPECT_EQ(split.describe(), "torchscript split at fc");
  const auto inputs = expected("resnet_small", "inputs");
  const auto features = split.features(inputs);
  // resnet18 would give 512; this quarter-width fixture ends with 128 channels.
  EXPECT_EQ(features.sizes(), (std::vector<int64_t>{4, 128}));
  EXPECT_TRUE(torch::allclose(features, expected("resnet_small", "features"), 0, 1e-5));
  EXPECT_TRUE(torch::equal(split.head(features), split.logits(inputs))) << "head(features(x)) != logits(x)";
  EXPECT_TRUE(torch::equal(split.logits(inputs), model.logits(inputs)));
  // Copies keep the split.
  EXPECT_TRUE(split.clone().has_feature_split());
  EXPECT_TRUE(torch::equal(split.clone().features(inputs), features));
}

TEST_F(ModelSplitTest, ResNetSplitInsideTheNetwork) {
  const Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  const auto inputs = expected("resnet_small", "inputs");
  const auto logits = model.logits(inputs);
  for (const char* layer : {"layer4", "layer4.0", "avgpool", "layer2"}) {
    const Model split = model.with_feature_layer(layer);
    const auto f = split.features(inputs);
    EXPECT_EQ(f.size(0), 4) << layer;
    EXPECT_TRUE(torch::equal(split.head(f), logits)) << layer << ": head(features(x)) != logits(x)";
  }
  EXPECT_EQ(model.with_feature_layer("layer4.0").features(inputs).sizes(), (std::vector<int64_t>{4, 64, 2, 2}));
}

TEST_F(ModelSplitTest, BadFeatureLayersAreOptionErrors) {
  const Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  const std::string unknown = option_error([&] { model.with_feature_layer("classifier"); });
  EXPECT_NE(unknown.find("\"classifier\""), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("no such submodule"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc"), std::string::npos)
      << unknown;
  EXPECT_NE(option_error([&] { model.with_feature_layer("layer9.0"); }).find("no such submodule"), std::string::npos);
  EXPECT_NE(option_error([&] { model.with_feature_layer("fc."); }).find("no such submodule"), std::string::npos);
  // BasicBlock.forward calls its relu twice.
  const std::string twice = option_error([&] { model.with_feature_layer("layer1.0.relu"); });
  EXPECT_NE(twice.find("exactly once, but calls it 2 times"), std::string::npos) << twice;
  // The residual connection of layer1.0 skips around conv1.
  const std::string skip = option_error([&] { model.with_feature_layer("layer1.0.conv1"); });
  EXPECT_NE(skip.find("skip connection"), std::string::npos) << skip;
  EXPECT_THROW(model.with_feature_layer(""), OptionError);
  // A C++ module cannot be split by name.
  const Model cpp(parry::models::ReferenceCnn{});
  EXPECT_NE(option_error([&] { cpp.with_feature_layer("fc"); }).find("only TorchScript"), std::string::npos);
}

TEST_F(ModelSplitTest, KernelDensityOnResNet) {
  const Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  parry::detect::KernelDensity density;
  const auto images = torch::rand({60, 3, 32, 32});
  const auto labels = torch::arange(60) % 10;
  // Before issue 14: "KernelDensity needs a model with a features/head split".
  EXPECT_THROW(density.fit(model, images, labels), StateError);
  const Model split = model.with_feature_layer("fc");
  density.fit(split, images, labels);
  const auto scores = density.score(torch::rand({5, 3, 32, 32}), split);
  ASSERT_EQ(scores.sizes(), (std::vector<int64_t>{5}));
  EXPECT_TRUE(torch::isfinite(scores).all().item<bool>());
}

// --- The config key -----------------------------------------------------------

TEST_F(ModelSplitTest, ConfigFeatureLayerKernelDensityOnResNet) {
  const Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  const auto config = parry::config::parse_config(R"({
    "feature_layer": "fc",
    "model_input": [{"type": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}],
    "defenses": [{"name": "kd", "input": {"channels": 3, "height": 32, "width": 32},
                  "detectors": [{"type": "kernel_density", "fit_images": 60}]}]})",
                                                  model);
  EXPECT_EQ(config.feature_layer, "fc");
  const auto& spec = config.defenses.at(0);
  EXPECT_EQ(spec.feature_layer, "fc");
  for (const Model& m : {config.model_for(model), spec.model_for(model)}) {
    ASSERT_TRUE(m.has_feature_split());
    const auto x = torch::rand({3, 3, 32, 32});
    // The split sits under the model's input transform.
    EXPECT_TRUE(torch::equal(m.head(m.features(x)), m.logits(x)));
    EXPECT_TRUE(torch::equal(m.logits(x), model.logits((x - 0.5) / 0.25)));
  }
  auto density = std::dynamic_pointer_cast<parry::detect::KernelDensity>(spec.detectors.at(0).detector);
  ASSERT_TRUE(density);
  const Model defended = spec.model_for(model);
  density->fit(defended, torch::rand({60, 3, 32, 32}), torch::arange(60) % 10);
  EXPECT_TRUE(torch::isfinite(density->score(torch::rand({4, 3, 32, 32}), defended)).all().item<bool>());
  auto guard = spec.build_guard(model);
  EXPECT_TRUE(guard != nullptr);
}

TEST_F(ModelSplitTest, ConfigFeatureLayerUncertaintyDensity) {
  // UncertaintyDensity needs dropout, which the ResNet lacks: the functional
  // dropout CNN split at fc1 (before its dropout) runs the MC-dropout fast path.
  const Model model = Model::load_torchscript(kFixtures + "/functional_dropout.pt");
  const auto config = parry::config::parse_config(R"({
    "feature_layer": "fc1",
    "defenses": [{"name": "ud", "input": {"channels": 3, "height": 32, "width": 32},
                  "detectors": [{"type": "uncertainty_density", "samples": 10, "fit_images": 40}]}]})",
                                                  model);
  const auto& spec = config.defenses.at(0);
  auto combined = std::dynamic_pointer_cast<parry::detect::UncertaintyDensity>(spec.detectors.at(0).detector);
  ASSERT_TRUE(combined);
  EXPECT_TRUE(combined->uncertainty().uses_fast_path());
  const Model defended = spec.model_for(model);
  const auto clean = torch::rand({40, 3, 32, 32});
  const_cast<parry::detect::KernelDensity&>(combined->density()).fit(defended, clean, torch::arange(40) % 10);
  const auto adversarial = (clean + 0.3 * torch::randn_like(clean)).clamp(0, 1);
  combined->fit(defended, clean, torch::Tensor(), adversarial);
  const auto p = combined->score(clean.narrow(0, 0, 5), defended);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{5}));
  EXPECT_TRUE(((p >= 0) & (p <= 1)).all().item<bool>());
}

TEST_F(ModelSplitTest, ConfigFeatureLayerErrors) {
  const Model model = Model::load_torchscript(kFixtures + "/resnet_small.pt");
  const std::string unknown = option_error([&] {
    parry::config::parse_config(R"({"feature_layer": "head", "defenses": [{"name": "a"}]})", model,
                                InputSpec(3, 32, 32));
  });
  EXPECT_NE(unknown.find("feature_layer"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("\"head\""), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("layer4"), std::string::npos) << unknown;
  EXPECT_FALSE(option_error([&] {
                 parry::config::parse_config(R"({"feature_layer": "", "defenses": [{"name": "a"}]})", model,
                                             InputSpec(3, 32, 32));
               }).empty());
  EXPECT_FALSE(option_error([&] {
                 parry::config::parse_config(R"({"feature_layer": 3, "defenses": [{"name": "a"}]})", model,
                                             InputSpec(3, 32, 32));
               }).empty());
  const Model cpp(parry::models::ReferenceCnn{});
  EXPECT_NE(option_error([&] {
              parry::config::parse_config(R"({"feature_layer": "fc", "defenses": [{"name": "a"}]})", cpp,
                                          InputSpec(1, 28, 28));
            }).find("only TorchScript"),
            std::string::npos);
}
