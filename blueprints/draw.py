"""Collaborative drawing over WebSockets (chapter 6).

    GET /draw/        the page: a full-window canvas
    WS  /draw/ws      client -> {"x","y","drawing"} (x, y as fractions 0..1 of the canvas)
                      client -> {"type":"clear"} (administrators only)
                      server -> welcome {id, segments}, moving {id,x,y,drawing},
                                clientdisconnect {id}, clear, error {reason}

Every pointer move is relayed to the others through the hub (any worker). A
move with `drawing` true continues its sender's stroke: the segment from its
previous point is kept in Redis, so a newcomer sees the drawing so far. The
history is bounded twice: at most MAX_SEGMENTS segments and DRAW_HISTORY_BYTES
bytes; past either the oldest segments roll off.

A newcomer's welcome carries the whole history, so it is the expensive frame:
each worker keeps the history's JSON text with the version it was read at
(a token every change sets), and a newcomer on an unchanged canvas costs one
GET of that version, not a read and re-encoding of every segment.

Frames (moves and clears) are counted per client address on each worker
(DRAW_MOVE_RATE_LIMIT): a client past it is closed with 1008 and the reason,
rather than having moves dropped silently, so a misbehaving client learns why.
Malformed frames close the socket with 1008 and a reason too.
"""

import json
import secrets
import threading

from flask import Blueprint, current_app

from core import quotas
from core.security import current_user
from core.transports.websocket import Refused, fraction, json_object, route, with_served_by
from core.web import get_hub, get_keys, get_redis

bp = Blueprint("draw", __name__, url_prefix="/draw")

CHANNEL = "draw:moves"
MAX_SEGMENTS = 20_000


def _point(message):
    if not isinstance(message.get("drawing"), bool):
        raise Refused("drawing must be true or false")
    return round(fraction(message, "x"), 5), round(fraction(message, "y"), 5), message["drawing"]


class _WelcomeCache:
    """The history as JSON text, per worker, with the version it was read at.

    A version is a random token set with every change (never a counter, which
    would start again after Redis loses its data and could match a stale
    cache). Newcomers that find the cache stale at the same moment wait for
    one read (the lock is gevent's under gunicorn's monkey-patching)."""

    def __init__(self):
        self.version, self.text = object(), "[]"  # matches no version: read first
        self._lock = threading.Lock()

    def segments_json(self, redis_client, keys):
        segments_key, _bytes_key, version_key = keys
        version = redis_client.get(version_key)
        if version == self.version:
            return self.text
        with self._lock:
            if version != self.version:  # else another newcomer has just read it
                pipe = redis_client.pipeline(transaction=True)  # the list as of its version
                pipe.get(version_key)
                pipe.lrange(segments_key, 0, -1)
                version, segments = pipe.execute()
                # Each stored segment is already JSON: joined, never parsed.
                self.version, self.text = version, "[" + ",".join(segments) + "]"
            return self.text


_welcome_cache = _WelcomeCache()


def _welcome(me, segments_json):
    """The welcome frame's text: the small fields encoded as usual, the cached
    segments spliced in as they are."""
    head = json.dumps(with_served_by({"type": "welcome", "id": me}))
    return head[:-1] + ', "segments": ' + segments_json + "}"


@bp.get("/")
def page():
    return current_app.send_static_file("draw.html")


@route("/ws", bp)
def draw_ws(ws):
    hub, redis_client = get_hub(), get_redis()
    keys = get_keys().drawing()
    append = hub.scripts["draw_append"]
    history_bytes = current_app.config["DRAW_HISTORY_BYTES"]
    user = current_user()  # who may clear: an administrator (session or token)
    me = secrets.token_hex(4)
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]

    def from_others(msg):  # the others' moves, clears and departures; not our own moves
        return None if msg.value.get("id") == me else msg.data

    with hub.subscribe(CHANNEL, on_abort=ws.abort) as sub:
        ws.send(_welcome(me, _welcome_cache.segments_json(redis_client, keys)))
        last = None
        try:
            # Moves are ephemeral: after a reset (missed messages) carry on live.
            for raw in ws.relay(sub, encode=from_others, on_reset=_carry_on, heartbeat=heartbeat):
                # Counted before decoding: every frame costs the worker. Over
                # the quota: a 429, which route() turns into close 1008.
                quotas.spend("DRAW_MOVE_RATE_LIMIT", "drawing moves", per_worker=True)
                message = json_object(raw)
                if message.get("type") == "clear":
                    _clear(ws, hub, redis_client, keys, user)
                    continue
                x, y, drawing = _point(message)
                if drawing and last is not None and last[2]:
                    append(
                        keys=keys,
                        args=[
                            json.dumps([last[0], last[1], x, y]),
                            history_bytes,
                            MAX_SEGMENTS,
                            secrets.token_hex(8),
                        ],
                    )
                last = (x, y, drawing)
                hub.publish_json(
                    CHANNEL, {"type": "moving", "id": me, "x": x, "y": y, "drawing": drawing}
                )
        finally:
            hub.publish_json(CHANNEL, {"type": "clientdisconnect", "id": me})


def _clear(ws, hub, redis_client, keys, user):
    if user is None or not user.is_admin:
        ws.send(json.dumps({"type": "error", "reason": "only administrators may clear"}))
        return
    segments_key, bytes_key, version_key = keys
    pipe = redis_client.pipeline(transaction=True)
    pipe.delete(segments_key, bytes_key)
    pipe.set(version_key, secrets.token_hex(8))
    pipe.execute()
    hub.publish_json(CHANNEL, {"type": "clear"})


def _carry_on(_reset):
    return None
