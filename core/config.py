"""Settings from environment variables, in one place.

Every knob the application reads is listed in SETTINGS with its default and a
line of documentation (the README's configuration table is this list).
`load_settings()` returns a plain dict that becomes Flask's `app.config`;
gunicorn.conf.py reads the server's knobs (BIND, PORT, WEB_CONCURRENCY, ...)
from the same table with `read_settings()`, so one rule parses every value.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# name: (type, default, description)
SETTINGS: dict[str, tuple[Callable[[str], Any], Any, str]] = {
    "APP_ENV": (
        str,
        "dev",
        "`dev` or `production`; production refuses to start without "
        "SECRET_KEY and REDIS_URL (or REDIS_SENTINELS)",
    ),
    "REDIS_URL": (
        str,
        None,
        "Redis to use; unset in dev: `make run` starts an embedded "
        "redis-server and writes its URL to `instance/redis.url`",
    ),
    "REDIS_CLUSTER": (
        bool,
        False,
        "REDIS_URL names any node of a Redis Cluster (7.0 or later): channels "
        "and their notifications are sharded over its masters (sharded pub/sub), "
        "and every part of the app follows slot moves and failovers by itself",
    ),
    "REDIS_SENTINELS": (
        lambda raw: sentinel_addresses(raw),
        None,
        "instead of REDIS_URL: `host:port,host:port,...` of the Redis "
        "Sentinels that know the master; every part of the app follows a "
        "failover by itself",
    ),
    "REDIS_SENTINEL_SERVICE": (
        str,
        "mymaster",
        "with REDIS_SENTINELS: the name the Sentinels monitor the master under",
    ),
    "REDIS_USERNAME": (
        str,
        None,
        "with REDIS_SENTINELS: ACL user of the master and replicas "
        "(with REDIS_URL it goes in the URL)",
    ),
    "REDIS_PASSWORD": (
        str,
        None,
        "with REDIS_SENTINELS: password of the master and replicas "
        "(with REDIS_URL it goes in the URL)",
    ),
    "REDIS_SENTINEL_PASSWORD": (
        str,
        None,
        "with REDIS_SENTINELS: the Sentinels' own password, when they require one",
    ),
    "REDIS_TLS": (
        bool,
        False,
        "with REDIS_SENTINELS: TLS to the Sentinels and the servers, "
        "certificates and host names checked (as `rediss://` does)",
    ),
    "REDIS_TLS_CA_FILE": (
        str,
        None,
        "with REDIS_TLS: the CA bundle to check certificates against (unset: the system's)",
    ),
    "PUBLISH_MIN_REPLICAS": (
        int,
        0,
        "replicas that must confirm a message (Redis WAIT) "
        "before `POST /pub` answers 201; fewer in time: 503. 0: no wait",
    ),
    "PUBLISH_REPLICA_TIMEOUT_MS": (
        int,
        500,
        "with PUBLISH_MIN_REPLICAS: how long to wait for the replicas' confirmation",
    ),
    "REDIS_POOL_SIZE": (
        int,
        64,
        "Redis connections one worker opens at most for requests "
        "(a request waits up to 5 s for a free one); plus its listener's "
        "and the rate limiter's",
    ),
    "REDIS_PREFIX": (str, "rt:", "prefix of every Redis key and pub/sub channel of this app"),
    "SECRET_KEY": (str, None, "signs cookies; dev: generated once into `instance/secret_key`"),
    "INSTANCE_DIR": (
        str,
        str(PROJECT_ROOT / "instance"),
        "where dev secrets, the embedded Redis' data and its URL are kept",
    ),
    "STREAM_MAXLEN": (int, 1000, "messages retained per channel for resume (approximate trim)"),
    "STREAM_TTL_SECONDS": (int, 7 * 24 * 3600, "a channel idle this long is forgotten"),
    "SUBSCRIBER_QUEUE_SIZE": (
        int,
        1000,
        "messages buffered per client before it is cut off as a slow consumer",
    ),
    "SUBSCRIBER_QUEUE_BYTES": (
        int,
        1024 * 1024,
        "bytes of messages buffered per client before it is cut off as a slow consumer",
    ),
    "HEARTBEAT_SECONDS": (float, 15.0, "SSE comment / WebSocket check interval on idle streams"),
    "LONGPOLL_TIMEOUT_SECONDS": (float, 25.0, "how long a long-poll request is held"),
    "LONGPOLL_MAX_BYTES": (
        int,
        256 * 1024,
        "a long-poll answer takes no more messages past "
        "this size (always one); the rest follow on the next poll",
    ),
    "LONGPOLL_WRITE_SECONDS": (
        float,
        10.0,
        "a long-poll answer the client has not read "
        "whole within this time is cut off (gevent workers)",
    ),
    "SSE_RETRY_MS": (int, 2000, "`retry:` sent to EventSource clients"),
    "MAX_MESSAGE_BYTES": (
        int,
        64 * 1024,
        "largest request body, and so message accepted by "
        "`POST /pub/<channel>` (413 beyond, chunked or not)",
    ),
    "BODY_TIMEOUT_SECONDS": (
        float,
        10.0,
        "a request body gets this long, plus its size at "
        "BODY_MIN_BYTES_PER_SECOND, to arrive; 408 and closed after",
    ),
    "BODY_MIN_BYTES_PER_SECOND": (
        int,
        4096,
        "slowest request body accepted (after BODY_TIMEOUT_SECONDS)",
    ),
    "WS_PING_SECONDS": (float, 25.0, "WebSocket ping interval (dead peers are dropped)"),
    "ALLOWED_ORIGINS": (
        str,
        "",
        "extra Origins trusted, comma-separated: to open WebSockets, "
        "and to make cookie-authenticated state changes without an "
        "X-CSRF-Token (CSRF); the server's own origin always is",
    ),
    "DEMO_USERS": (
        bool,
        False,
        "seed the demo users jack/beanstalk and admin (never in "
        "production); `make run` turns it on",
    ),
    "DEMO_ADMIN_PASSWORD": (
        str,
        None,
        "the demo admin's password; unset: a random one, "
        "printed in the log when the admin is created",
    ),
    "SESSION_IDLE_SECONDS": (int, 2 * 3600, "a session unused this long expires"),
    "JWT_TTL_SECONDS": (int, 3600, "lifetime of tokens from `POST /auth/token`"),
    "JWT_ISSUER": (str, "realtime-flask", "`iss` of issued tokens (checked on use)"),
    "JWT_AUDIENCE": (str, "realtime-flask-api", "`aud` of issued tokens (checked on use)"),
    "LOGIN_RATE_LIMIT": (
        str,
        "20 per minute",
        "attempts per client address, shared by every "
        "login endpoint (Basic, challenge, respond, login, token)",
    ),
    # -- quotas (core/quotas.py): what one client may do ------------------------
    "CONNECTIONS_PER_ADDRESS": (
        int,
        200,
        "open streams (SSE, long-poll, WebSocket) one client "
        "address may hold on one worker; more get 429 (load "
        "generators on one address need it raised)",
    ),
    "WORKER_CONNECTIONS": (
        int,
        10000,
        "connections one worker holds: requests in progress "
        "(gunicorn's pool) and, separately, open streams, idle ones "
        "included; a stream beyond it gets 503",
    ),
    "PUBLISH_RATE_LIMIT": (
        str,
        "120 per minute",
        "`POST /pub/<channel>` per client address and per account",
    ),
    # -- editor --
    "EDITOR_DOC_TTL_DAYS": (
        int,
        7,
        "an editor document unused this long is forgotten "
        "(every Redis key of it expires; refreshed on use)",
    ),
    "EDITOR_MAX_DOCS": (
        int,
        1000,
        "live editor documents kept at once; opening a new one beyond this is refused (close 1008)",
    ),
    "EDITOR_OPLOG_BYTES": (
        int,
        1024 * 1024,
        "bytes of an editor document's op log (and of "
        "its channel's stream) kept for catch-up; the newest op always stays",
    ),
    "EDITOR_MAX_OP_LAG": (
        int,
        100,
        "an editor op made against a version more than this many "
        "ops old is not merged: the client gets a fresh snapshot instead",
    ),
    "EDITOR_DOCS_RATE_LIMIT": (
        str,
        "30 per minute",
        "editor documents created per client address and per account",
    ),
    "EDITOR_OP_RATE_LIMIT": (
        str,
        "2400 per minute",
        "editor WebSocket frames (ops and presence) per client address, counted per worker",
    ),
    # -- accounts --
    "LOGIN_ACCOUNT_RATE_LIMIT": (
        str,
        "10 per minute",
        "login attempts per user name, from "
        "any number of addresses, shared by every login endpoint",
    ),
    "TRUSTED_HOSTS": (
        lambda raw: [h.strip() for h in raw.split(",") if h.strip()],
        None,
        "host names this server answers to, comma-separated (`.example.com`: "
        "and its subdomains); another Host gets 400. Unset: any Host",
    ),
    # -- Q&A and drawing --
    "QA_POST_RATE_LIMIT": (
        str,
        "30 per minute",
        "Q&A questions and answers together, per client address and per account",
    ),
    "QA_SELECT_RATE_LIMIT": (
        str,
        "120 per minute",
        "`POST /qa/select` per client address and per account",
    ),
    "QA_QUESTION_TTL_SECONDS": (
        int,
        24 * 3600,
        "a Q&A question (with its answers) is removed this long after it was asked",
    ),
    "QA_MAX_QUESTIONS": (
        int,
        100,
        "questions on the Q&A board; past it the oldest rolls off (with its answers)",
    ),
    "QA_MAX_ANSWERS": (int, 100, "answers one Q&A question takes; more get 409"),
    "QA_ANSWER_BYTES": (
        int,
        32 * 1024,
        "bytes (as stored JSON) of one Q&A question's answers; an answer past it gets 409",
    ),
    "DRAW_HISTORY_BYTES": (
        int,
        256 * 1024,
        "bytes of drawing segments kept for newcomers "
        "(at most 20,000 segments); the oldest roll off",
    ),
    "DRAW_MOVE_RATE_LIMIT": (
        str,
        "120 per second",
        "drawing frames (moves, clears) per client "
        "address on one worker; past it the socket is closed 1008",
    ),
    "TICKER_CALL_IN_MS": (int, 5000, "the ticker's normal poll interval, told to clients"),
    "TICKER_TARGET_RPS": (
        float,
        200.0,
        "quote requests per second above which callIn grows in proportion",
    ),
    "TICKER_UPSTREAM_URL": (
        str,
        None,
        "quote provider URL template with `{symbol}`, answering "
        "JSON with a numeric `price` (unset: the simulated market)",
    ),
    "TICKER_UPSTREAM_INTERVAL": (
        float,
        5.0,
        "at most one provider call per symbol this often (seconds), whatever the number of pollers",
    ),
    "MAX_WORKER_MEMORY_MB": (
        int,
        None,
        "a worker whose RSS exceeds this stops accepting, "
        "hands its clients over and is replaced (unset: no limit)",
    ),
    "CPU_OFFLOAD": (
        bool,
        True,
        "under gevent, run password hashing in gevent's thread pool; "
        "off: on the hub, stalling every other connection of the worker "
        "(only to measure that, bench/threads_vs_events.py)",
    ),
    "SERVED_BY_HEADER": (
        bool,
        None,
        "add `X-Served-By: host/pid` to responses; default on in dev, off in production",
    ),
    "TRUSTED_PROXIES": (
        int,
        0,
        "reverse proxies in front of gunicorn whose X-Forwarded-For/"
        "-Proto/-Host to believe (nginx alone: 1); 0 trusts none",
    ),
    "METRICS_TOKEN": (
        str,
        None,
        "a bearer token that may read `/metrics` (Prometheus' "
        "scrapes); unset: only administrators and METRICS_ALLOW_NETWORKS",
    ),
    "METRICS_ALLOW_NETWORKS": (
        str,
        "",
        "client networks that may read `/metrics` without "
        "credentials, comma-separated CIDRs (`10.0.0.0/8`); empty: none",
    ),
    # -- background jobs (blueprints/jobs.py, workers/jobs.py) --
    "JOBS_LOG_DIR": (
        str,
        None,
        "the directory whose log files administrators may analyse "
        "at /admin/jobs (unset: `<INSTANCE_DIR>/logs`)",
    ),
    "JOBS_MAX_PROCS": (int, 4, "child processes one log-analysis job may ask for"),
    "JOBS_UPLOAD_MAX_BYTES": (
        int,
        64 * 1024 * 1024,
        "largest log upload to /admin/jobs/upload (413 beyond)",
    ),
    "JOBS_TTL_SECONDS": (
        int,
        24 * 3600,
        "a job, its result, its progress stream and its "
        "upload are forgotten this long after its last change",
    ),
    "JOBS_CANCEL_GRACE_SECONDS": (
        float,
        3.0,
        "a cancelled job's children get SIGTERM, then SIGKILL after this long",
    ),
    "JOBS_TIMEOUT_SECONDS": (int, 3600, "a job running longer is stopped by RQ and fails"),
    "JOBS_READ_BYTES_PER_SECOND": (
        int,
        None,
        "cap on each job child's reading rate, to spare the disk (unset: no cap)",
    ),
    "JOB_WORKERS": (
        int,
        1,
        "RQ worker processes the gunicorn master starts for the jobs "
        "(0: none here; run `python -m workers.job_workers` elsewhere)",
    ),
    # -- `make run`'s supervisor (workers/supervise.py, under supervisord) --------
    "JOB_WORKER_COMMAND": (
        str,
        None,
        "with `make run`: the command of each job worker, split as a shell would "
        "(unset: this Python with `-m workers.job_workers`; e.g. prefix `nice -n 10`)",
    ),
    "JOB_MIN_UPTIME_SECONDS": (
        int,
        3,
        "with `make run`: a job worker that exits sooner after its start failed to "
        "start and is retried after a back-off (1 s, 2 s, 3 s, ...; PM2's min_uptime)",
    ),
    "JOB_MAX_RESTARTS": (
        int,
        10,
        "with `make run`: a job worker that failed to start this many times in a "
        "row is given up (state FATAL, shown at /admin/monitor; PM2's max_restarts)",
    ),
    "LOG_MAX_BYTES": (
        int,
        10 * 1024 * 1024,
        "with `make run`: each process's log in `<INSTANCE_DIR>/proclogs` is rotated past this size",
    ),
    "LOG_BACKUPS": (
        int,
        5,
        "with `make run`: rotated process logs kept (`web.log.1`, ...) beside the current one",
    ),
    # -- the server (gunicorn.conf.py reads these from this table) ----------------
    "HOST": (str, "127.0.0.1", "address to listen on (with PORT, unless BIND is set)"),
    "PORT": (lambda raw: port_number("PORT", raw), 8000, "port to listen on"),
    "BIND": (str, None, "listen address instead of HOST and PORT (`host:port`, `unix:/path`)"),
    "WEB_CONCURRENCY": (int, 2, "worker processes; 0: one per CPU core"),
    "WORKER_CLASS": (
        str,
        "gevent",
        "`gevent` in production; `gthread`/`sync` exist for the threads-vs-events benchmarks",
    ),
    "THREADS": (int, 1, "threads per worker, only for the gthread worker (benchmarks)"),
    "REUSE_PORT": (
        bool,
        True,
        "one `SO_REUSEPORT` socket per worker so the kernel spreads "
        "connections evenly (with one shared socket, the first idle gevent worker "
        "accepts nearly all of them)",
    ),
    "BACKLOG": (int, 4096, "listen backlog, for bursts of connects"),
    "TIMEOUT": (
        int,
        30,
        "gunicorn's worker timeout (gevent workers heartbeat from their own "
        "greenlet, so hour-long streams are fine)",
    ),
    "GRACEFUL_TIMEOUT": (int, 30, "how long a stopping or reloading worker drains its clients"),
    "KEEPALIVE": (int, 15, "HTTP keep-alive, above the ticker's 5 s poll interval"),
    "LOG_LEVEL": (
        lambda raw: one_of("LOG_LEVEL", raw, LOG_LEVELS),
        "info",
        "gunicorn's and the app's log level: debug, info, warning, error, critical",
    ),
    "ACCESS_LOG": (str, None, "where gunicorn logs each request (`-`: stdout); unset: off"),
    "RELOAD": (bool, False, "restart workers when the code changes (development)"),
}

# Settings for which 0 is meaningful (every other number must be positive).
ZERO_ALLOWED = {"TRUSTED_PROXIES", "PUBLISH_MIN_REPLICAS", "WEB_CONCURRENCY", "JOB_WORKERS"}
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and why."""


