#include "parry/preprocess/non_local_means.hpp"

#include <opencv2/imgproc.hpp>
#include <opencv2/photo.hpp>

#include "parry/config/registry.hpp"
#include "test_support.hpp"

using namespace parry;
using preprocess::NonLocalMeans;
using preprocess::NonLocalMeansOptions;

namespace {

class NonLocalMeansTest : public parry::testing::SeededTest {};

// Smooth gradients with a few edges: what denoising should keep.
torch::Tensor clean_images(int64_t n, int64_t c, int64_t h, int64_t w) {
  auto yy = torch::linspace(0, 1, h).view({1, 1, h, 1});
  auto xx = torch::linspace(0, 1, w).view({1, 1, 1, w});
  auto channel = torch::arange(c).view({1, c, 1, 1}).to(torch::kFloat32);
  auto base = 0.5 + 0.25 * torch::sin(5 * xx + 3 * yy + channel);
  auto edges = 0.2 * (xx > 0.5).to(torch::kFloat32) - 0.1 * (yy > 0.3).to(torch::kFloat32);
  return (base + edges).expand({n, c, h, w}).clamp(0, 1).contiguous();
}

double l2(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).to(torch::kFloat64).norm().item<double>();
}

// OpenCV called directly on one image (uint8, RGB order from the tensor).
torch::Tensor opencv_reference(const torch::Tensor& image, const NonLocalMeansOptions& o) {
  const int64_t c = image.size(0), h = image.size(1), w = image.size(2);
  torch::Tensor hwc = (image * 255).round().clamp(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
  cv::Mat rgb(static_cast<int>(h), static_cast<int>(w), c == 3 ? CV_8UC3 : CV_8UC1, hwc.data_ptr<uint8_t>());
  cv::Mat result;
  const auto s = static_cast<float>(o.strength());
  if (c == 3) {
    cv::Mat bgr, denoised;
    cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
    cv::fastNlMeansDenoisingColored(bgr, denoised, s, s, o.patch_size(), o.search_window());
    cv::cvtColor(denoised, result, cv::COLOR_BGR2RGB);
  } else {
    cv::fastNlMeansDenoising(rgb, result, s, o.patch_size(), o.search_window());
  }
  return torch::from_blob(result.data, {h, w, c}, torch::kUInt8).permute({2, 0, 1}).to(torch::kFloat32) / 255.0;
}

}  // namespace

TEST_F(NonLocalMeansTest, MatchesOpenCvPerImage) {
  for (int64_t c : {1, 3}) {
    const auto o = NonLocalMeansOptions().search_window(7).patch_size(3).strength(9);
    const auto x = (clean_images(3, c, 20, 24) + 0.05 * torch::randn({3, c, 20, 24})).clamp(0, 1);
    const auto y = NonLocalMeans(o).apply(x);
    for (int64_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(torch::allclose(y[i], opencv_reference(x[i], o), 0, 1e-6)) << c << " channels, image " << i;
    }
  }
}

TEST_F(NonLocalMeansTest, ReducesGaussianNoise) {
  for (int64_t c : {1, 3}) {
    const auto clean = clean_images(4, c, 32, 32);
    // Noise of about the filter strength: σ = 4/255 for the default h = 4,
    // σ = 10/255 for h = 10.
    for (double strength : {4.0, 10.0}) {
      const auto noisy = (clean + strength / 255.0 * torch::randn_like(clean)).clamp(0, 1);
      const auto denoised = NonLocalMeans(NonLocalMeansOptions().strength(strength)).apply(noisy);
      EXPECT_LT(l2(denoised, clean), 0.9 * l2(noisy, clean))
          << c << " channels, strength " << strength << ": " << l2(denoised, clean) << " vs " << l2(noisy, clean);
    }
  }
}

