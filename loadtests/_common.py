"""What the load-test user classes share: the settings (from the environment),
the `--max-fail-ratio` option and the run's exit code, the browser-like
HttpUser base with its retry of closed kept-alive connections, and the
reporting helpers (`report`, `SequenceCheck`...). The event listeners here are
registered once, when this module is first imported (see locustfile.py on how
it is imported). SSE streams are parsed by realtime_client.parse_sse, the
project's one parser.
"""

import json
import os
import random
import time
from urllib.parse import urlsplit

import gevent
from locust import HttpUser, events
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

CHANNEL = os.environ.get("LOAD_CHANNEL", "chat.bench")
USERNAME = os.environ.get("LOAD_USERNAME", "jack")
PASSWORD = os.environ.get("LOAD_PASSWORD", "beanstalk")
ADMIN_USERNAME = os.environ.get("LOAD_ADMIN_USERNAME", "admin")
ADMIN_PASSWORD = os.environ.get("LOAD_ADMIN_PASSWORD") or os.environ.get("DEMO_ADMIN_PASSWORD")
PUBLISH_RATE = float(os.environ.get("LOAD_PUBLISH_RATE", "5"))
HOLD_SECONDS = tuple(float(s) for s in os.environ.get("LOAD_HOLD_SECONDS", "20-40").split("-"))

STREAM_TIMEOUT = 60  # seconds without a byte before a stream is dead (server heartbeat: 15 s)
ROUND_TRIP_TIMEOUT = 10  # a Q&A change not seen on the stream by then is a failure
SYMBOLS = ["IBM", "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META"]
RATE_LIMITED = " [429 rate-limited]"
RETRIED = " [retried: kept-alive connection closed]"


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    parser.add_argument(
        "--max-fail-ratio",
        type=float,
        default=0.01,
        env_var="LOCUST_MAX_FAIL_RATIO",
        help="exit 1 when more than this share of all requests failed",
    )


_verdict = []


@events.quitting.add_listener
def _exit_code(environment, **_kwargs):
    """The run fails on a failure ratio above --max-fail-ratio, on an exception
    in the loadtests code, or when nothing was measured at all (server unreachable)."""
    total = environment.stats.total
    limit = environment.parsed_options.max_fail_ratio if environment.parsed_options else 0.01
    exceptions = len(environment.runner.exceptions) if environment.runner else 0
    ratio = f"failure ratio {total.fail_ratio:.2%} (limit {limit:.2%})"
    if total.num_requests == 0:
        _verdict.append("load test FAILED: no requests were made")
    elif total.fail_ratio > limit:
        _verdict.append(f"load test FAILED: {ratio}")
    elif exceptions:
        _verdict.append(f"load test FAILED: {exceptions} exception(s) in the locustfile")
    else:
        _verdict.append(f"load test passed: {ratio}")
    environment.process_exit_code = 0 if _verdict[-1].startswith("load test passed") else 1


@events.quit.add_listener
def _print_verdict(**_kwargs):
    for line in _verdict:  # after Locust's tables, so it is the last thing shown
        print(line)


# -- HTTP clients that behave like browsers --------------------------------------------------


class RetryClosedConnection(Retry):
    """A browser sends a request again, once, when the server closed the
    kept-alive connection under it (reset, or closed before answering). So do
    the HTTP users here, for idempotent requests; a timeout is not retried.
    Each retry is also counted in a row of its own (RETRIED), so that it stays
    visible."""

    def increment(
        self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None
    ):
        if isinstance(error, ReadTimeoutError):
            raise error.with_traceback(_stacktrace)
        return super().increment(method, url, response, error, _pool, _stacktrace)


class BrowserLikeUser(HttpUser):
    abstract = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        adapter = HTTPAdapter(
            max_retries=RetryClosedConnection(
                total=1,
                connect=0,
                read=1,
                status=0,
                other=0,
                redirect=0,
                allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,
                raise_on_status=False,
            )
        )
        self.client.mount("http://", adapter)
        self.client.mount("https://", adapter)


@events.request.add_listener
def _count_retries(request_type, name, response=None, **_kwargs):
    retries = getattr(getattr(response, "raw", None), "retries", None)
    if retries is not None and retries.history:
        events.request.fire(
            request_type=request_type,
            name=name + RETRIED,
            response_time=0,
            response_length=0,
            exception=None,
            context={},
        )


# -- reporting helpers ----------------------------------------------------------------


class CheckFailed(Exception):
    """What the server sent is wrong (a gap, a duplicate, a bad frame...)."""


def report(user, request_type, name, response_time, length=0, exception=None):
    user.environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=response_time,
        response_length=length,
        exception=exception,
        context={},
    )


def ms_since(started):
    return (time.perf_counter() - started) * 1000


def origin_of(host):
    parts = urlsplit(host)
    return f"{parts.scheme}://{parts.netloc}"


def ws_url(host, path):
    parts = urlsplit(host)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{path}"


def hold_seconds():
    low, high = HOLD_SECONDS[0], HOLD_SECONDS[-1]
    return random.uniform(low, high)


def close_ws(ws, timeout=1):
    """Close a websocket-client connection politely (close frame, then up to
    `timeout` s for the server's), on a greenlet of its own. websocket-client's
    `close()` wraps that wait in a bare `except: pass`, which also swallows the
    GreenletExit of a Locust stop landing in it: the user then carried on
    running tasks, and Locust waited for it forever at the end of the run
    (seen once in CI). Killing a user waiting here stops it; the close itself
    still finishes in the background."""
    gevent.spawn(ws.close, timeout=timeout).join()


def ws_close_info(payload):
    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return code, payload[2:].decode("utf-8", "replace")


def problem(response):
    """What went wrong with a catch_response request, for the failure report."""
    if response.status_code == 0:  # no HTTP answer at all: the exception says why
        return f"no response: {response.error!r}"
    return f"HTTP {response.status_code}: {response.text[:200]}"


def expect_status(response, *statuses):
    """catch_response helper: success on an expected status; a 429 from the
    login rate limit is an expected answer too, reported under its own name."""
    if response.status_code in statuses:
        response.success()
        return True
    if response.status_code == 429:
        response.request_meta["name"] += RATE_LIMITED
        response.success()
        return False
    response.failure(problem(response))
    return False


def fetch_token(user, username, password, name="/auth/token"):
    """A bearer token, waiting out the login rate limit; None after 5 tries."""
    for _ in range(5):
        with user.client.post(
            "/auth/token",
            json={"username": username, "password": password},
            name=name,
            catch_response=True,
        ) as response:
            if expect_status(response, 200):
                return response.json()["token"]
            wait = float(response.headers.get("Retry-After") or 5)
        gevent.sleep(min(wait, 15))
    return None


class SequenceCheck:
    """Publishers number their messages; each subscriber must see every one
    once and in order (within one session or across resumes)."""

    def __init__(self):
        self.last = {}

    def check(self, data):
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                return None
        if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
            return None  # somebody else's message
        publisher, seq = data.get("pub"), data["seq"]
        previous = self.last.get(publisher)
        self.last[publisher] = seq
        if previous is None or seq == previous + 1:
            return None
        if seq <= previous:
            return CheckFailed(f"duplicate or out of order: seq {seq} after {previous}")
        return CheckFailed(f"gap: {seq - previous - 1} message(s) missing after seq {previous}")
