"""The parallel log processor against awk, on one generated log.

    .venv/bin/python bench/logproc.py [--size 1G] [--keep FILE]

Generates the log (unless FILE exists), then times `python -m workers.logproc`
with 1 and 2 processes and an awk script doing the status and path counts, in
one run; checks that the status counts agree. Writes docs/bench-logproc.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine

AWK = ('{ if ($9 ~ /^[0-9][0-9][0-9]$/) { s[$9]++; split($7, p, "?"); paths[p[1]]++ } } '
       'END { for (k in s) print "status", k, s[k]; n = 0; for (k in paths) n++; '
       'print "distinct-paths", n }')


def timed(command):
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - began, result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--keep", help="generate to (or reuse) this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(args.keep or Path(tmp) / "access.log")
        if not log.exists():
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "workers.logproc", "generate", str(log),
                            "--size", args.size], check=True, cwd=ROOT)
            print(f"generated in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        mb = log.stat().st_size / 2**20
        subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        rows, statuses = [], {}
        for procs in (1, 2):
            seconds, out = timed([sys.executable, "-m", "workers.logproc", str(log),
                                  "--procs", str(procs), "--json"])
            statuses[procs] = json.loads(out)["status"]
            rows.append((f"workers.logproc --procs {procs}", seconds))
        seconds, out = timed(["awk", AWK, str(log)])
        statuses["awk"] = {line.split()[1]: int(line.split()[2])
                           for line in out.splitlines() if line.startswith("status")}
        rows.append(("awk (status and path counts only)", seconds))
    agree = statuses[1] == statuses[2] == statuses["awk"]
    lines = ["| program | seconds | MB/s |", "|---|---|---|"]
    lines += [f"| {name} | {s:.1f} | {mb / s:.0f} |" for name, s in rows]
    table = "\n".join(lines)
    print(table)
    print(f"status counts agree: {agree}")
    (ROOT / "docs" / "bench-logproc.md").write_text(f"""# Parallel log processing

Measured {time.strftime('%Y-%m-%d')} on {machine()}, on a {mb:,.0f} MB log made by
`python -m workers.logproc generate` (combined format, 0.1% malformed lines),
read from the page cache. Command:

    .venv/bin/python bench/logproc.py --size {args.size}

{table}

Status counts of all three agree: {agree}. workers.logproc also counts IPs,
bytes, requests per minute and malformed lines; the awk script only statuses
and paths. `awk` is {os.path.basename(subprocess.run(['sh', '-c', 'readlink -f $(command -v awk)'], capture_output=True, text=True).stdout.strip())}.
""")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
