"""Parallel access-log processor (chapter 7's log splitter, with processes).

    python -m workers.logproc FILE [--procs N] [--json] [--top 10]
    python -m workers.logproc generate FILE --size 1G [--seed N]

The file is split into byte ranges aligned to line boundaries; N child
processes (default: the CPU count) each parse their range of common/combined
log lines and return partial counts, which the parent adds up. Nothing holds
the file in memory. Malformed lines are counted, never fatal. A gzip file
cannot be split by offset: it is decompressed in one stream by one process
(the output says so). A progress bar goes to stderr when it is a terminal.
"""

import argparse
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

# host ident user [time] "METHOD path protocol" status bytes ["referer" "agent"]
LINE = re.compile(
    rb'^(\S+) \S+ \S+ \[(\d{2})/(\w{3})/(\d{4}):(\d{2}):(\d{2}):\d{2} [^\]]*\] '
    rb'"(\S+) (\S+)[^"]*" (\d{3}) (\d+|-)(?: "[^"]*" "[^"]*")?\s*$')
MONTHS = {m.encode(): f"{i:02d}" for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1)}
PROGRESS_EVERY = 4 << 20  # bytes between progress updates


def empty_result():
    return {"lines": 0, "malformed": 0, "bytes": 0, "status": Counter(), "paths": Counter(),
            "ips": Counter(), "minutes": Counter()}


def parse_line(line, result):
    result["lines"] += 1
    match = LINE.match(line)
    month = MONTHS.get(match[3]) if match else None
    if month is None:
        result["malformed"] += 1
        return
    ip, day, _, year, hour, minute, _method, path, status, size = match.groups()
    result["status"][status.decode()] += 1
    result["paths"][path.split(b"?", 1)[0].decode("utf-8", "replace")] += 1
    result["ips"][ip.decode("utf-8", "replace")] += 1
    result["minutes"][f"{year.decode()}-{month}-{day.decode()}T{hour.decode()}:{minute.decode()}"] += 1
    if size != b"-":
        result["bytes"] += int(size)


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


def process_range(path, start, end, progress=None):
    result = empty_result()
    done = 0
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        while position < end:
            line = f.readline()
            if not line:
                break
            position += len(line)
            parse_line(line.rstrip(b"\r\n"), result)
            done += len(line)
            if progress is not None and done >= PROGRESS_EVERY:
                with progress.get_lock():
                    progress.value += done
                done = 0
    if progress is not None and done:
        with progress.get_lock():
            progress.value += done
    return result


def process_stream(lines):
    result = empty_result()
    for line in lines:
        parse_line(line.rstrip(b"\r\n"), result)
    return result


def merge(results):
    total = empty_result()
    for r in results:
        for key in ("lines", "malformed", "bytes"):
            total[key] += r[key]
        for key in ("status", "paths", "ips", "minutes"):
            total[key].update(r[key])
    return total


_progress = None


def _init(progress):
    global _progress
    _progress = progress


def _work(args):
    return process_range(*args, progress=_progress)


