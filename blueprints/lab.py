"""The child-process lab: Node's spawn, exec, execFile and fork, shown (chapter 7).

    GET /admin/lab      the page (administrators)
    WS  /admin/lab/ws   administrators (else close 1008 with the reason)

Client -> server frames (JSON objects; only names from the allow-lists below):
    {"type": "spawn", "command": "count"|"sleep"|"ls"|"uname", "arg": N}
    {"type": "exec", "line": L}       L through /bin/sh -c (a fixed line of EXEC_LINES)
    {"type": "execFile", "line": L}   the same line as an argv list, no shell
    {"type": "fork"}
    {"type": "send", "run": id, "text": "..."}      to a forked child
    {"type": "kill", "run": id}                     SIGTERM, any run
    {"type": "disconnect", "run": id}               a forked child's channel
Server -> client:
    hello {commands, lines, limits}; started {run, kind, pid, argv};
    output {run, stream, line}; message {run, data}; result {run, stdout, stderr};
    exit {run, code, signal, reason}; refused {reason} (a limit, or a run that
    has ended: the socket stays open). Input outside the allow-lists closes
    the socket with 1008 and the reason, and nothing runs.

Nothing a user types reaches a shell or an argv: commands and lines are
looked up by name, and the one argument is a whole number in a fixed range.

Why ONE WebSocket per page, not an SSE stream per run: a fork's messages,
kill and disconnect must reach the worker that holds that child, and with
SO_REUSEPORT two requests of one page may land on two workers (and the
process table is per worker); on one connection, commands and output pass
through the same worker. The connection is also the runs' owner: when it
ends (the page closes, the network drops, the worker stops: close 1012),
its children are killed.
"""

import collections
import json
import shlex
import sys

from flask import Blueprint

from core import children
from core.security import admin_page, admin_required, current_user
from core.transports.websocket import Refused, json_object, route
from core.web import no_store

bp = Blueprint("lab", __name__)

# spawn: name -> (the range of its argument, or None for none; its argv)
SPAWN_COMMANDS = {
    "count": (range(1, 31), lambda n: [sys.executable, "-m", "workers.lab_count", str(n)]),
    "sleep": (range(1, 11), lambda n: ["sleep", str(n)]),
    "ls": (None, lambda _: ["ls", "-l", "static"]),
    "uname": (None, lambda _: ["uname", "-a"]),
}
# exec runs the line through a shell; execFile runs shlex.split(line) without one,
# so "$HOME" stays "$HOME" and "|" is a file name to ls.
EXEC_LINES = ("echo $HOME", "ls static | wc -l", "echo $((6 * 7))")
FORK_ARGV = [sys.executable, "-m", "workers.lab_child"]
MAX_TEXT = 1000  # characters of a message to a forked child
# While runs are live, how long the handler waits for the client before it
# sends their output. The socket is written only by its handler's greenlet
# (core/transports/websocket.py), so output waits for the next turn of the
# loop: at most this long. With no run live the handler just waits for the client.
TICK = 0.05


bp.after_request(no_store)  # administrators only: no cache keeps the page


@bp.get("/admin/lab")
def lab_page():
    return admin_page("lab.html")


@route("/admin/lab/ws", bp)
@admin_required  # a refusal here closes the socket 1008 with the reason (route())
def lab_ws(ws):
    bench = Bench(current_user().name)
    ws.send(json.dumps(bench.hello()))
    try:
        while True:
            raw = ws.receive(timeout=TICK if bench.runs else None)
            if raw is not None:
                bench.handle(json_object(raw))
            while bench.outbox:
                ws.send(json.dumps(bench.take()))
    finally:
        bench.kill_all()


class Bench:
    """One page's runs: its children by run id, and their events to send."""

    def __init__(self, owner):
        self.owner = owner
        self.runs = {}  # run id -> children.Child, until its exit event is sent
        self.outbox = collections.deque()  # appended by the children's greenlets
        self.next_id = 1

    def hello(self):
        return {
            "type": "hello",
            "lines": list(EXEC_LINES),
            "commands": {
                name: [allowed.start, allowed.stop - 1] if allowed else None
                for name, (allowed, _) in SPAWN_COMMANDS.items()
            },
            "limits": {
                "per_admin": children.PER_OWNER,
                "per_worker": children.PER_WORKER,
                "seconds": children.TIME_LIMIT,
            },
        }

    def take(self):
        event = self.outbox.popleft()
        if event["type"] == "exit":
            self.runs.pop(event["run"], None)
        return event

    def handle(self, message):
        kind = message.get("type")
        if kind == "spawn":
            self.start("spawn", _spawn_argv(message), children.STREAM)
        elif kind == "exec":
            self.start("exec", ["/bin/sh", "-c", _line(message)], children.WHOLE)
        elif kind == "execFile":
            self.start("execFile", shlex.split(_line(message)), children.WHOLE)
        elif kind == "fork":
            self.start("fork", FORK_ARGV, children.CHANNEL)
        elif kind in ("send", "kill", "disconnect"):
            self.command(kind, message)
        else:
            raise Refused("type must be spawn, exec, execFile, fork, send, kill or disconnect")

    def start(self, kind, argv, mode):
        run = self.next_id
        self.next_id += 1

        def emit(event):
            self.outbox.append({**event, "run": run})

        try:
            child = children.start(argv, owner=self.owner, emit=emit, mode=mode)
        except (children.LimitReached, OSError) as exc:
            self.outbox.append({"type": "refused", "reason": str(exc)})
            return
        self.runs[run] = child
        # before any of its output: the children's greenlets run when this one waits
        self.outbox.appendleft(
            {"type": "started", "run": run, "kind": kind, "pid": child.pid, "argv": argv}
        )

    def command(self, kind, message):
        run = message.get("run")
        if not isinstance(run, int) or isinstance(run, bool):
            raise Refused("run must be the number of a run")
        text = message.get("text")
        if kind == "send" and (not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT):
            raise Refused(f"text must be a string of 1 to {MAX_TEXT} characters")
        child = self.runs.get(run)
        if child is None:
            self.outbox.append({"type": "refused", "reason": f"run {run} has ended"})
            return
        try:
            if kind == "kill":
                child.kill()
            elif kind == "disconnect":
                child.disconnect()
            else:
                child.send({"text": text})
        except children.ChannelClosed as exc:
            self.outbox.append({"type": "refused", "reason": f"run {run}: {exc}"})

    def kill_all(self):
        for child in self.runs.values():
            child.kill()


def _spawn_argv(message):
    name = message.get("command")
    if name not in SPAWN_COMMANDS:
        raise Refused(f"command must be one of {', '.join(SPAWN_COMMANDS)}")
    allowed, argv = SPAWN_COMMANDS[name]
    arg = message.get("arg")
    if allowed is None:
        if arg is not None:
            raise Refused(f"{name} takes no argument")
    elif not isinstance(arg, int) or isinstance(arg, bool) or arg not in allowed:
        raise Refused(
            f"{name} needs arg, a whole number from {allowed.start} to {allowed.stop - 1}"
        )
    return argv(arg)


def _line(message):
    line = message.get("line")
    if line not in EXEC_LINES:
        raise Refused(f"line must be one of: {' / '.join(EXEC_LINES)}")
    return line
