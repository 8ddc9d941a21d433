"""Subscribers that resume the way real clients do (SSE `Last-Event-ID`,
WebSocket `?last_event_id=`, long-poll `cursor`), and the checks on what
they received: the chaos and failover tests share them."""

import json
import multiprocessing
import random
import socket
import threading
import time

import requests
import websocket

from core.stream_log import parse_id
from realtime_client import parse_sse

# -- resuming clients ------------------------------------------------------------


class Resumer(threading.Thread):
    """A subscriber that reconnects after any disconnect, from its last id,
    until it has `want` messages (or is stopped). `events` records, in
    arrival order, ("msg", id, data) and ("reset", cursor)."""

    transport = None

    def __init__(self, server, channel, cursor="0", want=None, until=None):
        super().__init__(daemon=True)
        self.until = until  # or: done once a message with this text arrives
        self.server = server
        self.channel = channel
        self.cursor = cursor
        self.want = want
        self.events = []
        self.closes = []  # why the server ended a stream: SSE close data, WS close codes
        self.errors = []
        self.connects = 0
        self.stopping = threading.Event()
        self.done = threading.Event()
        self._sock = None

    # what the tests look at
    def messages(self):
        return [e[2] for e in self.events if e[0] == "msg"]

    def ids(self):
        return [e[1] for e in self.events if e[0] == "msg"]

    def resets(self):
        return [i for i, e in enumerate(self.events) if e[0] == "reset"]

    def finished(self):
        if self.until is not None:
            return (
                bool(self.events)
                and self.events[-1][0] == "msg"
                and self.events[-1][2] == self.until
            )
        return self.want is not None and len(self.messages()) >= self.want

    def _message(self, msg_id, data):
        self.events.append(("msg", msg_id, data))
        self.cursor = msg_id

    def _reset(self, cursor):
        self.events.append(("reset", cursor))
        self.cursor = cursor

    def run(self):
        while not self.stopping.is_set() and not self.finished():
            try:
                self._session()
            except Exception as exc:  # any disconnect: resume from the last id
                self.errors.append(repr(exc)[:200])
            self._sock = None
            if self.finished() or self.stopping.is_set():
                break
            time.sleep(random.uniform(0.1, 0.3))
        self.done.set()

    def drop(self):
        """Cut the current connection (the client will resume)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        self.drop()


class SSEResumer(Resumer):
    transport = "sse"

    def _session(self):
        headers = {"Accept": "text/event-stream"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        with requests.get(
            f"{self.server.url}/sub/{self.channel}", headers=headers, stream=True, timeout=(5, 40)
        ) as response:
            if response.status_code != 200:
                self.errors.append(f"HTTP {response.status_code}")
                return
            self._sock = getattr(getattr(response.raw, "connection", None), "sock", None)
            self.connects += 1
            for sse in parse_sse(response.iter_content(chunk_size=None)):
                if sse.event == "message":
                    self._message(sse.id, sse.data)
                elif sse.event == "reset":
                    self._reset(json.loads(sse.data)["cursor"])
                elif sse.event == "close":
                    self.closes.append(sse.data)
                # (the opening `subscribed` event is skipped, as the WebSocket's
                # first frame is: the cursor moves with what arrives)
                if self.finished() or self.stopping.is_set():
                    return


class WSResumer(Resumer):
    transport = "ws"

    def _session(self):
        query = f"?last_event_id={self.cursor}" if self.cursor else ""
        ws = websocket.create_connection(
            f"{self.server.ws_url}/sub/{self.channel}/ws{query}", timeout=40, suppress_origin=True
        )
        self._sock = ws.sock
        self.connects += 1
        try:
            while True:
                opcode, payload = ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    self.closes.append(code)
                    return
                frame = json.loads(payload)
                if "subscribed" in frame:
                    continue
                if frame.get("reset"):
                    self._reset(frame["cursor"])
                else:
                    self._message(frame["id"], frame["data"])
                if self.finished() or self.stopping.is_set():
                    return
        finally:
            try:
                ws.close(timeout=1)
            except Exception:
                pass


class PollResumer(Resumer):
    transport = "longpoll"

    def _session(self):
        with requests.Session() as session:
            while not self.finished() and not self.stopping.is_set():
                response = session.get(
                    f"{self.server.url}/sub/{self.channel}",
                    params={"cursor": self.cursor},
                    headers={"Accept": "application/json"},
                    timeout=40,
                )
                if response.status_code != 200:
                    self.errors.append(f"HTTP {response.status_code}")
                    return
                self.connects += 1
                body = response.json()
                if body.get("reset"):
                    self._reset(body["cursor"])
                for event in body["events"]:
                    self._message(event["id"], event["data"])
                self.cursor = body["cursor"]


TRANSPORTS = (SSEResumer, WSResumer, PollResumer)


def start_clients(
    server, channel, per_transport, want=None, cursor="0", transports=TRANSPORTS, until=None
):
    clients = [
        cls(server, channel, cursor=cursor, want=want, until=until)
        for cls in transports
        for _ in range(per_transport)
    ]
    for client in clients:
        client.start()
    return clients


def wait_connected(clients, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.connects or c.transport == "longpoll" for c in clients):
            return
        time.sleep(0.1)
    raise AssertionError("clients did not connect")


def wait_all(clients, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(predicate(c) for c in clients):
            return True
        time.sleep(0.1)
    return False


def finish(clients, timeout):
    """Wait until every client has what it wants; stop them all either way.
    Returns the clients that did not finish (left hanging)."""
    deadline = time.monotonic() + timeout
    for client in clients:
        client.done.wait(max(0.0, deadline - time.monotonic()))
    hanging = [c for c in clients if not c.done.is_set()]
    for client in clients:
        client.stop()
    return hanging


def describe(client, expected):
    got = client.messages()
    first_bad = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    return (
        f"{client.transport}: {len(got)}/{len(expected)} messages, first difference "
        f"at {first_bad}: {got[first_bad : first_bad + 3]} vs "
        f"{expected[first_bad : first_bad + 3]}; connects={client.connects} "
        f"resets={client.resets()} closes={client.closes[-3:]} "
        f"errors={client.errors[-3:]}"
    )


def assert_exactly_once_in_order(clients, expected, resets_allowed=False):
    for client in clients:
        assert client.messages() == expected, describe(client, expected)
        ids = [tuple(map(int, i.split("-"))) for i in client.ids()]
        assert ids == sorted(set(ids)), describe(client, expected)
        if not resets_allowed:
            assert not client.resets(), describe(client, expected)


def admin_token_of(server, password):
    """A bearer token of the demo administrator (DEMO_ADMIN_PASSWORD=`password`)."""
    response = requests.post(
        f"{server.url}/auth/token", timeout=10, json={"username": "admin", "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


# -- publishing through POST /pub, and what each client must end with ---------------


class HTTPPublisher:
    """Publishes `count` messages through `POST /pub`, one after another, in
    a process of its own (300 client threads in this one would starve it of
    the GIL). A message not answered 201 is sent again, under a new text
    (`m0007.1`). Each answer is a JSON line in `log`."""

    def __init__(self, server, channel, token, log):
        self.url = f"{server.url}/pub/{channel}"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        self.log = log
        self.log.touch()
        self.process = None

    def start(self, count):
        self.process = multiprocessing.get_context("fork").Process(
            target=self._publish, args=([f"m{i:04d}" for i in range(count)],), daemon=True
        )
        self.process.start()

    def join(self, timeout):
        self.process.join(timeout)
        return self.process.exitcode == 0

    def publish(self, name):
        """Publish one message from this process (until it is acknowledged)."""
        self._publish([name])

    def answers(self):
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def acked(self):
        """[(time, id, text)] of the acknowledged messages."""
        return [(a["at"], a["id"], a["text"]) for a in self.answers() if a.get("id")]

    def refused(self):
        return [(a["at"], a["status"], a["why"]) for a in self.answers() if not a.get("id")]

    def _publish(self, names):
        with requests.Session() as session, open(self.log, "a") as log:
            for name in names:
                attempt = 0
                while not self._send(session, log, f"{name}.{attempt}"):
                    attempt += 1
                    time.sleep(0.05)

    def _send(self, session, log, text):
        try:
            response = session.post(self.url, data=text, headers=self.headers, timeout=10)
            status, why = response.status_code, response.text[:200]
        except requests.RequestException as exc:
            status, why = type(exc).__name__, str(exc)[:200]
        answer = {"at": time.monotonic(), "text": text, "status": status, "why": why}
        if status == 201:
            answer["id"] = json.loads(why)["id"]
        log.write(json.dumps(answer) + "\n")
        log.flush()
        return status == 201


def segments(client):
    """The client's messages split at its resets: [(start id, [(id, text)])]."""
    parts = [("0", [])]
    for event in client.events:
        if event[0] == "reset":
            parts.append((event[1], []))
        else:
            parts[-1][1].append((event[1], event[2]))
    return parts


