"""The worker's life: its open connections, and closing them promptly when it stops.

Every long-lived connection registers here while it lasts (SSE through
core.transports.sse.response, WebSockets through core.transports.websocket.route,
long-polls in core.transports.longpoll). When gunicorn tells the worker to stop (a reload,
a shutdown, the memory limit), `begin_shutdown` ends them all at once: hub
subscribers get a SubscriptionClosed with the reason, WebSockets a close 1012
(service restart). Clients reconnect to the new workers and resume from their
last id, so the worker drains in seconds instead of the 30 s graceful timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self
    from wsgiref.types import WSGIEnvironment

    from core.hub import Hub

SERVICE_RESTART = 1012  # RFC 6455 close codes
POLICY_VIOLATION = 1008
# Set in a request's environ by core.security.current_user() (set_owner): the
# account a stream was opened with, whose credential changes end it
# (end_for_user); and the request's open connection, if it has one already.
OWNER = "realtime.user"
_CONNECTION = "realtime.connection"

# A connection's `close(reason, code=None)`.
Close = Callable[..., object]

_lock = threading.Lock()
_open: dict[connection, tuple[str, Close | None]] = {}  # connection -> (kind, close or None)
_by_address: dict[str | None, int] = {}  # client address -> its open connections (core.quotas)
_stopping = threading.Event()
requests_served = [0]  # a list: incremented in place by an after_request hook


def stopping() -> bool:
    return _stopping.is_set()


class connection:  # lower case: used like a function, in a `with`
    """Count a connection of `kind` for the request `environ` (its client
    address: core.quotas; its account: end_for_user) while it is open;
    `close(reason, code=None)` ends it (a WebSocket closes with `code`). A
    class, not a generator: one is held per open connection, so it keeps
    the two values it needs, not the request's whole environ."""

    __slots__ = ("address", "close", "kind", "owner")

    def __init__(
        self, kind: str, close: Close | None = None, environ: WSGIEnvironment | None = None
    ) -> None:
        environ = environ if environ is not None else {}
        self.kind, self.close = kind, close
        self.address, self.owner = environ.get("REMOTE_ADDR"), environ.get(OWNER)
        if self.owner is None:  # a WebSocket's handler authenticates later: set_owner
            environ[_CONNECTION] = self

    def __enter__(self) -> Self:
        with _lock:
            _open[self] = (self.kind, self.close)
            _by_address[self.address] = _by_address.get(self.address, 0) + 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        with _lock:
            if _open.pop(self, None) is not None:
                left = _by_address[self.address] - 1
                if left:
                    _by_address[self.address] = left
                else:
                    del _by_address[self.address]


def set_owner(environ: WSGIEnvironment, name: str) -> None:
    """The request `environ` was made with `name`'s credentials: so was its
    connection, open already or opened later."""
    environ[OWNER] = name
    open_connection = environ.get(_CONNECTION)
    if open_connection is not None:
        open_connection.owner = name


def held_by(address: str | None) -> int:
    """How many connections `address` has open on this worker."""
    return _by_address.get(address, 0)


def held_by_all() -> int:
    """How many connections this worker has open."""
    return len(_open)


def end_for_user(name: str, reason: str) -> int:
    """End every open connection of this worker made with `name`'s
    credentials (their password, access or account changed); returns how many."""
    with _lock:
        closers = [c.close for c in _open if c.close is not None and c.owner == name]
    for close in closers:
        with suppress(Exception):  # already closed by its client: nothing to do
            close(reason, POLICY_VIOLATION)
    return len(closers)


def open_connections() -> dict[str, int]:
    counts = {"sse": 0, "longpoll": 0, "websocket": 0}
    with _lock:
        for kind, _ in _open.values():
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def begin_shutdown(reason: str, hub: Hub | None = None) -> None:
    """Tell every open connection to go elsewhere (idempotent)."""
    if _stopping.is_set():
        return
    _stopping.set()
    if hub is not None:
        hub.shutdown(reason)
    with _lock:
        closers = [close for _, close in _open.values() if close is not None]
    for close in closers:
        with suppress(Exception):  # already closed by its client: nothing to do
            close(reason)
