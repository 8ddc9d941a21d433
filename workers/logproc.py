"""Parallel access-log processor (chapter 7's log splitter, with processes).

    python -m workers.logproc FILE [--procs N] [--json] [--top 10] [--only status,paths]
    python -m workers.logproc generate FILE --size 1G [--seed N]

The file is split into byte ranges aligned to line boundaries; N child
processes (default: the CPU count) each parse their range of common/combined
log lines and return partial counts, which the parent adds up. Nothing holds
the file in memory. Malformed lines are counted, never fatal. A gzip file
cannot be split by offset: it is decompressed in one stream by one process
(the output says so). A progress bar goes to stderr when it is a terminal.
"""

import argparse
import gc
import gzip
import itertools
import json
import multiprocessing
import os
import random
import re
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from operator import itemgetter

# host ident user [time] "METHOD path protocol" status bytes ["referer" "agent"]
# The definition: a line is well formed when it matches LINE (its line ending stripped)
# and its month is one of MONTHS; every other line counts as malformed. The counting
# runs block_pattern(), the same pattern made to scan many lines at once; the tests
# hold the two together.
LINE = re.compile(
    rb"^(\S+) \S+ \S+ \[(\d{2})/(\w{3})/(\d{4}):(\d{2}):(\d{2}):\d{2} [^\]]*\] "
    rb'"(\S+) (\S+)[^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "[^"]*")?\s*$'
)
MONTHS = {
    m.encode(): f"{i:02d}"
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}

# What can be counted (--only), and the group of block_pattern() that feeds each.
FIELDS = ("status", "paths", "ips", "bytes", "minutes")
GROUP_OF = {
    "ips": "ip",
    "minutes": "minute",
    "status": "request",
    "paths": "request",
    "bytes": "size",
}


# The character classes of LINE, spelled as positive byte sets: sre tests those with one
# bitmap lookup, about twice as fast as \S or [^"\n]. Each leaves out the newline, so
# that no part of a match runs into the next line (tests check each against LINE's).
NOT_SPACE = r"[\x00-\x08\x0e-\x1f\x21-\xff]"  # \S (bytes: space is \t\n\v\f\r and ' ')
SPACE = r"[\t\x0b-\r ]"  # \s but the newline
NOT_BRACKET = r"[\x00-\x09\x0b-\x5c\x5e-\xff]"  # [^\]] but the newline
NOT_QUOTE = r"[\x00-\x09\x0b-\x21\x23-\xff]"  # [^"] but the newline
DIGIT = r"[0-9]"  # \d (bytes)
# Possessive repeats (Python 3.11+; plain greedy ones before, which match the same).
MORE, ANY = ("++", "*+") if sys.version_info >= (3, 11) else ("+", "*")


def block_pattern(groups):
    """LINE, rewritten to run over a block of many lines at C speed.

    Every line of a block is matched by one findall over the whole block instead of
    one match call per line. The rewrite keeps LINE's atoms in the same order, so it
    accepts the same lines and picks the same match in each; only the block differs
    from a line: no class matches a newline, `$` (multiline) stops before one, and
    whitespace at the end (a CR) is matched rather than stripped. The month is spelled
    out, so a line with an unknown month does not match either. Only the groups asked
    for capture, as few and as wide as possible: each captured value is a new object
    per line, the costly part, and a wide one (`request`: path, protocol, status) has
    few distinct values, taken apart once each afterwards.

    A run of a class that cannot match the byte after it is possessive (`++`, `*+`):
    giving any of it back could never let the rest match, so the engine is told not
    to keep the places it could back up to. The one run that may give back, the
    path's `\\S+` before `[^"]*"`, stays greedy (a path may hold a quote).
    """

    def part(name, regex):
        return f"({regex})" if name in groups else f"(?:{regex})"

    s, d = NOT_SPACE, DIGIT
    months = "|".join(m.decode() for m in MONTHS)
    return re.compile(
        (
            "^"
            + part("ip", f"{s}{MORE}")
            + f" {s}{MORE} {s}{MORE} \\["
            + part("minute", f"{d}{d}/(?:{months})/{d}{d}{d}{d}:{d}{d}:{d}{d}")
            + f":{d}{d} {NOT_BRACKET}{ANY}\\] "
            + f'"{s}{MORE} '
            + part("request", f'{s}+{NOT_QUOTE}{ANY}" {d}{d}{d}')
            + " "
            # a size of "-" captures nothing (b""): filter(None) drops it at C speed
            + (f"(?:({d}{MORE})|-)" if "size" in groups else f"(?:{d}{MORE}|-)")
            + f'(?: "{NOT_QUOTE}{ANY}" "{NOT_QUOTE}{ANY}")?{SPACE}{ANY}$'
        ).encode(),
        re.MULTILINE,
    )


