// Where the tests find their committed fixtures.
#pragma once

#include <string>

namespace parry::testing {

/// The folder of committed test fixtures (tests/fixtures of the checkout that
/// was built). Only test_paths.cpp is compiled with the checkout's absolute
/// path, so that no other translation unit's flags name the checkout and the
/// compiler cache can reuse them from a clone in another folder (CI).
const std::string& fixtures_dir();

/// The path of the fixture `name` (a file name or a path relative to
/// tests/fixtures).
std::string fixture_path(const std::string& name);

}  // namespace parry::testing
