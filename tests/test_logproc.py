"""The parallel log processor: its answer equals a plain reference implementation."""

import gzip
import itertools
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.servers import ROOT
from workers import logproc

pytestmark = pytest.mark.unit

GOOD = (
    '{ip} - - [{d:02d}/Nov/2026:10:{m:02d}:07 +0000] "{method} {path} HTTP/1.1" {status} '
    "{size}{tail}"
)


def reference(text):
    """The obvious single-pass version, written independently of workers.logproc."""
    pattern = re.compile(
        r"^(\S+) \S+ \S+ \[(\d\d)/Nov/(\d{4}):(\d\d):(\d\d):\d\d [^\]]*\] "
        r'"\S+ (\S+)[^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "[^"]*")?\s*$'
    )
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    status, paths, ips, minutes = Counter(), Counter(), Counter(), Counter()
    malformed = sent = 0
    for line in lines:
        match = pattern.match(line.rstrip("\r"))
        if not match:
            malformed += 1
            continue
        ip, day, year, hour, minute, path, code, size = match.groups()
        status[code] += 1
        paths[path.split("?")[0]] += 1
        ips[ip] += 1
        minutes[f"{year}-11-{day}T{hour}:{minute}"] += 1
        sent += 0 if size == "-" else int(size)
    return {
        "lines": len(lines),
        "malformed": malformed,
        "bytes": sent,
        "status": status,
        "paths": paths,
        "ips": ips,
        "minutes": minutes,
    }


line_strategy = st.one_of(
    st.builds(
        lambda ip, d, m, method, path, status, size, combined: GOOD.format(
            ip=ip,
            d=d,
            m=m,
            method=method,
            path=path,
            status=status,
            size=size,
            tail=' "-" "curl/8"' if combined else "",
        ),
        st.sampled_from(["10.0.0.1", "192.168.1.20", "::1"]),
        st.integers(1, 28),
        st.integers(0, 59),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from(["/", "/a", "/a?x=1", "/b/c"]),
        st.sampled_from(["200", "404", "500"]),
        st.one_of(st.just("-"), st.integers(0, 10**6).map(str)),
        st.booleans(),
    ),
    st.text(alphabet='abc ["]-/:0123456789', max_size=40),  # malformed or empty lines
)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(line_strategy, max_size=40),
    trailing_newline=st.booleans(),
    procs=st.integers(1, 5),
    block=st.sampled_from([1, 7, 64, logproc.BLOCK]),
)
def test_parallel_equals_single_process_equals_reference(
    tmp_path_factory, lines, trailing_newline, procs, block
):
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    path = tmp_path_factory.mktemp("logs") / "access.log"
    path.write_text(text, encoding="utf-8")
    ranges = logproc.line_aligned_ranges(path, procs)
    single = logproc.merge([logproc.process_range(path, 0, path.stat().st_size)])
    saved, logproc.BLOCK = logproc.BLOCK, block  # small blocks cut lines anywhere
    try:
        parallel = logproc.merge(logproc.process_range(path, s, e) for s, e in ranges)
    finally:
        logproc.BLOCK = saved
    assert parallel == single == reference(text)


def test_block_classes_are_lines_classes_without_the_newline():
    """block_pattern() spells LINE's classes as byte sets: the same bytes, bar the newline."""
    pairs = [
        (logproc.NOT_SPACE, rb"\S"),
        (logproc.SPACE, rb"\s"),
        (logproc.NOT_BRACKET, rb"[^\]]"),
        (logproc.NOT_QUOTE, rb'[^"]'),
        (logproc.DIGIT, rb"\d"),
    ]
    for spelled, original in pairs:
        for byte in (bytes([b]) for b in range(256)):
            expected = bool(re.fullmatch(original, byte)) and byte != b"\n"
            assert bool(re.fullmatch(spelled.encode(), byte)) == expected, (spelled, byte)


