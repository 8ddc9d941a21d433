"""The long-poll transport: hold a request until there is news, answer, and
let the client poll again from the cursor it was given.

Like the original's /poll, but with a cursor so nothing is lost between
polls. An answer is `{"events": [{"id", "data"}, ...], "cursor": id}`, or
`{"reset": true, "events": [], "cursor": id}` when the client's cursor is
gone; without a cursor the poll waits for the next message.

The view returns a `_HeldPoll` at once: Flask finishes the request (its
after-request hooks set the final headers) and the wait happens when gunicorn
calls the response. Under gunicorn's gevent worker, on HTTP/1.x, the answer
then goes out in one send, headers and body together; and while the poll is
held, the hub's listener writes a broadcast's answer straight onto the socket
(the body encoded once for every poller, the headers prepared when the poll
parked), so 10,000 held polls are answered in one pass of the listener
instead of 10,000 greenlet wake-ups and response cycles. gunicorn's own
response object still records the answer (status, length, keep-alive), so
its access log and connection handling are unchanged, except for a poll that
has to wait: it is parked without a greenlet (core.parking), its answer goes
out from there, and gunicorn's worker then serves the connection's next
request.
"""

import json
import logging
import time

from flask import Response, request
from gunicorn.util import http_date

from core import lifecycle, parking, quotas
from core.connection import direct_writer, hangup_watch, write_deadline
from core.errors import REDIS_UNAVAILABLE
from core.stream_log import format_id
from core.subscription import SubscriptionClosed

log = logging.getLogger(__name__)


def encode(msg):
    """A message as its JSON object `{"id", "data"}` (UTF-8 bytes); JSON
    payloads are embedded as values. Once per message and worker."""
    return msg.encoded(_message_json)


def _message_json(msg):
    data = msg.data if msg.is_json else json.dumps(msg.data, ensure_ascii=False)
    return f'{{"id":"{msg.id}","data":{data}}}'.encode()


def _answer_of_one(msg):
    """The whole body of an answer that carries just `msg` (a broadcast)."""
    return b'{"events":[%s],"cursor":"%s"}' % (encode(msg), msg.id.encode())


def answer(hub, channel, cursor, *, timeout, max_bytes, write_seconds):
    """The response to one poll of `channel` from `cursor` (an id tuple, or
    None for "the next message"), held up to `timeout` seconds.

    An answer takes no more messages once it reaches `max_bytes` (but always
    one); the rest follow on the next poll. A client that hangs up while
    held is let go at once; one that stops reading its answer is cut off
    after `write_seconds`. A client address holding its share of the
    worker's streams already gets a 429 instead (core.quotas).
    """
    quotas.admit_connection(request.environ)
    return _HeldPoll(hub, channel, cursor, timeout, max_bytes, write_seconds)


