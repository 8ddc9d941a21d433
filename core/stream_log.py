"""The channel log in Redis: message ids, the publish script, and reads
(docs/architecture.md, "The message path").

Publishing appends to a capped Redis Stream per channel (the log, and the
source of every message id) and, in the same Lua script, PUBLISHes the entry
on the channel's own notification channel (`notification_channel`), which
only the workers serving that channel subscribe to. Because both happen
atomically, notifications arrive in id order. Reading the stream from a client's cursor is how every
transport resumes without loss.

A `Message` is only what the log holds: an id, the data and whether the data
is JSON. Wire formats belong to the transports (core/transports/), which
encode a message once per worker through `Message.encoded`.
"""

import json
import re
import threading
import time

from redis.cluster import RedisCluster

from core import scripts
from core.keys import Keys

# Channels clients may name in /pub and /sub. Apps use internal names with a
# ":" (e.g. "qa:board"), which no client can reach through those routes.
PUBLIC_CHANNEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
CHANNEL_RULE = "1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit"

START = (0, 0)  # cursor meaning "from the oldest retained message"
_MAX_PART = 2**64 - 1
_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?\Z")
CATCH_UP_PROBE = 8  # first batch of a byte-bounded read (StreamLog.read_page)


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


class NotReplicated(Exception):
    """Published, but fewer replicas than asked confirmed it in time: a
    failover now could lose it. It may still be delivered."""

    def __init__(self, id, confirmed, wanted, timeout_ms):
        super().__init__(
            f"{confirmed} of {wanted} replicas confirmed the message within {timeout_ms} ms"
        )
        self.id = id


class Message:
    """One channel message: id, data, and whether the data is JSON text."""

    __slots__ = ("_encoded", "data", "id", "is_json", "key")
    is_reset = False

    def __init__(self, id, data, is_json):
        self.id = id
        self.key = parse_id(id)
        self.data = data
        self.is_json = is_json
        self._encoded = None

    @property
    def value(self):
        """The payload as Python: parsed JSON (once per worker), or the text."""
        return self.encoded(_parse) if self.is_json else self.data

    def encoded(self, encoder):
        """`encoder(self)`, computed once per message and worker and shared by
        every subscriber: a transport's wire frame, or an app's own frame
        derived from the message. Keyed by the encoder function itself, so
        pass a module-level function, not a fresh lambda."""
        if self._encoded is None:
            self._encoded = {}
        try:
            return self._encoded[encoder]
        except KeyError:
            result = self._encoded[encoder] = encoder(self)
            return result


def _parse(msg):
    return json.loads(msg.data)


class Reset:
    """The client's cursor is gone (trimmed, expired or never existed): it has
    missed messages and must reload its state. Delivery continues after `id`,
    the newest message at the time of the reset. Each transport says how a
    reset looks on its wire; each app decides what to do about it."""

    __slots__ = ("id",)
    is_reset = True

    def __init__(self, id):
        self.id = id


