"""Publish-to-delivery throughput: 2 gevent workers, a Redis layout, a rising publish rate.

    .venv/bin/python bench/throughput.py [--rates 1000,2000,4000,8000] [--seconds 10]
        [--channels 100] [--per-channel 10] [--workers 2] [--redis single|cluster]
        [--report docs/bench-throughput.md] [--json docs/bench-throughput.json] [--quick]

Starts its own Redis (`--redis single`: one redis-server; `--redis cluster`:
a Redis Cluster of 3 masters with a replica each, all on this machine, which
the app is given with REDIS_CLUSTER=1) and gunicorn (`--workers` gevent
workers, the shipped gunicorn.conf.py), then opens
`--channels` x `--per-channel` SSE subscribers (`GET /sub/<channel>`) from 2
load-generator processes (gevent, raw sockets) before anything is published.
A publisher process then writes straight into Redis (the channels' publish
script, core.stream_log, one pipeline per 10 ms tick), round-robin over the
channels, paced to each offered rate for `--seconds`; every message carries its
publish time, its step and a sequence number. After each step and a 3 s drain,
it reports: the rate offered and the rate published, deliveries per second
(messages x subscribers received during the step), publish-to-delivery latency
p50/p99, lost deliveries (expected minus received), worker CPU per 1,000
deliveries, Redis CPU per 1,000 messages (INFO cpu, summed over the masters on
a cluster), and how many cores each process kept busy. The JSON keeps the
latest run of each layout, and the report has a section per layout. `--quick`
is a smoke run (500 and 1,000 msg/s, 3 s each, 20 channels x 5) that writes a
report only where `--report`/`--json` say.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENERATORS = 2  # load-generator processes
TICK = 0.01  # the publisher's pacing: one pipeline per tick
DRAIN = 3.0  # seconds after a step's last publish before counting what arrived
DEFAULTS = {"rates": "1000,2000,4000,8000", "seconds": 10.0, "channels": 100, "per_channel": 10}
QUICK = {"rates": "500,1000", "seconds": 3.0, "channels": 20, "per_channel": 5}
KEEPS_UP = 0.97  # a step keeps up when it publishes and delivers this share of the rate


def channel_name(k):
    return f"tp{k}"


# -- the Redis side: one function per layout ---------------------------------------
# Each yields a Layout.


@dataclasses.dataclass
class Layout:
    url: str  # REDIS_URL for gunicorn and the publisher
    cpu_nodes: list  # URLs of the nodes whose INFO cpu adds up to "Redis CPU"
    description: str  # for the report
    cluster: bool = False  # the publisher then uses a RedisCluster client

    @property
    def env(self):
        """gunicorn's environment beyond REDIS_URL."""
        return {"REDIS_CLUSTER": "1"} if self.cluster else {}


@contextlib.contextmanager
def single_redis():
    from bench.common import redis_server

    with redis_server() as server:
        yield Layout(server.url, [server.url], "one redis-server")


@contextlib.contextmanager
def cluster_redis():
    # The failover tests' harness (redis-server processes, CLUSTER MEET and
    # ADDSLOTSRANGE, waits until settled): imported rather than copied, so the
    # bench measures the very cluster the tests check the app against.
    from tests.redis_topologies import ClusterSetup

    with tempfile.TemporaryDirectory() as tmp, ClusterSetup(Path(tmp), 3, 1) as cluster:
        masters = cluster.masters()
        slots = ", ".join(
            f"{port}: slots " + " ".join(f"{a}-{b}" for a, b in ranges) for port, ranges in masters
        )
        yield Layout(
            cluster.url,
            [f"redis://:{cluster.password}@127.0.0.1:{port}" for port, _ in masters],
            f"Redis Cluster, {len(masters)} masters ({slots}) + "
            f"{len(cluster.running_ports()) - len(masters)} replicas, all on this machine",
            cluster=True,
        )


REDIS = {"single": single_redis, "cluster": cluster_redis}


def connect(url, cluster):
    """The publisher's and the coordinator's client (bytes replies, as before)."""
    import redis
    import redis.cluster

    return redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def redis_cpu(nodes):
    """used_cpu_sys + used_cpu_user so far, summed over the nodes."""
    import redis

    total = 0.0
    for url in nodes:
        with redis.Redis.from_url(url) as client:
            info = client.info("cpu")
        total += info["used_cpu_sys"] + info["used_cpu_user"]
    return total


