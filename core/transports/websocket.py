"""The WebSocket transport: the connection, its one loop, and the routes.

A connection (`WebSocket`) is wsproto's frame layer on gunicorn's socket,
with no reader greenlet or thread: the handshake is answered from the WSGI
environ gunicorn has already parsed, and the socket is read by the handler's
own greenlet, only when a libev watcher says it is readable. Pings are
answered and the closing handshake completed while reading; keepalive pings
go out after WS_PING_SECONDS without a word from the client, and a peer
that does not answer one is dropped.
Messages over MAX_MESSAGE bytes are refused at their frame header (close
1009), invalid frames and UTF-8 close with wsproto's code (1002, 1007).
Writes are whole frames (`sendall`), from the handler's greenlet only.

`route(path, bp)` registers a handler `handler(ws, **view_args)`, counts the
connection in core.lifecycle (closed 1012 when the worker stops) and is the
one place where a refusal becomes close 1008 with its reason: `Refused`
(raised by the frame decoders below and the apps) or an HTTPException from
abort_json (a bad ?access_token=).

`ws.relay(sub, encode=..., on_reset=..., heartbeat=...)` is the loop of every
hub-fed socket: from one greenlet it waits on both the hub subscription and
the client, sends each message as `encode(msg)`, hands a Reset to the app's
`on_reset`, and yields what the client sent. It ends (close 1013, or 1012 on
shutdown) when the hub drops the subscriber, and at once when the client
leaves. With the default framing and no extension, the hub's listener writes
live messages straight onto the socket (core.connection.DirectWriter).
`ws.subscribed(...)`, returned by a handler, is the rest of the life of a
socket that only receives: it gives up its greenlet while idle (core.parking).

Under gevent (gunicorn's gevent worker). Under the sync and gthread workers,
which serve SSE and long-polls in the benchmarks, WebSockets still work but
poll: a relay checks its client every POLL_SECONDS.
"""

import base64
import binascii
import functools
import json
import logging
import math
import os
import select
import socket
import time

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, generate_accept_token

from core import lifecycle, parking, quotas
from core.connection import client_socket
from core.connection import direct_writer as _direct_writer
from core.errors import REDIS_UNAVAILABLE, abort_json
from core.security import origin_allowed
from core.subscription import CLIENT_GONE, SubscriptionClosed
from core.transports import longpoll

log = logging.getLogger(__name__)

# Close codes (RFC 6455 §7.4.1)
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
INVALID_PAYLOAD = 1007  # data inconsistent with the message type (e.g. not UTF-8)
POLICY_VIOLATION = 1008  # invalid input: the reason says what
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = lifecycle.SERVICE_RESTART  # 1012: the worker is stopping, reconnect
TRY_AGAIN_LATER = 1013  # dropped as a slow consumer: reconnect and resume

MAX_MESSAGE = 64 * 1024  # bytes of one client message (after decompression)
SUBPROTOCOLS = ("json",)  # offered by /ws/echo; a route that gets no offer sees None
CLOSE_TIMEOUT = 1.0  # how long a closing handshake waits for the client's close
CLOSE_READ_LIMIT = 64 * 1024  # bytes parsed after our close while waiting for the client's
POLL_SECONDS = 0.05  # without gevent: how often a relay looks at its client
_READ_SIZE = 64 * 1024
_READ_BUFFER = memoryview(bytearray(_READ_SIZE))  # under gevent: shared by the worker's reads
_DEFLATE_READ_SIZE = 8 * 1024  # bounds what one read can inflate to (~8 MB)

# connection states
# OPEN -> CLOSING (our close is sent) -> DRAINING (the closing handshake is
# over, or failed: we have stopped writing and drop what the client still
# sends until it closes too, so that no unread bytes turn our close into a
# TCP reset) -> CLOSED. A connection lost on the way goes to CLOSED at once.
_OPEN, _CLOSING, _DRAINING, _CLOSED = range(4)
_PING = b"\x89\x00"  # an empty ping frame, as a server sends it (unmasked)


class Refused(ValueError):
    """Input the server refuses: `route()` closes the connection with `code`
    (1008 unless said otherwise) and this message as the reason."""

    def __init__(self, reason, code=POLICY_VIOLATION):
        super().__init__(reason)
        self.code = code


class ConnectionClosed(Exception):
    """The connection is closed: by the client, by us, or lost (code 1006)."""

    def __init__(self, code=1005, reason=""):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


