"""Test clients for the three transports, each collecting what it receives
on a background thread so a test can hold many at once."""

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests
import websocket

from realtime_client import parse_sse


class Collector:
    """Thread-safe list of received items with a blocking wait."""

    def __init__(self):
        self.items = []
        self.closed = threading.Event()
        self.error = None
        self._cond = threading.Condition()

    def add(self, item):
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout=15):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.items):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_count(self, n, timeout=15):
        return self.wait_for(lambda items: len(items) >= n, timeout)

    def messages(self):
        return [i for i in self.items if i.get("event", "message") == "message"]


class SSEClient(Collector):
    """An EventSource-like reader (realtime_client's parser): events are dicts
    {event, id, data}. A channel stream's opening `subscribed` event is kept
    apart, as `hello`, like the WebSocket's first frame."""

    def __init__(self, url, last_event_id=None, headers=None):
        super().__init__()
        self.headers = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id:
            self.headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=self.headers, stream=True, timeout=(5, 60))
        self.status = self.response.status_code
        self.served_by = self.response.headers.get("X-Served-By")
        self.retry = None
        self.comments = 0
        self.hello = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            for sse in parse_sse(
                iter(lambda: self.response.raw.read1(65536), b""),
                on_comment=self._comment,
                on_retry=self._retry,
            ):
                if sse.event == "subscribed" and self.hello is None and not self.items:
                    self.hello = json.loads(sse.data)
                    continue
                item = {"event": sse.event, "data": sse.data}
                if sse.id is not None:
                    item["id"] = sse.id
                self.add(item)
        except Exception as exc:  # connection cut: record it, the test decides
            self.error = exc
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def _comment(self, _text):
        self.comments += 1

    def _retry(self, milliseconds):
        self.retry = milliseconds

    def close(self):
        # Shut the socket itself: closing the response from this thread would
        # wait for the reader thread's pending read (up to a heartbeat).
        connection = getattr(self.response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.closed.wait(5)
        self.response.close()


class WSClient(Collector):
    """A WebSocket subscriber: frames are parsed JSON dicts."""

    def __init__(self, url, origin=None):
        super().__init__()
        self.ws = websocket.create_connection(
            url, timeout=60, origin=origin, suppress_origin=origin is None
        )
        self.close_code = None
        self.close_reason = None
        self.hello = None
        self._hello = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # The server's first frame says the subscription is in place.
        self._hello.wait(10)
        self.served_by = (self.hello or {}).get("served_by")

    def _read(self):
        try:
            while True:
                opcode, payload = self.ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self._record_close(payload)
                    break
                frame = json.loads(payload)
                if "subscribed" in frame and self.hello is None:
                    self.hello = frame
                    self._hello.set()
                else:
                    self.add(frame)
        except websocket.WebSocketConnectionClosedException:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            self._hello.set()
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def _record_close(self, payload):
        if len(payload) >= 2:
            self.close_code = int.from_bytes(payload[:2], "big")
            self.close_reason = payload[2:].decode("utf-8", "replace")

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def long_poll(url, cursor=None, timeout=60):
    params = {"cursor": cursor} if cursor else {}
    response = requests.get(
        url, params=params, headers={"Accept": "application/json"}, timeout=timeout
    )
    return response


class LongPoller(Collector):
    """Polls in a loop like the browser page: items are events {id, data};
    resets are recorded as {"reset": True, "cursor": ...}."""

    def __init__(self, url, cursor=None):
        super().__init__()
        self.url = url
        self.cursor = cursor
        self.served_by = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                try:
                    response = long_poll(self.url, self.cursor)
                except requests.ConnectionError:  # a worker going away: poll again
                    time.sleep(0.2)
                    continue
                if response.status_code != 200:
                    self.error = f"HTTP {response.status_code}: {response.text}"
                    time.sleep(0.2)
                    continue
                self.served_by.add(response.headers.get("X-Served-By"))
                body = response.json()
                if body.get("reset"):
                    self.add({"reset": True, "cursor": body["cursor"]})
                for event in body["events"]:
                    self.add(event)
                self.cursor = body["cursor"]
        except Exception as exc:
            self.error = exc
        finally:
            self.closed.set()

    def close(self):
        self._stop.set()


def data_of(sub):
    """The `data` of each item a client received (hellos and resets have none)."""
    return [item["data"] for item in sub.items if "data" in item]


# -- a websocket-client connection ---------------------------------------------------


def close_of(ws):
    """(code, reason) of the close frame the server sends next."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def next_of(ws, kind, timeout=10):
    """The next JSON message of type `kind` (skipping the others)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv())
        if message.get("type") == kind:
            return message
    raise AssertionError(f"no {kind} message")


# -- asking the server ---------------------------------------------------------


def healthz_bodies(server, workers=2, tries=100):
    """{pid: (status, body)} of /healthz from every worker (the kernel picks
    the worker, so ask until each has answered)."""
    bodies = {}
    for _ in range(tries):
        response = requests.get(server.url + "/healthz", timeout=5)
        bodies[response.json()["pid"]] = (response.status_code, response.json())
        if len(bodies) == workers:
            break
    return bodies


