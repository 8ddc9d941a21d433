"""Collaborative drawing over WebSockets (chapter 6).

    GET /draw/        the page: a full-window canvas
    WS  /draw/ws      client -> {"x","y","drawing"} (x, y as fractions 0..1 of the canvas)
                      client -> {"type":"clear"} (administrators only)
                      server -> welcome {id, segments}, moving {id,x,y,drawing},
                                clientdisconnect {id}, clear, error {reason}

Every pointer move is relayed to the others through the hub (any worker). A
move with `drawing` true continues its sender's stroke: the segment from its
previous point is kept in Redis (the last MAX_SEGMENTS), so a newcomer sees
the drawing so far. Malformed frames close the socket with 1008 and a reason.
"""

import json
import secrets

from flask import Blueprint, current_app

from core.security import current_user
from core.transports.websocket import Refused, fraction, json_object, route, with_served_by
from core.web import get_hub, get_redis

bp = Blueprint("draw", __name__, url_prefix="/draw")

CHANNEL = "draw:moves"
MAX_SEGMENTS = 20_000


def _point(message):
    if not isinstance(message.get("drawing"), bool):
        raise Refused("drawing must be true or false")
    return round(fraction(message, "x"), 5), round(fraction(message, "y"), 5), message["drawing"]


@bp.get("/")
def page():
    return current_app.send_static_file("draw.html")


@route("/ws", bp)
def draw_ws(ws):
    hub, r = get_hub(), get_redis()
    segments_key = f"{current_app.config['REDIS_PREFIX']}draw:segments"
    user = current_user()  # who may clear: an administrator (session or token)
    me = secrets.token_hex(4)
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]

    def from_others(msg):  # the others' moves, clears and departures; not our own moves
        return None if msg.value.get("id") == me else msg.data

    with hub.subscribe(CHANNEL, on_abort=ws.abort) as sub:
        history = [json.loads(s) for s in r.lrange(segments_key, 0, -1)]
        ws.send(json.dumps(with_served_by({"type": "welcome", "id": me, "segments": history})))
        last = None
        try:
            # Moves are ephemeral: after a reset (missed messages) carry on live.
            for raw in ws.relay(sub, encode=from_others, on_reset=_carry_on,
                                heartbeat=heartbeat):
                message = json_object(raw)
                if message.get("type") == "clear":
                    if user is None or not user.is_admin:
                        ws.send(json.dumps({"type": "error",
                                            "reason": "only administrators may clear"}))
                        continue
                    r.delete(segments_key)
                    hub.publish_json(CHANNEL, {"type": "clear"})
                    continue
                x, y, drawing = _point(message)
                if drawing and last is not None and last[2]:
                    pipe = r.pipeline(transaction=False)
                    pipe.rpush(segments_key, json.dumps([last[0], last[1], x, y]))
                    pipe.ltrim(segments_key, -MAX_SEGMENTS, -1)
                    pipe.execute()
                last = (x, y, drawing)
                hub.publish_json(CHANNEL, {"type": "moving", "id": me, "x": x, "y": y,
                                           "drawing": drawing})
        finally:
            hub.publish_json(CHANNEL, {"type": "clientdisconnect", "id": me})


def _carry_on(_reset):
    return None
