"""Redis restarted empty under each app's connected clients.

Every stream is gone, so every hub subscription's cursor is gone and the hub
delivers a Reset on each app channel. Each app must handle it in its own way
(the drawing carries on; the dashboard, the Q&A board and the editor re-read
their state) and keep delivering. The Redis is the test's own, restarted on
the same port as in tests/test_chaos.py.
"""

import json
import uuid

import pytest
import requests

from core.embedded_redis import EmbeddedRedis
from tests.clients import SSEClient, WSFrames, healthz_bodies, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

ADMIN_PASSWORD = "reset-test-admin-password"


@pytest.fixture
def restartable(start_server, tmp_path):
    """(server, restart): a server on a redis-server of its own, and a function
    that restarts that Redis empty and returns once both workers' hubs listen
    on the new one."""
    store = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    # The demo admin lives in this Redis: the dashboard's token is issued for it.
    server = start_server(REDIS_URL=store.url, DEMO_USERS=1, DEMO_ADMIN_PASSWORD=ADMIN_PASSWORD)

    def reconnects():
        try:
            return {
                pid: (status, body["hub_reconnects"])
                for pid, (status, body) in healthz_bodies(server).items()
            }
        except requests.RequestException:
            return {}

    def restart():
        before = reconnects()
        assert len(before) == 2, before
        store.stop()
        store.start()  # same port, no persistence: every key and stream is gone

        def reconnected():
            now = reconnects()
            return now.keys() == before.keys() and all(
                status == 200 and count > before[pid][1] for pid, (status, count) in now.items()
            )

        back = wait_until(reconnected, timeout=20)
        assert back, f"the workers' hubs did not reconnect to the restarted Redis: {reconnects()}"

    try:
        yield server, restart
    finally:
        server.stop()
        store.stop()


def of_type(kind, **fields):
    return lambda frame: (
        frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items())
    )


# -- drawing -------------------------------------------------------------------------------


def test_drawing_moves_still_reach_the_others_after_redis_restarts(restartable):
    server, restart = restartable
    a, b = WSFrames(f"{server.ws_url}/draw/ws"), WSFrames(f"{server.ws_url}/draw/ws")
    try:
        hello_a = a.first(of_type("welcome"))
        assert hello_a and b.first(of_type("welcome")), (a.describe(), b.describe())
        a.send({"x": 0.1, "y": 0.1, "drawing": True})
        assert b.first(of_type("moving", id=hello_a["id"], x=0.1)), b.describe()

        restart()
        mark = len(b.items)

        def moved_after_restart(frame):
            return of_type("moving", id=hello_a["id"])(frame) and frame["x"] >= 0.5

        # Moves are ephemeral: one published as the reset happens may be passed
        # over, so A keeps moving (as a user does) until B sees it.
        for n in range(40):
            if a.closed.is_set():
                break
            a.send({"x": 0.5 + n / 100, "y": 0.5, "drawing": True})
            if b.first(moved_after_restart, since=mark, timeout=0.25):
                break
        moved = b.first(moved_after_restart, since=mark, timeout=1)
        assert moved, (
            f"after the Redis restart, B got no `moving` frame from A; "
            f"B: {b.describe(mark)}; A: {a.describe()}"
        )
        assert not a.closed.is_set(), a.describe()
    finally:
        a.close()
        b.close()


# -- mouse tracking --------------------------------------------------------------------------


def test_tracking_dashboard_keeps_showing_visitors_after_redis_restarts(restartable):
    server, restart = restartable
    login = requests.post(
        f"{server.url}/auth/token",
        timeout=30,
        json={"username": "admin", "password": ADMIN_PASSWORD},
    )
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    board = SSEClient(f"{server.url}/admin/track/stream?access_token={token}")
    visitors = []
    try:
        assert board.status == 200
        assert board.wait_for(lambda items: any(i["event"] == "snapshot" for i in items))

        def joined(visitor_id, since=0):
            return lambda items: any(
                i["event"] == "join" and json.loads(i["data"])["id"] == visitor_id
                for i in items[since:]
            )

        def visitor():
            ws = WSFrames(f"{server.ws_url}/track/ws")
            visitors.append(ws)
            hello = ws.first(of_type("welcome"))
            assert hello, ws.describe()
            return ws, hello["id"]

        _, first_id = visitor()
        assert board.wait_for(joined(first_id)), board.items[-5:]

        restart()
        mark = len(board.items)
        # A join published as the reset happens may be folded into the
        # dashboard's fresh state; the next visitor's join is not.
        for _ in range(3):
            ws, new_id = visitor()
            if board.wait_for(joined(new_id, mark), timeout=5):
                break
        assert board.wait_for(joined(new_id, mark), timeout=1), (
            f"after the Redis restart the dashboard got no `join` for a new visitor; "
            f"its events since: {[(i['event'], i['data'][:80]) for i in board.items[mark:]]}; "
            f"stream {'ended: ' + repr(board.error) if board.closed.is_set() else 'open'}"
        )

        def batch_with(items):
            return any(
                i["event"] == "batch" and new_id in json.loads(i["data"])["positions"]
                for i in items[mark:]
            )

        for n in range(40):
            ws.send({"x": 0.5, "y": n / 100})
            if board.wait_for(batch_with, timeout=0.25):
                break
        assert board.wait_for(batch_with, timeout=2), (
            f"after the Redis restart the dashboard got no `batch` with the new visitor's "
            f"moves; its events since: {[i['event'] for i in board.items[mark:]]}"
        )
    finally:
        for ws in visitors:
            ws.close()
        board.close()


