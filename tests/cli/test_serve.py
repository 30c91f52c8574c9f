#!/usr/bin/python3
"""End-to-end test of `parry serve`, run by ctest (cli.serve).

Usage: test_serve.py PARRY_BINARY MODEL FASHION_MNIST_DIR WORK_DIR

Writes a small config and an API key file (with `parry keys`), checks the
start-up errors (no key file, uncalibrated detectors, a class count that does
not match the model), calibrates, starts `parry serve --port 0`, drives it over
HTTP (urllib), reads /metrics, stops it with SIGTERM and checks exit status 0.
Standard library only (PNG encoded by hand with zlib).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from support import check, fail, png_grey, test_images

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
INTERNAL_WORDS = ["/", "\\", ".pt", ".json", ".cpp", ".hpp", "torch", "c10", "aten", "1.13", "opencv", "eigen",
                  "exception", "std::", "httplib", "prometheus", "sha256", "alice", "state"]










def run(args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=300)


class Server:
    def __init__(self, args):
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on 127.0.0.1:"):
            self.process.kill()
            fail("server did not start: %r, stderr: %s" % (line, self.process.stderr.read()))
        self.url = "http://" + line[len("listening on "):]

    def request(self, path, body=None, headers=None, method="POST"):
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def predict(self, body, content_type, key):
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["X-Api-Key"] = key
        return self.request("/v1/predict", body, headers)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            fail("server did not stop within 30 s of SIGTERM")
        return self.process.returncode, out, err


def expect_generic_error(status, body, expected_status, reason, what):
    check(status == expected_status, "%s: expected HTTP %d, got %d (%s)" % (what, expected_status, status, body))
    doc = json.loads(body)
    check(set(doc) == {"error", "reason"}, "%s: error body has fields %s" % (what, sorted(doc)))
    check(doc["reason"] == reason, "%s: reason %r, expected %r" % (what, doc["reason"], reason))
    for word in INTERNAL_WORDS:
        check(word.lower() not in body.lower(), "%s: error body leaks %r: %s" % (what, word, body))


def metric(text, prefix):
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return None


def main():
    parry, model, data_dir, work = (os.path.abspath(a) for a in sys.argv[1:5])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chdir(work)
    images = test_images(data_dir, 40)

    config = {"evaluation": {"calibration_images": 50},
              "classes": CLASSES,
              "defenses": [{"name": "served",
                            "gates": [{"type": "throttle", "rate": 0.5, "burst": 25},
                                      {"type": "query_monitor", "action": "flag"}],
                            "preprocess": [{"type": "bit_depth", "bits": 6}],
                            "detectors": [{"type": "softmax_confidence", "target_fpr": 0.01}]}]}
    with open("config.json", "w") as f:
        json.dump(config, f)

    # API keys: `parry keys` prints the hashed line; the key itself is never stored.
    keys = {"alice": "alice-0123456789abcdef", "bob": "bob-fedcba9876543210", "hammer": "hammer-5555555555"}
    lines = []
    for client, key in keys.items():
        r = run([parry, "keys", "--client", client], stdin=key + "\n")
        check(r.returncode == 0 and r.stdout.startswith("sha256:"), "parry keys: %s %s" % (r.stdout, r.stderr))
        check(key not in r.stdout, "parry keys printed the key")
        lines.append(r.stdout.strip())
    with open("keys.txt", "w") as f:
        f.write("# test keys\n" + "\n".join(lines) + "\n")

    serve = [parry, "serve", "--model", model, "--config", "config.json", "--port", "0", "--workers", "4",
             "--max-body", "65536"]
    # Start-up errors: clear messages, exit 1.
    r = run(serve)
    check(r.returncode != 0 and "--api-keys" in r.stderr, "serve without keys: %d %s" % (r.returncode, r.stderr))
    r = run(serve + ["--api-keys", "keys.txt", "--no-auth"])
    check(r.returncode != 0 and "excludes" in r.stderr, "--api-keys with --no-auth: %s" % r.stderr)
    # Before calibration there is no recorded data shape: it is given by hand.
    r = run(serve + ["--api-keys", "keys.txt", "--input", "1x28x28"])
    check(r.returncode == 1 and "not calibrated" in r.stderr and "parry calibrate" in r.stderr,
          "uncalibrated detectors: %d %s" % (r.returncode, r.stderr))
    with open("bad-classes.json", "w") as f:
        json.dump({"classes": ["a", "b", "c"], "defenses": [{"name": "plain"}]}, f)
    r = run([parry, "serve", "--model", model, "--config", "bad-classes.json", "--no-auth", "--port", "0",
             "--input", "1x28x28"])
    check(r.returncode == 1 and "names 3 classes but the model outputs 10" in r.stderr,
          "class count mismatch: %d %s" % (r.returncode, r.stderr))
    with open("bad-keys.txt", "w") as f:
        f.write("# ok\nsha256:1234 alice\n")
    r = run(serve + ["--api-keys", "bad-keys.txt"])
    check(r.returncode == 1 and "line 2" in r.stderr, "bad key file: %d %s" % (r.returncode, r.stderr))

    r = run([parry, "--data", data_dir, "calibrate", "--model", model, "--config", "config.json"])
    check(r.returncode == 0, "calibrate: %s" % r.stderr)

    server = Server(serve + ["--api-keys", "keys.txt"])
    try:
        status, _, body = server.request("/healthz", method="GET")
        check(status == 200 and body == "ok", "healthz: %d %s" % (status, body))

        correct = 0
        for i in range(8):
            pixels, label = images[i]
            status, _, body = server.predict(png_grey(pixels, 28, 28), "image/png", keys["alice"])
            check(status == 200, "PNG %d: HTTP %d %s" % (i, status, body))
            doc = json.loads(body)
            check(set(doc) == {"label", "class", "verdict"}, "answer fields: %s" % body)
            check(doc["class"] == CLASSES[doc["label"]], "class name from the config: %s" % body)
            check(doc["verdict"] in ("accepted", "flagged"), "verdict: %s" % body)
            correct += doc["label"] == label
        check(correct >= 6, "only %d of 8 test images classified correctly" % correct)

        # JSON pixels of an image seen before, from another key: same label, flagged by the monitor.
        pixels, label = images[0]
        status, _, body = server.predict(json.dumps({"pixels": [p / 255.0 for p in pixels]}).encode(),
                                         "application/json", keys["bob"])
        check(status == 200, "JSON: HTTP %d %s" % (status, body))
        doc = json.loads(body)
        check(doc["verdict"] == "flagged", "a repeated image from another key: %s" % body)

        png = png_grey(images[1][0], 28, 28)
        status, _, body = server.predict(png, "image/png", None)
        expect_generic_error(status, body, 401, "unauthorized", "no key")
        status, _, body = server.predict(png, "image/png", "not-a-known-key")
        expect_generic_error(status, body, 401, "unauthorized", "unknown key")
        for payload, ctype, what in [(b"not an image", "image/png", "garbage PNG"),
                                     (png[:40], "image/png", "truncated PNG"),
                                     (b"{\"pixels\": [1, 2]}", "application/json", "short pixel list"),
                                     (b"{nope", "application/json", "malformed JSON")]:
            status, _, body = server.predict(payload, ctype, keys["bob"])
            expect_generic_error(status, body, 400, "invalid_input", what)
        status, _, body = server.predict(b"hello", "text/plain", keys["bob"])
        expect_generic_error(status, body, 415, "unsupported_media_type", "text/plain")
        status, _, body = server.predict(b"\0" * 70000, "image/png", keys["bob"])
        expect_generic_error(status, body, 413, "payload_too_large", "oversized body")

        throttled = None
        for i in range(40):
            status, headers, body = server.predict(png_grey(images[i][0], 28, 28), "image/png", keys["hammer"])
            if status == 429:
                throttled = (i, headers, body)
                break
            check(status == 200, "hammer %d: HTTP %d %s" % (i, status, body))
        check(throttled is not None and throttled[0] >= 25, "throttling after the burst of 25: %r" % (throttled,))
        i, headers, body = throttled
        check((headers.get("Retry-After") or "").isdigit(), "Retry-After: %r" % headers.get("Retry-After"))
        expect_generic_error(429, body, 429, "rate_limited", "throttled")

        status, headers, text = server.request("/metrics", method="GET")
        check(status == 200 and headers.get("Content-Type", "").startswith("text/plain"), "metrics: %d" % status)
        answered = sum(metric(text, 'parry_requests_total{reason="%s",verdict="%s"}' % rv) or 0
                       for rv in [("ok", "accepted"), ("flagged", "flagged")])
        check(answered == 8 + 1 + throttled[0], "answered requests in /metrics: %s\n%s" % (answered, text))
        for reason, verdict, count in [("unauthorized", "error", 2), ("invalid_input", "error", 4),
                                       ("unsupported_media_type", "error", 1), ("payload_too_large", "error", 1),
                                       ("rate_limited", "rejected", 1)]:
            got = metric(text, 'parry_requests_total{reason="%s",verdict="%s"}' % (reason, verdict))
            check(got == count, "%s/%s: %s, expected %d\n%s" % (reason, verdict, got, count, text))
        check(metric(text, "parry_throttled_total") == 1, "throttled count\n" + text)
        check((metric(text, "parry_flagged_total") or 0) >= 1, "flagged count\n" + text)
        check(metric(text, "parry_request_seconds_count") == answered + 2 + 4 + 1 + 1, "histogram count\n" + text)
        for word in ["alice", "bob", "hammer", keys["alice"]]:
            check(word not in text, "/metrics names a client or key: %s" % word)
    except BaseException:
        server.process.kill()
        raise

    code, out, err = server.stop()
    check(code == 0, "exit status %d after SIGTERM; stderr: %s" % (code, err))
    check("stopped" in out, "no clean shutdown message; stdout: %s" % out)
    check("stopping on SIGTERM" in err, "SIGTERM not logged; stderr: %s" % err)
    for key in keys.values():
        check(key not in err, "the operator log holds an API key")
    rgb_case(parry, os.path.join(os.path.dirname(model), "resnet_small.pt"))
    print("parry serve: all checks passed")


def rgb_case(parry, model):
    """A 3-channel TorchScript model (tests/fixtures/resnet_small.pt, 3x32x32,
    10 classes, random weights) when the fixture exists: colour PNG and JSON
    pixels of its shape, numbered class names."""
    if not os.path.exists(model):
        print("parry serve: no %s, RGB case skipped" % os.path.basename(model))
        return
    with open("rgb.json", "w") as f:
        json.dump({"defenses": [{"name": "rgb", "input": {"channels": 3, "height": 32, "width": 32},
                                 "gates": [{"type": "throttle", "rate": 100, "burst": 100}]}]}, f)
    server = Server([parry, "serve", "--model", model, "--config", "rgb.json", "--no-auth", "--port", "0"])
    try:
        pixels = bytes((i * 7) % 256 for i in range(40 * 40 * 3))
        status, _, body = server.predict(png_grey(pixels, 40, 40, channels=3), "image/png", "local-trial")
        check(status == 200, "RGB PNG: HTTP %d %s" % (status, body))
        doc = json.loads(body)
        check(doc["class"] == str(doc["label"]) and 0 <= doc["label"] < 10, "numbered classes: %s" % body)
        status, _, body = server.predict(json.dumps({"pixels": [0.5] * 3072}).encode(), "application/json", "x")
        check(status == 200, "RGB JSON: HTTP %d %s" % (status, body))
        status, _, body = server.predict(json.dumps({"pixels": [0.5] * 784}).encode(), "application/json", "x")
        expect_generic_error(status, body, 400, "invalid_input", "grey pixel count for an RGB model")
        status, _, body = server.predict(b"x", "image/png", None)
        expect_generic_error(status, body, 401, "unauthorized", "--no-auth still needs a key")
    except BaseException:
        server.process.kill()
        raise
    code, _, err = server.stop()
    check(code == 0, "RGB server exit status %d: %s" % (code, err))


if __name__ == "__main__":
    main()
