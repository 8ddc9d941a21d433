"""One client's view of a channel: a cursor, a catch-up, and a bounded mailbox.

A subscription starts *catching up*: its consumer reads the stream from its
cursor (validating that the cursor still exists: if not, an explicit Reset)
while live notifications are parked in a pending list. Once a read comes back
short while the listener heard the channel the whole time, the pending messages
newer than the cursor are appended and the subscription goes live. Delivery is
deduplicated by id, so it is exactly once and in order. When the listener
loses Redis, the hub puts every subscription back into catching-up mode and
each resumes from its own cursor once the listener is back.

`offer()` runs on the hub's listener and never blocks; `wait()` runs on the
client's own greenlet and parks it until there is something to send. A
consumer whose messages the listener writes for it may `park()` instead: it
gives up its greenlet while idle, and is called back when it has work (see
core/parking.py). The
mailbox is bounded in messages and in bytes: a consumer that falls further
behind is dropped as a slow consumer (it may resume from its cursor).

The code uses `threading` primitives, which gunicorn's gevent worker has
monkey-patched into greenlet ones: waiting parks one greenlet.
"""

import threading
import time

from core.stream_log import START, Reset, format_id

CATCH_UP_PAGE = 500
ABORT_GRACE = 2.0  # a dropped consumer has this long to write its goodbye
CLIENT_GONE = "client gone"  # the reason of a subscription whose client hung up


