#!/usr/bin/python3
"""Two `parry serve` replicas sharing one redis-server (ctest cli.serve_redis).

Usage: test_serve_redis.py PARRY_BINARY MODEL FASHION_MNIST_DIR WORK_DIR

Starts its own redis-server on a free loopback port (no persistence), then two
`parry serve --state redis://127.0.0.1:PORT` processes, and checks over HTTP:
an image sent to replica A and then to replica B is flagged by B (one query
history); a client's throttle budget is one budget over both; with Redis killed
a fail-closed replica answers 503 {"reason": "unavailable"} and a fail-open one
answers normally, both counted in /metrics (parry_state_failures_total); a
restarted Redis is reconnected. Skips (exit 0 with a message) when
redis-server is not installed. Standard library only.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_serve import CLASSES, Server, check, expect_generic_error, metric, png_grey, run, test_images  # noqa: E402

REDIS = "/usr/bin/redis-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self):
        self.port = free_port()
        self.process = None
        self.start()

    def start(self):
        self.process = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--daemonize", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)  # polling for readiness
        check(False, "redis-server did not start")

    def kill(self):
        self.process.kill()
        self.process.wait()


def main():
    if not os.access(REDIS, os.X_OK):
        print("SKIP: redis-server is not installed (apt-get install redis-server)")
        return
    parry, model, data_dir, work = (os.path.abspath(a) for a in sys.argv[1:5])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chdir(work)
    images = test_images(data_dir, 12)
    redis = Redis()
    url = "redis://127.0.0.1:%d" % redis.port

    def config(name, failure):
        doc = {"classes": CLASSES,
               "state": {"url": "memory", "prefix": "cli", "failure": failure, "timeout_ms": 200},
               "defenses": [{"name": "served", "input": {"channels": 1, "height": 28, "width": 28},
                             "gates": [{"type": "throttle", "rate": 0.001, "burst": 8},
                                       {"type": "query_monitor", "action": "flag"}]}]}
        with open(name, "w") as f:
            json.dump(doc, f)

    config("closed.json", "fail_closed")
    config("open.json", "fail_open")
    keys = {"alice": "alice-0123456789abcdef", "bob": "bob-fedcba9876543210"}
    lines = []
    for client, key in keys.items():
        r = run([parry, "keys", "--client", client], stdin=key + "\n")
        check(r.returncode == 0, "parry keys: %s" % r.stderr)
        lines.append(r.stdout.strip())
    with open("keys.txt", "w") as f:
        f.write("\n".join(lines) + "\n")

    def serve(config_file):
        return Server([parry, "serve", "--model", model, "--config", config_file, "--port", "0", "--workers", "2",
                       "--api-keys", "keys.txt", "--state", url])

    r = run([parry, "serve", "--model", model, "--config", "closed.json", "--api-keys", "keys.txt",
             "--state", "redis://127.0.0.1:0"])
    check(r.returncode != 0 and "port" in r.stderr, "a bad --state URL: %d %s" % (r.returncode, r.stderr))

    a, b = serve("closed.json"), serve("closed.json")
    servers = [a, b]
    try:
        # One query history: the image A saw is flagged by B, from another client too.
        png = png_grey(images[0][0], 28, 28)
        status, _, body = a.predict(png, "image/png", keys["alice"])
        check(status == 200 and json.loads(body)["verdict"] == "accepted", "A, first query: %d %s" % (status, body))
        status, _, body = b.predict(png, "image/png", keys["bob"])
        check(status == 200 and json.loads(body)["verdict"] == "flagged", "B, same image: %d %s" % (status, body))

        # One budget: alice has 8 images (rate 0.001/s), 1 spent; 7 more over both replicas, then 429.
        for i in range(1, 8):
            status, _, body = servers[i % 2].predict(png_grey(images[i][0], 28, 28), "image/png", keys["alice"])
            check(status == 200, "alice query %d: %d %s" % (i, status, body))
        status, headers, body = a.predict(png_grey(images[8][0], 28, 28), "image/png", keys["alice"])
        expect_generic_error(status, body, 429, "rate_limited", "alice's 9th image over two replicas")
        status, _, body = b.predict(png_grey(images[8][0], 28, 28), "image/png", keys["alice"])
        expect_generic_error(status, body, 429, "rate_limited", "alice's 10th image, on the other replica")

        # Redis dies: fail-closed answers 503, fail-open serves; both count.
        redis.kill()
        c = serve("open.json")
        servers.append(c)
        status, headers, body = a.predict(png_grey(images[9][0], 28, 28), "image/png", keys["bob"])
        expect_generic_error(status, body, 503, "unavailable", "fail-closed replica without Redis")
        check(headers.get("Retry-After") == "1", "503 Retry-After: %s" % headers.get("Retry-After"))
        status, _, body = c.predict(png_grey(images[9][0], 28, 28), "image/png", keys["bob"])
        check(status == 200, "fail-open replica without Redis: %d %s" % (status, body))
        _, _, text = a.request("/metrics", method="GET")
        check(metric(text, "parry_state_failures_total") == 1, "A's state failures:\n" + text)
        _, _, text = c.request("/metrics", method="GET")
        check(metric(text, "parry_state_failures_total") == 2, "C's state failures (throttle and monitor):\n" + text)

        # Redis comes back (empty): A reconnects within its back-off.
        redis.start()
        deadline = time.monotonic() + 10
        while True:
            status, _, body = a.predict(png_grey(images[10][0], 28, 28), "image/png", keys["bob"])
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the back-off after the failed reconnections (at most 2 s)
        check(status == 200, "A after Redis restarted: %d %s" % (status, body))
    finally:
        for s in servers:
            code, _, err = s.stop()
            check(code == 0, "serve exit status %d: %s" % (code, err[-2000:]))
        redis.kill()
    print("ok")


if __name__ == "__main__":
    main()
