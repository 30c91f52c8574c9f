#!/usr/bin/python3
"""Integration test of examples/defended_server, run by ctest.

Usage: test_defended_server.py SERVER_BINARY MODEL FASHION_MNIST_DIR

Starts the server on 127.0.0.1 with --port 0, reads the chosen port from its
stdout, drives it over real HTTP (urllib), stops it with SIGTERM and checks a
clean exit. Exits non-zero with a message on the first failed check.
"""
import gzip
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from PIL import Image

INTERNAL_WORDS = ["/", "\\", ".pt", ".cpp", ".hpp", "torch", "c10", "aten", "1.13", "opencv", "eigen",
                  "Exception", "std::", "httplib", "ReferenceCnn"]


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def test_images(directory, count):
    """The first `count` test images as (28x28 bytes, label)."""
    with gzip.open(os.path.join(directory, "t10k-images-idx3-ubyte.gz")) as f:
        images = f.read()
    with gzip.open(os.path.join(directory, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = f.read()
    return [(images[16 + i * 784:16 + (i + 1) * 784], labels[8 + i]) for i in range(count)]


def png(pixels):
    out = io.BytesIO()
    Image.frombytes("L", (28, 28), pixels).save(out, format="PNG")
    return out.getvalue()


class Server:
    def __init__(self, binary, model, extra):
        self.process = subprocess.Popen(
            [binary, "--model", model, "--host", "127.0.0.1", "--port", "0", "--threads", "4"] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on 127.0.0.1:"):
            self.process.kill()
            fail("server did not start: %r, stderr: %s" % (line, self.process.stderr.read()))
        self.url = "http://" + line[len("listening on "):]

    def request(self, path, body=None, headers=None, method="POST"):
        """(status, headers, body text) of one request."""
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def predict(self, body, content_type, key="alice"):
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["X-Api-Key"] = key
        return self.request("/v1/predict", body, headers)

    def stop(self):
        self.process.terminate()  # SIGTERM
        try:
            out, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            fail("server did not stop within 30 s of SIGTERM")
        return self.process.returncode, out, err


def expect_generic_error(status, body, expected_status, what):
    check(status == expected_status, "%s: expected HTTP %d, got %d (%s)" % (what, expected_status, status, body))
    doc = json.loads(body)
    check(set(doc) == {"error", "reason"}, "%s: error body has fields %s" % (what, sorted(doc)))
    for word in INTERNAL_WORDS:
        check(word.lower() not in body.lower(), "%s: error body leaks %r: %s" % (what, word, body))


def main():
    binary, model, data_dir = sys.argv[1:4]
    images = test_images(data_dir, 40)
    server = Server(binary, model, ["--rate", "1", "--burst", "30", "--max-body", "65536"])
    try:
        status, _, body = server.request("/healthz", method="GET")
        check(status == 200 and body == "ok", "healthz: %d %s" % (status, body))

        # A valid PNG: 200 and a label-only answer, correct for these images.
        correct = 0
        for i in range(5):
            pixels, label = images[i]
            status, _, body = server.predict(png(pixels), "image/png", key="png-client")
            check(status == 200, "PNG %d: HTTP %d %s" % (i, status, body))
            doc = json.loads(body)
            check(set(doc) == {"label", "class", "verdict"}, "PNG answer fields: %s" % body)
            check(doc["verdict"] == "accepted", "benign PNG %d: verdict %s" % (i, doc["verdict"]))
            correct += doc["label"] == label
        check(correct >= 4, "only %d of 5 test images classified correctly" % correct)

        # The same image as JSON pixels gets the same label; sending it again
        # (from another key) is a near-duplicate query: flagged, still answered.
        pixels, label = images[0]
        as_json = json.dumps({"pixels": [p / 255.0 for p in pixels]}).encode()
        status, _, body = server.predict(as_json, "application/json", key="json-client")
        check(status == 200, "JSON: HTTP %d %s" % (status, body))
        doc = json.loads(body)
        check(doc["verdict"] == "flagged", "a duplicate of an earlier query from another key: %s" % body)

        # Bad bodies: generic 400s.
        bad = [(b"not an image", "image/png", "garbage PNG"),
               (png(pixels)[:40], "image/png", "truncated PNG"),
               (b"{\"pixels\": [1, 2, 3]}", "application/json", "short pixel list"),
               (b"{\"pixels\": " + json.dumps([2.0] * 784).encode() + b"}", "application/json", "out of range"),
               (b"{nope", "application/json", "malformed JSON")]
        for payload, content_type, what in bad:
            status, _, body = server.predict(payload, content_type, key="bad-client")
            expect_generic_error(status, body, 400, what)
        status, _, body = server.predict(b"hello", "text/plain", key="bad-client")
        expect_generic_error(status, body, 415, "text/plain")

        # No API key: 401.
        status, _, body = server.predict(png(pixels), "image/png", key=None)
        expect_generic_error(status, body, 401, "missing key")

        # Oversized body: 413.
        status, _, body = server.predict(b"\0" * 70000, "image/png", key="big-client")
        expect_generic_error(status, body, 413, "oversized body")

        # Hammering one key: 429 with Retry-After once the burst of 30 is spent.
        throttled = None
        for i in range(80):
            pixels, _ = images[i % len(images)]
            status, headers, body = server.predict(png(pixels), "image/png", key="hammer")
            if status == 429:
                throttled = (i, headers, body)
                break
            check(status == 200, "hammer request %d: HTTP %d %s" % (i, status, body))
        check(throttled is not None, "80 requests at once from one key were never throttled")
        i, headers, body = throttled
        check(i >= 30, "throttled after only %d requests (burst 30)" % i)
        retry = headers.get("Retry-After")
        check(retry is not None and retry.isdigit() and int(retry) >= 1, "Retry-After: %r" % retry)
        expect_generic_error(429, body, 429, "throttled")
        # Another key is unaffected.
        status, _, body = server.predict(png(images[1][0]), "image/png", key="someone-else")
        check(status == 200, "another key after throttling: HTTP %d %s" % (status, body))
    except BaseException:
        server.process.kill()
        raise

    code, out, err = server.stop()
    check(code == 0, "exit status %d after SIGTERM; stderr: %s" % (code, err))
    check("stopped" in out, "no clean shutdown message; stdout: %s" % out)
    check("stopping on SIGTERM" in err, "SIGTERM not logged; stderr: %s" % err)
    print("defended_server: all checks passed")


if __name__ == "__main__":
    main()
