"""Process monitoring, like PM2's web JSON and dashboard (chapter 7).

    GET /admin/processes         JSON: every master and worker on every host, and recent restarts
    GET /admin/monitor           the live charts (administrators)
    GET /admin/monitor/stream    SSE: the same JSON every 2 s
    GET /metrics                 Prometheus text format: every worker of this server (core/metrics.py)

Workers report themselves to Redis every 2 s with a TTL (core/monitor.py), so
any worker answers for all of them, and a dead one drops out by itself.
/metrics is per server, as Prometheus expects: it scrapes each one.
"""

import json
import time

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST

from core.monitor import REPORT_SECONDS
from core.security import admin_page, admin_required, bearer_token
from core.transports import sse
from core.web import get_keys, get_redis, no_store

bp = Blueprint("processes", __name__)


# Administrators' views of every host and process: no cache (browser, proxy) keeps them.
bp.after_request(no_store)


def snapshot(redis_client, keys):
    names = [
        k
        for k in redis_client.scan_iter(keys.process_pattern(), count=500)
        if keys.is_process_report(k)
    ]
    reports = [json.loads(v) for v in redis_client.mget(names) if v] if names else []
    restarts = [json.loads(e) for e in redis_client.lrange(keys.process_restarts(), 0, 49)]
    reports.sort(key=lambda r: (r["host"], r["role"] != "master", r["pid"]))
    return {
        "processes": reports,
        "restarts": restarts,
        "restart_count": redis_client.llen(keys.process_restarts()),
        "at": time.time(),
    }


@bp.get("/admin/processes")
@admin_required
def processes():
    return snapshot(get_redis(), get_keys())


@bp.get("/admin/monitor")
def monitor_page():
    return admin_page("monitor.html")


@bp.get("/admin/monitor/stream")
@admin_required
def monitor_stream():
    redis_client, keys = get_redis(), get_keys()

    def processes():
        return sse.event(json.dumps(snapshot(redis_client, keys)), event="processes")

    return sse.response(
        sse.every(
            request.environ,
            first=sse.retry(current_app.config["SSE_RETRY_MS"]) + processes(),
            frame=processes,
            seconds=lambda: REPORT_SECONDS,
        )
    )


@bp.get("/metrics")
def metrics():
    """Prometheus' scrape of this server's workers (core/metrics.py): for
    METRICS_TOKEN, METRICS_ALLOW_NETWORKS, or an administrator."""
    app_metrics = current_app.extensions["metrics"]
    if app_metrics.scraper_allowed(bearer_token(), request.remote_addr):
        return _scrape(app_metrics)
    return _scrape_for_an_administrator(app_metrics)


@admin_required
def _scrape_for_an_administrator(app_metrics):
    return _scrape(app_metrics)


def _scrape(app_metrics):
    return Response(app_metrics.render(), content_type=CONTENT_TYPE_LATEST)