# The path and status inside a captured `request` (path, protocol, status): LINE's own
# atoms again, so the path comes out as LINE would cut it even with a quote in it.
REQUEST = re.compile(rb'(\S+)[^"]*" (\d{3})')
BLOCK = 16 << 20  # bytes read at a time: big enough that per-block costs vanish


def empty_result():
    return {
        "lines": 0,
        "malformed": 0,
        "bytes": 0,
        "status": Counter(),
        "paths": Counter(),
        "ips": Counter(),
        "minutes": Counter(),
    }


class RangeCounter:
    """Counts one stream of whole lines, fed block by block."""

    def __init__(self, fields=FIELDS):
        self.fields = fields
        self.groups = [
            g for g in ("ip", "minute", "request", "size") if any(GROUP_OF[f] == g for f in fields)
        ]
        self.pattern = block_pattern(self.groups)
        self.lines = self.matched = self.bytes = 0
        self.raw = {g: Counter() for g in self.groups if g != "size"}  # bytes -> count

    def feed(self, block, end):
        """Count the lines in block[:end], which ends at a line end (or the data's end)."""
        if end == 0:
            return
        self.lines += block.count(b"\n", 0, end) + (block[end - 1] != 0x0A)
        rows = self.pattern.findall(block, 0, end)
        self.matched += len(rows)
        for i, group in enumerate(self.groups):
            column = rows if len(self.groups) == 1 else map(itemgetter(i), rows)
            if group == "size":
                self.bytes += sum(map(int, filter(None, column)))
            else:
                self.raw[group].update(column)  # Counter counts an iterable in C

    def result(self):
        """The counts as empty_result() holds them, each distinct value decoded once."""
        result = empty_result()
        result["lines"], result["malformed"] = self.lines, self.lines - self.matched
        result["bytes"] = self.bytes
        for ip, n in self.raw.get("ip", {}).items():
            result["ips"][ip.decode("utf-8", "replace")] += n
        for minute, n in self.raw.get("minute", {}).items():  # 01/Nov/2026:10:07
            day, month, year, clock = minute[:2], minute[3:6], minute[7:11], minute[12:]
            result["minutes"][
                f"{year.decode()}-{MONTHS[month]}-{day.decode()}T{clock.decode()}"
            ] += n
        for request, n in self.raw.get("request", {}).items():
            path, status = REQUEST.fullmatch(request).groups()
            if "status" in self.fields:
                result["status"][status.decode()] += n
            if "paths" in self.fields:
                result["paths"][path.split(b"?", 1)[0].decode("utf-8", "replace")] += n
        return result


def count_stream(stream, fields=FIELDS, limit=None, progress=None):
    """Count the lines of a binary stream (at most limit bytes) in big blocks."""
    counter = RangeCounter(fields)
    carry = b""
    left = float("inf") if limit is None else limit
    # findall makes a tuple per line; the cycle collector would walk them all, again
    # and again, for nothing (they hold only bytes): it is off while counting.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        while left > 0:
            data = stream.read(int(min(BLOCK, left)))
            if not data:
                break
            left -= len(data)
            block = carry + data
            end = block.rfind(b"\n") + 1  # the last line may go on in the next block
            counter.feed(block, end)
            carry = block[end:]
            if progress is not None:
                progress(len(data))
        counter.feed(carry, len(carry))  # a last line without a newline
    finally:
        if was_enabled:
            gc.enable()
    return counter.result()


