"""Fan-out at scale: 10,000 subscribers per transport on 2 gevent workers,
side by side with a Node.js peer.

    .venv/bin/python bench/fanout.py [--transports sse ws longpoll] [--clients 10000]
                                     [--mixed 20000] [--broadcasts 5] [--rounds 1] [--app qa]
                                     [--profile connect|broadcast] [--no-peer] [--no-floor]

Starts its own redis-server and gunicorn (2 gevent workers, the shipped
gunicorn.conf.py) and, for each transport, opens the subscribers from 2
load-generator processes (gevent, raw sockets), publishes, and records: the
time to connect them all, each broadcast's completion (until the last
subscriber has it), per-delivery p50/p99, server RSS per connection, worker
CPU, and loss. `--mixed N` also holds N connections at once, a third of each
transport (ours only).

Each transport level also runs against bench/peers/node (a Node.js cluster of 2
workers, `ws` and plain `http`; `npm ci` there first when its node_modules is
missing), with the same generator and ramp: the report puts ours and Node's
numbers side by side with the ratio ours/Node. `--rounds N` runs each pair N
times in turn (ours, the peer, the next transport, ..., then again): the table
then gives each side's median and the median of the ratios taken round by
round, with their range, since one run's ratio moves by a third on a shared
machine. Without `node` on PATH (or with
`--no-peer`) the peer is skipped and the report says why. Then
bench/request_floor.py measures the worker CPU per request of one gevent worker
(trivial WSGI, bare Flask, our long-poll cycle; `--no-floor` skips it).
Writes docs/fanout.md. With `--app qa` the subscribers are Q&A
board streams (`/qa/stream`) and each broadcast is a new question:
docs/bench-qa-fanout.md (no peer, no floor). `--profile PHASE` samples one worker with py-spy
during that phase and prints where its time went (ours only). Any loss of
ours fails the run.
"""

import argparse
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHANNEL = "bench"
GENERATORS = 2
ORIGIN = "http://127.0.0.1"
MIXED_RATE = 4000  # connects per second for the mixed level
PATHS = {"sse": f"/sub/{CHANNEL}", "ws": f"/sub/{CHANNEL}/ws", "longpoll": f"/sub/{CHANNEL}"}
PEER_PREFIX = "peer:"  # the Node.js peer's Redis channels: PUBLISH peer:<channel> {"id","data"}


def marker_text(k):
    return f"bcast-{k}-end"


# -- load generator (a child process) ---------------------------------------------


