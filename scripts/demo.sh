#!/usr/bin/env bash
# The README's main job: installs missing packages, builds the `parry` command
# line (only it and the libraries it links: no tests, benchmarks or examples)
# and runs `parry demo` (trains and caches the reference model on first run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh" --target parry_cli
exec "${PARRY_BUILD_DIR:-$root/build}/apps/parry/parry" demo "$@"
