"""Channels over SSE, long-poll and WebSocket, against gunicorn with 2 gevent workers."""

import json
import socket
import time
from urllib.parse import quote

import pytest
import requests
import websocket

from realtime_client import parse_sse
from tests.clients import LongPoller, SSEClient, WSClient, data_of, long_poll, wait_subscribed

pytestmark = pytest.mark.integration

TRANSPORTS = ["sse", "longpoll", "ws"]


def open_subscriber(server, transport, channel, last_id=None):
    if transport == "sse":
        query = f"?last_event_id={last_id}" if last_id else ""
        return SSEClient(f"{server.url}/sub/{channel}{query}")
    if transport == "ws":
        query = f"?last_event_id={last_id}" if last_id else ""
        return WSClient(f"{server.ws_url}/sub/{channel}/ws{query}")
    return LongPoller(f"{server.url}/sub/{channel}", cursor=last_id)


def served_by(sub):
    return sub.served_by if isinstance(sub.served_by, str) else next(iter(sub.served_by), None)


def ids_of(sub):
    return [item["id"] for item in sub.items if "id" in item and not item.get("reset")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_message_published_on_any_worker_reaches_subscribers_on_every_worker(
    server, channel, transport
):
    subscribers, pids = [], set()
    # The kernel spreads connections over the workers; open until both hold some.
    while len(pids) < 2 or len(subscribers) < 4:
        assert len(subscribers) < 60, "all connections landed on one worker"
        if transport == "longpoll":
            # A long-poll request only reveals its worker when it answers.
            sub = open_subscriber(server, transport, channel, last_id="0")
            server.publish(channel, "warm-up")
            assert sub.wait_count(1)
            pids |= sub.served_by
        else:
            sub = open_subscriber(server, transport, channel)
            pids.add(sub.served_by)
        subscribers.append(sub)
    if transport != "longpoll":
        wait_subscribed(server, len(subscribers))

    publisher_pids = set()
    sent = []
    for i in range(20):
        text = f"message {i} from the test"
        _, by = server.publish(channel, text)
        publisher_pids.add(by)
        sent.append(text)
    assert len(publisher_pids) == 2, "publishes should have used both workers"

    for sub in subscribers:
        assert sub.wait_for(lambda items: sent[-1] in [i.get("data") for i in items]), (
            f"{transport} subscriber on {served_by(sub)} got {data_of(sub)}"
        )
        received = [d for d in data_of(sub) if d != "warm-up"]
        assert received == sent  # every message, once, in order
        sub.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resume_delivers_what_was_missed_once_and_in_order(server, channel, transport):
    first_id, _ = server.publish(channel, "before")
    sub = open_subscriber(server, transport, channel, last_id=first_id)
    second_id, _ = server.publish(channel, "seen live")
    assert sub.wait_count(1)
    assert data_of(sub) == ["seen live"]
    last_seen = ids_of(sub)[-1]
    assert last_seen == second_id
    sub.close()

    missed = [f"missed {i}" for i in range(25)]
    for text in missed:
        server.publish(channel, text)

    resumed = open_subscriber(server, transport, channel, last_id=last_seen)
    assert resumed.wait_count(len(missed))
    server.publish(channel, "live again")
    assert resumed.wait_count(len(missed) + 1)
    assert data_of(resumed) == missed + ["live again"]
    ids = ids_of(resumed)
    assert len(set(ids)) == len(ids)
    resumed.close()


def test_sse_last_event_id_header_wins_over_query(server, channel):
    ids = [server.publish(channel, f"m{i}")[0] for i in range(3)]
    sub = SSEClient(f"{server.url}/sub/{channel}?last_event_id={ids[0]}", last_event_id=ids[1])
    assert sub.wait_count(1)
    assert data_of(sub) == ["m2"]
    assert sub.retry == 2000
    sub.close()


def test_json_messages_arrive_as_json_values(server, channel):
    msg_id, _ = server.publish(
        channel, '{"price": 12.5, "symbol": "IBM"}', content_type="application/json"
    )
    body = long_poll(f"{server.url}/sub/{channel}", cursor="0").json()
    assert body["events"] == [{"id": msg_id, "data": {"price": 12.5, "symbol": "IBM"}}]
    assert body["cursor"] == msg_id


def test_sse_data_with_line_breaks_round_trips(server, channel):
    text = "line one\nline two\r\nline three\rend"
    server.publish(channel, text)
    sub = SSEClient(f"{server.url}/sub/{channel}?last_event_id=0")
    assert sub.wait_count(1)
    # EventSource joins data lines with \n: every kind of break becomes \n
    assert sub.items[0]["data"] == "line one\nline two\nline three\nend"
    sub.close()


def test_long_poll_without_cursor_waits_for_the_next_message(server, channel):
    server.publish(channel, "old news")
    poller = LongPoller(f"{server.url}/sub/{channel}")
    wait_subscribed(server, 1)
    server.publish(channel, "fresh")
    assert poller.wait_count(1)
    assert data_of(poller)[0] == "fresh"
    poller.close()


def test_long_poll_times_out_with_an_empty_batch_and_the_same_cursor(start_server, channel):
    server = start_server(LONGPOLL_TIMEOUT_SECONDS=1, GRACEFUL_TIMEOUT=3)
    msg_id, _ = server.publish(channel, "only one")
    body = long_poll(f"{server.url}/sub/{channel}", cursor=msg_id).json()
    assert body == {"events": [], "cursor": msg_id}
    empty = long_poll(f"{server.url}/sub/{channel}-empty").json()
    assert empty == {"events": [], "cursor": "0-0"}


def test_a_long_poll_backlog_comes_in_bounded_answers_with_nothing_lost(start_server, channel):
    """A client far behind gets its backlog in answers of about
    LONGPOLL_MAX_BYTES, each cursor the last message it carries, and with
    the cursor gets everything, once, in order."""
    server = start_server(LONGPOLL_MAX_BYTES=100_000, STREAM_MAXLEN=5000)
    published = [f"{i}:" + "x" * 30_000 for i in range(40)]  # 1.2 MB
    for text in published:
        server.publish(channel, text)
    received, answers, cursor = [], [], "0"
    while len(received) < len(published):
        response = long_poll(f"{server.url}/sub/{channel}", cursor=cursor, timeout=10)
        body = response.json()
        assert body["events"], body
        answers.append(len(response.content))
        received += [event["data"] for event in body["events"]]
        assert body["cursor"] == body["events"][-1]["id"]
        cursor = body["cursor"]
    assert received == published
    assert max(answers) < 100_000 + 31_000  # never more than the cap and one message
    assert len(answers) >= 12  # 40 messages of 30 KB, three to an answer


def test_a_long_poll_reads_a_backlog_from_redis_about_as_far_as_it_answers(
    start_server, rdb, channel
):
    """Paging must not make the worker fetch the whole backlog from Redis
    for each page it sends."""
    server = start_server(LONGPOLL_MAX_BYTES=100_000, STREAM_MAXLEN=5000)
    for i in range(200):  # 6 MB
        server.publish(channel, f"{i}:" + "x" * 30_000)
    sent_by_redis = rdb.info("stats")["total_net_output_bytes"]
    body = long_poll(f"{server.url}/sub/{channel}", cursor="0", timeout=10).json()
    sent_by_redis = rdb.info("stats")["total_net_output_bytes"] - sent_by_redis
    assert len(body["events"]) == 3
    assert sent_by_redis < 8 * 31_000, sent_by_redis  # a first batch of 8, not 200


def test_a_long_poll_answer_always_carries_a_message_bigger_than_its_cap(start_server, channel):
    server = start_server(LONGPOLL_MAX_BYTES=1000)
    big, _ = server.publish(channel, "y" * 5000)
    server.publish(channel, "after")
    body = long_poll(f"{server.url}/sub/{channel}", cursor="0", timeout=10).json()
    assert [e["data"] for e in body["events"]] == ["y" * 5000]
    assert body["cursor"] == big
    body = long_poll(f"{server.url}/sub/{channel}", cursor=big, timeout=10).json()
    assert [e["data"] for e in body["events"]] == ["after"]


# -- ids that no longer exist: an explicit reset, never a silent gap ------------


@pytest.fixture(scope="module")
def small_server(start_server):
    return start_server(STREAM_MAXLEN=10, LONGPOLL_TIMEOUT_SECONDS=2, GRACEFUL_TIMEOUT=3)


def _reset_of(sub):
    assert sub.wait_for(
        lambda items: any(i.get("reset") or i.get("event") == "reset" for i in items)
    ), sub.items
    first = sub.items[0]
    return json.loads(first["data"]) if first.get("event") == "reset" else first


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("cursor_kind", ["trimmed", "unknown"])
def test_gone_cursor_gets_reset_then_live_messages(small_server, channel, transport, cursor_kind):
    ids = [small_server.publish(channel, f"m{i}")[0] for i in range(250)]
    if cursor_kind == "trimmed":
        cursor = ids[0]  # MAXLEN ~ 10: the oldest entries are gone
    else:
        ms, _ = ids[-1].split("-")
        cursor = f"{int(ms) + 10**7}-0"  # an id that was never issued
    sub = open_subscriber(small_server, transport, channel, last_id=cursor)
    reset = _reset_of(sub)
    assert reset["reset"] is True
    assert reset["cursor"] == ids[-1]  # delivery continues after the newest message
    small_server.publish(channel, "after reset")
    assert sub.wait_for(lambda items: "after reset" in [i.get("data") for i in items])
    assert [d for d in data_of(sub) if not d.startswith("{")] == ["after reset"]
    sub.close()


@pytest.mark.parametrize("bad_id", ["abc", "1-2-3", "-1", "99999999999999999999999-0", "1.5"])
def test_malformed_ids_are_rejected_with_400(server, channel, bad_id):
    lp = long_poll(f"{server.url}/sub/{channel}", cursor=bad_id)
    assert lp.status_code == 400
    assert "cursor" in lp.json()["error"]
    sse = requests.get(
        f"{server.url}/sub/{channel}",
        params={"last_event_id": bad_id},
        headers={"Accept": "text/event-stream"},
        timeout=5,
    )
    assert sse.status_code == 400
    assert "Last-Event-ID" in sse.json()["error"]


def test_malformed_ws_id_closes_with_policy_violation(server, channel):
    client = WSClient(f"{server.ws_url}/sub/{channel}/ws?last_event_id=nonsense")
    assert client.closed.wait(10)
    assert client.close_code == 1008
    assert "invalid message id" in client.close_reason


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a" * 65, "-leading-dash", "has space", "semi;colon", "internal:channel", "caf%C3%A9"]
)
def test_invalid_channel_names_are_rejected(server, name):
    headers = {"Authorization": f"Bearer {server.default_token}"}
    pub = requests.post(f"{server.url}/pub/{name}", data="x", headers=headers, timeout=5)
    sub = requests.get(f"{server.url}/sub/{name}", timeout=5)
    for response in (pub, sub):
        assert response.status_code == 400, response.text
        assert "invalid channel name" in response.json()["error"]
    client = WSClient(f"{server.ws_url}/sub/{quote(name, safe='')}/ws")
    assert client.closed.wait(10)
    assert client.close_code == 1008


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "needs a login or a bearer token"),
        ({"Authorization": "Bearer wrong-token"}, "malformed token"),
        ({"Authorization": "Basic dGVzdDp0ZXN0"}, "needs a login or a bearer token"),
    ],
)
def test_publishing_needs_a_credential(server, channel, headers, reason):
    response = requests.post(f"{server.url}/pub/{channel}", data="x", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert reason in response.json()["error"]


@pytest.mark.parametrize(
    "body, content_type, status, reason",
    [
        (b"", "text/plain", 400, "empty"),
        (b"\xff\xfe\x00", "text/plain", 400, "UTF-8"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"x" * (64 * 1024 + 1), "text/plain", 413, ""),
    ],
)
def test_bad_bodies_get_a_clear_4xx(server, channel, body, content_type, status, reason):
    response = requests.post(
        f"{server.url}/pub/{channel}",
        data=body,
        timeout=5,
        headers={"Authorization": f"Bearer {server.default_token}", "Content-Type": content_type},
    )
    assert response.status_code == status
    assert reason in response.json()["error"]


def test_websocket_from_a_foreign_origin_is_refused(server, channel):
    with pytest.raises(websocket.WebSocketBadStatusException) as excinfo:
        websocket.create_connection(
            f"{server.ws_url}/sub/{channel}/ws", origin="https://evil.example", timeout=5
        )
    assert excinfo.value.status_code == 403
    same_origin = WSClient(f"{server.ws_url}/sub/{channel}/ws", origin=server.url)
    server.publish(channel, "hello")
    assert same_origin.wait_count(1)
    same_origin.close()


@pytest.mark.parametrize("protocol", ["HTTP/1.0", "HTTP/1.1"])
def test_live_events_are_framed_for_the_client_protocol(server, channel, protocol):
    """Live events are written straight from the hub to idle streams: they
    must be framed as the rest of the response (chunked only on HTTP/1.1)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        f"GET /sub/{channel} {protocol}\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    received = b""
    while b"retry:" not in received:
        received += sock.recv(65536)
    wait_subscribed(server, 1)
    texts = ["one", "two\nlines", "ünï"]
    for text in texts:
        server.publish(channel, text)
    while received.count(b"\n\n") < 2 + len(texts) or (
        protocol == "HTTP/1.1" and not received.endswith(b"\r\n")
    ):
        received += sock.recv(65536)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    if protocol == "HTTP/1.1":
        assert b"transfer-encoding: chunked" in head.lower()
        unchunked = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            unchunked += rest[: int(size, 16)]
            assert rest[int(size, 16) : int(size, 16) + 2] == b"\r\n"
            body = rest[int(size, 16) + 2 :]
        body = unchunked
    else:
        assert b"transfer-encoding" not in head.lower()
    fields = {line.partition(":")[0] for line in body.decode().split("\n") if line}
    assert fields <= {"", "retry", "event", "id", "data"}, fields  # nothing but SSE lines
    events = list(parse_sse([body]))
    assert events[0].event == "subscribed"
    assert [e.data for e in events[1:]] == texts


def _read_answer(sock, buf=b""):
    """One HTTP/1.1 answer off a raw socket: (status line, headers, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {buf!r}"
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name.lower() not in headers, f"header {name} sent twice: {head!r}"
        headers[name.lower()] = value
    length = int(headers["content-length"])
    while len(buf) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the end of the body"
        buf += chunk
    return status, headers, buf[:length], buf[length:]


def test_held_long_polls_get_whole_http_answers_and_keep_their_connection(server, channel):
    """A poll answered at once, and one held until a broadcast (which the hub's
    listener may write itself), are both complete HTTP/1.1 answers with the
    app's headers, and the connection serves the next poll."""
    first_id, _ = server.publish(channel, "first")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:

        def poll(cursor):
            sock.sendall(
                f"GET /sub/{channel}?cursor={cursor} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )

        poll("0")
        status, headers, body, rest = _read_answer(sock)
        assert status == "HTTP/1.1 200 OK" and rest == b""
        assert json.loads(body) == {
            "events": [{"id": first_id, "data": "first"}],
            "cursor": first_id,
        }
        for name in ("date", "server", "x-content-type-options", "x-served-by"):
            assert name in headers, headers
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert headers["connection"] == "keep-alive"
        for round_ in range(3):  # held, then answered by the broadcast, on one connection
            poll(json.loads(body)["cursor"])
            time.sleep(0.3)  # the poll is parked
            sent_id, _ = server.publish(channel, f"live {round_} ✓")
            status, headers, body, rest = _read_answer(sock)
            assert status == "HTTP/1.1 200 OK" and rest == b"", (status, rest)
            assert json.loads(body) == {
                "events": [{"id": sent_id, "data": f"live {round_} ✓"}],
                "cursor": sent_id,
            }
            assert headers["connection"] == "keep-alive" and "x-served-by" in headers


def test_a_long_poll_asking_to_close_gets_its_answer_and_the_close(server, channel):
    sent_id, _ = server.publish(channel, "bye")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"GET /sub/{channel}?cursor=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        status, headers, body, _ = _read_answer(sock)
        assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
        assert json.loads(body)["cursor"] == sent_id
        assert sock.recv(10) == b""  # and the server closed it


def test_a_burst_of_first_polls_is_answered_in_full_from_shared_reads(server, channel, rdb):
    """200 clients ask for everything retained while Redis is slow to answer
    (paused for 2 s): every one gets the whole backlog, and each worker sends
    Redis at most two reads for them (2 workers; one in flight, one gathering everyone
    who asked meanwhile), not one per client."""
    sent = [server.publish(channel, f"m{i}")[0] for i in range(3)]
    before = rdb.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=20) for _ in range(200)]
    try:
        request = f"GET /sub/{channel}?cursor=0 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        rdb.execute_command("CLIENT", "PAUSE", 2000, "ALL")
        for sock in socks:
            sock.sendall(request)
        for sock in socks:
            status, _, body, _ = _read_answer(sock)
            assert status == "HTTP/1.1 200 OK"
            assert [e["id"] for e in json.loads(body)["events"]] == sent
    finally:
        for sock in socks:
            sock.close()
    reads = rdb.info("commandstats")["cmdstat_xrange"]["calls"] - before
    assert reads <= 2 * 2, f"{reads} XRANGE calls for 200 identical first polls"