def generator(port, spec, sse_path, rate=0):
    """Open the clients of `spec` ("sse:5000,ws:5000"): one greenlet and socket
    each, all at once or `rate` per second. Prints a hello line once all are
    connected and, on "report" from stdin, every client's receipt time of each
    broadcast marker."""
    from gevent import monkey

    monkey.patch_all()
    import resource
    import socket

    import gevent

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    marker = re.compile(rb"bcast-(\d+)-end")
    receipts, connected, failures = [], [], []
    connected_ids, unconnected = set(), []

    def joined(i):
        connected.append(time.time())
        connected_ids.add(i)

    def record(i, data):
        now = time.time()
        for match in marker.finditer(data):
            receipts[i].setdefault(int(match[1]), now)

    def connect():
        # Not create_connection: its getaddrinfo goes through gevent's thread
        # pool, a thread handoff per client that the load generator pays for.
        sock = socket.socket()
        sock.settimeout(120)
        sock.connect(("127.0.0.1", port))
        return sock

    def read_until(sock, buf, token):
        while token not in buf:
            buf = fill(sock, buf, len(buf) + 1)
        return buf

    def fill(sock, buf, size):
        """`buf` plus what the socket says until it holds `size` bytes."""
        while len(buf) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        return buf

    def sse(i):
        sock = connect()
        sock.sendall(
            f"GET {sse_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        read_until(sock, b"", b"retry:")
        joined(i)
        sock.settimeout(None)
        tail = b""
        while chunk := sock.recv(65536):
            data = tail + chunk
            record(i, data)
            tail = data[-64:]

    def ws(i):
        sock = connect()
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {PATHS['ws']} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n".encode()
        )
        buf = read_until(sock, b"", b"\r\n\r\n")
        head, _, buf = buf.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        sock.settimeout(None)
        hello = False
        while True:
            buf = fill(sock, buf, 2)
            opcode, length, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                buf = fill(sock, buf, 4)
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                buf = fill(sock, buf, 10)
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            buf = fill(sock, buf, offset + length)
            payload, buf = buf[offset : offset + length], buf[offset + length :]
            if opcode == 0x9:  # ping: answer with a masked pong (mask 0 keeps the payload)
                sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
            elif opcode == 0x8:
                raise ConnectionError(f"closed by the server: {payload[2:]!r}")
            elif not hello:
                hello = True
                joined(i)
            else:
                record(i, payload)

    def longpoll(i):
        # The first poll asks for everything retained (the primer message):
        # its answer is a full round trip, like an SSE client's first bytes.
        sock = connect()
        cursor, buf, first = "0", b"", True
        while True:
            sock.sendall(
                f"GET {PATHS['longpoll']}?cursor={cursor} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\n\r\n".encode()
            )
            buf = read_until(sock, buf, b"\r\n\r\n")
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
            buf = fill(sock, buf, length)
            body, buf = buf[:length], buf[length:]
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
            record(i, body)
            cursor = json.loads(body)["cursor"]
            if first:
                first = False
                joined(i)
                sock.settimeout(None)  # later polls are held up to 25 s

    def client(kind, i):
        began = time.time()
        try:
            {"sse": sse, "ws": ws, "longpoll": longpoll}[kind](i)
        except Exception as exc:  # reported, never silent
            stage = "connected" if i in connected_ids else "connecting"
            failures.append(f"{kind}, {stage}, after {time.time() - began:.1f} s: {exc!r}")
            if i not in connected_ids:
                unconnected.append(i)

    kinds = []
    for part in spec.split(","):
        kind, _, n = part.partition(":")
        kinds += [kind] * int(n)
    started = time.time()
    for i, kind in enumerate(kinds):
        receipts.append({})
        gevent.spawn(client, kind, i)
        if i % 200 == 199:  # let connects progress while spawning
            gevent.sleep(200 / rate if rate else 0)
    while len(connected) + len(unconnected) < len(kinds) and time.time() < started + 90:
        gevent.sleep(0.01)
    stuck = Counter(
        kinds[i] for i in range(len(kinds)) if i not in connected_ids and i not in unconnected
    )
    print(
        json.dumps(
            {
                "started": started,
                "connected": max(connected, default=started),
                "ok": len(connected),
                "failures": failures[:5],
                "not_in_after_90_s": stuck,
            }
        ),
        flush=True,
    )
    # Wait for "report" in a thread: a plain read would block every greenlet.
    gevent.get_hub().threadpool.apply(sys.stdin.readline)
    gevent.sleep(1)
    print(
        json.dumps(
            {
                "receipts": [{str(k): v for k, v in r.items()} for r in receipts],
                "failures": failures[:5],
                "failed": len(failures),
            }
        ),
        flush=True,
    )


# -- profiling ---------------------------------------------------------------------------


class Profile:
    """py-spy sampling one worker while a phase runs; prints the hot spots."""

    def __init__(self, pid, phase):
        self.out = Path(tempfile.gettempdir()) / f"fanout-{phase}-{pid}.txt"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--output",
                str(self.out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)  # py-spy attaches

    def stop(self, top=25):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        own, total = Counter(), Counter()
        samples = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [
                f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")
            ]
            samples += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                total[frame] += int(count)
        print(f"profile: {samples} samples in {self.out}")
        print("self time:")
        for frame, n in own.most_common(top):
            print(f"  {100 * n / samples:5.1f}%  {frame}")
        print("inclusive:")
        for frame, n in total.most_common(top + 15):
            print(f"  {100 * n / samples:5.1f}%  {frame}")


# -- coordinator -------------------------------------------------------------------


def split(mix):
    """{"sse": 5000, ...} -> one spec string per generator process."""
    specs = [[] for _ in range(GENERATORS)]
    for kind, n in mix.items():
        for g in range(GENERATORS):
            share = n // GENERATORS + (1 if g < n % GENERATORS else 0)
            if share:
                specs[g].append(f"{kind}:{share}")
    return [",".join(s) for s in specs if s]


