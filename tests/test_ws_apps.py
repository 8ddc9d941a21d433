"""WebSocket apps: echo, collaborative drawing, mouse tracking with its dashboard."""

import json
import os
import signal
import socket
import time

import pytest
import requests
import websocket

from tests.clients import SSEClient, close_of, healthz_bodies, next_of, wait_until, ws_request

pytestmark = pytest.mark.integration


def connect(server, path, **options):
    return websocket.create_connection(f"{server.ws_url}{path}", timeout=10, **options)


# -- echo ------------------------------------------------------------------------------


def test_echo_greets_then_echoes(server):
    ws = connect(server, "/ws/echo")
    assert ws.recv() == "You've connected!"
    ws.send("hello ✓")
    assert ws.recv() == "hello ✓"
    ws.send_binary(b"\x00\x01")
    assert ws.recv() == b"\x00\x01"
    ws.close()


def test_echo_negotiates_json(server):
    ws = connect(server, "/ws/echo", subprotocols=["json"])
    assert ws.getsubprotocol() == "json"
    assert json.loads(ws.recv()) == {"type": "greeting", "message": "You've connected!"}
    ws.send(json.dumps({"a": [1, 2]}))
    assert json.loads(ws.recv()) == {"type": "echo", "data": {"a": [1, 2]}}
    ws.send("not json")
    assert close_of(ws) == (1007, "the json subprotocol needs JSON text frames")


def test_oversize_frames_are_refused(server):
    ws = connect(server, "/ws/echo")
    ws.recv()
    ws.send("x" * (64 * 1024 + 1))
    code, _ = close_of(ws)
    assert code == 1009  # message too big


def test_echo_compresses_when_the_client_offers_permessage_deflate(server):
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate

    client = WSConnection(ConnectionType.CLIENT)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        client.send(
            Request(
                host="127.0.0.1", target="/ws/echo?greeting=off", extensions=[PerMessageDeflate()]
            )
        )
    )
    events, wire = [], 0

    def until(kind, count=1):
        nonlocal wire
        while sum(isinstance(e, kind) for e in events) < count:
            data = sock.recv(65536)
            assert data, f"closed by the server after {events}"
            wire += len(data)
            client.receive_data(data)
            events.extend(client.events())

    until(AcceptConnection)
    accepted = next(e for e in events if isinstance(e, AcceptConnection))
    assert [type(x) for x in accepted.extensions] == [PerMessageDeflate]
    wire = 0
    text = "compress me, " * 4000  # 52 KB, a few hundred bytes deflated
    sock.sendall(client.send(TextMessage(data=text)) + client.send(BytesMessage(data=b"\x00" * 9)))
    until(TextMessage)
    until(BytesMessage)
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == text
    assert b"".join(e.data for e in events if isinstance(e, BytesMessage)) == b"\x00" * 9
    assert wire < 2000  # compressed on the way back too
    sock.close()


def test_a_malformed_handshake_is_an_http_error(server):
    for headers, status in [
        ("Sec-WebSocket-Version: 8\r\n", 426),
        ("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n", 400),
    ]:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            (
                "GET /ws/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\n{headers}\r\n"
            ).encode()
        )
        assert sock.recv(4096).split(b"\r\n", 1)[0] == f"HTTP/1.1 {status} ".encode() + (
            b"UPGRADE REQUIRED" if status == 426 else b"BAD REQUEST"
        )
        sock.close()


