"""How long a graceful reload (HUP) takes with many open streams.

    .venv/bin/python bench/reload_drain.py [--clients 2000]

Opens `--clients` SSE subscribers (the load generator of bench/fanout.py),
sends HUP to the gunicorn master, and times until every old worker has exited.
Without the prompt hand-over (core/lifecycle.py) the old workers would hold
their streams until the 30 s graceful timeout. Writes docs/bench-reload.md.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, gunicorn_server, machine, redis_server


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    args = parser.parse_args()
    with redis_server() as rs, gunicorn_server(rs.url) as (url, master, _env):
        port = url.rsplit(":", 1)[1]
        gen = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "fanout.py"),
                "--generator",
                port,
                f"sse:{args.clients}",
                "/sub/bench",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        held = json.loads(gen.stdout.readline())["ok"]
        old = children(master)
        began = time.perf_counter()
        os.kill(master, signal.SIGHUP)
        while children(master) & old:
            time.sleep(0.05)
        drained = time.perf_counter() - began
        gen.kill()
    row = f"| {held:,} | {drained:.2f} |"
    table = "| open SSE streams | HUP until every old worker exited (s) |\n|---|---|\n" + row
    print(table)
    (ROOT / "docs" / "bench-reload.md").write_text(f"""# Graceful reload with open streams

Measured {time.strftime("%Y-%m-%d")} on {machine()}; 2 gevent workers. Command:

    .venv/bin/python bench/reload_drain.py --clients {args.clients}

{table}

The old workers end their streams at once (SSE `event: close`; WebSockets
would get 1012) instead of holding them until the 30 s graceful timeout; what
remains is HTTP keep-alive and process exit.
""")


if __name__ == "__main__":
    main()
