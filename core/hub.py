"""The per-worker message hub: one Redis listener, a cursor per client (DESIGN §3).

Publishing appends to a capped Redis Stream per channel (the log, and the
source of every message id) and, in the same Lua script, PUBLISHes the entry
on one notification channel. Because both happen atomically, notifications
arrive in id order.

Each worker process has exactly one listening connection, read by one
greenlet, subscribed to that one notification channel. It fans each message
out to the local subscribers of its channel through bounded in-process
queues (`Subscription.offer` never blocks). Every worker receives every
channel's notifications and drops those nobody local wants: one subscription
per worker, nothing to add or remove as clients come and go, and no window in
which a channel is half-subscribed.

A subscription starts *catching up*: its consumer reads the stream from its
cursor (validating that the cursor still exists: if not, an explicit Reset)
while live notifications are parked in a pending list. Once a read comes back
short while the listener was connected the whole time, the pending messages
newer than the cursor are appended and the subscription goes live. Delivery is
deduplicated by id, so it is exactly once and in order. When the listener
loses Redis, every subscription is put back into catching-up mode and
resumes from its own cursor once the listener is back.

The code uses `threading` primitives, which gunicorn's gevent worker has
monkey-patched into greenlet ones: waiting parks one greenlet. The same hub
also works (with real threads) under the `gthread` worker for the benchmarks.
"""

import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections import deque
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import sse
from core.offload import spawn

log = logging.getLogger(__name__)

# Channels clients may name in /pub and /sub. Apps use internal names with a
# ":" (e.g. "qa:board"), which no client can reach through those routes.
PUBLIC_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
CHANNEL_RULE = "1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"

START = (0, 0)  # cursor meaning "from the oldest retained message"
_MAX_PART = 2**64 - 1
_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?\Z")
CATCH_UP_PAGE = 500
CATCH_UP_PROBE = 8  # first batch of a byte-bounded catch-up read (Hub.read_page)
PING_INTERVAL = 10.0  # listener pings Redis after this much silence...
PING_TIMEOUT = 10.0  # ...and reconnects when the pong does not come
ABORT_GRACE = 2.0  # a dropped consumer has this long to write its goodbye
IDLE_KEEP = 60.0  # a channel's known newest id outlives its last local subscriber this long

# Defines hub_publish(stream_key, channel, kind, data) for Lua scripts: XADD to
# the capped stream, refresh its TTL, PUBLISH the notification; returns the id.
# An app script that changes its state and calls hub_publish in the same script
# (see Hub.script) makes the change and its message one atomic step, delivered
# in commit order.
_PUBLISH_FUNCTION = """
local function hub_publish(stream_key, channel, kind, data)
  local id = redis.call('XADD', stream_key, 'MAXLEN', '~', %(maxlen)d, '*', 't', kind, 'd', data)
  redis.call('PEXPIRE', stream_key, %(ttl_ms)d)
  redis.call('PUBLISH', '%(notify)s', channel .. ' ' .. id .. ' ' .. kind .. data)
  return id
end
"""
_PREFIX_SAFE = re.compile(r"[A-Za-z0-9:_.-]*\Z")


class InvalidId(ValueError):
    """A client-supplied message id that is not of the form `ms-seq`."""


def parse_id(text):
    """`"1700000000000-3"` -> (1700000000000, 3); `"0"` -> (0, 0). Raises InvalidId."""
    match = _ID.match(text or "")
    if not match:
        raise InvalidId(f"invalid message id {text!r}: expected <ms>-<seq>")
    key = (int(match[1]), int(match[2] or 0))
    if key[0] > _MAX_PART or key[1] > _MAX_PART:
        raise InvalidId(f"invalid message id {text!r}: out of range")
    return key


def format_id(key):
    return f"{key[0]}-{key[1]}"


class Message:
    """One channel message; its wire encodings are computed once and shared."""

    __slots__ = ("_cache", "_json", "_sse", "data", "id", "is_json", "key")
    is_reset = False

    def __init__(self, id, data, is_json):
        self.id = id
        self.key = parse_id(id)
        self.data = data
        self.is_json = is_json
        self._sse = None
        self._json = None
        self._cache = None

    @property
    def value(self):
        """The payload as Python: parsed JSON (once per worker), or the text."""
        if not self.is_json:
            return self.data
        return self.cached("value", lambda: json.loads(self.data))

    def cached(self, key, build):
        """`build()` once per message and worker, shared by every subscriber:
        apps derive their own frames from a message without re-encoding it
        for each client."""
        if self._cache is None:
            self._cache = {}
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def sse(self):
        if self._sse is None:
            self._sse = sse.event(self.data, id=self.id)
        return self._sse

    @property
    def json(self):
        """`{"id": ..., "data": ...}`; JSON payloads are embedded as values."""
        if self._json is None:
            data = self.data if self.is_json else json.dumps(self.data, ensure_ascii=False)
            self._json = f'{{"id":"{self.id}","data":{data}}}'
        return self._json


