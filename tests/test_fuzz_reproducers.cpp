// Replays every input the fuzzers found a crash with (tests/fuzz/crashes/,
// committed with the fix) through the same reader, in the normal build: each
// must now be refused with a parry::Error and nothing else.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "fuzz/saved_state_readers.hpp"
#include "test_support.hpp"

namespace {

// The reproducers of one fuzz target, "<target>-<what>".
std::vector<std::filesystem::path> reproducers(const std::string& target) {
  std::vector<std::filesystem::path> out;
  for (const auto& entry : std::filesystem::directory_iterator(PARRY_TEST_FIXTURES "/../fuzz/crashes")) {
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
