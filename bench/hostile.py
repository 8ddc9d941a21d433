"""Hostile clients beside honest ones: do the quotas and bounds hold?

    .venv/bin/python bench/hostile.py [--seconds 20] [--via-nginx]

Starts its own redis-server and gunicorn (2 gevent workers, the shipped
defaults for every quota and bound, TRUSTED_PROXIES=1 so that each simulated
client has its own address in X-Forwarded-For; everything stays on loopback).
Runs the honest clients alone for `--seconds`, then again with the hostile
ones beside them, and reports:

- each honest probe's p50/p99 latency in both runs, and the ratio (target:
  p99 within 1.5x);
- Redis memory (used_memory) growth during each run;
- whether any worker was restarted, and every 5xx anyone saw (target: none);
- what each hostile client achieved (status codes, close codes, bytes).

Honest probes, each from an address of its own: /healthz (on a new
connection each time, as a load balancer checks, and on a kept-alive one); a
publish reaching an SSE subscriber, a WebSocket subscriber and a long-poller;
a WebSocket echo round trip; a ticker quote; an editor op acknowledged; a
drawing move reaching another drawer; a Q&A question reaching the board's
stream.

Hostile clients, one per finding of the security review, each bounded in
count and time: bodies trickled a byte at a time, chunked bodies over the
limit, streams opened from one address past its share, long-polls opened and
abandoned, publishes as fast as possible, unknown ticker symbols, logins
guessing one account's password from many addresses, new editor documents
and 64 KB ops as fast as allowed, an op against the oldest version, Q&A
questions and answers as fast as allowed, a drawing filling the canvas and
newcomers joining it. Writes docs/bench-hostile.md.

`--via-nginx`: every client goes through the shipped deploy/nginx.conf (one
nginx worker process, on the same 2 cores) in front of the same gunicorn, as
in production; nginx takes each client's address from its X-Forwarded-For
(bench only: the clients are all on loopback), so its per-address limits
apply to each simulated client. Writes docs/bench-hostile-nginx.md.
"""

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import redis
import requests
import websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, gunicorn_server, machine, redis_server, worker_pids
from core import ot
from core.config import SETTINGS
from realtime_client import parse_sse
from tests.nginx_front import NGINX, SKIP_REASON, nginx_in_front

REPORT = ROOT / "docs" / "bench-hostile.md"
NGINX_REPORT = ROOT / "docs" / "bench-hostile-nginx.md"
# Behind nginx, each simulated client's address: the X-Forwarded-For it sends
# from loopback (a real deployment trusts no such header from its clients).
CLIENT_ADDRESS_FROM_HEADER = """\
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
"""
ORIGIN_OF = {}  # the address each honest probe uses


class Run:
    """What one phase observed: latencies per probe, statuses, errors."""

    def __init__(self):
        self.latencies = defaultdict(list)
        self.server_errors = Counter()  # "probe: status" of every 5xx seen
        self.outcomes = defaultdict(Counter)  # hostile client -> what it got
        self.failures = Counter()
        self.lock = threading.Lock()

    def took(self, probe, seconds):
        with self.lock:
            self.latencies[probe].append(seconds * 1000)

    def status(self, who, code):
        with self.lock:
            if code >= 500:
                self.server_errors[f"{who}: {code}"] += 1

    def outcome(self, who, what):
        with self.lock:
            self.outcomes[who][what] += 1

    def failed(self, probe, exc):
        with self.lock:
            self.failures[f"{probe}: {type(exc).__name__}"] += 1


def address(name):
    """A stable simulated client address per name (TEST-NET-3 for honest,
    TEST-NET-2 for hostile clients)."""
    if name not in ORIGIN_OF:
        hostile = name.startswith("hostile")
        ORIGIN_OF[name] = f"{'198.51.100' if hostile else '203.0.113'}.{len(ORIGIN_OF) + 1}"
    return ORIGIN_OF[name]


def headers(name, token=None, **extra):
    out = {"X-Forwarded-For": address(name), **extra}
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def every(seconds, stop, action):
    """Call action() every `seconds` until `stop` is set."""
    while not stop.is_set():
        began = time.monotonic()
        action()
        stop.wait(max(0.0, seconds - (time.monotonic() - began)))


