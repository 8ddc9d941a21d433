"""The RQ workers that run background jobs (workers/jobs.py).

    python -m workers.job_workers            one RQ worker on the app's job queue, with
                                             the app's settings (REDIS_URL or Sentinels)

`start(n, env)` and `stop()` are for the gunicorn master (gunicorn.conf.py's
`when_ready` and `on_exit`): they start and stop `n` of those processes beside
the web workers. Light on purpose: the master need not import RQ (nor this
module redis-py) for that; `main()` imports them in its own process. Restarting a worker that dies is not done
here (a supervisor with back-off is a later item); a job whose worker dies is
reported "failed" all the same (workers/jobs.py).
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
    n = read_settings(env)["JOB_WORKERS"] if n is None else n
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
    worker.work(with_scheduler=False, logging_level=settings["LOG_LEVEL"].upper())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