# -- latency histogram: log buckets, 1 % wide, cheap to merge across processes -------


def bucket(ms):
    return int(math.log1p(max(ms, 0.0)) * 100)


def percentile(histogram, q):
    """The q-quantile (0..1) in ms of a {bucket: count} histogram; None if empty."""
    total = sum(histogram.values())
    if not total:
        return None
    seen = 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= q * total:
            return math.expm1((key + 0.5) / 100)
    return math.expm1((max(histogram) + 0.5) / 100)


# -- the publisher (its own process, no gevent) -------------------------------------


def publisher(conn, redis_url, cluster, prefix, channels):
    """Runs steps asked for on `conn`: (step, rate, seconds) -> publish_step()'s dict."""
    from core.stream_log import StreamLog

    client = connect(redis_url, cluster)
    log = StreamLog(client, prefix)  # given a RedisCluster, its script SPUBLISHes
    # The script publish() and publish_many() run (lua/publish.lua: XADD +
    # PUBLISH in one call): publish_many pipelines one channel only, and a
    # tick's messages go to many channels. A cluster pipeline (redis-py's
    # ClusterPipeline, which splits the tick by master) refuses .evalsha(), so
    # the script is sent as an EVALSHA command, which it routes by its key; and
    # neither pipeline loads it then: it is loaded on every master here.
    sha = client.script_load(log.scripts["publish"].script)
    names = [channel_name(k) for k in range(channels)]
    keys = [log.stream_key(name) for name in names]
    notify = [log.notification_channel(name) for name in names]

    def send(batch, now, step, seq):
        """One pipeline: messages seq.. of the batch, round-robin over the channels."""
        pipe = client.pipeline(transaction=False)
        for n in range(seq, seq + batch):
            k = n % channels
            pipe.execute_command(
                "EVALSHA", sha, 1, keys[k], notify[k], "t", f"{now:.6f} {step} {n}"
            )
        pipe.execute()

    conn.send("ready")  # imports done: they are not the first step's CPU
    seq = 0
    while (command := conn.recv()) is not None:
        step, rate, seconds = command
        result = publish_step(send, step, rate, seconds, seq, channels)
        seq += result["published"]
        conn.send(result)


def publish_step(send, step, rate, seconds, seq, channels):
    """Publish at `rate` per second for `seconds`: each tick sends what the
    schedule says is due by now, so a slow tick is made up in the next ones
    (a pipeline is capped at 5 ticks' worth: behind schedule, it publishes
    flat out and the achieved rate shows it)."""
    cap = max(1, int(rate * TICK * 5))
    per_channel = [0] * channels
    start = time.time()
    end, tick, sent = start + seconds, start, 0
    while (now := time.time()) < end:
        due = min(int(rate * (now - start)) - sent, cap)
        if due > 0:
            send(due, now, step, seq + sent)
            for n in range(seq + sent, seq + sent + due):
                per_channel[n % channels] += 1
            sent += due
        tick += TICK
        time.sleep(max(0.0, tick - time.time()))
    return {"published": sent, "per_channel": per_channel, "start": start, "end": time.time()}


# -- the load generator (its own processes, gevent, raw sockets) ----------------------


class Tally:
    """What one generator's subscribers received: per step, the deliveries and
    their latency histogram; per 10 ms of arrival time, the deliveries."""

    def __init__(self):
        self.received = Counter()
        self.latency = {}
        self.arrivals = Counter()
        self.open = 0

    def add(self, data, now):
        """Count the whole `data:` lines of `data`; returns the unfinished last line."""
        lines = data.split(b"\n")
        tail = lines.pop()
        n = 0
        for line in lines:
            if line.startswith(b"data: "):
                try:
                    _, sent, step, _seq = line.split(b" ")
                    ms = (now - float(sent)) * 1000
                    step = int(step)
                except ValueError:  # not ours (e.g. `event: close`'s reason)
                    continue
                self.received[step] += 1
                self.latency.setdefault(step, Counter())[bucket(ms)] += 1
                n += 1
        if n:
            self.arrivals[int(now * 100)] += n
        return tail

    def step(self, step, start, end):
        first, last = int(start * 100), int(end * 100)
        return {
            "received": self.received[step],
            "latency": dict(self.latency.get(step, {})),
            "in_window": sum(n for t, n in self.arrivals.items() if first <= t < last),
            "open": self.open,
        }


