#include "parry/preprocess/median_smoothing.hpp"

#include <opencv2/imgproc.hpp>

#include <algorithm>

#include "opencv_support.hpp"
#include "test_support.hpp"

using namespace parry;
using preprocess::MedianSmoothing;
using preprocess::MedianSmoothingOptions;

namespace {

class MedianTest : public parry::testing::SeededTest {};

// scipy.ndimage.median_filter semantics, written out directly: window rows
// i - k/2 .. i - k/2 + k - 1, symmetric borders, element of rank k*k/2.
torch::Tensor direct_median(const torch::Tensor& plane, int k) {
  const int64_t h = plane.size(0), w = plane.size(1);
  auto reflect = [](int64_t i, int64_t n) {
    while (i < 0 || i >= n) i = i < 0 ? -i - 1 : 2 * n - i - 1;
    return i;
  };
  auto acc = plane.accessor<float, 2>();
  auto out = torch::empty_like(plane);
  auto o = out.accessor<float, 2>();
  std::vector<float> window;
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      window.clear();
      for (int64_t di = 0; di < k; ++di) {
        for (int64_t dj = 0; dj < k; ++dj) {
          window.push_back(acc[reflect(i - k / 2 + di, h)][reflect(j - k / 2 + dj, w)]);
        }
      }
      std::nth_element(window.begin(), window.begin() + k * k / 2, window.end());
      o[i][j] = window[static_cast<size_t>(k * k / 2)];
    }
  }
  return out;
}

}  // namespace

TEST_F(MedianTest, OddWindowsMatchOpenCvMedianBlur) {
  // OpenCV's medianBlur on float data supports 3 and 5; its border replicates,
  // which equals the symmetric border for 3×3 and for interior pixels at 5×5.
  auto x = torch::rand({2, 3, 17, 13});
  auto y3 = MedianSmoothing(MedianSmoothingOptions(3)).apply(x);
  auto y5 = MedianSmoothing(MedianSmoothingOptions(5)).apply(x);
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t c = 0; c < 3; ++c) {
      cv::Mat ref3, ref5;
      cv::medianBlur(parry::testing::to_mat(x[n][c]), ref3, 3);
      cv::medianBlur(parry::testing::to_mat(x[n][c]), ref5, 5);
      EXPECT_TRUE(torch::equal(y3[n][c], parry::testing::from_mat(ref3)));
      EXPECT_TRUE(torch::equal(y5[n][c].slice(0, 2, 15).slice(1, 2, 11),
                               parry::testing::from_mat(ref5).slice(0, 2, 15).slice(1, 2, 11)));
    }
  }
}

TEST_F(MedianTest, AllWindowsMatchTheDirectComputation) {
  auto x = torch::rand({1, 2, 11, 9});
  for (int k : {1, 2, 3, 4, 5, 6}) {
    auto y = MedianSmoothing(MedianSmoothingOptions(k)).apply(x);
    for (int64_t c = 0; c < 2; ++c) EXPECT_TRUE(torch::equal(y[0][c], direct_median(x[0][c], k))) << "k=" << k;
  }
}

TEST_F(MedianTest, TwoByTwoByHand) {
  // Xu et al.'s 2×2 window at (i, j) covers (i-1..i, j-1..j); rank 2 of 4 = upper median.
  auto x = torch::tensor({1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f, 9.f}).view({1, 1, 3, 3});
  auto y = MedianSmoothing(MedianSmoothingOptions(2)).apply(x);
  // (1,1): {1,2,4,5} -> 4; (0,0): {1,1,1,1} -> 1; (2,2): {5,6,8,9} -> 8; (0,2): {2,3,2,3} -> 3.
  EXPECT_FLOAT_EQ(y[0][0][1][1].item<float>(), 4.f);
  EXPECT_FLOAT_EQ(y[0][0][0][0].item<float>(), 1.f);
  EXPECT_FLOAT_EQ(y[0][0][2][2].item<float>(), 8.f);
  EXPECT_FLOAT_EQ(y[0][0][0][2].item<float>(), 3.f);
}

TEST_F(MedianTest, RemovesSaltAndPepper) {
  auto x = torch::full({1, 1, 10, 10}, 0.5f);
  x[0][0][4][4] = 1.0f;
  x[0][0][7][2] = 0.0f;
  auto y = MedianSmoothing(MedianSmoothingOptions(3)).apply(x);
  EXPECT_TRUE(torch::equal(y, torch::full_like(x, 0.5f)));
}

TEST_F(MedianTest, GradientPolicies) {
  auto x = torch::rand({1, 1, 5, 5}).requires_grad_(true);
  MedianSmoothing(MedianSmoothingOptions(3)).apply_differentiable(x).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones_like(x)));
  // Exact: the gradient goes to the selected pixels; the total equals the output count.
  auto z = torch::rand({1, 1, 5, 5}).requires_grad_(true);
  MedianSmoothing(MedianSmoothingOptions(3).gradient_policy(GradientPolicy::Exact))
      .apply_differentiable(z)
      .sum()
      .backward();
  EXPECT_FLOAT_EQ(z.grad().sum().item<float>(), 25.f);
  EXPECT_GE(z.grad().min().item<float>(), 0.f);
}

TEST_F(MedianTest, BadOptions) {
  EXPECT_THROW(MedianSmoothingOptions(0), OptionError);
  EXPECT_THROW(MedianSmoothingOptions(-3), OptionError);
  EXPECT_THROW(MedianSmoothingOptions(16), OptionError);
  EXPECT_EQ(MedianSmoothing(MedianSmoothingOptions(2)).describe(),
            "MedianSmoothing(window=2x2, grad=straight_through)");
}
