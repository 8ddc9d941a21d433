"""Pub/sub notifications per worker when each worker has subscribers for only
its own share of the channels.

    .venv/bin/python bench/notifications.py [--workers 8] [--channels 1000] [--messages 5]
        [--label after] [--report docs/bench-notifications.md]
        [--json docs/bench-notifications.json]

Starts its own redis-server and gunicorn (`--workers` gevent workers, the
shipped gunicorn.conf.py). Worker i (its pid's rank among the workers) gets SSE
subscribers for exactly the channels n<k> with k % workers == i: the kernel
picks a connection's worker, so each connection first asks `GET /healthz`,
learns its worker from `X-Served-By`, then on the same keep-alive connection
subscribes (`GET /sub/n<k>`) to a channel of that worker still without a
subscriber, or is closed. Then `--messages` messages per channel are published
straight to Redis (core.stream_log), every subscriber's `data:` events are
counted (lost must be 0), and each worker's `notifications` counter (its
monitor report in Redis) is compared with its value before publishing. Old code without the counter reports n/a. Each run is
merged, by `--label`, into `--json`; the report is the table of every run there.
"""

from gevent import monkey

monkey.patch_all()

import argparse
import json
import re
import resource
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

import gevent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECRET_KEY = "bench-notifications-secret"


