#include "parry/data/idx.hpp"

#include <zlib.h>

#include <fstream>

#include "test_support.hpp"

using parry::IoError;
using parry::data::read_idx;
using parry::testing::write_gzip;

namespace {

std::string header(uint8_t type, const std::vector<uint32_t>& sizes) {
  std::string h = {0, 0, static_cast<char>(type), static_cast<char>(sizes.size())};
  for (uint32_t s : sizes) {
    for (int shift = 24; shift >= 0; shift -= 8) h.push_back(static_cast<char>((s >> shift) & 0xFF));
  }
  return h;
}

void write_plain(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string ubyte_images() {
  std::string bytes = header(0x08, {2, 3, 2});
  for (int i = 0; i < 12; ++i) bytes.push_back(static_cast<char>(i * 20));
  return bytes;
}

}  // namespace

TEST(Idx, ReadsPlainAndGzipUint8) {
  parry::testing::TempDir dir;
  write_plain(dir.file("a.idx"), ubyte_images());
  write_gzip(dir.file("a.idx.gz"), ubyte_images());
  for (const auto& name : {"a.idx", "a.idx.gz"}) {
    auto t = read_idx(dir.file(name));
    EXPECT_EQ(t.scalar_type(), torch::kUInt8);
    EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2, 3, 2}));
    EXPECT_EQ(t[1][2][1].item<int>(), 11 * 20);
    EXPECT_EQ(t[0][0][1].item<int>(), 20);
  }
}

TEST(Idx, ReadsBigEndianMultiByteTypes) {
  parry::testing::TempDir dir;
  std::string bytes = header(0x0C, {2});
  for (char c : std::string{0, 0, 1, 2, char(0xFF), char(0xFF), char(0xFF), char(0xFE)}) bytes.push_back(c);
  write_plain(dir.file("i.idx"), bytes);
  auto t = read_idx(dir.file("i.idx"));
  EXPECT_EQ(t.scalar_type(), torch::kInt32);
  EXPECT_EQ(t[0].item<int>(), 258);
  EXPECT_EQ(t[1].item<int>(), -2);
  std::string fbytes = header(0x0D, {1});
  for (char c : std::string{0x3F, char(0xC0), 0, 0}) fbytes.push_back(c);  // 1.5f big-endian
  write_plain(dir.file("f.idx"), fbytes);
  EXPECT_FLOAT_EQ(read_idx(dir.file("f.idx"))[0].item<float>(), 1.5f);
}