class Reset:
    """The client's cursor is gone (trimmed, expired or never existed):
    it has missed messages and must reload its state. Delivery continues
    after `id`, the newest message at the time of the reset."""

    is_reset = True

    def __init__(self, id):
        self.id = id
        self.json = json.dumps({"reset": True, "cursor": id})
        self.sse = sse.event(self.json, event="reset", id=id)


class SubscriptionClosed(Exception):
    """The hub dropped this subscription (e.g. slow consumer); `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """One client's view of a channel: a cursor and a bounded mailbox.

    `offer()` runs on the listener and never blocks; `wait()` runs on the
    client's own greenlet and parks it until there is something to send.
    """

    def __init__(self, hub, channel, cursor, on_abort=None, page_bytes=None):
        self.hub = hub
        self.channel = channel
        self.cursor = cursor  # id tuple of the last message delivered or queued
        self.page_bytes = page_bytes  # a catch-up read stops at about this much data
        self.closed_reason = None
        self._on_abort = on_abort
        self._finished = False
        self._queue = deque()
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._catching_up = True
        self._pending = []
        self._pending_overflow = False
        self._direct = None  # a core.connection.DirectWriter, see write_directly
        self._idle = False  # the consumer is parked in wait() with nothing to do
        self._unsent = None  # the tail of a directly written frame the socket refused

    def write_directly(self, writer):
        """From now on, while the consumer is parked idle in `wait()`, the
        listener writes live messages straight to the client with `writer`
        (core.connection.DirectWriter) instead of queueing them and waking
        the consumer. The consumer must have written everything `wait()` gave
        it before it waits again, which a straight-line loop does. None: off."""
        self._direct = writer

    # -- listener side -------------------------------------------------

    def offer(self, msg):
        with self._lock:
            if self.closed_reason is not None:
                return
            if self._catching_up:
                if len(self._pending) < self.hub.queue_size:
                    self._pending.append(msg)
                else:  # nothing is lost: the catch-up reads these from the stream
                    self._pending.clear()
                    self._pending_overflow = True
                return
            if msg.key <= self.cursor:
                return  # already delivered by the catch-up
            if self._idle and self._direct is not None and self._write_direct(msg):
                return
            if len(self._queue) >= self.hub.queue_size:
                overflow = True
            else:
                overflow = False
                self._queue.append(msg)
                self.cursor = msg.key
        if overflow:
            self.hub.drop(self, "slow consumer: fell more than "
                          f"{self.hub.queue_size} messages behind")
        else:
            self._wakeup.set()

    def _write_direct(self, msg):
        """True when `msg` went to the socket (wholly, or its tail is left in
        `_unsent` for the consumer to finish); False: queue it as usual."""
        data = self._direct.frame(msg)
        try:
            sent = self._direct.try_send(data)
        except OSError:  # the client is gone: the consumer finds out on its own
            self._direct = None
            return False
        if sent is None:
            return False
        self.cursor = msg.key
        if sent < len(data):  # the socket is full: the consumer writes the rest
            self._unsent = data[sent:]
            self._idle = False
            self._wakeup.set()
        return True

    def resync(self):
        """The listener lost messages: read them from the stream again."""
        with self._lock:
            self._catching_up = True
            self._pending.clear()
            self._pending_overflow = False
        self._wakeup.set()

    def close(self, reason):
        self.closed_reason = reason
        self._wakeup.set()
        if self._on_abort is not None:
            timer = threading.Timer(ABORT_GRACE, self._abort_if_stuck)
            timer.daemon = True
            timer.start()

    def _abort_if_stuck(self):
        # The consumer did not notice within the grace period: it is blocked
        # writing to a client that stopped reading. Cut the connection.
        if not self._finished:
            self._on_abort()

    # -- consumer side ---------------------------------------------------

    def wait(self, timeout):
        """Messages (and Resets) to deliver, in order; [] after `timeout` seconds.

        Raises SubscriptionClosed once the hub has dropped this subscription.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._wakeup.clear()
            if self._unsent is not None:
                unsent, self._unsent = self._unsent, None
                try:
                    self._direct.sendall(unsent)
                except OSError as exc:
                    raise SubscriptionClosed(f"connection lost: {exc}") from exc
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            with self._lock:
                if self._queue:
                    items = list(self._queue)
                    self._queue.clear()
                    return items
            if self._catching_up:
                epoch = self.hub.live_epoch()
                if epoch is not None:
                    items = self._catch_up_step(epoch)
                    if items:
                        return items
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._idle = True
            try:
                woken = self._wakeup.wait(remaining)
            finally:
                self._idle = False
            if not woken:
                return []

    def _catch_up_step(self, epoch):
        with self._lock:
            # From here on, live messages are parked; the read below sees
            # everything published before it ran.
            self._pending.clear()
            self._pending_overflow = False
        hub = self.hub
        if self.cursor == START:
            entries, full_page = hub.read_page(self.channel, "-", CATCH_UP_PAGE,
                                               self.page_bytes)
        else:
            # The cursor's own message comes first (it proves the id is still
            # retained), so a page holds at least one more.
            entries, full_page = hub.read_page(self.channel, format_id(self.cursor),
                                               CATCH_UP_PAGE + 1, self.page_bytes, at_least=2)
            if not entries or entries[0].key != self.cursor:
                self.cursor = hub.newest_key(self.channel)
                return [Reset(format_id(self.cursor))]
            entries = entries[1:]
        if entries:
            self.cursor = entries[-1].key
        with self._lock:
            if not full_page and not self._pending_overflow and hub.live_epoch() == epoch:
                # The listener was connected since before the read: every
                # later message is in `pending` (or will be offered live).
                self._catching_up = False
                for msg in self._pending:
                    if msg.key > self.cursor:
                        entries.append(msg)
                        self.cursor = msg.key
                self._pending.clear()
                hub._note_newest(self.channel, self.cursor, epoch)
        return entries


