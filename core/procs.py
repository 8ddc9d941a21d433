"""`make run`'s processes under supervisord (workers/supervise.py), and the
`flask procs` commands, PM2's `list / start / stop / restart / reload`:

    flask --app app procs list
    flask --app app procs start|stop|restart|reload [web|jobs|all]

They talk to supervisord over its XML-RPC interface (supervisor's documented
API: supervisor.getAllProcessInfo, startProcessGroup, signalProcess, ...) on
the unix socket of the instance directory, with the standard library's
xmlrpc.client: no supervisor import, so they work from any install.

- `web` is the gunicorn master (and, in `list`, its workers, from their reports
  to Redis); `reload web` is gunicorn's graceful reload (HUP through
  supervisord's signalProcess): new workers start, the old ones hand their
  streams over, the master stays.
- `jobs` are the RQ workers; `reload jobs` restarts them one at a time, each
  finishing its current job first (RQ has no in-place reload), so the others
  keep taking jobs.
- restarts: supervisord keeps no count; its event listener counts every start
  of every program in Redis (workers/supervise.py) and `list` shows starts - 1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from core.keys import Keys

SOCKET_NAME = "supervisor.sock"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
GROUPS = {"web": ["web"], "jobs": ["jobs"], "all": ["web", "jobs"]}
SUCCESS = 80  # supervisor.xmlrpc.Faults.SUCCESS


def process_log_dir(instance: str | os.PathLike[str]) -> Path:
    """Where `make run` writes each process's log (not JOBS_LOG_DIR's `logs/`,
    which holds the logs that /admin/jobs analyses)."""
    return Path(instance) / "proclogs"


def socket_path(instance: str | os.PathLike[str]) -> Path:
    """supervisord's XML-RPC socket of this instance directory: in it, unless
    that path is too long for a unix socket; then a name in the temporary
    directory derived from the instance's path."""
    instance = Path(instance).resolve()
    inside = instance / SOCKET_NAME
    if len(os.fsencode(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(os.fsencode(instance)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"realtime-supervisor-{digest}.sock"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__()
        self._path, self._timeout = path, timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path, self._timeout)


class NotRunning(RuntimeError):
    """No supervisord answers on the instance's socket."""


def connect(
    server_url: str | None = None, instance: str | None = None, timeout: float | None = 120
) -> Any:
    """An XML-RPC proxy of supervisord: `server_url` (`unix:///path`, as
    supervisord gives its children in SUPERVISOR_SERVER_URL) or the socket of
    `instance`. `timeout` bounds each call (a stop with wait may take the
    programs' stop timeout)."""
    path = server_url[len("unix://") :] if server_url else str(socket_path(instance or "."))
    proxy = xmlrpc.client.ServerProxy("http://localhost/RPC2", _UnixTransport(path, timeout))
    return proxy


def programs(rpc: Any, starts: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """supervisord's processes as plain rows: name, group, state, pid, uptime,
    restarts (from the event listener's start counts, when given), description."""
    rows = []
    for info in rpc.supervisor.getAllProcessInfo():
        full = f"{info['group']}:{info['name']}"
        count = int((starts or {}).get(full, 0))
        running = info["statename"] in ("RUNNING", "STARTING", "STOPPING")
        rows.append(
            {
                "name": info["name"],
                "group": info["group"],
                "state": info["statename"],
                "pid": info["pid"] or None,
                "uptime": round(info["now"] - info["start"], 1) if running else None,
                "restarts": max(count - 1, 0) if starts is not None else None,
                "description": info["description"] or info["spawnerr"],
            }
        )
    return rows


def supervisor_rpc(timeout: float | None = 120) -> Any:
    """The proxy for this app's instance directory, or a click error saying
    that no `make run` runs there."""
    instance = current_app.config["INSTANCE_DIR"]
    rpc = connect(instance=instance, timeout=timeout)
    try:
        rpc.supervisor.getPID()
    except (OSError, xmlrpc.client.Error) as exc:
        raise click.ClickException(
            f"no supervisor answers at {socket_path(instance)} ({exc}): is `make run` "
            f"running with INSTANCE_DIR={instance}? (in production, systemd runs the "
            "processes: docs/deploy.md)"
        ) from None
    return rpc


def _redis_view(rpc: Any) -> tuple[dict[str, str] | None, list[dict[str, Any]]]:
    """The start counts and every process report, from Redis (None, [] when
    Redis does not answer: `list` still shows supervisord's view)."""
    redis_client = current_app.extensions["redis"]
    keys = Keys(current_app.config["REDIS_PREFIX"])
    try:
        starts = redis_client.hgetall(
            keys.supervisor_starts(socket.gethostname(), rpc.supervisor.getPID())
        )
        names = [
            k
            for k in redis_client.scan_iter(keys.process_pattern(), count=500)
            if keys.is_process_report(k)
        ]
        reports = [json.loads(v) for v in redis_client.mget(names) if v] if names else []
    except Exception as exc:  # noqa: BLE001 (a view: say what is missing, show the rest)
        click.echo(f"(Redis did not answer: {exc!r}; no restart counts or vital signs)", err=True)
        return None, []
    return starts, reports


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _memory(report: dict[str, Any] | None) -> str:
    return f"{report['rss'] / 2**20:.0f} MB" if report and report.get("rss") else "-"


def _cpu(report: dict[str, Any] | None) -> str:
    return f"{report['cpu']:.0f}%" if report and report.get("cpu") is not None else "-"


procs_cli = AppGroup("procs", help="`make run`'s processes, as pm2 list/start/stop/restart/reload.")


@procs_cli.command("list")
def list_command() -> None:
    """Every process: name, pid, state, uptime, restarts, memory, CPU."""
    rpc = supervisor_rpc(timeout=10)
    starts, reports = _redis_view(rpc)
    host = socket.gethostname()
    by_pid = {r["pid"]: r for r in reports if r.get("host") == host}
    line = "{:<14} {:>8} {:<9} {:>8} {:>8} {:>8} {:>5}  {}"
    click.echo(line.format("name", "pid", "state", "uptime", "restarts", "memory", "cpu", ""))
    for row in sorted(programs(rpc, starts), key=lambda r: (r["group"] != "web", r["name"])):
        if row["group"] == "events":
            continue  # supervisord's event listener (workers/supervise.py): plumbing
        report = by_pid.get(row["pid"])
        restarts = "-" if row["restarts"] is None else row["restarts"]
        job = (report or {}).get("job")
        note = f"job {job}" if job else ("" if row["state"] == "RUNNING" else row["description"])
        click.echo(
            line.format(
                row["name"],
                row["pid"] or "-",
                row["state"],
                _duration(row["uptime"]),
                restarts,
                _memory(report),
                _cpu(report),
                note,
            )
        )
        if row["group"] == "web" and row["pid"]:  # gunicorn's workers, from their reports
            workers = [r for r in reports if r.get("role") == "worker" and r["ppid"] == row["pid"]]
            for worker in sorted(workers, key=lambda r: r["pid"]):
                click.echo(
                    line.format(
                        f"  worker {worker.get('worker') or ''}".rstrip(),
                        worker["pid"],
                        "online",
                        _duration(worker.get("uptime")),
                        "-",
                        _memory(worker),
                        _cpu(worker),
                        "",
                    )
                )


def _results(results: list[dict[str, Any]], done: str) -> None:
    for result in results:
        status = done if result["status"] == SUCCESS else result["description"]
        click.echo(f"{result['group']}:{result['name']}: {status}")


def _target_groups(target: str) -> list[str]:
    return GROUPS[target]


TARGET = click.argument("target", type=click.Choice(sorted(GROUPS)), default="all")


def _call(what: str, call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" in fault.faultString or "ALREADY_STARTED" in fault.faultString:
            click.echo(f"{what}: {fault.faultString}")
            return []
        if "BAD_NAME" in fault.faultString:  # no such group: JOB_WORKERS=0
            click.echo(f"{what}: not run by this supervisor")
            return []
        raise click.ClickException(f"{what}: {fault.faultString}") from None


@procs_cli.command("start")
@TARGET
def start_command(target: str) -> None:
    """Start what is stopped (or gave up), and wait until it runs."""
    rpc = supervisor_rpc()
    for group in _target_groups(target):
        _results(_call(group, rpc.supervisor.startProcessGroup, group, True), "started")


@procs_cli.command("stop")
@TARGET
def stop_command(target: str) -> None:
    """Stop (gunicorn drains its streams; a job worker finishes its job)."""
    rpc = supervisor_rpc()
    for group in reversed(_target_groups(target)):
        _results(_call(group, rpc.supervisor.stopProcessGroup, group, True), "stopped")


@procs_cli.command("restart")
@TARGET
def restart_command(target: str) -> None:
    """Stop, then start again: new processes (new pids)."""
    rpc = supervisor_rpc()
    for group in _target_groups(target):
        _results(_call(group, rpc.supervisor.stopProcessGroup, group, True), "stopped")
        _results(_call(group, rpc.supervisor.startProcessGroup, group, True), "started")


@procs_cli.command("reload")
@TARGET
def reload_command(target: str) -> None:
    """Without downtime: gunicorn replaces its workers (HUP; the master
    stays), job workers restart one at a time."""
    rpc = supervisor_rpc()
    for group in _target_groups(target):
        rows = [r for r in programs(rpc) if r["group"] == group]
        if group == "web":
            if rows and rows[0]["state"] == "RUNNING":
                _call("web", rpc.supervisor.signalProcess, "web:web", "HUP")
                click.echo("web: HUP sent: gunicorn starts new workers, the old ones drain")
            else:
                click.echo("web: not running (`procs start web`)")
            continue
        for row in rows:
            name = f"{row['group']}:{row['name']}"
            if row["state"] in ("RUNNING", "STARTING"):
                _call(name, rpc.supervisor.stopProcess, name, True)
            _call(name, rpc.supervisor.startProcess, name, True)
            click.echo(f"{name}: restarted")


def wait_for_state(
    rpc: Any, wanted: set[str], group: str, count: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """Rows of `group` once `count` of them are in one of the `wanted` states
    (for callers that poll: tests, scripts); the last rows on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in programs(rpc) if r["group"] == group]
        if sum(r["state"] in wanted for r in rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)
