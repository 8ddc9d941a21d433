"""Scale-out: two gunicorn instances, one Redis, the shipped deploy/nginx.conf
in front (round-robin, no sticky sessions).

What is published through one instance reaches subscribers of the other on
every transport; a long-poll cursor and an SSE Last-Event-ID continue on
whichever instance the next request lands. The TRUSTED_PROXIES tests at the end
need no nginx and always run.
"""

import contextlib
import itertools
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import websocket

from core.config import ConfigError, load_settings
from core.keys import Keys
from tests.clients import SSEClient, WSClient, healthz_bodies, long_poll, read_until_closed
from tests.nginx_front import NGINX, SKIP_REASON, NginxFailed, nginx_in_front


class TwoInstances:
    """Instances A and B behind one nginx (`url`), sharing only Redis."""

    def __init__(self, a, b, port):
        self.a, self.b = a, b
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.pids = {name: set(healthz_bodies(server)) for name, server in (("A", a), ("B", b))}
        assert all(len(p) == 2 for p in self.pids.values()), self.pids

    def instance(self, served_by):
        """'A' or 'B' from an X-Served-By header (host/pid)."""
        pid = int(served_by.rsplit("/", 1)[1])
        return next(name for name, pids in self.pids.items() if pid in pids)


@pytest.fixture(scope="module")
def deployment(start_server, tmp_path_factory):
    # An impatient body deadline on the instances: nginx must spare them slow bodies.
    impatient = {"BODY_TIMEOUT_SECONDS": 1, "BODY_MIN_BYTES_PER_SECOND": 1000}
    with behind_nginx(start_server, tmp_path_factory.mktemp("nginx"), **impatient) as both:
        yield both


@contextlib.contextmanager
def behind_nginx(start_server, tmp, **settings):
    """Two instances (`settings` for both) behind the shipped nginx config."""
    if NGINX is None:
        pytest.skip(SKIP_REASON)
    # Two separate deployments sharing only Redis (and SECRET_KEY): each has
    # its own instance directory (gunicorn's control socket lives there).
    a = start_server(workers=2, TRUSTED_PROXIES=1, INSTANCE_DIR=tmp / "instance-a", **settings)
    b = start_server(workers=2, TRUSTED_PROXIES=1, INSTANCE_DIR=tmp / "instance-b", **settings)
    try:
        with nginx_in_front([a.port, b.port], tmp) as url:
            yield TwoInstances(a, b, int(url.rsplit(":", 1)[1]))
    except NginxFailed as exc:
        pytest.fail(str(exc))
    finally:
        a.stop()
        b.stop()


@pytest.mark.integration
def test_round_robin_without_stickiness(deployment):
    served = [
        deployment.instance(
            requests.get(deployment.url + "/healthz", timeout=5).headers["X-Served-By"]
        )
        for _ in range(6)
    ]
    assert set(served) == {"A", "B"}
    assert all(x != y for x, y in itertools.pairwise(served)), served


@pytest.mark.integration
def test_published_on_one_instance_reaches_every_transport_through_nginx(deployment, channel):
    every_transport_gets_what_either_instance_published(deployment, channel)


def every_transport_gets_what_either_instance_published(deployment, channel, token=None):
    """SSE, WebSocket (with and without Origin) and long-poll subscribers
    through nginx get, in order, what was published through each instance
    directly and through nginx (`token`: a publisher's; default: the tests')."""
    path = f"/sub/{channel}"
    sse = SSEClient(f"{deployment.url}{path}?last_event_id=0")
    ws = WSClient(f"{deployment.ws_url}{path}/ws?last_event_id=0", origin=deployment.url)
    ws_no_origin = WSClient(f"{deployment.ws_url}{path}/ws?last_event_id=0")
    assert sse.status == 200, sse.response.text
    assert sse.response.headers["Content-Type"].startswith("text/event-stream")
    assert ws.hello is not None and ws_no_origin.hello is not None

    # Through each instance directly, and through nginx: whichever instance a
    # subscriber sits on, some of these were published through the other one.
    sent = []
    for i in range(6):
        target = (deployment.a, deployment.b)[i % 2]
        if i >= 4:
            response = requests.post(
                f"{deployment.url}/pub/{channel}",
                data=f"m{i}",
                headers={
                    "Authorization": f"Bearer {token or target.default_token}",
                    "Content-Type": "text/plain",
                },
                timeout=10,
            )
            assert response.status_code == 201, response.text
            sent.append((response.json()["id"], f"m{i}"))
        else:
            sent.append((target.publish(channel, f"m{i}", token=token)[0], f"m{i}"))

    # Long-poll through nginx: from the start, then live (held) for one more.
    body = long_poll(f"{deployment.url}{path}", cursor="0").json()
    assert [(e["id"], e["data"]) for e in body["events"]] == sent

    try:
        for sub in (sse, ws, ws_no_origin):
            assert sub.wait_count(6, timeout=15), (sub.items, sub.error)
        assert [(e["id"], e["data"]) for e in sse.messages()] == sent
        assert [(f["id"], f["data"]) for f in ws.items] == sent
        assert [(f["id"], f["data"]) for f in ws_no_origin.items] == sent
        assert {deployment.instance(sse.served_by)} | {deployment.instance(ws.served_by)} <= {
            "A",
            "B",
        }
    finally:
        sse.close()
        ws.close()
        ws_no_origin.close()


