"""`make run`: the web server, the job workers and the embedded Redis as one
system, under supervisord (PM2's role; docs/architecture.md says why supervisord).

    python -m workers.supervise          what `make run` runs, in the foreground
    python -m workers.supervise events   supervisord's event listener (its config starts it)

In order, each refusal being one line and exit status 1, before anything starts:
1. the settings (core/config.py), as gunicorn.conf.py checks them;
2. the address (core/listening.py: a taken port stops here, not in a loop);
3. one `make run` per instance directory (a lock, `<instance>/supervise.lock`);
4. without REDIS_URL or REDIS_SENTINELS, the embedded Redis, started here
   (core/embedded_redis.py: its own lock refuses a second server on the same
   data, it writes `<instance>/redis.url`); it outlives everything supervisord
   runs, and this process stops it and removes the URL file once they are gone.

Then it writes `<instance>/supervisord.conf` and runs supervisord as its child:
- `web`: gunicorn, as `gunicorn -c gunicorn.conf.py 'app:create_app()'`, with
  that REDIS_URL and JOB_WORKERS=0, so its hooks start neither a Redis nor job
  workers (gunicorn itself still replaces its own workers);
- `jobs`: JOB_WORKERS processes of `python -m workers.job_workers`
  (JOB_WORKER_COMMAND), restarted whenever they exit. One that exits within
  JOB_MIN_UPTIME_SECONDS of its start failed to start: supervisord retries it
  after 1 s, then 2 s, 3 s, ... (one second more each time) and gives up, state
  FATAL, after JOB_MAX_RESTARTS such failures in a row (PM2's min_uptime and
  max_restarts). One that ran longer is restarted at once, as PM2 does;
- `events`: the event listener below, which counts starts (supervisord keeps no
  restart count), records exits, and reports supervisord's view to Redis for
  /admin/processes.
Every process's output goes to `<instance>/proclogs/<name>.log`, rotated past
LOG_MAX_BYTES with LOG_BACKUPS kept (`make logs` follows them), and is also
echoed here, prefixed with its name, so the terminal shows "Serving on ...".
SIGINT (Ctrl-C), SIGTERM or SIGHUP here: supervisord stops every program
(job workers first, their current jobs finishing; then gunicorn, draining its
streams), then this process stops Redis. `flask procs` (core/procs.py) talks to
supervisord over `<instance>/supervisor.sock`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB_STOP_SECONDS = 15  # workers/job_workers.py: a warm shutdown's 10 s, and some room


def fail(message):
    raise SystemExit(message)


def web_command():
    """gunicorn as `make run` ran it before (tests/servers.gunicorn_command)."""
    return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]


def job_command(settings):
    from workers import job_workers

    custom = settings["JOB_WORKER_COMMAND"]
    return shlex.split(custom) if custom else job_workers.command()


def _value(text):
    """A value for supervisord's config: its `%` interpolation escaped."""
    return str(text).replace("%", "%%")


def _command(args):
    return _value(shlex.join(str(a) for a in args))


def config_text(settings, instance, logs, sock, jobs_command):
    """supervisord's configuration for this run."""
    rotation = (
        f"stdout_logfile_maxbytes={settings['LOG_MAX_BYTES']}\n"
        f"stdout_logfile_backups={settings['LOG_BACKUPS']}\n"
    )
    common = f"directory={_value(ROOT)}\nautostart=true\nautorestart=true\n"
    common += "stopsignal=TERM\nstopasgroup=false\nkillasgroup=true\nredirect_stderr=true\n"
    text = f"""; written by workers/supervise.py at each `make run`: edits are lost
[unix_http_server]
file={_value(sock)}
chmod=0700

[supervisord]
nodaemon=true
logfile={_value(logs / "supervisord.log")}
logfile_maxbytes={settings["LOG_MAX_BYTES"]}
logfile_backups={settings["LOG_BACKUPS"]}
pidfile={_value(instance / "supervisord.pid")}
childlogdir={_value(logs)}
loglevel=info
identifier=realtime-flask

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{_value(sock)}

[eventlistener:events]
command={_command([sys.executable, "-m", "workers.supervise", "events"])}
directory={_value(ROOT)}
events=PROCESS_STATE,TICK_5
buffer_size=100
priority=1
autorestart=true
stdout_logfile=NONE
stderr_logfile={_value(logs / "events.log")}
stderr_logfile_maxbytes={settings["LOG_MAX_BYTES"]}
stderr_logfile_backups={settings["LOG_BACKUPS"]}

[program:web]
command={_command(web_command())}
environment=JOB_WORKERS="0"
priority=10
startsecs=1
startretries=3
stopwaitsecs={settings["GRACEFUL_TIMEOUT"] + 10}
{common}stdout_logfile={_value(logs / "web.log")}
{rotation}"""
    if settings["JOB_WORKERS"]:
        text += f"""
[program:jobs]
command={_command(jobs_command)}
process_name=%(program_name)s_%(process_num)d
numprocs={settings["JOB_WORKERS"]}
priority=20
startsecs={settings["JOB_MIN_UPTIME_SECONDS"]}
startretries={settings["JOB_MAX_RESTARTS"]}
stopwaitsecs={JOB_STOP_SECONDS}
{common}stdout_logfile={_value(logs)}/%(program_name)s_%(process_num)d.log
{rotation}"""
    return text


