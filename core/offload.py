"""Where work runs: CPU-heavy calls off the gevent hub, background loops beside it.

Under gevent a CPU-bound call in a greenlet stalls every connection of the
worker; gevent's thread pool runs it on a real thread while the hub goes on
serving. Outside gevent (CLI, tests, gthread workers) it is a plain call.
`CPU_OFFLOAD=0` makes it a plain call under gevent too, on the hub: only to
measure what that costs everyone else (bench/threads_vs_events.py).
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (see warm_up_imports)
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from gevent import monkey

if TYPE_CHECKING:
    from gevent import Greenlet

T = TypeVar("T")


def run_blocking(function: Callable[..., T], *args: object) -> T:
    """`function(*args)`, on gevent's thread pool when gevent has patched the
    standard library and the app's CPU_OFFLOAD setting is on (the default)."""
    if monkey.is_module_patched("threading") and _offload_enabled():
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)


def _offload_enabled() -> bool:
    # Outside an app context (the CLI, post_worker_init's demo users): offload.
    from flask import current_app, has_app_context

    return not has_app_context() or current_app.config.get("CPU_OFFLOAD", True)


def spawn(function: Callable[[], object]) -> Greenlet | threading.Thread:
    """Run `function` in the background: a greenlet under gevent, else a thread.

    A bare greenlet (not a patched Thread) stays out of threading's shutdown
    bookkeeping, so a worker told to quit exits without a traceback."""
    if monkey.is_module_patched("threading"):
        import gevent

        return gevent.spawn(function)
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    return thread


def warm_up_imports() -> None:
    """Import up front what the first socket connection imports lazily.

    Python's import lock is per thread and greenlets share the thread: two
    greenlets that both trigger a lazy import (gevent's resolver and the idna
    codec, on their first getaddrinfo) can deadlock a worker. Called once from
    the app factory, in the worker's main greenlet, before it serves."""
    if monkey.is_module_patched("socket"):
        import gevent

        gevent.get_hub().resolver  # noqa: B018  (imports the configured resolver)