class _Local:
    """The subscriptions of one channel in this worker, and the channel's
    newest id as far as this worker knows it.

    `newest` is exact while the listener connection of `epoch` lasts: it was
    taken from a subscription that had just caught up with the stream, and
    every later notification updates it. A new subscriber "from now", or one
    resuming from exactly `newest`, then goes live at once with no Redis round
    trip. A channel keeps its entry for IDLE_KEEP seconds after its last
    subscriber leaves: long-poll clients leave and come back after every
    message."""

    __slots__ = ("epoch", "idle_since", "newest", "subscribers")

    def __init__(self):
        self.subscribers = set()
        self.newest = None
        self.epoch = None
        self.idle_since = None


class Hub:
    def __init__(self, redis_client, redis_url, prefix="rt:", queue_size=1000,
                 maxlen=1000, ttl_seconds=7 * 24 * 3600):
        self.redis = redis_client  # pooled client for commands (shared with the app)
        self.redis_url = redis_url
        self.prefix = prefix
        self.notify_channel = f"{prefix}notify"
        self.queue_size = queue_size
        self.maxlen = maxlen
        self.ttl_ms = int(ttl_seconds * 1000)
        if not _PREFIX_SAFE.match(prefix):
            raise ValueError(f"REDIS_PREFIX {prefix!r}: use A-Z a-z 0-9 : _ . -")
        self._publish = self.script("return hub_publish(KEYS[1], ARGV[1], ARGV[2], ARGV[3])")
        self._channels = {}
        self._lock = threading.Lock()
        self._epoch = 0
        self._connected = False
        self._listener = None
        self._stopped = False
        self.connected_event = threading.Event()
        self.reconnects = 0

    # -- publishing ---------------------------------------------------------

    def stream_key(self, channel):
        return f"{self.prefix}stream:{channel}"

    def script(self, body):
        """Register a Lua script that may call hub_publish(stream_key, channel,
        kind, data); `kind` is 'j' (JSON) or 't' (text). Pass stream keys
        (`stream_key(channel)`) in KEYS."""
        prelude = _PUBLISH_FUNCTION % {"maxlen": self.maxlen, "ttl_ms": self.ttl_ms,
                                       "notify": self.notify_channel}
        return self.redis.register_script(prelude + body)

    def publish(self, channel, data, is_json=False):
        """Append `data` (str; JSON text when is_json) to `channel`; returns its id."""
        return self._publish(**self._publish_call(channel, data, is_json))

    def publish_many(self, channel, texts, is_json=False):
        """Publish several messages in one round trip; returns their ids."""
        pipe = self.redis.pipeline(transaction=False)
        for text in texts:
            self._publish(**self._publish_call(channel, text, is_json), client=pipe)
        return pipe.execute()

    def _publish_call(self, channel, data, is_json):
        if not channel or " " in channel:
            raise ValueError(f"invalid channel name {channel!r}")
        return {"keys": [self.stream_key(channel)],
                "args": [channel, "j" if is_json else "t", data]}

    def publish_json(self, channel, obj):
        return self.publish(channel, json.dumps(obj, separators=(",", ":")), is_json=True)

    # -- reading the log ------------------------------------------------------

    def read(self, channel, start, count):
        """Up to `count` messages from id `start` (inclusive; "-" = oldest)."""
        return [
            Message(entry_id, fields.get("d", ""), fields.get("t") == "j")
            for entry_id, fields in self.redis.xrange(self.stream_key(channel), start, "+", count)
        ]

    def read_page(self, channel, start, count, max_bytes=None, at_least=1):
        """Up to `count` messages from id `start` (inclusive), and whether
        there may be more after them.

        With `max_bytes`, reading also stops once the messages' data reach it
        (though not before `at_least` messages). It reads in batches sized
        from the messages read so far, so that a page of large messages is
        not fetched far beyond what the caller will send (a long-poll answer).
        """
        if max_bytes is None:
            messages = self.read(channel, start, count)
            return messages, len(messages) == count
        messages, size, batch = [], 0, CATCH_UP_PROBE
        while True:
            wanted = min(batch, count - len(messages))
            got = self.read(channel, start, wanted + bool(messages))
            if messages:
                # Each later batch starts at the last message read: if that is
                # gone (trimmed meanwhile), stop here rather than skip a gap;
                # the caller's next read from its cursor reports the reset.
                if not got or got[0].key != messages[-1].key:
                    return messages, True
                got = got[1:]
            for msg in got:
                messages.append(msg)
                size += len(msg.data)
                if size >= max_bytes and len(messages) >= at_least:
                    return messages, True
            if len(messages) == count:
                return messages, True
            if len(got) < wanted:
                return messages, False
            start = messages[-1].id
            # as many as the rest of the budget holds at the average size so far
            batch = max(CATCH_UP_PROBE, (max_bytes - size) * len(messages) // max(size, 1) + 1)

    def newest_key(self, channel):
        """Id of the channel's newest message as a tuple; START when empty."""
        newest = self.redis.xrevrange(self.stream_key(channel), "+", "-", count=1)
        return parse_id(newest[0][0]) if newest else START

    def newest_id(self, channel):
        return format_id(self.newest_key(channel))

    # -- subscribing ------------------------------------------------------------

    @contextmanager
    def subscribe(self, channel, cursor=None, on_abort=None, page_bytes=None):
        """Subscribe from `cursor` (id tuple; None = only what comes after this
        call; START = everything retained). `on_abort` cuts the client's connection
        if it stops reading after being dropped as a slow consumer. `page_bytes`
        bounds each catch-up read by size (see read_page)."""
        self.start()
        sub = Subscription(self, channel, cursor, on_abort, page_bytes)
        if not self._attach(sub):
            # "From now" means from this call: fix the position before the
            # caller tells its client it is subscribed.
            sub.cursor = self.newest_key(channel)
            self._attach(sub)
        if self._stopped:  # a draining worker: send the client elsewhere at once
            sub.close("server restarting: reconnect to resume")
        try:
            yield sub
        finally:
            sub._finished = True
            self._detach(sub)

    def _attach(self, sub):
        """Register `sub`; False (and nothing done) if it has no cursor and the
        channel's newest id is not known here."""
        with self._lock:
            local = self._channels.get(sub.channel)
            known = None
            if local is not None and local.epoch == self._epoch and self._connected:
                known = local.newest
            if known is not None and sub.cursor in (None, known):
                # Nothing to read: the listener offers everything after `known`.
                sub.cursor = known
                sub._catching_up = False
            elif sub.cursor is None:
                return False
            if local is None:
                local = self._channels[sub.channel] = _Local()
            local.subscribers.add(sub)
            local.idle_since = None
            return True

    def _detach(self, sub):
        with self._lock:
            local = self._channels.get(sub.channel)
            if local is not None:
                local.subscribers.discard(sub)
                if not local.subscribers:
                    local.idle_since = time.monotonic()

    def _note_newest(self, channel, key, epoch):
        """A subscription of `channel` caught up to `key` during `epoch`."""
        with self._lock:
            local = self._channels.get(channel)
            if local is None or epoch != self._epoch or not self._connected:
                return
            if local.epoch != epoch or local.newest is None or key > local.newest:
                local.newest, local.epoch = key, epoch

    def _forget_idle(self, now):
        with self._lock:
            idle = [name for name, local in self._channels.items()
                    if local.idle_since is not None and now - local.idle_since > IDLE_KEEP]
            for name in idle:
                del self._channels[name]

    def drop(self, sub, reason):
        """Disconnect one subscriber (it may resume from its cursor)."""
        log.info("hub: dropping a subscriber of %r: %s", sub.channel, reason)
        self._detach(sub)
        sub.close(reason)

    def live_epoch(self):
        """An id of the current listener connection, or None while disconnected."""
        return self._epoch if self._connected else None

    def stats(self):
        with self._lock:
            return {
                "connected": self._connected,
                "channels": sum(1 for c in self._channels.values() if c.subscribers),
                "subscribers": sum(len(c.subscribers) for c in self._channels.values()),
                "reconnects": self.reconnects,
            }

    # -- the listener ---------------------------------------------------------

    def start(self):
        if self._listener is not None:
            return
        with self._lock:
            if self._listener is None:
                self._listener = spawn(self._run)

    def stop(self):
        self._stopped = True

    def shutdown(self, reason):
        """The worker is stopping: end every subscription with `reason` (its
        client reconnects elsewhere and resumes from its cursor)."""
        self._stopped = True
        with self._lock:
            subs = [s for local in self._channels.values() for s in local.subscribers]
        for sub in subs:
            self._detach(sub)
            sub.close(reason)

    def _run(self):
        # No retries inside redis-py: a silent reconnect would skip our catch-up.
        client = redis.Redis.from_url(
            self.redis_url, decode_responses=True, retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2, socket_keepalive=True,
            # names the connection in CLIENT LIST: which worker's listener it is
            client_name=f"{self.prefix}hub:{socket.gethostname()}:{os.getpid()}",
        )
        delay = 0.0
        while not self._stopped:
            if delay:
                time.sleep(delay)
            began = time.monotonic()
            try:
                self._listen(client)
            except (redis.RedisError, OSError) as exc:
                log.warning("hub: lost Redis (%s: %s); reconnecting", type(exc).__name__, exc)
            except Exception:
                log.exception("hub: listener failed; restarting it")
            finally:
                self._set_connected(False)
            stable = time.monotonic() - began > 5
            delay = 0.1 if stable else min(max(delay * 2, 0.1), 5.0)
            delay *= random.uniform(0.8, 1.2)

    def _listen(self, client):
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.notify_channel)
            last_heard = last_sweep = time.monotonic()
            ping_sent = None
            while not self._stopped:
                msg = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if now - last_sweep > IDLE_KEEP / 4:
                    self._forget_idle(now)
                    last_sweep = now
                if msg is None:
                    if ping_sent is not None and now - ping_sent > PING_TIMEOUT:
                        raise redis.ConnectionError("no answer to PING")
                    if ping_sent is None and now - last_heard > PING_INTERVAL:
                        pubsub.ping()
                        ping_sent = now
                    continue
                last_heard, ping_sent = now, None
                kind = msg["type"]
                if kind == "message":
                    self._dispatch(msg["data"])
                elif kind == "subscribe":
                    self._set_connected(True)
        finally:
            pubsub.close()

    def _set_connected(self, connected):
        with self._lock:
            if connected == self._connected:
                return
            self._epoch += 1
            self._connected = connected
            subs = [s for local in self._channels.values() for s in local.subscribers]
        if connected:
            if self._epoch > 1:
                self.reconnects += 1
            self.connected_event.set()
            log.info("hub: listening on Redis (%d local subscribers catch up)", len(subs))
            for sub in subs:
                sub.resync()
        else:
            self.connected_event.clear()

    def _dispatch(self, payload):
        channel, _, rest = payload.partition(" ")
        local = self._channels.get(channel)
        if local is None:
            return  # nobody in this worker listens to that channel
        msg_id, _, typed = rest.partition(" ")
        msg = Message(msg_id, typed[1:], typed[:1] == "j")
        with self._lock:
            if local.epoch == self._epoch and (local.newest is None or msg.key > local.newest):
                local.newest = msg.key
            subscribers = tuple(local.subscribers)
        for sub in subscribers:
            sub.offer(msg)