def _lock(instance):
    """One `make run` per instance directory (its socket, config and logs)."""
    from core.pid_lock import Held, hold

    try:
        return hold(instance / "supervise.lock")
    except Held as held:
        fail(
            f"{instance} is in use by another `make run` (pid {held.holder}): stop that one, "
            "or give this one its own INSTANCE_DIR"
        )


class LogEcho:
    """Echo what the programs write to their log files, prefixed with their
    names (supervisord writes its own lines to the terminal itself)."""

    def __init__(self, folder, out=sys.stdout):
        self.folder, self.out = Path(folder), out
        self.files = {}  # path -> [file, inode, partial line]
        # what was there before this run is not news
        self.skip = {p: p.stat().st_size for p in self.folder.glob("*.log")}

    def poll(self):
        for path in sorted(self.folder.glob("*.log")):
            if path.name == "supervisord.log":
                continue
            try:
                inode = path.stat().st_ino
            except OSError:
                continue
            entry = self.files.get(path)
            if entry is None or entry[1] != inode:  # new, or rotated: from its start
                if entry:
                    self._drain(path, entry)
                    entry[0].close()
                handle = open(path, "rb")  # noqa: SIM115 (kept open between polls)
                handle.seek(self.skip.pop(path, 0))
                entry = self.files[path] = [handle, inode, b""]
            self._drain(path, entry)

    def _drain(self, path, entry):
        data = entry[0].read()
        if not data:
            return
        lines = (entry[2] + data).split(b"\n")
        entry[2] = lines.pop()
        name = path.stem
        for line in lines:
            self.out.write(f"{name:<7}| {line.decode(errors='replace')}\n")
        self.out.flush()

    def close(self):
        for handle, *_ in self.files.values():
            handle.close()


def run():
    from core.config import ConfigError, load_settings, read_settings
    from core.listening import AddressTaken, refuse_taken

    try:
        settings = read_settings()
        load_settings()  # checked together, production's required ones too
        jobs_command = job_command(settings)
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
    except ValueError as exc:  # shlex
        fail(f"configuration error: JOB_WORKER_COMMAND: {exc}")
    if importlib.util.find_spec("supervisor") is None:
        fail(
            "supervisor is not installed: `make run` installs it (the embedded extra, "
            "`pip install -e '.[embedded]'`); or run gunicorn alone (docs/deploy.md)"
        )
    from gunicorn.util import parse_address

    bind = settings["BIND"] or f"{settings['HOST']}:{settings['PORT']}"
    try:
        refuse_taken([parse_address(bind)])
    except AddressTaken as exc:
        fail(str(exc))
    except RuntimeError as exc:  # gunicorn's parse error
        fail(f"configuration error: BIND={bind!r}: {exc}")

    from core import embedded_redis, procs

    instance = Path(settings["INSTANCE_DIR"]).resolve()
    instance.mkdir(parents=True, exist_ok=True)
    lock = _lock(instance)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not settings["REDIS_URL"] and not settings["REDIS_SENTINELS"]:
        try:
            redis_server = embedded_redis.start_for_instance(instance)
        except embedded_redis.EmbeddedRedisError as exc:
            fail(f"cannot start the embedded Redis: {exc}")
        env["REDIS_URL"] = redis_server.url
        print(f"Started embedded redis-server at {redis_server.url} (data in {instance}/redis)")
    try:
        return _supervise(settings, instance, env, procs, jobs_command)
    finally:
        embedded_redis.stop_for_instance()  # after every program is gone; removes redis.url
        lock.close()