# -- Q&A ----------------------------------------------------------------------------------------


def test_qa_stream_still_gets_new_questions_after_redis_restarts(restartable):
    server, restart = restartable
    stream = SSEClient(f"{server.url}/qa/stream")
    try:
        assert stream.status == 200
        assert stream.wait_for(lambda items: any(i["event"] == "login" for i in items))
        client_id = json.loads(stream.items[0]["data"])["id"]

        def ask(text):
            return requests.post(
                f"{server.url}/qa/questions",
                json={"question": text},
                headers={"X-Client-Id": client_id},
                timeout=10,
            )

        def shown(text, since=0):
            return lambda items: any(
                i["event"] == "questions" and text in json.loads(i["data"])["questions"]
                for i in items[since:]
            )

        before = f"Asked before the restart #{uuid.uuid4().hex[:6]}"
        assert ask(before).status_code == 201
        assert stream.wait_for(shown(before))

        restart()
        mark = len(stream.items)
        after = f"Asked after the restart #{uuid.uuid4().hex[:6]}"
        response = ask(after)
        assert response.status_code == 201, response.text
        assert stream.wait_for(shown(after, mark)), (
            f"after the Redis restart the open stream got no `questions` event with the new "
            f"question; its events since: {[(i['event'], i['data'][:80]) for i in stream.items[mark:]]}; "
            f"stream {'ended: ' + repr(stream.error) if stream.closed.is_set() else 'open'}"
        )
    finally:
        stream.close()


# -- the collaborative editor ---------------------------------------------------------------------


def test_editor_clients_reread_their_document_after_redis_restarts_and_carry_on(restartable):
    server, restart = restartable
    doc = f"reset-{uuid.uuid4().hex[:8]}"
    a, b = (WSFrames(f"{server.ws_url}/editor/{doc}/ws") for _ in range(2))
    try:
        for ws in (a, b):
            assert ws.first(of_type("ready")), ws.describe()
        a.send({"type": "op", "v": 0, "op": [{"insert": "before"}], "id": "op-before"})
        assert a.first(of_type("ack", v=1)), a.describe()
        assert b.first(of_type("op", v=1, id="op-before")), b.describe()

        marks = {"A": len(a.items), "B": len(b.items)}
        restart()
        # Each client is sent its document's state afresh, and keeps its socket.
        snapshots = {}
        for name, ws in (("A", a), ("B", b)):
            snapshots[name] = ws.first(of_type("snapshot", reset=True), since=marks[name])
            assert snapshots[name], (
                f"after the Redis restart, client {name} got no snapshot with reset: true; "
                f"{ws.describe(marks[name])}"
            )
        assert (snapshots["A"]["v"], snapshots["A"]["text"]) == (
            snapshots["B"]["v"],
            snapshots["B"]["text"],
        ), snapshots

        version, text = snapshots["A"]["v"], snapshots["A"]["text"]
        op = ([{"retain": len(text)}] if text else []) + [{"insert": "after"}]
        marks = {"A": len(a.items), "B": len(b.items)}
        a.send({"type": "op", "v": version, "op": op, "id": "op-after"})
        ack = a.first(of_type("ack"), since=marks["A"])
        assert ack, f"A's op after the restart was not acknowledged: {a.describe(marks['A'])}"
        relayed = b.first(of_type("op", id="op-after"), since=marks["B"])
        assert relayed, f"A's op after the restart did not reach B: {b.describe(marks['B'])}"
        assert ack["v"] == relayed["v"] == version + 1
        assert relayed["op"] == op
        assert requests.get(f"{server.url}/editor/{doc}/text", timeout=5).json() == {
            "v": version + 1,
            "text": text + "after",
        }
        for ws in (a, b):
            assert not ws.closed.is_set(), ws.describe()
    finally:
        a.close()
        b.close()
