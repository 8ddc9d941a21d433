"""realtime_client, the Python client, against a real server on each
transport: catch-up, live delivery, resume across a reload without loss,
resets, and refusals that end the iteration instead of retrying; and, against
a server that misbehaves, clear errors or a reconnect, never a hang."""

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from realtime_client import (
    ClientError,
    Message,
    ProtocolError,
    Reset,
    login,
    publish,
    subscribe,
)
from tests.clients import wait_until, worker_pids
from tests.servers import ROOT

TRANSPORTS = ("sse", "websocket", "longpoll")


class Reader(threading.Thread):
    """Iterates a subscription in the background until `count` messages."""

    def __init__(self, events, count):
        super().__init__(daemon=True)
        self.iterator, self.count, self.got, self.error = events, count, [], None

    def run(self):
        try:
            for event in self.iterator:
                self.got.append(event)
                if sum(isinstance(e, Message) for e in self.got) >= self.count:
                    return
        except Exception as exc:
            self.error = exc

    def texts(self):
        return [e.data for e in self.got if isinstance(e, Message)]


@pytest.mark.integration
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_catch_up_then_live_in_order(server, admin_token, channel, transport):
    first = [publish(server.url, channel, f"old {i}", token=admin_token) for i in range(3)]
    reader = Reader(subscribe(server.url, channel, transport=transport, since="0"), 6)
    reader.start()
    assert wait_until(lambda: len(reader.texts()) >= 3, timeout=15)
    publish(server.url, channel, "new 0", token=admin_token)
    publish(server.url, channel, {"n": 1}, token=admin_token, is_json=True)
    publish(server.url, channel, '["two"]', token=admin_token, is_json=True)
    reader.join(15)
    assert reader.error is None
    assert reader.texts() == ["old 0", "old 1", "old 2", "new 0", '{"n":1}', '["two"]']
    assert [e.id for e in reader.got[:3]] == first


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resumes_across_a_reload_with_nothing_lost_or_repeated(
    start_server, admin_token, channel, transport
):
    server = start_server(LONGPOLL_TIMEOUT_SECONDS=5)
    reader = Reader(subscribe(server.url, channel, transport=transport, since="0"), 60)
    reader.start()
    publish(server.url, channel, "m00", token=admin_token)
    assert wait_until(lambda: reader.texts() == ["m00"], timeout=15)
    old = worker_pids(server)
    for i in range(1, 60):
        if i == 20:
            os.kill(server.process.pid, signal.SIGHUP)  # every stream on the old workers ends
        for _attempt in range(50):
            try:
                publish(server.url, channel, f"m{i:02d}", token=admin_token)
                break
            except (ClientError, OSError):
                time.sleep(0.1)
        time.sleep(0.02)
    reader.join(60)
    assert reader.error is None
    assert reader.texts() == [f"m{i:02d}" for i in range(60)]
    assert not any(isinstance(e, Reset) for e in reader.got)
    assert wait_until(lambda: not (worker_pids(server) & old), timeout=30), (
        "the reload replaced every worker"
    )


@pytest.mark.integration
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cursor_no_longer_retained_gives_a_reset_then_what_follows(
    server, admin_token, channel, transport
):
    publish(server.url, channel, "kept", token=admin_token)
    events = subscribe(server.url, channel, transport=transport, since="1-0")
    reset = next(events)
    assert isinstance(reset, Reset)
    publish(server.url, channel, "after", token=admin_token)
    assert next(events).data == "after"


@pytest.mark.integration
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_subscription_raises_instead_of_retrying(server, transport):
    with pytest.raises(ClientError) as refused:
        next(subscribe(server.url, "private-someone", transport=transport))
    assert refused.value.status in (401, 403, 1008)


@pytest.mark.integration
def test_login_and_publish_errors_carry_the_servers_reason(server, admin_token, channel):
    with pytest.raises(ClientError) as wrong:
        login(server.url, "test-admin", "not the password")
    assert wrong.value.status == 401
    with pytest.raises(ClientError) as bad_json:
        publish(server.url, channel, "{oops", token=admin_token, is_json=True)
    assert bad_json.value.status == 400 and "not valid JSON" in bad_json.value.reason
    token = login(server.url, "test-admin", "test-admin-password")
    assert publish(server.url, channel, "with a fresh token", token=token)


