"""Operational transformation for plain text (the editor; docs/architecture.md, "The editor").

An operation walks the document from the start. Its wire form is a JSON list of
components, `{"retain": n}`, `{"insert": "text"}`, `{"delete": n}`; a trailing
retain is optional (what is not walked is kept). Internally a component is a
positive int (retain), a negative int (delete) or a non-empty str (insert).

Positions and lengths count Unicode code points, here and in static/js/ot.js
(which converts from JavaScript's UTF-16 units), so an emoji is 1 and a
combining accent is 1 on both sides.

`transform(a, b)` takes two operations made on the same document and returns
`(a2, b2)` with apply(apply(s, a), b2) == apply(apply(s, b), a2). When both
insert at the same place, `a`'s text comes first: the server and the browser
call it with the same argument order (client's op first, server's op second),
so they break ties alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from core.web import is_unicode

MAX_COMPONENTS = 10_000
Op = list[int | str]  # an operation's components, as described above


class OTError(ValueError):
    """A malformed operation, or one that does not fit the document."""


# -- wire format ---------------------------------------------------------------------


def from_json(components: object) -> Op:
    if not isinstance(components, list):
        raise OTError("an operation is a list of components")
    if len(components) > MAX_COMPONENTS:
        raise OTError(f"an operation has at most {MAX_COMPONENTS} components")
    op: Op = []
    for c in components:
        if not isinstance(c, dict) or len(c) != 1:
            raise OTError("each component is one of {retain: n}, {insert: text}, {delete: n}")
        ((kind, value),) = c.items()
        if kind in ("retain", "delete"):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise OTError(f"{kind} takes a positive integer")
            op.append(value if kind == "retain" else -value)
        elif kind == "insert":
            if not isinstance(value, str) or not value:
                raise OTError("insert takes a non-empty string")
            if not is_unicode(value):
                raise OTError("insert text must be valid Unicode (no lone surrogates)")
            op.append(value)
        else:
            raise OTError(f"unknown component {kind!r}")
    return normalize(op)


def walks(components: list[dict[str, Any]]) -> int:
    """Code points a wire-form op (already checked by from_json) walks over,
    its trailing retain included: what the document must hold for it to fit,
    which from_json's normal form (no trailing retain) no longer tells."""
    return sum(next(iter(c.values())) for c in components if "insert" not in c)


def to_json(op: Op) -> list[dict[str, int | str]]:
    return [
        {"insert": c} if isinstance(c, str) else {"retain": c} if c > 0 else {"delete": -c}
        for c in op
    ]


# -- basics ----------------------------------------------------------------------------


def _push(op: Op, c: int | str) -> None:
    """Append component `c`, merging with the previous one and keeping inserts
    before deletes (so equal operations have equal forms)."""
    if c == 0 or c == "":
        return
    if not op:
        op.append(c)
        return
    last = op[-1]
    if isinstance(c, str):
        if isinstance(last, str):
            op[-1] = last + c
        elif last < 0:  # delete then insert -> insert then delete
            if len(op) >= 2 and isinstance(op[-2], str):
                op[-2] += c
            else:
                op.insert(len(op) - 1, c)
        else:
            op.append(c)
    elif isinstance(last, int) and (last > 0) == (c > 0):
        op[-1] = last + c
    else:
        op.append(c)


def normalize(op: Iterable[int | str]) -> Op:
    out: Op = []
    for c in op:
        _push(out, c)
    while out and isinstance(out[-1], int) and out[-1] > 0:
        out.pop()  # the trailing retain is implicit
    return out


def span(op: Op) -> int:
    """Code points of the input document this op walks over."""
    return sum(abs(c) for c in op if isinstance(c, int))


def target_span(op: Op) -> int:
    """Code points this op produces from what it walks over."""
    return sum(len(c) if isinstance(c, str) else max(c, 0) for c in op)


def length_change(op: Op) -> int:
    """How many code points longer `op` makes the document (negative: shorter)."""
    return sum(len(c) if isinstance(c, str) else min(c, 0) for c in op)


