"""The SSE clock (chapter 6): one event per second from the serving worker."""

import json
import os
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app

from core import lifecycle
from core.transports import sse

bp = Blueprint("clock", __name__)


@bp.get("/clock/")
def page():
    return current_app.send_static_file("clock.html")


@bp.get("/sse/clock")
def clock_stream():
    retry_ms = current_app.config["SSE_RETRY_MS"]
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]
    return sse.response(_ticks(retry_ms, heartbeat))


def _ticks(retry_ms, heartbeat):
    yield sse.PADDING + sse.retry(retry_ms)
    last_beat = time.monotonic()
    while not lifecycle.stopping():
        now = time.time()
        time.sleep(1 - now % 1)  # tick on the second (parks this greenlet only)
        stamp = datetime.now(timezone.utc)
        yield sse.event(json.dumps({
            "time": stamp.isoformat(timespec="seconds"),
            "epoch_ms": int(stamp.timestamp() * 1000),
            "pid": os.getpid(),
        }))
        if time.monotonic() - last_beat >= heartbeat:
            last_beat = time.monotonic()
            yield sse.comment("heartbeat")
    yield sse.event(json.dumps({"reason": "server restarting"}), event="close")
