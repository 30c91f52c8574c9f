#include "parry/data/image.hpp"
#include "parry/data/predict_image.hpp"

#include "parry/conceal/throttle.hpp"
#include "parry/core/guard.hpp"
#include "test_support.hpp"

using namespace parry;

namespace {
class ImageTest : public parry::testing::SeededTest {};

torch::Tensor gradient_image(int64_t c, int64_t h, int64_t w) {
  return (torch::linspace(0, 1, w).view({1, 1, w}) * torch::linspace(0.2, 1, h).view({1, h, 1}))
      .expand({c, h, w})
      .contiguous();
}

void expect_input_error(const std::string& bytes, const data::ImageLimits& limits = {}) {
  try {
    data::decode_image(bytes, 1, limits);
    FAIL() << "decoded bad bytes";
  } catch (const InputError& e) {
    parry::testing::expect_public(e.public_message());
  }
}
}  // namespace

TEST_F(ImageTest, PngRoundTripIsExactTo8Bits) {
  for (int64_t c : {1, 3}) {
    auto img = gradient_image(c, 10, 12);
    if (c == 3) img[1].mul_(0.5);  // distinct channels catch RGB/BGR swaps
    auto decoded = data::decode_image(data::encode_png(img), c);
    EXPECT_EQ(decoded.sizes(), img.sizes());
    EXPECT_TRUE(torch::allclose(decoded, torch::round(img * 255) / 255, 0, 1e-6));
    auto size = data::peek_image_size(data::encode_png(img));
    EXPECT_EQ(size.width, 12);
    EXPECT_EQ(size.height, 10);
  }
}

TEST_F(ImageTest, JpegDecodesAndColourToGrayWorks) {
  auto img = gradient_image(3, 16, 16);
  const auto jpeg = data::encode_jpeg(img, 95);
  auto size = data::peek_image_size(jpeg);
  EXPECT_EQ(size.width, 16);
  EXPECT_EQ(size.height, 16);
  auto rgb = data::decode_image(jpeg, 3);
  EXPECT_LT((rgb - img).abs().mean().item<float>(), 0.02);
  auto gray = data::decode_image(jpeg, 1);
  EXPECT_EQ(gray.size(0), 1);
  EXPECT_LT((gray[0] - img[0]).abs().mean().item<float>(), 0.03);
}

TEST_F(ImageTest, DecodeForResizesToTheSpec) {
  auto img = gradient_image(1, 56, 56);
  auto x = data::decode_image_for(data::encode_png(img), InputSpec(1, 28, 28));
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{1, 28, 28}));
  // INTER_AREA 2× shrink = mean of 2×2 blocks.
  auto expected = torch::avg_pool2d((torch::round(img * 255) / 255).unsqueeze(0), 2)[0];
  EXPECT_TRUE(torch::allclose(x, expected, 0, 1e-5));
}

TEST_F(ImageTest, BadBytesAreInputErrors) {
  const auto png = data::encode_png(gradient_image(1, 8, 8));
  const auto jpeg = data::encode_jpeg(gradient_image(1, 8, 8), 90);
  expect_input_error("");
  expect_input_error("hello, not an image");
  expect_input_error(png.substr(0, png.size() / 2));
  expect_input_error(jpeg.substr(0, jpeg.size() - 10));
  expect_input_error(png.substr(0, 20));
  std::string corrupt = png;
  for (size_t i = 40; i < corrupt.size() - 12; ++i) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
  expect_input_error(corrupt);
  // Oversized by bytes, by pixels and by side, rejected before decoding.
  expect_input_error(png, data::ImageLimits().max_bytes(16));
  expect_input_error(png, data::ImageLimits().max_pixels(63));
  expect_input_error(png, data::ImageLimits().max_side(7));
  // A header that declares a huge image (decompression bomb).
  std::string bomb = png;
  bomb[16] = 0x00, bomb[17] = 0x01, bomb[18] = 0x00, bomb[19] = 0x00;  // width 65536
  expect_input_error(bomb);
  EXPECT_THROW(data::decode_image(png, 2), OptionError);
  EXPECT_THROW(data::ImageLimits().max_bytes(0), OptionError);
}

