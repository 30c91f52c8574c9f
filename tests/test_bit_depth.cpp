#include "parry/preprocess/bit_depth.hpp"

#include "test_support.hpp"

using namespace parry;
using preprocess::BitDepth;
using preprocess::BitDepthOptions;

class BitDepthTest : public parry::testing::SeededTest {};

TEST_F(BitDepthTest, ExactAgainstTheFormula) {
  // Random values plus every quantisation midpoint (k + 0.5) / 255, where
  // rounding half to even matters.
  auto x = torch::cat({torch::rand({4 * 3 * 9 * 7}), (torch::arange(255, torch::kFloat32) + 0.5f) / 255.0f})
               .view({-1, 1, 1, 1});
  for (int bits = 1; bits <= 8; ++bits) {
    auto y = BitDepth(BitDepthOptions(bits)).apply(x);
    const float levels = static_cast<float>((1 << bits) - 1);
    // Reference, element by element in float32 like numpy's rint on float32:
    // nearbyint rounds half to even in the default rounding mode.
    auto expected = torch::empty_like(x);
    auto in = x.accessor<float, 4>();
    auto out = expected.accessor<float, 4>();
    for (int64_t i = 0; i < x.size(0); ++i) out[i][0][0][0] = std::nearbyint(in[i][0][0][0] * levels) / levels;
    EXPECT_TRUE(torch::equal(y, expected)) << bits;
    EXPECT_LE(std::get<0>(torch::_unique(y.flatten())).size(0), levels + 1);
  }
  // Hand-computed: 1 bit maps [0, 0.5) to 0 and (0.5, 1] to 1; 0.5 rounds half to even (0).
  auto y = BitDepth(BitDepthOptions(1)).apply(torch::tensor({0.2f, 0.5f, 0.51f, 1.0f}).view({1, 1, 1, 4}));
  EXPECT_TRUE(torch::equal(y.flatten(), torch::tensor({0.0f, 0.0f, 1.0f, 1.0f})));
  y = BitDepth(BitDepthOptions(2)).apply(torch::tensor({0.1f, 0.2f, 0.6f, 0.9f}).view({1, 1, 1, 4}));
  EXPECT_TRUE(torch::allclose(y.flatten(), torch::tensor({0.0f, 1 / 3.0f, 2 / 3.0f, 1.0f})));
}

TEST_F(BitDepthTest, GradientPolicies) {
  auto x = torch::rand({2, 1, 4, 4}).requires_grad_(true);
  BitDepth(BitDepthOptions(3)).apply_differentiable(x).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones_like(x))) << "BPDA gives the identity gradient";
  auto z = torch::rand({2, 1, 4, 4}).requires_grad_(true);
  BitDepth(BitDepthOptions(3).gradient_policy(GradientPolicy::Blocked)).apply_differentiable(z).sum().backward();
  EXPECT_TRUE(torch::equal(z.grad(), torch::zeros_like(z)));
  EXPECT_THROW(BitDepth(BitDepthOptions(3).gradient_policy(GradientPolicy::Exact)), OptionError);
}

TEST_F(BitDepthTest, BadOptions) {
  EXPECT_THROW(BitDepthOptions(0), OptionError);
  EXPECT_THROW(BitDepthOptions(9), OptionError);
  try {
    BitDepthOptions(12);
    FAIL() << "accepted 12 bits";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("12"), std::string::npos);
  }
  EXPECT_EQ(BitDepth(BitDepthOptions(5)).describe(), "BitDepth(bits=5, grad=straight_through)");
}
