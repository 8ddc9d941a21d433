"""The hub's catch-up algorithm against a real Redis, with the race made explicit."""

import gc
import json
import os
import socket
import time

import pytest

from core import lifecycle
from core.hub import TAIL_LENGTH, Hub
from core.stream_log import START, InvalidId, Message, Reset, format_id, parse_id
from core.transports import longpoll, sse, websocket


@pytest.fixture
def hub(rdb, redis_server):
    hub = Hub(rdb, redis_server.url, prefix="unit:")
    yield hub
    hub.stop()


@pytest.mark.integration
def test_ids_are_stream_ids_and_increase(hub, channel):
    ids = [hub.publish(channel, f"m{i}") for i in range(5)]
    keys = [parse_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 5
    assert [m.data for m in hub.read(channel, "-", 10)] == [f"m{i}" for i in range(5)]


class RacingHub(Hub):
    """While a subscriber reads the stream, the listener offers it a message it
    is also reading (published just before) and one published just after."""

    target = None

    def read(self, channel, start, count):
        entries = super().read(channel, start, count)
        if self.target is not None and entries:
            late_id = self.publish(channel, "published during the read")
            self.target.offer(entries[-1])  # a duplicate of what the read returned
            self.target.offer(Message(late_id, "published during the read", False))
            self.target = None
        return entries


@pytest.mark.integration
def test_catch_up_merges_live_messages_exactly_once_in_order(rdb, redis_server, channel):
    hub = RacingHub(rdb, redis_server.url, prefix="unit:")
    for i in range(3):
        hub.publish(channel, f"old {i}")
    with hub.subscribe(channel, START) as sub:
        assert hub.connected_event.wait(5)
        hub.target = sub
        received = []
        while len(received) < 4:
            batch = sub.wait(5)
            assert batch, received
            received += batch
        assert [m.data for m in received] == [
            "old 0",
            "old 1",
            "old 2",
            "published during the read",
        ]
        hub.publish(channel, "live")
        assert [m.data for m in sub.wait(5)] == ["live"]
    hub.stop()


@pytest.mark.integration
def test_subscription_without_cursor_starts_at_the_call(hub, channel):
    hub.publish(channel, "before")
    with hub.subscribe(channel) as sub:
        hub.publish(channel, "after")
        assert [m.data for m in sub.wait(5)] == ["after"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, key",
    [("0", (0, 0)), ("5-3", (5, 3)), ("17", (17, 0)), ("18446744073709551615-0", (2**64 - 1, 0))],
)
def test_parse_id_accepts_stream_ids(text, key):
    assert parse_id(text) == key
    assert parse_id(format_id(key)) == key


@pytest.mark.unit
@pytest.mark.parametrize(
    "text", ["", "x", "1-", "-1", "1-2-3", "18446744073709551616-0", " 1-0", "1-0\n", "１-0"]
)
def test_parse_id_rejects_everything_else(text):
    with pytest.raises(InvalidId):
        parse_id(text)


@pytest.mark.unit
def test_each_transport_encodes_text_and_json_payloads_once():
    text = Message("1-0", 'say "hi"\nbye', False)
    assert longpoll.encode(text) == b'{"id":"1-0","data":"say \\"hi\\"\\nbye"}'
    assert websocket.encode(text) == '{"id":"1-0","data":"say \\"hi\\"\\nbye"}'
    assert sse.encode(text) == b'id: 1-0\ndata: say "hi"\ndata: bye\n\n'
    assert sse.encode(text) is sse.encode(text)  # the same bytes for every subscriber
    obj = Message("2-0", '{"a":[1,2]}', True)
    assert longpoll.encode(obj) == b'{"id":"2-0","data":{"a":[1,2]}}'
    assert obj.value == {"a": [1, 2]}
    reset = Reset("3-0")
    assert json.loads(websocket.encode(reset)) == {"reset": True, "cursor": "3-0"}
    assert sse.encode(reset) == b'event: reset\nid: 3-0\ndata: {"reset": true, "cursor": "3-0"}\n\n'


@pytest.mark.integration
def test_a_byte_bounded_page_stops_near_its_budget_and_says_there_is_more(hub, channel):
    ids = [hub.publish(channel, f"{i:03d}" + "x" * 997) for i in range(40)]  # 1,000 each
    page, more = hub.read_page(channel, "-", 500, max_bytes=5000)
    assert [m.id for m in page] == ids[:5] and more
    # resuming after those: the next page starts right after, in order
    page, more = hub.read_page(channel, ids[5], 500, max_bytes=12_000)
    assert [m.id for m in page] == ids[5:17] and more
    # the budget never leaves a page short of `at_least`
    page, more = hub.read_page(channel, ids[0], 500, max_bytes=1, at_least=2)
    assert [m.id for m in page] == ids[:2] and more
    # a budget bigger than the stream: everything, and nothing more to read
    page, more = hub.read_page(channel, "-", 500, max_bytes=10**9)
    assert [m.id for m in page] == ids and not more
    # the count still bounds it, as without a budget
    for budget in (10**9, None):
        page, more = hub.read_page(channel, "-", 30, max_bytes=budget)
        assert [m.id for m in page] == ids[:30] and more


@pytest.mark.integration
def test_a_byte_bounded_catch_up_delivers_a_backlog_once_in_order(hub, channel):
    texts = [f"{i}:" + "y" * 3000 for i in range(60)]
    for text in texts:
        hub.publish(channel, text)
    received = []
    with hub.subscribe(channel, START, page_bytes=10_000) as sub:
        assert hub.connected_event.wait(5)
        hub.publish(channel, "live")
        while len(received) < len(texts) + 1:
            batch = sub.wait(5)
            assert batch, received[-1:]
            assert len(batch) <= 4 or batch[-1].data == "live"  # 10 KB of 3 KB messages
            received += [m.data for m in batch]
    assert received == [*texts, "live"]


class TrimmingHub(Hub):
    """Right after the first read of a page, the stream moves on: new
    messages, and everything older trimmed away."""

    trim_after_read = False

    def read(self, channel, start, count):
        entries = super().read(channel, start, count)
        if self.trim_after_read:
            self.trim_after_read = False
            for i in range(5):
                self.publish(channel, f"new {i}")
            self.redis_client.xtrim(self.stream_key(channel), maxlen=5, approximate=False)
        return entries


@pytest.mark.integration
def test_a_byte_bounded_catch_up_reports_a_gap_trimmed_between_its_reads(
    rdb, redis_server, channel
):
    hub = TrimmingHub(rdb, redis_server.url, prefix="unit:")
    old = [hub.publish(channel, "o" * 1000) for _ in range(20)]
    with hub.subscribe(channel, START, page_bytes=100_000) as sub:
        assert hub.connected_event.wait(5)
        hub.trim_after_read = True
        first = sub.wait(5)
        assert [m.id for m in first] == old[:8]  # the batch before the gap, no more
        (reset,) = sub.wait(5)  # then the gap is reported, not skipped
        assert reset.is_reset and reset.id == hub.newest_id(channel)
    hub.stop()


def _reads(rdb):
    """How many stream reads Redis has served so far."""
    stats = rdb.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("xrange", "xrevrange"))


