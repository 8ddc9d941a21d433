"""Each worker's vital signs, reported to Redis, and its memory limit.

`start(worker, app)` runs in every gunicorn worker (post_worker_init). Every
REPORT_SECONDS it:
- notices (within CHECK_SECONDS) that gunicorn asked the worker to stop (a
  reload, a shutdown) and ends its long-lived connections at once (core.lifecycle);
- stops the worker gracefully when its RSS is over MAX_WORKER_MEMORY_MB:
  it stops accepting, its clients move to the other workers, and gunicorn
  starts a fresh one (PM2's max_memory_restart, without letting it grow further);
- writes pid, host, uptime, RSS, CPU, open connections per transport and
  requests served to `<prefix>proc:<host>:<pid>`, expiring after 3 reports.
The master records restarts and their causes (`record_exit`, from child_exit).
"""

import json
import logging
import os
import socket
import time

from core import lifecycle
from core.config import load_settings, redis_location
from core.keys import Keys
from core.offload import spawn

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
        report = {
            "role": "worker", "pid": pid, "ppid": os.getppid(), "host": host,
            "worker": os.environ.get("WORKER_NUMBER"), "started": started,
            "uptime": round(time.time() - started, 1), "rss": rss, "cpu": round(cpu, 1),
            "connections": lifecycle.open_connections(),
            "requests": lifecycle.requests_served[0],
            "subscribers": hub.stats()["subscribers"], "notifications": hub.notifications,
            "at": time.time(),
        }
        try:
            redis_client.set(keys.process(host, pid), json.dumps(report),
                             ex=int(REPORT_SECONDS * 3))
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
# The master must not import redis-py: workers fork from it, and gevent has to
# patch sockets and ssl before redis-py is imported (a module half-imported by
# a master thread at fork time is broken in the child). A few RESP commands on a
# plain socket are all the master needs.


class MasterRedis:
    """Just enough of a Redis client for the master, which must not import
    redis-py: redis:// and rediss:// URLs, read the way redis-py reads them,
    or the master of REDIS_SENTINELS, asked for at each call."""

    def __init__(self, url=None, sentinels=(), service=None, username=None, password=None,
                 sentinel_password=None, tls_ca_file=None, tls=False):
        from urllib.parse import parse_qsl, unquote, urlsplit

        self.sentinels, self.service = list(sentinels), service
        self.sentinel_auth = ("AUTH", sentinel_password) if sentinel_password else None
        if self.sentinels:
            self.host, self.port, self.db = None, None, "0"
            credentials = [c for c in (username, password) if c]
            self.auth = ("AUTH", *credentials) if password else None
            self.tls = _tls_context({"ssl_ca_certs": tls_ca_file} if tls_ca_file else {}) \
                if tls else None
            return
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"the master reports over redis:// or rediss://, not "
                             f"{parts.scheme}://")
        query = dict(parse_qsl(parts.query))
        self.host, self.port = parts.hostname or "localhost", parts.port or 6379
        credentials = [unquote(c) for c in (parts.username, parts.password) if c]
        self.auth = ("AUTH", *credentials) if parts.password else None
        self.db = query.get("db") or (parts.path or "/0").lstrip("/") or "0"
        self.tls = _tls_context(query) if parts.scheme == "rediss" else None

    @classmethod
    def from_settings(cls, settings):
        location = redis_location(settings)
        if not location.get("sentinels") and not location.get("url"):
            raise ValueError("no REDIS_URL")
        return cls(**location)

    def __call__(self, *commands):
        """Run commands in one connection (to the master); returns their replies."""
        address = self._master() if self.sentinels else (self.host, self.port)
        setup = ([self.auth] if self.auth else []) + [("SELECT", self.db)]
        return self._run(address, setup, commands)

    def _master(self):
        """The master's address, from the first Sentinel that answers."""
        errors = []
        for address in self.sentinels:
            setup = [self.sentinel_auth] if self.sentinel_auth else []
            try:
                (reply,) = self._run(address, setup, [
                    ("SENTINEL", "get-master-addr-by-name", self.service)])
            except OSError as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            if reply:
                return reply[0], int(reply[1])
            errors.append(f"{address[0]}:{address[1]}: no master {self.service!r}")
        raise OSError(f"no master from the Sentinels ({'; '.join(errors)})")

    def _run(self, address, setup, commands):
        with socket.create_connection(address, timeout=2) as raw:
            conn = self.tls.wrap_socket(raw, server_hostname=address[0]) if self.tls else raw
            payload = b"".join(_encode(c) for c in setup + list(commands))
            conn.sendall(payload)
            reader = conn.makefile("rb")
            replies = [_decode(reader) for _ in setup + list(commands)]
        return replies[len(setup):]