def run_level(
    port,
    master_pid,
    publish,
    mix,
    broadcasts,
    sse_path,
    profile=None,
    gap=1.5,
    settle=0.0,
    rate=0,
    redis_client=None,
):
    from bench.common import cpu_seconds, rss_kb, worker_pids

    pids = worker_pids(master_pid)
    base_rss = sum(rss_kb(p) for p in pids)
    profiler = Profile(pids[0], "connect") if profile == "connect" else None
    commands_at_start = redis_calls(redis_client)
    cpu_at_start = cpu_seconds(pids)
    master_at_start = cpu_seconds([master_pid])
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--generator",
                str(port),
                spec,
                sse_path,
                str(rate // GENERATORS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for spec in split(mix)
    ]
    hello = [json.loads(p.stdout.readline()) for p in procs]
    for h in hello:
        if h["failures"] or h["not_in_after_90_s"]:
            print(
                "generator:",
                {k: h[k] for k in ("ok", "failures", "not_in_after_90_s")},
                file=sys.stderr,
            )
    connect_cpu = cpu_seconds(pids) - cpu_at_start
    connect_commands = redis_calls(redis_client) - commands_at_start
    generator_cpu = cpu_seconds([p.pid for p in procs])
    if profiler:
        profiler.stop()
    ok = sum(h["ok"] for h in hello)
    connect_s = max(h["connected"] for h in hello) - min(h["started"] for h in hello)
    time.sleep(2)  # let the servers settle before measuring memory
    held_rss = sum(rss_kb(p) for p in pids)
    profiler = Profile(pids[0], "broadcast") if profile == "broadcast" else None
    cpu_before = cpu_seconds(pids)
    sent = {}
    for k in range(1, broadcasts + 1):
        sent[k] = time.time()
        publish(k)
        time.sleep(gap)
    time.sleep(settle)  # slow transports (10,000 long-polls) are still delivering
    cpu_used = cpu_seconds(pids) - cpu_before
    master_cpu = cpu_seconds([master_pid]) - master_at_start
    if profiler:
        profiler.stop()
    for p in procs:
        p.stdin.write("report\n")
        p.stdin.flush()
    receipts, failed = [], 0
    for p in procs:
        report = json.loads(p.stdout.readline())
        receipts += report["receipts"]
        failed += report["failed"]
        if report["failures"]:
            print("generator failures:", report["failures"], file=sys.stderr)
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
        "mix": mix,
        "clients": sum(mix.values()),
        "held": ok,
        "failed": failed,
        "connect_s": connect_s,
        "connect_cpu_us": connect_cpu / max(ok, 1) * 1e6,
        "redis_commands_per_connect": {
            name: round(n / max(ok, 1), 2) for name, n in connect_commands.most_common(6)
        },
        "generator_cpu_s": generator_cpu,
        "rss_mb": held_rss / 1024,
        "kb_per_conn": (held_rss - base_rss) / max(ok, 1),
        "broadcast_ms_median": statistics.median(completions) if completions else float("nan"),
        "p50_ms": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "lost": lost,
        "cpu_s_per_broadcast": cpu_used / broadcasts,
        "master_cpu_s": master_cpu,
    }


def redis_calls(redis_client):
    """Redis's count of each command served so far (INFO commandstats)."""
    if redis_client is None:
        return Counter()
    return Counter(
        {
            name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in redis_client.info("commandstats").items()
        }
    )


def qa_publisher(url):
    """Each broadcast is a new question, posted like the page does."""
    import requests

    from realtime_client import parse_sse

    with requests.get(
        url + "/qa/stream", stream=True, timeout=10, headers={"Accept": "text/event-stream"}
    ) as stream:
        client_id = next(
            json.loads(event.data)["id"]
            for event in parse_sse(stream.iter_content(chunk_size=None))
            if event.event == "login"
        )

    def publish(k):
        response = requests.post(
            url + "/qa/questions",
            json={"question": marker_text(k)},
            headers={"X-Client-Id": client_id},
            timeout=10,
        )
        response.raise_for_status()

    return publish


def describe(mix):
    if len(mix) == 1:
        return next(iter(mix))
    return "mixed (" + " + ".join(f"{n:,} {k}" for k, n in mix.items()) + ")"


SERVERS = {"ours": "ours", "node": "Node.js peer"}


def table(rows):
    lines = [
        "| server | transport | subscribers | held | connect all (s) "
        "| worker CPU per connect (µs) "
        "| load generator CPU (s) | server RSS (MB) "
        "| KB per connection | broadcast to all, median (ms) | delivery p50 (ms) "
        "| delivery p99 (ms) | lost | worker CPU per broadcast (s) | master CPU (s) |",
        "|" + "---|" * 15,
    ]
    rounds = max(r.get("round", 1) for r in rows) if rows else 1
    for r in rows:
        who = SERVERS[r["server"]] + (f", round {r['round']}" if rounds > 1 else "")
        lines.append(
            f"| {who} | {describe(r['mix'])} | {r['clients']:,} | {r['held']:,} "
            f"| {r['connect_s']:.2f} "
            f"| {r['connect_cpu_us']:.0f} | {r['generator_cpu_s']:.1f} "
            f"| {r['rss_mb']:.0f} | {r['kb_per_conn']:.1f} | {r['broadcast_ms_median']:.0f} "
            f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['lost']} "
            f"| {r['cpu_s_per_broadcast']:.2f} | {r['master_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


