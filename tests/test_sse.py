"""SSE framing: what EventSource will parse back."""

import pytest

from core.transports import sse
from realtime_client import SSEEvent, parse_sse

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "two\nlines",
        "crlf\r\nbreaks",
        "lone\rcr",
        "",
        "trailing\n",
        "ünïcødé ✓ 🎉",
        ": looks like a comment",
    ],
)
def test_event_data_round_trips(text):
    # Exactly one event, as the client's (WHATWG) parser reads the frame back.
    parsed = list(parse_sse([sse.event(text, event="update", id="5-0")]))
    assert parsed == [SSEEvent("update", text.replace("\r\n", "\n").replace("\r", "\n"), "5-0")]


def test_frames_end_with_a_blank_line():
    assert sse.event("x").endswith(b"\n\n")
    assert sse.comment("hb") == b": hb\n\n"
    assert sse.retry(2000) == b"retry: 2000\n\n"
    assert len(sse.PADDING) > 2048 and sse.PADDING.startswith(b":")


def test_fields_with_line_breaks_are_refused():
    with pytest.raises(ValueError):
        sse.event("x", event="bad\nevent")
    with pytest.raises(ValueError):
        sse.event("x", id="1\r2")
