"""Each subscriber's backlog is bounded in bytes (SUBSCRIBER_QUEUE_BYTES,
default 1 MiB), not only in messages (SUBSCRIBER_QUEUE_SIZE, default 1000):
a client that stops reading is dropped as a slow consumer once it falls that
many bytes behind, however few the messages, instead of holding megabytes of
them in the worker."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clients import (
    healthz_bodies,
    raw_request,
    read_until,
    read_until_closed,
    sse_request,
    ws_frames,
    ws_request,
)

pytestmark = pytest.mark.integration

QUEUE_BYTES = 256 * 1024
MESSAGES = 100  # far below the 1,000-message bound
PAYLOAD = 60_000  # bytes each: 6 MB in all, 23 times QUEUE_BYTES


def read_until_ended(sock, timeout):
    """What a raw socket receives until the server closes it or ends its
    chunked HTTP response (keep-alive), within `timeout` s: (bytes, ended)."""
    return read_until_closed(sock, timeout, ended=lambda data: data.endswith(b"\r\n0\r\n\r\n"))


def subscribers(server):
    return {pid: body["subscribers"] for pid, (_, body) in healthz_bodies(server).items()}


def wait_subscribers(server, expected, timeout):
    """Both workers' subscriber counts once they equal `expected`, else the last seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = subscribers(server)
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def test_a_stalled_subscriber_is_dropped_once_its_backlog_passes_the_byte_bound(
    start_server, channel
):
    server = start_server(SUBSCRIBER_QUEUE_BYTES=QUEUE_BYTES)
    baseline = subscribers(server)
    assert len(baseline) == 2, baseline
    # Tiny receive windows: once they stop reading, nothing more gets through.
    ws = raw_request(server, ws_request(f"/sub/{channel}/ws"), rcvbuf=4096)
    sse = raw_request(server, sse_request(channel), rcvbuf=4096)
    try:
        ws_start = read_until(ws, b'"subscribed"')
        assert ws_start.startswith(b"HTTP/1.1 101"), ws_start[:200]
        sse_start = read_until(sse, b"\r\n\r\n")
        assert sse_start.startswith(b"HTTP/1.1 200"), sse_start[:200]
        assert sum(subscribers(server).values()) == sum(baseline.values()) + 2
        # From here on, neither client reads.
        for i in range(MESSAGES):
            server.publish(channel, f"{i:03d}:" + "x" * (PAYLOAD - 4))

        # Both are dropped: the workers' subscriber counts are back where they were...
        after = wait_subscribers(server, baseline, timeout=5)
        # ...and the server has closed both streams: what each reads ends (EOF, the
        # WebSocket's close frame, or under HTTP/1.1 keep-alive the end of the
        # SSE response) well before the 100 messages.
        with ThreadPoolExecutor(2) as pool:
            ws_read = pool.submit(read_until_closed, ws, 5)
            sse_read = pool.submit(read_until_ended, sse, 5)
        ws_bytes, ws_closed = ws_read.result()
        sse_bytes, sse_closed = sse_read.result()
        ws_bytes = ws_start + ws_bytes
        frames = ws_frames(ws_bytes[ws_bytes.index(b"\r\n\r\n") + 4 :])
        ws_messages = sum(1 for opcode, payload in frames if opcode == 0x1 and b'"data"' in payload)
        sse_bytes = sse_start + sse_bytes
        sse_messages = sse_bytes.count(b"\nid: ")
        ws_closed = ws_closed or bool(frames and frames[-1][0] == 0x8)

        def report(name, messages, received, closed):
            return (
                f"the stalled {name} subscriber got {messages} of {MESSAGES} messages "
                f"({len(received) / 1e6:.1f} MB) and its stream is "
                f"{'closed' if closed else 'still open'}"
            )

        state = (
            f"{report('WebSocket', ws_messages, ws_bytes, ws_closed)}; "
            f"{report('SSE', sse_messages, sse_bytes, sse_closed)}; "
            f"hub subscribers per worker: {after} (before: {baseline})"
        )
        assert ws_closed and sse_closed, f"both should have been cut off: {state}"
        assert ws_messages < MESSAGES and sse_messages < MESSAGES, state
        assert after == baseline, state
        if frames and frames[-1][0] == 0x8:  # the close frame got through: why
            code = int.from_bytes(frames[-1][1][:2], "big")
            assert code == 1013, (
                f"close code {code} {frames[-1][1][2:]!r}, not 1013 (try again later)"
            )
    finally:
        ws.close()
        sse.close()
        server.stop()