def line_aligned_ranges(path, parts):
    """[(start, end)] byte ranges covering the file, each starting at a line start."""
    size = os.path.getsize(path)
    if size == 0:
        return []
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(size * i // parts - 1, cuts[-1]))
            f.readline()  # to the start of the next line
            cut = f.tell()
            if cut >= size:
                break
            if cut > cuts[-1]:
                cuts.append(cut)
    cuts.append(size)
    return list(itertools.pairwise(cuts))


def process_range(path, start, end, progress=None, fields=FIELDS):
    with open(path, "rb") as f:
        f.seek(start)
        return count_stream(f, fields, limit=end - start, progress=progress)


def merge(results):
    total = empty_result()
    for r in results:
        for key in ("lines", "malformed", "bytes"):
            total[key] += r[key]
        for key in ("status", "paths", "ips", "minutes"):
            total[key].update(r[key])
    return total


_progress = None  # the children's shared byte count


def _init(progress):
    global _progress
    _progress = progress


def _add_progress(done):
    with _progress.get_lock():
        _progress.value += done


def _work(args):
    path, start, end, fields = args
    return process_range(path, start, end, _add_progress, fields)


def analyse(path, procs, show_progress=False, fields=FIELDS):
    """(merged result, how it was read)."""
    size = os.path.getsize(path)
    with open(path, "rb") as raw:
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            # progress in compressed bytes: where the decompressor is in the file
            shown = (lambda _done: _draw_progress(raw.tell(), size)) if show_progress else None
            with gzip.GzipFile(fileobj=raw) as stream:
                result = count_stream(stream, fields, progress=shown)
            how = "gzip: decompressed in one stream by one process"
            return _end_progress(result, size, show_progress), how
    ranges = line_aligned_ranges(path, procs)
    if procs == 1 or len(ranges) <= 1:
        done = 0

        def shown(step):
            nonlocal done
            done += step
            _draw_progress(done, size)

        progress = shown if show_progress else None
        result = merge([process_range(path, s, e, progress, fields) for s, e in ranges])
        return _end_progress(result, size, show_progress), "1 process"
    progress = multiprocessing.Value("q", 0)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(ranges), initializer=_init, initargs=(progress,)) as pool:
        pending = pool.map_async(_work, [(path, s, e, fields) for s, e in ranges])
        while not pending.ready():
            pending.wait(0.5)
            if show_progress:
                _draw_progress(progress.value, size)
        results = pending.get()
    how = f"{len(ranges)} processes over line-aligned byte ranges"
    return _end_progress(merge(results), size, show_progress), how


def _draw_progress(done, size):
    share = min(done / size, 1) if size else 1
    bar = "#" * int(share * 40)
    sys.stderr.write(f"\r[{bar:<40}] {share:6.1%} of {size / 2**20:,.0f} MB")
    sys.stderr.flush()


def _end_progress(result, size, shown):
    if shown:
        _draw_progress(size, size)
        sys.stderr.write("\n")
    return result


def report(result, how, top, fields=FIELDS):
    """The summary printed (as a table or JSON): only the fields that were counted."""
    summary = {
        "read": how,
        "lines": result["lines"],
        "malformed": result["malformed"],
        "requests": result["lines"] - result["malformed"],
    }
    if "bytes" in fields:
        summary["bytes_sent"] = result["bytes"]
    if "status" in fields:
        summary["status"] = dict(sorted(result["status"].items()))
    if "paths" in fields:
        summary["top_paths"] = result["paths"].most_common(top)
    if "ips" in fields:
        summary["top_ips"] = result["ips"].most_common(top)
    if "minutes" in fields:
        minutes = result["minutes"]
        peak = minutes.most_common(1)[0] if minutes else ("-", 0)
        summary["requests_per_minute"] = {
            "minutes": len(minutes),
            "peak": {"minute": peak[0], "requests": peak[1]},
            "average": round(sum(minutes.values()) / len(minutes), 1) if minutes else 0,
            "by_minute": dict(sorted(minutes.items())),
        }
    return summary


def print_table(summary, out=sys.stdout):
    def section(title, rows):
        out.write(f"\n{title}\n")
        width = max((len(str(k)) for k, _ in rows), default=0)
        for key, value in rows:
            out.write(f"  {key!s:<{width}}  {value:>12,}\n")

    out.write(f"read: {summary['read']}\n")
    totals = [
        ("lines", summary["lines"]),
        ("requests", summary["requests"]),
        ("malformed lines", summary["malformed"]),
    ]
    if "bytes_sent" in summary:
        totals.append(("bytes sent", summary["bytes_sent"]))
    section("totals", totals)
    if "status" in summary:
        section("requests by status", list(summary["status"].items()))
    if "top_paths" in summary:
        section("top paths", summary["top_paths"])
    if "top_ips" in summary:
        section("top client IPs", summary["top_ips"])
    if "requests_per_minute" in summary:
        rpm = summary["requests_per_minute"]
        out.write(
            f"\nrequests per minute: {rpm['average']:,} on average over {rpm['minutes']:,} "
            f"minutes; peak {rpm['peak']['requests']:,} at {rpm['peak']['minute']}\n"
        )


