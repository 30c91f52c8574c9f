#!/usr/bin/python3
"""`parry serve` under load with a flood of malformed requests, run by ctest
(cli.serve_load); with a longer duration it is the measurement of
docs/reliability.md.

Usage: test_serve_load.py PARRY_BINARY MODEL FASHION_MNIST_DIR WORK_DIR [SECONDS=15]

The server has a per-client throttle, the query monitor (a bound of 2,000
stored images, so eviction runs) and label-only answers, 16 HTTP workers.
16 well-formed loopback clients (one API key each, keep-alive) POST Fashion-MNIST
test images as PNG; 4 hostile clients at the same time send garbage bodies,
truncated PNGs, wrong content types, missing and unknown keys, oversized
and lying Content-Lengths, bad JSON and raw garbage on the socket. Checked:
  - every well-formed answer is 200 with the label the server gave that image
    when it was idle, or 429 (the throttle, by design); nothing else;
  - every hostile request gets a 4xx or a closed connection, never a 5xx;
  - the server's resident memory at the end is within 24 MB of its value
    after the first quarter (the monitor's store is bounded);
  - the server still answers and stops cleanly (SIGTERM, exit 0).
Prints requests/s, p50/p99 latency of the well-formed requests, status counts
and memory. Standard library only.
"""
import gzip
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from support import check, fail, png_grey

CLIENTS = 16
HOSTILE = 4








