// Replays every input the fuzzers found a crash with (tests/fuzz/crashes/,
// committed with the fix) through the same reader, in the normal build: each
// must now be refused with a parry::Error and nothing else.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "detail/torch_archive.hpp"
#include "fuzz/saved_state_readers.hpp"
#include "test_support.hpp"

namespace {

// The reproducers of one fuzz target, "<target>-<what>".
std::vector<std::filesystem::path> reproducers(const std::string& target) {
  std::vector<std::filesystem::path> out;
  for (const auto& entry : std::filesystem::directory_iterator(parry::testing::fixture_path("../fuzz/crashes"))) {
    if (entry.path().filename().string().rfind(target + "-", 0) == 0) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(FuzzReproducers, SavedStateInputsAreCleanErrors) {
  const auto files = reproducers("fuzz_saved_state");
  ASSERT_GE(files.size(), 2u) << "the committed reproducers are missing";
  parry::testing::TempDir dir;
  for (const auto& file : files) {
    SCOPED_TRACE(file.filename().string());
    std::ifstream in(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_GT(bytes.size(), 1u);
    const std::string path = dir.file("state");
    std::ofstream(path, std::ios::binary) << bytes.substr(1);  // the first byte picks the reader
    try {
      parry::fuzz::read_saved_state(static_cast<uint8_t>(bytes[0]), path);
      ADD_FAILURE() << "the reproducer was read without an error";
    } catch (const parry::IoError& e) {
      parry::testing::expect_public(e.what());
    }
  }
}

TEST(FuzzReproducers, TensorsThatReadPastTheirStorageAreFound) {
  // What LibTorch's unpickler builds from a mutated file: sizes beyond the
  // storage it loaded (set here without LibTorch's own checks).
  const auto past_storage = [] {
    torch::Tensor t = torch::zeros({4});
    t.unsafeGetTensorImpl()->set_sizes_and_strides(c10::IntArrayRef{100}, c10::IntArrayRef{1});
    return t;
  };
  const auto strided_past_storage = [] {
    torch::Tensor t = torch::zeros({2, 3});
    t.unsafeGetTensorImpl()->set_sizes_and_strides(c10::IntArrayRef{2, 3},
                                                   c10::IntArrayRef{4, 1});  // last element 7 of 6
    return t;
  };
  using parry::detail::tensor_storage_problem;
  EXPECT_EQ(tensor_storage_problem(c10::IValue(torch::zeros({2, 3}))), "");
  EXPECT_EQ(tensor_storage_problem(c10::IValue(torch::zeros({4, 4}).t())), "");          // a transposed view
  EXPECT_EQ(tensor_storage_problem(c10::IValue(torch::zeros({8}).slice(0, 4, 8))), "");  // an offset view
  EXPECT_EQ(tensor_storage_problem(c10::IValue(torch::zeros({0, 5}))), "");              // no elements
  EXPECT_NE(tensor_storage_problem(c10::IValue(past_storage())).find("reads past its storage"), std::string::npos);
  EXPECT_NE(tensor_storage_problem(c10::IValue(strided_past_storage())), "");
  // Found inside containers too.
  c10::impl::GenericList list(c10::AnyType::get());
  list.push_back(c10::IValue(torch::zeros({1})));
  c10::impl::GenericList inner(c10::AnyType::get());
  inner.push_back(c10::IValue(1));
  inner.push_back(c10::IValue(past_storage()));
  list.push_back(c10::IValue(inner));
  EXPECT_NE(tensor_storage_problem(c10::IValue(list)), "");
  c10::impl::GenericDict dict(c10::StringType::get(), c10::AnyType::get());
  dict.insert("fine", torch::zeros({3}));
  EXPECT_EQ(tensor_storage_problem(c10::IValue(dict)), "");
  dict.insert("bad", c10::IValue(c10::ivalue::Tuple::create({c10::IValue(strided_past_storage())})));
  EXPECT_NE(tensor_storage_problem(c10::IValue(dict)), "");
}

TEST(FuzzReproducers, StoragesLargerThanTheirRecordAreRefusedBeforeLibTorchReadsThem) {
  // An archive holding one 48-byte tensor, its declared numel then raised in
  // place (BININT1 48 -> 200; LibTorch checks no CRC), as the fuzzer's
  // mutated checkpoint did: LibTorch would make a 200-byte storage around the
  // 48-byte record.
  parry::testing::TempDir dir;
  const std::string path = dir.file("archive");
  {
    torch::serialize::OutputArchive archive;
    archive.write("state", torch::arange(48, torch::kUInt8));
    archive.save_to(path);
  }
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(parry::detail::output_archive_problem(bytes), "");
  const std::string declared = "K\x30tQ";  // BININT1 48, TUPLE, BINPERSID
  const auto at = std::search(bytes.begin(), bytes.end(), declared.begin(), declared.end());
  ASSERT_NE(at, bytes.end()) << "the persistent id of the tensor was not found";
  at[1] = static_cast<char>(200);
  const std::string problem = parry::detail::output_archive_problem(bytes);
  EXPECT_NE(problem.find("a storage of 200 bytes in record"), std::string::npos) << problem;
  EXPECT_NE(problem.find("of 48 bytes"), std::string::npos) << problem;
  // The checkpoint the fuzzer found declares 2,197 bytes for a 48-byte record.
  const auto files = reproducers("fuzz_saved_state-tensor-past-its-storage");
  ASSERT_EQ(files.size(), 1u);
  std::ifstream reproducer(files[0], std::ios::binary);
  std::vector<char> found((std::istreambuf_iterator<char>(reproducer)), std::istreambuf_iterator<char>());
  found.erase(found.begin());  // the first byte picks the reader
  EXPECT_NE(parry::detail::output_archive_problem(found).find("a storage of 2197 bytes"), std::string::npos);
}