def _tls_context(query):
    """redis-py's TLS options from a rediss:// query, with its defaults:
    the server's certificate and host name are checked."""
    import ssl

    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    mode = modes.get(query.get("ssl_cert_reqs", "required").lower())
    if mode is None:
        raise ValueError(f"ssl_cert_reqs={query['ssl_cert_reqs']!r}: expected none, "
                         "optional or required")
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"),
                                         capath=query.get("ssl_ca_path"))
    context.check_hostname = mode != ssl.CERT_NONE and query.get(
        "ssl_check_hostname", "true").upper() not in ("0", "F", "FALSE", "N", "NO")
    context.verify_mode = mode
    if query.get("ssl_certfile"):
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    return context


def _encode(command):
    parts = [str(a).encode() for a in command]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _decode(reader):
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise OSError(rest.decode())
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else reader.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [_decode(reader) for _ in range(int(rest))]
    return int(rest) if kind == b":" else rest.decode()


def record_exit(pid):
    """child_exit: one entry in `<prefix>proc:restarts` with the worker's cause."""
    settings = load_settings()
    keys, host = Keys(settings["REDIS_PREFIX"]), socket.gethostname()
    try:
        run = MasterRedis.from_settings(settings)
        (cause,) = run(("GET", keys.process_cause(host, pid)))
        entry = json.dumps({"pid": pid, "host": host, "at": time.time(),
                            "cause": cause or "died (crash or killed)"})
        run(("LPUSH", keys.process_restarts(), entry),
            ("LTRIM", keys.process_restarts(), 0, 199), ("DEL", keys.process(host, pid)))
    except (OSError, ValueError) as exc:  # e.g. Redis already gone at shutdown
        log.warning("could not record the exit of worker %s: %r", pid, exc)


def report_master(server):
    """A thread in the master: its own report every REPORT_SECONDS."""
    import threading

    settings = load_settings()
    keys, host, pid, started = (Keys(settings["REDIS_PREFIX"]), socket.gethostname(),
                                os.getpid(), time.time())
    # The master forks workers while this thread may be inside OpenSSL (a
    # rediss:// URL): a child forked then inherits OpenSSL's locks held and
    # hangs at its first hash. So a fork waits for the report in progress.
    talking = threading.Lock()
    os.register_at_fork(before=talking.acquire, after_in_parent=talking.release,
                        after_in_child=talking.release)

    def loop():
        try:
            with talking:
                run = MasterRedis.from_settings(settings)
        except (ValueError, OSError) as exc:  # OSError: e.g. no such CA file
            log.warning("master: not reporting to Redis (%s)", exc)
            return
        while True:
            report = {"role": "master", "pid": pid, "host": host, "started": started,
                      "uptime": round(time.time() - started, 1), "rss": rss_bytes(),
                      "workers": sorted(server.WORKERS), "at": time.time()}
            try:
                with talking:
                    run(("SET", keys.process(host, pid), json.dumps(report),
                         "EX", int(REPORT_SECONDS * 3)))
            except OSError:
                pass  # Redis away: report again next time
            time.sleep(REPORT_SECONDS)

    threading.Thread(target=loop, daemon=True, name="master-report").start()