# -- decoding client frames -------------------------------------------------------


def json_object(raw):
    """A client frame as a dict, or Refused."""
    try:
        message = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        message = None
    if not isinstance(message, dict):
        raise Refused("frames are JSON objects")
    return message


def fraction(message, name):
    """message[name] as a finite number within 0..1 (a share of the canvas or window)."""
    value = message.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise Refused(f"{name} must be a number")
    if not 0 <= value <= 1:
        raise Refused(f"{name} must be between 0 and 1 (a fraction of the canvas)")
    return value


def close_reason(text):
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


def refusal(exc):
    """The reason of an abort_json() (an HTTPException) as a close reason. After
    the handshake it must not escape the handler (Flask would write an HTTP
    response into the WebSocket stream): route() closes with it."""
    response = getattr(exc, "response", None)
    body = response.get_json(silent=True) if response is not None else None
    reason = body.get("error") if isinstance(body, dict) else None
    return close_reason(str(reason or getattr(exc, "description", None) or "refused"))


def with_served_by(hello):
    """Add the worker to a first frame when SERVED_BY_HEADER is on: a WebSocket
    handshake cannot carry our X-Served-By header."""
    if current_app.config["SERVED_BY_HEADER"]:
        hello["served_by"] = _served_by()
    return hello


@functools.cache
def _served_by_in(pid):
    return f"{socket.gethostname()}/{pid}"


def _served_by():
    return _served_by_in(os.getpid())


# -- encoding hub messages ----------------------------------------------------------


def encode(item):
    """A hub message as the text of a frame, `{"id", "data"}` (the same
    object as in a long-poll answer); a Reset as `{"reset": true, "cursor"}`."""
    if item.is_reset:
        return json.dumps({"reset": True, "cursor": item.id})
    return item.encoded(_text)


_default_encode = encode


def _text(msg):
    return longpoll.encode(msg).decode()


def _frame(msg):
    return _text_frame(longpoll.encode(msg))


def _cached_frame(msg):
    """A hub message's text frame, built once per message and worker."""
    return msg.encoded(_frame)


def _text_frame(payload):
    """A final, unmasked text frame (RFC 6455 §5.2), as a server sends it."""
    return _frame_of(0x81, payload)


def _frame_of(first, payload):
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


# -- the connection ---------------------------------------------------------------------


@functools.cache
def _gevent():
    """True under gunicorn's gevent worker (the standard library is patched)."""
    from gevent import monkey

    return monkey.is_module_patched("socket")


def _let_others_run():
    if _gevent():
        time.sleep(0)  # gevent's: a turn of the event loop


