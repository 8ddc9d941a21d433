"""A Python client for the server's channels: subscribe over SSE, WebSocket or
long-poll with automatic resume, publish, log in. Standard library and
wsproto (already a dependency of the server) only.

    from realtime_client import Message, Reset, login, publish, subscribe

    token = login("http://localhost:8000", "admin", "...")
    publish("http://localhost:8000", "news", "hello", token=token)
    for event in subscribe("http://localhost:8000", "news", transport="websocket", since="0"):
        if isinstance(event, Reset):   # missed messages: reload what you show
            ...
        else:
            print(event.id, event.data)

`subscribe` is an iterator that never ends by itself: after any disconnect
(a server restart, a network error, a stream the server closed) it waits a
little (0.1 s, doubling up to 5 s, with jitter) and reconnects from the id
of the last message it yielded, so nothing is lost or repeated across
reconnects, whichever transport. When that id is no longer retained the
server says so and the iterator yields a `Reset` carrying the new cursor;
delivery goes on after it. A request the server refuses for good (a bad
channel name, a private channel without the right token) raises
`ClientError` instead of retrying, and an answer this client cannot read
(not JSON where JSON belongs, an invalid frame, a proxy's page instead of an
event stream) raises `ProtocolError`. A connection cut in the middle of an
event or frame is a disconnect like any other: nothing half-read is yielded.

`Message.data` is the message as published: the text, or for a JSON
message its JSON text. (On WebSocket and long-poll a JSON message whose
value is a string cannot be told from a text message; it comes as the text.)
"""

import http.client
import json
import random
import re
import socket
import ssl
import time
from typing import NamedTuple
from urllib.parse import quote, urlencode, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

TRANSPORTS = ("sse", "websocket", "longpoll")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
READ_TIMEOUT = 45.0  # the server sends something at least every 15 s (heartbeats)


class Message(NamedTuple):
    id: str
    data: str


class Reset(NamedTuple):
    """The cursor was gone: messages were missed. Delivery goes on after it."""

    cursor: str


class Subscribed(NamedTuple):
    """The server confirmed the subscription, starting at `cursor` (the
    client's own, or the newest id when it had none). `subscribe` consumes
    it: a stream that drops before its first message resumes from there."""

    cursor: str


class SSEEvent(NamedTuple):
    """One dispatched Server-Sent Event: its type, data and last event id."""

    event: str
    data: str
    id: str | None


class ClientError(Exception):
    """The server refused the request for good (4xx other than 408 and 429)."""

    def __init__(self, status, reason):
        super().__init__(f"{status}: {reason}")
        self.status, self.reason = status, reason


class ProtocolError(Exception):
    """The server sent something this client cannot read (not JSON where
    JSON belongs, a message without an id, an invalid WebSocket frame, not an
    event stream): not this server, or a proxy in the way. Raised, not
    retried: the same request would get the same answer."""


class _Retry(Exception):
    """This connection ended; reconnect from the cursor."""


# -- publishing and logging in -----------------------------------------------------------


def login(base_url, username, password):
    """A bearer token for `username` (POST /auth/token)."""
    status, body = _request(
        base_url,
        "POST",
        "/auth/token",
        json.dumps({"username": username, "password": password}),
        {"Content-Type": "application/json"},
    )
    if status != 200:
        raise ClientError(status, _error(body))
    return json.loads(body)["token"]


def publish(base_url, channel, data, *, token, is_json=False):
    """Publish `data` (text; or, with is_json, JSON text or any JSON-able
    value) on `channel`; its id. Raises ClientError with the server's reason
    (a 503 included: the message may or may not have been published)."""
    if is_json and not isinstance(data, str):
        data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    status, body = _request(
        base_url,
        "POST",
        f"/pub/{quote(channel, safe='')}",
        data,
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json" if is_json else "text/plain; charset=utf-8",
        },
    )
    if status != 201:
        raise ClientError(status, _error(body))
    return json.loads(body)["id"]


# -- subscribing -----------------------------------------------------------------------