@pytest.mark.integration
def test_origin_checks_see_the_public_host_through_nginx(deployment, channel):
    with pytest.raises(websocket.WebSocketBadStatusException) as excinfo:
        websocket.create_connection(
            f"{deployment.ws_url}/sub/{channel}/ws", origin="http://evil.example", timeout=10
        )
    assert excinfo.value.status_code == 403

    def login(origin):
        return requests.post(
            f"{deployment.url}/auth/login",
            timeout=10,
            json={"username": "nobody-here", "password": "x" * 12},
            headers={"Origin": origin},
        ).status_code

    assert login(deployment.url) == 401  # same origin: on to the (failing) login
    assert login("http://evil.example") == 403


def _poll_into(result, url, cursor):
    result["r"] = long_poll(url, cursor=cursor)


def _trickled_post(url, channel, token, pieces, pause, missing=0):
    """POST /pub/<channel> through nginx with the body sent in `pieces`, a
    `pause` apart (a raw socket: requests sends a body at once); `missing`
    bytes of the declared length never come."""
    host, port = url.removeprefix("http://").split(":")
    length = len(b"".join(pieces)) + missing
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /pub/{channel} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        for piece in pieces:
            time.sleep(pause)
            sock.sendall(piece)
        return read_until_closed(sock, 30, ended=lambda r: b"\r\n\r\n" in r)


@pytest.mark.integration
def test_nginx_hands_the_instances_a_slow_body_whole(deployment, channel, admin_token):
    # 2.5 s for 5 bytes: the instances (body deadline 1 s) would answer 408
    # themselves (tests/test_limits.py); nginx passes the body on once whole.
    received, _ = _trickled_post(deployment.url, channel, admin_token, [b"x"] * 5, 0.5)
    assert received.startswith(b"HTTP/1.1 201"), received[:300]


@pytest.mark.integration
@pytest.mark.slow
def test_nginx_times_out_a_stalled_body_itself(deployment, channel, admin_token, rdb):
    began = time.monotonic()
    received, closed = _trickled_post(deployment.url, channel, admin_token, [b"x"], 0, missing=1)
    # After client_body_timeout (10 s) nginx ends the request (its log says
    # 408; to a client that went silent it just closes), without the instances.
    assert closed and received == b"" and time.monotonic() - began < 25
    assert rdb.xlen(Keys().stream(channel)) == 0


@pytest.mark.integration
def test_long_poll_cursor_continues_on_the_other_instance(deployment, channel):
    url = f"{deployment.url}/sub/{channel}"
    cursor = deployment.a.publish(channel, "first")[0]
    served = []
    for i in range(6):
        publisher = (deployment.a, deployment.b)[i % 2]
        if i % 2:  # the poll is already held when the message is published
            result = {}
            poll = threading.Thread(target=_poll_into, args=(result, url, cursor))
            poll.start()
            time.sleep(0.5)
            msg_id = publisher.publish(channel, f"n{i}")[0]
            poll.join(30)
            response = result["r"]
        else:  # the message is already there: the cursor alone finds it
            msg_id = publisher.publish(channel, f"n{i}")[0]
            response = long_poll(url, cursor=cursor)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [(e["id"], e["data"]) for e in body["events"]] == [(msg_id, f"n{i}")], body
        assert body["cursor"] == msg_id and not body.get("reset")
        cursor = body["cursor"]
        served.append(deployment.instance(response.headers["X-Served-By"]))
    # Round-robin: every request of this loop went to the other instance.
    assert all(x != y for x, y in itertools.pairwise(served)), served


@pytest.mark.integration
def test_sse_resume_on_the_other_instance_gets_exactly_the_missed_messages(deployment, channel):
    url = f"{deployment.url}/sub/{channel}"
    before = [(deployment.a.publish(channel, f"b{i}")[0], f"b{i}") for i in range(3)]
    first = SSEClient(url + "?last_event_id=0")
    try:
        assert first.wait_count(3), first.items
        assert [(e["id"], e["data"]) for e in first.messages()] == before
        first_instance = deployment.instance(first.served_by)
    finally:
        first.close()
    missed = [(deployment.b.publish(channel, f"x{i}")[0], f"x{i}") for i in range(3)]

    # Reconnect as EventSource does (Last-Event-ID header) until the request
    # lands on the other instance (round-robin: the next one normally does).
    for _ in range(4):
        second = SSEClient(url, last_event_id=before[-1][0])
        if deployment.instance(second.served_by) != first_instance:
            break
        second.close()
    else:
        pytest.fail("every reconnect landed on the same instance")
    try:
        assert second.wait_count(3), second.items
        live = deployment.a.publish(channel, "live")[0]
        assert second.wait_count(4), second.items
        time.sleep(0.3)  # nothing more may follow
        assert [(e["id"], e["data"]) for e in second.messages()] == missed + [(live, "live")]
    finally:
        second.close()


