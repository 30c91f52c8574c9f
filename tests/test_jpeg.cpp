#include "parry/preprocess/jpeg.hpp"

#include <opencv2/imgcodecs.hpp>

#include "parry/data/image.hpp"
#include "test_support.hpp"

using namespace parry;
using preprocess::Jpeg;
using preprocess::JpegOptions;

namespace {

class JpegTest : public parry::testing::SeededTest {};

// A natural-ish image: smooth gradients plus a little texture.
torch::Tensor smooth_images(int64_t n, int64_t c, int64_t h, int64_t w) {
  auto yy = torch::linspace(0, 1, h).view({1, 1, h, 1});
  auto xx = torch::linspace(0, 1, w).view({1, 1, 1, w});
  auto base = (0.5 + 0.3 * torch::sin(6 * xx + 4 * yy)).expand({n, c, h, w}).contiguous();
  return (base + 0.02 * torch::rand({n, c, h, w})).clamp(0, 1);
}

}  // namespace

TEST_F(JpegTest, MatchesOpenCvEncodeDecodePerImage) {
  auto x = smooth_images(3, 3, 20, 24);
  auto y = Jpeg(JpegOptions(60)).apply(x);
  ASSERT_EQ(y.sizes(), x.sizes());
  for (int64_t i = 0; i < 3; ++i) {
    // Reference: the same bytes through cv::imencode/imdecode (RGB→BGR→RGB).
    auto expected = data::decode_image(data::encode_jpeg(x[i], 60), 3);
    EXPECT_TRUE(torch::allclose(y[i], expected, 0, 1e-6)) << i;
  }
}

TEST_F(JpegTest, BoundedChangeAndNearIdempotentAtHighQuality) {
  for (int64_t c : {1, 3}) {
    auto x = smooth_images(4, c, 28, 28);
    auto once = Jpeg(JpegOptions(95)).apply(x);
    EXPECT_LT((once - x).abs().mean().item<float>(), 0.02) << "quality 95 changes little";
    auto twice = Jpeg(JpegOptions(95)).apply(once);
    EXPECT_LT((twice - once).abs().mean().item<float>(), 0.5 * (once - x).abs().mean().item<float>());
    auto low = Jpeg(JpegOptions(10)).apply(x);
    EXPECT_GT((low - x).abs().mean().item<float>(), (once - x).abs().mean().item<float>())
        << "lower quality must change the image more";
    EXPECT_GE(low.min().item<float>(), 0.f);
    EXPECT_LE(low.max().item<float>(), 1.f);
  }
}

TEST_F(JpegTest, GradientPoliciesAndBadInput) {
  auto x = smooth_images(1, 1, 8, 8).requires_grad_(true);
  Jpeg(JpegOptions(50)).apply_differentiable(x).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones_like(x)));
  EXPECT_THROW(Jpeg(JpegOptions(50).gradient_policy(GradientPolicy::Exact)), OptionError);
  EXPECT_THROW(Jpeg().apply(torch::rand({1, 2, 8, 8})), InputError);
  EXPECT_THROW(JpegOptions(0), OptionError);
  EXPECT_THROW(JpegOptions(101), OptionError);
}
