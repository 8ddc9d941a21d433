"""Chaos: workers killed, reloads, Redis restarted or unreachable, while
messages stream to many clients that resume the way real clients do (SSE
`Last-Event-ID`, WebSocket `?last_event_id=`, long-poll `cursor`).

Run alone with `make test PYTEST_ARGS="-m chaos"`. The assertions are about
delivery (every message exactly once, in order; explicit resets), never about
timing, apart from the bounded waits the requirements name.

Slow consumers on SSE and WebSocket are covered in tests/test_hub_failures.py
(`test_a_client_that_stops_reading_is_cut_off_without_holding_back_others`,
`test_slow_consumer_is_told_why_before_being_closed`).
"""

import multiprocessing
import os
import signal
import socket
import time

import pytest
import redis
import requests

from core.embedded_redis import EmbeddedRedis
from core.hub import Hub
from tests.clients import healthz_bodies, read_until_closed, wait_until, worker_pids
from tests.resumers import (
    PollResumer,
    assert_exactly_once_in_order,
    describe,
    finish,
    start_clients,
    wait_all,
    wait_connected,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


class Publisher:
    """Publishes `texts` in batches (one pipeline each), pausing between them,
    in a process of its own, as test_sentinel's publisher does: the 300 client
    threads in this one starved a publishing thread of the GIL (1,000
    messages, 2.5 s of pauses, took 40 s on an idle machine and over 60 s
    during the whole suite). `published` counts them as they go; `error` is
    None once the process has ended well."""

    def __init__(self, hub, channel, texts, batch=20, pause=0.05):
        self.hub, self.channel, self.texts = hub, channel, texts
        self.batch, self.pause = batch, pause
        context = multiprocessing.get_context("fork")
        self._count = context.Value("i", 0)
        self._process = context.Process(target=self._run, daemon=True)

    @property
    def published(self):
        return self._count.value

    @property
    def error(self):
        code = self._process.exitcode
        if code == 0:
            return None
        return "still publishing" if code is None else f"the publisher exited with {code}"

    def start(self):
        self._process.start()

    def join(self, timeout):
        self._process.join(timeout)

    def _run(self):
        for start in range(0, len(self.texts), self.batch):
            chunk = self.texts[start : start + self.batch]
            self.hub.publish_many(self.channel, chunk)
            with self._count.get_lock():
                self._count.value += len(chunk)
            time.sleep(self.pause)


def all_healthy(server):
    statuses = healthz_bodies(server)
    return len(statuses) == 2 and all(status == 200 for status, _ in statuses.values())


# -- (1) a worker killed with SIGKILL mid-stream -----------------------------------


@pytest.mark.slow
def test_worker_killed_mid_stream_every_resuming_client_gets_every_message_once(
    start_server, redis_server, rdb, channel
):
    server = start_server(STREAM_MAXLEN=5000, LONGPOLL_TIMEOUT_SECONDS=5)
    expected = [f"m{i:04d}" for i in range(1000)]
    clients = start_clients(server, channel, per_transport=100, want=len(expected))
    try:
        wait_connected(clients)
        before = worker_pids(server)
        assert len(before) == 2
        # The victim: the worker holding the most streams (the kernel may give
        # one worker nearly all of them: a random victim then cut none, and
        # proved nothing). Chosen before publishing, and the publisher paced
        # (about 10 s for the 1,000), so that the kill lands mid-stream.
        streams = {
            pid: body["connections"]["sse"] + body["connections"]["websocket"]
            for pid, (_, body) in healthz_bodies(server).items()
        }
        victim = max(streams, key=streams.get)
        assert streams[victim] > 0, streams
        publisher = Publisher(Hub(rdb, redis_server.url), channel, expected, pause=0.2)
        publisher.start()
        assert wait_until(lambda: publisher.published >= 300, timeout=30)
        os.kill(victim, signal.SIGKILL)
        publisher.join(60)
        assert publisher.error is None and publisher.published == len(expected)
        assert wait_until(lambda: len(worker_pids(server) - before) == 1, timeout=30), (
            "gunicorn should replace the killed worker"
        )
        hanging = finish(clients, timeout=120)
        assert not hanging, [describe(c, expected) for c in hanging[:5]]
        assert_exactly_once_in_order(clients, expected)
        # The kill did cut streams: the clients on that worker resumed elsewhere.
        assert sum(c.connects > 1 for c in clients if c.transport != "longpoll") > 0
    finally:
        for client in clients:
            client.stop()
        server.stop()


# -- (3) graceful reload (HUP) under load ---------------------------------------------


@pytest.mark.slow
def test_reload_under_load_loses_nothing_and_leaves_no_client_hanging(
    start_server, redis_server, rdb, channel
):
    server = start_server(STREAM_MAXLEN=5000, LONGPOLL_TIMEOUT_SECONDS=5)
    expected = [f"r{i:04d}" for i in range(600)]
    clients = start_clients(server, channel, per_transport=50, want=len(expected))
    try:
        wait_connected(clients)
        old = worker_pids(server)
        hub = Hub(rdb, redis_server.url)
        # Published while the reload happens: the HUP comes after the first 200.
        during = Publisher(hub, channel, expected[:400], pause=0.1)
        during.start()
        assert wait_until(lambda: during.published >= 200, timeout=30)
        os.kill(server.process.pid, signal.SIGHUP)
        during.join(60)
        assert during.error is None and during.published == 400
        assert wait_until(lambda: not (worker_pids(server) & old), timeout=30), (
            "the old workers should be gone"
        )
        # The rest only once the old workers are gone: no client can finish on
        # an old worker before it is told to go (on a slow machine the whole
        # 600 could otherwise arrive before the old workers noticed the HUP).
        after = Publisher(hub, channel, expected[400:], pause=0.1)
        after.start()
        after.join(60)
        assert after.error is None and after.published == 200
        hanging = finish(clients, timeout=90)
        assert not hanging, [describe(c, expected) for c in hanging[:5]]
        assert_exactly_once_in_order(clients, expected)
        # Every stream on an old worker was ended with a reason, and resumed.
        for client in clients:
            if client.transport == "sse":
                assert client.closes and client.connects > 1, describe(client, expected)
            elif client.transport == "ws":
                assert 1012 in client.closes and client.connects > 1, describe(client, expected)
    finally:
        for client in clients:
            client.stop()
        server.stop()


# -- (2) Redis restarted, Redis unreachable ----------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, restartable on the same port."""
    servers = []

    def start(**kwargs):
        server = EmbeddedRedis(tmp_path / f"redis{len(servers)}", **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def publisher_hub(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return client, Hub(client, redis_url)


def test_redis_restarted_without_persistence_clients_get_a_reset_and_recover(
    start_server, own_redis, channel
):
    store = own_redis(appendonly=False)
    server = start_server(REDIS_URL=store.url, LONGPOLL_TIMEOUT_SECONDS=5)
    client, hub = publisher_hub(store.url)
    before = [f"before {i}" for i in range(20)]
    after = [f"after {i}" for i in range(20)]
    clients = start_clients(server, channel, per_transport=10, want=len(before) + len(after))
    try:
        wait_connected(clients)
        hub.publish_many(channel, before)
        assert wait_all(clients, lambda c: len(c.messages()) >= len(before), timeout=30)

        store.stop()
        store.start()  # same port, empty: every stream is gone
        assert wait_until(lambda: all_healthy(server), timeout=20)
        # Each client is told, explicitly, that its cursor is gone.
        assert wait_all(clients, lambda c: c.resets(), timeout=30), [
            describe(c, before) for c in clients if not c.resets()
        ][:5]
        hub.publish_many(channel, after)
        hanging = finish(clients, timeout=60)
        assert not hanging, [describe(c, before + after) for c in hanging[:5]]
        assert_exactly_once_in_order(clients, before + after, resets_allowed=True)
        for c in clients:  # the reset comes between the two
            n_before = len(before)
            position = c.resets()[0]
            assert [e[0] for e in c.events[:position]] == ["msg"] * n_before
            assert all(e[0] == "msg" for e in c.events[position + 1 :]) or c.transport == "longpoll"
    finally:
        for c in clients:
            c.stop()
        client.close()
        server.stop()


def test_redis_killed_with_aof_loses_nothing(start_server, own_redis, channel):
    store = own_redis(appendonly=True, extra_args=["--appendfsync", "always"])
    server = start_server(REDIS_URL=store.url, LONGPOLL_TIMEOUT_SECONDS=5)
    client, hub = publisher_hub(store.url)
    before = [f"before {i}" for i in range(200)]
    after = [f"after {i}" for i in range(200)]
    clients = start_clients(server, channel, per_transport=10, want=len(before) + len(after))
    try:
        wait_connected(clients)
        publisher = Publisher(hub, channel, before, batch=10, pause=0.02)
        publisher.start()
        publisher.join(30)
        assert publisher.error is None
        store.process.kill()  # SIGKILL: only what the AOF holds survives
        store.process.wait()
        store.process = None
        store.start()
        client.close()
        client, hub = publisher_hub(store.url)
        # A client that comes back later, from an id it was given before the crash.
        assert wait_until(lambda: len(clients[0].ids()) >= 50, timeout=30)
        some_id = clients[0].ids()[49]
        publisher = Publisher(hub, channel, after, batch=10, pause=0.02)
        publisher.start()
        publisher.join(30)
        assert publisher.error is None
        hanging = finish(clients, timeout=60)
        assert not hanging, [describe(c, before + after) for c in hanging[:5]]
        assert_exactly_once_in_order(clients, before + after)
        late = start_clients(
            server, channel, per_transport=1, want=len(before) + len(after) - 50, cursor=some_id
        )
        assert not finish(late, timeout=30)
        assert_exactly_once_in_order(late, (before + after)[50:])
    finally:
        for c in clients:
            c.stop()
        client.close()
        server.stop()


@pytest.mark.slow
def test_redis_unreachable_for_10_s_healthz_503_workers_stay_up_and_recover(
    start_server, own_redis, channel
):
    store = own_redis(appendonly=True, extra_args=["--appendfsync", "always"])
    server = start_server(REDIS_URL=store.url, LONGPOLL_TIMEOUT_SECONDS=5)
    client, hub = publisher_hub(store.url)
    before = [f"before {i}" for i in range(30)]
    after = [f"after {i}" for i in range(30)]
    clients = start_clients(server, channel, per_transport=10, want=len(before) + len(after))
    try:
        wait_connected(clients)
        hub.publish_many(channel, before)
        assert wait_all(clients, lambda c: len(c.messages()) >= len(before), timeout=30)
        pids = worker_pids(server)

        store.stop()
        outage_began = time.monotonic()
        # /healthz answers 503 from both workers while Redis is away.
        unhealthy = wait_until(
            lambda: [s for s, _ in healthz_bodies(server).values()] == [503, 503], timeout=8
        )
        assert unhealthy, healthz_bodies(server)
        # Clients whose connection drops now must resume once Redis is back.
        dropped = [c for c in clients[::2] if c.transport != "longpoll"]
        for c in dropped:
            c.drop()
        while time.monotonic() - outage_began < 10:
            assert server.process.poll() is None
            time.sleep(0.5)
        assert worker_pids(server) == pids, "workers stay up through the outage"
        store.start()
        back = time.monotonic()
        assert wait_until(lambda: all_healthy(server), timeout=8, step=0.2), healthz_bodies(server)
        recovered = time.monotonic() - back
        assert recovered < 8, f"recovered {recovered:.1f} s after Redis came back"
        assert worker_pids(server) == pids
        client.close()
        client, hub = publisher_hub(store.url)
        hub.publish_many(channel, after)
        hanging = finish(clients, timeout=60)
        assert not hanging, [describe(c, before + after) for c in hanging[:5]]
        assert_exactly_once_in_order(clients, before + after)
        assert all(c.connects > 1 for c in dropped)
    finally:
        for c in clients:
            c.stop()
        client.close()
        server.stop()


# -- (4) slow consumers -----------------------------------------------------------------


def _stalled(server, request):
    """A client with a tiny receive window that sends `request` and reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request.encode())
    return sock


def _stalled_sse(server, channel):
    return _stalled(
        server,
        f"GET /sub/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
    )


def _stalled_ws(server, channel):
    return _stalled(
        server,
        f"GET /sub/{channel}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n",
    )


def _stalled_long_poll(server, channel, cursor):
    return _stalled(
        server,
        f"GET /sub/{channel}?cursor={cursor} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\nAccept: application/json\r\n\r\n",
    )


@pytest.mark.slow
def test_slow_consumers_are_cut_off_while_every_other_client_gets_everything(
    start_server, redis_server, rdb, channel
):
    """A stalled SSE and WebSocket client and a long-poll that never reads its
    response, during a 12 MB burst: the healthy clients of every transport
    get every message in order; the stalled streams are cut off.
    (Bounds and close reasons in detail: tests/test_hub_failures.py.)"""
    # Bursts of 20 never put a client that reads 100 messages behind; the
    # stalled ones fall behind by more than that.
    server = start_server(STREAM_MAXLEN=5000, SUBSCRIBER_QUEUE_SIZE=100, LONGPOLL_TIMEOUT_SECONDS=5)
    hub = Hub(rdb, redis_server.url)
    payload = "x" * 30_000
    first = "first"
    hub.publish(channel, first)
    burst = [f"{i}:{payload}" for i in range(400)]
    stalled = {
        "sse": _stalled_sse(server, channel),
        "ws": _stalled_ws(server, channel),
        "longpoll": _stalled_long_poll(server, channel, "0"),
    }
    clients = start_clients(server, channel, per_transport=3, want=1 + len(burst))
    try:
        wait_connected(clients)
        assert wait_all(clients, lambda c: c.messages() == [first], timeout=20)
        for start in range(0, len(burst), 20):
            hub.publish_many(channel, burst[start : start + 20])
            time.sleep(0.05)
        hanging = finish(clients, timeout=90)
        assert not hanging, [describe(c, [first, *burst]) for c in hanging]
        assert_exactly_once_in_order(clients, [first, *burst])
        # The stalled long-poll's answer ("first") fits in the socket buffers:
        # gunicorn's KEEPALIVE (15 s) closes its idle connection. (An answer
        # that does not fit: test_a_long_poll_that_stops_reading_its_response_is_cut_off.)
        for name in ("sse", "ws", "longpoll"):
            received, closed = read_until_closed(stalled[name], timeout=30)
            assert closed, f"the stalled {name} client should have been cut off"
            assert received.count(b":xxxx") < len(burst), name
    finally:
        for c in clients:
            c.stop()
        for sock in stalled.values():
            sock.close()
        server.stop()


@pytest.mark.slow
def test_a_long_poll_that_stops_reading_its_response_is_cut_off(
    start_server, redis_server, rdb, channel
):
    """An answer bigger than the socket buffers (the cap raised to 16 MB for
    the test) to a client that reads nothing: the connection is cut after
    LONGPOLL_WRITE_SECONDS instead of holding the worker's greenlet, and the
    worker goes on serving, with nothing in its log but the access lines."""
    server = start_server(
        workers=1, STREAM_MAXLEN=5000, LONGPOLL_MAX_BYTES=16_000_000, LONGPOLL_WRITE_SECONDS=2
    )
    hub = Hub(rdb, redis_server.url)
    backlog = [f"{i}:" + "x" * 30_000 for i in range(300)]  # 9 MB
    hub.publish_many(channel, backlog)
    stalled = _stalled_long_poll(server, channel, "0")
    try:
        # Well past the bound; a healthy client is served meanwhile.
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        time.sleep(5)
        received, closed = read_until_closed(stalled, timeout=10)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        assert closed and len(body) < length, (
            f"the stalled long-poll got {len(body)} of {length} bytes and its "
            f"connection is {'closed' if closed else 'still open'}"
        )
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        log = open(server.log_path, encoding="utf-8", errors="replace").read()
        assert "Traceback" not in log and "Error" not in log, log[-3000:]
    finally:
        stalled.close()
        server.stop()


def test_a_long_poll_that_falls_behind_loses_nothing(start_server, redis_server, rdb, channel):
    """A poll dropped as a slow consumer (or by a stopping worker) delivered
    nothing: its answer's cursor must not move past the messages it had queued."""
    server = start_server(SUBSCRIBER_QUEUE_SIZE=5, LONGPOLL_TIMEOUT_SECONDS=5)
    hub = Hub(rdb, redis_server.url)
    first = hub.publish(channel, "first")
    burst = [f"burst {i}" for i in range(50)]
    poller = PollResumer(server, channel, cursor=first, want=1 + len(burst))
    poller.start()
    try:
        hub.publish(channel, "warm-up")
        assert wait_until(lambda: poller.messages() == ["warm-up"], timeout=10)
        # The next poll, from the newest id, is held live (not catching up).
        time.sleep(0.5)
        hub.publish_many(channel, burst)  # one pipeline: more than 5 queue up at once
        finish([poller], timeout=6)
        assert poller.messages() == ["warm-up", *burst], describe(poller, ["warm-up", *burst])
    finally:
        poller.stop()
        server.stop()