def _supervise(settings, instance, env, procs, jobs_command):
    logs = procs.process_log_dir(instance)
    logs.mkdir(parents=True, exist_ok=True)
    sock = procs.socket_path(instance)
    config = instance / "supervisord.conf"
    config.write_text(config_text(settings, instance, logs, sock, jobs_command))
    echo = LogEcho(logs)
    from core.parent_death import die_with_parent

    supervisord = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(config)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # the terminal's Ctrl-C comes here, and is passed on once
        preexec_fn=die_with_parent,  # a SIGKILLed `make run` still stops everything
    )
    print(
        f"supervisord (pid {supervisord.pid}) runs web and {settings['JOB_WORKERS']} job "
        f"worker(s); logs in {logs} (`make logs`); `.venv/bin/flask --app app procs list`",
        flush=True,
    )

    def stop(signum, frame):
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    die_with_parent()  # `make run` killed (not just this process): stop everything too
    try:
        while supervisord.poll() is None:
            echo.poll()
            time.sleep(0.2)
        echo.poll()
    finally:
        echo.close()
        if supervisord.poll() is None:  # an error here: do not leave it behind
            supervisord.terminate()
            supervisord.wait()
    return supervisord.returncode


# -- supervisord's event listener -------------------------------------------------------
# supervisord writes an event (a header line, then `len` bytes) to a listener's
# stdin after the listener wrote READY, and waits for its RESULT before the next.


def listen(stdin=sys.stdin, stdout=sys.stdout):
    """Count starts, record unexpected exits and give-ups, report supervisord's
    programs to Redis (every PROCESS_STATE event and every 5 s)."""
    from core import procs
    from core.config import load_settings
    from core.keys import Keys
    from core.redis_connections import RedisConnections

    settings = load_settings()
    client = RedisConnections.from_settings(settings).client(
        max_connections=2, timeout=2, socket_timeout=2
    )
    keys, host, supervisord_pid = Keys(settings["REDIS_PREFIX"]), socket.gethostname(), os.getppid()
    rpc = procs.connect(os.environ.get("SUPERVISOR_SERVER_URL"), timeout=5)
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        headers = dict(part.split(":", 1) for part in line.split())
        payload = stdin.read(int(headers["len"]))
        try:
            _on_event(
                headers["eventname"], payload, client, keys, host, supervisord_pid, settings, rpc
            )
        except Exception as exc:  # noqa: BLE001 (Redis away: the next event tries again)
            print(f"events: {headers['eventname']}: {exc!r}", file=sys.stderr, flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def _on_event(name, payload, client, keys, host, supervisord_pid, settings, rpc):
    from core import procs
    from core.monitor import rss_bytes

    starts_key = keys.supervisor_starts(host, supervisord_pid)
    if name.startswith("PROCESS_STATE_"):
        fields = dict(part.split(":", 1) for part in payload.split())
        program = f"{fields['groupname']}:{fields['processname']}"
        cause = None
        if name == "PROCESS_STATE_STARTING":
            client.hincrby(starts_key, program, 1)
            client.expire(starts_key, 7 * 24 * 3600)
        elif name == "PROCESS_STATE_EXITED" and fields.get("expected") == "0":
            cause = f"{program} exited unexpectedly; restarted at once"
        elif name == "PROCESS_STATE_BACKOFF":
            tries = int(fields.get("tries", 0))
            cause = (
                f"{program} exited within its start time (failure {tries} in a row); "
                f"retrying in {tries} s"
            )
        elif name == "PROCESS_STATE_FATAL":
            cause = f"{program} gave up: it kept exiting within its start time"
        if cause:
            entry = {
                "pid": int(fields["pid"]) if fields.get("pid") else None,
                "host": host,
                "at": time.time(),
                "cause": cause,
                "program": program,
            }
            pipe = client.pipeline(transaction=False)
            pipe.lpush(keys.process_restarts(), json.dumps(entry))
            pipe.ltrim(keys.process_restarts(), 0, 199)
            pipe.execute()
    try:
        rows = procs.programs(rpc, client.hgetall(starts_key))
    except xmlrpc.client.Fault as fault:
        if "SHUTDOWN_STATE" not in fault.faultString:
            raise
        client.delete(keys.process(host, supervisord_pid))  # stopping: no longer a view
        return
    report = {
        "role": "supervisor",
        "pid": supervisord_pid,
        "host": host,
        "uptime": _uptime(supervisord_pid),
        "rss": rss_bytes(supervisord_pid),
        "programs": [row for row in rows if row["group"] != "events"],
        "at": time.time(),
    }
    client.set(keys.process(host, supervisord_pid), json.dumps(report), ex=15)


def _uptime(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            since_boot = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(since_boot - start_ticks / os.sysconf("SC_CLK_TCK"), 1)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["events"]:
        return listen()
    return run()


if __name__ == "__main__":
    sys.exit(main())
