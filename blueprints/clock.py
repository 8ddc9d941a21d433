"""The SSE clock (chapter 6): one event per second from the serving worker."""

import json
import os
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, request

from core.transports import sse

bp = Blueprint("clock", __name__)


@bp.get("/clock/")
def page():
    return current_app.send_static_file("clock.html")


@bp.get("/sse/clock")
def clock_stream():
    return sse.response(
        sse.every(
            request.environ,
            first=sse.PADDING + sse.retry(current_app.config["SSE_RETRY_MS"]),
            frame=_tick,
            seconds=lambda: 1 - time.time() % 1,  # tick on the second
            heartbeat=current_app.config["HEARTBEAT_SECONDS"],
        )
    )


def _tick():
    stamp = datetime.now(timezone.utc)
    return sse.event(
        json.dumps(
            {
                "time": stamp.isoformat(timespec="seconds"),
                "epoch_ms": int(stamp.timestamp() * 1000),
                "pid": os.getpid(),
            }
        )
    )
