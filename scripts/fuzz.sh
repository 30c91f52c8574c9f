#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang-14 in build-fuzz/ and
# runs each on its committed seed corpus (tests/fuzz/corpus/<target>, read
# only) plus a working corpus in build-fuzz/corpus/<target>.
#   scripts/fuzz.sh [seconds per target (default 30)] [target ...]
#   scripts/fuzz.sh build        configure and build the targets, run nothing
# PARRY_FUZZ_RUNS=N also stops each target after N executions (the long runs of
# docs/reliability.md: PARRY_FUZZ_RUNS=1000000 scripts/fuzz.sh 1800 TARGET).
# PARRY_FUZZ_SEED=N fixes libFuzzer's random seed (CI: the same mutations on
# every run, so a new finding comes from a change, not from luck).
# Prints, per target, the executions, executions per second, the coverage
# reached (libFuzzer's "cov" edges and "ft" features), the size of the working
# corpus and the outcome; exits non-zero on any crash, leak or timeout (the
# reproducer is left in build-fuzz/findings/<target>/). Parry is built as a
# unity build (16 sources per translation unit), as for sanitize.sh; the same
# build directory also builds parry_tests (scripts/sanitize.sh ci).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_only=0
if [ "${1:-}" = build ]; then
  build_only=1
  shift
fi
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_image fuzz_idx fuzz_tensor_file fuzz_config fuzz_saved_state fuzz_http)
fi
runs=()
if [ -n "${PARRY_FUZZ_RUNS:-}" ]; then runs=(-runs="$PARRY_FUZZ_RUNS"); fi
if [ -n "${PARRY_FUZZ_SEED:-}" ]; then runs+=(-seed="$PARRY_FUZZ_SEED"); fi
"$root/scripts/install-deps.sh"
source "$root/scripts/ccache-env.sh"
build_dir="$root/build-fuzz"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "${launcher[@]}" -DCMAKE_UNITY_BUILD=OFF -DPARRY_UNITY_BUILD_BATCH=16 -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON -DPARRY_FUZZ=ON -DPARRY_BUILD_TESTS=ON -DPARRY_BUILD_APPS=OFF -DPARRY_BUILD_BENCHMARKS=OFF \
  -DPARRY_BUILD_EXAMPLES=OFF -DPARRY_INSTALL=OFF >/dev/null
cmake --build "$build_dir" -j 2 --target "${targets[@]}"
if [ $build_only = 1 ]; then exit 0; fi
# fast_unwind_on_malloc=0: LibTorch has no frame pointers, so the fast
# unwinder stops at its first frame and a suppression naming a LibTorch
# function could never match. Slower allocations, but exact leak stacks.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:fast_unwind_on_malloc=0"
# Leaks inside LibTorch itself, each justified in the file.
export LSAN_OPTIONS="suppressions=$root/tests/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
# Targets run PARRY_FUZZ_JOBS at a time (default 2, one per core; each fuzzer is
# one process with one intra-op thread), and are reported in the order given.
jobs=${PARRY_FUZZ_JOBS:-2}
fuzz_one() {
  local target=$1
  local corpus="$build_dir/corpus/$target" findings="$build_dir/findings/$target"
  mkdir -p "$corpus" "$findings"
  local dict=()
  if [ -f "$root/tests/fuzz/$target.dict" ]; then dict=(-dict="$root/tests/fuzz/$target.dict"); fi
  local code=0
  "$build_dir/tests/fuzz/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    "${runs[@]}" -artifact_prefix="$findings/" "${dict[@]}" "$corpus" "$root/tests/fuzz/corpus/$target" \
    >"$build_dir/$target.log" 2>&1 || code=$?
  echo "$code" >"$build_dir/$target.exit"
}
for target in "${targets[@]}"; do
  rm -f "$build_dir/$target.exit"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  fuzz_one "$target" &
done
wait
status=0
printf '%-18s %12s %8s %8s %8s %8s  %s\n' target executions exec/s cov ft corpus outcome
for target in "${targets[@]}"; do
  log="$build_dir/$target.log"
  findings="$build_dir/findings/$target"
  code=$(cat "$build_dir/$target.exit" 2>/dev/null || echo "?")
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  features=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  units=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  outcome="ok"
  if [ "$code" != 0 ]; then
    outcome="FAILED (exit $code; log $log, reproducer in $findings/)"
    status=1
  fi
  printf '%-18s %12s %8s %8s %8s %8s  %s\n' "$target" "${executions:-?}" "${speed:-?}" "${coverage:-?}" \
    "${features:-?}" "${units:-?}" "$outcome"
done
exit $status