@pytest.mark.slow
def test_a_peer_that_stops_answering_pings_is_dropped(start_server):
    """Keepalive pings every WS_PING_SECONDS: a client that answers them stays
    (websocket-client pongs as it reads), one that does not is dropped at the
    next ping after, and the worker counts it gone."""
    server = start_server(WS_PING_SECONDS=1)
    try:
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        silent.sendall(ws_request("/ws/echo?greeting=off").encode())
        assert b" 101 " in silent.recv(4096)
        alive = connect(server, "/ws/echo?greeting=off")
        alive.settimeout(0.2)
        started, pings = time.monotonic(), 0
        silent.settimeout(0.2)
        received, dropped = b"", False
        while time.monotonic() < started + 6 and not dropped:
            try:
                alive.recv()  # answers the server's pings
            except websocket.WebSocketTimeoutException:
                pass
            try:
                chunk = silent.recv(4096)
                received += chunk
                dropped = chunk == b""
            except TimeoutError:
                pass
        pings = received.count(b"\x89\x00")
        assert dropped and pings >= 1, (received, time.monotonic() - started)
        assert 1.5 < time.monotonic() - started < 4.5  # one ping unanswered, then the next
        alive.settimeout(10)
        alive.send("still here")
        assert alive.recv() == "still here"
        alive.close()
        assert wait_until(
            lambda: (
                sum(body["connections"]["websocket"] for _, body in healthz_bodies(server).values())
                == 0
            ),
            timeout=5,
        )
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/ws/echo", "/draw/ws", "/track/ws"])
def test_foreign_origins_are_refused(server, path):
    with pytest.raises(websocket.WebSocketBadStatusException) as excinfo:
        connect(server, path, origin="https://evil.example")
    assert excinfo.value.status_code == 403


# -- drawing -----------------------------------------------------------------------------


def drawer(server):
    ws = connect(server, "/draw/ws")
    welcome = json.loads(ws.recv())
    assert welcome["type"] == "welcome"
    return ws, welcome


def test_strokes_and_pointers_cross_workers_and_newcomers_see_the_drawing(server):
    a, hello_a = drawer(server)
    others = []
    while True:  # a second drawer on the other worker
        b, hello_b = drawer(server)
        if hello_b["served_by"] != hello_a["served_by"]:
            break
        others.append(b)
        assert len(others) < 30
    for x, drawing in ((0.1, False), (0.2, True), (0.3, True)):
        a.send(json.dumps({"x": x, "y": 0.5, "drawing": drawing}))
    moves = [next_of(b, "moving") for _ in range(3)]
    assert [m["x"] for m in moves] == [0.1, 0.2, 0.3]
    assert {m["id"] for m in moves} == {hello_a["id"]}
    newcomer, hello_c = drawer(server)
    assert [0.2, 0.5, 0.3, 0.5] in hello_c["segments"]  # the stroke so far
    a.close()
    gone = next_of(b, "clientdisconnect")
    assert gone["id"] == hello_a["id"]
    for ws in (b, newcomer, *others):
        ws.close()


def test_only_administrators_may_clear(server, admin_token):
    user, _ = drawer(server)
    user.send(json.dumps({"type": "clear"}))
    assert next_of(user, "error")["reason"] == "only administrators may clear"
    admin = connect(server, f"/draw/ws?access_token={admin_token}")
    json.loads(admin.recv())
    admin.send(json.dumps({"type": "clear"}))
    next_of(user, "clear")
    _, hello = drawer(server)
    assert hello["segments"] == []
    user.close()
    admin.close()


@pytest.mark.parametrize(
    "frame, reason",
    [
        ("not json", "JSON objects"),
        ("[0.5, 0.5]", "JSON objects"),
        ('{"y": 0.5, "drawing": true}', "x must be a number"),
        ('{"x": "0.5", "y": 0.5, "drawing": true}', "x must be a number"),
        ('{"x": NaN, "y": 0.5, "drawing": true}', "x must be a number"),
        ('{"x": 0.5, "y": 1.5, "drawing": true}', "between 0 and 1"),
        ('{"x": 0.5, "y": 0.5}', "drawing must be"),
        ('{"x": 0.5, "y": 0.5, "drawing": "yes"}', "drawing must be"),
    ],
)
def test_bad_drawing_frames_close_with_a_reason(server, frame, reason):
    ws, _ = drawer(server)
    ws.send(frame)
    code, text = close_of(ws)
    assert code == 1008 and reason in text


