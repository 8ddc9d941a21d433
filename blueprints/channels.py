"""Channels: one model, three transports (README, "Channels").

    POST /pub/<channel>            publish (permission needed) -> 201 {"id"}
    GET  /sub/<channel>            SSE when Accept: text/event-stream (`event: subscribed`
                                   first, then messages), else long-poll JSON
    WS   /sub/<channel>/ws         {"subscribed","cursor"}, then frames {"id","data"}

Every transport resumes from the client's last id (SSE `Last-Event-ID` or
`?last_event_id=`, long-poll `?cursor=`, WebSocket `?last_event_id=`) and
reports an unknown or trimmed id as an explicit reset.

Publishing needs a session or bearer token whose user may publish on the
channel; subscribing to `private-*` channels needs the same for subscribe
(core/security.py decides).
"""

import json

from flask import Blueprint, current_app, request

from core import quotas
from core.connection import aborter
from core.errors import abort_json
from core.security import channel_access_error, require_channel_access
from core.stream_log import CHANNEL_RULE, PUBLIC_CHANNEL, InvalidId, format_id, parse_id
from core.transports import longpoll, sse
from core.transports.websocket import Refused, route, with_served_by
from core.web import get_hub, is_unicode

bp = Blueprint("channels", __name__)


def _check_channel(name):
    if not PUBLIC_CHANNEL.match(name):
        abort_json(400, f"invalid channel name: {CHANNEL_RULE}")


def _cursor(raw, what):
    """A client-supplied id as a tuple, None when absent; 400 when malformed."""
    if raw is None or raw == "":
        return None
    try:
        return parse_id(raw)
    except InvalidId:
        abort_json(400, f"invalid {what}: expected a message id like 1700000000000-0")


def greeting(channel):
    """What a stream's first event or frame says, given its cursor: it is
    subscribed, from where (the client's own cursor, or the newest id when
    it had none), and which worker serves it (a WebSocket or EventSource
    cannot read our X-Served-By header). Made while the request's context
    is there; called once the stream has subscribed."""
    hello = with_served_by({"subscribed": channel})
    return lambda cursor: {**hello, "cursor": format_id(cursor)}


@bp.get("/channel/")
def page():
    """The browser client's demo: any channel, any transport (static/js/channel.js)."""
    return current_app.send_static_file("channel.html")


@bp.post("/pub/<channel>")
def publish(channel):
    _check_channel(channel)
    # The address's share before the token is verified, the account's after:
    # a flood, bad tokens included, is refused before each publish costs a
    # verification (JWT, Fernet and a user read: a third of a refused one).
    quotas.spend("PUBLISH_RATE_LIMIT", "publishes", scope="address")
    require_channel_access("publish", channel)
    quotas.spend("PUBLISH_RATE_LIMIT", "publishes", scope="account")
    body = request.get_data(cache=False)
    if not body:
        abort_json(400, "empty message")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        abort_json(400, "message must be UTF-8 text")
    is_json = request.mimetype == "application/json"
    if is_json:
        try:
            # allow_nan=False: NaN and Infinity (and 1e999) are not JSON, and
            # browsers' JSON.parse would choke on every copy delivered
            text = json.dumps(
                json.loads(text), separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            abort_json(400, "Content-Type is application/json but the body is not valid JSON")
        if not is_unicode(text):
            abort_json(400, "the JSON has a string that is not valid Unicode (a lone surrogate)")
    msg_id = get_hub().publish_replicated(channel, text, is_json=is_json)
    return {"id": msg_id, "channel": channel}, 201


@bp.get("/sub/<channel>")
def subscribe(channel):
    _check_channel(channel)
    require_channel_access("subscribe", channel)
    config = current_app.config
    if sse.wants_event_stream(request):
        # On reconnect the browser sends Last-Event-ID; it wins over the query
        # string, which only says where the first connection started.
        raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
        cursor = _cursor(raw, "Last-Event-ID")
        subscription = get_hub().subscribe(channel, cursor, on_abort=aborter(request.environ))
        retry, greet = sse.retry(config["SSE_RETRY_MS"]), greeting(channel)
        return sse.response(
            sse.stream(
                subscription,
                request.environ,
                first=lambda: retry + sse.subscribed(greet(cursor or subscription.cursor)),
                heartbeat=config["HEARTBEAT_SECONDS"],
            )
        )
    return longpoll.answer(
        get_hub(),
        channel,
        _cursor(request.args.get("cursor"), "cursor"),
        timeout=config["LONGPOLL_TIMEOUT_SECONDS"],
        max_bytes=config["LONGPOLL_MAX_BYTES"],
        write_seconds=config["LONGPOLL_WRITE_SECONDS"],
    )


@route("/sub/<channel>/ws", bp)
def subscribe_ws(ws, channel):
    if not PUBLIC_CHANNEL.match(channel):
        raise Refused(f"invalid channel name: {CHANNEL_RULE}")
    denied = channel_access_error("subscribe", channel)
    if denied:
        raise Refused(denied[1])
    try:
        cursor = (
            parse_id(request.args["last_event_id"]) if request.args.get("last_event_id") else None
        )
    except InvalidId as exc:
        raise Refused(str(exc)) from None
    greet = greeting(channel)
    return ws.subscribed(
        get_hub().subscribe(channel, cursor, on_abort=ws.abort),
        hello=lambda sub: json.dumps(greet(cursor or sub.cursor)),
        heartbeat=current_app.config["HEARTBEAT_SECONDS"],
    )
