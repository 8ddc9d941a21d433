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

import logging

import gevent

from core.connection import http_chunk
from core.offload import spawn

log = logging.getLogger(__name__)


class Idle:
    """Yielded by a connection's loop where it would wait on `subscription`
    with nothing to do: it wants to run again within `seconds` (for a
    keepalive) or when the subscription has work."""

    __slots__ = ("seconds", "subscription")

    def __init__(self, subscription, seconds):
        self.subscription, self.seconds = subscription, seconds


def serve(loop, environ, start_response):
    """The response body gunicorn iterates: `loop`'s bytes as they come,
    until its first `Idle`, where the connection is taken over when it can
    be: gunicorn ends the request as if the body had ended, but writes no
    last chunk and reads no next request."""
    server_response = getattr(start_response, "__self__", None)
    takeover = (getattr(server_response, "sock", None) is environ.get("gunicorn.socket")
                and hasattr(server_response, "chunked") and hasattr(server_response, "force_close"))
    for out in loop:
        if isinstance(out, Idle):
            if takeover:
                # each later piece as gunicorn would have written it
                frame = http_chunk if server_response.chunked else _as_is
                server_response.chunked = False
                server_response.force_close()
                _Parked(loop, server_response.sock, frame).let_go(out)
                return
            continue
        yield out


def run(loop, environ):
    """Run `loop`, the whole life of a connection gunicorn no longer speaks
    HTTP on (a WebSocket: it writes its own bytes), until it ends or, at an
    `Idle`, parks; the caller then hands the socket back to gunicorn, which
    closes its own reference to it."""
    sock = environ.get("gunicorn.socket")
    for out in loop:
        if isinstance(out, Idle) and sock is not None:
            _Parked(loop, sock, _as_is).let_go(out)
            return


class _Parked:
    """A connection taken over from gunicorn: its suspended loop, its socket,
    and a timer for the loop's next keepalive."""

    __slots__ = ("_file", "_frame", "_loop", "_sock", "_timer")

    def __init__(self, loop, sock, frame):
        # gunicorn closes the socket once the request is over; a file object
        # on it keeps the connection open until that file is closed (as for
        # socket.makefile): the connection is ours from here on.
        self._file = sock.makefile("wb", buffering=0)
        self._sock, self._loop, self._frame = sock, loop, frame
        self._timer = None

    def let_go(self, idle):
        """Park at `idle`; when there is work already, run the loop now."""
        if not self._park(idle):
            spawn(self._run)

    def _park(self, idle):
        """True when parked: the loop's greenlet may end."""
        if not idle.subscription.park(self._resume):
            return False
        self._timer = gevent.get_hub().loop.timer(idle.seconds)
        self._timer.start(idle.subscription.wake)  # the loop's wait returns: its keepalive
        return True

    def _resume(self):
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        spawn(self._run)

    def _run(self):
        try:
            for out in self._loop:
                if isinstance(out, Idle):
                    if self._park(out):
                        return  # the next _resume goes on from here
                    continue
                self._sock.sendall(self._frame(out))
        except OSError:  # the client is gone
            pass
        except Exception:
            log.exception("a parked connection failed")
        self._loop.close()  # its `with` blocks end: unsubscribed, uncounted
        self._file.close()  # the socket's last reference: closed


def _as_is(data):
    return data
