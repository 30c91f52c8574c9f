#!/usr/bin/env bash
# Drives every `parry` subcommand on tiny inputs: exit codes, help texts, bad
# arguments, files written and their consistency.
# Usage: run.sh <parry binary> <source dir> <work dir>
set -euo pipefail
parry="$1"; src="$2"; work="$3"
model="$src/tests/fixtures/reference_cnn.pt"
python=/usr/bin/python3
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

# Help for the program and every subcommand.
"$parry" --help | grep -q "Subcommands" || fail "--help lists no subcommands"
for cmd in train eval calibrate predict demo serve keys; do
  "$parry" "$cmd" --help >/dev/null || fail "$cmd --help"
done

# OpenMP workers sleep rather than spin while they wait, unless the user chose
# otherwise: what libgomp itself saw when it loaded (OMP_DISPLAY_ENV).
env -u OMP_WAIT_POLICY OMP_DISPLAY_ENV=true "$parry" components >/dev/null 2>omp.txt
grep -q "OMP_WAIT_POLICY = 'PASSIVE'" omp.txt || { cat omp.txt; fail "libgomp did not start with OMP_WAIT_POLICY=PASSIVE"; }
OMP_WAIT_POLICY=ACTIVE OMP_DISPLAY_ENV=true "$parry" components >/dev/null 2>omp.txt
grep -q "OMP_WAIT_POLICY = 'ACTIVE'" omp.txt || { cat omp.txt; fail "the user's OMP_WAIT_POLICY=ACTIVE was replaced"; }

# Bad arguments: a clear message and a non-zero exit.
expect_error() {  # expect_error <text the message must contain> <args...>
  local want="$1"; shift
  if "$parry" "$@" >out.txt 2>err.txt; then fail "parry $* succeeded"; fi
  grep -q -- "$want" err.txt out.txt || { cat err.txt; fail "parry $*: no '$want' in the message"; }
}
expect_error "required" eval --config x.json
expect_error "model file not found" eval --model missing.pt --config x.json
expect_error "configuration file not found" eval --model "$model" --config missing.json
printf '{"defenses": [{"name": "a", "preprocess": [{"type": "bit_depth", "bits": 12}]}]}' >bad.json
expect_error "defenses\[0\].preprocess\[0\].bits: must be in 1..8" eval --model "$model" --config bad.json
expect_error "not in range" eval --model "$model" --config bad.json --images many
expect_error "subcommand" frobnicate

# A tiny config: calibrate, evaluate, predict.
cat >config.json <<'JSON'
{"evaluation": {"images": 12, "epsilons": [0.1], "calibration_images": 50, "latency_repeats": 2,
                "black_box": {"images": 3, "square_queries": 100, "hop_skip_jump_queries": 200}},
 "attacks": [{"type": "fgsm"}],
 "defenses": [{"name": "undefended"},
              {"name": "guarded", "preprocess": [{"type": "bit_depth", "bits": 4}],
               "detectors": [{"type": "kernel_density", "fit_images": 200}, {"type": "softmax_confidence"}],
               "output": {"policy": "label_only"}}]}
JSON
"$parry" calibrate --model "$model" --config config.json >calibrate.txt
test -f config.json.state/guarded-0-kernel_density.pt || fail "calibrate saved no kernel density"
test -f config.json.state/guarded-1-softmax_confidence.pt || fail "calibrate saved no softmax detector"

"$parry" eval --model "$model" --config config.json --out report --images 10 >eval.txt 2>eval.err
grep -q "using calibrated detectors" eval.err || fail "eval ignored the calibrated detectors"
for f in report.html report.md metrics.json accuracy_vs_epsilon.png roc.png examples.png latency.png; do
  test -s "report/$f" || fail "report/$f missing"
done
"$python" - report <<'PY'
import json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/metrics.json"))
md = open(f"{d}/report.md").read()
assert m["images"] == 10, m["images"]
assert [x["name"] for x in m["defenses"]] == ["undefended", "guarded"]
def cell(x, key):  # "88.7% (82.6–92.8)": a rate with its 95% Wilson interval
    ci = x[key + "_ci"]
    assert ci["low"] <= x[key] <= ci["high"] and ci["n"] == x["images"], (key, x[key], ci)
    return f'{100 * x[key]:.1f}% ({100 * ci["low"]:.1f}–{100 * ci["high"]:.1f})'
assert "Wilson score interval" in md
for x in m["defenses"]:
    row = f'| {x["name"]} | {x["images"]} | {cell(x, "clean_accuracy")} | {cell(x, "clean_flagged")} |'
    assert row in md, row
    for a in x["attacks"]:
        assert 0 <= a["adaptive_accuracy"] <= a["accuracy"] + 1e-9 or x["detectors"], a
