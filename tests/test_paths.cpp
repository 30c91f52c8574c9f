#include "test_paths.hpp"

#ifndef PARRY_TEST_FIXTURES
#error "tests/CMakeLists.txt defines PARRY_TEST_FIXTURES for this file"
#endif

namespace parry::testing {

const std::string& fixtures_dir() {
  static const std::string dir = PARRY_TEST_FIXTURES;
  return dir;
}

std::string fixture_path(const std::string& name) { return fixtures_dir() + "/" + name; }

}  // namespace parry::testing
