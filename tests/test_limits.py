"""What one client may hold or send: open streams per address, publishes per
address and per account, and request bodies that come too slowly or too big
(core/quotas.py, core/bodies.py), against a real gunicorn and Redis."""

import json
import socket
import time

import pytest
import requests

from core.keys import Keys
from tests.clients import (
    client_frame,
    long_poll_request,
    raw_request,
    read_until,
    read_until_closed,
    sse_request,
    wait_until,
    ws_request,
)

pytestmark = pytest.mark.integration


def _status_and_headers(received):
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return head[0], {k.lower(): v for k, v in headers.items()}


@pytest.fixture(scope="module")
def capped(start_server):
    """One worker, so that its per-worker share is the whole server's."""
    return start_server(workers=1, CONNECTIONS_PER_ADDRESS=3)


def test_an_address_holding_its_share_of_streams_gets_429_on_every_transport(capped, channel):
    held = [raw_request(capped, sse_request(channel)) for _ in range(2)]
    held.append(raw_request(capped, long_poll_request(channel)))
    try:
        for sock in held[:2]:
            read_until(sock, b"retry:")
        time.sleep(0.5)  # the long-poll is parked
        for request in (
            sse_request(channel),
            long_poll_request(channel),
            ws_request(f"/sub/{channel}/ws"),
        ):
            status, headers, text = _refusal(capped, request)
            assert status == "HTTP/1.1 429 TOO MANY REQUESTS", text[:300]
            assert int(headers["retry-after"]) > 0
            assert "too many open connections from your address" in text
        # Other work from the same address is not refused...
        assert requests.get(capped.url + "/healthz", timeout=10).status_code == 200
        held.pop().close()  # ...and a stream that ends frees its place (within 1 s)
        assert wait_until(lambda: _opens(capped, channel), timeout=5)
    finally:
        for sock in held:
            sock.close()


def test_a_worker_holding_its_streams_answers_503_and_recovers(start_server, channel, admin_token):
    # Idle streams leave gunicorn's pool (core.parking), so the pool alone no
    # longer bounds them: the worker counts them itself.
    server = start_server(workers=1, WORKER_CONNECTIONS=3)
    held = [raw_request(server, sse_request(channel)) for _ in range(2)]
    held.append(raw_request(server, ws_request(f"/sub/{channel}/ws")))
    try:
        for sock in held[:2]:
            read_until(sock, b"retry:")
        read_until(held[2], b"subscribed")
        status, headers, text = _refusal(server, sse_request(channel))
        assert status == "HTTP/1.1 503 SERVICE UNAVAILABLE", text[:300]
        assert int(headers["retry-after"]) > 0
        assert "holds all the streams it may (3)" in text
        # The held streams still receive, and one that ends frees its place.
        server.publish(channel, "still here", token=admin_token)
        read_until(held[0], b"still here")
        read_until(held[2], b"still here")
        held.pop(0).close()
        assert wait_until(lambda: _opens(server, channel), timeout=5)
    finally:
        for sock in held:
            sock.close()


def _refusal(server, request):
    """The status line, headers and text of a stream request's JSON refusal."""
    with raw_request(server, request) as sock:
        received, _ = read_until_closed(
            sock, 10, ended=lambda r: b"\r\n\r\n" in r and r.endswith(b"}\n")
        )
    status, headers = _status_and_headers(received)
    return status, headers, received.decode(errors="replace")


def _opens(server, channel):
    with raw_request(server, sse_request(channel)) as sock:
        return read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_addresses_behind_a_trusted_proxy_are_counted_apart(start_server, channel):
    server = start_server(workers=1, CONNECTIONS_PER_ADDRESS=1, TRUSTED_PROXIES=1)

    def stream_from(address):
        return raw_request(
            server,
            sse_request(channel).replace("\r\n\r\n", f"\r\nX-Forwarded-For: {address}\r\n\r\n"),
        )

    first = stream_from("198.51.100.1")
    try:
        read_until(first, b"retry:")
        with stream_from("198.51.100.2") as other:
            assert b"retry:" in read_until(other, b"retry:")
        with stream_from("198.51.100.1") as again:
            received = read_until(again, b"\r\n\r\n")
            assert received.startswith(b"HTTP/1.1 429")
    finally:
        first.close()