# A good line, then the same with a byte that sits near a class's edge put in anywhere.
MUTANTS = st.tuples(
    st.integers(0, 120),
    st.sampled_from([b" ", b'"', b"]", b"[", b"\t", b"\r", b"-", b"7", b"x", b"\xff", b"  "]),
)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(
        [
            b'10.0.0.1 - - [01/Nov/2026:10:07:07 +0000] "GET /a?x=1 HTTP/1.1" 200 100 "-" "curl/8"',
            b'10.0.0.4 - - [02/Nov/2026:00:00:05 +0000] "GET /p" 200 3',  # no protocol
        ]
    ),
    mutations=st.lists(MUTANTS, max_size=4),
    groups=st.sampled_from([(), ("request",), None]),
)
def test_possessive_repeats_match_what_greedy_ones_do(base, mutations, groups):
    """block_pattern()'s possessive runs never give back, where greedy ones might:
    on lines broken anywhere by a quote, a bracket or a space, both find the same."""
    line = bytearray(base)
    for at, byte in mutations:
        line[at:at] = byte
    block = b"\n".join([bytes(line), EDGE, bytes(line)])
    wanted = ["ip", "minute", "request", "size"] if groups is None else list(groups)
    possessive = logproc.block_pattern(wanted)
    assert b"++" in possessive.pattern and b"*+" in possessive.pattern
    greedy = re.compile(
        possessive.pattern.replace(b"++", b"+").replace(b"*+", b"*"), possessive.flags
    )
    assert possessive.findall(block) == greedy.findall(block)


# One of each awkward case, with what today's parser and the issue say they count as.
EDGE = (
    b'10.0.0.1 - - [01/Nov/2026:10:07:07 +0000] "GET /a?x=1 HTTP/1.1" 200 100 "-" "curl/8"\r\n'
    b'10.0.0.2 - - [01/Nov/2026:10:07:59 +0000] "POST /a HTTP/1.1" 404 -\n'  # common format
    b"garbage line 0.5\n"  # malformed
    b"\n"  # malformed
    b'10.0.0.1 - - [01/Foo/2026:10:07:07 +0000] "GET /b HTTP/1.1" 200 5\n'  # month: malformed
    b'10.0.0.1  - - [01/Nov/2026:10:07:07 +0000] "GET /b HTTP/1.1" 200 5\n'  # 2 spaces: malformed
    b'10.0.0.3 - - [02/Nov/2026:00:00:01 +0000] "GET /caf\xc3\xa9/\xff HTTP/1.1" 500 7 "-" "x"   \n'
    b'\xff\xfe - - [02/Nov/2026:00:00:02 +0000] "GET / HTTP/1.0" 200 1\n'  # not UTF-8
    b'10.0.0.1 - - [02/Nov/2026:00:00:03 +0000] "GET /q"x HTTP/1.1" 200 2 "-" "a"\n'  # path /q"x
    b'10.0.0.9 - - [02/Nov/2026:00:00:04 +0000] "GET /trunc'
)  # cut: malformed
EDGE_COUNTS = {
    "lines": 10,
    "malformed": 5,
    "bytes": 110,
    "status": Counter({"200": 3, "404": 1, "500": 1}),
    "paths": Counter({"/a": 2, "/café/\ufffd": 1, "/": 1, '/q"x': 1}),
    "ips": Counter({"10.0.0.1": 2, "10.0.0.2": 1, "10.0.0.3": 1, "\ufffd\ufffd": 1}),
    "minutes": Counter({"2026-11-01T10:07": 2, "2026-11-02T00:00": 3}),
}