def apply(text: str, op: Op) -> str:
    if span(op) > len(text):
        raise OTError(f"operation walks {span(op)} code points; the document has {len(text)}")
    out, i = [], 0
    for c in op:
        if isinstance(c, str):
            out.append(c)
        elif c > 0:
            out.append(text[i : i + c])
            i += c
        else:
            i -= c
    out.append(text[i:])
    return "".join(out)


def _padded(op: Op, length: int) -> Op:
    return op + [length - span(op)] if span(op) < length else list(op)


# -- compose and transform ----------------------------------------------------------------


def compose(a: Op, b: Op) -> Op:
    """One operation with the effect of `a` then `b`."""
    length = max(target_span(a), span(b))
    a = _padded(a, span(a) + length - target_span(a))
    b = _padded(b, length)
    out: Op = []
    ia, ib = 0, 0
    ca = a[0] if a else None
    cb = b[0] if b else None
    while ca is not None or cb is not None:
        if isinstance(ca, int) and ca < 0:  # a's delete: b never sees it
            _push(out, ca)
            ia += 1
            ca = a[ia] if ia < len(a) else None
            continue
        if isinstance(cb, str):  # b's insert goes in as is
            _push(out, cb)
            ib += 1
            cb = b[ib] if ib < len(b) else None
            continue
        if ca is None or cb is None:
            raise OTError("compose: operations do not line up")
        if isinstance(ca, str):
            if cb > 0:  # b retains a's insert
                n = min(len(ca), cb)
                _push(out, ca[:n])
                ca, cb = ca[n:], cb - n
            else:  # b deletes a's insert: nothing remains
                n = min(len(ca), -cb)
                ca, cb = ca[n:], cb + n
        else:  # a retains
            n = min(ca, abs(cb))
            _push(out, n if cb > 0 else -n)
            ca = ca - n
            cb = cb - n if cb > 0 else cb + n
        if ca == "" or ca == 0:
            ia += 1
            ca = a[ia] if ia < len(a) else None
        if cb == 0:
            ib += 1
            cb = b[ib] if ib < len(b) else None
    return normalize(out)


def transform(a: Op, b: Op) -> tuple[Op, Op]:
    """(a2, b2): `a` rebased onto `b` and `b` onto `a`; `a` wins insert ties."""
    length = max(span(a), span(b))
    a, b = _padded(a, length), _padded(b, length)
    a2: Op = []
    b2: Op = []
    ia, ib = 0, 0
    ca = a[0] if a else None
    cb = b[0] if b else None
    while ca is not None or cb is not None:
        if isinstance(ca, str):
            _push(a2, ca)
            _push(b2, len(ca))
            ia += 1
            ca = a[ia] if ia < len(a) else None
            continue
        if isinstance(cb, str):
            _push(a2, len(cb))
            _push(b2, cb)
            ib += 1
            cb = b[ib] if ib < len(b) else None
            continue
        if ca is None or cb is None:
            raise OTError("transform: operations do not line up")
        n = min(abs(ca), abs(cb))
        if ca > 0 and cb > 0:
            _push(a2, n)
            _push(b2, n)
        elif ca < 0 < cb:
            _push(a2, -n)
        elif ca > 0 > cb:
            _push(b2, -n)
        # both delete the same text: neither needs to
        ca = ca - n if ca > 0 else ca + n
        cb = cb - n if cb > 0 else cb + n
        if ca == 0:
            ia += 1
            ca = a[ia] if ia < len(a) else None
        if cb == 0:
            ib += 1
            cb = b[ib] if ib < len(b) else None
    return normalize(a2), normalize(b2)


def transform_index(index: int, op: Op, own: bool = False) -> int:
    """Where a caret at `index` goes when `op` is applied. An insert exactly at
    the caret pushes it along only when the op is the caret owner's own."""
    pos, new = 0, index
    for c in op:
        if pos > index:
            break
        if isinstance(c, str):
            if pos < index or own:
                new += len(c)
        elif c > 0:
            pos += c
        else:
            new -= min(-c, max(index - pos, 0))
            pos -= c
    return new
