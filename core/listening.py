"""Whether the addresses a server is to listen on are free: one check for
gunicorn.conf.py (`on_starting`) and for `make run`'s supervisor
(workers/supervise.py), which checks before it starts anything.

Each gunicorn worker binds its own SO_REUSEPORT socket, which the kernel lets
a second server of the same user share without an error, splitting the
connections between two unrelated servers; and a port held by another program
showed only as every worker failing to bind, in a loop. So the address is
tried first, without SO_REUSEPORT. Light: no Redis, no Flask, no gunicorn.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable


class AddressTaken(RuntimeError):
    """An address to listen on is taken; the message is the one line to show."""


def refuse_taken(addresses: Iterable[str | tuple[str, int]]) -> None:
    """Raise AddressTaken for the first (host, port) that cannot be bound now
    (unix socket paths, given as strings, are skipped)."""
    for address in addresses:
        if isinstance(address, str):
            continue  # a unix socket path
        host, port = address
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(sockaddr)
                except OSError as exc:
                    raise AddressTaken(
                        f"cannot listen on {host}:{port}: {exc.strerror} (another server "
                        f"there? stop it, or choose another PORT)"
                    ) from None
