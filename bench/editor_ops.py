"""The editor under concurrent writers: commits per second, ack latency, convergence.

    .venv/bin/python bench/editor_ops.py [--clients 4 16] [--edits 150]

Each client (tests/editor_client.py: the browser's algorithm in Python, on a
real WebSocket) types as fast as the protocol lets it (one op in flight, a
buffer behind it) on one shared document, against 2 gevent workers. Writes
docs/bench-editor.md.
"""

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, gunicorn_server, machine, redis_server
from tests.editor_client import SimClient


class Server:  # what SimClient needs to know
    def __init__(self, url):
        self.url = url
        self.ws_url = url.replace("http://", "ws://")


def run(url, clients, edits):
    server, doc = Server(url), f"bench-{uuid.uuid4().hex[:8]}"
    sims = [SimClient(server, doc, seed) for seed in range(clients)]
    began = time.perf_counter()
    threads = [
        threading.Thread(target=s.run, args=(edits,), kwargs={"think": 0.001, "reconnects": 0.0})
        for s in sims
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for s in sims:
        s.settle()
    final = requests.get(f"{url}/editor/{doc}/text", timeout=10).json()
    latencies = sorted(x * 1000 for s in sims for x in s.ack_latencies)
    return {
        "clients": clients,
        "edits": sum(s.edits for s in sims),
        "commits": final["v"],
        "commits_per_s": final["v"] / elapsed,
        "edits_per_s": sum(s.edits for s in sims) / elapsed,
        "ack_p50": latencies[len(latencies) // 2],
        "ack_p99": latencies[int(len(latencies) * 0.99)],
        "converged": all(s.text == final["text"] and s.version == final["v"] for s in sims),
        "errors": sum(1 for s in sims if s.error),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--edits", type=int, default=150)
    args = parser.parse_args()
    rows = []
    with redis_server() as rs, gunicorn_server(rs.url) as (url, _, _env):
        for clients in args.clients:
            rows.append(run(url, clients, args.edits))
    lines = [
        "| clients | edits | commits | edits/s | commits/s | ack p50 / p99 (ms) | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['edits']} | {r['commits']} | {r['edits_per_s']:.0f} "
            f"| {r['commits_per_s']:.0f} | {r['ack_p50']:.1f} / {r['ack_p99']:.1f} "
            f"| {'yes' if r['converged'] and not r['errors'] else 'NO'} |"
        )
    table = "\n".join(lines)
    print(table)
    (ROOT / "docs" / "bench-editor.md").write_text(f"""# The editor under concurrent writers

Measured {time.strftime("%Y-%m-%d")} on {machine()}; 2 gevent workers; the clients
on the same machine, one shared document, each typing as fast as the protocol
allows (edits made while an op is in flight are composed into one). Command:

    .venv/bin/python bench/editor_ops.py --clients {" ".join(map(str, args.clients))} --edits {args.edits}

{table}

*commits* are server versions; fewer than *edits* because buffered edits travel
composed. *ack*: from sending an op to its acknowledgement, which includes
transforming it against concurrent commits and the commit's round trips to Redis.
""")
    return 0 if all(r["converged"] and not r["errors"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
