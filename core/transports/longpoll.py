"""The long-poll transport: hold a request until there is news, answer, and
let the client poll again from the cursor it was given.

Like the original's /poll, but with a cursor so nothing is lost between
polls. An answer is `{"events": [{"id", "data"}, ...], "cursor": id}`, or
`{"reset": true, "events": [], "cursor": id}` when the client's cursor is
gone; without a cursor the poll waits for the next message.
"""

import json

from flask import Response

from core import lifecycle
from core.connection import cut_off_if_unwritten, hangup_watch
from core.stream_log import format_id
from core.subscription import SubscriptionClosed


def encode(msg):
    """A message as its JSON object `{"id", "data"}` (UTF-8 bytes); JSON
    payloads are embedded as values. Once per message and worker."""
    return msg.encoded(_message_json)


def _message_json(msg):
    data = msg.data if msg.is_json else json.dumps(msg.data, ensure_ascii=False)
    return f'{{"id":"{msg.id}","data":{data}}}'.encode()


def answer(hub, channel, cursor, environ, *, timeout, max_bytes, write_seconds):
    """The response to one poll of `channel` from `cursor` (an id tuple, or
    None for "the next message"), held up to `timeout` seconds.

    An answer takes no more messages once it reaches `max_bytes` (but always
    one); the rest follow on the next poll. A client that hangs up while
    held is let go at once; one that stops reading its answer is cut off
    after `write_seconds`.
    """
    # page_bytes: a backlog is read from Redis about as far as this answer goes
    with lifecycle.connection("longpoll"), hub.subscribe(
            channel, cursor, page_bytes=max_bytes) as sub, hangup_watch(environ, sub.hang_up):
        start = sub.cursor
        try:
            items = sub.wait(timeout)
            position = format_id(sub.cursor)
        except SubscriptionClosed:
            # The worker is stopping, the client left, or a burst overflowed
            # this poll's queue: nothing was delivered, so poll again (perhaps
            # elsewhere) from where this one started. sub.cursor has moved
            # past the queued messages.
            items, position = [], format_id(start)
    if items and items[0].is_reset:  # a Reset always comes alone
        body = json.dumps({"reset": True, "events": [], "cursor": items[0].id}).encode()
    else:
        events = _within(items, max_bytes)
        # Messages left out follow on the next poll: the cursor is the last one sent.
        last = events[-1].id if events else position
        body = b'{"events":[%s],"cursor":"%s"}' % (
            b",".join(encode(msg) for msg in events), last.encode())
    response = Response(body, mimetype="application/json",
                        headers={"Cache-Control": "no-store"})
    # A client that stops reading must not hold this worker's greenlet (and
    # the answer) for as long as it keeps the connection open.
    return cut_off_if_unwritten(response, environ, write_seconds)


def _within(messages, max_bytes):
    """The first of `messages` while their encoded total stays within
    `max_bytes`; always the first one, so a poll never comes back empty when
    there is news. Small answers fit in the socket buffers, and a backlog is
    paged instead of held in one answer."""
    kept, size = [], 0
    for msg in messages:
        size += len(encode(msg)) + 1
        if kept and size > max_bytes:
            break
        kept.append(msg)
    return kept
