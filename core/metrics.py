"""Prometheus metrics (prometheus_client), in one place; served at /metrics
(blueprints/processes.py).

Under gunicorn every worker is a process of its own: prometheus_client's
multiprocess mode keeps each process' values in files of one directory,
PROMETHEUS_MULTIPROC_DIR, and a scrape of any worker adds up the files of all
of them (counters summed, dead workers' included; gauges of live workers
only). The gunicorn master makes that directory, empty, at each start
(`prepare_master`, from on_starting) and marks a worker's files dead when it
exits (`worker_exited`, from child_exit). Without the variable (the Flask test
client, `flask` commands) each app has its own in-memory registry.

The gunicorn master imports this module to set that directory, and every
worker forks from the master: so the module stays light at the top. Neither
Flask nor prometheus_client is imported until a function below needs it:
prometheus_client picks where values live (memory, or files in the
directory) when it is first imported, which in the master is right after
`prepare_master` set the directory (the workers inherit it so).

The delivery path does not call prometheus_client: the hub, the
subscriptions and the stream log keep plain integer counters (core/hub.py,
core/subscription.py, core/stream_log.py), which `Metrics.flush` copies into
the metrics every REPORT_SECONDS (core/monitor.py's loop) and before each
scrape. A broadcast to 10,000 subscribers adds to one integer once, not
10,000 times to a locked, file-backed value.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from core import lifecycle
from core.config import ConfigError, instance_dir, load_settings

if TYPE_CHECKING:  # (not imported at run time: see above)
    from flask import Flask
    from prometheus_client import Counter
    from werkzeug.routing import Rule

    from core.hub import Hub

    Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_STARTED = "realtime.metrics.started"  # request environ: when before_request ran
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# Request latencies from 1 ms (most answers) to 10 s (a slow Redis, a login's hash).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# -- settings -------------------------------------------------------------------------------


def allowed_networks(text: str | None) -> list[Network]:
    """METRICS_ALLOW_NETWORKS, `"10.0.0.0/8, 127.0.0.1/32"`, as ip_network objects."""
    networks: list[Network] = []
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise ConfigError(
                f"METRICS_ALLOW_NETWORKS={text!r}: {exc} (expected CIDRs such "
                "as 10.0.0.0/8, comma-separated)"
            ) from None
    return networks


# -- in the gunicorn master ---------------------------------------------------------------

_restarts: Counter | None = None  # the master's counter of worker exits (prepare_master)


def directory_for(bind: Iterable[str], instance: str | None = None) -> str:
    """The multiprocess directory of the server listening on `bind` (gunicorn's
    list of addresses): one per server under the instance directory, named by
    its addresses as gunicorn.conf.py names the control socket, so servers
    sharing an instance directory keep their metrics apart."""
    name = "metrics-" + ",".join(bind).replace("/", "_").replace(":", "-")
    return os.path.join(os.path.abspath(instance or instance_dir()), name)


def prepare_master(server: Any) -> None:  # gunicorn's Arbiter
    """on_starting, before any worker exists: check the metrics settings, point
    PROMETHEUS_MULTIPROC_DIR (inherited by every worker) at an emptied
    directory, and count worker exits from here on."""
    global _restarts

    try:
        allowed_networks(load_settings()["METRICS_ALLOW_NETWORKS"])
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    if "prometheus_client" in sys.modules:  # it would keep its values in memory
        raise SystemExit(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR "
            "was set: /metrics would show only the worker that answers"
        )
    path = directory_for(server.cfg.bind)
    if not server.master_pid:
        # A fresh start: the files of a previous run are stale. (A USR2
        # re-exec, with a master_pid, shares the directory with the old
        # master's workers, which still write there.)
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.environ[DIRECTORY_VARIABLE] = path

    from prometheus_client import Counter

    # Created now, so the scrape shows 0 before the first exit.
    _restarts = Counter(
        "realtime_worker_restarts",
        "Workers that exited (crashed, killed, "
        "over the memory limit, or reloaded); gunicorn replaces each.",
        registry=None,
    )


def worker_exited(pid: int) -> None:
    """child_exit: the worker's live gauges leave the scrape (its counters stay
    in the totals), and the restarts counter grows."""
    path = os.environ.get(DIRECTORY_VARIABLE)
    if not path or _restarts is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)
    _restarts.inc()


# -- in each worker (and each in-process app) --------------------------------------------


def init_app(app: Flask) -> None:
    """The app's metrics (app.extensions["metrics"]) and its request hooks.
    Call it before the other init_app functions, so that a request their
    before_request hooks refuse (CSRF, a foreign Origin) is timed too."""
    from flask import request

    metrics = app.extensions["metrics"] = Metrics(
        app.extensions["hub"],
        app.config["METRICS_TOKEN"],
        allowed_networks(app.config["METRICS_ALLOW_NETWORKS"]),
    )

    @app.before_request
    def start_timer() -> None:
        request.environ[_STARTED] = time.perf_counter()

    @app.after_request
    def count_request(response: Any) -> Any:
        started = request.environ.get(_STARTED)
        metrics.count(
            request.url_rule,
            request.method,
            response.status_code,
            None if started is None else time.perf_counter() - started,
            getattr(response, "held_open", False),  # core/transports: SSE, held long-polls
        )
        return response


class Metrics:
    """The metric objects of one app, its copies of the plain counters, and
    the scrape. No Flask in here: init_app's hooks and the /metrics view pass
    what they read from the request."""

    def __init__(
        self, hub: Hub, token: str | None = None, networks: Iterable[Network] = ()
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.hub, self.token, self.networks = hub, token, list(networks)
        # What a scrape reads without PROMETHEUS_MULTIPROC_DIR. One per app, not
        # prometheus_client's global one: a process may create several apps (tests).
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "realtime_http_requests",
            "HTTP requests answered, by route rule, method and "
            "status class; WebSocket upgrades and SSE or long-poll streams included.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "realtime_http_request_duration_seconds",
            "Time from the request to its response, for plain answers "
            "(SSE streams, long-polls and WebSocket sessions are counted, not timed).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # livesum: the workers alive now, added up (a dead worker's files are
        # marked dead by the master).
        self.open_connections = Gauge(
            "realtime_open_connections",
            "Open long-lived connections, by transport.",
            ["transport"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.rss = Gauge(
            "realtime_worker_resident_memory_bytes",
            "Resident memory of each worker (its pid as a label).",
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.cpu = Counter(
            "realtime_worker_cpu_seconds",
            "CPU time the workers used (user and system).",
            registry=registry,
        )
        # each Counter beside the name of the plain counter it copies (see flush)
        self._copies = [
            (
                Counter(
                    "realtime_messages_published",
                    "Messages published through this "
                    "host's workers (POST /pub and the apps' hub publishes).",
                    registry=registry,
                ),
                "published",
            ),
            (
                Counter(
                    "realtime_messages_delivered",
                    "Messages handed to subscribers' "
                    "connections (written, queued for writing, or read in a catch-up), "
                    "one per subscriber.",
                    registry=registry,
                ),
                "delivered",
            ),
            (
                Counter(
                    "realtime_messages_dropped",
                    "Messages thrown away from the mailboxes "
                    "of subscribers cut off as slow consumers (they may resume from "
                    "their cursor).",
                    registry=registry,
                ),
                "dropped",
            ),
            (
                Counter(
                    "realtime_slow_consumer_cuts",
                    "Subscribers cut off as slow consumers "
                    "(SUBSCRIBER_QUEUE_SIZE or SUBSCRIBER_QUEUE_BYTES exceeded).",
                    registry=registry,
                ),
                "slow_consumer_cuts",
            ),
            (
                Counter(
                    "realtime_resets",
                    "Resets sent: a subscriber's cursor was gone (trimmed, expired, never issued).",
                    registry=registry,
                ),
                "resets",
            ),
            (
                Counter(
                    "realtime_hub_reconnects",
                    "Times a worker's hub listener connected to Redis again after losing it.",
                    registry=registry,
                ),
                "reconnects",
            ),
            (
                Counter(
                    "realtime_hub_notifications",
                    "Channel notifications the workers' hub "
                    "listeners heard (each worker only those of channels it serves).",
                    registry=registry,
                ),
                "notifications",
            ),
        ]
        self._copied: dict[Counter, float] = {}  # Counter -> the plain value last copied
        self._flush_lock = threading.Lock()  # the monitor's loop and a scrape may both flush
        # (route, method, status class) -> requests answered (copied by flush)
        self._request_counts: dict[tuple[str, str, str], int] = {}
        self._latencies: dict[tuple[str, str], Any] = {}  # (route, method) -> its histogram

    # -- requests ---------------------------------------------------------------------------

    def count(
        self,
        rule: Rule | None,
        method: str,
        status: int,
        seconds: float | None = None,
        held_open: bool = False,
    ) -> None:
        """One request answered: its url_rule (None: no route matched), its
        method, its status code, how long it took, and whether its response
        is a stream held open (SSE, a held long-poll: its time is not a
        latency). Counted in a plain dict, copied into the counter by flush:
        a long-poll broadcast answers 10,000 requests at once, and
        prometheus_client's file-backed values cost tens of microseconds per
        update under gunicorn (docs/fanout.md measured the difference)."""
        # Route rules, not paths: a bounded set of labels whatever the URLs asked.
        route = rule.rule if rule is not None else "unmatched"
        websocket = rule is not None and rule.websocket
        method = method if method in _METHODS else "other"
        key = (route, method, f"{status // 100}xx")
        self._request_counts[key] = self._request_counts.get(key, 0) + 1
        # A WebSocket view returns when its session ends, a stream when it is
        # opened: only a plain answer's time is a latency.
        if seconds is None or websocket or held_open:
            return
        histogram = self._latencies.get(key[:2])
        if histogram is None:  # (labels() checks and locks on every call: once per series)
            histogram = self._latencies[key[:2]] = self.latency.labels(route, method)
        histogram.observe(seconds)

    # -- the plain counters ----------------------------------------------------------------

    def flush(self, rss: int | None = None, connections: dict[str, int] | None = None) -> None:
        """Bring the metrics up to the plain counters (and the gauges up to
        now): in the monitor's loop and before each scrape of this worker."""
        hub = self.hub
        times = os.times()
        with self._flush_lock:
            for counter, name in self._copies:
                self._copy(counter, getattr(hub, name))
            self._copy(self.cpu, times.user + times.system)
            for key, count in list(self._request_counts.items()):
                self._copy(self.requests.labels(*key), count)
            for transport, count in (connections or lifecycle.open_connections()).items():
                self.open_connections.labels(transport).set(count)
            if rss:
                self.rss.set(rss)

    def _copy(self, counter: Counter, value: float) -> None:
        # The hub counts a broadcast as delivered to all its subscribers after
        # taking back the few it did not reach: between the two, the plain
        # value may dip below what was copied. Counters never go down, so
        # a dip waits for the value to pass the copy again.
        copied = self._copied.get(counter, 0)
        if value > copied:
            counter.inc(value - copied)
            self._copied[counter] = value

    # -- the scrape ------------------------------------------------------------------------

    def scraper_allowed(self, bearer: str | None, address: str | None) -> bool:
        """A request with the bearer token `bearer` from client `address` may
        read /metrics without an administrator's credentials: the token is
        METRICS_TOKEN, or the address is in METRICS_ALLOW_NETWORKS (the
        address as the app sees it: REMOTE_ADDR, or X-Forwarded-For from
        TRUSTED_PROXIES hops)."""
        if self.token and bearer and hmac.compare_digest(bearer.encode(), self.token.encode()):
            return True
        if not self.networks or not address:
            return False
        try:
            client = ipaddress.ip_address(address)
        except ValueError:  # e.g. a unix socket's peer
            return False
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
            client = client.ipv4_mapped  # ::ffff:10.0.0.7, an IPv4 client of a dual-stack bind
        return any(client in network for network in self.networks)

    def render(self) -> bytes:
        """The text of a scrape: every worker of this server (multiprocess
        mode), or this app alone."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.flush()
        path = os.environ.get(DIRECTORY_VARIABLE)
        if not path:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return generate_latest(registry)
