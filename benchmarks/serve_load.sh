#!/usr/bin/env bash
# parry serve under load: 8 concurrent loopback clients (wrk, Debian's `wrk`)
# POSTing one Fashion-MNIST test image as PNG to /v1/predict, against the same
# model and config called in-process (parry_serve_inprocess).
#   benchmarks/serve_load.sh [BUILD_DIR=build] [SECONDS=20]
# Figures: docs/benchmarks.md, "parry serve under load".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
seconds="${2:-20}"
parry="$build/apps/parry/parry"
model="$root/tests/fixtures/reference_cnn.pt"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
command -v wrk >/dev/null || { echo "install Debian's wrk (scripts/debian-packages.txt)" >&2; exit 1; }

# The served defense: a throttle that never binds (its cost is measured, not
# its limit) and label-only answers.
cat >"$work/config.json" <<'JSON'
{"defenses": [{"name": "served",
               "gates": [{"type": "throttle", "rate": 1000000, "burst": 1000000}],
               "output": {"policy": "label_only"}}]}
JSON
/usr/bin/python3 - "$work/image.png" <<'PY'
import gzip, sys
from PIL import Image
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    pixels = f.read()[16:16 + 784]
Image.frombytes("L", (28, 28), pixels).save(sys.argv[1], format="PNG")
PY
key="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$key" | "$parry" keys --client bench >"$work/keys.txt"
cat >"$work/post.lua" <<LUA
local f = io.open("$work/image.png", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
wrk.headers["X-Api-Key"] = "$key"
LUA

echo "== in-process (8 threads, 1 LibTorch thread)"
"$build/benchmarks/parry_serve_inprocess" "$model" "$work/config.json" "$work/image.png" 8 500 1

"$parry" --threads 1 serve --model "$model" --config "$work/config.json" --input 1x28x28 --api-keys "$work/keys.txt" \
  --port 0 --workers 8 >"$work/out.txt" 2>"$work/err.txt" &
server=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out.txt" 2>/dev/null && break; sleep 0.1; done
address="$(sed -n 's/^listening on //p' "$work/out.txt")"
echo "== parry serve on $address (8 workers, 1 LibTorch thread), wrk: 2 threads, 8 connections, ${seconds} s"
wrk -t2 -c8 -d"${seconds}s" --latency -s "$work/post.lua" "http://$address/v1/predict"
curl -s "http://$address/metrics" | grep -E '^parry_requests_total|^parry_request_seconds_(count|sum)' || true
kill -TERM "$server"
wait "$server"