for p in ["accuracy_vs_epsilon.png", "roc.png", "examples.png", "latency.png"]:
    assert open(f"{d}/{p}", "rb").read(8) == b"\x89PNG\r\n\x1a\n", p
print("report consistent")
PY

# predict: a PNG and an IDX file made from test images.
"$python" - <<'PY'
import gzip, struct, zlib
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
images = [raw[16 + i * 784: 16 + (i + 1) * 784] for i in range(3)]
with gzip.open("three-idx3-ubyte.gz", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 3, 28, 28) + b"".join(images))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\x00" + images[0][r * 28:(r + 1) * 28] for r in range(28))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open("boot.png", "wb").write(png)
open("broken.png", "wb").write(png[:40])
PY
"$parry" predict --model "$model" --config config.json --defense guarded boot.png three-idx3-ubyte.gz >predict.txt
grep -q "boot.png: Ankle boot (9)" predict.txt || { cat predict.txt; fail "predict: the boot was not recognised"; }
test "$(grep -c 'three-idx3-ubyte.gz' predict.txt)" -eq 3 || { cat predict.txt; fail "predict: not 3 IDX answers"; }
if grep -q "score\|0\.[0-9]" predict.txt; then fail "predict revealed scores under label_only"; fi
if "$parry" predict --model "$model" --input 1x28x28 broken.png >out.txt 2>err.txt; then fail "a broken PNG was accepted"; fi
grep -q "broken.png: " err.txt || fail "no message for the broken PNG"
if grep -q "/" <(sed 's/^broken.png: //' err.txt); then fail "the public message leaks a path"; fi
if "$parry" predict --model "$model" boot.png >out.txt 2>err.txt; then fail "predict guessed an input shape"; fi
grep -q "\-\-input" err.txt || fail "no hint to give --input"

# train: a few steps on a small subset.
"$parry" train --out tiny.pt --epochs 1 --limit 256 >train.txt 2>&1
test -s tiny.pt || fail "train saved nothing"
grep -q "test accuracy" train.txt || fail "train printed no accuracy"
"$parry" train --method distilled --temperature 20 --out distilled.pt --epochs 1 --limit 256 >train.txt 2>&1 ||
  { cat train.txt; fail "distilled training failed"; }
grep -q "student agrees with the teacher" train.txt || fail "distillation printed no agreement"
"$parry" eval --model distilled.pt --config config.json --out distilled-report --images 8 >/dev/null 2>&1 ||
  fail "the distilled model does not load as a normal model"
"$parry" train --method adversarial --attack pgd --steps 2 --out robust.pt --epochs 1 --limit 256 \
  --checkpoint-dir ckpt >train.txt 2>&1 || { cat train.txt; fail "adversarial training failed"; }
test -s robust.pt && test -s ckpt/checkpoint.pt || fail "adversarial training saved no model or checkpoint"
grep -q "PGD" train.txt || { cat train.txt; fail "adversarial training reported no PGD accuracy"; }
# train --model: the user's TorchScript model, saved as TorchScript that Python reads back.
"$parry" train --model "$src/tests/fixtures/tiny_cnn.pt" --out tiny_trained.pt --epochs 1 --limit 2000 \
  --no-augment >train.txt 2>&1 || { cat train.txt; fail "training a TorchScript model failed"; }
accuracy=$(sed -n 's/^test accuracy: \([0-9.]*\)% on 10000 images.*/\1/p' train.txt)
test -n "$accuracy" || { cat train.txt; fail "train --model printed no test accuracy"; }
"$python" - "$src/tests/fixtures/tiny_cnn.pt" tiny_trained.pt "$accuracy" <<'PY'
import gzip, sys
import numpy as np
import torch
original, trained = torch.jit.load(sys.argv[1]), torch.jit.load(sys.argv[2])
changed = [n for (n, a), (_, b) in zip(original.named_parameters(), trained.named_parameters()) if not torch.equal(a, b)]
assert changed, "no parameter was trained"
assert hasattr(trained, "features") and hasattr(trained, "head"), "the exported methods were lost"
raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()[16:]
labels = np.frombuffer(gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").read()[8:], np.uint8)
x = torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(-1, 1, 28, 28).astype(np.float32) / 255)
trained.eval()
with torch.no_grad():
    accuracy = 100 * (trained(x).argmax(1).numpy() == labels).mean()
assert abs(accuracy - float(sys.argv[3])) < 0.011, (accuracy, sys.argv[3])
print(f"python reads the trained TorchScript model: {accuracy:.2f}% (parry printed {sys.argv[3]}%)")
PY
for method in adversarial distilled; do
  "$parry" train --model "$src/tests/fixtures/tiny_cnn.pt" --method "$method" --steps 1 --out "ts-$method.pt" \
    --epochs 1 --limit 256 >train.txt 2>&1 || { cat train.txt; fail "$method training of a TorchScript model"; }
  "$python" -c "import sys, torch; m = torch.jit.load(sys.argv[1]); assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)" \
    "ts-$method.pt" || fail "Python cannot load the $method TorchScript model"
