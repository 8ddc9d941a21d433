"""The index page, health check and the cluster demo (`/whoami`)."""

import os
import socket
import time

import redis
from flask import Blueprint, current_app, jsonify, render_template, request

from core import lifecycle
from core.web import get_hub, get_redis

bp = Blueprint("home", __name__)
_STARTED = time.time()


@bp.get("/")
def index():
    return current_app.send_static_file("index.html")


@bp.get("/healthz")
def healthz():
    """200 when this worker can reach Redis and its hub is listening; else 503."""
    hub = get_hub()
    hub.start()
    hub.connected_event.wait(1.0)  # a worker that just started connects within ms
    try:
        redis_ok = bool(get_redis().ping())
    except redis.RedisError:
        redis_ok = False
    hub_stats = hub.stats()
    ok = redis_ok and hub_stats["connected"]
    body = {
        "status": "ok" if ok else "unavailable",
        "redis": redis_ok,
        "hub": hub_stats["connected"],
        "pid": os.getpid(),
        "subscribers": hub_stats["subscribers"],
        "hub_reconnects": hub_stats["reconnects"],
        "connections": lifecycle.open_connections(),
    }
    return jsonify(body), 200 if ok else 503


def _worker_identity():
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "host": socket.gethostname(),
        "worker": os.environ.get("WORKER_NUMBER"),
        "uptime_seconds": round(time.time() - _STARTED, 1),
    }


@bp.get("/whoami")
def whoami():
    """Which pre-forked worker served you: reload to see the others."""
    identity = _worker_identity()
    wanted = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if wanted == "application/json" or request.args.get("format") == "json":
        return jsonify(identity)
    return render_template("whoami.html", **identity)
