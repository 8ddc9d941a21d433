"""A lock file that says who holds it: one process per instance directory.

`make run`'s supervisor (workers/supervise.py) and the embedded Redis
(core/embedded_redis.py) each take one, so a second server on the same
instance directory stops with the first one's pid instead of sharing or
overwriting its files. The lock lasts as long as the returned file is open
(the process ends: it is released). Light: the gunicorn master imports it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class Held(Exception):
    """Another process holds the lock; `holder` is its pid as it wrote it."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def hold(path: Path) -> IO[str]:
    """Take the lock at `path` without waiting and write our pid into it;
    keep the returned file open for as long as the lock should last."""
    lock = open(path, "a+")  # noqa: SIM115 (held until the caller closes it or exits)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise Held(holder) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
