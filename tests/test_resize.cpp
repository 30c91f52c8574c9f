#include "parry/preprocess/resize.hpp"

#include <opencv2/imgproc.hpp>

#include "opencv_support.hpp"
#include "test_support.hpp"

using namespace parry;
using preprocess::Resize;
using preprocess::ResizeMode;
using preprocess::ResizeOptions;

class ResizeTest : public parry::testing::SeededTest {};

TEST_F(ResizeTest, AreaMatchesOpenCvInterArea) {
  auto x = torch::rand({2, 1, 28, 28});
  // Integer (28→14, 28→7) and fractional (28→12, 28→20, 28→9) factors.
  for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{14, 14}, {7, 7}, {12, 20}, {9, 13}}) {
    auto y = Resize(ResizeOptions(h, w).restore(false)).apply(x);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 1, h, w}));
    for (int64_t n = 0; n < 2; ++n) {
      cv::Mat ref;
      cv::resize(parry::testing::to_mat(x[n][0]), ref, cv::Size(static_cast<int>(w), static_cast<int>(h)), 0, 0,
                 cv::INTER_AREA);
      EXPECT_TRUE(torch::allclose(y[n][0], parry::testing::from_mat(ref), 1e-5, 1e-5))
          << h << "x" << w << " max diff " << (y[n][0] - parry::testing::from_mat(ref)).abs().max().item<float>();
    }
  }
}

TEST_F(ResizeTest, AreaShrinksEachShrinkingAxisByArea) {
  // 28×28 → 7×40: rows are area-averaged (as INTER_AREA), columns interpolated.
  auto x = torch::rand({1, 1, 28, 28});
  auto y = Resize(ResizeOptions(7, 40).restore(false)).apply(x);
  auto rows_averaged = torch::avg_pool2d(x, {4, 1});
  auto expected = torch::nn::functional::interpolate(rows_averaged, torch::nn::functional::InterpolateFuncOptions()
                                                                        .size(std::vector<int64_t>{7, 40})
                                                                        .mode(torch::kBilinear)
                                                                        .align_corners(false));
  EXPECT_TRUE(torch::allclose(y, expected, 1e-5, 1e-6));
  // Fractional shrink of one axis only: 28 → 12 rows matches INTER_AREA on a 1-column image.
  auto column = torch::rand({1, 1, 28, 1});
  auto shrunk = Resize(ResizeOptions(12, 1).restore(false)).apply(column);
  cv::Mat ref;
  cv::resize(parry::testing::to_mat(column[0][0]), ref, cv::Size(1, 12), 0, 0, cv::INTER_AREA);
  EXPECT_TRUE(torch::allclose(shrunk[0][0], parry::testing::from_mat(ref), 1e-5, 1e-6));
}

TEST_F(ResizeTest, BilinearUpscaleMatchesOpenCvInterLinear) {
  auto x = torch::rand({1, 3, 14, 10});
  auto y = Resize(ResizeOptions(28, 25).mode(ResizeMode::Bilinear).restore(false)).apply(x);
  for (int64_t c = 0; c < 3; ++c) {
    cv::Mat ref;
    cv::resize(parry::testing::to_mat(x[0][c]), ref, cv::Size(25, 28), 0, 0, cv::INTER_LINEAR);
    EXPECT_TRUE(torch::allclose(y[0][c], parry::testing::from_mat(ref), 1e-5, 1e-5));
  }
}

TEST_F(ResizeTest, RestoreBringsBackTheInputSizeAndRemovesDetail) {
  auto x = torch::rand({2, 1, 28, 28});
  auto y = Resize(ResizeOptions(14, 14)).apply(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  // A 2× area down-up round trip keeps a smooth image nearly unchanged and
  // halves the energy of pixel noise.
  auto smooth = torch::linspace(0, 1, 28).view({1, 1, 1, 28}).expand({1, 1, 28, 28}).contiguous();
  EXPECT_LT((Resize(ResizeOptions(14, 14)).apply(smooth) - smooth).abs().max().item<float>(), 0.03);
  auto noise = torch::randn({1, 1, 28, 28}) * 0.1;
  EXPECT_LT(Resize(ResizeOptions(14, 14)).apply(noise).pow(2).mean().item<float>(),
            0.5 * noise.pow(2).mean().item<float>());
  // Antialiased bilinear shrinking keeps a constant image constant.
  auto constant = torch::full({1, 3, 32, 32}, 0.25f);
  EXPECT_TRUE(torch::allclose(Resize(ResizeOptions(10, 10).mode(ResizeMode::Bilinear)).apply(constant), constant));
}

TEST_F(ResizeTest, ExactGradientPassesGradcheck) {
  auto x = torch::rand({1, 1, 6, 6}, torch::kFloat64);
  for (auto mode : {ResizeMode::Area, ResizeMode::Bilinear}) {
    Resize r(ResizeOptions(4, 3).mode(mode));
    EXPECT_LT(parry::testing::gradcheck_error([&](const torch::Tensor& in) { return r.apply_differentiable(in); }, x),
              1e-6);
  }
}

TEST_F(ResizeTest, BadOptions) {
  EXPECT_THROW(ResizeOptions(0, 10), OptionError);
  EXPECT_THROW(ResizeOptions(10, -1), OptionError);
  EXPECT_EQ(Resize(ResizeOptions(14, 14)).describe(), "Resize(14x14, area, restore, grad=exact)");
}