@pytest.mark.integration
def test_later_subscribers_start_from_the_known_newest_id_without_reading_redis(hub, rdb, channel):
    hub.publish(channel, "before")
    with hub.subscribe(channel) as first:
        assert hub.connected_event.wait(5)
        assert first.wait(0.2) == []  # caught up: the worker now knows the newest id
        newest = first.cursor
    reads = _reads(rdb)
    # The first has left: its channel's newest id is kept for the next long-poll.
    with hub.subscribe(channel) as fresh, hub.subscribe(channel, newest) as resuming:
        assert _reads(rdb) == reads
        assert fresh.cursor == resuming.cursor == newest
        hub.publish(channel, "after")
        assert [m.data for m in fresh.wait(5)] == ["after"]
        assert [m.data for m in resuming.wait(5)] == ["after"]
    with hub.subscribe(channel, START) as replay:  # an older cursor still reads the stream
        assert [m.data for m in replay.wait(5)] == ["before", "after"]
    assert _reads(rdb) > reads


@pytest.mark.integration
def test_known_newest_id_is_not_trusted_across_a_listener_reconnect(rdb, redis_server, channel):
    hub = Hub(rdb, redis_server.url, prefix="unit-reconnect:")
    hub.publish(channel, "before")
    with hub.subscribe(channel) as first:
        assert hub.connected_event.wait(5)
        first.wait(0.2)
        newest = first.cursor
        _cut_listener(rdb, hub)
        hub.publish(channel, "while the listener was away")
        deadline = time.monotonic() + 10
        while not (hub.reconnects and hub.live_epoch()) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Back, but what was published meanwhile never reached this worker.
        with hub.subscribe(channel, newest) as resuming:
            assert [m.data for m in resuming.wait(10)] == ["while the listener was away"]
        assert [m.data for m in first.wait(10)] == ["while the listener was away"]
    assert hub.reconnects == 1
    hub.stop()


def _cut_listener(rdb, hub):
    """Kill `hub`'s listening connection, found by the name it gives itself
    in CLIENT LIST (one client only: each test's hub has a prefix of its own)."""
    name = hub.keys.hub_control(socket.gethostname(), os.getpid())
    (listener,) = [c for c in rdb.client_list() if c["name"] == name]
    rdb.client_kill_filter(_id=listener["id"])