def subscribe(base_url, channel, *, transport="sse", since=None, token=None):
    """Messages and Resets of `channel`, from `since` (an id: after it; "0":
    from the oldest retained; None: from now), resuming across reconnects."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
    session = _SESSIONS[transport](base_url, channel, token)
    cursor, delay = since, 0.0
    while True:
        try:
            for event in session.events(cursor):
                delay = 0.0
                if isinstance(event, Subscribed):
                    cursor = cursor if cursor is not None else event.cursor
                    continue
                cursor = event.cursor if isinstance(event, Reset) else event.id
                yield event
        except (_Retry, OSError, http.client.HTTPException, ValueError):
            pass  # (a ClientError is none of these: it ends the iteration)
        delay = min(max(delay * 2, 0.1), 5.0)
        time.sleep(delay * random.uniform(0.5, 1.0))


class _Session:
    def __init__(self, base_url, channel, token):
        self.url = urlsplit(base_url)
        self.path = f"/sub/{quote(channel, safe='')}"
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.token = token

    def _open(self, path, headers):
        conn = _connection(self.url, READ_TIMEOUT)
        conn.request("GET", path, headers={**self.auth, **headers})
        response = conn.getresponse()
        if response.status != 200:
            body = response.read()
            conn.close()
            _refuse_or_retry(response.status, _error(body))
        return conn, response


class _SSE(_Session):
    """GET /sub/<channel> as an event stream (`Last-Event-ID`), parsed by the
    WHATWG rules."""

    def events(self, cursor):
        headers = {"Accept": "text/event-stream"}
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
        conn, response = self._open(self.path, headers)
        kind = response.getheader("Content-Type", "")
        if not kind.startswith("text/event-stream"):
            conn.close()
            raise ProtocolError(f"asked for an event stream, got {kind or 'no Content-Type'}")
        try:
            for sse in parse_sse(iter(lambda: response.read1(65536), b"")):
                event = _dispatch(sse)
                if event is not None:
                    yield event
        finally:
            conn.close()
        raise _Retry("the stream ended")


def parse_sse(chunks, on_comment=None, on_retry=None):
    """The events of an event stream whose bytes come as `chunks` (an
    iterable of bytes), parsed by the WHATWG rules: a leading byte order
    mark is skipped; lines end at CRLF, LF or CR; `data` lines are joined
    with "\n"; an event with no data is not dispatched, but its `id` still
    sets the last event id; an id containing NUL is ignored. Yields
    SSEEvent(event, data, id). Comments (`on_comment(text)`) and `retry`
    fields with a number (`on_retry(milliseconds)`) are passed on if asked
    for (keepalives, reconnection delays)."""
    buffer, kind, data, last_id = b"", "", [], None
    start = True
    for chunk in chunks:
        buffer += chunk
        if start:  # one UTF-8 byte order mark at the very start is skipped
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                continue
            buffer, start = buffer.removeprefix(b"\xef\xbb\xbf"), False
        # Split once per chunk. A CR at the very end may be half a CRLF: it
        # waits for the next chunk.
        held = buffer.endswith(b"\r")
        *lines, buffer = _LINE_BREAK.split(buffer[:-1] if held else buffer)
        buffer += b"\r" if held else b""
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not line:  # dispatch
                if data:
                    yield SSEEvent(kind or "message", "\n".join(data), last_id)
                kind, data = "", []
                continue
            if line.startswith(":"):
                if on_comment is not None:
                    on_comment(line[1:].removeprefix(" "))
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id" and "\0" not in value:
                last_id = value
            elif name == "retry" and value.isascii() and value.isdigit() and on_retry:
                on_retry(int(value))


def _dispatch(sse):
    if sse.event == "message":
        if not sse.id:
            raise ProtocolError(f"an SSE message without an id: {sse.data[:100]!r}")
        return Message(sse.id, sse.data)
    if sse.event == "subscribed":
        return Subscribed(_decode(sse.data, "the subscribed event", "cursor")["cursor"])
    if sse.event == "reset":
        return Reset(_decode(sse.data, "a reset event", "cursor")["cursor"])
    if sse.event == "close":  # the server ends this stream (a restart, a slow reader)
        raise _Retry(_decode(sse.data, "a close event").get("reason", "closed"))
    return None


class _LongPoll(_Session):
    """GET /sub/<channel>?cursor=..., one answer after another."""

    def events(self, cursor):
        while True:
            query = f"?{urlencode({'cursor': cursor})}" if cursor is not None else ""
            conn, response = self._open(self.path + query, {"Accept": "application/json"})
            try:
                answer = _decode(response.read(), "a long-poll answer", "events", "cursor")
            finally:
                conn.close()
            if answer.get("reset"):
                yield Reset(answer["cursor"])
            for item in answer["events"]:
                if not isinstance(item, dict) or "id" not in item or "data" not in item:
                    raise ProtocolError(f"a long-poll event without id and data: {item!r:.100}")
                yield Message(item["id"], _text(item["data"]))
            cursor = answer["cursor"]


class _WebSocket(_Session):
    """WS /sub/<channel>/ws?last_event_id=... (`access_token` for private
    channels: browsers cannot send headers on a WebSocket)."""

    def events(self, cursor):
        params = {}
        if cursor is not None:
            params["last_event_id"] = cursor
        if self.token:
            params["access_token"] = self.token
        target = f"{self.path}/ws" + (f"?{urlencode(params)}" if params else "")
        sock = _socket(self.url, READ_TIMEOUT)
        ws = WSConnection(ConnectionType.CLIENT)
        try:
            sock.sendall(ws.send(Request(host=self.url.netloc, target=target)))
            while True:
                data = sock.recv(65536)
                if not data:
                    raise _Retry("connection closed")
                ws.receive_data(data)
                try:
                    events = list(ws.events())
                except RemoteProtocolError as exc:  # not a valid WebSocket
                    raise ProtocolError(f"an invalid WebSocket frame or handshake: {exc}") from None
                for event in events:
                    yield from self._handle(ws, sock, event)
        finally:
            sock.close()

    @staticmethod
    def _handle(ws, sock, event):
        if isinstance(event, TextMessage):
            if not event.message_finished:
                raise _Retry("fragmented frames are not sent by this server")
            frame = _decode(event.data, "a WebSocket frame")
            if frame.get("reset"):
                yield Reset(frame["cursor"])
            elif "subscribed" in frame:
                yield Subscribed(frame["cursor"])
            elif "id" in frame and "data" in frame:
                yield Message(frame["id"], _text(frame["data"]))
        elif isinstance(event, Ping):
            sock.sendall(ws.send(event.response()))
        elif isinstance(event, RejectConnection):
            _refuse_or_retry(event.status_code, "WebSocket upgrade refused")
        elif isinstance(event, CloseConnection):
            if event.code == 1008:  # refused for good (bad channel, no access)
                raise ClientError(1008, event.reason)
            if event.code in _UNREADABLE:  # (wsproto reports a bad frame from the server so)
                raise ProtocolError(f"an invalid WebSocket frame ({event.code}): {event.reason}")
            raise _Retry(f"closed {event.code}: {event.reason}")
        elif not isinstance(event, AcceptConnection):
            pass  # bytes, pongs: nothing for us


_UNREADABLE = (1002, 1003, 1007)  # protocol error, unsupported data, invalid payload
_SESSIONS = {"sse": _SSE, "longpoll": _LongPoll, "websocket": _WebSocket}


# -- plumbing ----------------------------------------------------------------------------


def _decode(text, what, *fields):
    """`text`, a JSON object with `fields`, or a ProtocolError naming `what`."""
    try:
        value = json.loads(text)
    except ValueError:
        raise ProtocolError(f"{what} is not JSON: {text[:100]!r}") from None
    if not isinstance(value, dict) or any(name not in value for name in fields):
        raise ProtocolError(f"{what} lacks {', '.join(fields) or 'an object'}: {text[:100]!r}")
    return value


def _text(value):
    """A delivered value as the message's text (JSON messages: their JSON)."""
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    )


def _refuse_or_retry(status, reason):
    if 400 <= status < 500 and status not in (408, 429):
        raise ClientError(status, reason)
    raise _Retry(f"{status}: {reason}")


def _error(body):
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200] if isinstance(body, bytes) else str(body)


def _connection(url, timeout):
    if url.scheme == "https":
        return http.client.HTTPSConnection(
            url.hostname, url.port, timeout=timeout, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def _socket(url, timeout):
    tls = url.scheme == "https"
    sock = socket.create_connection(
        (url.hostname, url.port or (443 if tls else 80)), timeout=timeout
    )
    if tls:
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.hostname)
    return sock


def _request(base_url, method, path, body, headers):
    conn = _connection(urlsplit(base_url), 30)
    try:
        conn.request(
            method, path, body=body.encode() if isinstance(body, str) else body, headers=headers
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