def generator(conn, port, channels):
    """Subscribe one SSE connection per entry of `channels` (channel indexes),
    report {"held": {channel: connections}, ...}, then answer ("step", k,
    start, end) with Tally.step() until told None."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tally, held, failures = Tally(), Counter(), []

    def subscribe(k):
        # Not create_connection: its getaddrinfo is a thread handoff per client.
        sock = socket.socket()
        sock.settimeout(60)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET /sub/{channel_name(k)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        buf = b""
        while b"retry:" not in buf:  # the stream's first bytes: subscribed
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        sock.settimeout(None)
        held[k] += 1
        tally.open += 1
        return sock, rest

    def client(k):
        try:
            sock, tail = subscribe(k)
        except Exception as exc:  # reported, never silent
            failures.append(repr(exc))
            return
        try:
            while chunk := sock.recv(65536):
                # Whole lines only: a read may end in the middle of one.
                tail = tally.add(tail + chunk, time.time())
        finally:
            tally.open -= 1

    started = time.time()
    for n, k in enumerate(channels):
        gevent.spawn(client, k)
        if n % 200 == 199:  # let connects progress while spawning
            gevent.sleep(0)
    while sum(held.values()) + len(failures) < len(channels) and time.time() < started + 60:
        gevent.sleep(0.01)
    # Pipe reads block: wait in a thread so the subscribers' greenlets run on.
    pool = gevent.get_hub().threadpool
    pool.apply(
        conn.send,
        (
            {
                "held": dict(held),
                "failures": failures[:5],
                "failed": len(failures),
                "connect_s": time.time() - started,
            },
        ),
    )
    while (command := pool.apply(conn.recv)) is not None:
        _, step, start, end = command
        pool.apply(conn.send, (tally.step(step, start, end),))


# -- the coordinator ----------------------------------------------------------------


def start_generators(ctx, port, channels, per_channel):
    """GENERATORS processes sharing the channels x per_channel connections;
    returns (their pipes, processes, {channel: subscribers held})."""
    plan = [i % channels for i in range(channels * per_channel)]
    pipes, procs = [], []
    for g in range(GENERATORS):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=generator, args=(theirs, port, plan[g::GENERATORS]), daemon=True)
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    held = Counter()
    for pipe in pipes:
        hello = pipe.recv()
        held.update({int(k): n for k, n in hello["held"].items()})
        if hello["failed"]:
            print(
                f"generator: {hello['failed']} connections failed, e.g. {hello['failures']}",
                file=sys.stderr,
            )
        print(
            f"generator: {sum(hello['held'].values())} subscribers in {hello['connect_s']:.1f} s",
            flush=True,
        )
    return pipes, procs, held


def wait_for_listeners(layout, prefix, channels, timeout=10):
    """Until each channel's notification channel has a listener in Redis: the
    workers subscribe to it after the client's stream has opened."""
    from core.keys import Keys

    names = [Keys(prefix).notifications(channel_name(k)) for k in range(channels)]
    deadline = time.time() + timeout
    with connect(layout.url, layout.cluster) as client:
        while time.time() < deadline:
            if layout.cluster:
                # SSUBSCRIBEd on the channel's master: the masters' counts add up
                listeners = client.pubsub_shardnumsub(*names, target_nodes=client.PRIMARIES)
            else:
                listeners = client.pubsub_numsub(*names)
            if len(listeners) == len(names) and all(n for _, n in listeners):
                return
            time.sleep(0.1)
    print("warning: some channels have no listener in Redis yet", file=sys.stderr)


def cpu_now(pids, redis_nodes):
    """CPU seconds used so far, per kind of process."""
    from bench.common import cpu_seconds

    return {
        "workers": cpu_seconds(pids["workers"]),
        "redis": redis_cpu(redis_nodes),
        "publisher": cpu_seconds(pids["publisher"]),
        "generators": cpu_seconds(pids["generators"]),
        "machine": machine_cpu(),
    }


