"""A client that is gone frees what it held within 2 seconds.

Browsers close tabs, phones lose the network: the connection ends while its
request is held (a long-poll waiting for news, an idle SSE stream, a
WebSocket subscriber between messages). The worker must notice the close
itself, not at its next write (a heartbeat 15 s later, a long-poll's answer
25 s later), and release the connection's slot, its count in
core.lifecycle and its hub subscription. /healthz reports, per worker,
`connections` ({"sse", "longpoll", "websocket"}) and `subscribers`.
"""

import resource
import time

import pytest
import requests

from tests.clients import (
    healthz_bodies,
    long_poll_request,
    raw_request,
    read_until,
    sse_request,
    wait_until,
    ws_request,
)

pytestmark = pytest.mark.integration

FREED_WITHIN = 2.0  # seconds: the requirement


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors():
    """Thousands of sockets in this process: raise the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(16384, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def held(body):
    """What one worker holds, from its /healthz body."""
    assert "connections" in body, f"/healthz has no `connections`: {body}"
    return {**body["connections"], "subscribers": body["subscribers"]}


def workers_holding(server):
    """{pid: held(...)} of both workers, each from a fresh /healthz answer."""
    bodies = healthz_bodies(server)
    assert len(bodies) == 2, f"only {len(bodies)} worker(s) answered /healthz"
    return {pid: held(body) for pid, (_, body) in bodies.items()}


def totals(state):
    out = {}
    for counts in state.values():
        for name, n in counts.items():
            out[name] = out.get(name, 0) + n
    return out


def wait_totals(server, expected, timeout=30):
    """Until both workers together hold `expected` (a subset of held()'s keys)."""
    deadline = time.monotonic() + timeout
    while True:
        state = workers_holding(server)
        if all(totals(state).get(k) == v for k, v in expected.items()):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"the workers should hold {expected} in all, they report {state}")
        time.sleep(0.1)


def assert_back_to_baseline(server, baseline, closed_at, what):
    """Both workers report exactly `baseline` within FREED_WITHIN of `closed_at`."""
    deadline = closed_at + FREED_WITHIN
    latest = {}
    while True:
        try:
            latest = workers_holding(server)
        except requests.RequestException as exc:
            latest = {"/healthz": repr(exc)}
        if latest == baseline:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"{FREED_WITHIN} s after {what} were closed, the workers still hold {latest} "
        f"(before they were opened: {baseline})"
    )


def close_all(socks):
    for sock in socks:
        sock.close()
    return time.monotonic()


def test_abandoned_long_polls_and_sse_streams_are_freed_within_2_s(start_server, channel):
    server = start_server()
    baseline = workers_holding(server)
    before = totals(baseline)
    socks = []
    try:
        polls = [raw_request(server, long_poll_request(f"{channel}.poll")) for _ in range(2000)]
        socks += polls
        streams = [raw_request(server, sse_request(f"{channel}.sse")) for _ in range(2000)]
        socks += streams
        for sock in streams:  # the headers come once the subscription is in place
            assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200")
        wait_totals(
            server,
            {
                "longpoll": before["longpoll"] + 2000,
                "sse": before["sse"] + 2000,
                "subscribers": before["subscribers"] + 4000,
            },
        )
        closed_at = close_all(socks)
        assert_back_to_baseline(
            server, baseline, closed_at, "2000 held long-polls and 2000 idle SSE streams"
        )
    finally:
        close_all(socks)
        server.stop()


def test_abandoned_websocket_subscribers_are_freed_within_2_s(start_server, channel):
    server = start_server()
    baseline = workers_holding(server)
    before = totals(baseline)
    socks = []
    try:
        socks = [raw_request(server, ws_request(f"/sub/{channel}/ws")) for _ in range(300)]
        for sock in socks:  # the hello frame says the subscription is in place
            received = read_until(sock, b'"subscribed"')
            assert received.startswith(b"HTTP/1.1 101"), received[:200]
        wait_totals(
            server,
            {"websocket": before["websocket"] + 300, "subscribers": before["subscribers"] + 300},
        )
        closed_at = close_all(socks)  # no close frame: the peer is simply gone
        assert_back_to_baseline(server, baseline, closed_at, "300 idle WebSocket subscribers")
    finally:
        close_all(socks)
        server.stop()


def test_a_worker_full_of_abandoned_long_polls_takes_new_streams_within_2_s(start_server, channel):
    """One worker, WORKER_CONNECTIONS=100, 100 long-polls held: a new stream
    gets 503 while other requests are still answered (a held poll keeps no
    pool slot: core.parking). Once the polls' clients are gone, new streams
    are admitted within 2 s."""
    server = start_server(workers=1, WORKER_CONNECTIONS=100)
    socks = []
    try:
        socks = [raw_request(server, long_poll_request(channel)) for _ in range(100)]
        assert wait_until(lambda: _longpolls_held(server) == 100, timeout=10)
        assert _stream_status(server, channel) == b"503"
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        closed_at = close_all(socks)
        while _stream_status(server, channel) != b"200":
            assert time.monotonic() - closed_at < FREED_WITHIN, (
                f"{FREED_WITHIN} s after 100 held long-polls were abandoned, a new stream "
                "is still refused: the abandoned polls are still counted"
            )
            time.sleep(0.05)
    finally:
        close_all(socks)
        server.stop()


def _longpolls_held(server):
    body = requests.get(f"{server.url}/healthz", timeout=5).json()
    return held(body)["longpoll"]


def _stream_status(server, channel):
    with raw_request(server, sse_request(channel)) as sock:
        return read_until(sock, b"\r\n").split(b" ")[1]