def _parse(name: str, kind: Callable[[str], Any], raw: str) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected {kind.__name__}") from None
    if kind in (int, float) and name in ZERO_ALLOWED:
        if value < 0:
            raise ConfigError(f"{name}={raw!r}: must be 0 or more")
    elif kind in (int, float) and value <= 0:
        raise ConfigError(f"{name}={raw!r}: must be positive")
    return value


def port_number(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"{name}={raw!r}: expected a port number, 1 to 65535")
    return int(raw)


def one_of(name: str, raw: str, choices: Sequence[str]) -> str:
    if raw.strip().lower() not in choices:
        raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw.strip().lower()


def sentinel_addresses(raw: str) -> list[tuple[str, int]]:
    """`"h1:26379,[::1]:26380"` -> [("h1", 26379), ("::1", 26380)]."""
    addresses = []
    for item in (part.strip() for part in raw.split(",")):
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"REDIS_SENTINELS={raw!r}: expected host:port,host:port,... "
                f"({item!r} is not host:port)"
            )
        addresses.append((host, int(port)))
    return addresses


def redis_location(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Where Redis is, as keyword arguments for core.redis_connections'
    RedisConnections (the workers' clients and the master's): a URL, or Sentinels."""
    if settings["REDIS_CLUSTER"]:
        return {"url": settings["REDIS_URL"], "cluster": True}
    if settings["REDIS_SENTINELS"]:
        return {
            "sentinels": settings["REDIS_SENTINELS"],
            "service": settings["REDIS_SENTINEL_SERVICE"],
            "username": settings["REDIS_USERNAME"],
            "password": settings["REDIS_PASSWORD"],
            "sentinel_password": settings["REDIS_SENTINEL_PASSWORD"],
            "tls": settings["REDIS_TLS"],
            "tls_ca_file": settings["REDIS_TLS_CA_FILE"],
        }
    return {"url": settings["REDIS_URL"]}


def _dev_secret(instance_dir: str | os.PathLike[str], filename: str) -> str:
    """A random secret created once and kept under instance/ (dev mode only)."""
    path = Path(instance_dir) / filename
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # O_EXCL: two workers starting at once must agree on one secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def instance_dir(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("INSTANCE_DIR") or SETTINGS["INSTANCE_DIR"][1]


def redis_url_file(instance_dir: str | os.PathLike[str]) -> Path:
    """Where `make run` leaves the embedded Redis' URL for other programs."""
    return Path(instance_dir) / "redis.url"


MIN_PASSWORD_LENGTH = 8  # core.users' rule, checked here for DEMO_ADMIN_PASSWORD at startup


def read_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting of SETTINGS from `env` (default os.environ), parsed by
    the one rule (`_parse`), defaults for the unset ones; no file is read or
    written. gunicorn.conf.py takes the server's settings from here."""
    env = os.environ if env is None else env
    settings = {}
    for name, (kind, default, _doc) in SETTINGS.items():
        raw = env.get(name)
        settings[name] = default if raw is None or raw == "" else _parse(name, kind, raw)
    return settings


def load_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The app's settings: read_settings(), checked together, with the dev
    defaults filled in (a generated SECRET_KEY, the embedded Redis' URL)."""
    settings = read_settings(env)

    if settings["APP_ENV"] not in ("dev", "production"):
        raise ConfigError(f"APP_ENV={settings['APP_ENV']!r}: expected dev or production")
    production = settings["APP_ENV"] == "production"
    if settings["SERVED_BY_HEADER"] is None:
        settings["SERVED_BY_HEADER"] = not production

    if not settings["SECRET_KEY"]:
        if production:
            raise ConfigError("SECRET_KEY must be set when APP_ENV=production")
        settings["SECRET_KEY"] = _dev_secret(settings["INSTANCE_DIR"], "secret_key")
    if production:
        settings["DEMO_USERS"] = False  # never seed known passwords in production
    demo_password = settings["DEMO_ADMIN_PASSWORD"]
    if settings["DEMO_USERS"] and demo_password and len(demo_password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"DEMO_ADMIN_PASSWORD: passwords have at least {MIN_PASSWORD_LENGTH} characters"
        )

    if settings["REDIS_SENTINELS"]:
        if settings["REDIS_URL"]:
            raise ConfigError(
                "REDIS_URL and REDIS_SENTINELS are both set: use one "
                "(with Sentinel, the master's address comes from them)"
            )
    else:
        server_only = [
            name
            for name in (
                "REDIS_USERNAME",
                "REDIS_PASSWORD",
                "REDIS_SENTINEL_PASSWORD",
                "REDIS_TLS_CA_FILE",
            )
            if settings[name]
        ] + (["REDIS_TLS"] if settings["REDIS_TLS"] else [])
        if server_only:
            raise ConfigError(
                f"{', '.join(server_only)}: only with REDIS_SENTINELS "
                "(with REDIS_URL, credentials and rediss:// go in the URL)"
            )
    if settings["REDIS_CLUSTER"] and (settings["REDIS_SENTINELS"] or not settings["REDIS_URL"]):
        raise ConfigError(
            "REDIS_CLUSTER: set REDIS_URL to any node of the cluster "
            "(a cluster has no Sentinels: it fails over by itself)"
        )
    if not settings["REDIS_URL"] and not settings["REDIS_SENTINELS"]:
        if production:
            raise ConfigError("REDIS_URL (or REDIS_SENTINELS) must be set when APP_ENV=production")
        # The embedded redis-server started by `make run` leaves its URL here,
        # so `python -m workers.broadcast` and `flask` commands find it.
        try:
            settings["REDIS_URL"] = redis_url_file(settings["INSTANCE_DIR"]).read_text().strip()
        except FileNotFoundError:
            pass
    settings["ALLOWED_ORIGINS"] = [
        o.strip().rstrip("/") for o in settings["ALLOWED_ORIGINS"].split(",") if o.strip()
    ]
    return settings