done
# A wider reference CNN (--width 2, docs/training.md): trained adversarially, saved, and loaded again by
# predict without being told its width; --width and --dropout do not apply to a TorchScript --model.
"$parry" train --method adversarial --width 2 --dropout 0 --steps 1 --out wide.pt --epochs 1 --limit 256 >train.txt 2>&1 ||
  { cat train.txt; fail "adversarial training of a width-2 reference CNN"; }
grep -q "a new reference CNN: width 2, dropout 0$" train.txt || { cat train.txt; fail "--width 2 --dropout 0 not applied"; }
"$parry" predict --model wide.pt --input 1x28x28 boot.png >predict.txt 2>&1 || { cat predict.txt; fail "predict could not load wide.pt"; }
grep -q "boot.png: " predict.txt || { cat predict.txt; fail "predict with wide.pt gave no answer"; }
expect_error "--width applies to a new reference CNN" train --model "$src/tests/fixtures/tiny_cnn.pt" --width 2 \
  --out x.pt --epochs 1 --limit 8
expect_error "width" train --width 0 --out x.pt --epochs 1
expect_error "--dropout applies to a new reference CNN" train --model "$src/tests/fixtures/tiny_cnn.pt" --dropout 0 \
  --out x.pt --epochs 1 --limit 8
expect_error "--dropout: must be in \[0, 1), but got 1" train --dropout 1 --out x.pt --epochs 1
expect_error "--dropout: must be in \[0, 1), but got -0.1" train --dropout=-0.1 --out x.pt --epochs 1
# Randomized smoothing: Gaussian training, then the certified rows of the report (docs/certified.md).
"$parry" train --method gaussian --sigma 0.25 --out noisy.pt --epochs 1 --limit 512 >train.txt 2>&1 ||
  { cat train.txt; fail "gaussian training failed"; }
grep -q "with Gaussian noise at sigma 0.25" train.txt || { cat train.txt; fail "gaussian training did not say so"; }
cat >certified.json <<'JSON'
{"evaluation": {"images": 4, "epsilons": [0.1], "calibration_images": 20, "latency_repeats": 1,
                "black_box": {"images": 0},
                "certified": {"images": 6, "n0": 20, "n": 300, "noise_batch": 160, "radii": [0, 0.25],
                              "attack_images": 2, "attack_steps": 2, "attack_samples": 2, "predict_n": 50}},
 "attacks": [{"type": "fgsm"}],
 "defenses": [{"name": "undefended"}]}
JSON
"$parry" eval --model noisy.pt --config certified.json --certify-sigma 0.25 --certify-sigma 0.5 --out certified \
  >eval.txt 2>eval.err || { cat eval.txt eval.err; fail "eval with certification failed"; }
grep -q "Randomized smoothing" eval.txt || { cat eval.txt; fail "eval printed no certified table"; }
test -s certified/certified_accuracy.png || fail "no certified_accuracy.png"
"$python" - certified/metrics.json <<'PY' || fail "metrics.json lacks the certified rows"
import json, sys
rows = json.load(open(sys.argv[1]))["certified"]
assert [r["sigma"] for r in rows] == [0.25, 0.5], rows
for r in rows:
    assert r["images"] == 6 and r["n"] == 300 and r["radii"] == [0, 0.25]
    assert len(r["certified_accuracy"]) == 2 and len(r["empirical_accuracy"]) == 2
    # Certified accuracy cannot grow with the radius, and no radius exceeds sigma * Phi^-1(alpha^(1/n)).
    assert r["certified_accuracy"][0] >= r["certified_accuracy"][1]
    assert max(r["correct_radius"]) <= r["sigma"] * 1.99977 + 1e-9, r["correct_radius"]
print("certified rows:", [(r["sigma"], r["certified_accuracy"], r["abstention_rate"]) for r in rows])
PY
if "$parry" eval --model noisy.pt --config certified.json --certify-sigma -1 >out.txt 2>&1; then
  fail "a negative sigma was accepted"
fi
if "$parry" --data "$src/tests/fixtures/tensors_rgb.pt" train --out x.pt >out.txt 2>&1; then
  fail "trained without a training split"
fi
grep -q "training split" out.txt || { cat out.txt; fail "no hint about the missing training split"; }
if "$parry" train --method adversarial --epsilon 2 --out x.pt >out.txt 2>&1; then fail "epsilon 2 was accepted"; fi
if "$parry" train --method magic --out x.pt >out.txt 2>&1; then fail "an unknown method was accepted"; fi
echo "cli: all subcommands passed"
