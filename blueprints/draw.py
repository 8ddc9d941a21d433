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
from core.transports.websocket import (
    POLICY_VIOLATION,
    BadFrame,
    close_reason,
    forward_from_hub,
    fraction,
    json_object,
    locked_send,
    route,
    with_served_by,
)
from core.web import get_hub, get_redis

bp = Blueprint("draw", __name__, url_prefix="/draw")

CHANNEL = "draw:moves"
MAX_SEGMENTS = 20_000


def _point(message):
    if not isinstance(message.get("drawing"), bool):
        raise BadFrame("drawing must be true or false")
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
    send = locked_send(ws)
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]

    def translate(msg):
        event = msg.value
        return None if event.get("id") == me else msg.data

    with hub.subscribe(CHANNEL) as sub:
        history = [json.loads(s) for s in r.lrange(segments_key, 0, -1)]
        send(json.dumps(with_served_by({"type": "welcome", "id": me, "segments": history})))
        forward_from_hub(ws, sub, translate, heartbeat, send)
        last = None
        try:
            while True:
                try:
                    message = json_object(ws.receive())
                    if message.get("type") != "clear":
                        x, y, drawing = _point(message)
                except BadFrame as exc:
                    ws.close(POLICY_VIOLATION, close_reason(str(exc)))
                    return
                if message.get("type") == "clear":
                    if user is None or not user.is_admin:
                        send(json.dumps({"type": "error", "reason": "only administrators may clear"}))
                        continue
                    r.delete(segments_key)
                    hub.publish_json(CHANNEL, {"type": "clear"})
                    continue
                if drawing and last is not None and last[2]:
                    pipe = r.pipeline(transaction=False)
                    pipe.rpush(segments_key, json.dumps([last[0], last[1], x, y]))
                    pipe.ltrim(segments_key, -MAX_SEGMENTS, -1)
                    pipe.execute()
                last = (x, y, drawing)
                hub.publish_json(CHANNEL, {"type": "moving", "id": me, "x": x, "y": y,
                                           "drawing": drawing})
        finally:
            sub.close("connection closed")
            hub.publish_json(CHANNEL, {"type": "clientdisconnect", "id": me})