class _HeldPoll(Response):
    held_open = True  # core/metrics.py: its time to open is not a latency

    def __init__(self, hub, channel, cursor, timeout, max_bytes, write_seconds):
        super().__init__(b"", mimetype="application/json", headers={"Cache-Control": "no-store"})
        self.poll = (hub, channel, cursor, timeout, max_bytes, write_seconds)

    def __call__(self, environ, start_response):
        # The poll waits when gunicorn first iterates the answer: by then
        # Flask has finished with the request (its context, request object
        # and session are gone), so a held poll keeps little but its socket.
        return parking.serve(self._answer(environ, start_response), environ, start_response)

    def _answer(self, environ, start_response):
        held = self._held(environ, start_response)
        idle = None
        try:
            for out in held:
                if isinstance(out, parking.Idle):
                    idle = out  # a poll with nothing to answer yet may be parked
                yield out
        except REDIS_UNAVAILABLE as exc:
            log.warning("Redis unavailable: %s", exc)
            if idle is not None and idle.taken_over:
                idle.hand_back = False  # nothing answered: the client polls again
                return
            # Raised after Flask's error handlers: answer as they would.
            body = json.dumps({"error": "storage unavailable, retry shortly"}).encode()
            start_response(
                "503 SERVICE UNAVAILABLE",
                [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
            yield body
        finally:
            held.close()  # werkzeug's iterable, which closes the write deadline

    def _held(self, environ, start_response):
        """The poll, as a generator: it yields an `Idle` where it would wait
        for a message the hub's listener can answer itself, then what the
        response body is (gunicorn's path; a parked poll yields its whole
        answer, head included, which the parking writes)."""
        hub, channel, cursor, timeout, max_bytes, write_seconds = self.poll
        server_response, socket_writer = _gunicorn_response(environ, start_response)
        idle = None
        # News this worker holds in memory (a first poll, or one a little
        # behind) is answered at once: nothing to wait on, so no subscription.
        items = hub.recent(channel, cursor)
        position = None
        if not items:
            waited = yield from self._wait(environ, start_response, server_response, socket_writer)
            if waited is None:
                return  # the hub's listener wrote the answer
            items, position, idle = waited
        self.set_data(_body(items, position, max_bytes))
        deadline = write_deadline(environ, write_seconds)
        if idle is not None and idle.taken_over:
            # gunicorn is done with this request: the whole answer goes out
            # from here, in one send, and the connection back to gunicorn.
            body = self.get_data()
            try:
                yield (
                    _header_lines(server_response, self.headers.to_wsgi_list(), len(body), _date())
                    + body
                )
            finally:
                if deadline is not None:
                    deadline.close()
            return
        if server_response is None:
            if deadline is not None:
                # gunicorn closes the response once the last byte is out
                self.call_on_close(deadline.close)
            yield from super().__call__(environ, start_response)
            return
        try:
            yield from _send_whole(start_response, server_response, self, environ)
        finally:
            if deadline is not None:
                deadline.close()

    def _wait(self, environ, start_response, server_response, socket_writer):
        """Subscribe and wait for news: (messages, the cursor after them,
        the `Idle` the poll was parked at or None), or None once the hub's
        listener has written the answer itself."""
        hub, channel, cursor, timeout, max_bytes, write_seconds = self.poll
        # page_bytes: a backlog is read from Redis about as far as this answer goes
        with (
            hub.subscribe(channel, cursor, page_bytes=max_bytes) as sub,
            lifecycle.connection("longpoll", sub.close, environ),
            hangup_watch(environ, sub.hang_up),
        ):
            start = sub.cursor
            writer = (
                _AnswerWriter(environ, server_response, socket_writer, self.headers, write_seconds)
                if server_response is not None
                else None
            )
            sub.write_directly(writer)
            idle = None
            if writer is not None and parking.can_hand_back(server_response):
                idle = parking.Idle(sub, timeout, hand_back=True)
                yield idle
            try:
                items = sub.wait(timeout)
                position = format_id(sub.cursor)
            except SubscriptionClosed:
                # The worker is stopping, the client left, or a burst overflowed
                # this poll's queue: nothing was delivered, so poll again (perhaps
                # elsewhere) from where this one started. sub.cursor has moved
                # past the queued messages.
                items, position = [], format_id(start)
            if writer is not None and writer.answered is not None:
                # The listener wrote the answer (the rest of it, if the socket
                # was full, went out in wait()); later messages wait for the
                # next poll, which asks from this answer's cursor.
                writer.deadline_passed()
                if idle is None or not idle.taken_over:
                    yield from _recorded(
                        start_response, server_response, self.headers, writer.answered
                    )
                return None
        return items, position, idle


def _body(items, position, max_bytes):
    if items and items[0].is_reset:  # a Reset always comes alone
        return json.dumps({"reset": True, "events": [], "cursor": items[0].id}).encode()
    events = _within(items, max_bytes)
    # Messages left out follow on the next poll: the cursor is the last one sent.
    last = events[-1].id if events else position
    return b'{"events":[%s],"cursor":"%s"}' % (
        b",".join(encode(msg) for msg in events),
        last.encode(),
    )


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


# -- writing the answer ourselves, under gunicorn's gevent worker --------------------


def _gunicorn_response(environ, start_response):
    """gunicorn's response object behind `start_response`, and a
    core.connection.DirectWriter on the client's socket, when this answer may
    be written in one send by us: gevent, gunicorn's HTTP/1.x on a plain
    socket, a connection that stays open. (None, None): let gunicorn write it."""
    server_response = getattr(start_response, "__self__", None)
    request = getattr(server_response, "req", None)
    if (
        request is None
        or server_response.headers_sent
        or server_response.must_close
        or request.should_close()
        or request.version not in ((1, 0), (1, 1))
        or environ.get("REQUEST_METHOD") != "GET"
    ):
        return None, None
    # gevent, gunicorn's HTTP protocol, not TLS: as for the streams' direct writes
    socket_writer = direct_writer(environ, None)
    if socket_writer is None:
        return None, None
    return server_response, socket_writer


def _header_lines(server_response, headers, length, date):
    """The head gunicorn itself writes (http/wsgi.py, Response.send_headers)
    for a keep-alive 200 answer of `length` bytes."""
    start, rest = _head(server_response.req.version, server_response.version, headers)
    return b"%s%s%s%d\r\n\r\n" % (start, date.encode(), rest, length)


_heads = {}


def _head(http_version, server, headers):
    """The head's lines around the Date and Content-Length values. Every poll
    of a worker has the same few, so they are built once, not per answer."""
    key = (http_version, server, tuple(headers))
    head = _heads.get(key)
    if head is None:
        if len(_heads) > 64:  # headers that vary per request: do not grow without bound
            _heads.clear()
        major, minor = http_version
        lines = "".join(
            f"{name}: {value}\r\n" for name, value in headers if name.lower() != "content-length"
        )
        head = _heads[key] = (
            f"HTTP/{major}.{minor} 200 OK\r\nServer: {server}\r\nDate: ".encode("latin-1"),
            f"\r\nConnection: keep-alive\r\n{lines}Content-Length: ".encode("latin-1"),
        )
    return head


def _send_whole(start_response, server_response, response, environ):
    """Write `response` (a whole answer) in one send, and tell gunicorn it is out."""
    headers = response.get_wsgi_headers(environ)
    start_response(response.status, headers.to_wsgi_list())
    body = response.get_data()
    if server_response.should_close():  # e.g. the worker is stopping: gunicorn decides
        return [body]
    server_response.sock.sendall(
        _header_lines(server_response, headers.to_wsgi_list(), len(body), _date()) + body
    )
    server_response.headers_sent = True
    server_response.sent = len(body)
    return []


def _recorded(start_response, server_response, headers, body):
    """gunicorn's record of an answer the hub's listener has written."""
    wsgi_headers = [(k, v) for k, v in headers.to_wsgi_list() if k.lower() != "content-length"]
    start_response("200 OK", [*wsgi_headers, ("Content-Length", str(len(body)))])
    server_response.headers_sent = True
    server_response.sent = len(body)
    return []


class _AnswerWriter:
    """A core.connection.DirectWriter-like writer of one whole answer: the
    head (its lines built once per worker) and the broadcast's body (encoded
    once for every poller). `answered` is the body once it went out."""

    one_shot = True

    def __init__(self, environ, server_response, socket_writer, headers, write_seconds):
        self._socket = socket_writer
        self._write_seconds = write_seconds
        self._server_response = server_response
        self._headers = headers.to_wsgi_list()
        self._environ = environ
        self._deadline = None
        self._body = None
        self.answered = None

    def frame(self, msg):
        self._body = msg.encoded(_answer_of_one)
        return (
            _header_lines(self._server_response, self._headers, len(self._body), _date())
            + self._body
        )

    def try_send(self, data):
        sent = self._socket.try_send(data)
        if sent is not None:
            self.answered = self._body
            if sent < len(data):  # the consumer writes the rest, within the deadline
                self._deadline = write_deadline(self._environ, self._write_seconds)
        return sent

    def sendall(self, data):
        self._socket.sendall(data)

    def deadline_passed(self):
        if self._deadline is not None:
            self._deadline.close()


_date_cache = [0, ""]


def _date():
    """The Date header's value, formatted once a second (the listener writes
    thousands of answers within one)."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, http_date(now)]
    return _date_cache[1]
