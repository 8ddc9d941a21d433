"""Each worker's vital signs, reported to Redis, and its memory limit.

`start(worker, app)` runs in every gunicorn worker (post_worker_init). Every
REPORT_SECONDS it:
- notices (within CHECK_SECONDS) that gunicorn asked the worker to stop (a
  reload, a shutdown) and ends its long-lived connections at once (core.lifecycle);
- stops the worker gracefully when its RSS is over MAX_WORKER_MEMORY_MB:
  it stops accepting, its clients move to the other workers, and gunicorn
  starts a fresh one (PM2's max_memory_restart, without letting it grow further);
- writes pid, host, uptime, RSS, CPU, open connections per transport and
  requests served to `<prefix>{proc}:<host>:<pid>`, expiring after 3 reports;
- copies the hub's plain counters into the Prometheus metrics (core/metrics.py).
The master records restarts and their causes (`record_exit`, from child_exit)
and reports itself (`report_master`), with redis-py.
"""

import json
import logging
import os
import socket
import threading
import time
import warnings

import redis

from core import lifecycle
from core.config import load_settings
from core.keys import Keys
from core.offload import spawn
from core.redis_connections import RedisConnections

REPORT_SECONDS = 2.0
BOOT_GRACE = 1.0  # seconds a new worker serves before its memory limit applies
CHECK_SECONDS = 0.25  # how soon a stopping worker notices and hands its clients over
log = logging.getLogger(__name__)


