"""A worker's child processes, as Node's child_process shows them (chapter 7).

`start(argv, owner=..., emit=..., mode=...)` runs an argv (a list: no shell
unless the argv itself is `/bin/sh -c FIXED`) and reports what happens as
event dicts through `emit(event)`, from background greenlets:

    mode STREAM   (spawn)    {"type": "output", "stream": "stdout"|"stderr", "line"} as they come
    mode WHOLE    (exec)     {"type": "result", "stdout", "stderr"} once it has ended
    mode CHANNEL  (fork)     {"type": "message", "data"} for each JSON line the child
                             writes on stdout (stderr as output lines); `send(obj)`
                             writes one on its stdin, `disconnect()` closes it
    always, last:            {"type": "exit", "code", "signal", "reason"}

Nothing here blocks the gevent hub: under gunicorn's gevent worker
`subprocess` is gevent's (the worker calls monkey.patch_all), its pipes are
cooperative, and the pipes are read and the child waited for in greenlets
(core.offload.spawn). Under other workers the same code runs on threads.

Nothing outlives its use: each child runs at most TIME_LIMIT seconds; this
worker runs at most PER_WORKER children, PER_OWNER of them for one user; a
child is killed when its owner's connection ends (the caller's job) and
when the worker exits (atexit). Should the worker die without exiting
(SIGKILL), its children's pipes close: a forked child exits at EOF on its
stdin, a streaming one at its next write (EPIPE), and the rest of the
allow-list (blueprints/lab.py) ends within seconds by itself. (Not
PR_SET_PDEATHSIG: it needs a preexec_fn, Python code run between fork and
exec, which is unsafe beside gevent's thread pool.) Each child leads its
own process group, so a kill reaches what a shell started too.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import IO, Any

from core.offload import spawn

STREAM, WHOLE, CHANNEL = "stream", "whole", "channel"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # children run here
TIME_LIMIT = 300.0  # seconds a child may live
KILL_GRACE = 2.0  # after SIGTERM at the time limit, SIGKILL
PER_WORKER = 8
PER_OWNER = 4
MAX_LINE = 4096  # bytes of one line read (a longer one comes in pieces)
MAX_OUTPUT = 64 * 1024  # bytes of each stream a WHOLE run reports

Event = dict[str, Any]  # one of the events above (JSON)

_lock = threading.Lock()
_live: dict[Child, str] = {}  # Child -> owner


class LimitReached(Exception):
    """Too many children already (this worker's, or this owner's)."""


class ChannelClosed(Exception):
    """send() on a child that is disconnected or gone (Node: ERR_IPC_CHANNEL_CLOSED)."""


def _environment() -> dict[str, str]:
    """What a child sees: enough to run, not the worker's secrets (SECRET_KEY,
    REDIS_URL and the like are in the worker's environment)."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def start(
    argv: Sequence[str], *, owner: str, emit: Callable[[Event], object], mode: str = STREAM
) -> Child:
    """Start `argv` for `owner`, reporting through `emit`; the Child, or
    LimitReached (nothing started). OSError when it cannot be run."""
    child = Child(argv, emit, mode)
    with _lock:
        if len(_live) >= PER_WORKER:
            raise LimitReached(
                f"this worker runs {PER_WORKER} children already: wait for one to end, or kill one"
            )
        if sum(1 for name in _live.values() if name == owner) >= PER_OWNER:
            raise LimitReached(f"you run {PER_OWNER} children already: kill or disconnect one")
        _live[child] = owner  # held before Popen: two starts at once cannot both pass
    try:
        child.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_environment(),
            start_new_session=True,
            stdin=subprocess.PIPE if mode == CHANNEL else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError:
        with _lock:
            _live.pop(child, None)
        raise
    spawn(child._run)
    return child


def running() -> int:
    """How many children this worker runs now."""
    return len(_live)


@atexit.register
def kill_all() -> None:
    """The worker is exiting: end every child it still runs."""
    for child in list(_live):
        child.kill()


class Child:
    """One child process; see the module's docstring."""

    def __init__(self, argv: Sequence[str], emit: Callable[[Event], object], mode: str) -> None:
        self.argv, self.emit, self.mode = argv, emit, mode
        self.proc: Any = None  # its subprocess.Popen, set by start() (Any: None before that)
        self.timed_out = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Signal the child's process group (Node's `kill()`); nothing once it has ended."""
        if self.proc.returncode is None:  # not reaped: the pid is still ours
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def send(self, message: Any) -> None:
        """One JSON line on the child's stdin (Node's `child.send`)."""
        if self.mode != CHANNEL:
            raise ChannelClosed("only a forked child has a channel")
        if self.proc.stdin.closed or self.proc.returncode is not None:
            raise ChannelClosed("the channel is closed")
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the child is gone, or just disconnected
            raise ChannelClosed("the channel is closed") from None

    def disconnect(self) -> None:
        """Close the channel (Node's `disconnect()`): the child sees EOF and may exit."""
        if self.mode != CHANNEL:
            raise ChannelClosed("only a forked child has a channel")
        if self.proc.stdin.closed:
            raise ChannelClosed("the channel is closed already")
        with suppress(BrokenPipeError):
            self.proc.stdin.close()

    # -- in a background greenlet ------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.mode == WHOLE:
                self._collect()
            else:
                self._stream()
        finally:
            with _lock:
                _live.pop(self, None)
            self.emit(self._exit_event())

    def _collect(self) -> None:
        try:
            out, err = self.proc.communicate(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            self._time_is_up()
            out, err = self.proc.communicate()
        self.emit(
            {
                "type": "result",
                "stdout": _decode(out[:MAX_OUTPUT]),
                "stderr": _decode(err[:MAX_OUTPUT]),
            }
        )

    def _stream(self) -> None:
        stdout = self._read_messages if self.mode == CHANNEL else self._read_lines
        readers = [
            spawn(lambda: stdout(self.proc.stdout)),
            spawn(lambda: self._read_lines(self.proc.stderr, "stderr")),
        ]
        try:
            self.proc.wait(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            self._time_is_up()
        for reader in readers:  # every line is out before the exit is
            reader.join(KILL_GRACE)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()

    def _time_is_up(self) -> None:
        self.timed_out = True
        self.kill()
        try:
            self.proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait()

    def _lines(self, pipe: IO[bytes]) -> Iterator[str]:
        for raw in iter(lambda: pipe.readline(MAX_LINE), b""):
            yield _decode(raw).rstrip("\r\n")

    def _read_lines(self, pipe: IO[bytes], name: str = "stdout") -> None:
        for line in self._lines(pipe):
            self.emit({"type": "output", "stream": name, "line": line})

    def _read_messages(self, pipe: IO[bytes]) -> None:
        for line in self._lines(pipe):
            try:
                self.emit({"type": "message", "data": json.loads(line)})
            except ValueError:  # not a message: shown as what it is, a line
                self.emit({"type": "output", "stream": "stdout", "line": line})

    def _exit_event(self) -> Event:
        code = self.proc.returncode
        reason = f"time limit ({TIME_LIMIT:g} s)" if self.timed_out else None
        if code is not None and code < 0:
            return {
                "type": "exit",
                "code": None,
                "signal": signal.Signals(-code).name,
                "reason": reason,
            }
        return {"type": "exit", "code": code, "signal": None, "reason": reason}