# -- generate ----------------------------------------------------------------------------

PATHS = [
    "/",
    "/index.html",
    "/listCities/usa/ohio",
    "/sub/news",
    "/qa/",
    "/ticker/quote",
    "/static/css/site.css",
    "/static/js/ot.js",
    "/auth/login",
    "/draw/",
    "/favicon.ico",
    "/editor/welcome",
    "/api/v1/items",
    "/api/v1/items/42",
    "/healthz",
]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0",
    "curl/8.5.0",
    "Mozilla/5.0 (Macintosh) Safari/605.1.15",
    "Googlebot/2.1",
]


def parse_size(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"size like 500K, 200M or 1G, not {text!r}")
    return int(float(match[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match[2]])


def generate(path, size, seed):
    rng = random.Random(seed)
    ips = [
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        for _ in range(5000)
    ]
    ip_weights = [1 / (i + 1) for i in range(len(ips))]  # a few clients do most requests
    statuses = ["200"] * 80 + ["304"] * 8 + ["404"] * 6 + ["301"] * 3 + ["500"] * 2 + ["403"]
    when = datetime(2026, 11, 1, tzinfo=timezone.utc)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            batch = []
            for ip, target in zip(
                rng.choices(ips, ip_weights, k=2000), rng.choices(PATHS, k=2000), strict=True
            ):
                when += timedelta(milliseconds=rng.randint(0, 60))
                if rng.random() < 0.001:
                    batch.append(f"garbage line {rng.random()}\n")  # logs are never clean
                    continue
                query = f"?page={rng.randint(1, 9)}" if rng.random() < 0.1 else ""
                batch.append(
                    f'{ip} - - [{when:%d/%b/%Y:%H:%M:%S} +0000] "GET {target}{query} HTTP/1.1" '
                    f'{rng.choice(statuses)} {rng.randint(200, 60000)} "-" "{rng.choice(AGENTS)}"\n'
                )
            text = "".join(batch)
            out.write(text)
            written += len(text)
    return written


def parse_fields(text):
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields:
        raise argparse.ArgumentTypeError(f"fields among {','.join(FIELDS)}, not {text!r}")
    return tuple(f for f in FIELDS if f in fields)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generate"]:
        parser = argparse.ArgumentParser(
            prog="python -m workers.logproc generate", description="write a synthetic access log"
        )
        parser.add_argument("file")
        parser.add_argument("--size", type=parse_size, default=parse_size("100M"))
        parser.add_argument("--seed", type=int, default=1)
        args = parser.parse_args(argv[1:])
        written = generate(args.file, args.size, args.seed)
        print(f"wrote {written / 2**20:,.1f} MB to {args.file}", file=sys.stderr)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m workers.logproc",
        description=__doc__.split("\n")[0],
        epilog="To make a log to try it on: python -m workers.logproc generate FILE "
        "--size 1G [--seed N] writes a synthetic combined-format log.",
    )
    parser.add_argument("file")
    parser.add_argument(
        "--procs",
        type=int,
        default=os.cpu_count() or 1,
        help="child processes (default: the CPU count)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--top", type=int, default=10, help="how many paths and IPs to list")
    parser.add_argument(
        "--only",
        type=parse_fields,
        default=FIELDS,
        metavar="FIELD,...",
        help=f"count only these ({','.join(FIELDS)}; default: all), e.g. "
        "--only status,paths; lines and malformed lines are always counted",
    )
    args = parser.parse_args(argv)
    if args.procs < 1 or args.top < 1:
        parser.error("--procs and --top must be at least 1")
    if not os.path.isfile(args.file):
        print(f"logproc: no such file: {args.file}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    result, how = analyse(args.file, args.procs, sys.stderr.isatty(), args.only)
    summary = report(result, how, args.top, args.only)
    summary["seconds"] = round(time.perf_counter() - began, 3)
    try:
        if args.json:
            json.dump(summary, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print_table(summary)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader left (`| head`): say nothing more, and keep Python's exit-time
        # flush from failing again on the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
