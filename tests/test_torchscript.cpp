// TorchScript interop: a model exported by Python PyTorch
// (scripts/make_torchscript_fixture.py) must give Python's logits in C++.
#include <fstream>

#include "parry/core/model.hpp"
#include "test_support.hpp"

using parry::Model;
using parry::testing::kFixtures;

namespace {

class TorchScriptTest : public parry::testing::SeededTest {
 protected:
  void SetUp() override {
    SeededTest::SetUp();
    expected_ = torch::jit::load(kFixtures + "/tiny_cnn_expected.pt");
  }
  torch::Tensor expected(const char* name) { return expected_.attr(name).toTensor(); }
  torch::jit::Module expected_;
};

}  // namespace

TEST_F(TorchScriptTest, LogitsMatchPython) {
  Model model = Model::load_torchscript(kFixtures + "/tiny_cnn.pt");
  EXPECT_EQ(model.kind(), "torchscript");
  EXPECT_FALSE(model.is_training()) << "a loaded TorchScript model must be in eval mode";
  const auto inputs = expected("inputs");
  ASSERT_EQ(inputs.sizes(), (std::vector<int64_t>{5, 1, 28, 28}));
  const auto logits = model.logits(inputs);
  EXPECT_TRUE(torch::allclose(logits, expected("logits"), /*rtol=*/0, /*atol=*/1e-5))
      << (logits - expected("logits")).abs().max();
}

TEST_F(TorchScriptTest, ExportedFeatureSplit) {
  Model model = Model::load_torchscript(kFixtures + "/tiny_cnn.pt");
  ASSERT_TRUE(model.has_feature_split());
  const auto f = model.features(expected("inputs"));
  EXPECT_TRUE(torch::allclose(f, expected("features"), 0, 1e-5));
  EXPECT_TRUE(torch::allclose(model.head(f), expected("logits"), 0, 1e-5));
}

TEST_F(TorchScriptTest, ActiveDropoutCopyAndClone) {
  Model model = Model::load_torchscript(kFixtures + "/tiny_cnn.pt");
  const auto inputs = expected("inputs");
  Model mc = model.with_active_dropout();
  EXPECT_FALSE(torch::equal(mc.logits(inputs), mc.logits(inputs))) << "dropout inactive in the copy";
  EXPECT_TRUE(torch::allclose(model.logits(inputs), expected("logits"), 0, 1e-5)) << "original changed";
  Model copy = model.clone();
  {
    torch::NoGradGuard no_grad;
    for (auto& p : copy.parameters()) p.zero_();
  }
  EXPECT_TRUE(torch::allclose(model.logits(inputs), expected("logits"), 0, 1e-5)) << "clone shares weights";
}

TEST_F(TorchScriptTest, SaveAndReload) {
  parry::testing::TempDir dir;
  Model model = Model::load_torchscript(kFixtures + "/tiny_cnn.pt");
  model.save(dir.file("copy.pt"));
  Model reloaded = Model::load_torchscript(dir.file("copy.pt"));
  EXPECT_TRUE(torch::allclose(reloaded.logits(expected("inputs")), expected("logits"), 0, 1e-5));
}

TEST_F(TorchScriptTest, BadFilesAreIoErrors) {
  parry::testing::TempDir dir;
  EXPECT_THROW(Model::load_torchscript(dir.file("missing.pt")), parry::IoError);
  { std::ofstream(dir.file("junk.pt")) << "definitely not a zip archive"; }
  try {
    Model::load_torchscript(dir.file("junk.pt"));
    FAIL() << "loaded a junk file";
  } catch (const parry::IoError& e) {
    parry::testing::expect_public(e.public_message());
  }
}
