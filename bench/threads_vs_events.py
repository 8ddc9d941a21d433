"""Threads vs events: the same app under gunicorn's sync, gthread and gevent workers.

    .venv/bin/python bench/threads_vs_events.py [--clients 10 100 1000 10000]
        [--classes sync gthread gevent] [--transports sse longpoll] [--workers 2]
        [--login-clients 2 8] [--login-seconds 20] [--parts connections login]

Part 1, connections. For each worker class, transport and number of clients:
a fresh gunicorn (the shipped gunicorn.conf.py, the same number of worker
processes for every class) on its own Redis key prefix; the clients open from
2 load-generator processes (gevent, raw sockets) and get `--connect-window`
seconds to be answered; then `--broadcasts` messages are published on the
channel, 2 s apart, and every client's receipt of each is timed. Recorded:
clients answered within the window, clients served (every broadcast
delivered), delivery latency p50/p99, the workers' resident and virtual memory
per connection, their OS threads, and worker CPU. SSE streams are then held
until gunicorn's TIMEOUT has passed, to show what the sync worker does with a
request that never ends.

- sync: THREADS=1 (with more threads gunicorn silently runs gthread instead).
- gthread: THREADS = the number of clients, capped by `--max-threads`: each
  worker may start a thread per connection and starts one per concurrent
  request, so this is the thread-per-connection model at every level.
- gevent: one greenlet per connection, up to WORKER_CONNECTIONS (10,000) per
  worker.

Part 2, CPU-bound work on the event loop: under gevent, `/whoami` latency
while `--login-clients` clients log in back to back (Argon2id on every
login), with password hashing in gevent's thread pool (CPU_OFFLOAD=1, the
default) and on the hub (CPU_OFFLOAD=0).

Writes docs/threads-vs-events.md, docs/threads-vs-events.png and the raw
numbers in docs/threads-vs-events.json (`--replot` redraws from those).
"""

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHANNEL = "bench"
GENERATORS = 2
CLASSES = ("sync", "gthread", "gevent")
TRANSPORTS = ("sse", "longpoll")
SPACING = 2.0  # seconds between broadcasts
TIMEOUT = 30  # gunicorn's worker timeout, as deployed (gunicorn.conf.py)
LONGPOLL_TIMEOUT = 25  # as deployed: a held poll answers before TIMEOUT
REPORT = ROOT / "docs" / "threads-vs-events.md"
CHART = ROOT / "docs" / "threads-vs-events.png"
RAW = ROOT / "docs" / "threads-vs-events.json"
COLOURS = {"sync": "tab:red", "gthread": "tab:orange", "gevent": "tab:blue"}


def marker_text(k):
    return f"bcast-{k}-end"


# -- load generator (a child process) ---------------------------------------------