def test_awkward_lines_are_counted_as_stated(tmp_path, monkeypatch):
    path = tmp_path / "edge.log"
    path.write_bytes(EDGE)
    for block in (logproc.BLOCK, 1, 9, 100):
        monkeypatch.setattr(logproc, "BLOCK", block)
        for procs in (1, 2, 4):
            ranges = logproc.line_aligned_ranges(path, procs)
            assert (
                logproc.merge(logproc.process_range(path, s, e) for s, e in ranges) == EDGE_COUNTS
            ), (block, procs)
    two = json.loads(run(str(path), "--procs", "2", "--json").stdout)
    assert (two["lines"], two["malformed"], two["bytes_sent"]) == (10, 5, 110)
    assert two["status"] == {"200": 3, "404": 1, "500": 1}
    assert two["top_paths"][0] == ["/a", 2] and two["top_ips"][0] == ["10.0.0.1", 2]
    assert two["requests_per_minute"]["by_minute"] == dict(EDGE_COUNTS["minutes"])

    one = tmp_path / "one.log"
    one.write_bytes(EDGE.split(b"\n")[1])  # a single line, no newline
    result = json.loads(run(str(one), "--json").stdout)
    assert (result["lines"], result["malformed"], result["status"]) == (1, 0, {"404": 1})


def test_ranges_start_on_line_starts_and_cover_the_file(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"aaaa\nbb\ncccccccccc\nd\n\ne")  # cuts land inside lines
    data = path.read_bytes()
    for parts in range(1, 9):
        ranges = logproc.line_aligned_ranges(path, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(start == 0 or data[start - 1 : start] == b"\n" for start, _ in ranges)


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "workers.logproc", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_line_on_a_generated_log(tmp_path):
    log = tmp_path / "access.log"
    assert run("generate", str(log), "--size", "2M", "--seed", "5").returncode == 0
    assert 2 * 2**20 <= log.stat().st_size < 2.2 * 2**20
    two = json.loads(run(str(log), "--procs", "2", "--json").stdout)
    one = json.loads(run(str(log), "--procs", "1", "--json").stdout)
    assert two["read"].startswith("2 processes")
    for key in ("lines", "malformed", "bytes_sent", "status", "top_paths", "top_ips"):
        assert two[key] == one[key]
    assert two["malformed"] > 0 and two["requests"] > 10_000
    assert two["requests_per_minute"]["minutes"] > 0
    table = run(str(log)).stdout
    assert "requests by status" in table and "top client IPs" in table
    only = json.loads(run(str(log), "--procs", "2", "--json", "--only", "status,paths").stdout)
    for key in ("lines", "malformed", "requests", "status", "top_paths"):
        assert only[key] == two[key]
    assert not {"top_ips", "bytes_sent", "requests_per_minute"} & only.keys()
    assert "top client IPs" not in run(str(log), "--only", "status,paths").stdout
    assert run(str(log), "--only", "status,nope").returncode == 2
    again = tmp_path / "again.log"
    run("generate", str(again), "--size", "2M", "--seed", "5")
    assert again.read_bytes() == log.read_bytes()  # the seed makes it reproducible


def test_gzip_empty_and_missing_files(tmp_path):
    log = tmp_path / "access.log"
    run("generate", str(log), "--size", "200K")
    packed = tmp_path / "access.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    plain = json.loads(run(str(log), "--json").stdout)
    zipped = json.loads(run(str(packed), "--json").stdout)
    assert zipped["read"] == "gzip: decompressed in one stream by one process"
    assert zipped["status"] == plain["status"] and zipped["lines"] == plain["lines"]
    same = {k: v for k, v in zipped.items() if k not in ("read", "seconds")}
    assert same == {k: v for k, v in plain.items() if k not in ("read", "seconds")}

    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    result = json.loads(run(str(empty), "--json").stdout)
    assert result["lines"] == 0 and result["requests_per_minute"]["minutes"] == 0

    missing = run(str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_help_and_a_reader_that_leaves(tmp_path):
    assert "generate" in run("--help").stdout
    log = tmp_path / "access.log"
    run("generate", str(log), "--size", "200K")
    # `logproc FILE | head -3`: the reader is gone before anything is written
    child = subprocess.Popen(
        [sys.executable, "-m", "workers.logproc", str(log)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 1 and b"Traceback" not in err and err == b""