class SubscriptionClosed(Exception):
    """The hub dropped this subscription (e.g. slow consumer); `reason` says why."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """A cursor and a bounded mailbox; see the module's docstring."""

    # One per connection, so kept small: no per-instance dict, and a plain
    # list for the mailbox (the consumer always takes all of it at once).
    __slots__ = (
        "_catching_up",
        "_direct",
        "_finished",
        "_idle",
        "_lock",
        "_on_abort",
        "_on_wake",
        "_pending",
        "_pending_bytes",
        "_pending_overflow",
        "_poked",
        "_queue",
        "_queued_bytes",
        "_unsent",
        "_wakeup",
        "channel",
        "closed_reason",
        "cursor",
        "hub",
        "page_bytes",
    )

    def __init__(self, hub, channel, cursor, on_abort=None, page_bytes=None):
        self.hub = hub
        self.channel = channel
        self.cursor = cursor  # id tuple of the last message delivered or queued
        self.page_bytes = page_bytes  # a catch-up read stops at about this much data
        self.closed_reason = None
        self._on_abort = on_abort
        self._finished = False
        self._queue = []
        self._queued_bytes = 0
        self._wakeup = threading.Event()
        self._lock = threading.Lock()
        self._catching_up = True
        self._pending = []
        self._pending_bytes = 0
        self._pending_overflow = False
        self._direct = None  # a core.connection.DirectWriter, see write_directly
        self._idle = False  # the consumer is parked in wait() with nothing to do
        self._poked = False  # wake() was called: the next wait() returns at once
        self._unsent = None  # (writer, tail of a directly written frame the socket refused)
        self._on_wake = None  # parked: called (once) instead of setting _wakeup

    def go_live_at(self, key, backlog=()):
        """The hub knows the channel's newest id is `key`, and `backlog` is
        every message between the cursor and it: nothing to read from Redis."""
        self._queue.extend(backlog)
        self._queued_bytes += sum(len(msg.data) for msg in backlog)
        self.hub.delivered += len(backlog)
        self.cursor = key
        self._catching_up = False

    def __enter__(self):
        self.hub.attach(self)
        return self

    def __exit__(self, *exc_info):
        self._finished = True  # an abort timer still running has nothing to cut
        self.hub.detach(self)
        # Let go of the client's objects: the writer and the aborter reach back
        # to the request's environ, which holds this subscription's close (its
        # open connection, core.lifecycle). Kept, each finished connection is a
        # reference cycle of some 40 objects that only the cycle collector frees.
        self._direct = self._on_abort = self._on_wake = self._unsent = None

    def write_directly(self, writer):
        """From now on, while the consumer is parked idle in `wait()`, the
        listener writes live messages straight to the client with `writer`
        (core.connection.DirectWriter) instead of queueing them and waking
        the consumer. The consumer must have written everything `wait()` gave
        it before it waits again, which a straight-line loop does. None: off.
        A writer with `one_shot` true writes one message and is done (a
        long-poll's whole answer): the consumer is woken to finish."""
        self._direct = writer

    # -- listener side -------------------------------------------------

    def offer(self, msg):
        # The hub counts every offer as delivered (Hub._dispatch); an offer
        # that delivers nothing takes itself back (`hub.delivered -= 1`).
        hub = self.hub
        with self._lock:
            if self.closed_reason is not None:
                hub.delivered -= 1
                return
            if self._catching_up:
                hub.delivered -= 1  # the catch-up delivers it, and counts it then
                size = len(msg.data)
                if (
                    len(self._pending) < hub.queue_size
                    and self._pending_bytes + size <= hub.queue_bytes
                ):
                    self._pending.append(msg)
                    self._pending_bytes += size
                else:  # nothing is lost: the catch-up reads these from the stream
                    self._pending.clear()
                    self._pending_bytes = 0
                    self._pending_overflow = True
                return
            if msg.key <= self.cursor:
                hub.delivered -= 1
                return  # already delivered by the catch-up
            if self._idle and self._direct is not None and self._write_direct(msg):
                return
            size = len(msg.data)
            overflow = bool(self._queue) and (
                len(self._queue) >= hub.queue_size or self._queued_bytes + size > hub.queue_bytes
            )
            if not overflow:
                self._queue.append(msg)
                self._queued_bytes += size
                self.cursor = msg.key
            else:  # this message and the queued ones never reach the client now
                lost = 1 + len(self._queue)
        if overflow:
            hub.delivered -= lost
            hub.dropped += lost
            hub.slow_consumer_cuts += 1
            hub.drop(
                self,
                f"slow consumer: fell more than {hub.queue_size} messages "
                f"or {hub.queue_bytes} bytes behind",
            )
        else:
            self._signal()

    def _write_direct(self, msg):
        """True when `msg` went to the socket (wholly, or its tail is left in
        `_unsent` for the consumer to finish); False: queue it as usual."""
        writer = self._direct
        data = writer.frame(msg)
        try:
            sent = writer.try_send(data)
        except OSError:  # the client is gone: the consumer finds out on its own
            self._direct = None
            return False
        if sent is None:
            return False
        self.cursor = msg.key
        if writer.one_shot:  # a whole answer (a long-poll's): its consumer is done,
            self._direct = None  # and its wait() returns (nothing queued: [])
            self._idle = False
            self._poked = True
            self._signal()
        if sent < len(data):  # the socket is full: the consumer writes the rest
            self._unsent = (writer, data[sent:])
            self._idle = False
            self._signal()
        return True

    def resync(self):
        """The listener lost messages: read them from the stream again."""
        with self._lock:
            self._catching_up = True
            self._pending.clear()
            self._pending_bytes = 0
            self._pending_overflow = False
        self._signal()

    def close(self, reason, code=None):
        """End with `reason` (once: a second close changes nothing). `code` is
        for closers called alike (core.lifecycle); a WebSocket's, unused here."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._signal()
        if self._on_abort is not None:
            timer = threading.Timer(ABORT_GRACE, self._abort_if_stuck)
            timer.daemon = True
            timer.start()

    def hang_up(self):
        """The client closed its connection: end at once, nothing to say goodbye to."""
        self.closed_reason = CLIENT_GONE
        self._signal()

    def wake(self):
        """Make a `wait()` in progress (or the next one) return now, even while
        catching up: its transport has something else to do, such as reading
        what the client sent."""
        self._poked = True
        self._signal()

    def _signal(self):
        """The consumer has something to do: wake its greenlet, or, when it
        is parked without one, call it back."""
        self._wakeup.set()
        on_wake, self._on_wake = self._on_wake, None
        if on_wake is not None:
            self._idle = False
            on_wake()

    def _abort_if_stuck(self):
        # The consumer did not notice within the grace period: it is blocked
        # writing to a client that stopped reading. Cut the connection.
        if not self._finished:
            self._on_abort()

    # -- consumer side ---------------------------------------------------

    def park(self, on_wake):
        """Idle without a greenlet: True when there is nothing to do now (the
        listener writes live messages directly, see `write_directly`), and
        `on_wake()` is called from the event loop, once, when there is; the
        consumer then runs again and calls `wait()` as usual. False: do not
        park, `wait()` has something already."""
        with self._lock:
            # Catching up while the listener does not hear the channel yet (its
            # SUBSCRIBE unconfirmed, or Redis away) is nothing to do until it
            # does: the resync that comes then wakes us. Waiting in a greenlet
            # instead held it (and a pool slot) until the next heartbeat.
            if (
                self._direct is None
                or self._queue
                or self._unsent is not None
                or (self._catching_up and self.hub.live_epoch(self.channel) is not None)
                or self._poked
                or self.closed_reason is not None
            ):
                return False
            self._on_wake = on_wake
            self._idle = True
            return True

    def wait(self, timeout):
        """Messages (and Resets) to deliver, in order; [] after `timeout`
        seconds, or earlier after `wake()`.

        Raises SubscriptionClosed once the hub has dropped this subscription.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._wakeup.clear()
            if self._unsent is not None:
                (writer, unsent), self._unsent = self._unsent, None
                try:
                    writer.sendall(unsent)
                except OSError as exc:
                    raise SubscriptionClosed(f"connection lost: {exc}") from exc
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            with self._lock:
                if self._queue:
                    items, self._queue = self._queue, []
                    self._queued_bytes = 0
                    return items
            if self._poked:
                self._poked = False
                return []
            if self._catching_up:
                epoch = self.hub.live_epoch(self.channel)
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
            # woken: a message, a resync, a close, the tail of a direct write, or wake()

    def _catch_up_step(self, epoch):
        with self._lock:
            # From here on, live messages are parked; the read below sees
            # everything published before it ran.
            self._pending.clear()
            self._pending_bytes = 0
            self._pending_overflow = False
        hub = self.hub
        from_start = self.cursor == START
        if from_start:
            entries, full_page = hub.read_page(self.channel, "-", CATCH_UP_PAGE, self.page_bytes)
        else:
            # The cursor's own message comes first (it proves the id is still
            # retained), so a page holds at least one more.
            entries, full_page = hub.read_page(
                self.channel, format_id(self.cursor), CATCH_UP_PAGE + 1, self.page_bytes, at_least=2
            )
            if not entries or entries[0].key != self.cursor:
                self.cursor = hub.newest_key(self.channel)
                hub.resets += 1
                return [Reset(format_id(self.cursor))]
            entries = entries[1:]
        if entries:
            self.cursor = entries[-1].key
        with self._lock:
            live = hub.live_epoch(self.channel) == epoch
            if not full_page and not self._pending_overflow and live:
                # The listener heard this channel since before the read: every
                # later message is in `pending` (or will be offered live).
                self._catching_up = False
                for msg in self._pending:
                    if msg.key > self.cursor:
                        entries.append(msg)
                        self.cursor = msg.key
                self._pending.clear()
                self._pending_bytes = 0
                hub.note_newest(self.channel, self.cursor, epoch, entries if from_start else None)
        hub.delivered += len(entries)
        return entries
