"""Process monitoring, like PM2's web JSON and dashboard (chapter 7).

    GET /admin/processes         JSON: every master and worker on every host, and recent restarts
    GET /admin/monitor           the live charts (administrators)
    GET /admin/monitor/stream    SSE: the same JSON every 2 s
    GET /metrics                 Prometheus text format, for all workers of all hosts (administrators)

Workers report themselves to Redis every 2 s with a TTL (core/monitor.py), so
any worker answers for all of them, and a dead one drops out by itself.
"""

import json
import time

from flask import Blueprint, Response, current_app, request

from core.monitor import REPORT_SECONDS
from core.security import admin_page, admin_required
from core.transports import sse
from core.web import get_keys, get_redis, no_store

bp = Blueprint("processes", __name__)


# Administrators' views of every host and process: no cache (browser, proxy) keeps them.
bp.after_request(no_store)


def snapshot(redis_client, keys):
    names = [k for k in redis_client.scan_iter(keys.process_pattern(), count=500)
             if keys.is_process_report(k)]
    reports = [json.loads(v) for v in redis_client.mget(names) if v] if names else []
    restarts = [json.loads(e) for e in redis_client.lrange(keys.process_restarts(), 0, 49)]
    reports.sort(key=lambda r: (r["host"], r["role"] != "master", r["pid"]))
    return {"processes": reports, "restarts": restarts,
            "restart_count": redis_client.llen(keys.process_restarts()), "at": time.time()}


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

    return sse.response(sse.every(
        request.environ, first=sse.retry(current_app.config["SSE_RETRY_MS"]) + processes(),
        frame=processes, seconds=lambda: REPORT_SECONDS))


@bp.get("/metrics")
@admin_required
def metrics():
    """Gauges and counters per process, from the reports of every worker."""
    data = snapshot(get_redis(), get_keys())
    lines = []

    def metric(name, kind, doc, samples):
        lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}"])
        for labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    procs = data["processes"]
    workers = [p for p in procs if p["role"] == "worker"]

    def ident(p):
        return {"host": p["host"], "pid": p["pid"], "role": p["role"]}

    metric("realtime_process_resident_memory_bytes", "gauge", "RSS of each process.",
           [(ident(p), p["rss"]) for p in procs])
    metric("realtime_worker_cpu_percent", "gauge", "CPU use over the last report interval.",
           [(ident(p), p["cpu"]) for p in workers])
    metric("realtime_worker_uptime_seconds", "gauge", "Seconds since the worker started.",
           [(ident(p), p["uptime"]) for p in workers])
    metric("realtime_worker_requests_total", "counter", "Requests served by the worker.",
           [(ident(p), p["requests"]) for p in workers])
    metric("realtime_worker_notifications_total", "counter",
           "Channel notifications the worker's hub heard (only channels it serves).",
           [(ident(p), p.get("notifications", 0)) for p in workers])
    metric("realtime_worker_open_connections", "gauge", "Open long-lived connections.",
           [({**ident(p), "transport": t}, n) for p in workers
            for t, n in sorted(p["connections"].items())])
    metric("realtime_worker_restarts_total", "counter", "Workers that exited (recent history).",
           [({}, data["restart_count"])])
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")
