"""The ticker under load: throughput, latency and the callIn the server hands out.

    .venv/bin/python bench/ticker_load.py [--seconds 10] [--clients 16]

Phase 1, simulated market: `--clients` threads poll /ticker/quote back to back
(ignoring callIn, as an overload would) against 2 gevent workers with the
default TICKER_TARGET_RPS; phase 2, the same against a stub upstream provider
(0.1 s per call) to count provider calls. Writes docs/bench-ticker.md.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, gunicorn_server, machine, redis_server, run_for

SYMBOLS = ["IBM", "AAPL", "MSFT", "GOOG"]


def hammer(url, seconds, clients):
    samples, stop = [], threading.Event()

    def poll(i):
        session = requests.Session()
        while not stop.is_set():
            began = time.perf_counter()
            response = session.get(
                url + "/ticker/quote", timeout=30, params={"symbol": SYMBOLS[i % len(SYMBOLS)]}
            )
            samples.append(
                (time.perf_counter() - began, response.status_code, response.json().get("callIn"))
            )

    threads = [threading.Thread(target=poll, args=(i,)) for i in range(clients)]
    run_for(seconds, threads, stop)
    latencies = sorted(s[0] * 1000 for s in samples)
    call_ins = [s[2] for s in samples if s[2] is not None]
    return {
        "requests": len(samples),
        "rps": len(samples) / seconds,
        "ok": sum(1 for s in samples if s[1] == 200),
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "callIn": (min(call_ins), statistics.median(call_ins), max(call_ins)),
    }


class Provider(BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self):
        Provider.calls += 1
        time.sleep(0.1)
        body = json.dumps({"price": 100.0, "open": 99.0}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with redis_server() as rs:
        with gunicorn_server(rs.url, REDIS_PREFIX="sim:") as (url, _, _env):
            rows.append(("simulated market", hammer(url, args.seconds, args.clients)))
        provider = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
        threading.Thread(target=provider.serve_forever, daemon=True).start()
        upstream = f"http://127.0.0.1:{provider.server_address[1]}/q?s={{symbol}}"
        with gunicorn_server(
            rs.url, REDIS_PREFIX="up:", TICKER_UPSTREAM_URL=upstream, TICKER_UPSTREAM_INTERVAL=5
        ) as (url, _, _env):
            rows.append(
                ("upstream provider, 5 s interval", hammer(url, args.seconds, args.clients))
            )
        provider.shutdown()

    lines = [
        "| source | requests/s | ok | latency p50 / p99 (ms) | callIn min / median / max (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lo, mid, hi = r["callIn"]
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['ok']}/{r['requests']} "
            f"| {r['p50']:.1f} / {r['p99']:.1f} | {lo} / {mid:.0f} / {hi} |"
        )
    table = "\n".join(lines)
    ceiling = args.seconds / 5 + 1
    note = (
        f"Provider calls: {Provider.calls} for {rows[1][1]['requests']} quote requests on "
        f"{len(SYMBOLS)} symbols in {args.seconds:g} s (at most {len(SYMBOLS)} x "
        f"{ceiling:.0f} = {len(SYMBOLS) * ceiling:.0f} allowed by the 5 s interval)."
    )
    print(table)
    print(note)
    report = ROOT / "docs" / "bench-ticker.md"
    report.write_text(f"""# The ticker under load

Measured {time.strftime("%Y-%m-%d")} on {machine()}; 2 gevent workers; {args.clients} client
threads on the same machine polling back to back (ignoring callIn, as an overload
would). Command:

    .venv/bin/python bench/ticker_load.py --seconds {args.seconds:g} --clients {args.clients}

{table}

{note}

callIn grows with the request rate across all workers (TICKER_TARGET_RPS = 200 by
default): a client that obeys it is slowed down exactly when the server is busy.
""")
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
