// Test entry point: the same runtime settings as the parry command line.
#include <gtest/gtest.h>

#include "parry/core/runtime.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  parry::configure_runtime(parry::RuntimeOptions().threads(2));
  return RUN_ALL_TESTS();
}