TEST_F(NonLocalMeansTest, ConstantImagesAndShapeDtypeRange) {
  for (int64_t c : {1, 3}) {
    const auto constant = torch::full({2, c, 16, 16}, 0.4, torch::kFloat64);
    const auto y = NonLocalMeans().apply(constant);
    EXPECT_EQ(y.sizes(), constant.sizes());
    EXPECT_EQ(y.dtype(), torch::kFloat64);
    // Quantised to 8 bits (round(0.4·255) = 102) and still constant; OpenCV's
    // fixed-point weights (and, for colour, the CIELAB round trip) may move
    // the level by at most one step.
    EXPECT_EQ((y.max() - y.min()).item<double>(), 0.0) << c << " channels";
    EXPECT_LE((y - 102.0 / 255.0).abs().max().item<double>(), 1.0 / 255.0 + 1e-9)
        << c << " channels: " << y.max().item<double>() * 255;
    const auto x = torch::rand({3, c, 17, 13});
    const auto z = NonLocalMeans().apply(x);
    EXPECT_EQ(z.sizes(), x.sizes());
    EXPECT_EQ(z.dtype(), torch::kFloat32);
    EXPECT_GE(z.min().item<float>(), 0.0f);
    EXPECT_LE(z.max().item<float>(), 1.0f);
    // Multiples of 1/255.
    EXPECT_TRUE(torch::allclose(z * 255, (z * 255).round(), 0, 1e-3));
  }
  EXPECT_TRUE(NonLocalMeans().works_in_pixel_space());
  EXPECT_FALSE(NonLocalMeans().is_differentiable());
  EXPECT_EQ(NonLocalMeans().describe(),
            "NonLocalMeans(search_window=11, patch_size=3, strength=4, grad=straight_through)");
}

TEST_F(NonLocalMeansTest, BadOptionsAndInputs) {
  auto message = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const OptionError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message([] { NonLocalMeansOptions().search_window(4); }).find("search_window"), std::string::npos);
  EXPECT_NE(message([] { NonLocalMeansOptions().search_window(0); }).find("search_window"), std::string::npos);
  EXPECT_NE(message([] { NonLocalMeansOptions().patch_size(2); }).find("patch_size"), std::string::npos);
  EXPECT_NE(message([] { NonLocalMeansOptions().strength(0); }).find("strength"), std::string::npos);
  EXPECT_NE(message([] { NonLocalMeansOptions().strength(NAN); }).find("strength"), std::string::npos);
  EXPECT_NE(message([] { NonLocalMeans(NonLocalMeansOptions().search_window(5).patch_size(7)); }).find("patch_size"),
            std::string::npos);
  EXPECT_NE(message([] { NonLocalMeans(NonLocalMeansOptions().gradient_policy(GradientPolicy::Exact)); }).find("exact"),
            std::string::npos);
  EXPECT_THROW(NonLocalMeans().apply(torch::rand({1, 2, 8, 8})), InputError);
  EXPECT_THROW(NonLocalMeans().apply(torch::rand({3, 8, 8})), InputError);
}

TEST_F(NonLocalMeansTest, StraightThroughGradientIsTheIdentitys) {
  const NonLocalMeans nlm;
  const auto x = torch::rand({2, 3, 12, 12}).requires_grad_(true);
  const auto weights = torch::randn({2, 3, 12, 12});
  const auto y = nlm.apply_differentiable(x);
  EXPECT_TRUE(torch::allclose(y.detach(), nlm.apply(x.detach())));
  (y * weights).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), weights));
  const NonLocalMeans blocked(NonLocalMeansOptions().gradient_policy(GradientPolicy::Blocked));
  const auto x2 = torch::rand({1, 1, 8, 8}).requires_grad_(true);
  const auto y2 = blocked.apply_differentiable(x2);
  if (y2.requires_grad()) {
    (y2 * 2).sum().backward();
    EXPECT_TRUE(!x2.grad().defined() || torch::equal(x2.grad(), torch::zeros_like(x2)));
  }
}

TEST_F(NonLocalMeansTest, RegistryEntry) {
  const auto c = config::build_component(
      config::ComponentKind::Preprocessor,
      R"({"type": "non_local_means", "search_window": 13, "patch_size": 3, "strength": 2})", {});
  ASSERT_TRUE(c.preprocessor);
  EXPECT_EQ(c.preprocessor->describe(),
            "NonLocalMeans(search_window=13, patch_size=3, strength=2, grad=straight_through)");
  try {
    config::build_component(config::ComponentKind::Preprocessor, R"({"type": "non_local_means", "patch_size": 4})", {});
    FAIL() << "accepted an even patch size";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("patch_size"), std::string::npos) << e.what();
  }
}