def machine_cpu():
    """CPU seconds the whole machine has been busy (/proc/stat), every process."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_step(step, rate, seconds, publisher_pipe, generator_pipes, pids, redis_nodes, held):
    """One offered rate: publish, drain, then gather what the subscribers got."""
    before = cpu_now(pids, redis_nodes)
    publisher_pipe.send((step, rate, seconds))
    done = publisher_pipe.recv()
    during = cpu_now(pids, redis_nodes)
    time.sleep(DRAIN)
    after = cpu_now(pids, redis_nodes)
    got = []
    for pipe in generator_pipes:
        pipe.send(("step", step, done["start"], done["end"]))
        got.append(pipe.recv())
    histogram = Counter()
    for g in got:
        histogram.update({int(k): n for k, n in g["latency"].items()})
    elapsed = done["end"] - done["start"]
    expected = sum(n * held[k] for k, n in enumerate(done["per_channel"]))
    received = sum(g["received"] for g in got)
    worker_cpu = after["workers"] - before["workers"]  # over the step and its drain
    # cores each kind kept busy while publishing: where the machine went
    busy = {kind: (during[kind] - before[kind]) / elapsed for kind in before}
    machine = busy.pop("machine")
    return {
        "offered": rate,
        "elapsed_s": round(elapsed, 2),
        "published": done["published"],
        "published_per_s": done["published"] / elapsed,
        "deliveries_per_s": sum(g["in_window"] for g in got) / elapsed,
        "p50_ms": percentile(histogram, 0.50),
        "p99_ms": percentile(histogram, 0.99),
        "expected": expected,
        "received": received,
        "lost": expected - received,
        "subscribers_open": sum(g["open"] for g in got),
        "worker_cpu_s_per_1k_deliveries": worker_cpu / max(received, 1) * 1000,
        "redis_cpu_s_per_1k_messages": (after["redis"] - before["redis"])
        / max(done["published"], 1)
        * 1000,
        "busy_cores": busy,
        # the rest of the machine: other programs (a shared machine), a cluster's replicas
        "else_busy_cores": machine - sum(busy.values()),
    }


def measure(args):
    from bench.common import gunicorn_server, worker_pids
    from core.config import load_settings

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: gevent patches cleanly
    rates = [int(r) for r in args.rates.split(",")]
    rows = []
    with (
        REDIS[args.redis]() as layout,
        gunicorn_server(layout.url, workers=args.workers, **layout.env) as (url, master, env),
    ):
        print(f"Redis: {layout.description}", flush=True)
        redis_nodes = layout.cpu_nodes
        prefix = load_settings(env)["REDIS_PREFIX"]
        workers = wait_for_workers(master, args.workers, worker_pids)
        pipes, generators, held = start_generators(
            ctx, int(url.rsplit(":", 1)[1]), args.channels, args.per_channel
        )
        wait_for_listeners(layout, prefix, args.channels)
        ours, theirs = ctx.Pipe()
        pub = ctx.Process(
            target=publisher,
            args=(theirs, layout.url, layout.cluster, prefix, args.channels),
            daemon=True,
        )
        pub.start()
        theirs.close()  # ours only: a publisher that dies is an EOFError, not a hang
        ours.recv()  # "ready"
        pids = {
            "workers": workers,
            "publisher": [pub.pid],
            "generators": [p.pid for p in generators],
        }
        try:
            for step, rate in enumerate(rates):
                row = run_step(step, rate, args.seconds, ours, pipes, pids, redis_nodes, held)
                row.update(
                    redis=args.redis,
                    redis_layout=layout.description,
                    seconds=args.seconds,
                    workers=args.workers,
                    channels=args.channels,
                    per_channel=args.per_channel,
                    subscribers=sum(held.values()),
                )
                rows.append(row)
                print(table([row], header=not step), flush=True)
        finally:
            for pipe in (ours, *pipes):
                with contextlib.suppress(OSError):  # a process that died needs no goodbye
                    pipe.send(None)
            for proc in (pub, *generators):
                proc.join(5)
                if proc.is_alive():
                    proc.terminate()
    return rows


def wait_for_workers(master, count, worker_pids):
    pids = worker_pids(master)
    for _ in range(100):
        if len(pids) == count:
            break
        time.sleep(0.1)
        pids = worker_pids(master)
    return pids


# -- the report -------------------------------------------------------------------


def table(rows, header=True):
    lines = (
        [
            "| Redis | offered msg/s | published msg/s | deliveries/s | latency p50 (ms) "
            "| latency p99 (ms) | missing | worker CPU s / 1k deliveries "
            "| Redis CPU s / 1k messages "
            "| cores busy: workers / Redis / publisher / load gen / everything else |",
            "|" + "---|" * 10,
        ]
        if header
        else []
    )
    for r in rows:
        busy = r["busy_cores"]
        lines.append(
            f"| {r['redis']} | {r['offered']:,} | {r['published_per_s']:,.0f} "
            f"| {r['deliveries_per_s']:,.0f} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} "
            f"| {r['lost']:,} | {r['worker_cpu_s_per_1k_deliveries']:.3f} "
            f"| {r['redis_cpu_s_per_1k_messages']:.3f} "
            f"| {busy['workers']:.2f} / {busy['redis']:.2f} / {busy['publisher']:.2f} "
            f"/ {busy['generators']:.2f} / {else_busy(r)} |"
        )
    return "\n".join(lines)


def else_busy(r):
    """The rest of the machine's cores busy (clock ticks: -0.01 is 0)."""
    return "n/a" if "else_busy_cores" not in r else f"{max(r['else_busy_cores'], 0.0):.2f}"


