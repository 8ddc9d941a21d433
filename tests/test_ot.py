"""The OT algebra: properties (hypothesis) and shared vectors with static/js/ot.js."""

import json
import random
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import ot
from tests.servers import ROOT

pytestmark = pytest.mark.unit

# Letters, newlines, an emoji (astral: 2 UTF-16 units) and a combining accent.
ALPHABET = "ab \n😀\u0301é"
VECTORS = ROOT / "tests" / "ot_vectors.json"


@st.composite
def doc_and_ops(draw, count=2):
    doc = draw(st.text(alphabet=ALPHABET, max_size=30))
    return doc, [draw(op_for(doc)) for _ in range(count)]


@st.composite
def op_for(draw, doc):
    op, left = [], len(doc)
    while left > 0 or draw(st.booleans()):
        kind = draw(st.sampled_from(["retain", "delete", "insert"]))
        if kind == "insert":
            op.append(draw(st.text(alphabet=ALPHABET, min_size=1, max_size=5)))
        elif left > 0:
            n = draw(st.integers(1, left))
            op.append(n if kind == "retain" else -n)
            left -= n
        if left == 0 and draw(st.booleans()):
            break
    return ot.normalize(op)


@given(doc_and_ops())
def test_transform_converges(case):
    doc, (a, b) = case
    a2, b2 = ot.transform(a, b)
    assert ot.apply(ot.apply(doc, a), b2) == ot.apply(ot.apply(doc, b), a2)


@given(st.data())
def test_compose_of_random_sequences(data):
    doc = data.draw(st.text(alphabet=ALPHABET, max_size=20))
    a = data.draw(op_for(doc))
    b = data.draw(op_for(ot.apply(doc, a)))
    c = data.draw(op_for(ot.apply(ot.apply(doc, a), b)))
    assert ot.apply(doc, ot.compose(a, b)) == ot.apply(ot.apply(doc, a), b)
    assert ot.compose(ot.compose(a, b), c) == ot.compose(a, ot.compose(b, c))  # associative


@given(doc_and_ops(count=1))
def test_normalize_is_idempotent_and_json_round_trips(case):
    _, (a,) = case
    assert ot.normalize(ot.normalize(a)) == ot.normalize(a)
    assert ot.from_json(ot.to_json(a)) == a


def test_positions_count_code_points():
    doc = "e\u0301😀!"  # e + combining acute, an emoji, "!"
    assert len(doc) == 4
    assert ot.apply(doc, ot.from_json([{"retain": 2}, {"delete": 1}])) == "e\u0301!"
    assert ot.apply(doc, ot.from_json([{"retain": 3}, {"insert": "🎉"}])) == "e\u0301😀🎉!"


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [{"retain": 0}],
        [{"retain": -1}],
        [{"delete": 1.5}],
        [{"insert": ""}],
        [{"insert": 5}],
        [{"move": 1}],
        [{"retain": 1, "insert": "x"}],
        [{"retain": True}],
        [5],
    ],
)
def test_malformed_operations_are_refused(bad):
    with pytest.raises(ot.OTError):
        ot.from_json(bad)


def test_an_operation_longer_than_the_document_is_refused():
    with pytest.raises(ot.OTError):
        ot.apply("abc", ot.from_json([{"retain": 2}, {"delete": 2}]))


def test_caret_moves_with_remote_edits():
    op = ot.from_json([{"retain": 2}, {"insert": "XY"}, {"delete": 1}])
    assert ot.transform_index(1, op) == 1
    assert ot.transform_index(2, op) == 2  # someone else's insert at the caret stays after it
    assert ot.transform_index(2, op, own=True) == 4
    assert ot.transform_index(4, op) == 5


# -- shared vectors ---------------------------------------------------------------------


def make_vectors(seed=7, count=300):
    """Deterministic cases computed by core.ot, for static/js/ot.js to match."""
    rng = random.Random(seed)

    def text(n):
        return "".join(rng.choice(ALPHABET) for _ in range(n))

    def op(doc):
        out, left = [], len(doc)
        while left or rng.random() < 0.3:
            kind = rng.choice("rdi")
            if kind == "i":
                out.append(text(rng.randint(1, 4)))
            elif left:
                n = rng.randint(1, left)
                out.append(n if kind == "r" else -n)
                left -= n
            if not left and rng.random() < 0.5:
                break
        return ot.normalize(out)

    cases = []
    for _ in range(count):
        doc = text(rng.randint(0, 12))
        a, b = op(doc), op(doc)
        c = op(ot.apply(doc, a))
        a2, b2 = ot.transform(a, b)
        cases.append(
            {
                "doc": doc,
                "a": ot.to_json(a),
                "b": ot.to_json(b),
                "c": ot.to_json(c),
                "applied": ot.apply(doc, a),
                "a2": ot.to_json(a2),
                "b2": ot.to_json(b2),
                "ac": ot.to_json(ot.compose(a, c)),
                "converged": ot.apply(ot.apply(doc, a), b2),
            }
        )
    return cases


def test_vectors_file_is_what_the_python_implementation_computes():
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == make_vectors()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_implementation_matches_the_vectors():
    result = subprocess.run(
        ["node", str(ROOT / "tests" / "js" / "check_ot_vectors.mjs"), str(VECTORS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "300 vectors ok" in result.stdout
