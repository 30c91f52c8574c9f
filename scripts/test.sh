#!/usr/bin/env bash
# The README's test command: installs missing packages, builds everything and
# runs the whole test suite with ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh"
source "$root/scripts/ccache-env.sh"
cd "${PARRY_BUILD_DIR:-$root/build}"
# Two test processes share the two cores: OpenMP threads that wait passively
# instead of spinning (libgomp reads this when it loads, before main).
export OMP_WAIT_POLICY=PASSIVE
ctest --output-on-failure -j 2 --timeout 1800