@pytest.mark.integration
def test_a_request_flood_from_one_address_is_refused_by_nginx_itself(deployment):
    """deploy/nginx.conf's per-address limit (30 requests a second, bursts of
    60): a flood gets nginx's own 429, in the app's shape (JSON, Retry-After)
    and without an instance's X-Served-By (no instance saw it); no more than
    the burst and the rate over the flood's time get through; and once the
    flood stops the address is served again. Last in the module: the other
    tests share this address."""

    def flood(requests_each):
        with requests.Session() as session:
            return [
                session.get(deployment.url + "/healthz", timeout=10) for _ in range(requests_each)
            ]

    began = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        answers = [answer for batch in pool.map(flood, [20] * 20) for answer in batch]
    elapsed = time.monotonic() - began
    served = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(served) + len(refused) == 400, {a.status_code for a in answers}
    assert len(served) <= 1 + 60 + 30 * elapsed + 5, (len(served), elapsed)  # (+5: clocks)
    assert refused
    for answer in refused:
        assert answer.json() == {"error": "too many requests from this address, retry shortly"}
        assert answer.headers["Retry-After"] == "1"
        assert "X-Served-By" not in answer.headers
    time.sleep(2.5)  # the bucket drains at 30 a second
    again = requests.get(deployment.url + "/healthz", timeout=10)
    assert again.status_code == 200 and "X-Served-By" in again.headers


# -- TRUSTED_PROXIES (no nginx needed) ----------------------------------------------------


@pytest.mark.unit
def test_trusted_proxies_is_zero_or_more(tmp_path):
    assert load_settings({"INSTANCE_DIR": str(tmp_path)})["TRUSTED_PROXIES"] == 0
    assert (
        load_settings({"INSTANCE_DIR": str(tmp_path), "TRUSTED_PROXIES": "0"})["TRUSTED_PROXIES"]
        == 0
    )
    assert (
        load_settings({"INSTANCE_DIR": str(tmp_path), "TRUSTED_PROXIES": "2"})["TRUSTED_PROXIES"]
        == 2
    )
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        load_settings({"INSTANCE_DIR": str(tmp_path), "TRUSTED_PROXIES": "-1"})


def _app(base_env, monkeypatch, **config):
    for name in ("REDIS_URL", "INSTANCE_DIR", "SECRET_KEY", "APP_ENV"):
        monkeypatch.setenv(name, base_env[name])
    from app import create_app

    return create_app({"QUOTA_KEY_PREFIX": f"rl-{uuid.uuid4().hex}", **config})


PROXY = {"REMOTE_ADDR": "10.0.0.2"}  # every request comes from the proxy's address


def _attempts(client, forwarded_for):
    return [
        client.post(
            "/auth/login",
            json={"username": "nobody-here", "password": "x" * 12},
            headers={"X-Forwarded-For": forwarded_for},
            environ_base=PROXY,
        ).status_code
        for _ in range(3)
    ]


@pytest.mark.integration
@pytest.mark.parametrize("trusted", [0, 1])
def test_rate_limit_counts_forwarded_clients_only_behind_a_trusted_proxy(
    base_env, monkeypatch, trusted
):
    app = _app(base_env, monkeypatch, TRUSTED_PROXIES=trusted, LOGIN_RATE_LIMIT="2 per minute")
    client = app.test_client()
    assert _attempts(client, "203.0.113.5") == [401, 401, 429]
    # A spoofed header the proxy appended to is not believed beyond the last hop.
    other = _attempts(client, "198.51.100.1, 203.0.113.6")
    assert other == ([401, 401, 429] if trusted else [429, 429, 429])


@pytest.mark.integration
@pytest.mark.parametrize("trusted", [0, 1])
def test_origin_check_sees_the_public_host_behind_a_trusted_proxy(base_env, monkeypatch, trusted):
    app = _app(base_env, monkeypatch, TRUSTED_PROXIES=trusted)
    client = app.test_client()
    response = client.post(
        "/auth/login",
        json={"username": "nobody-here", "password": "x" * 12},
        headers={
            "Host": "10.0.0.3:8001",
            "Origin": "https://chat.example.org",
            "X-Forwarded-Host": "chat.example.org",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-For": "203.0.113.7",
        },
        environ_base=PROXY,
    )
    # Trusted: the Origin matches the public host, the login itself fails (401).
    assert response.status_code == (401 if trusted else 403), response.get_json()
