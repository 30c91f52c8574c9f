#!/usr/bin/env bash
# Packaging test, run by ctest.
#   run.sh find_package      SOURCE BUILD WORK: install BUILD into WORK/prefix,
#                            then build and run the consumer with find_package
#   run.sh add_subdirectory  SOURCE BUILD WORK: build the consumer with Parry
#                            added from SOURCE by add_subdirectory
#   run.sh examples          SOURCE BUILD WORK: install BUILD into WORK/prefix,
#                            build every program in examples/ against it, run each
set -euo pipefail
mode=$1 source_dir=$2 build_dir=$3 work=$4
rm -rf "$work"
mkdir -p "$work"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
case "$mode" in
  find_package)
    cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
    test -f "$work/prefix/lib/cmake/Parry/ParryConfig.cmake"
    test -f "$work/prefix/lib/cmake/Parry/ParryConfigVersion.cmake"
    test -f "$work/prefix/include/parry/parry.hpp"
    cmake -S "$source_dir/tests/package/consumer" -B "$work/build" "${generator[@]}" "${launcher[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix"
    ;;
  add_subdirectory)
    # The consumer compiles all of Parry a second time. As a unity build (16
    # sources per translation unit, as scripts/sanitize.sh builds) that takes
    # a fraction of the time (LibTorch's headers dominate each unit); the
    # main build compiles every source on its own.
    cmake -S "$source_dir/tests/package/consumer" -B "$work/build" "${generator[@]}" "${launcher[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DPARRY_SOURCE_DIR="$source_dir" \
      -DCMAKE_UNITY_BUILD=OFF -DPARRY_UNITY_BUILD_BATCH=16
    # Parry is not the top-level project here: its tests and apps stay off.
    if grep -q "parry_tests" "$work/build/build.ninja" 2>/dev/null; then
      echo "Parry's tests were configured inside a consumer project" >&2
      exit 1
    fi
    ;;
  examples)
    # Every example program, built against the install tree and run on tiny inputs.
    cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
    cmake -S "$source_dir/examples" -B "$work/build" "${generator[@]}" "${launcher[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$work/prefix"
    cmake --build "$work/build" -j 2
    model="$source_dir/tests/fixtures/reference_cnn.pt"
    "$work/build/preprocessing/parry_example_preprocessing" "$model" 40
    "$work/build/detection/parry_example_detection" "$model" 30
    "$work/build/concealment/parry_example_concealment" "$model"
    if [ -x "$work/build/training/parry_example_training" ]; then
      "$work/build/training/parry_example_training" "$model" 256
    fi
    "$work/build/defended_server/defended_server" --help >/dev/null
    exit 0
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
cmake --build "$work/build" -j 2
"$work/build/consumer"