def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parry, model, data_dir, work = (os.path.abspath(a) for a in sys.argv[1:5])
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 15.0
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chdir(work)
    with gzip.open(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz")) as f:
        raw = f.read()
    images = [png_grey(raw[16 + i * 784:16 + (i + 1) * 784], 28, 28) for i in range(200)]

    config = {"defenses": [{"name": "served",
                            "gates": [{"type": "throttle", "rate": 40, "burst": 40},
                                      {"type": "query_monitor", "action": "flag", "max_stored_queries": 2000}],
                            "output": {"policy": "label_only"}}]}
    with open("config.json", "w") as f:
        json.dump(config, f)
    keys = ["client%02d-%s" % (i, "%016x" % random.Random(i).getrandbits(64)) for i in range(CLIENTS + 1)]
    lines = []
    for i, key in enumerate(keys):
        r = subprocess.run([parry, "keys", "--client", "c%d" % i], input=key + "\n", capture_output=True, text=True)
        check(r.returncode == 0, "parry keys: " + r.stderr)
        lines.append(r.stdout.strip())
    with open("keys.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    # The server's log goes to a file: a pipe nobody reads fills up and
    # blocks every thread that logs (each monitor detection is a log line).
    server_log = open("server.log", "w")
    server = subprocess.Popen([parry, "--threads", "1", "serve", "--model", model, "--config", "config.json",
                               "--input", "1x28x28", "--api-keys", "keys.txt", "--port", "0", "--workers", "16",
                               "--max-body", "65536"], stdout=subprocess.PIPE, stderr=server_log, text=True,
                              env=env)
    line = server.stdout.readline().strip()
    check(line.startswith("listening on 127.0.0.1:"), "server did not start: %r" % line)
    port = int(line.rsplit(":", 1)[1])

    def post(conn, body, key, content_type="image/png"):
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["X-Api-Key"] = key
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()

    # The labels of an idle server, by the last key (its own throttle bucket; slowly).
    expected = {}
    oracle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i, body in enumerate(images):
        while True:
            status, text = post(oracle, body, keys[CLIENTS])
            if status != 429:
                break
            time.sleep(0.05)
        check(status == 200, "idle server: HTTP %d %s" % (status, text))
        expected[i] = json.loads(text)["label"]
    oracle.close()

    stop = threading.Event()
    lock = threading.Lock()
    latencies, statuses, hostile_statuses, problems = [], {}, {}, []

    def client(index):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        rng = random.Random(index)
        while not stop.is_set():
            i = rng.randrange(len(images))
            start = time.perf_counter()
            try:
                status, text = post(conn, images[i], keys[index])
            except (http.client.HTTPException, OSError) as e:
                with lock:
                    problems.append("client %d: %r" % (index, e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            took = time.perf_counter() - start
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(took)
                    if json.loads(text)["label"] != expected[i]:
                        problems.append("image %d: label %s under load, %s idle" % (i, text, expected[i]))
                elif status != 429:
                    problems.append("client %d: HTTP %d %s" % (index, status, text[:200]))
            if status == 429:
                time.sleep(0.01)
        conn.close()  # a keep-alive connection holds a server worker

    truncated = [body[:len(body) // 2] for body in images[:10]]

    def hostile(index):
        rng = random.Random(1000 + index)
        while not stop.is_set():
            kind = rng.randrange(9)
            try:
                if kind == 8:  # raw garbage on a socket
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                        s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
                        s.shutdown(socket.SHUT_WR)
                        answer = s.recv(64)
                    status = int(answer.split()[1]) if answer.startswith(b"HTTP/1.") else 0
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    key = keys[index]
                    if kind == 0:
                        status, _ = post(conn, bytes(rng.randrange(256) for _ in range(300)), key)
                    elif kind == 1:
                        status, _ = post(conn, rng.choice(truncated), key)
                    elif kind == 2:
                        status, _ = post(conn, images[0], key, "text/plain")
                    elif kind == 3:
                        status, _ = post(conn, images[0], None)
                    elif kind == 4:
                        status, _ = post(conn, images[0], "unknown-key-0123456789")
                    elif kind == 5:
                        status, _ = post(conn, b"x" * 70000, key)
                    elif kind == 6:
                        status, _ = post(conn, b'{"pixels": [1, 2, "x"', key, "application/json")
                    else:  # a Content-Length that promises more than is sent
                        conn.putrequest("POST", "/v1/predict")
                        conn.putheader("X-Api-Key", key)
                        conn.putheader("Content-Type", "image/png")
                        conn.putheader("Content-Length", "60000")
                        conn.endheaders()
                        conn.send(images[0][:100])
                        conn.sock.shutdown(socket.SHUT_WR)
                        r = conn.getresponse()
                        status = r.status
                    conn.close()
            except (http.client.HTTPException, OSError):
                status = 0  # the server closed the connection: fine for a hostile request
            with lock:
                hostile_statuses[status] = hostile_statuses.get(status, 0) + 1
                if status >= 500:
                    problems.append("hostile request kind %d: HTTP %d" % (kind, status))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    threads += [threading.Thread(target=hostile, args=(i,)) for i in range(HOSTILE)]
    start = time.time()
    for t in threads:
        t.start()
    time.sleep(seconds / 4)
    rss_early = rss_kb(server.pid)
    time.sleep(seconds * 3 / 4)
    rss_late = rss_kb(server.pid)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.time() - start
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        healthy = conn.getresponse().status == 200
    except (http.client.HTTPException, OSError):
        healthy = False
    if not healthy and os.environ.get("PARRY_LOAD_DEBUG"):
        subprocess.run(["gdb", "-p", str(server.pid), "-batch", "-ex", "thread apply all bt 12"])
    if not healthy:
        server.kill()
    check(healthy, "the server stopped answering after the load")
    server.send_signal(signal.SIGTERM)
    try:
        server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        fail("the server did not stop within 30 s of SIGTERM")
    check(server.returncode == 0, "the server exited with %d" % server.returncode)

    latencies.sort()
    answered = sum(statuses.values())
    print("%.0f s, %d well-formed clients, %d hostile: %d well-formed requests (%.0f/s), statuses %s; "
          "%d hostile requests, statuses %s" % (elapsed, CLIENTS, HOSTILE, answered, answered / elapsed,
                                                dict(sorted(statuses.items())), sum(hostile_statuses.values()),
                                                dict(sorted(hostile_statuses.items()))))
    if latencies:
        print("latency of 200 answers: p50 %.2f ms, p99 %.2f ms" %
              (1000 * latencies[len(latencies) // 2], 1000 * latencies[int(len(latencies) * 0.99)]))
    print("server resident memory: %.1f MB after %.0f s, %.1f MB at the end" %
          (rss_early / 1024, seconds / 4, rss_late / 1024))
    check(not problems, "%d problems, first: %s" % (len(problems), problems[:5]))
    check(statuses.get(200, 0) > 0, "no well-formed request was answered")
    check(rss_late - rss_early < 24 * 1024, "resident memory grew by %d kB under load" % (rss_late - rss_early))
    print("cli.serve_load: OK")


if __name__ == "__main__":
    main()
