"""The per-worker hub: one Redis listener and the registry of local subscribers
(docs/architecture.md, "The message path").

Publishing and reading are the log's (core/stream_log.py); a client's cursor,
catch-up and mailbox are its subscription's (core/subscription.py). The hub
adds what is shared by a whole worker: exactly one listening connection, read
by one greenlet, which fans each message out to the local subscribers of its
channel (`Subscription.offer` never blocks).

A worker hears only the channels it serves: the listener subscribes to a
channel's notifications when its first local subscriber arrives and
unsubscribes IDLE_KEEP seconds after the last one leaves. Only the listener
writes to its connection; a new channel is handed to it through a set of
pending channels and a wake-up message on the worker's own control channel.
A subscriber of a channel whose notifications are not confirmed yet waits
(catching up) until they are: its catch-up read then happens after the
confirmation, so everything published before it is in the stream and
everything after arrives as a notification, with no window between them.
When the listener loses Redis, every subscription is put back into
catching-up mode and resumes from its own cursor once the listener, and its
channel, are back.

The code uses `threading` primitives, which gunicorn's gevent worker has
monkey-patched into greenlet ones: waiting parks one greenlet. The same hub
also works (with real threads) under the `gthread` worker for the benchmarks.
"""

import logging
import os
import random
import socket
import threading
import time
from collections import deque

import redis

from core.offload import spawn
from core.redis_connections import RedisConnections
from core.stream_log import START, Message, StreamLog
from core.subscription import Subscription

log = logging.getLogger(__name__)

PING_INTERVAL = 10.0  # listener pings Redis after this much silence...
PING_TIMEOUT = 10.0  # ...and reconnects when the pong does not come
IDLE_KEEP = 60.0  # a channel's known newest id outlives its last local subscriber this long
TAIL_LENGTH = 16  # recent messages per channel a resuming subscriber can get from memory


class _Local:
    """The subscriptions of one channel in this worker, and the channel's
    newest id as far as this worker knows it.

    `newest` is exact while the listener connection of `epoch` lasts: it was
    taken from a subscription that had just caught up with the stream, and
    every later notification updates it. A new subscriber "from now", or one
    resuming from exactly `newest`, then goes live at once with no Redis round
    trip. A channel keeps its entry for IDLE_KEEP seconds after its last
    subscriber leaves: long-poll clients leave and come back after every
    message.

    `tail` holds the last few messages up to `newest`, contiguous: a client
    resuming a little behind (a long-poll coming back after the next
    broadcast went out) gets them from memory instead of a Redis read. When
    a catch-up read the whole stream and it was short, the tail starts at
    START: a client asking for everything retained (a long-poll's first
    poll) is served from memory too. The stream is trimmed only beyond its
    MAXLEN, so a tail no longer than that is everything Redis holds."""

    __slots__ = (
        "confirmed",
        "epoch",
        "idle_since",
        "newest",
        "subscribers",
        "tail",
        "tail_from",
        "tail_length",
    )

    def __init__(self, tail_length):
        self.subscribers = set()
        self.confirmed = None  # the listener epoch in which Redis confirmed our SUBSCRIBE
        self.newest = None
        self.epoch = None
        self.idle_since = None
        self.tail = deque()
        self.tail_from = None  # the tail holds every message after this id
        self.tail_length = tail_length

    def known(self, key, epoch, whole=None):
        """`key` is the newest id (a catch-up read it): the tail starts again
        there, or at START with `whole`, every message the stream holds."""
        self.newest, self.epoch = key, epoch
        self.tail.clear()
        self.tail_from = key
        if whole is not None and len(whole) <= self.tail_length:
            self.tail.extend(whole)
            self.tail_from = START

    def record(self, msg):
        """`msg` came right after `newest` (notifications arrive in id order)."""
        if len(self.tail) >= self.tail_length:
            self.tail_from = self.tail.popleft().key
        self.tail.append(msg)
        self.newest = msg.key

    def since(self, cursor):
        """The tail's messages after `cursor`, or None if it does not reach back to it."""
        if cursor == self.tail_from:
            return list(self.tail)
        for i, msg in enumerate(self.tail):
            if msg.key == cursor:
                return list(self.tail)[i + 1 :]
        return None