def wait_subscribed(server, count, timeout=10):
    """Wait until the workers report `count` subscribers in total (via /healthz)."""
    deadline = time.monotonic() + timeout
    seen = {}
    while time.monotonic() < deadline:
        body = requests.get(server.url + "/healthz", timeout=5).json()
        seen[body["pid"]] = body["subscribers"]
        if sum(seen.values()) >= count and len(seen) >= 2:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {count} subscribers, the workers report {seen}")


def wait_until(predicate, timeout=20, step=0.1):
    """The predicate's first truthy value within `timeout` seconds, else its last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def read_until_closed(sock, timeout, ended=None):
    """What a raw socket receives until the server closes it, or until
    `ended(received)` says the response is over (a chunked HTTP response on a
    keep-alive connection), within `timeout` s: (bytes, closed or ended).
    Silence until the deadline is neither."""
    received = b""
    deadline = time.monotonic() + timeout
    while not (ended and ended(received)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, True


def worker_pids(server):
    """The pids of a GunicornServer's workers (its master's children)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(server.process.pid)], capture_output=True, text=True
    ).stdout.split()
    return {int(p) for p in out}


# -- raw sockets and plain frame readers -------------------------------------------------


class WSFrames(Collector):
    """A WebSocket client that keeps every JSON frame the server sends, from
    the first (the apps' sockets send no `subscribed` hello), and the close
    frame's code and reason."""

    def __init__(self, url, origin=None):
        super().__init__()
        self.ws = websocket.create_connection(
            url, timeout=60, origin=origin, suppress_origin=origin is None
        )
        self.close_code = None
        self.close_reason = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            while True:
                opcode, payload = self.ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    if len(payload) >= 2:
                        self.close_code = int.from_bytes(payload[:2], "big")
                        self.close_reason = payload[2:].decode("utf-8", "replace")
                    break
                self.add(json.loads(payload))
        except websocket.WebSocketConnectionClosedException:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def send(self, message):
        self.ws.send(json.dumps(message))

    def first(self, predicate, since=0, timeout=15):
        """The first frame from index `since` on that satisfies `predicate`, or None."""
        found = []

        def check(items):
            found[:] = [i for i in items[since:] if predicate(i)][:1]
            return bool(found) or self.closed.is_set()

        self.wait_for(check, timeout)
        return found[0] if found else None

    def describe(self, since=0):
        close = (
            f"closed by the server with {self.close_code} {self.close_reason!r}"
            if self.close_code is not None
            else ("connection ended" if self.closed.is_set() else "still open")
        )
        return f"frames {self.items[since:][-8:]!r}; {close}"

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


def raw_request(server, request, rcvbuf=None, timeout=10):
    """A TCP connection to `server` that has sent `request` (text) and read
    nothing yet. `rcvbuf` (SO_RCVBUF, set before connecting) gives it a tiny
    receive window: a client that stops reading is stalled at once."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request.encode())
    return sock


def sse_request(channel):
    return f"GET /sub/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


def long_poll_request(channel):
    """A poll without a cursor: held until the next message (or the timeout)."""
    return f"GET /sub/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"


def ws_request(path):
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )


def read_until(sock, marker, limit=1 << 16):
    """Read from a raw socket until `marker` has arrived; returns what was read."""
    received = b""
    while marker not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}: {received[:300]!r}")
        received += chunk
        if len(received) > limit:
            raise AssertionError(f"no {marker!r} in the first {limit} bytes: {received[:300]!r}")
    return received


def ws_frames(data):
    """The complete frames (opcode, payload) of a server's unmasked WebSocket
    byte stream (after the HTTP 101 response), up to a frame cut short."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, header = data[at] & 0x0F, data[at + 1] & 0x7F, 2
        if size == 126:
            if at + 4 > len(data):
                break
            size, header = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif size == 127:
            if at + 10 > len(data):
                break
            size, header = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if at + header + size > len(data):
            break
        frames.append((opcode, data[at + header : at + header + size]))
        at += header + size
    return frames


def client_frame(opcode, payload, fin=True, rsv=0):
    """A frame as a client sends it: masked."""
    size = len(payload)
    if size < 126:
        head = bytes((int(fin) << 7 | rsv | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((int(fin) << 7 | rsv | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((int(fin) << 7 | rsv | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = b"\x0f\xa5\x3c\x96"
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


# -- processes, as /proc shows them ---------------------------------------------------------


def _stat_fields(pid):
    """/proc/<pid>/stat after "(comm)": state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid):
    """Running, and not a zombie waiting for its parent."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def parent_of(pid):
    return int(_stat_fields(pid)[1])


def children(pid):
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    return {int(p) for p in out}


def descendants(pid):
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def one_line_saying(result, text):
    """The one output line of a finished process with `text`; and no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, output
    return lines[0]
