"""The RQ workers that run background jobs (workers/jobs.py).

    python -m workers.job_workers            one RQ worker on the app's job queue, with
                                             the app's settings (REDIS_URL or Sentinels)

`make run` has supervisord run JOB_WORKERS of them, restarted with a back-off
(workers/supervise.py); production, systemd units (docs/deploy.md).
`start(n, env)` and `stop()` are for a gunicorn master started alone
(gunicorn.conf.py's `when_ready` and `on_exit`): they start and stop `n` of
those processes beside the web workers, without restarting them. Light on
purpose: the master need not import RQ (nor this module redis-py) for that;
`main()` imports them in its own process. A job whose worker dies is reported
"failed" all the same (workers/jobs.py).

Each worker reports its vital signs to Redis like a web worker (core/monitor.py),
role "jobs": pid, RSS and CPU (its own and its current work-horse's), uptime,
the current job, and, under supervisord, its restarts.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STOP_SECONDS = 10.0  # warm shutdown (the current job finishes) before a cold one

_started = []


def command():
    return [sys.executable, "-m", "workers.job_workers"]


def start(n=None, env=None):
    """Start `n` RQ worker processes (default: the JOB_WORKERS setting) with `env`
    (default: this process's environment); returns their pids."""
    from core.config import read_settings  # light: no Redis

    env = dict(os.environ if env is None else env)
    settings = read_settings(env)
    if settings["REDIS_CLUSTER"]:
        return []  # RQ needs a single Redis (blueprints/jobs.py says so to the page)
    n = settings["JOB_WORKERS"] if n is None else n
    for _ in range(n):
        _started.append(subprocess.Popen(command(), cwd=ROOT, env=env))
    return [p.pid for p in _started]


def stop(timeout=STOP_SECONDS):
    """SIGTERM (RQ's warm shutdown: the current job ends first); after `timeout`, a
    second SIGTERM (RQ's cold shutdown: the job's work-horse is killed, and the job
    is reported failed), then SIGKILL."""
    for process in _started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in _started:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    _started.clear()


def main(argv=None):
    """One RQ worker: forks a work-horse per job (RQ's model, the chapter's)."""
    from rq import Queue, Worker

    from core.config import load_settings
    from core.keys import Keys
    from core.redis_connections import RedisConnections

    settings = load_settings()
    if not settings["REDIS_URL"] and not settings["REDIS_SENTINELS"]:
        raise SystemExit("job worker: REDIS_URL (or REDIS_SENTINELS) is not set")
    # RQ wants bytes replies: a plain redis-py client, not the app's decoding one
    connection = __import__("redis").Redis(
        connection_pool=RedisConnections.from_settings(settings).pool(
            max_connections=8, socket_timeout=None
        )
    )
    queue = Queue(Keys(settings["REDIS_PREFIX"]).jobs_queue(), connection=connection)
    worker = Worker(
        [queue], connection=connection, maintenance_interval=60, job_monitoring_interval=5
    )
    reporter = Reporter(worker, settings)
    reporter.start()
    try:
        worker.work(with_scheduler=False, logging_level=settings["LOG_LEVEL"].upper())
    finally:
        reporter.stop()
    return 0


def _proc_stat(pid):
    """(CPU seconds, RSS bytes) of a live process, from /proc; (0, 0) when gone."""
    from core.monitor import rss_bytes

    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0, 0
    return cpu, rss_bytes(pid)


class Reporter:
    """A thread reporting this RQ worker to Redis every REPORT_SECONDS (TTL: 3
    reports), as core/monitor.py does for gunicorn's workers, for
    /admin/processes and /admin/monitor."""

    def __init__(self, worker, settings):
        import socket
        import threading

        from core.keys import Keys
        from core.monitor import REPORT_SECONDS
        from core.redis_connections import RedisConnections

        self.worker, self.every = worker, REPORT_SECONDS
        self.client = RedisConnections.from_settings(settings).client(
            max_connections=2, timeout=2, socket_timeout=2
        )
        self.keys, self.host, self.pid = (
            Keys(settings["REDIS_PREFIX"]),
            socket.gethostname(),
            os.getpid(),
        )
        self.key = self.keys.process(self.host, self.pid)
        self.started = time.time()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="job-worker-report")
        # under supervisord (workers/supervise.py): its name, and its restarts as counted there
        self.name = os.environ.get("SUPERVISOR_PROCESS_NAME")
        self.program = f"{os.environ.get('SUPERVISOR_GROUP_NAME')}:{self.name}"

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)
        try:
            self.client.delete(self.key)
        except Exception as exc:  # noqa: BLE001 (Redis away at exit: the report expires)
            print(f"job worker: report left to expire ({exc!r})", file=sys.stderr)

    def _restarts(self):
        if not (self.name and os.environ.get("SUPERVISOR_ENABLED")):
            return None
        starts = self.client.hget(
            self.keys.supervisor_starts(self.host, os.getppid()), self.program
        )
        return max(int(starts or 1) - 1, 0)

    def _loop(self):
        import json

        from core.monitor import cpu_seconds, rss_bytes

        def used():  # this process, its reaped work-horses, the current one
            times = os.times()
            horse_cpu, horse_rss = (
                _proc_stat(self.worker.horse_pid) if self.worker.horse_pid else (0.0, 0)
            )
            return (
                cpu_seconds() + times.children_user + times.children_system + horse_cpu,
                horse_rss,
            )

        restarts = None
        last_cpu, last_wall = used()[0], time.monotonic()
        while True:
            cpu, horse_rss = used()
            wall = time.monotonic()
            report = {
                "role": "jobs",
                "name": self.name or "jobs",
                "pid": self.pid,
                "ppid": os.getppid(),
                "host": self.host,
                "started": self.started,
                "uptime": round(time.time() - self.started, 1),
                "rss": rss_bytes() + horse_rss,
                "cpu": round(100 * max(cpu - last_cpu, 0) / max(wall - last_wall, 1e-6), 1),
                "job": self.worker.get_current_job_id(),
                "restarts": restarts,
                "at": time.time(),
            }
            last_cpu, last_wall = cpu, wall
            try:
                if restarts is None:
                    report["restarts"] = restarts = self._restarts()
                self.client.set(self.key, json.dumps(report), ex=int(self.every * 3))
            except Exception as exc:  # noqa: BLE001 (Redis away: report again next time)
                print(f"job worker: could not report to Redis: {exc!r}", file=sys.stderr)
            if self.stopped.wait(self.every):
                return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