def probe_thread(name, seconds, run, stop, action):
    """A thread calling action() every `seconds`; a probe that fails is
    reported under `name`, not fatal."""

    def guarded():
        try:
            action()
        except Exception as exc:
            run.failed(name, exc)

    return threading.Thread(target=every, args=(seconds, stop, guarded), daemon=True)


# -- honest probes -------------------------------------------------------------------


def honest_probes(url, token, run, stop):
    ws_url = url.replace("http://", "ws://")
    threads = []

    def probe(name, seconds, action):
        threads.append(probe_thread(name, seconds, run, stop, action))

    def healthz_by(get, who, probe_name):
        def healthz():
            began = time.monotonic()
            r = get(url + "/healthz", headers=headers(who), timeout=30)
            run.status("healthz", r.status_code)
            run.took(probe_name, time.monotonic() - began)

        return healthz

    # On a new connection each time, as a load balancer checks, and on one kept
    # alive: a new connection waits behind every one accepted before it
    # (docs/bench-hostile.md).
    probe("healthz", 0.1, healthz_by(requests.get, "healthz", "healthz"))
    probe(
        "healthz kept alive",
        0.1,
        healthz_by(
            requests.Session().get, "healthz kept alive", "healthz on a keep-alive connection"
        ),
    )

    def quote():
        began = time.monotonic()
        r = requests.get(
            url + "/ticker/quote", params={"symbol": "IBM"}, headers=headers("ticker"), timeout=30
        )
        run.status("ticker", r.status_code)
        run.took("ticker quote", time.monotonic() - began)

    probe("ticker", 1.0, quote)

    echo = websocket.create_connection(
        ws_url + "/ws/echo?greeting=off", timeout=30, header=[f"X-Forwarded-For: {address('echo')}"]
    )

    def echo_round_trip():
        began = time.monotonic()
        echo.send("ping " + uuid.uuid4().hex)
        echo.recv()
        run.took("websocket echo", time.monotonic() - began)

    probe("echo", 0.1, echo_round_trip)

    drawer, watcher = (_ws(ws_url + "/draw/ws", name) for name in ("drawer", "watcher"))
    drawer_id = _first(drawer, "welcome")["id"]
    _first(watcher, "welcome")

    def draw_move():
        x = round(random.random(), 5)  # as the server rounds it
        began = time.monotonic()
        drawer.send(json.dumps({"x": x, "y": 0.5, "drawing": False}))
        while True:
            watcher.settimeout(max(0.01, began + 10 - time.monotonic()))
            frame = json.loads(watcher.recv())  # a timeout after 10 s: counted as failed
            if frame.get("id") == drawer_id and frame.get("x") == x:
                break
        run.took("drawing move to another drawer", time.monotonic() - began)

    probe("drawing", 0.2, draw_move)

    editor = _ws(f"{ws_url}/editor/honest-{uuid.uuid4().hex[:8]}/ws", "editor")
    state = {"v": _first(editor, "snapshot")["v"], "length": 0}
    _first(editor, "ready")

    def editor_op():
        began = time.monotonic()
        op = ot.to_json(ot.normalize([state["length"], "a"]))
        editor.send(json.dumps({"type": "op", "v": state["v"], "op": op, "id": uuid.uuid4().hex}))
        state["v"] = _first(editor, "ack")["v"]
        state["length"] += 1
        run.took("editor op acknowledged", time.monotonic() - began)

    probe("editor", 0.5, editor_op)
    threads.append(_delivery_probe(url, token, run, stop))
    threads.append(_qa_probe(url, run, stop))
    for thread in threads:
        thread.start()
    return threads, [echo, drawer, watcher, editor]


def _ws(url, name):
    return websocket.create_connection(
        url, timeout=30, header=[f"X-Forwarded-For: {address(name)}"]
    )


class Closed(Exception):
    """The server closed the WebSocket; str(): 'close <code> <reason>'."""


