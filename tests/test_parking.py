"""Idle connections without a greenlet (core/parking.py), against a real
gunicorn and Redis: a parked stream still keeps its heartbeat and gets its
messages, and a parked long-poll's connection goes back to gunicorn for the
next request. (That a parked connection holds no slot of gunicorn's pool:
tests/test_abandoned.py and tests/test_limits.py.)"""

import json
import select
import time

import pytest
import requests

from tests.clients import (
    client_frame,
    long_poll_request,
    raw_request,
    read_until,
    sse_request,
    wait_until,
    ws_frames,
    ws_request,
)

pytestmark = pytest.mark.integration


def _healthz(server):
    return requests.get(f"{server.url}/healthz", timeout=10).json()


def test_idle_streams_keep_their_heartbeat_and_get_every_message(
    start_server, channel, admin_token
):
    server = start_server(workers=1, HEARTBEAT_SECONDS=1, WS_PING_SECONDS=1)
    sse = raw_request(server, sse_request(channel))
    ws = raw_request(server, ws_request(f"/sub/{channel}/ws"))
    try:
        read_until(sse, b"retry:")
        read_until(ws, b'"subscribed"')
        # Both idle, so both parked: the stream's keepalive comes every
        # second, and the socket is pinged every second (we answer).
        started, keepalives, pings = time.monotonic(), 0, 0
        while keepalives < 3 or pings < 3:
            assert time.monotonic() - started < 20, (keepalives, pings)
            for sock in select.select([sse, ws], [], [], 1)[0]:
                data = sock.recv(4096)
                assert data, "the server closed an idle connection"
                if sock is sse:
                    keepalives += data.count(b": keepalive")
                    continue
                for opcode, payload in ws_frames(data):
                    if opcode == 0x9:
                        pings += 1
                        ws.sendall(client_frame(0xA, payload))
        assert time.monotonic() - started > 1.5  # about a second apart, not all at once
        for n in range(3):
            server.publish(channel, f"message {n}", token=admin_token)
        got_sse = read_until(sse, b"data: message 2")
        got_ws = read_until(ws, b'"data":"message 2"')
        for n in range(3):
            assert f"data: message {n}".encode() in got_sse
            assert f'"data":"message {n}"'.encode() in got_ws
        assert _healthz(server)["connections"]["sse"] == 1
    finally:
        sse.close()
        ws.close()


def test_a_keep_alive_connection_goes_on_after_a_parked_long_poll(
    start_server, channel, admin_token
):
    server = start_server(workers=1)
    sock = raw_request(server, long_poll_request(channel))
    try:
        assert wait_until(lambda: _healthz(server)["connections"]["longpoll"] == 1, timeout=10)
        server.publish(channel, "the answer", token=admin_token)
        answer = read_until(sock, b"the answer")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in head
        cursor = json.loads(body)["cursor"]
        # The same connection serves the next request at once (not when the
        # answered poll's 25 s would have run out)...
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b'"status"' in read_until(sock, b"}")
        # ...and another poll, parked again and answered.
        sock.sendall(
            f"GET /sub/{channel}?cursor={cursor} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        assert wait_until(lambda: _healthz(server)["connections"]["longpoll"] == 1, timeout=10)
        server.publish(channel, "the second", token=admin_token)
        read_until(sock, b"the second")
    finally:
        sock.close()


def test_a_request_pipelined_behind_a_long_poll_is_answered(start_server, channel, admin_token):
    # gunicorn has read both requests: the poll is held without being parked
    # (a new parser for the connection would not see the second one).
    server = start_server(workers=1)
    pipelined = long_poll_request(channel) + "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sock = raw_request(server, pipelined)
    try:
        assert wait_until(lambda: _healthz(server)["connections"]["longpoll"] == 1, timeout=10)
        server.publish(channel, "first answer", token=admin_token)
        received = read_until(sock, b"first answer")
        while b'"status"' not in received:
            received += sock.recv(4096)
        assert received.count(b"HTTP/1.1 200") == 2
    finally:
        sock.close()