@pytest.mark.integration
def test_the_stdin_broadcaster_publishes_over_http_with_a_token(server, admin_token, channel):
    def broadcast(*args, token):
        env = (
            {**os.environ, "REALTIME_TOKEN": token}
            if token
            else {k: v for k, v in os.environ.items() if k != "REALTIME_TOKEN"}
        )
        return subprocess.run(
            [sys.executable, "-m", "workers.broadcast", "--channel", channel, *args],
            input="first line\n\nsecond line\n",
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env=env,
        )

    sent = broadcast("--url", server.url, token=admin_token)
    assert sent.returncode == 0, sent.stderr
    events = subscribe(server.url, channel, transport="longpoll", since="0")
    assert [next(events).data, next(events).data] == ["first line", "second line"]

    no_token = broadcast("--url", server.url, token=None)
    assert no_token.returncode == 2 and "--url needs a token" in no_token.stderr
    refused = broadcast("--url", server.url, token="not-a-token")
    assert refused.returncode == 1 and "the server refused: 401" in refused.stderr


# -- a server that misbehaves: the client raises or reconnects, it never hangs -------------


class Misbehaving:
    """A TCP server on a real socket that answers its Nth connection with
    `answers[N]` (bytes, or a function of the request's bytes), then closes."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        for answer in self.answers:
            conn, _ = self.sock.accept()
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            self.requests.append(request)
            conn.sendall(answer(request) if callable(answer) else answer)
            time.sleep(0.2)
            conn.close()
        self.sock.close()


def upgraded(*frames):
    """A WebSocket handshake's answer followed by `frames` (raw bytes)."""

    def answer(request):
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.IGNORECASE).group(1)
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
            + b"".join(frames)
        )

    return answer


def text_frame(text):
    data = text.encode()
    return bytes([0x81, len(data)]) + data  # unmasked, final, under 126 bytes


def http_200(kind, body):
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n\r\n").encode() + body


@pytest.mark.unit
@pytest.mark.parametrize(
    ("transport", "answer", "says"),
    [
        (
            "sse",
            http_200("text/event-stream", b"retry: 100\n\nevent: reset\ndata: {oops\n\n"),
            "a reset event is not JSON",
        ),
        ("sse", http_200("text/event-stream", b"data: no id\n\n"), "an SSE message without an id"),
        (
            "sse",
            http_200("text/html", b"<html>a proxy's page</html>"),
            "asked for an event stream, got text/html",
        ),
        ("longpoll", http_200("application/json", b"<html>"), "a long-poll answer is not JSON"),
        ("longpoll", http_200("application/json", b'{"events": 1}'), "lacks events, cursor"),
        ("websocket", upgraded(text_frame("not json")), "a WebSocket frame is not JSON"),
        ("websocket", upgraded(b"\x8f\x00"), "an invalid WebSocket frame"),  # opcode 0xF
    ],
)
def test_a_server_answer_the_client_cannot_read_raises_a_clear_error(transport, answer, says):
    server = Misbehaving([answer])
    reader = Reader(subscribe(server.url, "news", transport=transport), 1)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the client hung"
    assert isinstance(reader.error, ProtocolError), reader.error
    assert says in str(reader.error)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("transport", "truncated", "whole"),
    [
        (
            "sse",
            http_200("text/event-stream", b"id: 4-0\ndata: half an ev"),
            http_200("text/event-stream", b"id: 5-0\ndata: whole\n\n"),
        ),
        (
            "websocket",
            upgraded(bytes([0x81, 100]) + b"ten bytes."),
            upgraded(
                text_frame('{"subscribed": "news", "cursor": "4-0"}'),
                text_frame('{"id": "5-0", "data": "whole"}'),
            ),
        ),
    ],
)
def test_a_cut_event_or_frame_is_dropped_and_the_client_reconnects(transport, truncated, whole):
    server = Misbehaving([truncated, whole])
    reader = Reader(subscribe(server.url, "news", transport=transport), 1)
    reader.start()
    reader.join(10)
    assert reader.error is None and not reader.is_alive()
    assert reader.got == [Message("5-0", "whole")]  # nothing half-read
    assert len(server.requests) == 2