COMPARED = [
    ("all connected after (s)", "connect_s", "{:.2f}"),
    ("broadcast to all, median (ms)", "broadcast_ms_median", "{:.0f}"),
    ("delivery p99 (ms)", "p99_ms", "{:.0f}"),
    ("server RSS growth per connection (KB)", "kb_per_conn", "{:.1f}"),
    ("lost", "lost", "{}"),
]


def comparison(rows):
    """Ours and the Node.js peer per transport level, with the ratio ours/Node.
    Over several rounds (--rounds): the median of each side, and the median
    of the ratios taken round by round (ours and the peer ran one after the
    other in each round), with their range."""
    runs = {}  # (level, server) -> its rows, round by round
    for r in rows:
        runs.setdefault((describe(r["mix"]), r["clients"], r["server"]), []).append(r)
    lines = [
        "| transport | subscribers | measure | ours | Node.js | ours/Node |",
        "|---|---|---|---|---|---|",
    ]
    for (level, clients, server), nodes in runs.items():
        mine = runs.get((level, clients, "ours"))
        if server != "node" or not mine:
            continue
        pairs = list(zip(mine, nodes, strict=False))
        for n, (label, field, form) in enumerate(COMPARED):
            ratio = "–"
            if field == "lost":  # every round's, added up
                a, b = sum(m[field] for m, _ in pairs), sum(p[field] for _, p in pairs)
            else:
                a = statistics.median(m[field] for m, _ in pairs)
                b = statistics.median(p[field] for _, p in pairs)
                ratios = [m[field] / p[field] for m, p in pairs if p[field]]
                if ratios:
                    ratio = f"{statistics.median(ratios):.2f}"
                    if len(ratios) > 1:
                        ratio += f" ({min(ratios):.2f}–{max(ratios):.2f})"
            where = f"{level} | {clients:,}" if n == 0 else " | "
            lines.append(f"| {where} | {label} | {form.format(a)} | {form.format(b)} | {ratio} |")
    return "\n".join(lines)


def pacing(mix):
    """(gap between broadcasts, settle after them, connects per second) for a level."""
    return (
        5.0 if "longpoll" in mix else 1.5,  # a broadcast to 10,000 long-polls takes seconds
        5.0 if "longpoll" in mix else 0.0,  # slow transports are still delivering
        # 20,000 at once overflow the kernel's listen queues (somaxconn
        # 4,096 per worker): arrive at a pace
        MIXED_RATE if len(mix) > 1 else 0,
    )