def _close_text(data):
    return f"close {int.from_bytes(data[:2], 'big')} {data[2:42].decode(errors='replace')}"


def _first(ws, *kinds):
    """The next frame whose type is one of `kinds` (others are skipped);
    Closed when the server closes first."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise Closed(_close_text(data))
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            frame = json.loads(data)
            if frame.get("type") in kinds:
                return frame


def _qa_probe(url, run, stop):
    """A question every 3 s (the quota is 30 a minute), timed until the
    board's stream shows it."""
    asked = {}
    login = {}
    ready = threading.Event()

    def stream():
        with requests.get(
            f"{url}/qa/stream",
            stream=True,
            timeout=60,
            headers=headers("qa", Accept="text/event-stream"),
        ) as r:
            for event in parse_sse(r.iter_content(chunk_size=None)):
                if event.event == "login":
                    login["id"] = json.loads(event.data)["id"]
                    ready.set()
                elif event.event == "questions":
                    for question in json.loads(event.data)["questions"]:
                        if question in asked:
                            run.took(
                                "Q&A question to the board", time.monotonic() - asked.pop(question)
                            )
                if stop.is_set():
                    return

    def ask():
        question = f"honest question {uuid.uuid4().hex[:8]}?"
        asked[question] = time.monotonic()
        r = requests.post(
            f"{url}/qa/questions",
            json={"question": question},
            timeout=30,
            headers=headers("qa", **{"X-Client-Id": login["id"]}),
        )
        run.status("qa", r.status_code)

    threading.Thread(target=stream, daemon=True).start()
    ready.wait(10)
    return probe_thread("qa", 3.0, run, stop, ask)


def _delivery_probe(url, token, run, stop):
    """A publish every second, timed until an SSE subscriber has it."""
    channel = "honest-" + uuid.uuid4().hex[:6]
    sent = {}
    ready = threading.Event()

    def subscribe():
        with requests.get(
            f"{url}/sub/{channel}",
            stream=True,
            timeout=60,
            headers=headers("sse", Accept="text/event-stream"),
        ) as r:
            ready.set()
            for event in parse_sse(r.iter_content(chunk_size=None)):
                if event.event == "message" and event.data in sent:
                    run.took("publish to SSE", time.monotonic() - sent.pop(event.data))
                if stop.is_set():
                    return

    def publish():
        text = uuid.uuid4().hex
        sent[text] = time.monotonic()
        r = requests.post(
            f"{url}/pub/{channel}", data=text, timeout=30, headers=headers("publisher", token)
        )
        run.status("publish", r.status_code)

    threading.Thread(target=subscribe, daemon=True).start()
    ready.wait(10)
    return probe_thread("publish", 1.0, run, stop, publish)


# -- hostile clients -------------------------------------------------------------------


def _raw(url, name, request):
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        request.replace("\r\n\r\n", f"\r\nX-Forwarded-For: {address(name)}\r\n\r\n", 1).encode()
    )
    return sock


def _status_of(sock):
    try:
        head = sock.recv(4096)
    except OSError as exc:
        return type(exc).__name__
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"


def slow_bodies(url, token, run, stop, count=50):
    """Bodies trickled at a byte every 2 s."""

    def one(i):
        name = f"hostile slow body {i % 5}"
        sock = _raw(
            url,
            name,
            f"POST /pub/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
            f"Authorization: Bearer {token}\r\n\r\n",
        )
        try:
            while not stop.is_set():
                sock.sendall(b"x")
                sock.settimeout(2)
                try:
                    head = sock.recv(4096)
                except TimeoutError:
                    continue
                status = head.split(b" ", 2)[1].decode() if head else "closed"
                run.outcome("slow bodies", status)
                run.status("slow bodies", int(status) if status.isdigit() else 0)
                return
        except OSError as exc:
            run.outcome("slow bodies", type(exc).__name__)
        finally:
            sock.close()

    return [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]


