#!/usr/bin/env bash
# Builds the unit tests under a sanitizer in build-<name>/ and runs them.
#   scripts/sanitize.sh thread [gtest filter]   ThreadSanitizer: the concurrency tests
# LibTorch and OpenMP are not instrumented: the tests run with one intra-op
# thread (PARRY_TEST_THREADS=1), so every thread TSan sees is one the test started.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind=${1:?usage: sanitize.sh thread [gtest-filter]}
case "$kind" in
  thread)
    flags="-fsanitize=thread -fno-omit-frame-pointer -g1"
    filter=${2:-"*Concurren*:*Threads*:*Calibration*:*FailingGate*"}
    ;;
  *) echo "unknown sanitizer '$kind' (thread)" >&2; exit 2 ;;
esac
"$root/scripts/install-deps.sh"
build_dir="$root/build-$kind"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" \
  -DPARRY_BUILD_APPS=OFF -DPARRY_BUILD_BENCHMARKS=OFF -DPARRY_BUILD_EXAMPLES=OFF -DPARRY_INSTALL=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=$kind" >/dev/null
cmake --build "$build_dir" -j 2 --target parry_tests
# No suppressions: with one intra-op thread nothing is reported (measured), and
# with OpenMP workers TSan reports their uninstrumented hand-offs as races.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
export OMP_NUM_THREADS=1 PARRY_TEST_THREADS=1
"$build_dir/tests/parry_tests" --gtest_filter="$filter"
