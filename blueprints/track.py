"""Mouse tracking of many visitors, charted live for administrators (chapter 7).

    GET /track/                 the tracked visitor's page
    WS  /track/ws               client -> {"x","y"} (fractions 0..1 of the window)
    GET /admin/track            the dashboard (administrators)
    GET /admin/track/stream     SSE (administrators): snapshot {users}, then
                                batch {positions: {id: [x, y]}, events, at}, join {id}, leave {id}

Each worker coalesces its visitors' positions (the latest per visitor) and
publishes one batch about every 100 ms, not one Redis message per mouse event;
joins and leaves are published at once. Presence lives in a Redis sorted set
(score = expiry), refreshed every 2 s by the worker holding the visitor: if a
worker dies, its visitors expire within PRESENCE_TTL and any worker's reaper
announces their leave, so nobody haunts the dashboard.

Several dashboards may be open at once (the Node.js original refused a second
admin login): each is one more hub subscriber, and an administrator with two
tabs, or two administrators, is normal in a real product.
"""

import json
import logging
import secrets
import threading
import time

from flask import Blueprint, current_app, request

from core.offload import spawn
from core.security import admin_page, admin_required
from core.transports import sse
from core.transports.websocket import fraction, json_object, route, with_served_by
from core.web import get_hub, get_redis

bp = Blueprint("track", __name__)
log = logging.getLogger(__name__)

CHANNEL = "track:events"
BATCH_SECONDS = 0.1
PRESENCE_TTL = 10
REFRESH_SECONDS = 2


class Tracker:
    """This worker's visitors: latest positions, coalesced into batches."""

    def __init__(self, hub, redis_client):
        self.hub, self.redis_client = hub, redis_client
        self.presence_key = hub.keys.track_presence()
        self.latest, self.events, self.local = {}, 0, set()
        self.lock = threading.Lock()
        self.started = False

    def start(self):
        with self.lock:
            if self.started:
                return
            self.started = True
        spawn(self._run)

    def join(self, visitor):
        self.start()
        with self.lock:
            self.local.add(visitor)
        self.redis_client.zadd(self.presence_key, {visitor: time.time() + PRESENCE_TTL})
        self.hub.publish_json(CHANNEL, {"type": "join", "id": visitor})

    def move(self, visitor, x, y):
        with self.lock:
            self.latest[visitor] = (x, y)
            self.events += 1

    def leave(self, visitor):
        with self.lock:
            self.local.discard(visitor)
            self.latest.pop(visitor, None)
        if self.redis_client.zrem(self.presence_key, visitor):
            self.hub.publish_json(CHANNEL, {"type": "leave", "id": visitor})

    def _run(self):
        next_refresh = 0.0
        while True:
            time.sleep(BATCH_SECONDS)
            try:
                self._flush()
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + REFRESH_SECONDS
                    self._refresh_and_reap()
            except Exception:  # Redis down: keep coalescing, try again next tick
                log.warning("track: could not publish a batch", exc_info=True)

    def _flush(self):
        with self.lock:
            latest, events = self.latest, self.events
            self.latest, self.events = {}, 0
        if latest or events:
            self.hub.publish_json(
                CHANNEL,
                {
                    "type": "batch",
                    "positions": {k: list(v) for k, v in latest.items()},
                    "events": events,
                    "at": int(time.time() * 1000),
                },
            )

    def _refresh_and_reap(self):
        now = time.time()
        with self.lock:
            local = list(self.local)
        if local:
            self.redis_client.zadd(self.presence_key, dict.fromkeys(local, now + PRESENCE_TTL))
        for visitor in self.redis_client.zrangebyscore(self.presence_key, "-inf", now):
            if self.redis_client.zrem(self.presence_key, visitor):  # only one worker wins each
                self.hub.publish_json(CHANNEL, {"type": "leave", "id": visitor})


def _tracker():
    app = current_app._get_current_object()
    tracker = app.extensions.get("tracker")
    if tracker is None:
        tracker = app.extensions["tracker"] = Tracker(get_hub(), get_redis())
    return tracker


def _position(raw):
    message = json_object(raw)
    return round(fraction(message, "x"), 4), round(fraction(message, "y"), 4)


@bp.get("/track/")
def visitor_page():
    return current_app.send_static_file("track.html")


@route("/track/ws", bp)
def track_ws(ws):
    tracker, visitor = _tracker(), secrets.token_hex(4)
    ws.send(json.dumps(with_served_by({"type": "welcome", "id": visitor})))
    tracker.join(visitor)
    try:
        while True:
            x, y = _position(ws.receive())
            tracker.move(visitor, x, y)
    finally:
        tracker.leave(visitor)


@bp.get("/admin/track")
def dashboard():
    return admin_page("track_dashboard.html")


@bp.get("/admin/track/stream")
@admin_required
def dashboard_stream():
    tracker = _tracker()
    tracker.start()
    retry = sse.retry(current_app.config["SSE_RETRY_MS"])

    def snapshot(_reset=None):  # a reset (we missed messages) becomes a fresh snapshot
        users = tracker.redis_client.zrangebyscore(tracker.presence_key, time.time(), "+inf")
        return sse.event(json.dumps({"users": users}), event="snapshot")

    # subscribe, then read: no join slips between
    return sse.response(
        sse.stream(
            get_hub().subscribe(CHANNEL),
            request.environ,
            first=lambda: retry + snapshot(),
            heartbeat=current_app.config["HEARTBEAT_SECONDS"],
            encode=_dashboard_event,
            on_reset=snapshot,
        )
    )


def _dashboard_event(msg):
    return msg.encoded(_typed_event)


def _typed_event(msg):  # each event once per worker, whatever the number of dashboards
    return sse.event(msg.data, event=msg.value["type"])