def test_publishes_are_limited_per_address_and_per_account(start_server, channel, admin_token):
    server = start_server(workers=2, PUBLISH_RATE_LIMIT="3 per minute", TRUSTED_PROXIES=1)

    def publish(address, token=admin_token):
        return requests.post(
            f"{server.url}/pub/{channel}",
            data=b"hello",
            timeout=10,
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": address},
        )

    assert [publish("198.51.100.7").status_code for _ in range(3)] == [201, 201, 201]
    refused = publish("198.51.100.7")
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert "too many publishes" in refused.json()["error"]
    # The account's budget is spent too: new addresses do not buy more.
    refused = publish("198.51.100.8")
    assert refused.status_code == 429 and "per account" in refused.json()["error"]


def test_publishes_with_a_bad_token_spend_the_address_quota_before_verification(
    start_server, channel, admin_token
):
    """Every attempt spends its address's share, before the token is checked:
    a flood of publishes with bad tokens meets the same 429 as any other,
    instead of costing a token verification each for ever."""
    server = start_server(workers=1, PUBLISH_RATE_LIMIT="3 per minute", TRUSTED_PROXIES=1)

    def publish(token):
        return requests.post(
            f"{server.url}/pub/{channel}",
            data=b"hello",
            timeout=10,
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "198.51.100.9"},
        )

    assert [publish("not-a-token").status_code for _ in range(3)] == [401, 401, 401]
    refused = publish("not-a-token")
    assert refused.status_code == 429 and "per address" in refused.json()["error"]
    # A good token from that address is refused too: the address's share is spent.
    assert publish(admin_token).status_code == 429


def test_a_client_over_its_quota_is_refused_without_counting_again_in_redis(
    start_server, channel, admin_token, rdb
):
    """Once a worker has refused an address for a quota, it refuses it from
    memory until the window resets: a flood of refused requests is not three
    Redis round trips each. Then the address is served again."""
    server = start_server(workers=1, PUBLISH_RATE_LIMIT="2 per 4 seconds", TRUSTED_PROXIES=1)
    address = "198.51.100.77"

    def publish():
        return requests.post(
            f"{server.url}/pub/{channel}",
            data=b"hello",
            timeout=10,
            headers={"Authorization": f"Bearer {admin_token}", "X-Forwarded-For": address},
        ).status_code

    def counted():  # the address's hits in its fixed window, as Redis holds them
        keys = [k for k in rdb.scan_iter(match="*PUBLISH_RATE_LIMIT*") if address in k]
        return sum(int(rdb.get(k) or 0) for k in keys)

    statuses = [publish() for _ in range(3)]
    while statuses[-1] != 429:  # a window that turned over meanwhile: start again
        statuses.append(publish())
    before = counted()
    assert before >= 3
    assert [publish() for _ in range(20)] == [429] * 20
    assert counted() == before  # refused from memory: nothing more counted
    time.sleep(4.5)  # the window resets
    assert publish() == 201


def _post_head(channel, token, extra):
    return (
        f"POST /pub/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: text/plain\r\n{extra}\r\n"
    )


@pytest.fixture(scope="module")
def impatient(start_server):
    return start_server(workers=1, BODY_TIMEOUT_SECONDS=1, BODY_MIN_BYTES_PER_SECOND=1000)


def test_a_body_sent_too_slowly_is_cut_with_408_and_the_connection_closed(
    impatient, channel, admin_token
):
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=15) as sock:
        sock.sendall(_post_head(channel, admin_token, "Content-Length: 100\r\n").encode())
        began = time.monotonic()
        received, closed = b"", False
        for _ in range(20):  # a byte every half second: 100 bytes would take 50 s
            try:
                sock.sendall(b"x")
            except OSError:  # the server has closed: what it said is waiting
                break
            received, closed = read_until_closed(sock, 0.5)
            if received:
                break
        if not closed:
            more, closed = read_until_closed(sock, 10)
            received += more
        took = time.monotonic() - began
    assert received.startswith(b"HTTP/1.1 408"), received[:300]
    assert "too slowly" in json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert closed
    assert took < 8  # cut after about 1.1 s, not held for the 50 s it asked for
    assert requests.get(impatient.url + "/healthz", timeout=10).status_code == 200