def generator(port, kind, count, window):
    """Open `count` clients of `kind` (sse or longpoll), one greenlet and socket
    each. Prints a hello line once all have been answered or `window` seconds
    have passed (the others go on waiting), then answers stdin commands:
    `status B` (how many have every broadcast 1..B, how many streams are open)
    and `report` (every client's receipt time of each broadcast)."""
    from gevent import monkey

    monkey.patch_all()
    import resource
    import socket

    import gevent

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    marker = re.compile(rb"bcast-(\d+)-end")
    receipts = [{} for _ in range(count)]
    answered = [None] * count  # time of the first answer
    open_streams = set()
    errors = []

    class Closed(ConnectionError):
        """The server closed the connection before answering."""

    def record(i, data):
        now = time.time()
        for match in marker.finditer(data):
            receipts[i].setdefault(int(match[1]), now)

    def read_head(sock):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise (
                    Closed("closed by the server")
                    if not buf
                    else ConnectionError("closed mid-response")
                )
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(status.decode(errors="replace"))
        return head, rest

    def connect():
        # No timeout: a client the server has not accepted waits in the
        # listen backlog (or in SYN retries), as a browser would.
        return socket.create_connection(("127.0.0.1", port), timeout=None)

    def sse(i):
        sock = connect()
        sock.sendall(
            f"GET /sub/{CHANNEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        _head, buf = read_head(sock)
        while b"retry:" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the stream started")
            buf += chunk
        answered[i] = time.time()
        open_streams.add(i)
        try:
            record(i, buf)
            tail = buf[-64:]
            while chunk := sock.recv(65536):
                data = tail + chunk
                record(i, data)
                tail = data[-64:]
            raise ConnectionError("stream closed by the server")
        finally:
            open_streams.discard(i)

    def longpoll(i):
        # The first poll asks for everything retained (the primer message):
        # its answer says the server took the client. Then each poll resumes
        # from the last cursor, over the same connection unless the server
        # closes it (the sync worker closes after every response).
        cursor, sock, reused = "0", None, False
        while True:
            try:
                if sock is None:
                    sock, reused = connect(), False
                sock.sendall(
                    f"GET /sub/{CHANNEL}?cursor={cursor} HTTP/1.1\r\n"
                    "Host: 127.0.0.1\r\n\r\n".encode()
                )
                head, buf = read_head(sock)
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
                while len(buf) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed mid-response")
                    buf += chunk
                body = buf[:length]
                if answered[i] is None:
                    answered[i] = time.time()
                record(i, body)
                cursor = json.loads(body)["cursor"]
                if re.search(rb"(?i)\r\nconnection: *close", head):
                    sock.close()
                    sock = None
                else:
                    reused = True
            except (OSError, ValueError, TypeError) as exc:
                if sock is not None:
                    sock.close()
                    sock = None
                if reused and isinstance(exc, Closed):
                    continue  # an idle keep-alive connection closed: retry at once
                errors.append(f"longpoll: {exc!r}"[:120])
                gevent.sleep(1)  # a browser's retry delay

    def client(i):
        try:
            (sse if kind == "sse" else longpoll)(i)
        except Exception as exc:  # reported, never silent
            errors.append(f"{kind}: {exc!r}"[:120])

    started = time.time()
    for i in range(count):
        gevent.spawn(client, i)
        if i % 200 == 199:
            gevent.sleep(0)  # let connects progress while spawning
    while time.time() < started + window:
        if all(t is not None for t in answered):
            break
        gevent.sleep(0.05)
    times = [t for t in answered if t is not None]
    print(
        json.dumps(
            {"started": started, "answered": len(times), "last_answer": max(times, default=None)}
        ),
        flush=True,
    )
    while True:
        # Read stdin in a thread: a plain read would block every greenlet.
        command = gevent.get_hub().threadpool.apply(sys.stdin.readline).split()
        if not command or command[0] == "report":
            break
        wanted = int(command[1])
        print(
            json.dumps(
                {
                    "complete": sum(1 for r in receipts if len(r) >= wanted),
                    "receipts": sum(len(r) for r in receipts),
                    "open": len(open_streams),
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "receipts": [{str(k): v for k, v in r.items()} for r in receipts],
                "errors": len(errors),
                "error_kinds": Counter(errors).most_common(4),
            }
        ),
        flush=True,
    )


# -- coordinator: part 1 --------------------------------------------------------------


def worker_stats(pids):
    from bench.common import proc_status

    stats = [proc_status(p) for p in pids]
    return {
        "rss_kb": sum(s.get("VmRSS", 0) for s in stats),
        "vm_kb": sum(s.get("VmSize", 0) for s in stats),
        "threads": sum(s.get("Threads", 0) for s in stats),
    }


def kernel_stack_kb():
    """Kernel memory for thread stacks, machine-wide (not in any process's RSS)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("KernelStack:"):
            return int(line.split()[1])
    return 0


def live_cpu(pids):
    """CPU seconds of those of `pids` still alive (sync workers get killed)."""
    from bench.common import cpu_seconds

    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds([pid])
        except OSError:
            pass
    return total


def warm_up(url):
    """A few answered polls on new connections, so both workers have started
    their hub listener and Redis pool before the idle memory is measured."""
    import requests

    for _ in range(20):
        requests.get(f"{url}/sub/{CHANNEL}?cursor=0", timeout=10).raise_for_status()


def server_env(worker_class, clients, max_threads):
    if worker_class == "sync":
        return {"THREADS": 1}
    if worker_class == "gthread":
        threads = min(clients, max_threads)
        return {"THREADS": threads, "WORKER_CONNECTIONS": threads + 10000}
    return {}


class Generators:
    """The load-generator processes of one level."""

    def __init__(self, port, kind, clients, window):
        shares = [
            clients // GENERATORS + (1 if g < clients % GENERATORS else 0)
            for g in range(GENERATORS)
        ]
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--generator", str(port), kind, str(n), str(window)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in shares
            if n
        ]

    def read(self):
        return [json.loads(p.stdout.readline()) for p in self.procs]

    def ask(self, command):
        for p in self.procs:
            p.stdin.write(command + "\n")
            p.stdin.flush()
        return self.read()

    def status(self, broadcasts):
        answers = self.ask(f"status {broadcasts}")
        return {key: sum(a[key] for a in answers) for key in answers[0]}

    def report(self):
        reports = self.ask("report")
        for p in self.procs:
            p.stdin.close()
            p.wait()
        errors = Counter()
        for r in reports:
            errors.update(dict(r["error_kinds"]))
        return (
            [rec for r in reports for rec in r["receipts"]],
            sum(r["errors"] for r in reports),
            errors.most_common(3),
        )


def run_level(rs_url, worker_class, kind, clients, args):
    import redis

    from bench.common import gunicorn_server, worker_pids
    from core.hub import Hub

    prefix = f"tve-{worker_class}-{kind}-{clients}:"
    hub = Hub(redis.Redis.from_url(rs_url, decode_responses=True), rs_url, prefix=prefix)
    env = server_env(worker_class, clients, args.max_threads)
    with gunicorn_server(
        rs_url,
        workers=args.workers,
        WORKER_CLASS=worker_class,
        REDIS_PREFIX=prefix,
        TIMEOUT=TIMEOUT,
        LONGPOLL_TIMEOUT_SECONDS=LONGPOLL_TIMEOUT,
        **env,
    ) as (url, master, _):
        pids = worker_pids(master)
        hub.publish(CHANNEL, "primer")  # what a long-poll client's first poll gets
        warm_up(url)
        base = worker_stats(pids)
        base_kstack = kernel_stack_kb()
        cpu0 = live_cpu(pids)
        gens = Generators(int(url.rsplit(":", 1)[1]), kind, clients, args.connect_window)
        hello = gens.read()
        started = min(h["started"] for h in hello)
        answered = sum(h["answered"] for h in hello)
        last = [h["last_answer"] for h in hello if h["last_answer"]]
        connect_s = (max(last) - started) if answered == clients and last else None
        cpu_connect = live_cpu(pids) - cpu0
        time.sleep(1)  # let the workers settle before measuring memory
        held = worker_stats(pids)
        kstack = kernel_stack_kb() - base_kstack
        cpu1 = live_cpu(pids)
        sent = {}
        for k in range(1, args.broadcasts + 1):
            if k > 1:
                time.sleep(SPACING)
            sent[k] = time.time()
            hub.publish(CHANNEL, marker_text(k))
        # Until everyone has everything, or nothing has moved for 3 s, or the drain is over.
        deadline, progress, moved = time.time() + args.drain, -1, time.time()
        while time.time() < deadline:
            status = gens.status(args.broadcasts)
            if status["complete"] == clients:
                break
            if status["receipts"] != progress:
                progress, moved = status["receipts"], time.time()
            elif time.time() - moved > 3:
                break
            time.sleep(0.5)
        cpu_broadcast = (live_cpu(pids) - cpu1) / args.broadcasts
        open_after_timeout = None
        if kind == "sse":
            # Hold the streams past gunicorn's worker timeout.
            time.sleep(max(0.0, started + TIMEOUT + 6 - time.time()))
            open_after_timeout = gens.status(args.broadcasts)["open"]
        restarts = len(set(worker_pids(master)) - set(pids))
        receipts, errors, error_kinds = gens.report()
    latencies, served = [], 0
    for r in receipts:
        served += len(r) == len(sent)
        latencies += [(r[str(k)] - t0) * 1000 for k, t0 in sent.items() if str(k) in r]
    latencies.sort()
    connected = max(answered, 1)
    row = {
        "class": worker_class,
        "transport": kind,
        "clients": clients,
        "threads_setting": env.get("THREADS"),
        "answered": answered,
        "connect_s": connect_s,
        "served": served,
        "p50_ms": latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else None,
        "rss_mb": held["rss_kb"] / 1024,
        "kb_per_conn": (held["rss_kb"] - base["rss_kb"]) / connected,
        "vm_mb_per_conn": (held["vm_kb"] - base["vm_kb"]) / 1024 / connected,
        "kernel_stack_kb_per_conn": kstack / connected,
        "threads": held["threads"],
        "base_threads": base["threads"],
        "cpu_connect_s": cpu_connect,
        "cpu_per_broadcast_s": cpu_broadcast,
        "open_after_timeout": open_after_timeout,
        "worker_restarts": restarts,
        "client_errors": errors,
        "error_kinds": error_kinds,
    }
    print(json.dumps(row), flush=True)
    return row


# -- coordinator: part 2 --------------------------------------------------------------


def cpu_bound(rs_url, args):
    """/whoami latency while clients log in, with hashing off the hub and on it."""
    import redis

    from bench.common import gunicorn_server, run_for
    from bench.login_cost import PASSWORD, log_in_repeatedly, percentile, probe
    from core.users import UserStore

    def measure(url, seconds, login_clients):
        samples, counts, failures, stop = [], [], [], threading.Event()
        threads = [threading.Thread(target=probe, args=(url, stop, samples))]
        threads += [
            threading.Thread(target=log_in_repeatedly, args=(url, "bench", stop, counts, failures))
            for _ in range(login_clients)
        ]
        run_for(seconds, threads, stop)
        row = {
            "login_clients": login_clients,
            "logins_per_s": len(counts) / seconds,
            "failed": len(failures),
            "p50_ms": percentile(samples, 0.5),
            "p99_ms": percentile(samples, 0.99),
            "max_ms": max(samples) * 1000,
            "samples": len(samples),
        }
        print(json.dumps(row), flush=True)
        return row

    rows = []
    for offload in (True, False):
        prefix = f"tve-login-{int(offload)}:"
        UserStore(redis.Redis.from_url(rs_url, decode_responses=True), prefix).create(
            "bench", PASSWORD
        )
        with gunicorn_server(
            rs_url,
            workers=args.workers,
            REDIS_PREFIX=prefix,
            CPU_OFFLOAD=int(offload),
            LOGIN_RATE_LIMIT="1000000 per minute",
        ) as (url, _, _env):
            for n in [0, *args.login_clients]:
                rows.append(
                    {"offload": offload, **measure(url, args.login_seconds / (1 if n else 2), n)}
                )
    return rows


# -- the report -----------------------------------------------------------------------


def fmt(value, spec=".0f", none="—"):
    return none if value is None else format(value, spec)


def per_conn(row, key, spec):
    """A per-connection memory figure; none for sync, whose workers hold one
    connection each while the rest wait in the kernel's listen backlog."""
    return "—" if row["class"] == "sync" else fmt(row.get(key), spec)


def connections_table(rows, kind):
    lines = [
        "| worker | clients | answered in window | connect all (s) | served "
        "| delivery p50 (ms) | delivery p99 (ms) | worker RSS (MB) | RSS KB / conn "
        "| virtual MB / conn | kernel stack KB / conn | OS threads | CPU connect (s) "
        "| CPU / broadcast (s) "
        + ("| streams open after TIMEOUT | worker restarts " if kind == "sse" else "")
        + "| client errors |"
    ]
    lines.append("|" + "---|" * (lines[0].count("|") - 1))
    for r in (r for r in rows if r["transport"] == kind):
        worker = r["class"] + (
            f" ({r['threads_setting']:,} threads)" if r["class"] == "gthread" else ""
        )
        lines.append(
            f"| {worker} | {r['clients']:,} | {r['answered']:,} | {fmt(r['connect_s'], '.1f')} "
            f"| {r['served']:,} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} "
            f"| {r['rss_mb']:.0f} | {per_conn(r, 'kb_per_conn', '.0f')} "
            f"| {per_conn(r, 'vm_mb_per_conn', '.2f')} "
            f"| {per_conn(r, 'kernel_stack_kb_per_conn', '.1f')} | {r['threads']:,} | {r['cpu_connect_s']:.2f} | {r['cpu_per_broadcast_s']:.2f} "
            + (
                f"| {fmt(r['open_after_timeout'], ',')} | {r['worker_restarts']} "
                if kind == "sse"
                else ""
            )
            + f"| {r['client_errors']:,} |"
        )
    return "\n".join(lines)


def summary_table(rows, levels=None):
    """One line per worker class and number of clients, both transports."""
    found = {(r["class"], r["transport"], r["clients"]): r for r in rows}
    levels = levels or sorted({r["clients"] for r in rows})
    lines = [
        "| clients | worker | SSE served | SSE p99 (ms) | RSS KB / conn | virtual MB / conn "
        "| CPU / broadcast (s) | long-poll served | long-poll p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for clients in levels:
        for cls in CLASSES:
            sse, poll = found.get((cls, "sse", clients)), found.get((cls, "longpoll", clients))
            if not sse and not poll:
                continue
            lines.append(
                f"| {clients:,} | {cls} "
                + (
                    f"| {sse['served']:,} | {fmt(sse['p99_ms'], ',.0f')} "
                    f"| {per_conn(sse, 'kb_per_conn', '.0f')} "
                    f"| {per_conn(sse, 'vm_mb_per_conn', '.2f')} "
                    f"| {sse['cpu_per_broadcast_s']:.2f} "
                    if sse
                    else "| | | | | "
                )
                + (f"| {poll['served']:,} | {fmt(poll['p99_ms'], ',.0f')} |" if poll else "| | |")
            )
    return "\n".join(lines)


def login_table(rows):
    lines = [
        "| clients logging in | password hashing | logins per second "
        "| /whoami p50 (ms) | /whoami p99 (ms) | /whoami max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["login_clients"], not r["offload"])):
        where = "thread pool (`CPU_OFFLOAD=1`)" if r["offload"] else "hub (`CPU_OFFLOAD=0`)"
        lines.append(
            f"| {r['login_clients']} | {where} | {r['logins_per_s']:.0f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} |"
        )
    return "\n".join(lines)


def chart(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["connections"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    styles = {"sse": "-", "longpoll": "--"}
    markers = {"sse": "o", "longpoll": "s"}
    # A row counts in a panel when `keep(row)`: latency only where most
    # clients were served, memory per connection not for sync (it holds 2;
    # the others wait in the kernel's backlog, not in the workers).
    panels = [
        (axes[0][0], "served", "clients served (got every broadcast)", lambda r: True),
        (
            axes[0][1],
            "p99_ms",
            "delivery latency p99 (ms), where most were served",
            lambda r: r["served"] >= r["clients"] / 2,
        ),
        (
            axes[1][0],
            "kb_per_conn",
            "memory per connection (KB): worker RSS",
            lambda r: r["class"] != "sync",
        ),
    ]
    offered = sorted({r["clients"] for r in rows})

    def plot(ax, key, keep, label, style, marker, colour, scale=1.0, kinds=TRANSPORTS, cls=None):
        for kind in kinds:
            points = [
                (r["clients"], r[key] * scale)
                for r in rows
                if r["class"] == cls
                and r["transport"] == kind
                and keep(r)
                and r.get(key) is not None
                and r[key] > 0
            ]
            if points:
                ax.plot(
                    *zip(*points, strict=False),
                    style[kind],
                    marker=marker[kind],
                    color=colour,
                    label=label(kind),
                )

    for ax, key, title, keep in panels:
        for cls in CLASSES:
            plot(
                ax,
                key,
                keep,
                lambda kind, cls=cls: f"{cls}, " + ("SSE" if kind == "sse" else "long-poll"),
                styles,
                markers,
                COLOURS[cls],
                cls=cls,
            )
        if key == "served":
            ax.plot(offered, offered, ":", color="grey", label="all of them")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients offered")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    # What a thread costs beyond its RSS: its stack's address space, its kernel stack.
    ax = axes[1][0]
    plot(
        ax,
        "vm_mb_per_conn",
        lambda r: True,
        lambda kind: "gthread SSE: virtual (stack)",
        {"sse": ":"},
        {"sse": "^"},
        COLOURS["gthread"],
        scale=1024,
        kinds=("sse",),
        cls="gthread",
    )
    plot(
        ax,
        "kernel_stack_kb_per_conn",
        lambda r: True,
        lambda kind: "gthread SSE: kernel stack",
        {"sse": "-."},
        {"sse": "v"},
        COLOURS["gthread"],
        kinds=("sse",),
        cls="gthread",
    )
    ax.set_title(
        "memory per connection (KB): worker RSS; for gthread also\n"
        "its stack's address space and its kernel stack (not in RSS)",
        fontsize=10,
    )
    ax.legend(fontsize=7)
    axes[0][0].legend(fontsize=8)
    ax = axes[1][1]
    login = data.get("login") or []
    if login:
        groups = sorted({r["login_clients"] for r in login})
        bars = [
            (True, "p50_ms", "thread pool, p50", "#9ecae1"),
            (True, "p99_ms", "thread pool, p99", "tab:blue"),
            (False, "p50_ms", "on the hub, p50", "#fcae91"),
            (False, "p99_ms", "on the hub, p99", "tab:red"),
        ]
        width = 0.2
        for b, (offload, key, label, colour) in enumerate(bars):
            xs, ys = [], []
            for g, n in enumerate(groups):
                match = [r for r in login if r["offload"] == offload and r["login_clients"] == n]
                if match:
                    xs.append(g + (b - 1.5) * width)
                    ys.append(match[0][key])
            ax.bar(xs, ys, width, label=label, color=colour)
            for x, y in zip(xs, ys, strict=False):
                ax.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            ["nobody logging in" if n == 0 else f"{n} clients logging in" for n in groups]
        )
        ax.set_ylabel("/whoami latency (ms)")
        ax.set_title("gevent: others' latency while passwords are hashed (Argon2id)")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"The same app on {data['workers']} gunicorn workers: sync, gthread "
        "(a thread per connection), gevent (a greenlet per connection)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(data):
    rows = data["connections"]
    sse_rows = [r for r in rows if r["transport"] == "sse"]
    lp_rows = [r for r in rows if r["transport"] == "longpoll"]
    parts = [
        f"""# Threads vs events, measured

Measured {data["date"]} on {data["machine"]}, with the load generator (2
processes, gevent, raw sockets) on the same machine, a shared VM: compare
rows of one run. Command:

    {data["command"]}

The same app, {data["workers"]} worker processes for every class, the shipped
gunicorn.conf.py with TIMEOUT={TIMEOUT} s and LONGPOLL_TIMEOUT_SECONDS={LONGPOLL_TIMEOUT} s
(the deployed values). A fresh server per row. Clients get {data["connect_window"]:g} s to be
answered; then {data["broadcasts"]} messages are published {SPACING:g} s apart.
sync runs with THREADS=1; gthread with THREADS = the number of clients (a
thread per connection: each worker starts one per concurrent request), capped
at {data["max_threads"]:,}; gevent with WORKER_CONNECTIONS=10,000 per worker. (A
fixed pool, `--max-threads 100`, would cap each gthread worker at 100 streams
and queue the rest, as sync does at 1; a thread per connection measures what
threads cost instead.)

![chart](threads-vs-events.png)
"""
    ]
    if sse_rows and lp_rows:
        parts.append("## Summary\n\n" + summary_table(rows) + "\n")
    if sse_rows:
        parts.append(
            "## SSE (`GET /sub/bench`, `Accept: text/event-stream`)\n\n"
            + connections_table(rows, "sse")
            + "\n"
        )
    if lp_rows:
        parts.append(
            "## Long-poll (`GET /sub/bench?cursor=...`, re-polled after every answer)"
            "\n\n" + connections_table(rows, "longpoll") + "\n"
        )
    if data.get("login"):
        parts.append(f"""## CPU-bound work on the event loop

gevent, {data["workers"]} workers, one server per placement of the hashing: a prober
requests `/whoami` every 20 ms over one keep-alive connection (so always from
the same worker) for {data["login_seconds"]:g} s while N clients log in back to back
(`POST /auth/login`, each an Argon2id verification of about 20 ms of CPU, on
whichever worker the kernel hands the connection to); N = 0 for {data["login_seconds"] / 2:g} s.

{login_table(data["login"])}
""")
    parts.append(f"""## Columns

- *answered in window*: SSE streams whose first bytes (`retry:`) arrived, or
  long-poll clients whose first poll was answered, within {data["connect_window"]:g} s. The
  others keep waiting in the listen backlog; they may be taken later.
- *connect all*: from the first connect to the last client's first answer,
  when all were answered in the window.
- *served*: clients that received all {data["broadcasts"]} broadcasts before the drain ended
  (everyone had everything, nothing had moved for 3 s, or {data["drain"]:g} s after the
  last publish). *Delivery p50/p99*: publish to receipt, over every delivered
  (client, broadcast) pair; a long-poll client gets a message on its next poll.
- *worker RSS*: resident memory of all workers with the clients connected;
  *RSS KB / conn*: its growth over the idle workers, divided by the clients
  answered. *Virtual MB / conn*: the same for virtual memory (address space):
  each OS thread reserves a stack of `ulimit -s` (8 MB) of it.
  *Kernel stack KB / conn*: growth of the kernel's thread stacks (machine-wide
  `KernelStack` in /proc/meminfo, so other programs add noise), which no RSS
  shows. None for sync: its workers hold one connection each, the others
  wait in the kernel's listen backlog. *OS threads*: threads of all workers
  with the clients connected.
- *CPU connect*: worker CPU seconds while the clients connected; *CPU /
  broadcast*: worker CPU from the first publish to the end of the drain,
  divided by the broadcasts (long-poll: includes the re-polls).
- *streams open after TIMEOUT*: SSE streams still open {TIMEOUT + 6} s after the first
  connect; *worker restarts*: workers gunicorn replaced meanwhile (the sync
  worker cannot tell the master it is alive while it is inside a request,
  so the master kills it after TIMEOUT).
- *client errors*: streams cut or polls failed (reset, refused, non-200);
  long-poll clients retry after 1 s.
- The machine is shared and noisy: compare rows of one run, not runs.
""")
    REPORT.write_text("\n".join(parts))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--classes", nargs="+", choices=CLASSES, default=list(CLASSES))
    parser.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--max-threads", type=int, default=10000, help="gthread: cap on THREADS per worker"
    )
    parser.add_argument("--connect-window", type=float, default=15)
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument(
        "--drain",
        type=float,
        default=15,
        help="seconds after the last publish to wait for deliveries",
    )
    parser.add_argument("--login-clients", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--login-seconds", type=float, default=20)
    parser.add_argument(
        "--parts", nargs="+", choices=("connections", "login"), default=["connections", "login"]
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the report and chart from docs/threads-vs-events.json",
    )
    args = parser.parse_args()

    if args.replot:
        data = json.loads(RAW.read_text())
    else:
        from bench.common import machine, redis_server

        command = ".venv/bin/python bench/threads_vs_events.py " + " ".join(sys.argv[1:])
        data = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "command": command.strip(),
            "workers": args.workers,
            "connect_window": args.connect_window,
            "broadcasts": args.broadcasts,
            "drain": args.drain,
            "max_threads": args.max_threads,
            "login_seconds": args.login_seconds,
            "connections": [],
            "login": [],
        }
        with redis_server() as rs:
            for kind in args.transports if "connections" in args.parts else ():
                for worker_class in args.classes:
                    for clients in args.clients:
                        data["connections"].append(
                            run_level(rs.url, worker_class, kind, clients, args)
                        )
            if "login" in args.parts:
                data["login"] = cpu_bound(rs.url, args)
        RAW.write_text(json.dumps(data, indent=1) + "\n")
    write_report(data)
    chart(data, CHART)
    print(REPORT.read_text())
    print(f"wrote {REPORT}, {CHART} and {RAW}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generator":
        generator(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