def ms(value):
    return "n/a" if value is None else f"{value:,.1f}"


def keeps_up(r):
    """Published the offered rate, delivered it to every subscriber during the
    step, and lost nothing."""
    wanted = r["published_per_s"] * r["subscribers"] / r["channels"]
    return (
        r["published_per_s"] >= KEEPS_UP * r["offered"]
        and r["deliveries_per_s"] >= KEEPS_UP * wanted
        and r["lost"] == 0
    )


def bottleneck(r):
    """(kind, cores busy, its ceiling) of the kind of process nearest its own
    ceiling: a gevent worker, Redis and the publisher use one core each at
    most, and every process shares the machine's cores."""
    ceilings = {"workers": r["workers"], "redis": 1, "publisher": 1, "generators": GENERATORS}
    ceilings = {kind: min(n, os.cpu_count()) for kind, n in ceilings.items()}
    busy = r["busy_cores"]
    kind = max(busy, key=lambda k: busy[k] / ceilings[k])
    return kind, busy[kind], ceilings[kind]


NAMES = {
    "workers": "the gunicorn workers",
    "redis": "Redis",
    "publisher": "the publisher",
    "generators": "the load generator",
}


def reading(rows):
    """A few plain sentences drawn from the numbers (check them against the table)."""
    bad = [r for r in rows if not keeps_up(r)]
    good = rows[: rows.index(bad[0])] if bad else rows
    lines = []
    if good:
        r = good[-1]
        lines.append(
            f"- Kept up to {r['offered']:,} msg/s offered"
            f"{'' if bad else ' (the highest rate asked for: no saturation yet)'}: "
            f"{r['deliveries_per_s']:,.0f} deliveries/s, p99 {ms(r['p99_ms'])} ms, "
            "nothing lost."
        )
    else:
        lines.append("- It did not keep up at any offered rate.")
    r = bad[0] if bad else rows[-1]
    if bad:
        wanted = r["published_per_s"] * r["subscribers"] / r["channels"]
        lines.append(
            f"- At {r['offered']:,} msg/s it falls behind: published "
            f"{r['published_per_s']:,.0f} msg/s, delivered {r['deliveries_per_s']:,.0f} "
            f"of {wanted:,.0f} deliveries/s during the step, p99 {ms(r['p99_ms'])} ms, "
            f"{r['lost']:,} deliveries missing {DRAIN:.0f} s after the step, with "
            f"{r['subscribers_open']:,} of {r['subscribers']:,} subscribers still "
            "connected (late, not dropped, when all are)."
        )
    kind, busy, ceiling = bottleneck(r)
    total, cores = sum(r["busy_cores"].values()), os.cpu_count()
    lines.append(
        f"- At {r['offered']:,} msg/s the nearest to its ceiling was {NAMES[kind]}: "
        f"{busy:.2f} of {ceiling} core{'s' if ceiling > 1 else ''} "
        f"({busy / ceiling:.0%}); all processes together kept {total:.1f} of the "
        f"machine's {cores} cores busy"
        + (
            ": the machine is full, and the server, Redis, the publisher and the load "
            "generator compete for the same cores."
            if total >= 0.9 * cores
            else "."
        )
        + (
            f" Everything else on the machine ({'the replicas, ' if r['redis'] == 'cluster' else ''}"
            f"other programs) kept {else_busy(r)} cores busy."
            if "else_busy_cores" in r
            else ""
        )
    )
    first, last = rows[0], rows[-1]
    lines.append(
        f"- Worker CPU per 1,000 deliveries went from "
        f"{first['worker_cpu_s_per_1k_deliveries']:.3f} s to "
        f"{last['worker_cpu_s_per_1k_deliveries']:.3f} s, Redis CPU per 1,000 messages "
        f"from {first['redis_cpu_s_per_1k_messages']:.3f} s to "
        f"{last['redis_cpu_s_per_1k_messages']:.3f} s, from the lowest rate to the "
        "highest."
    )
    return "\n".join(lines)


