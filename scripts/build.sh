#!/usr/bin/env bash
# Installs missing Debian packages, then configures and builds Parry in build/.
# Usage: scripts/build.sh [--target NAME]... [extra cmake -D options]
#   --target NAME  builds only NAME and what it needs (repeatable; default: everything,
#                  tests, benchmarks and examples included)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
targets=()
while [ $# -ge 2 ] && [ "$1" = --target ]; do
  targets+=(--target "$2")
  shift 2
done
"$root/scripts/install-deps.sh"
source "$root/scripts/ccache-env.sh"
build_dir="${PARRY_BUILD_DIR:-$root/build}"
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@"
cmake --build "$build_dir" -j 2 "${targets[@]}"
