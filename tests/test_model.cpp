#include "parry/core/model.hpp"

#include <caffe2/serialize/inline_container.h>

#include <fstream>

#include "parry/detail/files.hpp"
#include "parry/models/reference_cnn.hpp"
#include "parry/preprocess/bit_depth.hpp"
#include "parry/preprocess/normalize.hpp"
#include "test_support.hpp"

using parry::Model;
using parry::models::ReferenceCnn;

namespace {

class ModelTest : public parry::testing::SeededTest {};

// A module without a feature split and without dropout.
struct PlainNetImpl : torch::nn::Cloneable<PlainNetImpl> {
  PlainNetImpl() { reset(); }
  void reset() override { fc = register_module("fc", torch::nn::Linear(4, 3)); }
  torch::Tensor forward(const torch::Tensor& x) { return fc->forward(x.flatten(1)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(PlainNet);

ReferenceCnn eval_reference() {
  ReferenceCnn net;
  net->eval();
  return net;
}

}  // namespace

TEST_F(ModelTest, HolderModelMatchesForward) {
  auto net = eval_reference();
  Model model(net);
  auto x = torch::rand({4, 1, 28, 28});
  EXPECT_TRUE(torch::equal(model.logits(x), net->forward(x)));
  EXPECT_EQ(model.kind(), "module");
  EXPECT_EQ(model.module_as<parry::models::ReferenceCnnImpl>(), net.ptr());
  EXPECT_EQ(model.module_as<PlainNetImpl>(), nullptr);
}

TEST_F(ModelTest, SharedPtrModel) {
  auto impl = std::make_shared<PlainNetImpl>();
  Model model(impl);
  auto x = torch::rand({2, 1, 2, 2});
  EXPECT_TRUE(torch::allclose(model(x), impl->fc->forward(x.flatten(1))));
  EXPECT_FALSE(model.has_feature_split());
  EXPECT_THROW(model.features(x), parry::StateError);
  EXPECT_THROW(Model(std::shared_ptr<PlainNetImpl>()), parry::OptionError);
}

TEST_F(ModelTest, FeatureSplitComposesToLogits) {
  auto net = eval_reference();
  Model model(net);
  ASSERT_TRUE(model.has_feature_split());
  auto x = torch::rand({3, 1, 28, 28});
  auto f = model.features(x);
  EXPECT_EQ(f.sizes(), (std::vector<int64_t>{3, 128}));
  EXPECT_TRUE(torch::allclose(model.head(f), model.logits(x)));
}

TEST_F(ModelTest, CallableModel) {
  auto w = torch::randn({784, 10});
  auto model = Model::from_callable([w](const torch::Tensor& x) { return x.flatten(1).mm(w); });
  auto x = torch::rand({2, 1, 28, 28});
  EXPECT_TRUE(torch::allclose(model.logits(x), x.flatten(1).mm(w)));
  EXPECT_EQ(model.kind(), "callable");
  EXPECT_THROW(model.with_active_dropout(), parry::StateError);
  EXPECT_THROW(model.save("unused"), parry::StateError);
  EXPECT_THROW(Model::from_callable({}), parry::OptionError);
  EXPECT_THROW(Model::from_callable([](const torch::Tensor& x) { return x; }, [](const torch::Tensor& x) { return x; }),
               parry::OptionError);
  auto split = Model::from_callable([w](const torch::Tensor& x) { return x.flatten(1).mm(w); },
                                    [](const torch::Tensor& x) { return x.flatten(1); },
                                    [w](const torch::Tensor& f) { return f.mm(w); });
  EXPECT_TRUE(split.has_feature_split());
  EXPECT_TRUE(torch::allclose(split.head(split.features(x)), split.logits(x)));
}

TEST_F(ModelTest, CloneIsIndependent) {
  auto net = eval_reference();
  Model model(net);
  Model copy = model.clone();
  auto x = torch::rand({2, 1, 28, 28});
  const auto before = model.logits(x);
  EXPECT_TRUE(torch::equal(copy.logits(x), before));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : copy.parameters()) p.add_(1.0);
  }
  EXPECT_TRUE(torch::equal(model.logits(x), before)) << "changing the clone changed the original";
  EXPECT_FALSE(torch::equal(copy.logits(x), before));
}

TEST_F(ModelTest, ActiveDropoutCopyIsStochasticAndLeavesOriginalAlone) {
  auto net = eval_reference();
  Model model(net);
  Model mc = model.with_active_dropout();
  auto x = torch::rand({2, 1, 28, 28});
  const auto deterministic = model.logits(x);
  EXPECT_FALSE(torch::equal(mc.logits(x), mc.logits(x))) << "dropout is not active in the copy";
  EXPECT_FALSE(net->is_training()) << "the original's mode changed";
  EXPECT_TRUE(torch::equal(model.logits(x), deterministic));
  // Only dropout layers are in training mode in the copy.
  auto copy = mc.module_as<parry::models::ReferenceCnnImpl>();
  ASSERT_TRUE(copy);
  EXPECT_NE(copy.get(), net.ptr().get());
  int active = 0;
  for (const auto& m : copy->modules(false)) active += m->is_training() ? 1 : 0;
  EXPECT_EQ(active, 1);
  // The dropout-active copy's mean over many passes approaches the original
  // (inverted dropout keeps the expectation of each hidden unit).
  torch::NoGradGuard no_grad;
  auto f = model.features(x);
  auto mean_head = torch::zeros_like(deterministic);
  for (int i = 0; i < 2000; ++i) mean_head += mc.head(f);
  EXPECT_TRUE(torch::allclose(mean_head / 2000, deterministic, 0.0, 0.05));
}

TEST_F(ModelTest, ActiveDropoutNeedsDropoutLayers) {
  PlainNet net;
  net->eval();
  EXPECT_THROW(Model(net).with_active_dropout(), parry::StateError);
}

TEST_F(ModelTest, SaveLoadRoundTrip) {
  parry::testing::TempDir dir;
  auto net = eval_reference();
  Model model(net);
  model.save(dir.file("m.pt"));
  ReferenceCnn other;
  other->eval();
  auto x = torch::rand({2, 1, 28, 28});
  EXPECT_FALSE(torch::equal(other->forward(x), net->forward(x)));
  Model(other).load(dir.file("m.pt"));
  EXPECT_TRUE(torch::equal(other->forward(x), net->forward(x)));
  auto loaded = parry::models::load_reference_cnn(dir.file("m.pt"));
  EXPECT_FALSE(loaded->is_training());
  EXPECT_TRUE(torch::equal(loaded->forward(x), net->forward(x)));
  // No temporary files are left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

TEST_F(ModelTest, LoadRejectsMissingCorruptAndMismatchedFiles) {
  parry::testing::TempDir dir;
  auto net = eval_reference();
  Model model(net);
  auto x = torch::rand({1, 1, 28, 28});
  const auto before = model.logits(x);
  EXPECT_THROW(model.load(dir.file("missing.pt")), parry::IoError);
  { std::ofstream(dir.file("junk.pt")) << "not a model"; }
  EXPECT_THROW(model.load(dir.file("junk.pt")), parry::IoError);
  // Another architecture's weights.
  PlainNet plain;
  Model(plain).save(dir.file("plain.pt"));
  EXPECT_THROW(model.load(dir.file("plain.pt")), parry::IoError);
  // Same architecture, different shapes (3 classes instead of 10).
  parry::models::ReferenceCnn three(parry::models::ReferenceCnnOptions().classes(3));
  Model(three).save(dir.file("three.pt"));
  EXPECT_THROW(model.load(dir.file("three.pt")), parry::IoError);
  // A truncated copy of a valid file.
  model.save(dir.file("good.pt"));
  {
    std::ifstream in(dir.file("good.pt"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dir.file("cut.pt"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  EXPECT_THROW(model.load(dir.file("cut.pt")), parry::IoError);
  // A type name in the pickle that torch::jit's parser rejects with a
  // std::runtime_error, not a c10::Error (found by fuzz_saved_state).
  {
    std::ifstream in(dir.file("good.pt"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    const size_t name = bytes.find("torch._utils");
    ASSERT_NE(name, std::string::npos);
    bytes[name + 1] = '\xe9';
    std::ofstream(dir.file("bad-type.pt"), std::ios::binary) << bytes;
  }
  EXPECT_THROW(model.load(dir.file("bad-type.pt")), parry::IoError);
  // Module source that Parry never writes: a class constant (which crashed
  // torch::jit's ScriptTypeParser::parseClassConstant, found by
  // fuzz_saved_state) and a method are refused before LibTorch parses them,
  // whether the record is stored or deflated. The archive is copied record by
  // record with LibTorch's own zip writer, so that it is otherwise well formed.
  const auto with_source = [&](const std::string& from, const std::string& to, bool deflate) {
    caffe2::serialize::PyTorchStreamReader reader(dir.file("good.pt"));
    const std::string out = dir.file("bad-code.pt");
    caffe2::serialize::PyTorchStreamWriter writer(out);
    for (const std::string& name : reader.getAllRecords()) {
      const auto [data, size] = reader.getRecord(name);
      std::string bytes(static_cast<const char*>(data.get()), size);
      if (name == "code/__torch__.py") {
        const size_t at = bytes.find(from);
        EXPECT_NE(at, std::string::npos) << bytes;
        if (at != std::string::npos) bytes.replace(at, from.size(), to);
      }
      writer.writeRecord(name, bytes.data(), bytes.size(), deflate && name == "code/__torch__.py");
    }
    writer.writeEndOfFile();
    return out;
  };
  {  // the copy itself loads: the check accepts what LibTorch writes
    const std::string same = with_source("__buffers__", "__buffers__", true);
    EXPECT_NO_THROW(model.load(same));
  }
  for (const bool deflate : {false, true}) {
    for (const std::string& line : {std::string("  __buf_s_rfe = []\n"), std::string("  def f(self): return 1\n")}) {
      const std::string bad = with_source("  parry_format : str\n", line, deflate);
      try {
        model.load(bad);
        ADD_FAILURE() << "loaded module source with " << line;
      } catch (const parry::IoError& e) {
        EXPECT_STREQ(e.what(), "model file is corrupt");
        EXPECT_NE(e.detail().find("only attribute declarations"), std::string::npos) << e.detail();
      }
    }
  }
  EXPECT_TRUE(torch::equal(model.logits(x), before)) << "a failed load changed the model";
  try {
    model.load(dir.file("junk.pt"));
    FAIL() << "loaded junk";
  } catch (const parry::IoError& e) {
    parry::testing::expect_public(e.public_message());
    EXPECT_NE(e.detail().find("junk.pt"), std::string::npos) << "the detail should name the file";
  }
}

TEST_F(ModelTest, SaveIsAtomic) {
  parry::testing::TempDir dir;
  auto net = eval_reference();
  Model(net).save(dir.file("m.pt"));
  const auto size = std::filesystem::file_size(dir.file("m.pt"));
  // Saving into a directory that does not exist fails cleanly...
  EXPECT_THROW(Model(net).save(dir.file("no/such/dir/m.pt")), parry::IoError);
  // ...and a failing writer leaves the previous file intact.
  EXPECT_THROW(parry::detail::atomic_write(dir.file("m.pt"),
                                           [](const std::string& tmp) {
                                             std::ofstream(tmp) << "partial";
                                             throw std::runtime_error("disk full");
                                           }),
               parry::IoError);
  EXPECT_EQ(std::filesystem::file_size(dir.file("m.pt")), size);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

TEST_F(ModelTest, OptionsValidated) {
  EXPECT_THROW(parry::models::ReferenceCnnOptions().dropout(1.0), parry::OptionError);
  EXPECT_THROW(parry::models::ReferenceCnnOptions().dropout(-0.1), parry::OptionError);
  EXPECT_THROW(parry::models::ReferenceCnnOptions().classes(1), parry::OptionError);
  EXPECT_THROW(parry::models::ReferenceCnnOptions().width(0), parry::OptionError);
  EXPECT_THROW(parry::models::ReferenceCnnOptions().width(17), parry::OptionError);
}

// Width w multiplies every layer's units: 32w and 64w filters, a 128w-unit
// hidden layer, and the 64w·5·5 flattened map in between.
TEST_F(ModelTest, WidthMultipliesEveryLayer) {
  ReferenceCnn wide(parry::models::ReferenceCnnOptions().width(2).classes(7));
  wide->eval();
  const auto parameters = wide->named_parameters();
  EXPECT_EQ(parameters["conv1.weight"].sizes(), torch::IntArrayRef({64, 1, 3, 3}));
  EXPECT_EQ(parameters["conv2.weight"].sizes(), torch::IntArrayRef({128, 64, 3, 3}));
  EXPECT_EQ(parameters["fc1.weight"].sizes(), torch::IntArrayRef({256, 128 * 5 * 5}));
  EXPECT_EQ(parameters["fc2.weight"].sizes(), torch::IntArrayRef({7, 256}));
  const auto x = torch::rand({3, 1, 28, 28});
  EXPECT_EQ(wide->features(x).sizes(), torch::IntArrayRef({3, 256}));
  EXPECT_EQ(wide->forward(x).sizes(), torch::IntArrayRef({3, 7}));
}

// load_reference_cnn reads the width from the file; loading into a module of
// another width is a mismatch, not a crash.
TEST_F(ModelTest, LoadReferenceCnnReadsTheWidthFromTheFile) {
  parry::testing::TempDir dir;
  torch::manual_seed(3);
  ReferenceCnn wide(parry::models::ReferenceCnnOptions().width(3));
  wide->eval();
  Model(wide).save(dir.file("wide.pt"));
  auto loaded = parry::models::load_reference_cnn(dir.file("wide.pt"));
  EXPECT_EQ(loaded->options().width(), 3);
  EXPECT_FALSE(loaded->is_training());
  const auto x = torch::rand({2, 1, 28, 28});
  EXPECT_TRUE(torch::equal(loaded->forward(x), wide->forward(x)));
  // The options' width is ignored; their classes still have to match.
  EXPECT_EQ(parry::models::load_reference_cnn(dir.file("wide.pt"), parry::models::ReferenceCnnOptions().width(1))
                ->options()
                .width(),
            3);
  EXPECT_THROW(parry::models::load_reference_cnn(dir.file("wide.pt"), parry::models::ReferenceCnnOptions().classes(4)),
               parry::IoError);
  ReferenceCnn narrow;
  EXPECT_THROW(Model(narrow).load(dir.file("wide.pt")), parry::IoError);
  // Another architecture's file is still refused by name, not misread.
  PlainNet plain;
  Model(plain).save(dir.file("plain.pt"));
  EXPECT_THROW(parry::models::load_reference_cnn(dir.file("plain.pt")), parry::IoError);
}

// The reference CNN draws its dropout mask itself (uniform < keep): it must
// be torch::nn::Dropout's distribution. With constant features f = 1 the
// head's output k is Σ_j W_kj m_j / keep + b_k, m_j ~ Bernoulli(keep):
// mean W_k·1 + b_k (the eval output) and variance Σ_j W_kj² · p / keep.
TEST_F(ModelTest, ReferenceHeadDropoutHasTheBernoulliMoments) {
  torch::manual_seed(3);
  const double p = 0.3, keep = 1.0 - p;
  ReferenceCnn net(parry::models::ReferenceCnnOptions().dropout(p));
  torch::NoGradGuard no_grad;
  const auto f = torch::ones({20000, 128});
  net->eval();
  const auto eval_out = net->head(f.slice(0, 0, 1)).squeeze(0).to(torch::kFloat64);
  net->train();
  const auto out = net->head(f).to(torch::kFloat64);
  net->eval();
  const auto weight = net->named_parameters()["fc2.weight"].to(torch::kFloat64);
  const auto expected_var = weight.pow(2).sum(1) * (p / keep);
  const auto mean = out.mean(0), var = out.var(0);
  // Standard error of the mean: sqrt(var / 20000); allow 5 of them.
  EXPECT_TRUE(((mean - eval_out).abs() <= 5 * (expected_var / 20000).sqrt()).all().item<bool>()) << mean << eval_out;
  EXPECT_TRUE(((var / expected_var - 1).abs() < 0.05).all().item<bool>()) << var / expected_var;
  // Each row keeps a fraction of about `keep` of the units: not all, not none.
  EXPECT_FALSE(torch::allclose(out[0], out[1]));
}

TEST_F(ModelTest, InputTransformRunsInFrontOfLogitsAndFeatures) {
  ReferenceCnn net;
  net->eval();
  const auto normalize =
      std::make_shared<parry::preprocess::Normalize>(parry::preprocess::NormalizeOptions({0.2860}, {0.3530}));
  const Model model = Model(net).with_input_transform(normalize);
  const auto x = torch::rand({3, 1, 28, 28});
  const auto seen = (x - 0.2860) / 0.3530;
  // Normalize multiplies by 1/std then adds -mean/std: equal up to float rounding.
  EXPECT_TRUE(torch::allclose(model.logits(x), net->forward(seen), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(model.features(x), net->features(seen), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(model.head(model.features(x)), model.logits(x), 1e-5, 1e-6));
  EXPECT_NE(model.describe().find("Normalize"), std::string::npos) << model.describe();
  EXPECT_EQ(model.module_as<parry::models::ReferenceCnnImpl>(), nullptr)
      << "the module's own methods would skip the transform";
  // Copies keep the transform.
  EXPECT_TRUE(torch::allclose(model.clone().logits(x), net->forward(seen), 1e-4, 1e-5));
  const Model mc = model.with_active_dropout();
  EXPECT_FALSE(torch::allclose(mc.logits(x), mc.logits(x))) << "dropout stays active behind the transform";
}

TEST_F(ModelTest, InputTransformMustBeExactlyDifferentiable) {
  ReferenceCnn net;
  net->eval();
  EXPECT_THROW(Model(net).with_input_transform(nullptr), parry::OptionError);
  // BitDepth is a non-differentiable defense (BPDA): it belongs in a Guard, not in the model.
  EXPECT_THROW(Model(net).with_input_transform(std::make_shared<parry::preprocess::BitDepth>()), parry::OptionError);
}

TEST_F(ModelTest, KnowsItsDevice) {
  ReferenceCnn net;
  net->eval();
  EXPECT_TRUE(Model(net).device().is_cpu());
  EXPECT_TRUE(Model::from_callable([](const torch::Tensor& x) { return x; }).device().is_cpu());
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  net->to(torch::kCUDA);
  EXPECT_TRUE(Model(net).device().is_cuda());
}
