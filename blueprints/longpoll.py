"""The long-poll demo page (chapter 5): lines typed into
`python -m workers.broadcast` appear in every open browser.

The page polls GET /sub/broadcast?cursor=... (blueprints/channels.py),
starting from the newest message at the time the page was served, so a line
sent while the page loads is not lost either.
"""

from flask import Blueprint, render_template

from core.web import get_hub

bp = Blueprint("longpoll", __name__)

CHANNEL = "broadcast"


@bp.get("/longpoll/")
def page():
    return render_template("longpoll.html", channel=CHANNEL, cursor=get_hub().newest_id(CHANNEL))
