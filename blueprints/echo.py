"""The native WebSocket demo: greet, then echo (chapter 6).

    WS /ws/echo      offer the `json` subprotocol to speak JSON
    GET /ws/         a page to try it
"""

import json

from flask import Blueprint, current_app

from core.websocket import route

bp = Blueprint("echo", __name__)
GREETING = "You've connected!"
INVALID_PAYLOAD = 1007  # RFC 6455: data inconsistent with the message type


@bp.get("/ws/")
def page():
    return current_app.send_static_file("echo.html")


@route("/ws/echo", bp)
def echo(ws):
    speaks_json = ws.subprotocol == "json"
    ws.send(json.dumps({"type": "greeting", "message": GREETING}) if speaks_json else GREETING)
    while True:
        message = ws.receive()
        if speaks_json:
            try:
                value = json.loads(message)
            except (TypeError, ValueError, RecursionError):  # Recursion: nested too deeply
                ws.close(INVALID_PAYLOAD, "the json subprotocol needs JSON text frames")
                return
            ws.send(json.dumps({"type": "echo", "data": value}))
        else:
            ws.send(message)
