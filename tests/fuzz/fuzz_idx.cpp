// libFuzzer: IDX files (Fashion-MNIST's format) through data::read_idx, and
// an image/label pair through data::open_idx and a read of its images.
#include "fuzz_support.hpp"
#include "parry/data/idx.hpp"

using namespace parry;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::as_file(data, size, ".idx");
  fuzz::expect_clean([&] { data::read_idx(path, int64_t{1} << 24); });
  // The same bytes as the images and as the labels of one data set.
  fuzz::expect_clean([&] {
    const auto source = data::open_idx(path, path);
    if (source->size() > 0) source->read(0, std::min<int64_t>(source->size(), 4));
  });
  return 0;
}
