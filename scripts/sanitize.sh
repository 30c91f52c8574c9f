#!/usr/bin/env bash
# Builds the unit tests under a sanitizer in build-asan/ or build-tsan/ and runs them.
#   scripts/sanitize.sh address [gtest filter]  AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer):
#                                               the whole gtest suite
#   scripts/sanitize.sh thread [gtest filter]   ThreadSanitizer: the concurrency tests
#   scripts/sanitize.sh ci [fuzz seconds]       CI's sanitizer step: ONE clang-14 build (build-fuzz/, ASan +
#                                               UBSan + libFuzzer's coverage instrumentation) gives both the
#                                               whole gtest suite under ASan+UBSan+LSan and the fuzz targets;
#                                               runs the suite (two shards, one per core), then each
#                                               fuzz target for 30 s (default; libFuzzer seed 1,
#                                               PARRY_FUZZ_SEED overrides it) on its committed
#                                               corpus, two at a time (scripts/fuzz.sh). Prints
#                                               each phase's time.
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
  ci)
    filter="*"
    fuzz_seconds=${2:-30}
    ;;
  *) echo "unknown sanitizer '$kind' (address, thread or ci)" >&2; exit 2 ;;
esac
"$root/scripts/install-deps.sh"
source "$root/scripts/ccache-env.sh"
asan_options="abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1"
ubsan_options="print_stacktrace=1:halt_on_error=1"
if [ "$kind" = ci ]; then
  begin=$(date +%s)
  phase() { echo "sanitize.sh ci: $1 at $(($(date +%s) - begin)) s"; }
  "$root/scripts/fuzz.sh" build  # configures build-fuzz/ (clang-14, tests on) and builds the fuzz targets
  phase "fuzz targets built"
  cmake --build "$root/build-fuzz" -j 2 --target parry_tests
  phase "parry_tests built"
  export OMP_WAIT_POLICY=PASSIVE ASAN_OPTIONS="$asan_options" UBSAN_OPTIONS="$ubsan_options"
  export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
  # Two shards (gtest's GTEST_TOTAL_SHARDS), one per core, each with one
  # intra-op thread: most tests are serial (SeededTest uses one thread), so one
  # process would leave a core idle for most of the suite.
  export OMP_NUM_THREADS=1 PARRY_TEST_THREADS=1
  shard_failed=0
  pids=()
  for shard in 0 1; do
    GTEST_TOTAL_SHARDS=2 GTEST_SHARD_INDEX=$shard "$root/build-fuzz/tests/parry_tests" --gtest_brief=1 \
      --gtest_filter="$filter" >"$root/build-fuzz/suite-shard-$shard.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || shard_failed=1
  done
  for shard in 0 1; do
    echo "--- ASan+UBSan suite, shard $((shard + 1)) of 2"
    cat "$root/build-fuzz/suite-shard-$shard.log"
  done
  if [ $shard_failed = 1 ]; then
    echo "sanitize.sh ci: the suite failed under ASan+UBSan" >&2
    exit 1
  fi
  phase "suite passed"
  PARRY_FUZZ_SEED=${PARRY_FUZZ_SEED:-1} "$root/scripts/fuzz.sh" "$fuzz_seconds"
  phase "fuzz targets ran ${fuzz_seconds} s each"
  exit 0
fi
build_dir="$root/build-${kind:0:1}san"  # build-asan or build-tsan
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" \
  -DPARRY_SANITIZE="$sanitizers" -DCMAKE_UNITY_BUILD=OFF -DPARRY_UNITY_BUILD_BATCH=16 -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON \
  -DPARRY_BUILD_APPS=OFF -DPARRY_BUILD_BENCHMARKS=OFF -DPARRY_BUILD_EXAMPLES=OFF -DPARRY_INSTALL=OFF >/dev/null
cmake --build "$build_dir" -j 2 --target parry_tests
export OMP_WAIT_POLICY=PASSIVE
if [ "$kind" = address ]; then
  # No suppressions: the whole suite runs clean (docs/reliability.md).
  export ASAN_OPTIONS="$asan_options"
  export UBSAN_OPTIONS="$ubsan_options"
else
  # No suppressions: with one intra-op thread nothing is reported (measured), and
  # with OpenMP workers TSan reports their uninstrumented hand-offs as races.
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
  export OMP_NUM_THREADS=1 PARRY_TEST_THREADS=1
fi
"$build_dir/tests/parry_tests" --gtest_brief=1 --gtest_filter="$filter"