def _xrange_calls(rdb):
    return rdb.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0)


@pytest.mark.integration
def test_a_subscriber_resuming_a_little_behind_is_served_from_memory(hub, rdb, channel):
    """A long-poll coming back after the next broadcast already went out: the
    worker's recent tail has what it missed, in order, with no Redis read."""
    with hub.subscribe(channel, START) as watcher:
        assert hub.connected_event.wait(5)
        first = hub.publish(channel, "first")
        assert [m.data for m in watcher.wait(5)] == ["first"]
        later = [hub.publish(channel, f"later {i}") for i in range(3)]
        seen = []
        while len(seen) < 3:
            seen += watcher.wait(5)
        reads = _xrange_calls(rdb)
        with hub.subscribe(channel, parse_id(first)) as behind:
            got = behind.wait(5)
        assert [m.id for m in got] == later
        assert _xrange_calls(rdb) == reads
        # The watcher read the whole stream from its start: everything
        # retained (a long-poll's first poll) comes from memory too.
        with hub.subscribe(channel, START) as everything:
            got = everything.wait(5)
        assert [m.data for m in got] == ["first", "later 0", "later 1", "later 2"]
        assert _xrange_calls(rdb) == reads
        # Further behind than the tail reaches: read from Redis, still complete.
        more = [hub.publish(channel, f"more {i}") for i in range(TAIL_LENGTH)]
        seen = []
        while len(seen) < len(more):
            seen += watcher.wait(5)
        for cursor, expected in ((START, [first, *later, *more]), (parse_id(first), later + more)):
            with hub.subscribe(channel, cursor) as behind:
                got = []
                while len(got) < len(expected):
                    got += behind.wait(5)
            assert [m.id for m in got] == expected
        assert _xrange_calls(rdb) > reads


@pytest.mark.integration
def test_recent_news_is_handed_out_from_memory_only_when_all_of_it_is_there(
    rdb, redis_server, channel
):
    """What a long-poll answered at once, with no subscription, is given: the
    messages after its cursor when the worker's tail holds every one of them;
    None whenever a subscription has to find out (nothing known here, a
    cursor older than the tail, "from now", or after a listener reconnect)."""
    # A prefix of its own: its listener is the one Redis client of that name
    # (other tests' stopped hubs may still be connected under theirs).
    hub = Hub(rdb, redis_server.url, prefix="unit-recent:")
    try:
        assert hub.recent(channel, START) is None  # nobody here has heard the channel
        with hub.subscribe(channel, START) as watcher:
            assert hub.connected_event.wait(5)
            ids = [hub.publish(channel, f"m{i}") for i in range(3)]
            seen = []
            while len(seen) < 3:
                seen += watcher.wait(5)
            reads = _xrange_calls(rdb)
            assert [m.id for m in hub.recent(channel, START)] == ids
            assert [m.id for m in hub.recent(channel, parse_id(ids[0]))] == ids[1:]
            assert hub.recent(channel, parse_id(ids[-1])) == []  # up to date: nothing yet
            assert hub.recent(channel, None) is None
            more = [hub.publish(channel, f"more {i}") for i in range(TAIL_LENGTH)]
            seen = []
            while len(seen) < len(more):
                seen += watcher.wait(5)
            assert hub.recent(channel, parse_id(ids[0])) is None  # the tail no longer reaches
            assert [m.id for m in hub.recent(channel, parse_id(more[-3]))] == more[-2:]
            assert _xrange_calls(rdb) == reads
            # A listener reconnect may have missed news: the tail is not trusted after it.
            _cut_listener(rdb, hub)
            hub.publish(channel, "while the listener was away")
            assert _wait_for(lambda: hub.reconnects and hub.live_epoch())
            assert hub.recent(channel, parse_id(more[-3])) is None
    finally:
        hub.stop()


@pytest.mark.integration
def test_everything_retained_comes_from_memory_only_while_the_stream_is_untrimmed(
    rdb, redis_server, channel
):
    """With a MAXLEN shorter than the tail, Redis holds only the newest few:
    a subscriber from START gets what Redis holds, not what the worker saw."""
    hub = Hub(rdb, redis_server.url, prefix="unit:", maxlen=3)
    try:
        with hub.subscribe(channel, START) as watcher:
            assert hub.connected_event.wait(5)
            assert watcher.wait(0.2) == []  # the stream is empty: caught up
            ids = [hub.publish(channel, f"m{i}") for i in range(10)]
            hub.redis_client.xtrim(hub.stream_key(channel), maxlen=3, approximate=False)
            seen = []
            while len(seen) < len(ids):
                seen += watcher.wait(5)
            with hub.subscribe(channel, START) as fresh:
                got = fresh.wait(5)
            assert [m.id for m in got] == ids[-3:]
    finally:
        hub.stop()


