"""The hub's catch-up algorithm against a real Redis, with the race made explicit."""

import pytest

from core.hub import START, Hub, InvalidId, Message, format_id, parse_id


@pytest.fixture
def hub(rdb, redis_server):
    hub = Hub(rdb, redis_server.url, prefix="unit:")
    yield hub
    hub.stop()


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
            "old 0", "old 1", "old 2", "published during the read"]
        hub.publish(channel, "live")
        assert [m.data for m in sub.wait(5)] == ["live"]
    hub.stop()


def test_subscription_without_cursor_starts_at_the_call(hub, channel):
    hub.publish(channel, "before")
    with hub.subscribe(channel) as sub:
        hub.publish(channel, "after")
        assert [m.data for m in sub.wait(5)] == ["after"]


@pytest.mark.parametrize("text, key", [("0", (0, 0)), ("5-3", (5, 3)), ("17", (17, 0)),
                                       ("18446744073709551615-0", (2**64 - 1, 0))])
def test_parse_id_accepts_stream_ids(text, key):
    assert parse_id(text) == key
    assert parse_id(format_id(key)) == key


@pytest.mark.parametrize("text", ["", "x", "1-", "-1", "1-2-3", "18446744073709551616-0",
                                  " 1-0", "1-0\n", "１-0"])
def test_parse_id_rejects_everything_else(text):
    with pytest.raises(InvalidId):
        parse_id(text)


def test_text_and_json_payload_encodings():
    text = Message("1-0", 'say "hi"\nbye', False)
    assert text.json == '{"id":"1-0","data":"say \\"hi\\"\\nbye"}'
    assert text.sse == b'id: 1-0\ndata: say "hi"\ndata: bye\n\n'
    obj = Message("2-0", '{"a":[1,2]}', True)
    assert obj.json == '{"id":"2-0","data":{"a":[1,2]}}'
    assert obj.value == {"a": [1, 2]}
