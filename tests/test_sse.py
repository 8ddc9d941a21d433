"""SSE framing: what EventSource will parse back."""

import pytest

from core.transports import sse


def parse(frame):
    """Minimal EventSource parser for one frame (WHATWG HTML §9.2.6)."""
    fields, data = {}, []
    for line in frame.decode().split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    return fields, "\n".join(data)


@pytest.mark.parametrize("text", ["plain", "two\nlines", "crlf\r\nbreaks", "lone\rcr",
                                  "", "trailing\n", "ünïcødé ✓ 🎉", ": looks like a comment"])
def test_event_data_round_trips(text):
    fields, data = parse(sse.event(text, event="update", id="5-0"))
    assert data == text.replace("\r\n", "\n").replace("\r", "\n")
    assert fields == {"event": "update", "id": "5-0"}


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
