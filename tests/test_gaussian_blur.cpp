#include "parry/preprocess/gaussian_blur.hpp"

#include <opencv2/imgproc.hpp>

#include "opencv_support.hpp"
#include "test_support.hpp"

using namespace parry;
using preprocess::GaussianBlur;
using preprocess::GaussianBlurOptions;

class GaussianBlurTest : public parry::testing::SeededTest {};

TEST_F(GaussianBlurTest, MatchesOpenCvGaussianBlur) {
  auto x = torch::rand({2, 3, 16, 11});
  for (auto [k, sigma] : std::vector<std::pair<int, double>>{{3, 0.8}, {5, 1.0}, {7, 2.5}, {9, 1.5}}) {
    auto y = GaussianBlur(GaussianBlurOptions(k, sigma)).apply(x);
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t c = 0; c < 3; ++c) {
        cv::Mat ref;
        cv::GaussianBlur(parry::testing::to_mat(x[n][c]), ref, cv::Size(k, k), sigma, sigma, cv::BORDER_REFLECT_101);
        EXPECT_TRUE(torch::allclose(y[n][c], parry::testing::from_mat(ref), 1e-5, 1e-6))
            << "k=" << k << " sigma=" << sigma << " max diff "
            << (y[n][c] - parry::testing::from_mat(ref)).abs().max().item<float>();
      }
    }
  }
}

TEST_F(GaussianBlurTest, KernelIsOpenCvs) {
  for (auto [k, sigma] : std::vector<std::pair<int, double>>{{3, 0.5}, {5, 1.2}, {11, 3.0}}) {
    cv::Mat ref = cv::getGaussianKernel(k, sigma, CV_64F);
    auto ours = GaussianBlur::make_kernel(GaussianBlurOptions(k, sigma));
    for (int i = 0; i < k; ++i) EXPECT_NEAR(ours[i].item<double>(), ref.at<double>(i), 1e-12);
  }
}

TEST_F(GaussianBlurTest, ExactGradientPassesGradcheck) {
  GaussianBlur blur(GaussianBlurOptions(5, 1.3));
  auto x = torch::rand({1, 2, 6, 5}, torch::kFloat64);
  EXPECT_LT(parry::testing::gradcheck_error([&](const torch::Tensor& in) { return blur.apply_differentiable(in); }, x),
            1e-6);
  // Large kernels on tiny images still reflect correctly (no out-of-range padding).
  auto tiny = torch::rand({1, 1, 3, 3});
  EXPECT_NO_THROW(GaussianBlur(GaussianBlurOptions(9, 2.0)).apply(tiny));
  EXPECT_NEAR(GaussianBlur(GaussianBlurOptions(9, 2.0)).apply(torch::ones({1, 1, 3, 3})).mean().item<float>(), 1.0,
              1e-6);
}

TEST_F(GaussianBlurTest, BadOptions) {
  EXPECT_THROW(GaussianBlurOptions(4, 1.0), OptionError);
  EXPECT_THROW(GaussianBlurOptions(0, 1.0), OptionError);
  EXPECT_THROW(GaussianBlurOptions(3, 0.0), OptionError);
  EXPECT_THROW(GaussianBlurOptions(3, -1.0), OptionError);
  EXPECT_THROW(GaussianBlurOptions(33, 1.0), OptionError);
}