class StreamLog:
    """Publishing to and reading from the channels' streams."""

    def __init__(
        self,
        redis_client,
        prefix="rt:",
        maxlen=1000,
        ttl_seconds=7 * 24 * 3600,
        min_replicas=0,
        replica_timeout_ms=500,
    ):
        self.redis_client = redis_client  # pooled client for commands (shared with the app)
        # on a cluster, notifications are shard channels (core/sharded_pubsub.py)
        self.cluster = isinstance(redis_client, RedisCluster)
        self.keys = Keys(prefix)  # (checks the prefix)
        self.maxlen = maxlen
        self.ttl_ms = int(ttl_seconds * 1000)
        # publish_replicated() waits for this many replicas to have a message
        self.min_replicas = min_replicas
        self.replica_timeout_ms = replica_timeout_ms
        # every script of lua/, registered once (the apps' too: hub.scripts[name])
        self.scripts = scripts.load(
            redis_client,
            {
                "maxlen": maxlen,
                "ttl_ms": self.ttl_ms,
                "publish": "SPUBLISH" if self.cluster else "PUBLISH",
            },
        )
        self._publish = self.scripts["publish"]
        self._reads = _SharedReads()
        self.published = 0  # messages published through this object (core/metrics.py)

    def stream_key(self, channel):
        return self.keys.stream(channel)

    def notification_channel(self, channel):
        """The pub/sub channel on which each message of `channel` is announced."""
        return self.keys.notifications(channel)

    # -- publishing ---------------------------------------------------------

    def publish(self, channel, data, is_json=False):
        """Append `data` (str; JSON text when is_json) to `channel`; returns its id."""
        msg_id = self._publish(**self._publish_call(channel, data, is_json))
        self.published += 1
        return msg_id

    def publish_replicated(self, channel, data, is_json=False):
        """publish(), then wait until `min_replicas` replicas have the message
        (Redis WAIT): for publishers who were promised that an acknowledged
        message survives a failover (`POST /pub`, the stdin broadcaster).
        Raises NotReplicated when fewer confirm within the timeout."""
        if not self.min_replicas:
            return self.publish(channel, data, is_json)
        # One pipeline is one connection: WAIT counts the replicas that have
        # every write made on its own connection, so it must share it.
        pipe = self._channel_pipeline(channel)
        self._publish(**self._publish_call(channel, data, is_json), client=pipe)
        pipe.wait(self.min_replicas, self.replica_timeout_ms)
        msg_id, confirmed = pipe.execute()
        self.published += 1  # whatever the replicas say: the master has it
        if confirmed < self.min_replicas:
            raise NotReplicated(msg_id, confirmed, self.min_replicas, self.replica_timeout_ms)
        return msg_id

    def publish_many(self, channel, texts, is_json=False):
        """Publish several messages in one round trip; returns their ids."""
        pipe = self._channel_pipeline(channel)
        for text in texts:
            self._publish(**self._publish_call(channel, text, is_json), client=pipe)
        ids = pipe.execute()
        self.published += len(ids)
        return ids

    def _channel_pipeline(self, channel):
        """A pipeline on one connection to the master that holds `channel`'s
        stream: on a cluster, its slot's (redis-py's cluster pipeline runs no
        scripts)."""
        client = self.redis_client
        if self.cluster:
            client = client.get_redis_connection(client.get_node_from_key(self.stream_key(channel)))
        return client.pipeline(transaction=False)

    def _publish_call(self, channel, data, is_json):
        if not channel or " " in channel:
            raise ValueError(f"invalid channel name {channel!r}")
        return {
            "keys": [self.stream_key(channel)],
            "args": [self.notification_channel(channel), "j" if is_json else "t", data],
        }

    def publish_json(self, channel, obj):
        return self.publish(channel, json.dumps(obj, separators=(",", ":")), is_json=True)

    # -- reading ------------------------------------------------------------------

    def read(self, channel, start, count):
        """Up to `count` messages from id `start` (inclusive; "-" = oldest)."""
        return [
            Message(entry_id, fields.get("d", ""), fields.get("t") == "j")
            for entry_id, fields in self.redis_client.xrange(
                self.stream_key(channel), start, "+", count
            )
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
            messages = self._reads.read(self.read, channel, start, count)
            return messages, len(messages) == count
        messages, size, batch = [], 0, CATCH_UP_PROBE
        while True:
            wanted = min(batch, count - len(messages))
            got = self._reads.read(self.read, channel, start, wanted + bool(messages))
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
        newest = self.redis_client.xrevrange(self.stream_key(channel), "+", "-", count=1)
        return parse_id(newest[0][0]) if newest else START

    def newest_id(self, channel):
        return format_id(self.newest_key(channel))


class _SharedReads:
    """Identical reads asked for at the same moment go to Redis once.

    When thousands of clients connect in a burst, each catch-up asks for the
    same page (a long-poll's first poll: everything retained). Per page there
    is at most one read in flight and one batch gathering: the batch's first
    caller lets the others join (one turn of the event loop, or for as long
    as the read before it is in flight), closes the batch to newcomers,
    reads, and hands every caller the same messages. So a slow Redis sees
    two reads per page however many clients pile up behind them. A caller
    only ever joins a read that has not been sent yet, so it sees everything
    published before it asked: what a catch-up relies on.
    """

    def __init__(self):
        self._gathering = {}  # page -> the batch callers may still join
        self._in_flight = {}  # page -> the batch whose read is out

    def read(self, read, *args):
        batch = self._gathering.get(args)
        if batch is not None:
            batch.done.wait()
            if batch.error is None:
                return batch.result
            if isinstance(batch.error, Exception):
                raise batch.error
            return read(*args)  # its caller was killed (not a read error): read alone
        batch = self._gathering[args] = _Batch()
        try:
            try:
                ahead = self._in_flight.get(args)
                if ahead is not None:
                    ahead.done.wait()  # its read may have gone out before our callers asked
                else:
                    time.sleep(0)  # let the other callers of this moment join (gevent: yields)
            finally:  # closed: whoever asks from now on joins the next batch
                if self._gathering.get(args) is batch:
                    del self._gathering[args]
            self._in_flight[args] = batch
            batch.result = read(*args)
        except BaseException as exc:
            batch.error = exc
            raise
        finally:
            if self._in_flight.get(args) is batch:
                del self._in_flight[args]
            batch.done.set()
        return batch.result


class _Batch:
    __slots__ = ("done", "error", "result")

    def __init__(self):
        self.done = threading.Event()
        self.error = None
        self.result = None
