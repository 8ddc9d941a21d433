"""Mouse tracking: events per second 2 workers ingest with a dashboard open,
and how long a move takes to show up on the dashboard.

    .venv/bin/python bench/track_ingest.py [--visitors 100 500] [--hz 60] [--seconds 10]

Visitors are WebSocket clients in 2 load-generator processes (gevent), each
sending `--hz` positions a second. The dashboard is an SSE client with an
admin token; a probe visitor sends a marked position every 200 ms and the
delay until a batch carries it is the dashboard's update latency (batches go
out every 100 ms, so about 50 ms of that is the coalescing itself).
Writes docs/bench-track.md.
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECRET = "bench-track-secret"


def generator(ws_url, count, hz, seconds):
    """Child process: `count` visitors sending `hz` positions a second; prints how many it sent."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import websocket

    sent = []

    def visitor(i):
        ws = websocket.create_connection(ws_url, timeout=30)
        ws.recv()
        n, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            ws.send(json.dumps({"x": (i % 100) / 100, "y": (n % 100) / 100}))
            n += 1
            gevent.sleep(1 / hz)
        sent.append(n)
        ws.close()

    gevent.joinall([gevent.spawn(visitor, i) for i in range(count)])
    print(json.dumps({"sent": sum(sent)}), flush=True)


def run(url, token, visitors, hz, seconds):
    import requests
    import websocket

    from realtime_client import parse_sse

    ws_url = url.replace("http://", "ws://") + "/track/ws"
    batches, stop = [], threading.Event()

    def watch():
        with requests.get(
            f"{url}/admin/track/stream",
            params={"access_token": token},
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=60,
        ) as r:
            for event in parse_sse(r.iter_content(chunk_size=None)):
                if stop.is_set():
                    return
                if event.event == "batch":
                    batches.append((time.time(), json.loads(event.data)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(1)
    probe = websocket.create_connection(ws_url, timeout=10)
    probe_id = json.loads(probe.recv())["id"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--generator",
                ws_url,
                str(visitors // 2),
                str(hz),
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    probes, began = [], time.time()
    while time.time() - began < seconds:
        mark = round(0.5 + len(probes) % 400 / 1000, 4)
        probes.append((time.time(), mark))
        probe.send(json.dumps({"x": 0.9999, "y": mark}))
        time.sleep(0.2)
    sent = sum(json.loads(p.stdout.readline())["sent"] for p in procs)
    for p in procs:
        p.wait()
    time.sleep(1)
    stop.set()
    probe.close()
    ingested = sum(b["events"] for t, b in batches if began <= t <= began + seconds + 0.5)
    latencies = []
    for sent_at, mark in probes:
        seen = [
            t for t, b in batches if b["positions"].get(probe_id) == [0.9999, mark] and t >= sent_at
        ]
        if seen:
            latencies.append((seen[0] - sent_at) * 1000)
    latencies.sort()
    return {
        "visitors": visitors,
        "offered": visitors * hz,
        "sent_per_s": sent / seconds,
        "ingested_per_s": ingested / seconds,
        "batches_per_s": len(batches) / (seconds + 2),
        "latency_p50": statistics.median(latencies) if latencies else float("nan"),
        "latency_p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "probes_seen": f"{len(latencies)}/{len(probes)}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--hz", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()

    import redis

    from bench.common import ROOT, gunicorn_server, machine, redis_server
    from core.config import load_settings
    from core.tokens import issue
    from core.users import UserStore

    rows = []
    with redis_server() as rs:
        settings = load_settings(
            {"SECRET_KEY": SECRET, "REDIS_URL": rs.url, "INSTANCE_DIR": "/tmp"}
        )
        store = UserStore(redis.Redis.from_url(rs.url, decode_responses=True), "rt:")
        token = issue(store.create("bench-admin", "bench-admin-pw", admin=True), settings)[0]
        with gunicorn_server(rs.url, SECRET_KEY=SECRET) as (url, _, _env):
            for visitors in args.visitors:
                rows.append(run(url, token, visitors, args.hz, args.seconds))
                print(json.dumps(rows[-1]), flush=True)

    lines = [
        "| visitors | offered (events/s) | sent (events/s) | ingested (events/s) "
        "| batches/s on the dashboard | dashboard latency p50 / p99 (ms) | probes seen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['visitors']} | {r['offered']:,} | {r['sent_per_s']:,.0f} "
            f"| {r['ingested_per_s']:,.0f} | {r['batches_per_s']:.1f} "
            f"| {r['latency_p50']:.0f} / {r['latency_p99']:.0f} | {r['probes_seen']} |"
        )
    table = "\n".join(lines)
    print(table)
    (ROOT / "docs" / "bench-track.md").write_text(f"""# Mouse tracking: ingest and dashboard latency

Measured {time.strftime("%Y-%m-%d")} on {machine()}; 2 gevent workers; visitors
from 2 load-generator processes on the same machine, {args.hz} positions a second
each, for {args.seconds:g} s, with one admin dashboard (SSE) open. Command:

    .venv/bin/python bench/track_ingest.py --visitors {" ".join(map(str, args.visitors))} --hz {args.hz} --seconds {args.seconds:g}

{table}

*sent*: what the generators managed to send (they share the 2 cores with the
server). *ingested*: mouse events the dashboard's batches account for.
*batches/s*: each worker publishes at most 10 a second, however many visitors.
""")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generator":
        generator(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