def rss_bytes(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds():
    times = os.times()
    return times.user + times.system


def start(worker, app):
    spawn(lambda: _watch(worker, app))


def _watch(worker, app):
    hub, redis_client = app.extensions["hub"], app.extensions["redis"]
    metrics = app.extensions.get("metrics")  # core/metrics.py's, when init_app made them
    keys, limit_mb = hub.keys, app.config["MAX_WORKER_MEMORY_MB"]
    host, pid, started = socket.gethostname(), os.getpid(), time.time()
    last_cpu, last_wall = cpu_seconds(), time.monotonic()
    next_report = 0.0
    while True:
        if not worker.alive:
            _note_cause(redis_client, keys, host, pid, "graceful stop (reload or shutdown)")
            _hand_over(worker, hub)
            return
        rss = rss_bytes()
        # A fresh worker serves for BOOT_GRACE before the limit applies: with a
        # limit below what a worker needs to boot, replacements would otherwise
        # stop accepting at once, one after another, and nothing would be served.
        if limit_mb and rss > limit_mb * 1024 * 1024 and time.time() - started > BOOT_GRACE:
            cause = f"memory limit: RSS {rss // 2**20} MB over {limit_mb} MB"
            log.warning("worker %s: %s; restarting it", pid, cause)
            _note_cause(redis_client, keys, host, pid, cause)
            worker.alive = False  # gunicorn's loop stops accepting and drains
            _hand_over(worker, hub)
            return
        if time.monotonic() < next_report:
            time.sleep(CHECK_SECONDS)
            continue
        next_report = time.monotonic() + REPORT_SECONDS
        now_cpu, now_wall = cpu_seconds(), time.monotonic()
        cpu = 100 * (now_cpu - last_cpu) / max(now_wall - last_wall, 1e-6)
        last_cpu, last_wall = now_cpu, now_wall
        connections = lifecycle.open_connections()
        if metrics is not None:
            metrics.flush(rss=rss, connections=connections)
        report = {
            "role": "worker",
            "pid": pid,
            "ppid": os.getppid(),
            "host": host,
            "worker": os.environ.get("WORKER_NUMBER"),
            "started": started,
            "uptime": round(time.time() - started, 1),
            "rss": rss,
            "cpu": round(cpu, 1),
            "connections": connections,
            "requests": lifecycle.requests_served[0],
            "subscribers": hub.stats()["subscribers"],
            "notifications": hub.notifications,
            "at": time.time(),
        }
        try:
            redis_client.set(
                keys.process(host, pid), json.dumps(report), ex=int(REPORT_SECONDS * 3)
            )
        except Exception:  # Redis away: report again next time
            log.debug("could not report to Redis", exc_info=True)
        time.sleep(CHECK_SECONDS)


DRAIN_SECONDS = 10.0  # at most this long (and within graceful_timeout) at exit


def drain(worker):
    """At a worker's exit (gunicorn's worker_exit hook, in the worker): hand its
    connections over if the watch above has not yet, and let them finish
    saying so. gunicorn's gevent worker waits only for the greenlets of its
    pool, and a parked stream has none (core.parking): without this, the
    process could end before a parked WebSocket's close 1012 or an SSE
    stream's `close` event went out, and its client would see a bare
    disconnect."""
    app = getattr(worker, "wsgi", None)
    hub = getattr(app, "extensions", {}).get("hub")
    if hub is None:  # the app never loaded: nothing was served
        return
    _hand_over(worker, hub)
    deadline = time.monotonic() + min(DRAIN_SECONDS, worker.cfg.graceful_timeout)
    while lifecycle.held_by_all() and time.monotonic() < deadline:
        time.sleep(0.05)  # gevent's, under the gevent worker: the closes run
    metrics = app.extensions.get("metrics")
    if metrics is not None:  # the counts since the last report stay in the totals
        metrics.flush()


def _hand_over(worker, hub):
    """End every long-lived connection now, and stop holding idle keep-alive
    connections (gunicorn would wait KEEPALIVE seconds for each next request)."""
    worker.cfg.set("keepalive", 0)
    lifecycle.begin_shutdown("server restarting: reconnect to resume", hub)


def _note_cause(redis_client, keys, host, pid, cause):
    try:
        redis_client.set(keys.process_cause(host, pid), cause, ex=120)
    except Exception:
        log.debug("could not record the cause of exit", exc_info=True)


# -- in the gunicorn master ----------------------------------------------------------------
# The master talks to Redis with redis-py, through the same RedisConnections
# as the workers (one server, or the master the Sentinels name; TLS). Workers
# fork from the master, so they inherit its modules as they were imported,
# before gevent patched the standard library in them:
# - this module, and redis-py with it, is first imported in the master's
#   main thread (when_ready), before the first fork: never by a thread, which
#   a fork could catch half-way through an import;
# - a name bound at import keeps the unpatched function in the workers:
#   notably redis.retry's `sleep`, which redis-py calls only between retries
#   with a backoff. No client of ours retries with one (RedisConnections), so
#   no worker ever blocks its event loop there.

# - `import redis` also loads redis.asyncio, which nothing here uses and which
#   holds ssl.SSLContext itself: each gevent worker then warns that this one
#   module keeps the unpatched class. That warning alone is silenced (the
#   filter is inherited by the workers); any other module named in it still shows.
warnings.filterwarnings(
    "ignore",
    message=r"Monkey-patching ssl after ssl has already been "
    r"imported .*\(NOT patched\): \['redis\.asyncio\.connection \([^)]*\)'\]\. *$",
)

_master_redis = None  # the master's client, made on first use (in its main thread)


def _master_client(settings):
    global _master_redis

    if _master_redis is None:
        # blocking calls with short timeouts: the master must not hang on Redis
        _master_redis = RedisConnections.from_settings(settings).client(
            max_connections=2, timeout=2, socket_timeout=2
        )
    return _master_redis


def record_exit(pid):
    """child_exit: one entry in `<prefix>{proc}:restarts` with the worker's cause."""
    settings = load_settings()
    keys, host = Keys(settings["REDIS_PREFIX"]), socket.gethostname()
    try:
        client = _master_client(settings)
        cause = client.get(keys.process_cause(host, pid))
        entry = json.dumps(
            {
                "pid": pid,
                "host": host,
                "at": time.time(),
                "cause": cause or "died (crash or killed)",
            }
        )
        pipe = client.pipeline(transaction=False)
        pipe.lpush(keys.process_restarts(), entry)
        pipe.ltrim(keys.process_restarts(), 0, 199)
        pipe.delete(keys.process(host, pid))
        pipe.execute()
    except (redis.RedisError, OSError, ValueError) as exc:  # e.g. Redis gone at shutdown
        log.warning("could not record the exit of worker %s: %r", pid, exc)


def report_master(server):
    """when_ready: a thread in the master, its own report every REPORT_SECONDS."""
    settings = load_settings()
    keys, host, pid, started = (
        Keys(settings["REDIS_PREFIX"]),
        socket.gethostname(),
        os.getpid(),
        time.time(),
    )
    try:
        client = _master_client(settings)  # here, in the main thread: see above
    except ValueError as exc:
        log.warning("master: not reporting to Redis (%s)", exc)
        return
    # The master forks workers while this thread may be inside OpenSSL (a
    # rediss:// URL): a child forked then inherits OpenSSL's locks held and
    # hangs at its first hash. So a fork waits for the report in progress.
    talking = threading.Lock()
    os.register_at_fork(
        before=talking.acquire, after_in_parent=talking.release, after_in_child=talking.release
    )

    def loop():
        while True:
            report = {
                "role": "master",
                "pid": pid,
                "host": host,
                "started": started,
                "uptime": round(time.time() - started, 1),
                "rss": rss_bytes(),
                "workers": sorted(server.WORKERS),
                "at": time.time(),
            }
            try:
                with talking:
                    client.set(
                        keys.process(host, pid), json.dumps(report), ex=int(REPORT_SECONDS * 3)
                    )
            except (redis.RedisError, OSError) as exc:  # Redis away: report again next time
                log.debug("master: could not report to Redis (%s)", exc)
            time.sleep(REPORT_SECONDS)

    threading.Thread(target=loop, daemon=True, name="master-report").start()