def read_head(sock, buf=b""):
    """(status line and headers, what came after them) of one HTTP response."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


class Subscriber:
    """One keep-alive connection: /healthz to learn its worker, then an SSE
    stream of a channel of that worker, counting the `data:` lines it gets."""

    def __init__(self, port, uncovered, index_of):
        self.channel, self.received = None, 0
        self.sock = socket.socket()
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head, rest = read_head(self.sock)
        if not head.startswith("HTTP/1.1 200"):  # a worker whose hub is not listening
            raise ConnectionError("/healthz: " + head.split("\r\n", 1)[0])
        length = int(re.search(r"(?i)content-length: *(\d+)", head)[1])
        while len(rest) < length:
            rest += self.sock.recv(65536)
        pid = int(re.search(r"(?i)x-served-by: *\S+/(\d+)", head)[1])
        mine = uncovered[index_of[pid]]
        if not mine:  # this worker's channels all have a subscriber already
            self.sock.close()
            return
        self.channel = mine.pop()
        self.sock.sendall(
            f"GET /sub/{self.channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        head, buf = read_head(self.sock, rest[length:])
        if not head.startswith("HTTP/1.1 200"):
            raise ConnectionError(head.split("\r\n", 1)[0])
        while b"retry:" not in buf:
            buf += self.sock.recv(65536)
        self.sock.settimeout(None)
        self.reader = gevent.spawn(self.read, buf)

    def read(self, buf):
        # Chunked transfer encoding may split a line: count whole lines only.
        tail = b""
        while True:
            lines = (tail + buf).split(b"\n")
            tail = lines.pop()
            self.received += sum(line.startswith(b"data: m") for line in lines)
            buf = self.sock.recv(65536)
            if not buf:
                return


def subscribe_all(port, pids, channels):
    """A subscriber for every channel, each on the worker that owns it."""
    index_of = {pid: i for i, pid in enumerate(sorted(pids))}
    uncovered = [[f"n{k}" for k in range(channels) if k % len(pids) == i] for i in range(len(pids))]
    subscribers, opened = [], 0
    for _ in range(50):
        missing = sum(map(len, uncovered))
        if not missing:
            break
        jobs = [gevent.spawn(Subscriber, port, uncovered, index_of) for _ in range(max(missing, 8))]
        gevent.joinall(jobs, raise_error=True)
        opened += len(jobs)
        subscribers += [job.value for job in jobs if job.value.channel]
    if any(uncovered):
        raise RuntimeError(f"channels left without a subscriber: {sum(map(len, uncovered))}")
    return subscribers, opened


def counters(url, token, redis_client, prefix, pids, since):
    """{pid: notifications} (None when the reports lack the counter), read once
    every worker has reported after `since`."""
    from core.keys import Keys

    host = socket.gethostname()
    deadline = time.time() + 15
    while time.time() < deadline:
        # (this version's name, or the one before hash tags: old code is measured too)
        reports = [
            redis_client.get(Keys(prefix).process(host, pid))
            or redis_client.get(f"{prefix}proc:{host}:{pid}")
            for pid in pids
        ]
        if all(r and json.loads(r)["at"] > since for r in reports):
            break
        time.sleep(0.25)
    else:
        raise RuntimeError("the workers' monitor reports are not refreshing")
    # per worker: the reports (/metrics adds the workers up)
    return {
        pid: json.loads(report).get("notifications")
        for pid, report in zip(pids, reports, strict=False)
    }


def measure(args):
    import redis

    from bench.common import gunicorn_server, redis_server, worker_pids
    from core.config import load_settings
    from core.keys import Keys
    from core.stream_log import StreamLog
    from core.tokens import issue
    from core.users import UserStore

    with (
        redis_server() as rs,
        gunicorn_server(
            rs.url, workers=args.workers, SERVED_BY_HEADER=1, SECRET_KEY=SECRET_KEY
        ) as (url, master, env),
    ):
        settings = load_settings(env)
        prefix = settings["REDIS_PREFIX"]
        client = redis.Redis.from_url(rs.url, decode_responses=True)
        store = UserStore(client, prefix)
        admin = store.get("bench-admin") or store.create(
            "bench-admin", "bench-admin-password", admin=True
        )
        token, _ = issue(admin, settings, ttl=3600)
        pids = worker_pids(master)
        for _ in range(100):  # wait for every worker to be up
            if len(pids) == args.workers:
                break
            time.sleep(0.1)
            pids = worker_pids(master)
        started = time.time()
        subscribers, opened = subscribe_all(int(url.rsplit(":", 1)[1]), pids, args.channels)
        print(
            f"{len(subscribers)} subscribers ({opened} connections opened) "
            f"in {time.time() - started:.1f} s",
            flush=True,
        )
        before = counters(url, token, client, prefix, pids, time.time())
        # Redis's own view, for old and new code alike: each publish reaches the
        # connections subscribed to its channel's notification channel (this
        # version's name, or the one before hash tags) or to the one shared
        # notification channel (before per-channel notifications).
        ((_, shared),) = client.pubsub_numsub(f"{prefix}notify")
        per_channel = client.pubsub_numsub(
            *[Keys(prefix).notifications(f"n{k}") for k in range(args.channels)],
            *[f"{prefix}n:n{k}" for k in range(args.channels)],
        )
        deliveries = args.messages * sum(n + shared for _, n in per_channel)
        log = StreamLog(client, prefix)
        for j in range(args.messages):
            for k in range(args.channels):
                log.publish(f"n{k}", f"m{j}")
        published = args.messages * args.channels
        deadline = time.time() + 30
        while time.time() < deadline and any(s.received < args.messages for s in subscribers):
            time.sleep(0.1)
        after = counters(url, token, client, prefix, pids, time.time())
        lost = sum(max(args.messages - s.received, 0) for s in subscribers)
        gevent.killall([s.reader for s in subscribers])
        for s in subscribers:
            s.sock.close()
    got = (
        [after[p] - before[p] for p in sorted(pids)]
        if all(v is not None for v in (*before.values(), *after.values()))
        else None
    )
    return {
        "label": args.label,
        "workers": args.workers,
        "channels": args.channels,
        "subscribers": len(subscribers),
        "published": published,
        "lost": lost,
        "redis_deliveries": deliveries,
        "per_worker": got,
        "command": " ".join(["bench/notifications.py", *sys.argv[1:]]),
    }


def table(rows):
    lines = [
        "| label | workers | channels | subscribers | messages published "
        "| notifications per worker, min / median / max | total across workers "
        "| total / published | Redis deliveries / published | lost |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        n = r["per_worker"]
        spread = f"{min(n):,.0f} / {statistics.median(n):,.0f} / {max(n):,.0f}" if n else "n/a"
        total = f"{sum(n):,.0f}" if n else "n/a"
        ratio = f"{sum(n) / r['published']:.2f}" if n else "n/a"
        lines.append(
            f"| {r['label']} | {r['workers']} | {r['channels']:,} "
            f"| {r['subscribers']:,} | {r['published']:,} | {spread} | {total} "
            f"| {ratio} | {r['redis_deliveries'] / r['published']:.2f} | {r['lost']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5, help="messages per channel")
    parser.add_argument("--label", default="after", help="the row's name, e.g. before/after")
    parser.add_argument("--report", default=str(ROOT / "docs" / "bench-notifications.md"))
    parser.add_argument("--json", default=str(ROOT / "docs" / "bench-notifications.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * args.channels + 100:
        sys.exit(f"ulimit -n: {hard} file descriptors is too few for {args.channels} channels")

    from bench.common import machine

    row = measure(args)
    row["machine"], row["date"] = machine(), time.strftime("%Y-%m-%d")
    path = Path(args.json)
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in rows if r["label"] != row["label"]] + [row]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    text = table(rows)
    print(text)
    commands = "\n".join(
        f"    .venv/bin/python {r['command']}    # {r['label']}, {r['date']}, {r['machine']}"
        for r in rows
    )
    Path(args.report).write_text(f"""# Pub/sub notifications per worker

Each of {row["workers"]} gunicorn gevent workers holds SSE subscribers for only its
own share of the channels (worker i: channels n<k> with k % workers == i, one
subscriber each at least); messages are then published to every channel
through Redis. Commands (each run is a row, merged from {Path(args.json).name}):

{commands}

{text}

- *notifications per worker*: how many pub/sub messages the worker's hub
  listener received while the messages went out (the `notifications` counter of
  its monitor report, from /metrics, after minus before publishing); n/a when
  the code has no such counter.
- *total / published*: 1.00 when each notification reaches only the worker that
  has the channel's subscribers; the number of workers when every worker hears
  every channel.
- *Redis deliveries / published*: how many listener connections each publish
  reached, from Redis (`PUBSUB NUMSUB` of the notification channels before
  publishing): measurable on the old code too.
- *lost*: `data:` events the subscribers should have had and did not (must be 0).
""")
    print(f"wrote {args.report} and {args.json}")
    return 0 if row["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
