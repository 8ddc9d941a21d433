"""gunicorn settings: `gunicorn -c gunicorn.conf.py 'app:create_app()'` (what `make run` does).

Flat settings, as in gunicorn's example config, with every value taken from
core/config.py's one table (so `REUSE_PORT=off` and `RELOAD=on` mean what they
say, and a bad value stops the server with one line naming it); then server
hooks. No preload_app: each worker builds the app after gevent has
monkey-patched the standard library, so Redis sockets and locks are cooperative.
"""

import os
import resource

from core.config import ConfigError, instance_dir, read_settings  # light: no Redis, no Flask

try:
    settings = read_settings()
except ConfigError as exc:  # one line, not gunicorn's traceback of this file
    raise SystemExit(f"configuration error: {exc}") from None

# -- where to listen -----------------------------------------------------------
bind = settings["BIND"] or f"{settings['HOST']}:{settings['PORT']}"
backlog = settings["BACKLOG"]  # room for a burst of 10,000 connects
# Each worker gets its own SO_REUSEPORT socket and the kernel spreads new
# connections evenly. With one shared socket, the idle gevent worker that
# wakes first accepts nearly everything: 10,000 streams would sit on one worker.
reuse_port = settings["REUSE_PORT"]

# -- workers: processes x greenlets ----------------------------------------------
# WEB_CONCURRENCY=0: one per core (PM2's `instances: 0`). (Not `auto`: gunicorn
# itself reads the variable as an integer when it is imported.)
workers = settings["WEB_CONCURRENCY"] or len(os.sched_getaffinity(0))
worker_class = settings["WORKER_CLASS"]
# (also the app's cap on open streams, core/quotas.py)
worker_connections = settings["WORKER_CONNECTIONS"]
threads = settings["THREADS"]  # only for the gthread worker (benchmarks)
preload_app = False

# -- timeouts --------------------------------------------------------------------
# gevent workers heartbeat from their own greenlet, so hour-long streams are fine.
timeout = settings["TIMEOUT"]
graceful_timeout = settings["GRACEFUL_TIMEOUT"]
# Above the ticker's normal 5 s poll interval: a keep-alive that expires just
# as the next poll goes out resets that request (seen in the Locust runs).
keepalive = settings["KEEPALIVE"]

# -- development: restart workers when the code changes (RELOAD=1) -----------------
reload = settings["RELOAD"]

# -- gunicorn's control socket: one per server, not one per user -------------------
# (gunicorn's default, ~/.gunicorn/gunicorn.ctl, is shared by every server of the
# user; gunicorn removes whatever is at the path when it starts and stops, so
# servers sharing an instance directory get one each, named by their address)
control_socket = os.path.join(
    os.path.abspath(instance_dir()), "gunicorn-" + bind.replace("/", "_").replace(":", "-") + ".ctl"
)

# -- logging ---------------------------------------------------------------------
loglevel = settings["LOG_LEVEL"]
accesslog = settings["ACCESS_LOG"]  # "-" for stdout
errorlog = "-"


