"""The index page, the favicon, health check and the cluster demo (`/whoami`).

In production, pids, host names and subscriber counts help an attacker map
the deployment (and tell when a worker restarted): /healthz and /whoami show
them to administrators only, anyone else gets the status alone. Dev shows
them to everyone (tests and demos rely on them).
"""

import os
import socket
import time

import redis
from flask import Blueprint, current_app, jsonify, redirect, render_template, request

from core import lifecycle
from core.security import current_user
from core.web import get_hub, get_redis, no_store

bp = Blueprint("home", __name__)
_STARTED = time.time()


@bp.get("/")
def index():
    return current_app.send_static_file("index.html")


@bp.get("/favicon.ico")
def favicon():
    """Browsers (and crawlers) ask for /favicon.ico whatever the pages link: send
    them to the SVG rather than fill the logs with 404s."""
    return redirect("/static/favicon.svg", 301)


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
    body = {"status": "ok" if ok else "unavailable"}
    if _details_allowed():
        body.update(
            {
                "redis": redis_ok,
                "hub": hub_stats["connected"],
                "pid": os.getpid(),
                "subscribers": hub_stats["subscribers"],
                "hub_reconnects": hub_stats["reconnects"],
                "connections": lifecycle.open_connections(),
            }
        )
    return no_store(jsonify(body)), 200 if ok else 503


def _details_allowed():
    if current_app.config["APP_ENV"] != "production":
        return True
    user = current_user()
    return user is not None and user.is_admin


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
    if not _details_allowed():
        return no_store(jsonify({"status": "ok"}))
    identity = _worker_identity()
    wanted = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if wanted == "application/json" or request.args.get("format") == "json":
        return no_store(jsonify(identity))
    return no_store(current_app.make_response(render_template("whoami.html", **identity)))
