"""The parallel log processor: its answer equals a plain reference implementation."""

import gzip
import itertools
import json
import re
import subprocess
import sys
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from workers import logproc

GOOD = ('{ip} - - [{d:02d}/Nov/2026:10:{m:02d}:07 +0000] "{method} {path} HTTP/1.1" {status} '
        '{size}{tail}')


def reference(text):
    """The obvious single-pass version, written independently of workers.logproc."""
    pattern = re.compile(r'^(\S+) \S+ \S+ \[(\d\d)/Nov/(\d{4}):(\d\d):(\d\d):\d\d [^\]]*\] '
                         r'"\S+ (\S+)[^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "[^"]*")?\s*$')
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
    return {"lines": len(lines), "malformed": malformed, "bytes": sent, "status": status,
            "paths": paths, "ips": ips, "minutes": minutes}


line_strategy = st.one_of(
    st.builds(lambda ip, d, m, method, path, status, size, combined: GOOD.format(
        ip=ip, d=d, m=m, method=method, path=path, status=status, size=size,
        tail=' "-" "curl/8"' if combined else ""),
        st.sampled_from(["10.0.0.1", "192.168.1.20", "::1"]), st.integers(1, 28),
        st.integers(0, 59), st.sampled_from(["GET", "POST"]),
        st.sampled_from(["/", "/a", "/a?x=1", "/b/c"]), st.sampled_from(["200", "404", "500"]),
        st.one_of(st.just("-"), st.integers(0, 10**6).map(str)), st.booleans()),
    st.text(alphabet="abc [\"]-/:0123456789", max_size=40),  # malformed or empty lines
)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(line_strategy, max_size=40), trailing_newline=st.booleans(),
       procs=st.integers(1, 5))
def test_parallel_equals_single_process_equals_reference(tmp_path_factory, lines,
                                                          trailing_newline, procs):
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    path = tmp_path_factory.mktemp("logs") / "access.log"
    path.write_text(text, encoding="utf-8")
    ranges = logproc.line_aligned_ranges(path, procs)
    parallel = logproc.merge(logproc.process_range(path, s, e) for s, e in ranges)
    single = logproc.merge([logproc.process_range(path, 0, path.stat().st_size)])
    assert parallel == single == reference(text)


def test_ranges_start_on_line_starts_and_cover_the_file(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(b"aaaa\nbb\ncccccccccc\nd\n\ne")  # cuts land inside lines
    data = path.read_bytes()
    for parts in range(1, 9):
        ranges = logproc.line_aligned_ranges(path, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert all(start == 0 or data[start - 1:start] == b"\n" for start, _ in ranges)


def run(*args):
    return subprocess.run([sys.executable, "-m", "workers.logproc", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


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

    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    result = json.loads(run(str(empty), "--json").stdout)
    assert result["lines"] == 0 and result["requests_per_minute"]["minutes"] == 0

    missing = run(str(tmp_path / "nope.log"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
