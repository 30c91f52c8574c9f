// libFuzzer: the JSON defense configuration (config::parse_config), with the
// Fashion-MNIST input shape, as `parry eval` and `parry serve` read it.
#include "fuzz_support.hpp"
#include "parry/config/defense_config.hpp"

using namespace parry;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Model model = fuzz::tiny_model();
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_clean([&] { config::parse_config(text, model, InputSpec(1, 28, 28)); });
  return 0;
}
