"""The Server-Sent Events transport: framing, and the loop of an event stream.

One event is encoded once (`event()` returns bytes) and the same bytes are
written to every subscriber. Data with embedded newlines or carriage returns
becomes several `data:` lines, which EventSource joins back with "\\n".

`stream()` is the body of every hub-fed event stream (channels, Q&A, the
tracking dashboard): batches of messages as they come, a keepalive when idle,
the app's reset policy, `event: close` when the hub drops the subscriber, and
an immediate end when the client hangs up; an idle channel stream is parked
without a greenlet (core.parking). `response()` serves one of them.
"""

import json
import re
import threading
import time

from flask import Response, request

from core import lifecycle, parking, quotas
from core.connection import direct_writer as _direct_writer
from core.connection import hangup_watch, http_chunk
from core.subscription import CLIENT_GONE, SubscriptionClosed

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


def subscribed(hello):
    """The event that opens a channel stream, `hello` (a dict with the
    "cursor" it starts from), as the WebSocket's first frame does. Its `id`
    is that cursor, so even a stream that drops before its first message
    resumes from there (EventSource sends it as Last-Event-ID), never from a
    later "now" that would skip what came between."""
    return event(json.dumps(hello), event="subscribed", id=hello["cursor"])


def _field(value):
    value = str(value)
    if _FIELD_SAFE.search(value):
        raise ValueError("SSE field values cannot contain line breaks")
    return value


def encode(item):
    """A hub message as an event (its id is the resume cursor); a Reset as
    `event: reset` carrying the new cursor, which EventSource also records."""
    if item.is_reset:
        return event(json.dumps({"reset": True, "cursor": item.id}), event="reset", id=item.id)
    return item.encoded(_message_event)


def _message_event(msg):
    return event(msg.data, id=msg.id)


def _chunk(msg):
    """A message's event framed as one HTTP/1.1 chunk."""
    return http_chunk(encode(msg))


def response(body):
    """A streaming `text/event-stream` response that no proxy buffers or caches.
    `body` is one of this module's loops (`stream`, `every`), which count the
    connection as an open SSE connection while it streams; an idle hub-fed
    stream lets its greenlet go (core.parking). A client address holding its
    share of the worker's streams already gets a 429 instead (core.quotas)."""
    quotas.admit_connection(request.environ)
    return _EventStream(
        body,
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # nginx: pass each chunk through at once
        },
        direct_passthrough=True,
    )


class _EventStream(Response):
    held_open = True  # core/metrics.py: its time to open is not a latency

    def __call__(self, environ, start_response):
        body, status, headers = self.get_wsgi_response(environ)
        start_response(status, headers)
        return parking.serve(body, environ, start_response)


def stream(
    subscription, environ, *, first, heartbeat, encode=encode, on_reset=None, keepalive=None
):
    """The body of an event stream fed by a hub subscription.

    `subscription`: `hub.subscribe(...)`, entered here, so the stream is
    subscribed before its first bytes (and its client sees the headers).
    `first`: the bytes that open the stream (a `retry:` at least), or a
    function returning them, called once subscribed (an app reads its state
    then: nothing published meanwhile is missed). `encode(msg)`: a message's
    bytes, or None to skip it (default: the message as an event).
    `on_reset(reset)`: what to send when the client missed messages (the app
    re-reads its state); the default sends `event: reset`. `keepalive()`:
    what to send after `heartbeat` idle seconds (default: a comment). Ends
    with `event: close` and the reason when the hub drops the subscriber
    (EventSource reconnects and resumes from its last id), and at once when
    the client hangs up. With the default encoding and reset policy, the
    stream gives up its greenlet while idle (core.parking).
    """
    with (
        subscription as sub,
        lifecycle.connection("sse", sub.close, environ),
        hangup_watch(environ, sub.hang_up),
    ):
        yield first() if callable(first) else first
        idle = None
        if encode is _default_encode and on_reset is None:
            # The headers are out: while this stream idles, the hub's listener
            # may write live events onto the socket itself (one send each),
            # and the stream may give up its greenlet (core.parking).
            writer = _writer(environ)
            sub.write_directly(writer)
            idle = parking.Idle(sub, heartbeat) if writer is not None else None
        del environ  # an idle stream keeps this frame: not the whole request
        while True:
            if idle is not None:
                yield idle
            try:
                items = sub.wait(heartbeat)
            except SubscriptionClosed as closed:
                if closed.reason != CLIENT_GONE:
                    yield event(json.dumps({"reason": closed.reason}), event="close")
                return
            if not items:
                yield keepalive() if keepalive else comment("keepalive")
                continue
            out = [on_reset(item) if item.is_reset and on_reset else encode(item) for item in items]
            out = b"".join(chunk for chunk in out if chunk)
            if out:
                yield out


_default_encode = encode


def every(environ, *, first, frame, seconds, heartbeat=None):
    """The body of an event stream that is not fed by the hub (the clock, the
    process monitor): `first`, then `frame()` each time `seconds()` (the wait
    until the next one) has passed, a keepalive comment every `heartbeat`
    seconds, and `event: close` with the reason when the server ends it (the
    worker stops, the account it was opened with changed). Ends at once when
    the client hangs up (the wait is interrupted)."""
    gone = threading.Event()
    ended = []  # why the server ends it; empty when the client hung up

    def close(reason, code=None):
        ended.append(reason)
        gone.set()

    with lifecycle.connection("sse", close, environ), hangup_watch(environ, gone.set):
        yield first
        last_beat = time.monotonic()
        while not lifecycle.stopping() and not gone.wait(seconds()):
            yield frame()
            if heartbeat is not None and time.monotonic() - last_beat >= heartbeat:
                last_beat = time.monotonic()
                yield comment("heartbeat")
        if ended or lifecycle.stopping():
            reason = ended[0] if ended else "server restarting"
            yield event(json.dumps({"reason": reason}), event="close")


def _writer(environ):
    """A core.connection.DirectWriter for this event stream: a message's
    event framed exactly as gunicorn frames a chunk of a streamed response
    (HTTP/1.1: chunked transfer encoding; HTTP/1.0: the bytes as they are).
    None for other protocols (HTTP/2 frames its own bodies)."""
    protocol = environ.get("SERVER_PROTOCOL")
    if protocol == "HTTP/1.1":
        return _direct_writer(environ, lambda msg: msg.encoded(_chunk))
    if protocol == "HTTP/1.0":
        return _direct_writer(environ, encode)
    return None


def wants_event_stream(request):
    """True when the client named text/event-stream explicitly (EventSource
    does); `*/*` or no Accept header means a plain HTTP client."""
    accept = request.headers.get("Accept", "")
    if accept == "text/event-stream":  # EventSource's own header: skip the parser
        return True
    if "text/event-stream" not in accept:
        return False
    return any(
        value == "text/event-stream" and quality > 0 for value, quality in request.accept_mimetypes
    )