class WebSocket:
    """One server-side WebSocket connection on gunicorn's socket.

    `send(str | bytes)`, `receive(timeout=None)` (str or bytes; None on
    timeout; ConnectionClosed once closed), `close(code, reason)`,
    `relay(sub, ...)`, `subprotocol`. Only the handler's greenlet uses it;
    `shut_down(reason)` and `abort()` may be called from anywhere.
    """

    __slots__ = (
        "_closed_by",
        "_conn",
        "_deflate",
        "_failure",
        "_handshake",
        "_io",
        "_next_ping",
        "_parts",
        "_pong_due",
        "_queue",
        "_read_after_close",
        "_readable",
        "_real",
        "_shutdown",
        "_size",
        "_sock",
        "_state",
        "_sub",
        "_wake",
        "_writing",
        "ping_seconds",
        "subprotocol",
    )

    def __init__(self, sock, subprotocol=None, deflate=None, ping_seconds=None, response=None):
        self._sock = sock  # gunicorn's socket: writes (gevent parks the greenlet while full)
        # The handshake's response goes out with the first frame (one send, not
        # two: a send is most of a connect's cost), or before the first wait.
        self._handshake = response
        self._real = getattr(sock, "_sock", sock)  # the OS socket (non-blocking under gevent)
        self.subprotocol = subprotocol
        self._deflate = deflate  # wsproto's PerMessageDeflate when negotiated
        self._conn = None  # wsproto's frame layer, built at the first byte read or deflated
        self._state = _OPEN
        self._closed_by = None  # (code, reason) once closed
        self._read_after_close = 0  # bytes read since our close went out
        # (code, reason) of a protocol error or too big a message: the messages
        # before it are handled first, then the connection closes with it.
        self._failure = None
        self._parts = None  # the fragments of a message being received
        self._size = 0  # its size so far
        self._queue = None  # messages read, not yet handed to the handler
        self._io = None  # libev read watcher (gevent)
        self._wake = None  # what wakes the handler when the socket turns readable
        self._sub = None  # the subscription a relay waits on
        self._readable = False
        self._writing = False  # a frame is being written (DirectWriter waits its turn)
        self._shutdown = None  # (code, reason): the worker is stopping, or the account changed
        self.ping_seconds = ping_seconds or None
        self._next_ping = time.monotonic() + ping_seconds if ping_seconds else math.inf
        self._pong_due = False

    # -- the handshake ----------------------------------------------------------------

    @classmethod
    def accept(cls, environ, subprotocols=SUBPROTOCOLS, ping_seconds=None):
        """Answer the opening handshake of the request in `environ` (gunicorn
        has parsed it) with 101; a malformed one is an HTTP 400 (abort_json)."""
        sock = client_socket(environ)
        if sock is None:
            abort_json(500, "WebSockets need gunicorn (or Werkzeug's server)")
        if environ.get("REQUEST_METHOD") != "GET":
            abort_json(400, "a WebSocket handshake is a GET")
        version = environ.get("HTTP_SEC_WEBSOCKET_VERSION", "")
        if version.strip() != "13":
            abort_json(
                426 if version else 400,
                "Sec-WebSocket-Version 13 is needed",
                headers={"Sec-WebSocket-Version": "13"},
            )
        key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            abort_json(400, "Sec-WebSocket-Key must be 16 bytes in base64")
        offered = [p.strip() for p in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",")]
        subprotocol = next((p for p in offered if p in subprotocols), None)
        deflate, agreed = _negotiate_deflate(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", ""))
        head = [
            b"HTTP/1.1 101 Switching Protocols",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode("ascii")),
        ]
        if subprotocol:
            head.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
        if agreed:
            head.append(b"Sec-WebSocket-Extensions: " + agreed.encode("ascii"))
        return cls(sock, subprotocol, deflate, ping_seconds, b"\r\n".join(head) + b"\r\n\r\n")

    # -- sending -------------------------------------------------------------------------

    def send(self, data):
        """Send a message: text for str, binary for bytes (as one whole frame)."""
        if self._state is not _OPEN:
            raise ConnectionClosed(*(self._closed_by or (1005, "closing")))
        if self._deflate is not None:
            event = (
                TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=bytes(data))
            )
            self._write(self._connection().send(event))
        elif isinstance(data, str):
            self._write(_frame_of(0x81, data.encode("utf-8")))
        else:
            self._write(_frame_of(0x82, bytes(data)))

    def _write(self, frame):
        if self._handshake is not None:
            frame, self._handshake = self._handshake + frame, None
        self._writing = True
        try:
            self._sendall(frame)
        except OSError as exc:
            self._lost(f"connection lost: {exc}")
            raise ConnectionClosed(*self._closed_by) from None
        finally:
            self._writing = False

    # core.connection.DirectWriter's view of this connection: `_raw` is
    # gunicorn's socket, `busy()` says a frame is being written, and the
    # tail of a frame the socket did not take goes out through `sendall`.
    @property
    def _raw(self):
        return self._sock

    def busy(self):
        return self._writing

    def sendall(self, data):
        self._write(data)

    def _is_open(self):
        return self._state is _OPEN

    # -- receiving -----------------------------------------------------------------------

    def receive(self, timeout=None):
        """The next message from the client (str or bytes), or None after
        `timeout` seconds. Raises ConnectionClosed once the connection is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._queue:
                return self._queue.pop(0)
            if self._failure is not None:
                self._fail()
            if self._state is not _OPEN or self._shutdown is not None:
                self._end()
            if self._pump():
                continue
            if self._handshake is not None:
                self._flush()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            wait = self._next_ping - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if not self._wait_readable(None if wait == math.inf else max(wait, 0)):
                self._keepalive()

    def _end(self):
        """Finish closing (first with shut_down()'s code and reason, when that is
        why an open connection ends) and raise ConnectionClosed."""
        if self._state is _OPEN:
            self.close(*self._shutdown)  # open: only shut_down() brings us here
        else:
            self.close()
        raise ConnectionClosed(*self._closed_by)

    def _pump(self):
        """Read once what the socket holds, without waiting, and act on it:
        messages are queued, pings answered, a close completed. False when
        there was nothing to read."""
        self._readable = False
        if self._failure is not None:
            return False  # the parser has stopped at a protocol error
        size = _DEFLATE_READ_SIZE if self._deflate else _READ_SIZE
        try:
            if _gevent():  # the OS socket is non-blocking; one greenlet runs at a time
                # Into the worker's one buffer, then copied at its size: no
                # 64 KB allocation per read (a pong is 6 bytes).
                data = bytes(_READ_BUFFER[: self._real.recv_into(_READ_BUFFER, size)])
            elif select.select([self._real], [], [], 0)[0]:
                data = self._real.recv(size)
            else:
                return False
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self._lost("connection lost")
            return True
        # A read that finds data never waits: a client sending without pause
        # would keep this greenlet, and so the worker, to itself. Others run
        # between two reads.
        _let_others_run()
        if self._state is _CLOSING:
            # Our close is out: a client answers with its own close, after at
            # most what it had in flight. One that sends on and on is not
            # parsed further (parsing a flood of frames costs the worker).
            self._read_after_close += len(data)
            if self._read_after_close > CLOSE_READ_LIMIT:
                self._drain()
        if self._state is _DRAINING:
            return True  # dropped unread
        # The peer is alive: the next ping is due only after a quiet spell
        # (a ping in the middle of traffic would only add to it).
        self._pong_due = False
        if self.ping_seconds:
            self._next_ping = time.monotonic() + self.ping_seconds
        conn = self._connection()
        control_only = True
        try:
            conn.receive_data(data)
            for event in conn.events():
                kind = type(event)
                control_only = control_only and (kind is Pong or kind is Ping)
                self._on_event(event)
                if self._state is _DRAINING or self._failure is not None:
                    break
        except LocalProtocolError:  # data after the closing handshake
            return True
        if self._state is _OPEN and self._failure is None:
            self._refuse_if_declared_too_big(conn)
            if control_only:
                self._drop_idle_parser(conn)
        return True

    def _drop_idle_parser(self, conn):
        """A subscriber's client sends nothing but pongs: let wsproto's state
        (some 2 KB) go between them when nothing is half-read; the next read
        builds it afresh."""
        # wsproto has no public way to ask whether a frame or message is half
        # read, nor a size limit (python-hyper/wsproto#86, closed without one):
        # read its frame decoder's state, on the version pinned in pyproject.toml.
        proto = conn._proto
        if (
            self._deflate is None
            and self._parts is None
            and not len(proto._frame_decoder.buffer)
            and proto._frame_decoder.header is None
            and proto._message_decoder.opcode is None
        ):
            self._conn = None

    def _on_event(self, event):
        kind = type(event)
        if kind is TextMessage or kind is BytesMessage:
            if self._state is not _OPEN or self._failure is not None:
                return  # closing: what the client still sends is dropped
            data = event.data
            size = (
                len(data)
                if kind is BytesMessage or data.isascii()
                else len(data.encode("utf-8", "surrogatepass"))
            )
            self._size += size
            if self._size > MAX_MESSAGE:
                self._refuse_too_big()
                return
            if event.message_finished and self._parts is None:
                self._deliver(data)
            else:
                if self._parts is None:
                    self._parts = []
                self._parts.append(data)
                if event.message_finished:
                    parts, self._parts = self._parts, None
                    self._deliver("".join(parts) if kind is TextMessage else b"".join(parts))
        elif kind is Ping:
            if self._state is _OPEN:
                self._write(self._conn.send(event.response()))
        elif kind is Pong:
            pass  # any bytes read cleared _pong_due
        elif kind is CloseConnection:
            state = self._conn.state
            if state is ConnectionState.REMOTE_CLOSING:  # the client's close: answer it
                reply = self._conn.send(event.response())
                self._closed_by = (event.code, event.reason)
                self._state = _CLOSING
                if not self._flush(reply):
                    return
            elif state is ConnectionState.OPEN and self._state is _OPEN:
                # wsproto found a protocol error (1002) or invalid UTF-8 (1007):
                # the messages before it are handled first, then we close.
                reason = event.reason or ""
                if "codec can't decode" in reason:  # UnicodeDecodeError's words
                    reason = "text must be valid UTF-8"
                self._failure = (event.code, close_reason(reason))
                return
            # The handshake is over (or failed, e.g. garbage while we closed).
            self._drain()

    def _deliver(self, message):
        self._size = 0
        if self._queue is None:
            self._queue = []
        self._queue.append(message)

    def _refuse_if_declared_too_big(self, conn):
        """Refuse a message at its frame header: a frame that says it is too
        big is not read first. (The decoded size is checked as it arrives.)"""
        # wsproto shows a frame only once it is whole and has no size limit
        # (python-hyper/wsproto#86): its decoder's header, on the pinned version.
        header = conn._proto._frame_decoder.header
        if header is None or header.opcode.iscontrol() or self._deflate is not None:
            return
        remaining = header.payload_len - conn._proto._frame_decoder.payload_consumed
        if self._size + remaining > MAX_MESSAGE:
            self._refuse_too_big()

    def _refuse_too_big(self):
        self._parts, self._size = None, 0
        self._failure = (MESSAGE_TOO_BIG, f"a message holds at most {MAX_MESSAGE} bytes")

    def _connection(self):
        if self._conn is None:
            self._conn = Connection(
                ConnectionType.SERVER, [self._deflate] if self._deflate is not None else None
            )
        return self._conn

    # -- waiting -----------------------------------------------------------------------

    def _watcher(self):
        if self._io is None:
            import gevent

            self._io = gevent.get_hub().loop.io(self._real.fileno(), 1)
        return self._io

    def _on_readable(self):
        """The read watcher fired (on the event loop): wake the handler, once."""
        self._io.stop()
        self._readable = True
        wake = self._wake
        if wake is not None:
            wake()

    def _on_readable_in_relay(self):
        """The read watcher fired while a relay waits on its subscription (on
        the event loop). End of stream: the client hung up, end the wait for
        good. Bytes: wake the relay to read them."""
        self._io.stop()
        try:
            peeked = self._real.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            self._io.start(self._on_readable_in_relay)
            return
        except OSError:
            peeked = b""
        if not peeked:
            self._sub.hang_up()
            return
        self._readable = True
        self._sub.wake()

    def _sendall(self, data):
        """All of `data`: at once on the OS socket when it takes it (the usual
        case), else through gunicorn's, which parks the greenlet meanwhile."""
        if _gevent():
            try:
                sent = self._real.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._sock.sendall(data)

    def _flush(self, data=b""):
        """Write the handshake's response if it is still unsent, and `data`,
        raising nothing; False when the connection was lost."""
        if self._handshake is not None:
            data, self._handshake = self._handshake + data, None
        if data:
            try:
                self._sendall(data)
            except OSError:
                self._lost("connection lost")
                return False
        return True

    def _wait_readable(self, timeout):
        """Park until the socket is readable (True), or `timeout` seconds pass
        or shut_down() is called (False)."""
        if not _gevent():
            try:
                return bool(select.select([self._real], [], [], timeout)[0])
            except (OSError, ValueError):
                return True  # closed: the next read says so
        from gevent.hub import Waiter, get_hub

        hub = get_hub()
        waiter = Waiter(hub)
        timer = None
        self._wake = functools.partial(waiter.switch, True)
        self._watcher().start(self._on_readable)
        if timeout is not None:
            timer = hub.loop.timer(timeout)
            timer.start(waiter.switch, False)
        try:
            return waiter.get()
        finally:
            self._io.stop()
            self._wake = None
            if timer is not None:
                timer.close()

    def _keepalive(self):
        """Ping when it is time; drop a peer that did not answer the last one."""
        now = time.monotonic()
        if now < self._next_ping or self._state is not _OPEN:
            return
        if self._pong_due:
            self._lost("no answer to a ping")
            return
        self._pong_due = True
        self._next_ping = now + self.ping_seconds
        try:
            self._write(_PING)
        except ConnectionClosed:
            pass

    # -- closing -------------------------------------------------------------------------

    def close(self, code=NORMAL_CLOSURE, reason=""):
        """Close with `code` and `reason`, waiting up to CLOSE_TIMEOUT for the
        client's answer (idempotent; never raises)."""
        if self._failure is not None:
            self._fail()
        elif self._state is _OPEN:
            self._send_close(code, reason)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while self._state is _CLOSING or self._state is _DRAINING:
            # The deadline holds even for a client that sends on and on
            # instead of closing (_pump() finds data every time).
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not self._pump() and not self._wait_readable(remaining)):
                self._state = _CLOSED
        self._queue = None

    def _send_close(self, code, reason):
        frame = self._connection().send(CloseConnection(code=code, reason=reason or None))
        self._state = _CLOSING
        self._closed_by = (code, reason)
        try:
            self._sock.settimeout(CLOSE_TIMEOUT)  # a client that reads nothing holds nobody
        except OSError:
            pass
        self._flush(frame)

    def _fail(self):
        """Close for the protocol error (or too big a message) found: nothing
        after it is read but to be dropped."""
        code, reason = self._failure
        self._failure = None
        if self._state is _OPEN:
            self._send_close(code, reason)
        self._drain()

    def _drain(self):
        """Stop writing (the client sees the end of the stream, and closes in
        turn) and drop what it still sends until it does."""
        if self._state is _CLOSED:
            return
        self._state = _DRAINING
        try:
            self._real.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _lost(self, reason):
        """The client is gone (or must be): nothing more can be said to it."""
        if self._state is _OPEN or self._closed_by is None:
            self._closed_by = (1006, reason)
        self._state = _CLOSED
        self.abort()

    def abort(self):
        """Cut the TCP connection now (e.g. the subscription's on_abort: a
        consumer dropped for falling behind that is stuck writing to a client
        that reads nothing). Its pending write fails with EPIPE. The OS
        socket's shutdown, not gevent's, which would fail it with EBADF."""
        try:
            self._real.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def shut_down(self, reason, code=SERVICE_RESTART):
        """The worker is stopping, or the account this socket was opened with
        changed (core.lifecycle, another greenlet): the handler closes with
        `code` and the reason as soon as it next waits."""
        self._shutdown = (code, close_reason(reason))
        wake = self._wake
        if wake is not None and _gevent():
            import gevent

            gevent.get_hub().loop.run_callback(wake)

    def _release(self):
        if self._io is not None:
            self._io.close()
            self._io = None
        self._conn = self._parts = self._queue = self._wake = self._sub = None

    # -- the loop of a hub-fed socket -----------------------------------------------------

    def subscribed(self, subscription, *, hello, heartbeat):
        """The whole life of a socket that only receives a channel, for a
        route handler to return: `subscription` (`hub.subscribe(...)`, entered
        here), `hello(sub)` sent first, then the channel's messages as
        `{"id", "data"}` frames; what the client sends is dropped. While it
        idles, the connection gives up its greenlet (core.parking)."""
        with subscription as sub:
            self.send(hello(sub))
            for item in self.relay(sub, heartbeat=heartbeat, park=True):
                if isinstance(item, parking.Idle):
                    yield item

    def relay(self, sub, *, encode=encode, on_reset=None, heartbeat, park=False):
        """Relay hub subscription `sub` to the client and yield what the client
        sends, from this one greenlet.

        `encode(msg)`: the text (or bytes) to send for a message, or None to
        skip it (default: the channel frame `{"id", "data"}`). `on_reset(reset)`:
        what to send when the subscriber missed messages (the app re-reads
        its state; None sends nothing); default: `encode(reset)`. Waits are at
        most `heartbeat` seconds (and keepalive pings go out meanwhile).
        Ends when the connection does: the hub dropped the subscriber (close
        1013, or 1012 when the worker stops, with the reason), the client
        closed or vanished (noticed at once), or the handler's connection was closed.
        `park`: also yield a core.parking.Idle before each wait the listener's
        direct writes make idle (for `subscribed`).
        """
        framed = encode is _default_encode and self._deflate is None
        writer = None
        if framed and on_reset is None:
            # While the relay waits, the hub's listener writes live messages
            # onto the socket itself, one pre-framed send each.
            writer = _direct_writer({"gunicorn.socket": self}, _cached_frame, self._is_open)
            sub.write_directly(writer)
        park = park and writer is not None
        gevent = _gevent()
        try:
            while True:
                while self._queue:
                    yield self._queue.pop(0)
                if self._failure is not None:
                    self._fail()
                if self._state is not _OPEN or self._shutdown is not None:
                    if self._state is _OPEN:
                        self.close(*self._shutdown)
                    return
                wait = min(heartbeat, max(self._next_ping - time.monotonic(), 0))
                if self._handshake is not None:
                    self._flush()
                if gevent:
                    self._wake, self._sub = sub.wake, sub
                    self._watcher().start(self._on_readable_in_relay)
                else:
                    wait = min(wait, POLL_SECONDS)
                if park:
                    yield parking.Idle(sub, wait)
                try:
                    items = sub.wait(wait)
                except SubscriptionClosed as closed:
                    if closed.reason == CLIENT_GONE:
                        self._lost("connection lost")
                    else:
                        code = SERVICE_RESTART if lifecycle.stopping() else TRY_AGAIN_LATER
                        self.close(code, close_reason(closed.reason))
                    return
                finally:
                    if gevent:
                        self._io.stop()
                for item in items:
                    if item.is_reset:
                        out = on_reset(item) if on_reset is not None else encode(item)
                    elif framed:
                        self._write(item.encoded(_frame))
                        continue
                    else:
                        out = encode(item)
                    if out is not None:
                        self.send(out)
                if self._readable or not gevent:
                    self._pump()
                self._keepalive()
        except ConnectionClosed:
            return
        finally:
            self._wake = self._sub = None
            sub.write_directly(None)


