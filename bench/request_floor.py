"""The floor under a request: worker CPU time per request of ONE gunicorn gevent worker.

    .venv/bin/python bench/request_floor.py [--clients 50] [--seconds 5] [--rate 10]

50 keep-alive clients (one load-generator process, gevent, raw sockets) against
(a) a trivial WSGI app returning a fixed body, (b) a bare Flask route returning
JSON, both on a plain gunicorn config with one gevent worker and the shipped
garbage-collector tuning, and (c) our long-poll cycle, `GET /sub/<ch>?cursor=<last>`
against the real app (the shipped gunicorn.conf.py, one worker) while a
publisher publishes `--rate` messages a second so the polls are answered.
Prints the worker's CPU time over the measured window divided by the requests
answered in it. bench/fanout.py runs this too (`--no-floor` skips it).
"""

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHANNEL = "floor"
BODY = b"hello, world\n"


# -- the two apps under the floor (gunicorn imports them from here) ------------------


def trivial_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def flask_app():
    from flask import Flask

    app = Flask("floor")

    @app.get("/json")
    def hello():
        return {"hello": "world"}

    return app


PLAIN_CONF = """
bind = "127.0.0.1:{port}"
workers = 1
worker_class = "gevent"
worker_connections = 1000
keepalive = 15
loglevel = "warning"
errorlog = "-"


def post_worker_init(worker):  # as the shipped gunicorn.conf.py does
    import gc

    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
"""


@contextlib.contextmanager
def plain_gunicorn(app_spec, path):
    """gunicorn with one gevent worker serving `app_spec`; yields (url, master pid)."""
    import requests

    from bench.common import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "gunicorn.conf.py"
        conf.write_text(PLAIN_CONF.format(port=port))
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(conf), app_spec], cwd=ROOT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if requests.get(url + path, timeout=1).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            yield url, server.pid
        finally:
            server.terminate()
            server.wait()


# -- the load generator (a child process) ------------------------------------------


def client(port, path, n, t0, t1):
    """`n` keep-alive clients GET `path` over and over until t1 (a long-poll path
    continues from each answer's cursor); prints the answers completed in [t0, t1)."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent

    counts = {"requests": 0, "events": 0, "failures": []}
    polling = "cursor=" in path

    def one():
        sock = socket.socket()
        sock.connect(("127.0.0.1", port))
        buf, target = b"", path
        try:
            while time.time() < t1:
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                while b"\r\n\r\n" not in buf:
                    buf += sock.recv(65536) or b"!closed"
                head, _, buf = buf.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
                while len(buf) < length:
                    buf += sock.recv(65536) or b"!closed"
                body, buf = buf[:length], buf[length:]
                if t0 <= time.time() < t1:
                    counts["requests"] += 1
                if polling:
                    answer = json.loads(body)
                    target = re.sub(r"cursor=[^&]*", f"cursor={answer['cursor']}", path)
                    if t0 <= time.time() < t1:
                        counts["events"] += len(answer["events"])
        except Exception as exc:  # reported, never silent
            counts["failures"].append(repr(exc))
        finally:
            sock.close()

    gevent.joinall([gevent.spawn(one) for _ in range(n)], timeout=t1 - time.time() + 30)
    counts["failures"] = counts["failures"][:5]
    print(json.dumps(counts), flush=True)


# -- coordinator ---------------------------------------------------------------------


def measure_one(port, master_pid, path, clients, seconds, warmup=2.0):
    from bench.common import cpu_seconds, worker_pids

    (worker,) = worker_pids(master_pid)
    t0 = time.time() + warmup
    t1 = t0 + seconds
    proc = subprocess.Popen(
        [sys.executable, __file__, "--client", str(port), path, str(clients), repr(t0), repr(t1)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(max(0.0, t0 - time.time()))
    cpu0 = cpu_seconds([worker])
    time.sleep(max(0.0, t1 - time.time()))
    cpu = cpu_seconds([worker]) - cpu0
    counts = json.loads(proc.stdout.readline())
    proc.wait()
    if counts["failures"]:
        print("floor client failures:", counts["failures"], file=sys.stderr)
    requests = counts["requests"]
    return {
        "clients": clients,
        "requests": requests,
        "per_s": requests / seconds,
        "cpu_s": cpu,
        "us_per_request": cpu / requests * 1e6 if requests else float("nan"),
        "events": counts["events"],
        "failures": len(counts["failures"]),
    }


def measure(clients=50, seconds=5.0, rate=10):
    """The three floors, in order; a list of row dicts."""
    import redis

    from bench.common import gunicorn_server, redis_server
    from core.hub import Hub

    rows = []
    with plain_gunicorn("bench.request_floor:trivial_app", "/") as (url, pid):
        rows.append(
            {
                "what": "trivial WSGI app, fixed body",
                **measure_one(int(url.rsplit(":", 1)[1]), pid, "/", clients, seconds),
            }
        )
    with plain_gunicorn("bench.request_floor:flask_app()", "/json") as (url, pid):
        rows.append(
            {
                "what": "bare Flask route returning JSON",
                **measure_one(int(url.rsplit(":", 1)[1]), pid, "/json", clients, seconds),
            }
        )
    with redis_server() as rs:
        hub = Hub(redis.Redis.from_url(rs.url, decode_responses=True), rs.url, prefix="floor:")
        first = hub.publish(CHANNEL, "primer")
        with gunicorn_server(rs.url, workers=1, REDIS_PREFIX="floor:") as (url, pid, _env):
            stop = threading.Event()

            def publisher():
                k, start = 0, time.time()
                while not stop.is_set():
                    k += 1
                    hub.publish(CHANNEL, f"tick-{k}")
                    time.sleep(max(0.0, start + k / rate - time.time()))

            thread = threading.Thread(target=publisher, daemon=True)
            thread.start()
            try:
                row = measure_one(
                    int(url.rsplit(":", 1)[1]),
                    pid,
                    f"/sub/{CHANNEL}?cursor={first}",
                    clients,
                    seconds,
                )
            finally:
                stop.set()
                thread.join()
            rows.append({"what": f"our long-poll cycle, {rate} publishes/s", **row})
    return rows


def table(rows):
    lines = [
        f"| one gevent worker, {rows[0]['clients']} keep-alive clients | requests/s | worker CPU (s) "
        "| worker CPU per request (µs) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        note = (
            f" ({r['events'] / r['requests']:.2f} messages per answer)"
            if r["events"] and r["requests"]
            else ""
        )
        lines.append(
            f"| {r['what']}{note} | {r['per_s']:,.0f} | {r['cpu_s']:.2f} "
            f"| {r['us_per_request']:.0f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description="worker CPU per request: the floor")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=10, help="publishes per second (long-poll)")
    args = parser.parse_args()
    rows = measure(args.clients, args.seconds, args.rate)
    print(table(rows))
    return 0 if all(r["failures"] == 0 and r["requests"] for r in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(
            int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
        )
    else:
        sys.exit(main())
