// libFuzzer: image bytes as an HTTP client sends them, through
// data::decode_image_for and data::predict_image (decode, validate, Guard).
#include "fuzz_support.hpp"
#include "parry/core/guard.hpp"
#include "parry/data/image.hpp"
#include "parry/data/predict_image.hpp"

using namespace parry;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Guard guard = GuardBuilder(fuzz::tiny_model(), InputSpec(1, 28, 28).max_batch(4)).build();
  static const auto limits = data::ImageLimits().max_pixels(1 << 20).max_side(2048);
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] { data::decode_image_for(bytes, InputSpec(3, 32, 32), limits); });
  fuzz::expect_clean([&] { data::predict_image(guard, bytes, RequestContext{"fuzz"}, limits); });
  return 0;
}
