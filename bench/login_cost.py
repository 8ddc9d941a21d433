"""What a login costs, and whether it stalls anyone else.

    .venv/bin/python bench/login_cost.py [--seconds 10] [--concurrency 8]

1. CPU cost of one Argon2id verification and one SCRAM key derivation
   (PBKDF2-SHA-256, 600,000 iterations), in this process.
2. Against gunicorn (2 gevent workers): logins per second with `--concurrency`
   clients logging in back to back, while a prober measures `/whoami` latency,
   compared with `/whoami` latency when nobody logs in. Hashing runs in
   gevent's thread pool, so the prober should barely notice.

Writes docs/bench-login-cost.md.
"""

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, gunicorn_server, machine, redis_server, run_for

PASSWORD = "benchmark-password"


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def probe(url, stop, samples):
    session = requests.Session()
    while not stop.is_set():
        began = time.perf_counter()
        session.get(url + "/whoami", headers={"Accept": "application/json"}, timeout=10)
        samples.append(time.perf_counter() - began)
        time.sleep(0.02)


def log_in_repeatedly(url, user, stop, counts, failures):
    while not stop.is_set():
        response = requests.post(
            url + "/auth/login", timeout=30, json={"username": user, "password": PASSWORD}
        )
        if response.status_code == 200:
            counts.append(1)
        else:
            failures.append(response.status_code)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--report", default=str(ROOT / "docs" / "bench-login-cost.md"))
    args = parser.parse_args()

    import redis

    from core import passwords
    from core.users import UserStore

    began = time.perf_counter()
    stored = passwords.hash_password(PASSWORD)
    for _ in range(5):
        passwords.verify_password(stored, PASSWORD)
    argon2_ms = (time.perf_counter() - began) / 6 * 1000
    began = time.perf_counter()
    passwords.scram_credentials(PASSWORD)
    pbkdf2_ms = (time.perf_counter() - began) * 1000

    with redis_server() as rs:
        store = UserStore(redis.Redis.from_url(rs.url, decode_responses=True), "rt:")
        store.create("bench", PASSWORD)
        with gunicorn_server(rs.url, LOGIN_RATE_LIMIT="1000000 per minute") as (url, _, _env):
            quiet, stop = [], threading.Event()
            prober = threading.Thread(target=probe, args=(url, stop, quiet))
            prober.start()
            time.sleep(args.seconds / 2)
            stop.set()
            prober.join()

            loaded, counts, failures, stop = [], [], [], threading.Event()
            threads = [threading.Thread(target=probe, args=(url, stop, loaded))]
            threads += [
                threading.Thread(
                    target=log_in_repeatedly, args=(url, "bench", stop, counts, failures)
                )
                for _ in range(args.concurrency)
            ]
            run_for(args.seconds, threads, stop)

    rows = [
        ("Argon2id verify (m=19 MiB, t=2, p=1), one core", f"{argon2_ms:.0f} ms"),
        ("SCRAM credentials (PBKDF2-SHA-256 × 600,000), one core", f"{pbkdf2_ms:.0f} ms"),
        (
            f"logins per second, {args.concurrency} clients, 2 workers",
            f"{len(counts) / args.seconds:.1f}",
        ),
        ("failed logins", str(len(failures))),
        (
            "/whoami p50 / p99, nobody logging in",
            f"{percentile(quiet, 0.5):.1f} / {percentile(quiet, 0.99):.1f} ms",
        ),
        (
            "/whoami p50 / p99, during the login load",
            f"{percentile(loaded, 0.5):.1f} / {percentile(loaded, 0.99):.1f} ms",
        ),
        (
            "/whoami median slowdown under login load",
            f"× {statistics.median(loaded) / statistics.median(quiet):.1f}",
        ),
    ]
    table = "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    print(table)
    Path(args.report).write_text(f"""# What a login costs

Measured {time.strftime("%Y-%m-%d")} on {machine()}; server and clients on the same
machine. Command:

    .venv/bin/python bench/login_cost.py --seconds {args.seconds:g} --concurrency {args.concurrency}

{table}

Password hashing runs in gevent's thread pool (`core/offload.py`). On 2 cores the
hashing itself competes for CPU with everything else, so some slowdown of other
requests is expected; what the thread pool prevents is a request waiting for a
whole hash to finish on the event loop before it is even read.
""")
    print(f"wrote {args.report}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
