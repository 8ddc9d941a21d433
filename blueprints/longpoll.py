"""The long-poll demo page (chapter 5): lines typed into
`python -m workers.broadcast` appear in every open browser.

The page polls GET /sub/broadcast?cursor=... (blueprints/channels.py)."""

from flask import Blueprint, current_app

bp = Blueprint("longpoll", __name__)


@bp.get("/longpoll/")
def page():
    return current_app.send_static_file("longpoll.html")