def analyse(path, procs, show_progress=False):
    """(merged result, how it was read)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        with gzip.open(path, "rb") as stream:
            return process_stream(stream), "gzip: decompressed in one stream by one process"
    ranges = line_aligned_ranges(path, procs)
    if procs == 1 or len(ranges) <= 1:
        return merge([process_range(path, s, e) for s, e in ranges]), "1 process"
    progress = multiprocessing.Value("q", 0)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(ranges), initializer=_init, initargs=(progress,)) as pool:
        pending = pool.map_async(_work, [(path, s, e) for s, e in ranges])
        size = os.path.getsize(path)
        while not pending.ready():
            pending.wait(0.5)
            if show_progress:
                _draw_progress(progress.value, size)
        results = pending.get()
    if show_progress:
        _draw_progress(size, size)
        sys.stderr.write("\n")
    return merge(results), f"{len(ranges)} processes over line-aligned byte ranges"


def _draw_progress(done, size):
    share = done / size if size else 1
    bar = "#" * int(share * 40)
    sys.stderr.write(f"\r[{bar:<40}] {share:6.1%} of {size / 2**20:,.0f} MB")
    sys.stderr.flush()


def report(result, how, top):
    minutes = result["minutes"]
    peak = minutes.most_common(1)[0] if minutes else ("-", 0)
    return {
        "read": how, "lines": result["lines"], "malformed": result["malformed"],
        "requests": result["lines"] - result["malformed"], "bytes_sent": result["bytes"],
        "status": dict(sorted(result["status"].items())),
        "top_paths": result["paths"].most_common(top), "top_ips": result["ips"].most_common(top),
        "requests_per_minute": {
            "minutes": len(minutes), "peak": {"minute": peak[0], "requests": peak[1]},
            "average": round(sum(minutes.values()) / len(minutes), 1) if minutes else 0,
            "by_minute": dict(sorted(minutes.items())),
        },
    }


def print_table(summary, out=sys.stdout):
    def section(title, rows):
        out.write(f"\n{title}\n")
        width = max((len(str(k)) for k, _ in rows), default=0)
        for key, value in rows:
            out.write(f"  {key!s:<{width}}  {value:>12,}\n")

    out.write(f"read: {summary['read']}\n")
    section("totals", [("lines", summary["lines"]), ("requests", summary["requests"]),
                       ("malformed lines", summary["malformed"]),
                       ("bytes sent", summary["bytes_sent"])])
    section("requests by status", list(summary["status"].items()))
    section("top paths", summary["top_paths"])
    section("top client IPs", summary["top_ips"])
    rpm = summary["requests_per_minute"]
    out.write(f"\nrequests per minute: {rpm['average']:,} on average over {rpm['minutes']:,} "
              f"minutes; peak {rpm['peak']['requests']:,} at {rpm['peak']['minute']}\n")


# -- generate ----------------------------------------------------------------------------

PATHS = ["/", "/index.html", "/listCities/usa/ohio", "/sub/news", "/qa/", "/ticker/quote",
         "/static/css/site.css", "/static/js/ot.js", "/auth/login", "/draw/", "/favicon.ico",
         "/editor/welcome", "/api/v1/items", "/api/v1/items/42", "/healthz"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0", "curl/8.5.0",
          "Mozilla/5.0 (Macintosh) Safari/605.1.15", "Googlebot/2.1"]


def parse_size(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"size like 500K, 200M or 1G, not {text!r}")
    return int(float(match[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match[2]])


def generate(path, size, seed):
    rng = random.Random(seed)
    ips = [f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
           for _ in range(5000)]
    ip_weights = [1 / (i + 1) for i in range(len(ips))]  # a few clients do most requests
    statuses = ["200"] * 80 + ["304"] * 8 + ["404"] * 6 + ["301"] * 3 + ["500"] * 2 + ["403"]
    when = datetime(2026, 11, 1, tzinfo=timezone.utc)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        while written < size:
            batch = []
            for ip, target in zip(rng.choices(ips, ip_weights, k=2000),
                                  rng.choices(PATHS, k=2000)):
                when += timedelta(milliseconds=rng.randint(0, 60))
                if rng.random() < 0.001:
                    batch.append(f"garbage line {rng.random()}\n")  # logs are never clean
                    continue
                query = f"?page={rng.randint(1, 9)}" if rng.random() < 0.1 else ""
                batch.append(
                    f'{ip} - - [{when:%d/%b/%Y:%H:%M:%S} +0000] "GET {target}{query} HTTP/1.1" '
                    f'{rng.choice(statuses)} {rng.randint(200, 60000)} "-" "{rng.choice(AGENTS)}"\n')
            text = "".join(batch)
            out.write(text)
            written += len(text)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["generate"]:
        parser = argparse.ArgumentParser(prog="python -m workers.logproc generate",
                                         description="write a synthetic access log")
        parser.add_argument("file")
        parser.add_argument("--size", type=parse_size, default=parse_size("100M"))
        parser.add_argument("--seed", type=int, default=1)
        args = parser.parse_args(argv[1:])
        written = generate(args.file, args.size, args.seed)
        print(f"wrote {written / 2**20:,.1f} MB to {args.file}", file=sys.stderr)
        return 0
    parser = argparse.ArgumentParser(prog="python -m workers.logproc",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                        help="child processes (default: the CPU count)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--top", type=int, default=10, help="how many paths and IPs to list")
    args = parser.parse_args(argv)
    if args.procs < 1 or args.top < 1:
        parser.error("--procs and --top must be at least 1")
    if not os.path.isfile(args.file):
        print(f"logproc: no such file: {args.file}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    result, how = analyse(args.file, args.procs, show_progress=sys.stderr.isatty())
    summary = report(result, how, args.top)
    summary["seconds"] = round(time.perf_counter() - began, 3)
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
