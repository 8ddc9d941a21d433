"""Server-Sent Events framing and the streaming response helper.

One event is encoded once (`event()` returns bytes) and the same bytes are
written to every subscriber. Data with embedded newlines or carriage returns
becomes several `data:` lines, which EventSource joins back with "\\n".
"""

import json
import re

from flask import Response

# Some old XHR-based EventSource polyfills only start delivering after 2 KB.
PADDING = b":" + b" " * 2048 + b"\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FIELD_SAFE = re.compile(r"[\r\n]")


def event(data, event=None, id=None, retry=None):
    """Frame one event. `data` is text; `event` and `id` must not contain line breaks."""
    parts = []
    if event is not None:
        parts.append(f"event: {_field(event)}\n")
    if id is not None:
        parts.append(f"id: {_field(id)}\n")
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    for line in _LINE_BREAK.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def comment(text=""):
    """A comment line: ignored by EventSource, keeps proxies and NAT tables awake."""
    return f": {_field(text)}\n\n".encode()


def retry(milliseconds):
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def _field(value):
    value = str(value)
    if _FIELD_SAFE.search(value):
        raise ValueError("SSE field values cannot contain line breaks")
    return value


def stream_response(chunks):
    """A streaming `text/event-stream` response that no proxy buffers or caches,
    counted as an open SSE connection while it streams."""
    return Response(
        _counted(chunks),
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each chunk through at once
        },
    )


def from_subscription(sub, heartbeat, encode):
    """The SSE body of a hub subscription: `encode(items)` for each batch, a
    keepalive comment when idle, and `event: close` with the reason when the hub
    drops the subscription (EventSource reconnects and resumes from its last id)."""
    from core.hub import SubscriptionClosed

    while True:
        try:
            items = sub.wait(heartbeat)
        except SubscriptionClosed as closed:
            yield event(json.dumps({"reason": closed.reason}), event="close")
            return
        yield encode(items) if items else comment("keepalive")


def direct_writer(environ):
    """A core.connection.DirectWriter for this event stream: a message's SSE
    event framed exactly as gunicorn frames a chunk of a streamed response
    (HTTP/1.1: chunked transfer encoding; HTTP/1.0: the bytes as they are).
    None for other protocols (HTTP/2 frames its own bodies)."""
    from core.connection import direct_writer as writer_for

    protocol = environ.get("SERVER_PROTOCOL")
    if protocol == "HTTP/1.1":
        return writer_for(environ, lambda msg: msg.cached("sse-chunk", lambda: _chunk(msg.sse)))
    if protocol == "HTTP/1.0":
        return writer_for(environ, lambda msg: msg.sse)
    return None


def _chunk(data):
    return b"%X\r\n%s\r\n" % (len(data), data)


def _counted(chunks):
    from core import lifecycle

    with lifecycle.connection("sse"):
        yield from chunks


def wants_event_stream(request):
    """True when the client named text/event-stream explicitly (EventSource
    does); `*/*` or no Accept header means a plain HTTP client."""
    accept = request.headers.get("Accept", "")
    if accept == "text/event-stream":  # EventSource's own header: skip the parser
        return True
    if "text/event-stream" not in accept:
        return False
    return any(
        value == "text/event-stream" and quality > 0
        for value, quality in request.accept_mimetypes
    )
