"""Streams end when the credentials they were opened with change.

A password change, an access change or a deletion (core/users.py) draws the
account a new credential epoch, so every later request with an old token or
session is refused (core/security.py). Streams already open (SSE, long-polls,
WebSockets) make no more requests: `UserStore` also publishes the account's
name on the hub channel ACCOUNTS_CHANNEL, and each worker's hub, told by
`watch(hub)`, ends that worker's streams opened with it (core.lifecycle knows
each stream's account from core.security.current_user). A WebSocket closes
with 1008, an event stream gets `event: close`, a held long-poll answers at
once; their clients' next request is refused like any other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core import lifecycle
from core.users import ACCOUNTS_CHANNEL

if TYPE_CHECKING:
    from core.hub import Hub

log = logging.getLogger(__name__)

REASON = "your password or access changed: log in again"


def watch(hub: Hub) -> None:
    """From now on, this worker ends the streams of accounts that change
    (gunicorn.conf.py, post_worker_init)."""
    hub.watch(ACCOUNTS_CHANNEL, _end)


def _end(name: str) -> None:
    # In the hub's listener: closing only flags each stream (no waiting).
    ended = lifecycle.end_for_user(name, REASON)
    if ended:
        log.info("ended %d stream(s) of %r: its credentials changed", ended, name)
