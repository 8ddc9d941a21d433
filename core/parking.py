"""Idle streams without a greenlet.

A greenlet parked in a wait costs about 6 KB (its saved C stack and a page
of Python frames), and the request it serves keeps gunicorn's parser, the
WSGI environ and the response objects alive: most of what an idle
subscriber costs. An idle event stream needs none of it. The hub's listener
writes live messages straight onto its socket (Subscription.write_directly),
and a libev watcher notices when its client hangs up (core.connection).

A stream's loop stays one straight-line generator. Where it would wait with
nothing to do, it yields an `Idle`. `serve()` hands the generator to gunicorn
and, at the first `Idle`, takes the connection over. gunicorn finishes the
request as if the stream had ended, but writes no last chunk and keeps the
socket, and its greenlet returns to the pool. The suspended generator, its
subscription and the socket are all that stay. When the subscription has
work its listener cannot do (a write the socket took only part of, a catch-up
after the listener lost Redis, a close, a heartbeat), a new greenlet resumes
the generator where it stopped, writes what it yields, and lets go again at
its next `Idle`.

Only under gunicorn's gevent worker, on HTTP/1.x over a plain socket (where
direct writes work); elsewhere `serve()` just skips the `Idle`s and the
stream's greenlet waits as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from typing import IO, TYPE_CHECKING, Any

import gevent

from core.connection import http_chunk

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from core.subscription import Subscription

log = logging.getLogger(__name__)


class Idle:
    """Yielded by a connection's loop where it would wait on `subscription`
    with nothing to do: it wants to run again within `seconds` (for a
    keepalive) or when the subscription has work. `hand_back`: when the loop
    ends, the connection goes on as HTTP (a long-poll: gunicorn serves its
    next request); otherwise it is closed. `taken_over` tells the loop,
    once it runs again, whether gunicorn is done with its request."""

    __slots__ = ("hand_back", "seconds", "subscription", "taken_over")

    def __init__(self, subscription: Subscription, seconds: float, hand_back: bool = False) -> None:
        self.subscription, self.seconds, self.hand_back = subscription, seconds, hand_back
        self.taken_over = False


# A connection's loop: the bytes to write, and an Idle where it would wait.
Loop = Generator[bytes | Idle, None, None]


def serve(loop: Loop, environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
    """The response body gunicorn iterates: `loop`'s bytes as they come. At an
    `Idle` with nothing to do, the connection is taken over: gunicorn ends
    the request as if the body had ended, but writes nothing more (no last
    chunk) and reads no next request on it."""
    server_response: Any = getattr(start_response, "__self__", None)  # gunicorn's
    takeover = getattr(server_response, "sock", None) is environ.get("gunicorn.socket") and hasattr(
        server_response, "default_headers"
    )
    # each later piece as gunicorn would have written it
    parked = (
        _Parked(loop, server_response.sock, http_chunk if server_response.chunked else None)
        if takeover
        else None
    )
    for out in loop:
        if isinstance(out, Idle):
            if parked is not None and parked.park(out):
                if not server_response.headers_sent:
                    server_response.headers_sent = True  # the loop writes its own answer
                server_response.chunked = False
                server_response.force_close()
                return
            continue
        if takeover and out and _may_write_head(server_response, environ):
            _write_with_head(server_response, out)
            continue
        yield out


def _may_write_head(server_response: Any, environ: WSGIEnvironment) -> bool:
    """A stream's head may go out with its first bytes, in one send instead
    of gunicorn's two, as the WebSocket's 101 goes out with its first frame:
    on loopback a send also runs the receiver's side of TCP, and a client
    reading the head alone wakes twice. Measured side by side with the Node
    peer (bench/fanout.py, 7 alternating pairs at 10,000 SSE streams): the
    worker's CPU per connect 0.89x, the load generator's 0.89x, and all
    connected 1.57x Node's time against 1.80x (medians). Only a GET's 200
    streamed without a length, which gunicorn writes as it comes (nothing
    dropped, cut or framed otherwise)."""
    return (
        not server_response.headers_sent
        and environ.get("REQUEST_METHOD") == "GET"
        and getattr(server_response, "status_code", None) == 200
        and server_response.response_length is None
    )


def _write_with_head(server_response: Any, data: bytes) -> None:
    """What gunicorn's Response.write does for the first piece of a body
    (http/wsgi.py: send_headers, then the piece, chunked or not), in one send."""
    lines = [*server_response.default_headers()]
    lines.extend(f"{name}: {value}\r\n" for name, value in server_response.headers)
    head = ("".join(lines) + "\r\n").encode("latin-1")
    server_response.sock.sendall(head + (http_chunk(data) if server_response.chunked else data))
    server_response.headers_sent = True
    server_response.sent += len(data)


def run(loop: Loop, environ: WSGIEnvironment) -> None:
    """Run `loop`, the whole life of a connection gunicorn no longer speaks
    HTTP on (a WebSocket: it writes its own bytes), until it ends or, at an
    `Idle`, parks; the caller then hands the socket back to gunicorn, which
    closes its own reference to it."""
    sock = environ.get("gunicorn.socket")
    parked = _Parked(loop, sock) if sock is not None else None
    for out in loop:
        if isinstance(out, Idle) and parked is not None and parked.park(out):
            return


# gunicorn's worker (post_worker_init sets it): it serves the next request of
# a long-poll connection whose answer went out from here.
_worker: Any = None  # (gunicorn has no type information)


def init_worker(worker: Any) -> None:
    global _worker
    _worker = worker if hasattr(worker, "handle") and getattr(worker, "sockets", None) else None


def can_hand_back(server_response: Any) -> bool:
    """A long-poll may be parked: its connection can go back to gunicorn
    afterwards, and gunicorn holds nothing more of it (no bytes the client
    sent after its request, which a new parser would not see)."""
    read_ahead = getattr(
        getattr(getattr(server_response, "req", None), "unreader", None), "buf", None
    )  # gunicorn's parser's buffer (a BytesIO)
    return _worker is not None and read_ahead is not None and not read_ahead.getvalue()


class _Parked:
    """A connection taken over from gunicorn: its suspended loop, its socket,
    and a timer for the loop's next keepalive."""

    __slots__ = ("_file", "_frame", "_idle", "_loop", "_sock", "_timer")
    _file: IO[bytes] | None
    _timer: Any  # gevent's timer
    _idle: Idle | None

    def __init__(
        self, loop: Loop, sock: Any, frame: Callable[[bytes], bytes] | None = None
    ) -> None:
        self._sock, self._loop = sock, loop
        self._frame = frame or _as_is
        self._file = self._timer = self._idle = None  # _idle: where it last parked

    def park(self, idle: Idle) -> bool:
        """True when parked: the loop's greenlet may end."""
        if not idle.subscription.park(self._resume):
            return False
        if self._file is None:
            # gunicorn closes the socket once the request is over; a file
            # object on it keeps the connection open until that file is
            # closed (as for socket.makefile): the connection is ours now.
            self._file = self._sock.makefile("wb", buffering=0)
        self._idle = idle
        idle.taken_over = True
        self._timer = gevent.get_hub().loop.timer(idle.seconds)
        self._timer.start(idle.subscription.wake)  # the loop's wait returns: its keepalive
        return True

    def _resume(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        gevent.spawn_raw(self._run)  # a bare greenlet: the cheapest gevent has

    def _run(self) -> None:
        try:
            for out in self._loop:
                if isinstance(out, Idle):
                    if self.park(out):
                        return  # the next _resume goes on from here
                    continue
                self._sock.sendall(self._frame(out))
            if self._idle is not None and self._idle.hand_back:
                self._next_request()
        except OSError:  # the client is gone
            pass
        except Exception:
            log.exception("a parked connection failed")
        self._loop.close()  # its `with` blocks end: unsubscribed, uncounted
        if self._file is not None:  # (set by park, which came first)
            self._file.close()  # our reference to gunicorn's socket: closed

    def _next_request(self) -> None:
        """gunicorn's worker serves the connection's next request, as if it had
        just accepted it (on a new socket object: gunicorn closed its own).
        A stopping worker (its listeners closed) closes it instead."""
        if not _worker.alive:
            return
        try:
            sock = self._sock.dup()
            address = sock.getpeername()
        except OSError:
            return
        listeners = _worker.sockets
        listener = (
            listeners[0]
            if len(listeners) == 1
            else next((s for s in listeners if _port(s) == _port(sock)), listeners[0])
        )
        # gunicorn has no public call to hand it a connection: `handle` is what
        # its gevent worker's accept loop calls for each one (Worker.alive and
        # .sockets are its documented state), on the gunicorn pinned by the locks.
        gevent.spawn_raw(_worker.handle, listener, sock, address)


def _port(sock: Any) -> object:
    name = sock.getsockname()
    return name[1] if isinstance(name, tuple) else name


def _as_is(data: bytes) -> bytes:
    return data
