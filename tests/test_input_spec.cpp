#include "parry/core/input_spec.hpp"

#include <limits>

#include "test_support.hpp"

using parry::InputError;
using parry::InputSpec;
using parry::OptionError;

namespace {

InputSpec spec() {
  return InputSpec(1, 28, 28).max_batch(8);
}

// Asserts that validate() rejects `x` with an InputError whose public message
// mentions `expected_words` and nothing internal.
void expect_rejected(const torch::Tensor& x, const std::string& expected_words, const InputSpec& checker = spec()) {
  try {
    checker.validate(x);
    FAIL() << "accepted bad input, expected: " << expected_words;
  } catch (const InputError& e) {
    const std::string message = e.public_message();
    EXPECT_NE(message.find(expected_words), std::string::npos) << message;
    EXPECT_STREQ(e.reason_code(), "invalid_input");
    parry::testing::expect_public(message);
  }
}

}  // namespace

TEST(InputSpec, AcceptsBatchAndSingleImage) {
  auto batch = torch::rand({3, 1, 28, 28});
  auto out = spec().validate(batch);
  EXPECT_EQ(out.sizes(), batch.sizes());
  EXPECT_EQ(out.data_ptr(), batch.data_ptr()) << "validation must not copy";
  auto single = spec().validate(torch::rand({1, 28, 28}));
  EXPECT_EQ(single.sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
  // Bounds are inclusive.
  EXPECT_NO_THROW(spec().validate(torch::zeros({1, 1, 28, 28})));
  EXPECT_NO_THROW(spec().validate(torch::ones({8, 1, 28, 28})));
}

TEST(InputSpec, RejectsWrongRank) {
  expect_rejected(torch::rand({28, 28}), "rank 2");
  expect_rejected(torch::rand({1, 1, 1, 28, 28}), "rank 5");
}

TEST(InputSpec, RejectsWrongShape) {
  expect_rejected(torch::rand({2, 3, 28, 28}), "shape 3x28x28");
  expect_rejected(torch::rand({2, 1, 32, 28}), "shape 1x32x28");
}

TEST(InputSpec, RejectsWrongDtype) {
  expect_rejected(torch::rand({1, 1, 28, 28}, torch::kFloat64), "wrong data type");
  expect_rejected(torch::zeros({1, 1, 28, 28}, torch::kUInt8), "wrong data type");
}

TEST(InputSpec, RejectsNanAndInf) {
  auto x = torch::rand({2, 1, 28, 28});
  x[1][0][3][4] = std::numeric_limits<float>::quiet_NaN();
  expect_rejected(x, "NaN or infinite");
  auto y = torch::rand({2, 1, 28, 28});
  y[0][0][0][0] = std::numeric_limits<float>::infinity();
  expect_rejected(y, "NaN or infinite");
}

TEST(InputSpec, RejectsOutOfRange) {
  auto x = torch::rand({2, 1, 28, 28});
  x[0][0][5][5] = 1.0001f;
  expect_rejected(x, "outside [0, 1]");
  expect_rejected(torch::full({1, 1, 28, 28}, -0.5f), "outside [0, 1]");
}

TEST(InputSpec, RejectsEmptyAndOversizedBatches) {
  expect_rejected(torch::rand({0, 1, 28, 28}), "empty");
  expect_rejected(torch::rand({9, 1, 28, 28}), "exceeds the limit of 8");
  expect_rejected(torch::Tensor(), "empty");
}

TEST(InputSpec, CustomRange) {
  auto s = InputSpec(3, 4, 4).value_range(-1, 1);
  EXPECT_NO_THROW(s.validate(torch::full({3, 4, 4}, -1.0f)));
  EXPECT_THROW(s.validate(torch::full({3, 4, 4}, 1.5f)), InputError);
}

TEST(InputSpec, OptionsValidated) {
  EXPECT_THROW(InputSpec(0, 28, 28), OptionError);
  EXPECT_THROW(InputSpec(1, -1, 28), OptionError);
  EXPECT_THROW(InputSpec(1, 28, 28).max_batch(0), OptionError);
  EXPECT_THROW(InputSpec(1, 28, 28).value_range(1, 0), OptionError);
  EXPECT_THROW(InputSpec(1, 28, 28).value_range(0, std::numeric_limits<double>::infinity()), OptionError);
  try {
    InputSpec(1, 28, 28).max_batch(-3);
    FAIL() << "accepted a negative batch limit";
  } catch (const OptionError& e) {
    EXPECT_NE(std::string(e.what()).find("-3"), std::string::npos) << "message must name the bad value";
  }
}

TEST(InputSpec, RejectsDevicesThatAreNotServed) {
  // CPU and CUDA are served (the Guard moves input to the model's device);
  // a meta tensor has no data to check.
  expect_rejected(torch::empty({1, 1, 28, 28}, torch::TensorOptions().device(torch::kMeta)), "CPU or CUDA");
}

TEST(InputSpec, NonContiguousInputIsCheckedLikeContiguousInput) {
  // A transposed view takes the tensor path, a contiguous batch the scan:
  // both must find the same bad values, wherever they are.
  auto x = torch::rand({2, 1, 28, 28});
  EXPECT_NO_THROW(spec().validate(x.transpose(2, 3)));
  for (const int64_t at : {0, 1, 783, 1567}) {
    auto bad = torch::rand({2, 1, 28, 28});
    bad.view(-1)[at] = std::numeric_limits<float>::quiet_NaN();
    expect_rejected(bad, "NaN or infinite");
    expect_rejected(bad.transpose(2, 3), "NaN or infinite");
    auto high = torch::rand({2, 1, 28, 28});
    high.view(-1)[at] = 1.5f;
    expect_rejected(high, "outside [0, 1]");
    expect_rejected(high.transpose(2, 3), "outside [0, 1]");
    auto low = torch::rand({2, 1, 28, 28});
    low.view(-1)[at] = -std::numeric_limits<float>::infinity();
    expect_rejected(low, "NaN or infinite");
  }
  // Above the scan's limit (65,536 values) a contiguous batch takes the tensor path too.
  const InputSpec rgb = InputSpec(3, 224, 224).max_batch(2);
  auto large = torch::rand({2, 3, 224, 224});
  EXPECT_NO_THROW(rgb.validate(large));
  large.view(-1)[large.numel() - 1] = std::numeric_limits<float>::quiet_NaN();
  expect_rejected(large, "NaN or infinite", rgb);
  large.view(-1)[large.numel() - 1] = 1.5f;
  expect_rejected(large, "outside [0, 1]", rgb);
}
