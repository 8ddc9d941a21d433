"""WebSocket plumbing: flask-sock's `sock`, the Origin check before the
handshake, and whole-frame writes.

Handlers are flask-sock loops (`while True: msg = ws.receive(); ...`)
registered with `route(path, bp)`: flask-sock's `sock.route`, plus the
connection counted in core.lifecycle and closed with 1012 when the worker stops.
"""

import functools
import json
import math
import os
import socket
import threading

from flask import current_app, request
from flask_sock import Sock
from werkzeug.exceptions import HTTPException

from core.connection import client_socket
from core.errors import abort_json
from core.security import origin_allowed
from core.subscription import SubscriptionClosed
from core.transports import longpoll

sock = Sock()

# Close codes (RFC 6455 §7.4.1)
GOING_AWAY = 1001
POLICY_VIOLATION = 1008  # invalid input: the reason says what
TRY_AGAIN_LATER = 1013  # dropped as a slow consumer: reconnect and resume


class BadFrame(ValueError):
    """A frame the server refuses; the message becomes the close reason."""


def json_object(raw):
    """A client frame as a dict, or BadFrame."""
    try:
        message = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        message = None
    if not isinstance(message, dict):
        raise BadFrame("frames are JSON objects")
    return message


def fraction(message, name):
    """message[name] as a finite number within 0..1 (a share of the canvas or window)."""
    value = message.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise BadFrame(f"{name} must be a number")
    if not 0 <= value <= 1:
        raise BadFrame(f"{name} must be between 0 and 1 (a fraction of the canvas)")
    return value


def refusal(exc):
    """The reason of an abort_json() (an HTTPException) as a close reason. After
    the handshake it must not escape the handler (Flask would write an HTTP
    response into the WebSocket stream): route() closes with it."""
    response = getattr(exc, "response", None)
    body = response.get_json(silent=True) if response is not None else None
    reason = body.get("error") if isinstance(body, dict) else None
    return close_reason(str(reason or getattr(exc, "description", None) or "refused"))


def with_served_by(hello):
    """Add the worker to a first frame when SERVED_BY_HEADER is on: a WebSocket
    handshake cannot carry our X-Served-By header."""
    if current_app.config["SERVED_BY_HEADER"]:
        hello["served_by"] = f"{socket.gethostname()}/{os.getpid()}"
    return hello


def close_reason(text):
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


class _WholeFrameSocket:
    """simple-websocket 1.1 writes frames with `sock.send()`, which may write
    only part of a large frame under backpressure, and its reader greenlet
    writes pongs concurrently with our sends
    (miguelgrinberg/simple-websocket#45). Every write here is a locked
    `sendall`, so frames are never cut or interleaved."""

    def __init__(self, raw):
        self._raw = raw
        self._write_lock = threading.Lock()

    def send(self, data):
        with self._write_lock:
            self._raw.sendall(data)
        return len(data)

    sendall = send

    def busy(self):
        """A frame is being written (core.connection.DirectWriter waits its turn)."""
        return self._write_lock.locked()

    def __getattr__(self, name):
        return getattr(self._raw, name)


def route(path, bp):
    """flask-sock's route, with the connection registered in core.lifecycle."""
    from core import lifecycle

    def decorator(handler):
        @functools.wraps(handler)
        def counted(ws, *args, **kwargs):
            def close(reason):
                ws.close(lifecycle.SERVICE_RESTART, close_reason(reason))

            with lifecycle.connection("websocket", close):
                try:
                    return handler(ws, *args, **kwargs)
                except HTTPException as exc:  # e.g. current_user() on a bad ?access_token=
                    if ws.connected:
                        ws.close(POLICY_VIOLATION, refusal(exc))

        return sock.route(path, bp=bp)(counted)

    return decorator


