"""Drawing: what one client can make the server keep and do.

The history a newcomer is sent is bounded in bytes (DRAW_HISTORY_BYTES), the
welcome is read from Redis once per worker per change (not once per
newcomer), and moves are counted per address on each worker
(DRAW_MOVE_RATE_LIMIT): past it the socket closes with 1008 and the reason.
Each server here has a key prefix of its own, so no other test's drawing is
in its history.
"""

import json
import threading
import time
import uuid

import pytest
import redis
import websocket

from tests.clients import close_of, next_of

pytestmark = pytest.mark.integration


def drawer(server, path="/draw/ws"):
    ws = websocket.create_connection(f"{server.ws_url}{path}", timeout=10)
    welcome = json.loads(ws.recv())
    assert welcome["type"] == "welcome"
    return ws, welcome


def stroke(ws, points, y=0.5):
    """Draw one stroke through `points` (x values) at height `y`."""
    for x in points:
        ws.send(json.dumps({"x": x, "y": y, "drawing": True}))


def history(server):
    ws, welcome = drawer(server)
    ws.close()
    return welcome["segments"]


def wait_history(server, predicate, tries=100):
    """The history once `predicate(segments)` holds (moves are stored as the
    server reads them, a moment after they are sent)."""
    for _ in range(tries):
        segments = history(server)
        if predicate(segments):
            return segments
        time.sleep(0.05)
    return segments


def prefix():
    return f"draw{uuid.uuid4().hex[:6]}:"


def test_the_history_a_newcomer_gets_is_bounded_in_bytes(start_server):
    server = start_server(workers=1, REDIS_PREFIX=prefix(), DRAW_HISTORY_BYTES=2000)
    try:
        ws, _ = drawer(server)
        xs = [round(n / 1000, 3) for n in range(300)]  # 299 segments, about 9 KB
        stroke(ws, xs)
        newest = [xs[-2], 0.5, xs[-1], 0.5]
        segments = wait_history(server, lambda s: newest in s)
        assert newest in segments  # the latest stroke is kept...
        assert [xs[0], 0.5, xs[1], 0.5] not in segments  # ...the oldest rolled off
        assert len(",".join(json.dumps(s, separators=(",", ":")) for s in segments)) <= 2000
        # still a whole stroke: the segments kept are the latest, in order
        assert [s[2] for s in segments] == xs[-len(segments) :]
        ws.close()
    finally:
        server.stop()


def test_a_newcomer_on_an_unchanged_canvas_costs_no_history_read(start_server, redis_server):
    """Twenty newcomers at once, after a change: each of the two workers reads
    the history once, and every newcomer still sees the latest stroke."""
    server = start_server(workers=2, REDIS_PREFIX=prefix())
    stats = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def history_reads():
        return stats.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0)

    try:
        ws, _ = drawer(server)
        stroke(ws, [0.1, 0.2, 0.3])
        assert [0.2, 0.5, 0.3, 0.5] in wait_history(server, lambda s: len(s) == 2)
        stroke(ws, [0.6, 0.7], y=0.25)  # a change: the workers' copies are stale
        wait_history(server, lambda s: [0.6, 0.25, 0.7, 0.25] in s)

        welcomes, before = [], history_reads()

        def newcomer():
            welcomes.append(history(server))

        threads = [threading.Thread(target=newcomer) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(welcomes) == 20
        assert all([0.6, 0.25, 0.7, 0.25] in segments for segments in welcomes)
        assert history_reads() - before <= 2  # one per worker, not one per newcomer
        ws.close()
    finally:
        stats.close()
        server.stop()


def test_the_history_read_after_a_clear_is_empty_on_every_worker(server, admin_token):
    """The cache is keyed by the history's version: a clear is seen at once."""
    ws, _ = drawer(server)
    stroke(ws, [0.4, 0.45])
    wait_history(server, lambda s: [0.4, 0.5, 0.45, 0.5] in s)
    admin, _ = drawer(server, f"/draw/ws?access_token={admin_token}")
    admin.send(json.dumps({"type": "clear"}))
    next_of(ws, "clear")
    assert all(history(server) == [] for _ in range(6))  # whichever worker answers
    ws.close()
    admin.close()


def test_moves_past_the_quota_close_the_socket_with_the_reason(start_server):
    server = start_server(workers=1, REDIS_PREFIX=prefix(), DRAW_MOVE_RATE_LIMIT="5 per minute")
    try:
        watcher, _ = drawer(server)
        ws, _ = drawer(server)
        for n in range(5):
            ws.send(json.dumps({"x": n / 10, "y": 0.5, "drawing": False}))
        for n in range(5):  # the moves within the quota reach the others
            assert next_of(watcher, "moving")["x"] == n / 10
        ws.send(json.dumps({"x": 0.9, "y": 0.5, "drawing": False}))
        code, reason = close_of(ws)
        assert code == 1008
        assert "too many drawing moves" in reason and "5 per 1 minute" in reason
        # The quota is the address's, not the socket's: a new socket is refused too.
        again, _ = drawer(server)
        again.send(json.dumps({"x": 0.1, "y": 0.1, "drawing": False}))
        assert close_of(again)[0] == 1008
        watcher.close()
    finally:
        server.stop()