TEST_F(ImageTest, JpegSizeIsReadTheWayTheDecoderReadsIt) {
  // A fake 16×16 frame header hidden in a comment, after a stuffed 0xFF 0x00
  // that a naive parser takes for a marker; the real frame is 64×64.
  const auto real = data::encode_jpeg(gradient_image(1, 64, 64), 90);
  std::string crafted = "\xFF\xD8";
  crafted += std::string("\xFF\x00\x00\x0A", 4);
  crafted += std::string("\xFF\xFE\x00\x13\x00\x00\x00\x00", 8);
  crafted += std::string("\xFF\xC0\x00\x0B\x08\x00\x10\x00\x10\x01\x01\x11\x00", 13);
  crafted += real.substr(2);
  const auto size = data::peek_image_size(crafted);
  EXPECT_EQ(size.width, 64);
  EXPECT_EQ(size.height, 64);
  expect_input_error(crafted, data::ImageLimits().max_side(32));
  // Two frame headers, or a second start-of-image, are refused.
  const auto sof = real.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  const auto sof_length = 2 + ((static_cast<uint8_t>(real[sof + 2]) << 8) | static_cast<uint8_t>(real[sof + 3]));
  expect_input_error("\xFF\xD8" + real.substr(sof, sof_length) + real.substr(2));
  expect_input_error("\xFF\xD8\xFF\xD8" + real.substr(2));
}

TEST_F(ImageTest, ExifOrientationIsApplied) {
  // A 16 wide × 8 high JPEG tagged "rotate 90° clockwise" (orientation 6).
  auto wide = gradient_image(1, 8, 16);
  const auto jpeg = data::encode_jpeg(wide, 95);
  const std::string tiff(
      "II\x2A\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00", 26);
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const auto length = static_cast<char>(payload.size() + 2);
  const std::string app1 = std::string("\xFF\xE1\x00", 3) + length + payload;
  const auto tagged = jpeg.substr(0, 2) + app1 + jpeg.substr(2);
  auto decoded = data::decode_image(tagged, 1);
  EXPECT_EQ(decoded.sizes(), (std::vector<int64_t>{1, 16, 8})) << "rotated to 8 wide × 16 high";
  EXPECT_LT((decoded[0] - wide[0].t().flip({1})).abs().mean().item<float>(), 0.03) << "clockwise rotation";
}

TEST_F(ImageTest, DecodedValuesFollowTheSpecRange) {
  auto img = torch::full({1, 4, 4}, 1.0f);
  auto x = data::decode_image_for(data::encode_png(img), InputSpec(1, 4, 4).value_range(-1, 1));
  EXPECT_TRUE(torch::allclose(x, torch::ones_like(x)));
  auto dark = data::decode_image_for(data::encode_png(torch::zeros({1, 4, 4})), InputSpec(1, 2, 2).value_range(0, 255));
  EXPECT_TRUE(torch::allclose(dark, torch::zeros_like(dark)));
  auto bright = data::decode_image_for(data::encode_png(img), InputSpec(1, 2, 2).value_range(0, 255));
  EXPECT_TRUE(torch::allclose(bright, torch::full_like(bright, 255.0f)));
}

TEST_F(ImageTest, GuardPredictsFromBytesAndThrottlesBeforeDecoding) {
  auto model = Model::from_callable([](const torch::Tensor& x) {
    auto m = x.flatten(1).mean(1, true);
    return torch::cat({m, 1 - m}, 1);
  });
  double now = 0;
  Guard guard = GuardBuilder(model, InputSpec(1, 8, 8))
                    .add_gate(std::make_shared<conceal::Throttle>(
                        conceal::ThrottleOptions().rate(1).burst(2).clock([&now] { return now; })))
                    .build();
  auto bright = data::encode_png(torch::full({1, 16, 16}, 0.9f));
  auto r = parry::data::predict_image(guard, bright, RequestContext{"c"});
  EXPECT_EQ(r.labels, std::vector<int64_t>{0});
  EXPECT_THROW(parry::data::predict_image(guard, "garbage", RequestContext{"c"}), InputError);
  r = parry::data::predict_image(guard, "garbage", RequestContext{"c"});  // throttled before the decoder sees it
  EXPECT_EQ(r.verdict, Verdict::Rejected);
}
