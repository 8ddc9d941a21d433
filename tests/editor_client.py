"""A Python client of the collaborative editor (the algorithm of
static/js/editor.js), for the convergence test and bench/editor_ops.py."""

import json
import random
import time
import uuid

import websocket

from core import ot


class SimClient:
    """The browser client's algorithm (static/js/editor.js) in Python, on a
    real WebSocket: one op in flight, a buffer behind it, reconnects with ?v=."""

    def __init__(self, server, doc, seed):
        self.url = f"{server.ws_url}/editor/{doc}/ws"
        self.rng = random.Random(seed)
        self.version = None
        self.text = ""
        self.inflight = None
        self.buffer = None
        self.ready = False
        self.error = None
        self.edits = 0
        self.resyncs = 0  # snapshots instead of an ack: op too far behind
        self.ack_latencies = []
        self.connect()

    def connect(self):
        query = f"?v={self.version}" if self.version is not None else ""
        self.ws = websocket.create_connection(self.url + query, timeout=10)
        self.ready = False
        while not self.ready:
            self.handle(self.ws.recv())

    def send(self, message):
        self.ws.send(json.dumps(message))

    def submit(self, op):
        self.inflight = {"op": op, "id": uuid.uuid4().hex, "sent": time.monotonic()}
        self.send(
            {"type": "op", "v": self.version, "op": ot.to_json(op), "id": self.inflight["id"]}
        )

    def edit(self):
        """A random local change, as a user would type or delete."""
        n = len(self.text)
        at = self.rng.randint(0, n)
        if n and self.rng.random() < 0.35:
            op = ot.normalize([at if at < n else n - 1, -1])
        else:
            op = ot.normalize([at, self.rng.choice(["a", "b", "😀", "e\u0301", "\n", "xyz"])])
        self.text = ot.apply(self.text, op)
        self.edits += 1
        if self.inflight is None and self.ready:
            self.submit(op)
        else:
            self.buffer = op if self.buffer is None else ot.compose(self.buffer, op)

    def handle(self, raw):
        message = json.loads(raw)
        kind = message["type"]
        if kind == "snapshot":
            # With a reason: our op was too far behind to merge; as the browser
            # does, drop the unsent edits and carry on from this snapshot.
            assert message.get("reason") or not message["reset"], (
                "a reconnect should catch up, not reset"
            )
            if message.get("reason"):
                self.inflight = self.buffer = None
                self.resyncs += 1
            self.text, self.version = message["text"], message["v"]
        elif kind == "ready":
            self.ready = True
            if self.inflight:
                self.send(
                    {
                        "type": "op",
                        "v": self.version,
                        "op": ot.to_json(self.inflight["op"]),
                        "id": self.inflight["id"],
                    }
                )
            elif self.buffer:
                op, self.buffer = self.buffer, None
                self.submit(op)
        elif kind == "ack" or (
            kind == "op" and self.inflight and message["id"] == self.inflight["id"]
        ):
            if self.inflight is None:
                return
            self.ack_latencies.append(time.monotonic() - self.inflight["sent"])
            self.version, self.inflight = message["v"], None
            if self.buffer is not None and self.ready:
                op, self.buffer = self.buffer, None
                self.submit(op)
        elif kind == "op":
            op = ot.from_json(message["op"])
            if self.inflight:
                self.inflight["op"], op = ot.transform(self.inflight["op"], op)
            if self.buffer:
                self.buffer, op = ot.transform(self.buffer, op)
            self.text = ot.apply(self.text, op)
            self.version = message["v"]

    def pump(self, seconds):
        self.ws.settimeout(max(seconds, 0.001))  # 0 would make the socket non-blocking
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise AssertionError(f"server closed: {data[2:].decode()}")
                self.handle(data.decode())
                self.ws.settimeout(0.001)
        except websocket.WebSocketTimeoutException:
            pass

    def run(self, edits, think=0.02, reconnects=0.04):
        try:
            while self.edits < edits:
                self.edit()
                self.pump(self.rng.uniform(0, think))
                if self.rng.random() < reconnects:  # drop the connection now and then
                    self.ws.close()
                    time.sleep(self.rng.uniform(0, 0.05))
                    self.connect()
            deadline = time.monotonic() + 30
            while (self.inflight or self.buffer) and time.monotonic() < deadline:
                self.pump(0.05)
        except Exception as exc:  # reported by the test
            self.error = exc

    def settle(self):
        self.pump(1.0)
        self.ws.close()
