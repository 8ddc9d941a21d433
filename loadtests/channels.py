"""Channel users, all on the project's Python client (realtime_client): the
publisher, and a subscriber for each of the three transports (SSE,
WebSocket, long-poll). Each message a subscriber receives is one row entry:
its publish-to-receipt delivery latency."""

import http.client
import json
import time
import uuid

import gevent
from _common import (
    CHANNEL,
    PASSWORD,
    PUBLISH_RATE,
    RATE_LIMITED,
    USERNAME,
    CheckFailed,
    SequenceCheck,
    hold_seconds,
    ms_since,
    report,
)
from locust import User, between, constant_pacing, task

from realtime_client import ClientError, Reset, login, publish, subscribe

# What realtime_client raises besides ClientError when a request does not get
# an answer (refused or reset connection, timeout, a broken response).
NO_ANSWER = (OSError, http.client.HTTPException)


class Publisher(User):
    """Publishes numbered JSON messages stamped with the time of sending
    (`sent`, ms since the epoch) on the bench channel at a steady rate, with a
    bearer token, so that every subscriber has something to receive and can
    tell how long each took to come."""

    fixed_count = 1
    wait_time = constant_pacing(1 / PUBLISH_RATE)
    PATH = "/pub/[channel]"

    def on_start(self):
        self.token = None
        self.new_epoch()

    def new_epoch(self):
        # After a failed publish we cannot know whether it went out: start a
        # new numbering, so that subscribers do not report a false gap.
        self.publisher, self.seq = uuid.uuid4().hex[:8], 0

    def log_in(self):
        """A bearer token, waiting out the login rate limit; None after 5 tries."""
        name = "/auth/token (publisher)"
        for _ in range(5):
            started = time.perf_counter()
            try:
                token = login(self.host, USERNAME, PASSWORD)
            except ClientError as exc:
                if exc.status != 429:
                    report(self, "POST", name, ms_since(started), exception=exc)
                    return None
                # the limiter doing its job: expected, in a row of its own
                report(self, "POST", name + RATE_LIMITED, ms_since(started))
                gevent.sleep(5)
                continue
            except NO_ANSWER as exc:
                report(self, "POST", name, ms_since(started), exception=exc)
                gevent.sleep(1)
                continue
            report(self, "POST", name, ms_since(started))
            return token
        return None

    @task
    def publish(self):
        if self.token is None:
            self.token = self.log_in()
            if self.token is None:
                return
        self.seq += 1
        body = json.dumps(
            {
                "pub": self.publisher,
                "seq": self.seq,
                "sent": time.time() * 1000,
                "text": f"bench message {self.seq}",
            }
        )
        started = time.perf_counter()
        try:
            publish(self.host, CHANNEL, body, token=self.token, is_json=True)
        except (ClientError, *NO_ANSWER) as exc:
            report(self, "POST", self.PATH, ms_since(started), len(body), exc)
            self.new_epoch()
            if getattr(exc, "status", None) == 401:
                self.token = None  # expired or revoked: log in again
            return
        report(self, "POST", self.PATH, ms_since(started), len(body))


class ChannelSubscriber(User):
    """realtime_client.subscribe on one transport, read on a greenlet of its
    own: holds the subscription for LOAD_HOLD_SECONDS, leaves, and 1-3 s
    later subscribes again from its last id, as a page closed and reopened
    does. (Reconnecting after the server drops a connection is the client's
    own business, inside `subscribe`: it shows only as a longer delivery.)

    Rows, of type REQUEST_TYPE:
    - `... delivery`: receipt time minus the publisher's `sent` stamp;
    - `... resumed`: a message published while away, delivered after
      subscribing again, timed since subscribing again;
    - `... reset` (a failure): the last id was gone, messages were missed;
    - `... refused` (a failure): the server refused the subscription for good.
    A message seen twice, out of order or missing (the publisher numbers
    them), or an id not above the previous one, makes its row a failure."""

    abstract = True
    wait_time = between(1, 3)
    TRANSPORT = REQUEST_TYPE = PATH = None

    def on_start(self):
        self.last_id, self.sequence = None, SequenceCheck()

    @task
    def listen(self):
        away_until = time.time() * 1000 if self.last_id is not None else None
        reader = gevent.spawn(self._read, away_until)
        try:
            reader.join(hold_seconds())
        finally:
            reader.kill()  # also when Locust stops this user mid-hold
        reader.get()  # an error in _read is the locustfile's own: Locust records it

    def _read(self, away_until):
        started = time.perf_counter()
        try:
            for event in subscribe(
                self.host, CHANNEL, transport=self.TRANSPORT, since=self.last_id
            ):
                if isinstance(event, Reset):
                    self._report(
                        "reset", 0, 0, CheckFailed(f"resume point lost, now at {event.cursor}")
                    )
                    self.last_id = event.cursor
                else:
                    self._deliver(event, started, away_until)
        except ClientError as exc:
            self._report("refused", ms_since(started), 0, exc)

    def _deliver(self, message, started, away_until):
        failure = None
        if self.last_id is not None and _order(message.id) <= _order(self.last_id):
            failure = CheckFailed(f"id {message.id} after {self.last_id}")
        self.last_id = message.id
        try:
            body = json.loads(message.data)
            sent = float(body["sent"])
        except (ValueError, KeyError, TypeError):
            return  # somebody else's message on the channel: not ours to time
        failure = self.sequence.check(body) or failure
        if away_until is not None and sent < away_until:
            self._report("resumed", ms_since(started), len(message.data), failure)
        else:
            self._report(
                "delivery", max(0.0, time.time() * 1000 - sent), len(message.data), failure
            )

    def _report(self, what, response_time, length, exception=None):
        report(self, self.REQUEST_TYPE, f"{self.PATH} {what}", response_time, length, exception)


def _order(message_id):
    """A stream id `<ms>-<seq>` as a tuple that sorts like the ids do."""
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


class SSESubscriber(ChannelSubscriber):
    """EventSource on GET /sub/<channel>, resuming with Last-Event-ID."""

    weight = 8
    TRANSPORT, REQUEST_TYPE, PATH = "sse", "SSE", "/sub/[channel]"


class WebSocketSubscriber(ChannelSubscriber):
    """WS /sub/<channel>/ws, resuming with ?last_event_id=."""

    weight = 8
    TRANSPORT, REQUEST_TYPE, PATH = "websocket", "WS", "/sub/[channel]/ws"


class LongPollClient(ChannelSubscriber):
    """GET /sub/<channel>?cursor=..., polling again as soon as an answer comes.
    Its delivery latency includes the time between two polls, which a
    long-poll client does pay."""

    weight = 4
    TRANSPORT, REQUEST_TYPE, PATH = "longpoll", "LP", "/sub/[channel]"
