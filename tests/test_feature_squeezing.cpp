#include "parry/detect/feature_squeezing.hpp"

#include "attack_support.hpp"
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