def test_a_body_at_a_reasonable_pace_is_accepted(impatient, channel, admin_token):
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=15) as sock:
        sock.sendall(_post_head(channel, admin_token, "Content-Length: 10\r\n").encode())
        for piece in (b"hello", b" world"[:5]):
            time.sleep(0.2)
            sock.sendall(piece)
        received, _ = read_until_closed(sock, 10, ended=lambda r: r.endswith(b"}\n"))
    assert received.startswith(b"HTTP/1.1 201"), received[:300]


def _chunked(body, size=4096):
    return (
        b"".join(
            b"%X\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
            for i in range(0, len(body), size)
        )
        + b"0\r\n\r\n"
    )


def test_a_chunked_body_over_the_limit_is_413_like_one_with_content_length(
    server, channel, admin_token, rdb
):
    limit = 64 * 1024
    for head, body in (
        ("Transfer-Encoding: chunked\r\n", _chunked(b"a" * (limit + 5400))),
        (f"Content-Length: {limit + 1}\r\n", b""),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(_post_head(channel, admin_token, head).encode() + body)
            received, closed = read_until_closed(sock, 10)
        assert received.startswith(b"HTTP/1.1 413"), received[:300]
        assert closed
    assert rdb.xlen(Keys().stream(channel)) == 0  # nothing stored, not even a cut-down copy


def test_a_chunked_body_within_the_limit_is_published_whole(server, channel, admin_token, rdb):
    body = "ü".encode() * 20000  # 40,000 bytes in ten chunks
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(
            _post_head(channel, admin_token, "Transfer-Encoding: chunked\r\n").encode()
            + _chunked(body)
        )
        received, _ = read_until_closed(sock, 10, ended=lambda r: r.endswith(b"}\n"))
    assert received.startswith(b"HTTP/1.1 201"), received[:300]
    [(_, fields)] = rdb.xrange(Keys().stream(channel))
    assert fields["d"] == body.decode()


@pytest.mark.parametrize(
    "head, body",
    [
        ("Content-Length: 100\r\n", b"only ten b"),  # then the client stops sending
        ("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\nZZ\r\n"),  # a malformed chunk
    ],
)
def test_a_body_cut_short_or_malformed_is_400_and_nothing_is_published(
    server, channel, admin_token, rdb, head, body
):
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(_post_head(channel, admin_token, head).encode() + body)
        sock.shutdown(socket.SHUT_WR)
        received, _ = read_until_closed(sock, 10)
    assert received.startswith(b"HTTP/1.1 400"), received[:300]
    assert rdb.xlen(Keys().stream(channel)) == 0  # not a cut-down message


def _flood(server, path, seconds):
    """A WebSocket client that sends small frames as fast as it can for
    `seconds`, never reading (nor closing when told to)."""
    sock = raw_request(server, ws_request(path))
    assert b" 101 " in read_until(sock, b"\r\n\r\n")
    frame = client_frame(0x1, b'{"x": 0.5, "y": 0.5, "drawing": false}') * 100
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            sock.sendall(frame)
    except OSError:
        pass  # the server gave up on it: fine
    finally:
        sock.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/sub/flooded/ws", "/draw/ws"])
def test_a_websocket_client_flooding_frames_does_not_take_the_worker(start_server, path):
    """One worker; a client floods frames the server drops (a subscriber
    socket) or refuses (drawing moves past their quota, closed with 1008 and
    then flooded on): the worker keeps answering everyone else meanwhile
    (it was stalled for as long as the flood went on)."""
    import threading

    server = start_server(workers=1, DRAW_MOVE_RATE_LIMIT="20 per second")
    flood = threading.Thread(target=_flood, args=(server, path, 6))
    flood.start()
    time.sleep(1)
    try:
        for _ in range(6):
            assert requests.get(server.url + "/healthz", timeout=3).status_code == 200
            time.sleep(0.5)
    finally:
        flood.join()