def _raise_open_files_limit(wanted):
    """Each connection is a file descriptor: lift the soft limit toward the hard
    one so a worker can hold 10,000+ connections. Workers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- server hooks ------------------------------------------------------------------


def on_starting(server):
    """Check the settings and the address, then, without REDIS_URL or
    REDIS_SENTINELS (and outside production), start a private redis-server
    for as long as this master runs; workers inherit its URL."""
    from core.config import load_settings

    try:  # the app's settings checked together (production's required ones too)
        load_settings()  # here, once, not in every worker with a traceback
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    _raise_open_files_limit(max(65536, worker_connections + 1024))
    _refuse_taken_addresses(server)
    from core import metrics  # PROMETHEUS_MULTIPROC_DIR, before any worker exists

    metrics.prepare_master(server)
    if settings["REDIS_CLUSTER"]:
        _check_cluster()
    if settings["REDIS_URL"] or settings["REDIS_SENTINELS"]:
        return
    from core import embedded_redis

    instance = instance_dir()
    try:
        redis_server = embedded_redis.start_for_instance(instance)
    except embedded_redis.EmbeddedRedisError as exc:
        raise SystemExit(f"cannot start the embedded Redis: {exc}") from None
    os.environ["REDIS_URL"] = redis_server.url
    server.log.info(
        "Started embedded redis-server at %s (data in %s/redis)", redis_server.url, instance
    )


def _check_cluster():
    """A cluster the workers' clients cannot start on is one line, here, not a
    traceback in every worker (core/redis_connections.py)."""
    from core.config import load_settings
    from core.redis_connections import ClusterNotReady, RedisConnections

    try:
        RedisConnections.from_settings(load_settings()).check_cluster()
    except ClusterNotReady as exc:
        raise SystemExit(f"configuration error: REDIS_CLUSTER: {exc}") from None


def _refuse_taken_addresses(server):
    """Stop at once, with one line, when an address to listen on is taken
    (core/listening.py says why; `make run`'s supervisor checks the same way)."""
    from core.listening import AddressTaken, refuse_taken

    if server.master_pid or os.environ.get("LISTEN_FDS"):
        return  # sockets handed over (USR2 re-exec, systemd): they are ours
    try:
        refuse_taken(server.cfg.address)
    except AddressTaken as exc:
        raise SystemExit(str(exc)) from None


def child_exit(server, worker):
    # In the master: record that a worker went away, and why (PM2's restart count).
    from core import metrics, monitor

    metrics.worker_exited(worker.pid)  # Prometheus: its live gauges go, restarts + 1
    monitor.record_exit(worker.pid)


def when_ready(server):
    host, _, port = bind.rpartition(":")
    shown = "localhost" if host in ("", "0.0.0.0", "127.0.0.1", "[::]") else host
    server.log.info("Serving on http://%s:%s/  (Ctrl-C stops everything)", shown, port)
    _log_where_the_admin_password_is(server)
    _rename_old_keys(server)
    from core import monitor

    monitor.report_master(server)
    # The RQ workers of /admin/jobs (JOB_WORKERS), children of this master.
    from workers import job_workers

    job_workers.start()


def _rename_old_keys(server):
    """Keys named by an earlier version get today's names (core/key_upgrade.py),
    before the workers use them."""
    import redis

    from core.config import load_settings
    from core.key_upgrade import rename_old_keys
    from core.keys import Keys
    from core.redis_connections import RedisConnections

    settings = load_settings()
    redis_client = RedisConnections.from_settings(settings).client(max_connections=1)
    try:
        rename_old_keys(redis_client, Keys(settings["REDIS_PREFIX"]), server.log)
    except redis.RedisError as exc:
        server.log.warning("Could not look for keys to rename (%s); next start", exc)
    finally:
        redis_client.close()  # (one server's pool: its connection closes with it)


RESET_PASSWORD = ".venv/bin/flask --app app users set-password"  # core/users.py's CLI


def _log_where_the_admin_password_is(server):
    """One line at every start, from the master (when_ready runs once, before
    the workers): where the administrator's password is and how to reset it.
    The demo admin's random password is logged only once, by the worker that
    creates the account (core/users.py seed_demo_users), and is kept nowhere."""
    from core.config import load_settings

    settings = load_settings()  # already checked in on_starting
    if not settings["DEMO_USERS"]:
        server.log.info(
            "Administrators: no demo users (DEMO_USERS off); create one with "
            "`.venv/bin/flask --app app users create NAME --admin`, reset a "
            "password with `%s NAME`",
            RESET_PASSWORD,
        )
    elif settings["DEMO_ADMIN_PASSWORD"]:
        server.log.info(
            "Administrator: user admin, password DEMO_ADMIN_PASSWORD (as it was "
            "when the account was created); reset it with `%s admin`",
            RESET_PASSWORD,
        )
    else:
        server.log.info(
            "Administrator: user admin; its random password was printed in this "
            'log ("Demo users: ...") when the account was created, at the first '
            "start on this Redis, and is kept nowhere else; reset it with "
            "`%s admin`",
            RESET_PASSWORD,
        )


def post_fork(server, worker):
    # Workers are numbered by their age: 1, 2, ... (restarts get new numbers).
    os.environ["WORKER_NUMBER"] = str(worker.age)


def post_worker_init(worker):
    app = worker.wsgi
    # Vital signs to Redis, the memory limit, prompt hand-over on stop (core/monitor.py).
    from core import monitor

    monitor.start(worker, app)
    # Streams opened with credentials that change end at once (core/revocation.py).
    from core import revocation

    revocation.watch(app.extensions["hub"])
    _tune_garbage_collector()
    # The hub's direct writes produce the bytes of gunicorn's HTTP/1.x responses.
    from core import connection

    connection.direct_writes_allowed = getattr(worker.cfg, "protocol", "http") == "http"
    # A parked long-poll's connection goes back to gunicorn for its next request.
    from core import parking

    parking.init_worker(worker)
    # DEMO_USERS=1: the first worker up creates jack/beanstalk and an admin
    # (and logs the admin's password when it was generated).
    if app.config.get("DEMO_USERS"):
        from core.users import UserError, seed_demo_users

        try:
            seed_demo_users(app.extensions["users"], app.config["DEMO_ADMIN_PASSWORD"], worker.log)
        except UserError as exc:  # a DEMO_ADMIN_PASSWORD our password rules refuse
            worker.log.error("DEMO_ADMIN_PASSWORD: %s", exc)
            raise SystemExit(3) from None  # gunicorn's "worker failed to boot": stop


def worker_exit(server, worker):
    # Called in the exiting worker, and in the master for a worker that died
    # unseen: only the worker has connections to finish.
    if worker.pid == os.getpid():
        from core import monitor

        monitor.drain(worker)


def _tune_garbage_collector():
    """A worker holding 10,000 connections has millions of live objects, and
    CPython's default thresholds run a collection every 700 allocations and a
    full one each time the heap grows by a quarter: while connections pour in,
    that was about a quarter of a worker's CPU (docs/fanout.md). Freezing what
    the app imported moves it out of every future collection, and a larger
    first generation makes collections rarer; cycles are still collected."""
    import gc

    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def on_exit(server):
    from core import embedded_redis
    from workers import job_workers

    job_workers.stop()  # their current jobs finish (10 s) or are reported failed
    embedded_redis.stop_for_instance()