class Hub(StreamLog):
    """The log (publish, read), plus this worker's listener and subscribers."""

    def __init__(
        self,
        redis_client,
        connections,
        prefix="rt:",
        queue_size=1000,
        queue_bytes=1024 * 1024,
        maxlen=1000,
        ttl_seconds=7 * 24 * 3600,
        min_replicas=0,
        replica_timeout_ms=500,
    ):
        super().__init__(
            redis_client, prefix, maxlen, ttl_seconds, min_replicas, replica_timeout_ms
        )
        # where the listener connects (core/redis_connections.py); a URL will do
        self.connections = (
            RedisConnections.from_url(connections) if isinstance(connections, str) else connections
        )
        self.queue_size = queue_size  # a subscriber's mailbox, in messages...
        self.queue_bytes = queue_bytes  # ...and in bytes of message data
        self._channels = {}
        self._lock = threading.Lock()
        self._epoch = 0
        self._connected = False
        self._listener = None
        self._stopped = False
        self.connected_event = threading.Event()
        # Plain counters, copied into core/metrics.py's metrics every few seconds:
        # the delivery path never calls prometheus_client. (Plain `+=`: exact
        # under gevent, one greenlet at a time; the gthread worker's threads,
        # for benchmarks only, may lose an update now and then.)
        self.reconnects = 0
        self.notifications = 0  # notifications the listener received
        self.delivered = 0  # messages handed to subscribers (see _dispatch)
        self.dropped = 0  # messages thrown away with slow consumers' mailboxes
        self.slow_consumer_cuts = 0
        self.resets = 0  # Resets handed to subscribers whose cursor was gone
        self._watchers = {}  # channel -> callback(data): the server's own notices
        self._to_subscribe = set()  # channels the listener is to subscribe to
        self._wake_sent = False  # a wake-up for them is on its way to the listener
        self._control = None  # this worker's own control channel, named by the listener

    # -- subscribing ------------------------------------------------------------

    def watch(self, channel, callback):
        """Call `callback(data)` in the listener for each message on `channel`
        this worker hears from now on: for the server's own notices (not a
        subscriber: no catch-up, no resume, not counted; it must not block)."""
        self._watchers[channel] = callback
        self.start()
        self._ask_to_subscribe(channel)

    def subscribe(self, channel, cursor=None, on_abort=None, page_bytes=None):
        """A subscription from `cursor` (id tuple; None = only what comes after
        the `with` starts; START = everything retained), for a `with` block:
        in place when the block starts, gone when it ends. `on_abort` cuts
        the client's connection if it stops reading after being dropped as a
        slow consumer. `page_bytes` bounds each catch-up read by size (see
        read_page)."""
        return Subscription(self, channel, cursor, on_abort, page_bytes)

    def recent(self, channel, cursor):
        """The messages after `cursor` (an id tuple) this worker holds in
        memory, when it holds every one of them: a long-poll coming back a
        little behind, or a first poll asking for everything retained while
        that is short. None when it does not know them all (or `cursor` is
        None, "from now"). Such a poll is answered at once, with no
        subscription to set up and tear down."""
        if cursor is None:
            return None
        with self._lock:
            local = self._channels.get(channel)
            if local is None or not self._is_live(local):
                return None
            if cursor == local.newest:
                return []  # up to date (a poll after each broadcast): no tail to walk
            backlog = local.since(cursor)
        if backlog:
            self.delivered += len(backlog)
        return backlog

    def attach(self, sub):
        """Register `sub` (its `with` block starts)."""
        self.start()
        registered, new_channel = self._attach(sub)
        if not registered:
            # "From now" means from this call: fix the position before the
            # caller tells its client it is subscribed.
            sub.cursor = self.newest_key(sub.channel)
            registered, new_channel = self._attach(sub)
        if new_channel:
            self._ask_to_subscribe(sub.channel)
        if self._stopped:  # a draining worker: send the client elsewhere at once
            sub.close("server restarting: reconnect to resume")

    def _attach(self, sub):
        """Register `sub`: (registered, whether its channel is new here). Not
        registered (and nothing done) if it has no cursor and the channel's
        newest id is not known here."""
        with self._lock:
            local = self._channels.get(sub.channel)
            known = None
            if local is not None and self._is_live(local):
                known = local.newest
            if known is not None and sub.cursor in (None, known):
                # Nothing to read: the listener offers everything after `known`.
                sub.go_live_at(known)
            elif (
                known is not None
                and sub.cursor is not None
                and (backlog := local.since(sub.cursor)) is not None
            ):
                sub.go_live_at(known, backlog)  # a little behind: from memory
            elif sub.cursor is None:
                return False, False
            new_channel = local is None
            if new_channel:
                local = self._channels[sub.channel] = _Local(min(TAIL_LENGTH, self.maxlen))
            local.subscribers.add(sub)
            local.idle_since = None
            return True, new_channel

    def _is_live(self, local):
        """The listener hears `local`'s channel and knows its newest id (under the lock)."""
        return self._connected and local.confirmed == self._epoch and local.epoch == self._epoch

    def _ask_to_subscribe(self, channel):
        """Have the listener subscribe to `channel`'s notifications: it owns its
        connection, so it is woken by a message on its control channel (one
        wake-up for every channel asked for meanwhile). If Redis is away, the
        listener subscribes to every channel it serves when it is back."""
        with self._lock:
            self._to_subscribe.add(channel)
            if self._wake_sent or self._control is None:
                return
            self._wake_sent = True
            control = self._control
        try:
            self.redis_client.publish(control, "subscribe")
        except redis.RedisError as exc:
            log.debug("hub: could not wake the listener (%s); it subscribes on reconnect", exc)
            with self._lock:
                self._wake_sent = False

    def detach(self, sub):
        """Unregister `sub` (its `with` block ended, or it was dropped)."""
        with self._lock:
            local = self._channels.get(sub.channel)
            if local is not None:
                local.subscribers.discard(sub)
                if not local.subscribers:
                    local.idle_since = time.monotonic()

    def note_newest(self, channel, key, epoch, whole=None):
        """A subscription of `channel` caught up to `key` during `epoch`;
        `whole`: it read the stream from its start, and these are all of it."""
        with self._lock:
            local = self._channels.get(channel)
            if (
                local is None
                or epoch != self._epoch
                or not self._connected
                or local.confirmed != epoch
            ):
                return
            if (
                local.epoch != epoch
                or local.newest is None
                or key > local.newest
                or (whole is not None and key == local.newest)
            ):
                local.known(key, epoch, whole)

    def _forget_idle(self, now, pubsub):
        """In the listener: drop the channels nobody here has wanted for
        IDLE_KEEP seconds, and stop hearing them. One whose SUBSCRIBE is not
        confirmed yet stays until it is: so a confirmation always belongs to
        the channel's current entry."""
        with self._lock:
            idle = [
                name
                for name, local in self._channels.items()
                if local.idle_since is not None
                and now - local.idle_since > IDLE_KEEP
                and (local.confirmed == self._epoch or not self._connected)
            ]
            for name in idle:
                del self._channels[name]
                self._to_subscribe.discard(name)
            idle = [name for name in idle if name not in self._watchers]
        if idle:
            pubsub.unsubscribe(*map(self.notification_channel, idle))

    def drop(self, sub, reason):
        """Disconnect one subscriber (it may resume from its cursor)."""
        log.info("hub: dropping a subscriber of %r: %s", sub.channel, reason)
        self.detach(sub)
        sub.close(reason)

    def live_epoch(self, channel=None):
        """An id of the current listener connection, or None while disconnected
        (or, with `channel`, while that channel's notifications are not heard)."""
        if not self._connected:
            return None
        if channel is not None:
            local = self._channels.get(channel)
            if local is None or local.confirmed != self._epoch:
                return None
        return self._epoch

    def stats(self):
        with self._lock:
            return {
                "connected": self._connected,
                "channels": sum(1 for c in self._channels.values() if c.subscribers),
                "subscribers": sum(len(c.subscribers) for c in self._channels.values()),
                "reconnects": self.reconnects,
                "notifications": self.notifications,
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
            self.detach(sub)
            sub.close(reason)

    def _run(self):
        delay = 0.0
        while not self._stopped:
            if delay:
                time.sleep(delay)
            began = time.monotonic()
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                if not self._stopped:  # (a stopped hub's Redis may go away first)
                    log.warning("hub: lost Redis (%s: %s); reconnecting", type(exc).__name__, exc)
            except Exception:
                log.exception("hub: listener failed; restarting it")
            finally:
                self._set_connected(False)
            stable = time.monotonic() - began > 5
            delay = 0.1 if stable else min(max(delay * 2, 0.1), 5.0)
            delay *= random.uniform(0.8, 1.2)

    def _listen(self):
        # named in CLIENT LIST: which worker's listener it is
        pubsub = self.connections.listener(
            self.keys.hub_control(socket.gethostname(), os.getpid()),
            is_sharded=lambda name: name.startswith(self.keys.notifications_prefix),
            ping_timeout=PING_TIMEOUT,
        )
        try:
            with self._lock:
                self._control = self.keys.hub_control(socket.gethostname(), os.getpid())
                self._to_subscribe = {*self._channels, *self._watchers}
                self._wake_sent = False
            # The control channel's confirmation says connected (a new epoch);
            # only then are the served channels subscribed (_subscribe_asked),
            # and each is live once its own confirmation arrives. On a cluster
            # each master's connection confirms on its own: a channel confirmed
            # before the control channel would be ignored and never go live.
            pubsub.subscribe(self._control)
            last_heard = last_sweep = time.monotonic()
            ping_sent = None
            while not self._stopped:
                self._subscribe_asked(pubsub)
                msg = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if now - last_sweep > IDLE_KEEP / 4:
                    self._forget_idle(now, pubsub)
                    last_sweep = now
                if msg is None:
                    if ping_sent is not None and now - ping_sent > PING_TIMEOUT:
                        raise redis.ConnectionError("no answer to PING")
                    if ping_sent is None and now - last_heard > PING_INTERVAL:
                        pubsub.ping()
                        ping_sent = now
                    continue
                last_heard, ping_sent = now, None
                kind, name = msg["type"], msg["channel"]
                if kind == "message" and name != self._control:
                    self.notifications += 1
                    self._dispatch(self.keys.channel_of_notification(name), msg["data"])
                elif kind == "subscribe":
                    if name == self._control:
                        self._set_connected(True)
                    else:
                        self._confirm(self.keys.channel_of_notification(name))
        finally:
            pubsub.close()

    def _subscribe_asked(self, pubsub):
        """Subscribe to the channels asked for since the last turn (a wake-up
        message on the control channel brought the listener here at once)."""
        with self._lock:
            if not self._connected:
                return  # (not before the control channel's confirmation: see _listen)
            asked = [
                name
                for name in self._to_subscribe
                if name in self._channels or name in self._watchers
            ]
            self._to_subscribe.clear()
            self._wake_sent = False
        if asked:
            pubsub.subscribe(*map(self.notification_channel, asked))

    def _confirm(self, channel):
        """Redis confirmed our SUBSCRIBE to `channel`: its subscribers catch up
        now; every later message reaches them as a notification."""
        with self._lock:
            local = self._channels.get(channel)
            if local is None or not self._connected or local.confirmed == self._epoch:
                return  # not served any more, or already live (a repeated SUBSCRIBE)
            local.confirmed = self._epoch
            subs = tuple(local.subscribers)
        for sub in subs:
            sub.resync()

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

    def _dispatch(self, channel, payload):
        local = self._channels.get(channel)
        if local is None:
            watcher = self._watchers.get(channel)
            if watcher is not None:
                watcher(payload.partition(" ")[2][1:])  # the data, after the id and kind
            return  # nobody here listens to that channel any more
        msg_id, _, typed = payload.partition(" ")
        msg = Message(msg_id, typed[1:], typed[:1] == "j")
        with self._lock:
            if local.epoch == self._epoch and local.newest is not None and msg.key > local.newest:
                local.record(msg)
            subscribers = tuple(local.subscribers)
        for sub in subscribers:
            sub.offer(msg)
        # One addition per message, not one per subscriber: the few offers
        # that deliver nothing (a subscriber catching up, closed, or cut off)
        # took themselves back already (Subscription.offer).
        self.delivered += len(subscribers)
