// libFuzzer: a data set saved from Python with torch.save (data::open_tensor_file).
#include "fuzz_support.hpp"
#include "parry/data/tensor_file.hpp"

using namespace parry;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::as_file(data, size, ".pt");
  fuzz::expect_clean([&] {
    const auto source = data::open_tensor_file(path, int64_t{1} << 26);
    if (source->size() > 0) source->read(0, std::min<int64_t>(source->size(), 4));
  });
  return 0;
}
