"""A child process that ends when its parent does (Linux's PR_SET_PDEATHSIG).

For processes whose parent may be SIGKILLed and so cannot stop them: the
embedded redis-server, supervisord under `make run`, a job's work-horse.
Light on purpose (the gunicorn master imports it before forking).
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """From now on this process gets `sig` when its parent dies. With `parent`
    (the pid the caller expects as its parent), exit at once if that one died
    already, before the call. Called in the child: `preexec_fn=die_with_parent`
    or at the start of its own code. Does nothing where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)