def wrapped(bullets):
    """Markdown bullets wrapped like the rest of the docs."""
    return "\n".join(
        textwrap.fill(line, 80, subsequent_indent="  ") for line in bullets.splitlines()
    )


TITLES = {"single": "One Redis", "cluster": "3-master Redis Cluster"}


def by_layout(rows):
    """{layout: its rows}, in REDIS's order."""
    return {name: [r for r in rows if r["redis"] == name] for name in REDIS}


def comparison(single, cluster):
    """Plain sentences on the two layouts at the rates both were offered."""
    common = [(s, c) for s in single for c in cluster if s["offered"] == c["offered"]]
    if not common:
        return ""
    both = [(s, c) for s, c in common if keeps_up(s) and keeps_up(c)]
    nodes = cluster[0].get("redis_layout", "the cluster")
    lines = [
        f"- Both layouts ran on the same {os.cpu_count()}-core machine, the cluster's nodes "
        f"({nodes}) beside the workers, the publisher and the load generator: a cluster "
        "cannot add CPU here, so this shows what sharding costs, not how it scales."
    ]
    if both:
        s, c = both[-1]
        lines.append(
            f"- Both kept up to {s['offered']:,} msg/s: {c['deliveries_per_s']:,.0f} deliveries/s "
            f"on the cluster, p99 {ms(c['p99_ms'])} ms (one Redis: "
            f"{s['deliveries_per_s']:,.0f}, p99 {ms(s['p99_ms'])} ms)."
        )
    behind = [c for c in cluster if not keeps_up(c)]
    if behind and bottleneck(behind[0])[0] == "publisher":
        c = behind[0]
        wanted = c["published_per_s"] * c["subscribers"] / c["channels"]
        if c["deliveries_per_s"] >= KEEPS_UP * wanted and c["lost"] == 0:
            lines.append(
                f"- From {c['offered']:,} msg/s the cluster run is limited by its publisher: "
                f"it published only {c['published_per_s']:,.0f} msg/s, and the server "
                f"delivered {c['deliveries_per_s'] / wanted:.0%} of that in step, so the "
                "cluster's deliveries and latency there "
                "are not the ceiling of the workers or of Redis."
            )
    lines.append(
        f"- Deliveries missing {DRAIN:.0f} s after the step, by offered msg/s: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{r['lost']:,} at {r['offered']:,}" for r in rows)
            for name, rows in (("one Redis", single), ("the cluster", cluster))
        )
        + "."
    )
    ends = [common[0], common[-1]] if len(common) > 1 else common[:1]

    def at_rates(measure):
        """`measure` on the cluster against one Redis, at the lowest and highest rate."""
        return ", ".join(
            f"{measure(c)} on the cluster against {measure(s)} on one Redis at "
            f"{s['offered']:,} msg/s"
            for s, c in ends
        )

    lines.append(
        "- The publisher's CPU per message: "
        + at_rates(lambda r: f"{publisher_us_per_message(r):.0f} µs")
        + " (redis-py's cluster pipeline, split by master, against one plain pipeline)."
    )
    lines.append(
        "- Redis CPU per 1,000 messages (INFO cpu, the cluster's masters summed, replicas "
        "not counted): "
        + at_rates(lambda r: f"{r['redis_cpu_s_per_1k_messages']:.3f} s")
        + " (a master's CPU includes its cluster bus and its replication to a replica, "
        "which one Redis does not have)."
    )
    return "\n".join(lines)


def publisher_us_per_message(r):
    return r["busy_cores"]["publisher"] * r["elapsed_s"] / max(r["published"], 1) * 1e6


