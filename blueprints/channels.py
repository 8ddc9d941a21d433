"""Channels: one model, three transports (DESIGN §4 "Channels").

    POST /pub/<channel>            publish (permission needed) -> 201 {"id"}
    GET  /sub/<channel>            SSE when Accept: text/event-stream, else long-poll JSON
    WS   /sub/<channel>/ws         {"subscribed","cursor"}, then frames {"id","data"}

Every transport resumes from the client's last id (SSE `Last-Event-ID` or
`?last_event_id=`, long-poll `?cursor=`, WebSocket `?last_event_id=`) and
reports an unknown or trimmed id as an explicit reset.

Publishing needs a session or bearer token whose user may publish on the
channel; subscribing to `private-*` channels needs the same for subscribe
(core/security.py decides).
"""

import json

from flask import Blueprint, Response, current_app, request

from core import lifecycle, sse
from core.connection import aborter, cut_off_if_unwritten
from core.errors import abort_json
from core.hub import (
    CHANNEL_RULE,
    PUBLIC_CHANNEL,
    InvalidId,
    SubscriptionClosed,
    format_id,
    parse_id,
)
from core.security import channel_access_error, require_channel_access
from core.web import get_hub, is_unicode
from core.websocket import (
    POLICY_VIOLATION,
    TRY_AGAIN_LATER,
    close_reason,
    direct_writer,
    route,
    with_served_by,
)

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


@bp.post("/pub/<channel>")
def publish(channel):
    _check_channel(channel)
    require_channel_access("publish", channel)
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
            text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            abort_json(400, "Content-Type is application/json but the body is not valid JSON")
        if not is_unicode(text):
            abort_json(400, "the JSON has a string that is not valid Unicode (a lone surrogate)")
    msg_id = get_hub().publish(channel, text, is_json=is_json)
    return {"id": msg_id, "channel": channel}, 201


@bp.get("/sub/<channel>")
def subscribe(channel):
    _check_channel(channel)
    require_channel_access("subscribe", channel)
    if sse.wants_event_stream(request):
        # On reconnect the browser sends Last-Event-ID; it wins over the query
        # string, which only says where the first connection started.
        raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
        cursor = _cursor(raw, "Last-Event-ID")
        config = current_app.config
        return sse.stream_response(_event_stream(
            get_hub(), channel, cursor, request.environ,
            config["HEARTBEAT_SECONDS"], config["SSE_RETRY_MS"]))
    return _long_poll(channel, _cursor(request.args.get("cursor"), "cursor"))


def _event_stream(hub, channel, cursor, environ, heartbeat, retry_ms):
    # Runs after the view returned (no app context): everything comes in as arguments.
    # The subscription is in place before the first chunk, and so before the
    # client sees the response headers.
    with hub.subscribe(channel, cursor, on_abort=aborter(environ)) as sub:
        yield sse.retry(retry_ms)
        # The headers are out: while this stream idles, the hub's listener may
        # write live events onto the socket itself (one send per subscriber).
        sub.write_directly(sse.direct_writer(environ))
        yield from sse.from_subscription(sub, heartbeat,
                                         lambda items: b"".join(item.sse for item in items))


def _long_poll(channel, cursor):
    """Hold the request until there is news (or the timeout), like the
    original's /poll, but with a cursor so nothing is lost between polls.
    Without a cursor, wait for the next message."""
    hub = get_hub()
    config = current_app.config
    max_bytes = config["LONGPOLL_MAX_BYTES"]
    # page_bytes: a backlog is read from Redis about as far as this answer goes
    with lifecycle.connection("longpoll"), hub.subscribe(channel, cursor,
                                                         page_bytes=max_bytes) as sub:
        start = sub.cursor
        try:
            items = sub.wait(config["LONGPOLL_TIMEOUT_SECONDS"])
            position = format_id(sub.cursor)
        except SubscriptionClosed:
            # The worker is stopping, or a burst overflowed this poll's queue:
            # nothing was delivered, so poll again (perhaps elsewhere) from where
            # this one started. sub.cursor has moved past the queued messages.
            items, position = [], format_id(start)
    if items and items[0].is_reset:  # a Reset always comes alone
        body = json.dumps({"reset": True, "events": [], "cursor": items[0].id}).encode()
    else:
        events = _within(items, max_bytes)
        # Messages left out follow on the next poll: the cursor is the last one sent.
        last = events[-1][0] if events else position
        body = b'{"events":[%s],"cursor":"%s"}' % (
            b",".join(event for _, event in events), last.encode())
    response = Response(body, mimetype="application/json",
                        headers={"Cache-Control": "no-store"})
    # A client that stops reading must not hold this worker's greenlet (and
    # the answer) for as long as it keeps the connection open.
    return cut_off_if_unwritten(response, request.environ, config["LONGPOLL_WRITE_SECONDS"])


def _within(items, max_bytes):
    """The first of `items` as (id, JSON bytes) while their total stays
    within `max_bytes`; always the first one, so a poll never comes back empty
    when there is news. Small answers fit in the socket buffers, and a backlog
    is paged instead of held in one answer."""
    events, size = [], 0
    for item in items:
        # encoded once per message and worker, shared by every poll it answers
        encoded = item.cached("json_bytes", lambda item=item: item.json.encode())
        size += len(encoded) + 1
        if events and size > max_bytes:
            break
        events.append((item.id, encoded))
    return events


@route("/sub/<channel>/ws", bp)
def subscribe_ws(ws, channel):
    if not PUBLIC_CHANNEL.match(channel):
        ws.close(POLICY_VIOLATION, close_reason(f"invalid channel name: {CHANNEL_RULE}"))
        return
    denied = channel_access_error("subscribe", channel)
    if denied:
        ws.close(POLICY_VIOLATION, close_reason(denied[1]))
        return
    try:
        cursor = parse_id(request.args["last_event_id"]) if request.args.get(
            "last_event_id") else None
    except InvalidId as exc:
        ws.close(POLICY_VIOLATION, close_reason(str(exc)))
        return
    heartbeat = current_app.config["HEARTBEAT_SECONDS"]
    with get_hub().subscribe(channel, cursor, on_abort=aborter(request.environ)) as sub:
        # Tells the client it is subscribed, and from where.
        ws.send(json.dumps(with_served_by({"subscribed": channel,
                                           "cursor": format_id(sub.cursor)})))
        sub.write_directly(direct_writer(ws, request.environ))
        while ws.connected:
            try:
                items = sub.wait(heartbeat)
            except SubscriptionClosed as closed:
                code = lifecycle.SERVICE_RESTART if lifecycle.stopping() else TRY_AGAIN_LATER
                ws.close(code, close_reason(closed.reason))
                return
            for item in items:
                ws.send(item.json)
            while ws.receive(timeout=0) is not None:
                pass  # a subscriber socket carries nothing upstream; drop it
