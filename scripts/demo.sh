#!/usr/bin/env bash
# The README's main job: installs missing packages, builds Parry and runs
# `parry demo` (trains and caches the reference model on first run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh"
exec "${PARRY_BUILD_DIR:-$root/build}/apps/parry/parry" demo "$@"
