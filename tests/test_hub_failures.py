"""The hub when things go wrong: Redis drops its connection, a client stops reading."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.hub import Hub
from tests.clients import (
    LongPoller,
    SSEClient,
    WSClient,
    data_of,
    healthz_bodies,
    read_until_closed,
    wait_subscribed,
)

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_hub_reconnects_after_redis_drops_it_and_subscribers_lose_nothing(
    start_server, redis_server, rdb, channel
):
    server = start_server()
    subscribers = {
        "sse": SSEClient(f"{server.url}/sub/{channel}"),
        "ws": WSClient(f"{server.ws_url}/sub/{channel}/ws"),
        "longpoll": LongPoller(f"{server.url}/sub/{channel}", cursor="0"),
    }
    wait_subscribed(server, 2)
    server.publish(channel, "before the outage")
    for sub in subscribers.values():
        assert sub.wait_count(1)

    # Kill every hub connection, and keep them from coming back for a while:
    # Redis refuses new clients once maxclients is reached.
    pids = set(healthz_bodies(server))
    assert len(pids) == 2
    listeners = [c for c in rdb.client_list() if int(c.get("sub", 0)) > 0]
    ours = [c for c in listeners if int(c["name"].rsplit(":", 1)[-1]) in pids]
    assert len(ours) == 2, "exactly one listening connection per worker"
    others = len(rdb.client_list()) - len(listeners)
    publisher = Hub(rdb, redis_server.url)  # publishes on the test's open connection
    try:
        rdb.config_set("maxclients", others)
        rdb.client_kill_filter(_type="pubsub")

        outage = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not outage:
            outage = {
                pid: body
                for pid, (status, body) in healthz_bodies(server, tries=6).items()
                if status == 503
            }
        assert outage, "/healthz should report the outage while it lasts"
        assert all(
            body["hub"] is False and body["status"] == "unavailable" for body in outage.values()
        )

        missed = [f"during the outage {i}" for i in range(30)]
        for text in missed:
            publisher.publish(channel, text)
    finally:
        rdb.config_set("maxclients", 10000)

    expected = ["before the outage"] + missed
    for name, sub in subscribers.items():
        assert sub.wait_count(len(expected), timeout=20), f"{name}: {data_of(sub)}"
    server.publish(channel, "after the outage")
    expected.append("after the outage")
    for name, sub in subscribers.items():
        assert sub.wait_count(len(expected)), f"{name}: {data_of(sub)}"
        assert data_of(sub) == expected, name  # nothing lost, nothing twice, in order
        sub.close()

    deadline = time.monotonic() + 15  # a worker with no subscriber may still be backing off
    while time.monotonic() < deadline:
        statuses = healthz_bodies(server)
        if all(status == 200 for status, _ in statuses.values()):
            break
        time.sleep(0.2)
    assert [status for status, _ in statuses.values()] == [200, 200]
    assert all(body["hub_reconnects"] >= 1 for _, body in statuses.values())


def _stalled_sse_connection(server, channel):
    """An SSE client that never reads: its receive window fills and stays full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET /sub/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_client_that_stops_reading_is_cut_off_without_holding_back_others(
    start_server, channel, transport
):
    server = start_server(SUBSCRIBER_QUEUE_SIZE=20)
    stalled = _stalled_sse_connection(server, channel)
    if transport == "sse":
        healthy = SSEClient(f"{server.url}/sub/{channel}")
    else:
        healthy = WSClient(f"{server.ws_url}/sub/{channel}/ws")
    wait_subscribed(server, 2)

    payload = "x" * 30_000
    sent = [f"{i}:{payload}" for i in range(400)]  # 12 MB: far beyond socket buffers
    for text in sent:
        server.publish(channel, text)

    # The healthy client has everything while the stalled one has read nothing.
    assert healthy.wait_count(len(sent), timeout=60)
    assert data_of(healthy) == sent

    received, closed = read_until_closed(stalled, timeout=30)
    assert closed, "the stalled client should have been disconnected"
    assert received.count(b"\nid: ") < len(sent)
    stalled.close()

    counts = [body["subscribers"] for _, body in healthz_bodies(server).values()]
    assert len(counts) == 2
    assert sum(counts) == 1  # only the healthy subscriber remains
    healthy.close()


def _paused_ws_connection(server, channel):
    """A WebSocket subscriber with a tiny receive window that reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET /sub/{channel}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def test_slow_consumer_is_told_why_before_being_closed(start_server, redis_server, rdb, channel):
    """A burst faster than a client drains: it gets an explicit close reason
    (and may resume from its last id)."""
    server = start_server(SUBSCRIBER_QUEUE_SIZE=5)
    sse = _stalled_sse_connection(server, channel)
    ws = _paused_ws_connection(server, channel)
    wait_subscribed(server, 2)
    # 9 MB in one pipeline: far more than the sockets buffer, so messages
    # queue up for both clients while they are not reading.
    burst = [f"burst {i} " + "x" * 30_000 for i in range(300)]
    Hub(rdb, redis_server.url).publish_many(channel, burst)
    time.sleep(0.5)
    # Both read again, at once (within the 2 s grace): the last thing is the reason.
    with ThreadPoolExecutor(2) as pool:
        sse_read, ws_read = [pool.submit(read_until_closed, sock, 30) for sock in (sse, ws)]
    received, closed = sse_read.result()
    assert closed
    assert received.count(b"\nid: ") < len(burst)
    tail = received[-300:].decode("utf-8", "replace")
    assert "event: close" in tail and "slow consumer" in tail
    received, closed = ws_read.result()
    assert closed
    assert received.count(b"burst ") < len(burst)
    close_frame = received[received.rindex(b"\x88") :]
    assert close_frame[2:4] == (1013).to_bytes(2, "big")  # try again later
    assert b"slow consumer" in close_frame