def check_client(client, surviving):
    for _start, messages in segments(client):
        keys = [parse_id(i) for i, _ in messages]
        assert keys == sorted(set(keys)), "ids out of order or repeated: " + describe(
            client, [t for _, t in surviving]
        )
    start, messages = segments(client)[-1]
    expected = [text for i, text in surviving if parse_id(i) > parse_id(start)]
    assert [t for _, t in messages] == expected, describe(client, expected)


def failover_mid_stream(server, channel, token, answers, fail, stream, after=None):
    """What both failover tests run: 300 resuming clients (100 per
    transport), 1,000 messages through `POST /pub` from a process of its own,
    `fail()` once 300 are acknowledged, then "END". Checks what both ask:
    service back within 10 s (from the first refused publish to the next
    acknowledged one), no worker restarted, refusals only 503 or a connection
    error, and each client ending with what `stream()` ([(id, text)]: the
    channel as Redis holds it after the failover) holds after its starting
    point, once and in order. `after(workers)` checks more once publishing
    is over. Returns {acked, lost (acknowledged texts not in the stream),
    refused, back (seconds), resets (clients)}."""
    from tests.clients import wait_until, worker_pids

    publisher = HTTPPublisher(server, channel, token, answers)
    clients = start_clients(server, channel, per_transport=100, until="END.0")
    try:
        wait_connected(clients)
        workers = worker_pids(server)
        publisher.start(count=1000)
        assert wait_until(lambda: len(publisher.acked()) >= 300, timeout=60), (
            len(publisher.acked()),
            publisher.refused()[-3:],
        )
        failed_at = time.monotonic()
        fail()
        assert publisher.join(180), publisher.refused()[-3:]
        publisher.publish("END")
        acked, refused = publisher.acked(), publisher.refused()

        # back: from the publisher's first refused request until one succeeded
        # again, on its clock (the test process, 300 client threads, may be
        # seconds late to call fail() and to notice what followed)
        first_refused = min((t for t, _, _ in refused if t > failed_at), default=None)
        back = 0.0
        if first_refused is not None:
            back = min(t for t, _, _ in acked if t > first_refused) - first_refused
        assert back < 10, refused[-3:]
        assert worker_pids(server) == workers
        assert {status for _, status, _ in refused} <= {503, "ConnectionError"}, refused[-3:]
        if after is not None:
            after(workers)

        hanging = finish(clients, timeout=120)
        assert not hanging, [describe(c, []) for c in hanging[:3]]
        surviving = stream()
        for client in clients:
            check_client(client, surviving)
        kept = {text for _, text in surviving}
        return {
            "acked": len(acked),
            "lost": [text for _, _, text in acked if text not in kept],
            "refused": len(refused),
            "back": back,
            "resets": sum(bool(c.resets()) for c in clients),
        }
    finally:
        for client in clients:
            client.stop()