def main():
    parser = argparse.ArgumentParser(description="fan-out benchmark")
    parser.add_argument(
        "--transports", nargs="+", choices=sorted(PATHS), default=["sse", "ws", "longpoll"]
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[10000])
    parser.add_argument(
        "--mixed",
        type=int,
        default=20000,
        help="connections held at once, a third per transport (0: skip)",
    )
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each transport's pair (ours, then the peer) this many times; "
        "the side-by-side table gives medians and the ratios' range",
    )
    parser.add_argument("--app", choices=["channels", "qa"], default="channels")
    parser.add_argument("--profile", choices=["connect", "broadcast"])
    parser.add_argument(
        "--no-peer", action="store_true", help="skip the Node.js peer (bench/peers/node)"
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip bench/request_floor.py (worker CPU per request)",
    )
    parser.add_argument("--report", help="default: docs/fanout.md (docs/bench-qa-fanout.md)")
    args = parser.parse_args()
    if args.app == "qa":
        args.transports, args.mixed = ["sse"], 0
    sse_path = "/qa/stream" if args.app == "qa" else PATHS["sse"]
    report = args.report or str(
        ROOT / "docs" / ("bench-qa-fanout.md" if args.app == "qa" else "fanout.md")
    )

    import redis

    from bench.common import (
        gunicorn_server,
        machine,
        node_peer_ready,
        node_peer_server,
        node_version,
        redis_server,
    )
    from core.hub import Hub

    if args.app == "qa":
        peer_skipped = "the Q&A app has no Node.js peer"
    elif args.no_peer:
        peer_skipped = "--no-peer"
    else:
        peer_skipped = node_peer_ready()
    if peer_skipped:
        print(f"Node.js peer skipped: {peer_skipped}", flush=True)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    levels = []  # (server, mix, round)
    for round_ in range(1, args.rounds + 1):
        for kind in args.transports:
            for n in args.clients:
                levels.append(("ours", {kind: n}, round_))
                if not peer_skipped:
                    levels.append(("node", {kind: n}, round_))
    if args.mixed:
        third = args.mixed // 3
        levels.append(("ours", {"sse": third, "ws": third, "longpoll": args.mixed - 2 * third}, 1))
    rows = []
    with redis_server() as rs:
        client = redis.Redis.from_url(rs.url, decode_responses=True)
        for n, (server, mix, round_) in enumerate(levels):
            gap, settle, rate = pacing(mix)
            if server == "node":

                def publish(k):
                    client.publish(
                        PEER_PREFIX + CHANNEL, json.dumps({"id": str(k), "data": marker_text(k)})
                    )

                with node_peer_server(rs.url) as (url, pid):
                    row = run_level(
                        int(url.rsplit(":", 1)[1]),
                        pid,
                        publish,
                        mix,
                        args.broadcasts,
                        PATHS["sse"],
                        None,
                        gap=gap,
                        settle=settle,
                        rate=rate,
                        redis_client=client,
                    )
            else:
                prefix = f"bench{n}:"  # each level starts from an empty channel
                hub = Hub(client, rs.url, prefix=prefix)
                hub.publish(CHANNEL, "primer")  # what a long-poll client's first poll returns
                # 20,000 on 2 workers: the kernel's SO_REUSEPORT hash does not split
                # them exactly evenly, so allow each worker more than half.
                capacity = max(10_000, sum(mix.values()) * 3 // 4)
                with gunicorn_server(
                    rs.url, REDIS_PREFIX=prefix, ALLOWED_ORIGINS=ORIGIN, WORKER_CONNECTIONS=capacity
                ) as (url, pid, _env):
                    publish = (
                        qa_publisher(url)
                        if args.app == "qa"
                        else lambda k, hub=hub: hub.publish(CHANNEL, marker_text(k))
                    )
                    row = run_level(
                        int(url.rsplit(":", 1)[1]),
                        pid,
                        publish,
                        mix,
                        args.broadcasts,
                        sse_path,
                        args.profile,
                        gap=gap,
                        settle=settle,
                        rate=rate,
                        redis_client=client,
                    )
            row["server"], row["round"] = server, round_
            rows.append(row)
            print(json.dumps(row), flush=True)

    floor = None
    if not args.no_floor and args.app == "channels":
        from bench import request_floor

        floor = request_floor.table(request_floor.measure())

    side_by_side = comparison(rows)
    text = table(rows)
    for part in (side_by_side, text, floor):
        if part:
            print(part, end="\n\n")
    command = " ".join(["bench/fanout.py", *sys.argv[1:]])
    what = (
        "Q&A board streams (GET /qa/stream; each broadcast is a new question, "
        "POST /qa/questions, delivered as the whole question list)"
        if args.app == "qa"
        else "channel subscribers (each broadcast is one publish)"
    )
    rounds_text = (
        f" In {args.rounds} rounds (each pair run in turn, ours then the peer):"
        " each side's median, and the median of the ratios taken round by round,"
        " with their range in brackets."
        if args.rounds > 1
        else ""
    )
    if args.app == "qa":
        peer_text = ""
    elif peer_skipped:
        peer_text = f"""## Ours and a Node.js peer

The Node.js peer (bench/peers/node) was skipped in this run: {peer_skipped}.

"""
    else:
        peer_text = f"""## Ours and a Node.js peer, side by side

The same load generator, ramp and broadcasts against bench/peers/node/server.js
(Node {node_version()}, `ws` and `ioredis` at the versions pinned in its
package.json): a server written the way a classic Node book writes one.
`cluster` with 2 workers (the primary accepts the connections and hands them
to the workers in turn, Node's default on Linux), each worker with one Redis
subscriber connection (PSUBSCRIBE `peer:*`), plain `http` for SSE and
long-poll, the `ws` package for WebSocket, and each message written to every
open response of the channel. Each broadcast is one Redis `PUBLISH` of
`{{"id","data"}}` on `peer:{CHANNEL}`. Ratios are ours/Node: above 1, ours took
longer or grew more.{rounds_text}

{side_by_side}

- Same contract as ours: SSE `retry: 2000` at once, then `id:`/`data:` events
  (ours also opens with `event: subscribed` and its cursor, in the same first
  write); WebSocket `{{"subscribed":channel}}`, then `{{"id","data"}}` frames;
  long-poll JSON `{{"events","cursor"}}` with Content-Length on a keep-alive
  connection.
- The peer's long-poll answers the first poll (`cursor=0`) at once with no
  events (and an empty cursor, so the next poll is held), where ours answers
  with the retained primer message: from Redis for a worker's first poll of
  the channel, then from the worker's memory, with no subscription set up.
- The peer does less than ours for each message and client: no history and so
  no resume (a long-poll between two polls when a message goes out misses it;
  ours continues from its cursor in Redis), no heartbeats, no Origin checks or
  channel permissions, no per-subscriber queue or slow-consumer limit (Node
  buffers whatever a slow client does not read), no connection limit. It is
  the floor of that design, not a like-for-like product.
- Both listen with a backlog of 4,096 (Node's default is 511, which drops
  handshakes in a burst of 10,000 connects).
- *server RSS growth per connection*: the growth of the two workers' RSS (the
  gunicorn master and the Node primary excluded), divided by the subscribers.
  The Node primary's CPU (it accepts every connection) is the *master CPU*
  column below.

"""
    floor_text = (
        ""
        if not floor
        else f"""## The floor: worker CPU per request

bench/request_floor.py: one gunicorn gevent worker, 50 keep-alive clients (one
load-generator process, gevent, raw sockets), 5 s measured after 2 s of
warm-up. A trivial WSGI app returning a fixed body and a bare Flask route
returning JSON run on a plain gunicorn config (with the shipped
garbage-collector tuning); our long-poll cycle (`GET /sub/<ch>?cursor=<last>`,
answered by each publish, then polled again) runs the real app with the shipped
gunicorn.conf.py while a publisher publishes at a steady rate. CPU per request
is the worker's CPU time over the window divided by the answers in it; the
long-poll's share of the hub's listener (one Redis message, 50 answers) is
included.

{floor}

"""
    )
    Path(report).write_text(
        f"""# Fan-out on 2 gevent workers: {what}

Measured {time.strftime("%Y-%m-%d")} on {machine()}, with the load generator
(2 processes, gevent, raw sockets) on the same machine. Command:

    .venv/bin/python {command}

{peer_text}## Every level

{text}

- *held*: subscribers connected when the broadcasts went out.
- *connect all*: from the first connect until the last subscriber is in: an SSE
  stream's first bytes, a WebSocket's `subscribed` frame, or a long-poll's first
  answer (ours: it asks for everything retained, one primer message; its next
  poll is then held).
- The mixed level (ours only) connects at {MIXED_RATE:,} per second: 20,000
  connects at once overflow the kernel's listen queues (`somaxconn` 4,096 per
  worker socket), and a connection whose handshake was dropped can take
  minutes of TCP retransmits to get in.
- Each of our workers holds up to `WORKER_CONNECTIONS` streams (10,000 by
  default, 0.75 × the level here): the kernel does not spread connections over
  the two workers' sockets exactly evenly. An idle stream holds no slot
  of gunicorn's pool (core/parking.py): the worker counts its streams itself.
- *worker CPU per connect*: the two workers' CPU time while the clients
  connected, divided by the subscribers; *load generator CPU*: what the two
  generator processes used meanwhile, on the same 2 cores; *master CPU*: the
  gunicorn master's (the Node primary's) CPU over the connects and broadcasts.
- *KB per connection*: growth of the two workers' RSS, divided by the subscribers.
- *broadcast to all*: from `publish` until the last subscriber had the message
  (the median over {args.broadcasts} broadcasts, 1.5 s apart, 5 s with long-polls);
  *delivery p50/p99*
  over every (subscriber, broadcast) pair.
- The machine is shared and noisy: compare rows of one run, not runs.

{floor_text}""".rstrip()
        + "\n"
    )
    print(f"wrote {report}")
    return (
        0
        if all(r["lost"] == 0 and r["held"] == r["clients"] for r in rows if r["server"] == "ours")
        else 1
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generator":
        generator(
            int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 0
        )
    else:
        sys.exit(main())
