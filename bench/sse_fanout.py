"""SSE fan-out: how many subscribers 2 gevent workers hold, the memory each
costs, and how long one broadcast takes to reach all of them.

    .venv/bin/python bench/sse_fanout.py [--clients 1000 10000] [--broadcasts 5] [--app qa]

Starts its own redis-server and gunicorn (2 gevent workers, the shipped
gunicorn.conf.py), opens the subscribers from 2 load-generator processes
(gevent, raw sockets), publishes, and writes docs/bench-sse-fanout.md.
With `--app qa` the subscribers are Q&A board streams (`/qa/stream`) and each
broadcast is a new question (`POST /qa/questions`): docs/bench-qa-fanout.md.
Every client must receive every broadcast: a loss fails the run.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHANNEL = "bench"
GENERATORS = 2


# -- load generator (a child process) ---------------------------------------------

APPS = {
    # app: (stream path, report file, title)
    "channels": (f"/sub/{CHANNEL}", "bench-sse-fanout.md",
                 "SSE fan-out on 2 gevent workers (GET /sub/<channel>; each broadcast is "
                 "one publish)"),
    "qa": ("/qa/stream", "bench-qa-fanout.md",
           "Q&A board fan-out on 2 gevent workers (GET /qa/stream; each broadcast is a new "
           "question, POST /qa/questions, delivered as the whole question list)"),
}


def marker_text(k):
    return f"bcast-{k}-end"


def generator(port, count, path):
    """Open `count` SSE clients; on "report", print every client's receipts."""
    from gevent import monkey

    monkey.patch_all()
    import resource
    import socket

    import gevent

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    marker = re.compile(rb"bcast-(\d+)-end")
    receipts = [{} for _ in range(count)]
    connected = []
    failures = []

    def client(i):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            sock.sendall(request)
            buf = b""
            while b"retry:" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed before the stream started")
                buf += chunk
            connected.append(time.time())
            sock.settimeout(None)
            tail = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                now = time.time()
                data = tail + chunk
                for match in marker.finditer(data):
                    receipts[i].setdefault(int(match[1]), now)
                tail = data[-64:]
        except Exception as exc:  # reported, never silent
            failures.append(repr(exc))

    started = time.time()
    for i in range(count):
        gevent.spawn(client, i)
        if i % 200 == 199:
            gevent.sleep(0)  # let connects progress while spawning
    while len(connected) + len(failures) < count:
        gevent.sleep(0.01)
    print(json.dumps({"started": started, "connected": max(connected, default=started),
                      "ok": len(connected), "failures": failures[:5]}), flush=True)
    # Wait for "report" in a thread: a plain read would block every greenlet.
    gevent.get_hub().threadpool.apply(sys.stdin.readline)
    gevent.sleep(1)
    print(json.dumps({"receipts": [{str(k): v for k, v in r.items()} for r in receipts]}),
          flush=True)


# -- coordinator -------------------------------------------------------------------

from bench.common import cpu_seconds, rss_kb, worker_pids


