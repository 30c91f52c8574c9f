#include "parry/detect/feature_squeezing.hpp"

#include "attack_support.hpp"
#include "parry/config/registry.hpp"
#include "parry/preprocess/bit_depth.hpp"
#include "parry/preprocess/gaussian_blur.hpp"

using namespace parry;
using parry::testing::reference_model;

namespace {

class FeatureSqueezingTest : public parry::testing::SeededTest {};

// A squeezer that sets every pixel to a constant: the model's answer on it is fixed.
class Constant final : public Preprocessor {
 public:
  explicit Constant(float v) : Preprocessor(GradientPolicy::Exact), value_(v) {}
  torch::Tensor apply(const torch::Tensor& x) const override { return torch::full_like(x, value_); }
  std::string describe() const override { return "Constant"; }
  bool is_differentiable() const override { return true; }

 private:
  float value_;
};

}  // namespace

TEST_F(FeatureSqueezingTest, ScoreIsTheLargestL1DistanceBetweenSoftmaxes) {
  // Linear model on 2 pixels: logits = x.
  const Model model = Model::from_callable([](const torch::Tensor& x) { return x.flatten(1); });
  detect::FeatureSqueezing detector(
      {std::make_shared<Constant>(0.0f), std::make_shared<Constant>(2.0f), std::make_shared<Constant>(1.0f)});
  const auto x = torch::tensor({3.0f, 0.0f}).view({1, 2, 1, 1});
  // softmax(x) = (e³, 1)/(e³+1); each constant squeezer gives (½, ½).
  const double p = std::exp(3.0) / (std::exp(3.0) + 1.0);
  const double expected = std::abs(p - 0.5) * 2.0;
  EXPECT_NEAR(detector.score(x, model)[0].item<double>(), expected, 1e-6);
  // An identity squeezer scores 0.
  detect::FeatureSqueezing identity({std::make_shared<preprocess::GaussianBlur>(
      preprocess::GaussianBlurOptions().sigma(1e-3).gradient_policy(GradientPolicy::Exact))});
  EXPECT_NEAR(identity.score(torch::rand({4, 1, 8, 8}), model).abs().max().item<double>(), 0.0, 1e-6);
}

TEST_F(FeatureSqueezingTest, GrayscaleConfigurationScoresWithinItsRangeAndIsDifferentiable) {
  const Model model = reference_model();
  auto detector = detect::FeatureSqueezing::for_grayscale();
  EXPECT_EQ(detector.squeezers().size(), 2u);
  EXPECT_NE(detector.describe().find("BitDepth"), std::string::npos);
  const auto test = data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, false, 16);
  const auto s = detector.score(test.images, model);
  EXPECT_GE(s.min().item<double>(), 0.0);
  EXPECT_LE(s.max().item<double>(), 2.0);
  const auto x = test.images.clone().requires_grad_(true);
  const auto d = detector.differentiable_score(x, model);
  EXPECT_TRUE(torch::allclose(d.detach(), s, 1e-4, 1e-5));
  const auto grad = torch::autograd::grad({d.sum()}, {x})[0];
  EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
}

TEST_F(FeatureSqueezingTest, RejectsEmptyOrNullSqueezers) {
  EXPECT_THROW(detect::FeatureSqueezing({}), OptionError);
  EXPECT_THROW(detect::FeatureSqueezing({nullptr}), OptionError);
  auto detector = detect::FeatureSqueezing::for_grayscale();
  EXPECT_THROW(detector.score(torch::empty({0, 1, 28, 28}), reference_model()), InputError);
}

TEST_F(FeatureSqueezingTest, ConfigurationsByChannelCount) {
  const auto gray = detect::FeatureSqueezing::for_channels(1);
  ASSERT_EQ(gray.squeezers().size(), 2u);
  EXPECT_NE(gray.squeezers()[0]->describe().find("bits=1"), std::string::npos) << gray.squeezers()[0]->describe();
  const auto color = detect::FeatureSqueezing::for_channels(3);
  ASSERT_EQ(color.squeezers().size(), 3u);
  EXPECT_NE(color.squeezers()[0]->describe().find("bits=5"), std::string::npos) << color.squeezers()[0]->describe();
  EXPECT_NE(color.squeezers()[1]->describe().find("2x2"), std::string::npos);
  EXPECT_EQ(color.squeezers()[2]->describe(),
            "NonLocalMeans(search_window=13, patch_size=3, strength=2, grad=straight_through)");
  EXPECT_THROW(detect::FeatureSqueezing::for_channels(2), OptionError);
  // A colour model scores with the colour squeezers.
  const Model model = Model::from_callable([](const torch::Tensor& x) { return x.mean({2, 3}); });
  const auto scores = color.score(torch::rand({2, 3, 16, 16}), model);
  EXPECT_TRUE(((scores >= 0) & (scores <= 2)).all().item<bool>());
}

TEST_F(FeatureSqueezingTest, ConfigDefaultFollowsTheDefenseInput) {
  auto squeezers_for = [](const InputSpec& input) {
    config::BuildContext context;
    context.input = input;
    auto c = config::build_component(config::ComponentKind::Detector, R"({"type": "feature_squeezing"})", context);
    return std::dynamic_pointer_cast<detect::FeatureSqueezing>(c.detector.detector)->squeezers().size();
  };
  EXPECT_EQ(squeezers_for(InputSpec(1, 28, 28)), 2u);
  EXPECT_EQ(squeezers_for(InputSpec(3, 32, 32)), 3u);
  EXPECT_THROW(squeezers_for(InputSpec(4, 32, 32)), OptionError);
}