def chunked_oversize(url, token, run, stop):
    body = b"a" * 70_000
    chunks = (
        b"".join(
            b"%X\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192])
            for i in range(0, len(body), 8192)
        )
        + b"0\r\n\r\n"
    )

    def go():
        while not stop.is_set():
            sock = _raw(
                url,
                "hostile chunked",
                "POST /pub/big HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            with sock:
                try:
                    sock.sendall(chunks)
                except OSError:
                    pass
                status = _status_of(sock)
            run.outcome("chunked bodies over the limit", status)
            run.status("chunked", int(status) if status.isdigit() else 0)
            stop.wait(0.2)

    return [threading.Thread(target=go, daemon=True)]


def stream_flood(url, run, stop, count=600):
    """One address opening SSE streams past its share, and holding them."""

    def go():
        held = []
        for _ in range(count):
            if stop.is_set():
                break
            sock = _raw(
                url,
                "hostile streams",
                "GET /sub/flood HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
            )
            status = _status_of(sock)
            run.outcome("streams from one address", status)
            run.status("streams", int(status) if status.isdigit() else 0)
            held.append(sock)
        stop.wait()
        for sock in held:
            sock.close()

    return [threading.Thread(target=go, daemon=True)]


def abandoned_polls(url, run, stop):
    """Long-polls opened and dropped at once, 100 at a time."""

    def go():
        while not stop.is_set():
            for i in range(100):
                sock = _raw(
                    url,
                    f"hostile abandoned {i % 10}",
                    "GET /sub/abandoned HTTP/1.1\r\nHost: x\r\n\r\n",
                )
                sock.close()
            run.outcome("abandoned long-polls", "100 opened and dropped")
            stop.wait(0.5)

    return [threading.Thread(target=go, daemon=True)]


def publish_flood(url, token, run, stop):
    def go():
        session = requests.Session()
        while not stop.is_set():
            r = session.post(
                f"{url}/pub/flood",
                data="x" * 1000,
                timeout=30,
                headers=headers("hostile publisher", token),
            )
            run.outcome("publishes as fast as possible", r.status_code)
            run.status("publish flood", r.status_code)

    return [threading.Thread(target=go, daemon=True)]


def unknown_symbols(url, run, stop):
    def go():
        session = requests.Session()
        while not stop.is_set():
            r = session.get(
                f"{url}/ticker/quote",
                params={"symbol": "ZZZZ"},
                timeout=30,
                headers=headers("hostile ticker"),
            )
            run.outcome("unknown ticker symbols", r.status_code)
            run.status("ticker flood", r.status_code)

    return [threading.Thread(target=go, daemon=True)]


def password_guesses(url, run, stop):
    """One account's password guessed from many addresses."""

    def go():
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            r = session.post(
                f"{url}/auth/token",
                timeout=30,
                json={"username": "bench-honest", "password": f"guess{i}"},
                headers={"X-Forwarded-For": f"192.0.2.{i % 250 + 1}"},
            )
            run.outcome("password guesses from many addresses", r.status_code)
            run.status("guesses", r.status_code)

    return [threading.Thread(target=go, daemon=True)]


def _closed_how(ws_call, *args):
    """What a WebSocket attempt ended with: a status, a close code, or 'open'."""
    try:
        ws_call(*args)
    except Closed as exc:
        return str(exc)
    except websocket.WebSocketBadStatusException as exc:
        return str(exc.status_code)
    except websocket.WebSocketConnectionClosedException:
        return "closed"
    except websocket.WebSocketException as exc:
        return type(exc).__name__
    except OSError as exc:
        return type(exc).__name__
    return "open"


def _close_code(ws):
    """How the server closed `ws` (what it sends before is skipped)."""
    return _closed_how(_first, ws)


def editor_flood(url, run, stop):
    """New documents as fast as allowed; 64 KB ops into one; ops against v0."""
    ws_url = url.replace("http://", "ws://")

    def open_one():
        ws = _ws(f"{ws_url}/editor/flood-{uuid.uuid4().hex[:10]}/ws", "hostile editor documents")
        try:
            _first(ws, "ready")
        finally:
            ws.close()

    def new_documents():
        while not stop.is_set():
            run.outcome("new editor documents", _closed_how(open_one))

    def big_ops():
        while not stop.is_set():
            # a new document each time: a full one (100,000 characters) closes
            doc = f"{ws_url}/editor/big-{uuid.uuid4().hex[:8]}/ws"
            ws = _ws(doc, "hostile editor ops")
            try:
                version = _first(ws, "snapshot")["v"]
                _first(ws, "ready")
                while not stop.is_set():
                    # 60 KB of emoji as UTF-8: just under the 64 KB frame limit
                    ws.send(
                        json.dumps(
                            {
                                "type": "op",
                                "v": version,
                                "id": uuid.uuid4().hex,
                                "op": ot.to_json(["😀" * 15_000]),
                            },
                            ensure_ascii=False,
                        )
                    )
                    version = _first(ws, "ack")["v"]
                    run.outcome("64 KB editor ops", "acknowledged")
                    # and one against the oldest version, for the most transform work
                    ws.send(
                        json.dumps(
                            {"type": "op", "v": 0, "id": uuid.uuid4().hex, "op": ot.to_json(["x"])}
                        )
                    )
                    answer = _first(ws, "ack", "snapshot")["type"]  # snapshot: too far behind
                    run.outcome("ops against version 0", answer)
                    if answer == "snapshot":
                        version = _first(ws, "ready")["v"]
            except Closed as exc:
                run.outcome("64 KB editor ops", str(exc))
            except (websocket.WebSocketException, OSError) as exc:
                run.outcome("64 KB editor ops", type(exc).__name__)
            ws.close()

    return [
        threading.Thread(target=new_documents, daemon=True),
        threading.Thread(target=big_ops, daemon=True),
    ]


def qa_flood(url, run, stop):
    """Questions, answers and selections as fast as allowed."""

    def go():
        session = requests.Session()
        with session.get(
            f"{url}/qa/stream",
            stream=True,
            timeout=60,
            headers=headers("hostile qa", Accept="text/event-stream"),
        ) as r:
            client = next(
                json.loads(event.data)["id"]
                for event in parse_sse(r.iter_content(chunk_size=None))
                if event.event == "login"
            )
        sent = headers("hostile qa", **{"X-Client-Id": client})
        while not stop.is_set():
            question = f"{uuid.uuid4().hex} " + "q" * 200
            r = session.post(
                f"{url}/qa/questions", json={"question": question}, headers=sent, timeout=30
            )
            run.outcome("Q&A questions", r.status_code)
            r = session.post(
                f"{url}/qa/select", json={"question": question}, headers=sent, timeout=30
            )
            run.outcome("Q&A selections", r.status_code)
            r = session.post(
                f"{url}/qa/answers", json={"answer": "a" * 1000}, headers=sent, timeout=30
            )
            run.outcome("Q&A answers", r.status_code)
            run.status("qa flood", r.status_code)

    return [threading.Thread(target=go, daemon=True)]


def draw_flood(url, run, stop):
    """One client filling the canvas as fast as allowed; newcomers joining."""
    ws_url = url.replace("http://", "ws://")

    def fill():
        while not stop.is_set():
            ws = _ws(ws_url + "/draw/ws", "hostile drawer")
            _first(ws, "welcome")
            try:
                while not stop.is_set():
                    ws.send(
                        json.dumps({"x": random.random(), "y": random.random(), "drawing": True})
                    )
            except (websocket.WebSocketException, OSError):
                pass
            run.outcome("moves as fast as possible", _close_code(ws))
            ws.close()

    def join(i):
        ws = _ws(ws_url + "/draw/ws", f"hostile newcomer {i}")
        try:
            _first(ws, "welcome")
        finally:
            ws.close()

    def newcomers():
        while not stop.is_set():
            for i in range(20):
                run.outcome("drawing newcomers", _closed_how(join, i))
            stop.wait(1)

    return [
        threading.Thread(target=fill, daemon=True),
        threading.Thread(target=newcomers, daemon=True),
    ]


HOSTILE = [
    slow_bodies,
    chunked_oversize,
    stream_flood,
    abandoned_polls,
    publish_flood,
    unknown_symbols,
    password_guesses,
    editor_flood,
    qa_flood,
    draw_flood,
]


def hostile_clients(url, token, run, stop, attacks):
    """The attacks at once; `token` is the hostile side's own account."""
    threads = []
    for attack in attacks:
        params = attack.__code__.co_varnames[: attack.__code__.co_argcount]
        kwargs = {"url": url, "run": run, "stop": stop}
        if "token" in params:
            kwargs["token"] = token
        threads += attack(**kwargs)
    for thread in threads:
        thread.start()
    return threads


# -- the run -------------------------------------------------------------------------


def phase(url, tokens, rdb, seconds, attacks, workers, front_pids=()):
    """The honest probes for `seconds`, with `attacks` (names) in a child
    process beside them: the probes' timings are not the attackers' GIL."""
    run = Run()
    cpu_before = cpu_seconds(workers)
    front_before = cpu_seconds(front_pids)
    stop = threading.Event()
    memory_before = rdb.info("memory")["used_memory"]
    attackers = None
    if attacks:
        attackers = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--attack",
                ",".join(attacks),
                "--url",
                url,
                "--token",
                tokens["hostile"],
                "--seconds",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    threads, sockets = honest_probes(url, tokens["honest"], run, stop)
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(40)
    for sock in sockets:
        with contextlib.suppress(Exception):
            sock.close()
    if attackers is not None:
        got = json.loads(attackers.communicate()[0])
        for who, outcomes in got["outcomes"].items():
            run.outcomes[who].update(outcomes)
        run.server_errors.update(got["server_errors"])
    run.redis_growth_mb = (rdb.info("memory")["used_memory"] - memory_before) / 2**20
    run.worker_cpu_s = cpu_seconds(workers) - cpu_before
    run.front_cpu_s = cpu_seconds(front_pids) - front_before
    return run


def attack(names, url, token, seconds):
    """The child process: run the named attacks, print what they got (JSON)."""
    # The attackers' own CPU is not the server's on the open internet: here
    # they share 2 cores, so they take only what the server leaves.
    os.nice(19)
    run, stop = Run(), threading.Event()
    chosen = [a for a in HOSTILE if a.__name__ in names]
    threads = hostile_clients(url, token, run, stop, chosen)
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(40)
    print(
        json.dumps(
            {
                "outcomes": {k: {str(s): n for s, n in v.items()} for k, v in run.outcomes.items()},
                "server_errors": dict(run.server_errors),
            }
        )
    )


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def report(calm, hostile, restarted, seconds, via_nginx=False):
    flag = " --via-nginx" if via_nginx else ""
    lines = [
        "# Hostile clients beside honest ones" + (", through nginx" if via_nginx else ""),
        "",
        f"`.venv/bin/python bench/hostile.py --seconds {seconds}{flag}` on {machine()};",
        "2 gevent workers, every quota and bound at its default, each client with its own",
        "address (X-Forwarded-For, TRUSTED_PROXIES=1). Honest clients alone, then with",
        "the hostile ones beside them, for the same time. The hostile clients run in a",
        "child process at nice 19 on the same 2 cores (on the internet their CPU is",
        "not ours). In parentheses: samples. Target: honest p99 within 1.5x.",
        *(
            [
                "",
                "Every client goes through the shipped deploy/nginx.conf (one nginx worker",
                "process, on the same 2 cores), which takes each client's address from its",
                "X-Forwarded-For here, so its per-address limits apply per simulated client.",
            ]
            if via_nginx
            else []
        ),
        "",
        "| honest probe | alone p50 / p99 (ms) | with hostile p50 / p99 (ms) | p99 ratio |",
        "|---|---|---|---|",
    ]
    for probe in sorted(calm.latencies):
        a, b = calm.latencies[probe], hostile.latencies.get(probe, [])
        ratio = percentile(b, 0.99) / percentile(a, 0.99) if a and b else float("nan")
        lines.append(
            f"| {probe} | {percentile(a, 0.5):.1f} / {percentile(a, 0.99):.1f} "
            f"({len(a)}) | {percentile(b, 0.5):.1f} / {percentile(b, 0.99):.1f} "
            f"({len(b)}) | {ratio:.2f} |"
        )
    lines += [
        "",
        f"Redis memory growth: {calm.redis_growth_mb:.1f} MB alone, "
        f"{hostile.redis_growth_mb:.1f} MB with the hostile clients. Worker CPU: "
        f"{calm.worker_cpu_s:.1f} s alone, {hostile.worker_cpu_s:.1f} s with them "
        f"(of {2 * seconds:.0f} s on 2 cores)"
        + (
            f"; nginx CPU: {calm.front_cpu_s:.1f} s alone, {hostile.front_cpu_s:.1f} s with them."
            if via_nginx
            else "."
        ),
        f"Workers restarted: {'yes' if restarted else 'none'}. "
        f"5xx answers: {dict(calm.server_errors + hostile.server_errors) or 'none'}. "
        f"Honest probes that failed: {dict(calm.failures + hostile.failures) or 'none'}.",
        "",
        "| hostile client | what it got |",
        "|---|---|",
    ]
    for who, got in sorted(hostile.outcomes.items()):
        lines.append(f"| {who} | {', '.join(f'{k}: {v}' for k, v in got.most_common())} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--report", help=f"default: {REPORT} ({NGINX_REPORT.name})")
    parser.add_argument(
        "--via-nginx", action="store_true", help="every client through deploy/nginx.conf"
    )
    parser.add_argument(
        "--only",
        help="comma-separated attacks (default: all): " + ", ".join(a.__name__ for a in HOSTILE),
    )
    parser.add_argument("--attack", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        return attack(args.attack.split(","), args.url, args.token, args.seconds)
    attacks = args.only.split(",") if args.only else [a.__name__ for a in HOSTILE]
    # The shipped defaults for every quota (bench.common lifts them otherwise).
    defaults = {
        name: str(SETTINGS[name][1])
        for name in SETTINGS
        if name.endswith("_RATE_LIMIT") or name == "CONNECTIONS_PER_ADDRESS"
    }
    with (
        redis_server() as rs,
        gunicorn_server(rs.url, TRUSTED_PROXIES=1, **defaults) as (url, master, env),
        front(url, args.via_nginx) as (url, front_pids),
    ):
        rdb = redis.Redis.from_url(rs.url)
        tokens = {side: bench_token(rs.url, env, f"bench-{side}") for side in ("honest", "hostile")}
        pids = set(worker_pids(master))
        calm = phase(url, tokens, rdb, args.seconds, [], pids, front_pids)
        hostile = phase(url, tokens, rdb, args.seconds, attacks, pids, front_pids)
        restarted = set(worker_pids(master)) != pids
    text = report(calm, hostile, restarted, args.seconds, args.via_nginx)
    Path(args.report or (NGINX_REPORT if args.via_nginx else REPORT)).write_text(text)
    print(text)


@contextlib.contextmanager
def front(gunicorn_url, via_nginx):
    """(the URL the clients use, nginx's processes): gunicorn's own, or the
    shipped nginx site's in front of it."""
    if not via_nginx:
        yield gunicorn_url, []
        return
    if NGINX is None:
        raise SystemExit(SKIP_REASON)
    port = int(gunicorn_url.rsplit(":", 1)[1])
    with (
        tempfile.TemporaryDirectory() as tmp,
        # room for every client's connection and its upstream one
        nginx_in_front([port], Path(tmp), CLIENT_ADDRESS_FROM_HEADER, connections=8192) as url,
    ):
        master = int((Path(tmp) / "nginx.pid").read_text())
        yield url, [master, *worker_pids(master)]


def bench_token(redis_url, env, name):
    """A bearer token of an administrator (who may publish anywhere) `name`."""
    from core.config import load_settings
    from core.tokens import issue
    from core.users import UserStore

    settings = load_settings(env)
    store = UserStore(
        redis.Redis.from_url(redis_url, decode_responses=True), settings["REDIS_PREFIX"]
    )
    admin = store.get(name) or store.create(name, f"{name}-password-1", admin=True)
    return issue(admin, settings, ttl=3600)[0]


if __name__ == "__main__":
    main()
