"""The native WebSocket demo: greet, then echo (chapter 6).

WS /ws/echo      offer the `json` subprotocol to speak JSON;
                 `?greeting=off` skips the greeting (a pure echo, as the
                 Autobahn|Testsuite cases in tests/test_autobahn.py expect)
GET /ws/         a page to try it
"""

import json

from flask import Blueprint, current_app, request

from core.transports.websocket import INVALID_PAYLOAD, Refused, route

bp = Blueprint("echo", __name__)
GREETING = "You've connected!"


@bp.get("/ws/")
def page():
    return current_app.send_static_file("echo.html")


@route("/ws/echo", bp)
def echo(ws):
    speaks_json = ws.subprotocol == "json"
    if request.args.get("greeting", "on").lower() not in ("off", "0", "false", "no"):
        ws.send(json.dumps({"type": "greeting", "message": GREETING}) if speaks_json else GREETING)
    while True:
        message = ws.receive()
        if speaks_json:
            try:
                value = json.loads(message)
            except (TypeError, ValueError, RecursionError):  # Recursion: nested too deeply
                raise Refused(
                    "the json subprotocol needs JSON text frames", code=INVALID_PAYLOAD
                ) from None
            ws.send(json.dumps({"type": "echo", "data": value}))
        elif isinstance(message, str):
            ws.send(message)
        else:  # binary as binary: a bytearray or memoryview is not `bytes` to every sender
            ws.send(bytes(message))