# -- mouse tracking -----------------------------------------------------------------------


def dashboard(server, token):
    stream = SSEClient(f"{server.url}/admin/track/stream?access_token={token}")
    assert stream.status == 200
    assert stream.wait_for(lambda items: any(i["event"] == "snapshot" for i in items))
    return stream


def events(stream, kind):
    return [json.loads(i["data"]) for i in stream.items if i["event"] == kind]


def visitor(server):
    ws = connect(server, "/track/ws")
    return ws, json.loads(ws.recv())


def test_visitors_on_any_worker_show_up_on_the_dashboard(server, admin_token):
    board = dashboard(server, admin_token)
    visitors = []
    while len({hello["served_by"] for _, hello in visitors} | {board.served_by}) < 2:
        visitors.append(visitor(server))
        assert len(visitors) < 30
    ids = {hello["id"] for _, hello in visitors}
    assert board.wait_for(
        lambda items: ids <= {json.loads(i["data"])["id"] for i in items if i["event"] == "join"}
    )
    for n in range(30):
        for ws, _ in visitors:
            ws.send(json.dumps({"x": 0.25, "y": n / 100}))
    moves = 30 * len(visitors)
    # Batches go out every 100 ms: wait for the one with the last moves, not
    # just for every visitor to have shown up once.
    assert board.wait_for(
        lambda items: (
            ids
            <= {
                vid
                for i in items
                if i["event"] == "batch"
                for vid in json.loads(i["data"])["positions"]
            }
            and sum(json.loads(i["data"])["events"] for i in items if i["event"] == "batch")
            >= moves
        )
    )
    batches = events(board, "batch")
    assert sum(b["events"] for b in batches) == moves  # every move counted, once
    assert len(batches) < 30 * len(visitors)  # coalesced, not one message per move
    last = [
        b["positions"][hello["id"]]
        for b in batches
        for _, hello in visitors[:1]
        if hello["id"] in b["positions"]
    ][-1]
    assert last == [0.25, 0.29]
    for ws, _ in visitors:
        ws.close()
    assert board.wait_for(
        lambda items: ids <= {json.loads(i["data"])["id"] for i in items if i["event"] == "leave"}
    )
    board.close()


@pytest.mark.chaos
@pytest.mark.slow
def test_a_killed_workers_visitors_expire(start_server, admin_token):
    server = start_server()
    _socket, hello = visitor(server)
    boards = [dashboard(server, admin_token)]
    while boards[-1].served_by == hello["served_by"]:  # watch from the other worker
        boards.append(dashboard(server, admin_token))
        assert len(boards) < 30
    board = boards[-1]
    os.kill(int(hello["served_by"].rsplit("/", 1)[1]), signal.SIGKILL)  # no goodbye
    assert board.wait_for(
        lambda items: (
            hello["id"] in {json.loads(i["data"])["id"] for i in items if i["event"] == "leave"}
        ),
        timeout=25,
    )
    for b in boards:
        b.close()


def test_dashboard_is_for_administrators_only(server, alice_token):
    assert requests.get(f"{server.url}/admin/track/stream", timeout=5).status_code == 401
    denied = requests.get(
        f"{server.url}/admin/track/stream",
        timeout=5,
        headers={"Authorization": f"Bearer {alice_token}"},
    )
    assert denied.status_code == 403
    page = requests.get(f"{server.url}/admin/track", timeout=5)
    assert page.status_code == 401 and "Administrators only" in page.text


@pytest.mark.parametrize(
    "frame, reason",
    [
        ("nope", "JSON objects"),
        ('{"x": 0.5}', "y must be a number"),
        ('{"x": -0.1, "y": 0.5}', "between 0 and 1"),
        ('{"x": true, "y": 0.5}', "x must be a number"),
    ],
)
def test_bad_tracking_frames_close_with_a_reason(server, frame, reason):
    ws, _ = visitor(server)
    ws.send(frame)
    code, text = close_of(ws)
    assert code == 1008 and reason in text
