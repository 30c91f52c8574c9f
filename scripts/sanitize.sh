#!/usr/bin/env bash
# Builds the unit tests under a sanitizer in build-asan/ or build-tsan/ and runs them.
#   scripts/sanitize.sh address [gtest filter]  AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer):
#                                               the whole gtest suite
#   scripts/sanitize.sh thread [gtest filter]   ThreadSanitizer: the concurrency tests
# Only parry_tests is built (no CLI, benchmarks or examples), as a unity build
# (16 sources per translation unit: LibTorch's headers dominate the compile
# time). LibTorch and OpenMP are not instrumented: under TSan the tests run with
# one intra-op thread (PARRY_TEST_THREADS=1), so every thread TSan sees is one
# the test started.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind=${1:?usage: sanitize.sh address|thread [gtest-filter]}
case "$kind" in
  address)
    sanitizers="address,undefined"
    filter=${2:-"*"}
    ;;
  thread)
    sanitizers="thread"
    filter=${2:-"*Concurren*:*Threads*:*Calibration*:*FailingGate*"}
    ;;
  *) echo "unknown sanitizer '$kind' (address or thread)" >&2; exit 2 ;;
esac
"$root/scripts/install-deps.sh"
build_dir="$root/build-${kind:0:1}san"  # build-asan or build-tsan
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" \
  -DPARRY_SANITIZE="$sanitizers" -DCMAKE_UNITY_BUILD=ON -DCMAKE_UNITY_BUILD_BATCH_SIZE=16 \
  -DPARRY_BUILD_APPS=OFF -DPARRY_BUILD_BENCHMARKS=OFF -DPARRY_BUILD_EXAMPLES=OFF -DPARRY_INSTALL=OFF >/dev/null
cmake --build "$build_dir" -j 2 --target parry_tests
export OMP_WAIT_POLICY=PASSIVE
if [ "$kind" = address ]; then
  # No suppressions: the whole suite runs clean (docs/reliability.md).
  export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
else
  # No suppressions: with one intra-op thread nothing is reported (measured), and
  # with OpenMP workers TSan reports their uninstrumented hand-offs as races.
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
  export OMP_NUM_THREADS=1 PARRY_TEST_THREADS=1
fi
"$build_dir/tests/parry_tests" --gtest_brief=1 --gtest_filter="$filter"
