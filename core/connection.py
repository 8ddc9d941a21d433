"""The client's TCP connection: noticing that it closed, writing to it
directly, and cutting it ourselves when a client stops reading."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self
    from wsgiref.types import WSGIEnvironment

    from core.stream_log import Message


def client_socket(environ: WSGIEnvironment) -> socket.socket | None:
    """The raw socket under this request (gunicorn puts it in the environ)."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def aborter(environ: WSGIEnvironment) -> Callable[[], None]:
    """A function that tears the connection down.

    Used for a client dropped as a slow consumer whose handler is blocked
    writing to it: shutting the socket down makes that write fail with EPIPE,
    which gunicorn treats as an ordinary client disconnect.
    """
    sock = client_socket(environ)
    # The OS socket under gevent's: gevent's own shutdown() would also cancel
    # the blocked write with EBADF ("closed in another greenlet"), which
    # gunicorn logs as a traceback; the kernel's makes it fail with EPIPE.
    sock = getattr(sock, "_sock", sock)

    def abort() -> None:
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    return abort


class hangup_watch:  # lower case: used like a function, in a `with`
    """While in this block, call `on_hangup()` as soon as the client closes
    its connection.

    A long-poll or an event stream waits with nothing to read from its
    client; without this a closed connection is only noticed at the next
    write, and holds its greenlet, subscription and pool slot until then
    (up to the long-poll timeout or the heartbeat). A libev read watcher on
    the socket (no greenlet): when it fires, a peek tells end-of-file from
    bytes the client sent early (a pipelined request, left for gunicorn to
    read). Only under gevent; `on_hangup` runs on the event loop and must
    not block. A class, not a generator: one is held per idle connection.
    """

    __slots__ = ("_on_hangup", "_real", "_watcher")

    def __init__(self, environ: WSGIEnvironment, on_hangup: Callable[[], object]) -> None:
        sock = client_socket(environ)
        # the OS socket under gevent's (non-blocking); None outside gevent
        self._real: Any = getattr(getattr(sock, "_raw", sock), "_sock", None)
        self._on_hangup = on_hangup
        self._watcher: Any = None  # gevent's io watcher (gevent has no type information)
        if self._real is not None and _gevent_loop() is not None:
            self._watcher = _gevent_loop().io(self._real.fileno(), 1)

    def __enter__(self) -> Self:
        if self._watcher is not None:
            self._watcher.start(self._readable)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._watcher is not None:
            self._watcher.close()

    def _readable(self) -> None:
        try:
            peeked = self._real.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            peeked = b""
        self._watcher.stop()
        if not peeked:
            self._on_hangup()


def _gevent_loop() -> Any:
    """The event loop of this worker's gevent hub, or None when the standard
    library is not patched (sync and gthread workers, tests, the CLI)."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        return None
    import gevent

    return gevent.get_hub().loop


def write_deadline(environ: WSGIEnvironment, seconds: float | None) -> Any:
    """Cut the connection unless what is being written to it is out within
    `seconds`: returns a timer to `close()` once it is (gevent's, untyped), or None (off).

    For a one-shot answer (a long-poll's): a client that stops reading would
    otherwise hold the writing greenlet, and the answer, for as long as it
    keeps the connection. The shutdown makes the write fail with EPIPE, an
    ordinary client disconnect. Only under gevent (a libev timer, no greenlet
    per answer); the sync and gthread workers have no such bound.
    """
    loop = _gevent_loop()
    if seconds is None or loop is None:
        return None
    timer = loop.timer(seconds)
    timer.start(aborter(environ))
    return timer


def http_chunk(data: bytes) -> bytes:
    """`data` framed as gunicorn frames a piece of a streamed HTTP/1.1
    response (chunked transfer encoding)."""
    return b"%X\r\n%s\r\n" % (len(data), data)


class DirectWriter:
    """Writes a broadcast's pre-encoded bytes straight onto a client's socket.

    The hub's listener uses it for a subscriber whose own greenlet is parked
    idle (core.subscription.Subscription.write_directly): one non-blocking `send` per
    subscriber instead of waking a greenlet that would walk the response
    generators to write the same bytes. `frame(msg)` gives the exact bytes
    the normal path would have written (shared by every subscriber through
    Message.cached); `try_send` never blocks: it returns how much went out,
    or None while the connection is in the middle of a write of its own.
    Only under gevent, where the listener and the consumer never run at once.
    """

    one_shot = False  # a stream's writer goes on; a long-poll's answers once

    def __init__(
        self,
        sock: Any,
        frame: Callable[[Message], bytes],
        is_open: Callable[[], bool] | None = None,
    ) -> None:
        self._sock = sock  # gunicorn's socket (or core.transports.websocket's locked wrapper)
        self._real = getattr(sock, "_raw", sock)._sock  # gevent's non-blocking socket
        self._busy = getattr(sock, "busy", None)
        self._is_open = is_open
        self.frame = frame

    def try_send(self, data: bytes) -> int | None:
        if self._busy is not None and self._busy():
            return None
        if self._is_open is not None and not self._is_open():
            return None  # e.g. a WebSocket after its close handshake
        try:
            return self._real.send(data)
        except BlockingIOError:
            return 0

    def sendall(self, data: bytes) -> None:
        """The rest of a frame, written by the consumer (parks until it is out)."""
        self._sock.sendall(data)


# Off when gunicorn speaks another protocol than HTTP (`--protocol uwsgi`
# does not chunk responses): set by gunicorn.conf.py's post_worker_init.
direct_writes_allowed = True


def direct_writer(
    environ: WSGIEnvironment,
    frame: Callable[[Message], bytes],
    is_open: Callable[[], bool] | None = None,
) -> DirectWriter | None:
    """A DirectWriter for this request's socket, or None where it cannot work
    (not gevent, not gunicorn's gevent socket, not gunicorn's HTTP protocol)."""
    from gevent import monkey

    sock = environ.get("gunicorn.socket")
    raw = getattr(sock, "_raw", sock)
    if (
        not direct_writes_allowed
        or not monkey.is_module_patched("socket")
        or not hasattr(raw, "_sock")
        or hasattr(raw, "do_handshake")
    ):  # TLS: never raw
        return None
    return DirectWriter(sock, frame, is_open)