def direct_writer(ws, environ):
    """A core.connection.DirectWriter that sends a hub message's `json` as one
    text frame, or None when the connection negotiated an extension
    (permessage-deflate compresses every frame per connection)."""
    from core.connection import direct_writer as writer_for

    protocol = getattr(getattr(ws.ws, "connection", None), "_proto", None)  # wsproto's
    if getattr(protocol, "extensions", None) != []:
        return None
    return writer_for(environ, lambda msg: msg.encoded(_frame), is_open=lambda: ws.connected)


def encode(item):
    """A hub message as the text of a frame, `{"id", "data"}` (the same
    object as in a long-poll answer); a Reset as `{"reset": true, "cursor"}`."""
    if item.is_reset:
        return json.dumps({"reset": True, "cursor": item.id})
    return item.encoded(_text)


def _text(msg):
    return longpoll.encode(msg).decode()


def _frame(msg):
    return _text_frame(longpoll.encode(msg))


def _text_frame(payload):
    """A final, unmasked text frame (RFC 6455 §5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes([0x81, size])
    elif size < 1 << 16:
        header = bytes([0x81, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + size.to_bytes(8, "big")
    return header + payload


def locked_send(ws):
    """A send function safe to call from two threads of one connection: with
    permessage-deflate a frame must leave in the order it was compressed, so
    building and writing it happen under one lock."""
    lock = threading.Lock()

    def send(data):
        with lock:
            ws.send(data)

    return send


def forward_from_hub(ws, sub, translate, heartbeat, send):
    """Start a thread that relays hub messages to the client: `translate(msg)`
    returns the text to send, or None to skip. It ends when the socket closes
    or the subscription is closed (call `sub.close(...)` when the client leaves)."""
    from simple_websocket import ConnectionClosed

    def relay():
        try:
            while ws.connected:
                for msg in sub.wait(heartbeat):
                    out = translate(msg)
                    if out is not None:
                        send(out)
        except (SubscriptionClosed, ConnectionClosed, OSError):
            pass

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    return thread


class _ReaderGreenlet:
    """What simple-websocket asks of the Thread that reads each connection
    (`name`, `start()`), as a bare greenlet under gevent: a patched
    threading.Thread carries a few KB of bookkeeping per connection."""

    name = "simple_websocket.Base._thread"

    def __init__(self, target):
        self._target = target

    def start(self):
        import gevent

        gevent.spawn(self._target)


class _OneSocketSelector:
    """The selector simple-websocket's reader uses to time its pings, for its
    one socket: waits on the hub directly instead of building a selector
    (a registry and its maps) per connection."""

    def register(self, sock, events, data=None):
        self._fileno = sock.fileno()
        if self._fileno < 0:  # closed before the reader started: as selectors do
            raise ValueError(f"invalid file descriptor: {self._fileno}")

    def select(self, timeout=None):
        from gevent.socket import wait_read

        try:
            wait_read(self._fileno, timeout)
        except TimeoutError:
            return []
        except ValueError:  # the socket is gone: readable, its recv() ends the reader
            pass
        return [(None, 1)]

    def close(self):
        pass


def init_app(app):
    from gevent import monkey

    options = {
        "ping_interval": app.config["WS_PING_SECONDS"],
        "max_message_size": 64 * 1024,
        # offered by /ws/echo; a route that gets no offer sees ws.subprotocol None
        "subprotocols": ["json"],
    }
    if monkey.is_module_patched("threading"):
        options.update(thread_class=_ReaderGreenlet, selector_class=_OneSocketSelector)
    app.config.setdefault("SOCK_SERVER_OPTIONS", options)
    sock.init_app(app)

    @app.before_request
    def guard_websocket_upgrade():
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return
        if not origin_allowed(request.headers.get("Origin")):
            abort_json(403, "WebSocket connections from this Origin are not allowed")
        raw = client_socket(request.environ)
        if raw is not None and "gunicorn.socket" in request.environ:
            request.environ["gunicorn.socket"] = _WholeFrameSocket(raw)
        return
