"""WebSocket plumbing: flask-sock's `sock`, the Origin check before the
handshake, and whole-frame writes.

Handlers are flask-sock loops (`while True: msg = ws.receive(); ...`)
registered with `sock.route(path, bp=bp)`.
"""

import threading

from flask import request
from flask_sock import Sock

from core.connection import client_socket
from core.errors import abort_json
from core.security import origin_allowed

sock = Sock()

# Close codes (RFC 6455 §7.4.1)
GOING_AWAY = 1001
POLICY_VIOLATION = 1008  # invalid input: the reason says what
TRY_AGAIN_LATER = 1013  # dropped as a slow consumer: reconnect and resume


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

    def __getattr__(self, name):
        return getattr(self._raw, name)


def init_app(app):
    app.config.setdefault("SOCK_SERVER_OPTIONS", {
        "ping_interval": app.config["WS_PING_SECONDS"],
        "max_message_size": 64 * 1024,
    })
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