TEST(Idx, CorruptFilesAreClearErrors) {
  parry::testing::TempDir dir;
  EXPECT_THROW(read_idx(dir.file("missing")), IoError);
  const std::string good = ubyte_images();
  write_plain(dir.file("truncated"), good.substr(0, good.size() - 3));
  EXPECT_THROW(read_idx(dir.file("truncated")), IoError);
  write_gzip(dir.file("truncated.gz"), good.substr(0, good.size() - 3));
  EXPECT_THROW(read_idx(dir.file("truncated.gz")), IoError);
  write_plain(dir.file("header-only"), good.substr(0, 6));
  EXPECT_THROW(read_idx(dir.file("header-only")), IoError);
  write_plain(dir.file("empty"), "");
  EXPECT_THROW(read_idx(dir.file("empty")), IoError);
  write_plain(dir.file("magic"), "\x12\x34" + good.substr(2));
  EXPECT_THROW(read_idx(dir.file("magic")), IoError);
  std::string bad_type = good;
  bad_type[2] = 0x07;
  write_plain(dir.file("type"), bad_type);
  EXPECT_THROW(read_idx(dir.file("type")), IoError);
  write_plain(dir.file("trailing"), good + "xx");
  EXPECT_THROW(read_idx(dir.file("trailing")), IoError);
  write_plain(dir.file("lying"), header(0x0E, {4096, 4096}) + std::string(64, '\0'));
  EXPECT_THROW(read_idx(dir.file("lying")), IoError) << "a plain file shorter than its header declares";
  write_plain(dir.file("huge"), header(0x08, {60000, 60000, 60000}));
  EXPECT_THROW(read_idx(dir.file("huge")), IoError) << "a lying header must not allocate terabytes";
  // Found by fuzz_idx: no data (a zero size), but the other sizes' product
  // overflows the strides; open_idx then let LibTorch's c10::Error escape.
  write_plain(dir.file("empty-huge"), header(0x08, {0, 0xFFFFFFFF, 0xFFFFFFFF}));
  EXPECT_THROW(read_idx(dir.file("empty-huge")), IoError);
  EXPECT_THROW(parry::data::open_idx(dir.file("empty-huge"), dir.file("empty-huge")), IoError);
  write_plain(dir.file("empty-ok"), header(0x08, {0, 28, 28}));
  EXPECT_EQ(read_idx(dir.file("empty-ok")).sizes(), (std::vector<int64_t>{0, 28, 28}));
  // A gzip stream that is cut in the middle of its compressed data.
  write_gzip(dir.file("big.gz"), header(0x08, {4096}) + std::string(4096, 'x'));
  std::ifstream in(dir.file("big.gz"), std::ios::binary);
  std::string gz((std::istreambuf_iterator<char>(in)), {});
  write_plain(dir.file("cut.gz"), gz.substr(0, gz.size() / 2));
  try {
    read_idx(dir.file("cut.gz"));
    FAIL() << "read a cut gzip file";
  } catch (const IoError& e) {
    parry::testing::expect_public(e.public_message());
    EXPECT_NE(e.detail().find("cut.gz"), std::string::npos);
  }
}

TEST(FashionMnist, LoadsTheDebianDataset) {
  auto test = parry::data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, /*train=*/false);
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.images.scalar_type(), torch::kFloat32);
  EXPECT_GE(test.images.min().item<float>(), 0.0f);
  EXPECT_LE(test.images.max().item<float>(), 1.0f);
  // The test split has exactly 1,000 images of each of the 10 classes.
  EXPECT_TRUE(torch::equal(torch::bincount(test.labels), torch::full({10}, 1000, torch::kInt64)));
  auto train = parry::data::load_fashion_mnist(PARRY_FASHION_MNIST_DIR, /*train=*/true, /*limit=*/100);
  EXPECT_EQ(train.images.size(0), 100);
  EXPECT_EQ(train.labels.size(0), 100);
  EXPECT_STREQ(parry::data::fashion_mnist_classes()[9], "Ankle boot");
}

TEST(FashionMnist, MissingOrMismatchedFiles) {
  parry::testing::TempDir dir;
  EXPECT_THROW(parry::data::load_fashion_mnist(dir.path().string(), false), IoError);
  // Labels that do not match the image count.
  std::string images = header(0x08, {2, 28, 28}) + std::string(2 * 28 * 28, '\0');
  write_plain(dir.file("t10k-images-idx3-ubyte"), images);
  write_plain(dir.file("t10k-labels-idx1-ubyte"), header(0x08, {3}) + std::string(3, '\1'));
  EXPECT_THROW(parry::data::load_fashion_mnist(dir.path().string(), false), IoError);
  write_plain(dir.file("t10k-labels-idx1-ubyte"), header(0x08, {2}) + std::string("\1\x0c"));
  EXPECT_THROW(parry::data::load_fashion_mnist(dir.path().string(), false), IoError) << "label 12";
  write_plain(dir.file("t10k-images-idx3-ubyte"), header(0x08, {0, 28, 28}));
  write_plain(dir.file("t10k-labels-idx1-ubyte"), header(0x08, {0}));
  EXPECT_THROW(parry::data::load_fashion_mnist(dir.path().string(), false), IoError) << "empty split";
  write_plain(dir.file("t10k-images-idx3-ubyte"), images);
  write_plain(dir.file("t10k-labels-idx1-ubyte"), header(0x08, {2}) + std::string("\1\2"));
  EXPECT_EQ(parry::data::load_fashion_mnist(dir.path().string(), false).labels[1].item<int64_t>(), 2);
}