def _listeners(rdb, hub, channel):
    """How many Redis connections hear `channel`'s notifications."""
    return rdb.pubsub_numsub(hub.notification_channel(channel))[0][1]


def _wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.integration
def test_a_worker_hears_only_the_channels_it_serves_and_lets_go_after_the_last_leaves(
    hub, rdb, channel, monkeypatch
):
    import core.hub

    monkeypatch.setattr(core.hub, "IDLE_KEEP", 1.0)
    served, unserved = channel, channel + "-nobody-here"
    assert _listeners(rdb, hub, served) == 0
    with hub.subscribe(served) as sub:
        assert _wait_for(lambda: _listeners(rdb, hub, served) == 1)
        assert sub.wait(0.2) == []  # live
        heard = hub.notifications
        for i in range(3):
            hub.publish(unserved, f"not for us {i}")
        ids = [hub.publish(served, f"ours {i}") for i in range(2)]
        got = []
        while len(got) < 2:
            got += sub.wait(5)
        assert [m.id for m in got] == ids
        assert hub.notifications - heard == 2  # the unserved channel's never came
        assert _listeners(rdb, hub, unserved) == 0
    # Kept a while for the next long-poll, then unsubscribed.
    assert _wait_for(lambda: _listeners(rdb, hub, served) == 0, timeout=10)
    with hub.subscribe(served, START) as back:  # and served again when wanted
        got = []
        while len(got) < 2:
            got += back.wait(5)
        assert [m.data for m in got] == ["ours 0", "ours 1"]
        assert _wait_for(lambda: _listeners(rdb, hub, served) == 1)
        hub.publish(served, "live again")
        assert [m.data for m in back.wait(5)] == ["live again"]


@pytest.mark.integration
@pytest.mark.parametrize("cursor", [START, None], ids=["from the start", "from now"])
def test_subscribing_to_a_new_channel_loses_nothing_published_meanwhile(hub, channel, cursor):
    """Messages keep coming while 20 channels are first subscribed here, each
    by a consumer that starts reading at once: each gets an unbroken run of
    them (all of them, from the start), once each, though its channel's
    notifications were not heard yet when it arrived."""
    import threading

    channels = [f"{channel}-{k}" for k in range(20)]
    stop = threading.Event()
    sent = {name: [] for name in channels}
    received = {}

    def publish():
        i = 0
        while not stop.is_set():
            for name in channels:
                hub.publish(name, str(i))
                sent[name].append(str(i))
            i += 1
        for name in channels:
            hub.publish(name, "end")
            sent[name].append("end")

    def consume(name):
        got = received[name] = []
        with hub.subscribe(name, cursor) as sub:
            while not got or got[-1] != "end":
                batch = sub.wait(10)
                if not batch:
                    return  # stalled: the assertion below says so
                got += [m.data for m in batch]

    hub.start()
    assert hub.connected_event.wait(5)
    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    consumers = []
    for name in channels:
        time.sleep(0.01)  # arrive at different points of the stream
        consumers.append(threading.Thread(target=consume, args=(name,), daemon=True))
        consumers[-1].start()
    time.sleep(0.2)
    stop.set()
    publisher.join()
    for consumer in consumers:
        consumer.join(30)
    for name in channels:
        got = received[name]
        assert got and got[-1] == "end", f"{name}: stalled after {got[-3:]}"
        if cursor is START:
            assert got == sent[name], name
        else:
            assert got == sent[name][-len(got) :], f"{name}: a gap or a repeat"
            assert len(got) < len(sent[name])  # it did start mid-stream


class _EnvironWriter:
    """A direct writer that, like the transports' writers, keeps the request's environ."""

    one_shot = False

    def __init__(self, environ):
        self.environ = environ


@pytest.mark.integration
def test_a_finished_subscription_leaves_no_reference_cycle(hub, channel):
    """The transports' writers and aborters keep the request's environ, which
    keeps the connection's close (core.lifecycle), which is the
    subscription's: unless the subscription lets go of them when it ends,
    every finished connection is a cycle only the cycle collector frees
    (under the hostile bench, 4,500 long-polls' worth in 30 s)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            environ = {"REMOTE_ADDR": "192.0.2.9"}
            with (
                hub.subscribe(channel, on_abort=lambda environ=environ: environ) as sub,
                lifecycle.connection("longpoll", sub.close, environ),
            ):
                sub.write_directly(_EnvironWriter(environ))
            del sub, environ
        gc.collect()
        kept = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not {"Subscription", "_EnvironWriter", "connection"} & kept, kept