def run_level(server_port, master_pid, publish, clients, broadcasts, path):
    pids = worker_pids(master_pid)
    base_rss = sum(rss_kb(p) for p in pids)
    per = [clients // GENERATORS + (1 if i < clients % GENERATORS else 0)
           for i in range(GENERATORS)]
    procs = [subprocess.Popen([sys.executable, __file__, "--generator", str(server_port), str(n),
                               path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n in per]
    hello = [json.loads(p.stdout.readline()) for p in procs]
    ok = sum(h["ok"] for h in hello)
    connect_s = max(h["connected"] for h in hello) - min(h["started"] for h in hello)
    time.sleep(2)  # let the servers settle before measuring memory
    held_rss = sum(rss_kb(p) for p in pids)
    cpu_before = cpu_seconds(pids)
    sent = {}
    for k in range(1, broadcasts + 1):
        sent[k] = time.time()
        publish(k)
        time.sleep(1.5)
    cpu_used = cpu_seconds(pids) - cpu_before
    for p in procs:
        p.stdin.write("report\n")
        p.stdin.flush()
    receipts = []
    for p in procs:
        receipts += json.loads(p.stdout.readline())["receipts"]
        p.stdin.close()
        p.terminate()
        p.wait()
    completions, latencies, lost = [], [], 0
    for k, t0 in sent.items():
        times = [r[str(k)] for r in receipts if str(k) in r]
        lost += len(receipts) - len(times)
        if times:
            completions.append((max(times) - t0) * 1000)
            latencies += [(t - t0) * 1000 for t in times]
    latencies.sort()
    return {
        "clients": clients, "held": ok, "failures": sum(len(h["failures"]) for h in hello),
        "connect_s": connect_s,
        "rss_mb": held_rss / 1024, "kb_per_conn": (held_rss - base_rss) / max(ok, 1),
        "broadcast_ms_median": statistics.median(completions) if completions else float("nan"),
        "p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "lost": lost, "cpu_s_per_broadcast": cpu_used / broadcasts,
    }


def qa_publisher(url):
    """Each broadcast is a new question, posted like the page does."""
    import requests

    with requests.get(url + "/qa/stream", stream=True, timeout=10,
                      headers={"Accept": "text/event-stream"}) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: {\"id\""):
                client_id = json.loads(line[6:])["id"]
                break

    def publish(k):
        response = requests.post(url + "/qa/questions", json={"question": marker_text(k)},
                                 headers={"X-Client-Id": client_id}, timeout=10)
        response.raise_for_status()

    return publish


def main():
    parser = argparse.ArgumentParser(description="SSE fan-out benchmark")
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument("--app", choices=sorted(APPS), default="channels")
    parser.add_argument("--report", help="default: docs/bench-sse-fanout.md (or -qa-)")
    args = parser.parse_args()
    path, report_name, title = APPS[args.app]
    args.report = args.report or str(ROOT / "docs" / report_name)

    import redis

    from bench.common import gunicorn_server, redis_server
    from core.hub import Hub

    rows = []
    with redis_server() as rs:
        client = redis.Redis.from_url(rs.url, decode_responses=True)
        for clients in args.clients:
            prefix = f"bench{clients}:"  # each level starts from an empty board
            hub = Hub(client, rs.url, prefix=prefix)
            with gunicorn_server(rs.url, REDIS_PREFIX=prefix) as (url, pid, _env):
                publish = (qa_publisher(url) if args.app == "qa" else
                           lambda k, hub=hub: hub.publish(CHANNEL, marker_text(k)))
                row = run_level(int(url.rsplit(":", 1)[1]), pid, publish, clients,
                                args.broadcasts, path)
            rows.append(row)
            print(json.dumps(row), flush=True)

    header = ("| subscribers | held | connect all (s) | server RSS (MB) | KB per connection "
              "| broadcast to all, median (ms) | delivery p50 (ms) | delivery p99 (ms) "
              "| lost | worker CPU per broadcast (s) |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['clients']:,} | {r['held']:,} | {r['connect_s']:.2f} | {r['rss_mb']:.0f} "
            f"| {r['kb_per_conn']:.1f} | {r['broadcast_ms_median']:.0f} | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['lost']} | {r['cpu_s_per_broadcast']:.2f} |")
    table = "\n".join(lines)
    print(table)
    from bench.common import machine as describe_machine

    machine = describe_machine()
    Path(args.report).write_text(f"""# {title}

Measured {time.strftime('%Y-%m-%d')} on {machine}, with the load generator
(2 processes, gevent, raw sockets) on the same machine. Command:

    .venv/bin/python bench/sse_fanout.py --app {args.app} --clients {' '.join(map(str, args.clients))} --broadcasts {args.broadcasts}

{table}

- *held*: subscribers whose stream was open when the broadcasts went out.
- *connect all*: from the first connect to the last subscriber's first bytes.
- *KB per connection*: growth of the two workers' RSS, divided by the subscribers.
- *broadcast to all*: from `publish` until the last subscriber had the message
  (the median over {args.broadcasts} broadcasts); *delivery p50/p99* over every
  (subscriber, broadcast) pair.
- The machine is shared and noisy: compare rows of one run, not runs.
""")
    print(f"wrote {args.report}")
    return 0 if all(r["lost"] == 0 and r["held"] == r["clients"] for r in rows) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generator":
        generator(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(main())