def section(rows):
    r = rows[0]
    intro = textwrap.fill(
        f"Redis: {r.get('redis_layout', 'one redis-server')}. {r['channels']:,} channels with "
        f"{r['per_channel']} subscribers each ({r['subscribers']:,} connections, opened before "
        "publishing), messages published straight into Redis round-robin over the channels at "
        f"each offered rate for {r['seconds']:.0f} s. Measured {r['date']} on {r['machine']}"
        + (f" (load average {r['load_before']:.1f} when it started)" if "load_before" in r else "")
        + ", with the load generator (2 processes, gevent, raw sockets) and the publisher on the same "
        "machine. Command:",
        80,
    )
    return f"""## {TITLES[r["redis"]]}

{intro}

    .venv/bin/python {r["command"]}

{table(rows)}

### Reading

{wrapped(reading(rows))}
"""


def write_report(path, rows):
    """The whole file: a section per layout measured (rows of the JSON)."""
    layouts = {name: got for name, got in by_layout(rows).items() if got}
    workers = rows[0]["workers"]
    sections = "\n".join(section(got) for got in layouts.values())
    if len(layouts) == 2:
        sections += f"""
## One Redis and the cluster side by side

{wrapped(comparison(*layouts.values()))}
"""
    Path(path).write_text(f"""# Publish-to-delivery throughput on {workers} gevent workers

How many messages per second {workers} gunicorn gevent workers carry from publish to
SSE subscriber, on each Redis layout (`--redis`): one redis-server, and a Redis
Cluster of 3 masters with a replica each (REDIS_CLUSTER=1, sharded pub/sub). Each
section is the latest run of its layout; bench/throughput.py rewrites this file
from docs/bench-throughput.json, which keeps them.

{sections}
## The columns

- *published*: the rate the publisher achieved (one pipeline of the channels'
  publish script per 10 ms tick, from its own process; on a cluster, split by
  master).
- *deliveries/s*: `data:` events (messages x subscribers) that arrived during the
  step; *latency*: from the publisher's timestamp in the message to its arrival,
  over every delivery of the step.
- *missing*: deliveries expected (messages published x subscribers of their
  channel) minus those received by {DRAIN:.0f} s after the step's last publish;
  with every subscriber still connected (none cut as a slow consumer) they are
  late, not lost.
- *CPU per 1,000*: the workers' (or Redis's, INFO cpu, summed over a cluster's
  masters) CPU over the step and its drain. *cores busy*: CPU seconds per second
  of the step, per kind of process; *everything else*: the machine's busy CPU
  (/proc/stat) minus those, i.e. other programs on a shared machine and, on a
  cluster, its replicas.
""")


def merged(path, rows):
    """The JSON's rows of the other layouts, then these (one run per layout)."""
    layout = rows[0]["redis"]
    old = json.loads(Path(path).read_text()) if Path(path).exists() else []
    return [r for r in old if r["redis"] != layout] + rows


def options():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", help=f"offered msg/s, comma-separated ({DEFAULTS['rates']})")
    parser.add_argument("--seconds", type=float, help="publishing time per rate (10)")
    parser.add_argument("--channels", type=int, help="channels (100)")
    parser.add_argument("--per-channel", type=int, help="SSE subscribers per channel (10)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis", choices=sorted(REDIS), default="single")
    parser.add_argument("--report", help="default: docs/bench-throughput.md (none with --quick)")
    parser.add_argument("--json", help="default: docs/bench-throughput.json (none with --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 500,1000 msg/s, 3 s each, 20 channels x 5"
    )
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # A smoke run must not overwrite the measured report.
    if not args.quick:
        args.report = args.report or str(ROOT / "docs" / "bench-throughput.md")
        args.json = args.json or str(ROOT / "docs" / "bench-throughput.json")
    return args


def main():
    args = options()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the servers on the way out
    from bench.common import machine

    load_before = os.getloadavg()[0]  # a shared machine: say how busy it was
    rows = measure(args)
    command = " ".join(["bench/throughput.py", *sys.argv[1:]])
    for row in rows:
        row.update(
            machine=machine(),
            date=time.strftime("%Y-%m-%d"),
            command=command,
            load_before=round(load_before, 2),
        )
    print()
    print(table(rows))
    print()
    print(reading(rows))
    everything = merged(args.json, rows) if args.json else rows
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1) + "\n")
    if args.report:
        write_report(args.report, everything)
    if args.report or args.json:
        print(f"wrote {' and '.join(p for p in (args.report, args.json) if p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