def _negotiate_deflate(header):
    """permessage-deflate for the first offer we can accept: (extension,
    response parameters) or (None, None). The server's context is not kept
    between messages (server_no_context_takeover, RFC 7692 §7.1.1.1): its
    compressor, some 256 KB, exists only while a message is being sent."""
    for offer in header.split(","):
        offer = offer.strip()
        if offer.split(";", 1)[0].strip() != "permessage-deflate":
            continue
        extension = PerMessageDeflate(server_no_context_takeover=True)
        try:
            agreed = extension.accept(offer)
        except ValueError:  # a parameter that is not a number
            continue
        if agreed is None or agreed is False:
            continue
        return extension, "permessage-deflate" + (f"; {agreed}" if agreed else "")
    return None, None


# -- routes ----------------------------------------------------------------------------


class _HandedBack(Response):
    """What a WebSocket view returns: the socket is no longer HTTP. Under
    gunicorn, StopIteration out of the WSGI call makes the worker close the
    connection without writing a response (flask-sock's way)."""

    def __call__(self, environ, start_response):
        if "gunicorn.socket" in environ:
            raise StopIteration
        return super().__call__(environ, start_response)


def route(path, bp):
    """Register `handler(ws, **view_args)` as the WebSocket endpoint `path` of
    blueprint `bp`. The handler runs after the handshake; when it returns (or
    the client leaves) the connection is closed. A handler may instead return
    a generator that is the rest of the connection's life (`ws.subscribed`),
    which may go on without a greenlet while idle (core.parking). Refused and
    HTTPException close with 1008 and the reason; a Redis outage with 1013;
    any other error is logged and closes with 1011."""

    def decorator(handler):
        @functools.wraps(handler)
        def view(*args, **kwargs):
            quotas.admit_connection(request.environ)  # a 429 to the handshake
            ws = WebSocket.accept(
                request.environ, ping_seconds=current_app.config["WS_PING_SECONDS"]
            )
            parking.run(_session(ws, handler, args, kwargs, request.environ), request.environ)
            return _HandedBack()

        bp.route(path, websocket=True)(view)
        return handler

    return decorator


def _session(ws, handler, args, kwargs, environ):
    """A connection's life: the handler, then the rest it returned, if any."""
    with lifecycle.connection("websocket", ws.shut_down, environ):
        del environ  # a parked connection keeps this frame: not the whole request
        try:
            rest = handler(ws, *args, **kwargs)
            if rest is not None:
                yield from rest
        except ConnectionClosed:
            pass
        except Refused as exc:
            ws.close(exc.code, close_reason(str(exc)))
        except HTTPException as exc:  # e.g. current_user() on a bad ?access_token=
            ws.close(POLICY_VIOLATION, refusal(exc))
        except REDIS_UNAVAILABLE as exc:
            log.warning("Redis unavailable: %s", exc)
            ws.close(TRY_AGAIN_LATER, "storage unavailable, retry shortly")
        except Exception:
            log.exception("WebSocket handler %s failed", handler.__name__)
            ws.close(INTERNAL_ERROR, "internal error")
        finally:
            ws.close()
            ws._release()


def init_app(app):
    @app.before_request
    def guard_websocket_upgrade():
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return
        if not origin_allowed(request.headers.get("Origin")):
            abort_json(403, "WebSocket connections from this Origin are not allowed")
