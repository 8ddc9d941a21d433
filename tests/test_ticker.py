"""The ticker: a shared simulated market, a shared upstream cache, and callIn."""

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

pytestmark = pytest.mark.integration


def quote(server, symbol="IBM"):
    return requests.get(f"{server.url}/ticker/quote", params={"symbol": symbol}, timeout=15)


def test_quote_has_every_field_and_a_call_in(server):
    response = quote(server)
    assert response.status_code == 200
    body = response.json()
    assert set(body["quote"]) >= {
        "price",
        "change",
        "changePercent",
        "open",
        "high",
        "low",
        "volume",
        "time",
    }
    assert body["quote"]["low"] <= body["quote"]["price"] <= body["quote"]["high"]
    assert body["callIn"] == 5000


def test_every_worker_quotes_the_same_price_at_the_same_moment(server):
    by_second = {}
    workers = set()
    for _ in range(40):
        response = quote(server, "MSFT")
        workers.add(response.headers["X-Served-By"])
        q = response.json()["quote"]
        by_second.setdefault(q["time"], set()).add(q["price"])
    assert len(workers) == 2
    assert all(len(prices) == 1 for prices in by_second.values()), by_second


@pytest.mark.parametrize(
    "symbol, status, call_in",
    [("ZZZZ", 404, None), ("bad symbol", 400, None), ("A" * 11, 400, None)],
)
def test_unknown_and_invalid_symbols(server, symbol, status, call_in):
    response = quote(server, symbol)
    assert response.status_code == status
    assert "error" in response.json()
    assert response.json()["callIn"] is None  # stop polling


def test_call_in_rises_under_load(start_server):
    server = start_server(TICKER_TARGET_RPS=5, REDIS_PREFIX=f"tk{uuid.uuid4().hex[:6]}:")
    assert quote(server).json()["callIn"] == 5000
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: quote(server).json()["callIn"], range(120)))
    assert max(answers) > 5000
    assert max(answers) <= 60_000


def test_requests_that_get_no_quote_do_not_slow_everyone_down(start_server):
    server = start_server(TICKER_TARGET_RPS=5, REDIS_PREFIX=f"tk{uuid.uuid4().hex[:6]}:")
    with ThreadPoolExecutor(16) as pool:
        statuses = set(
            pool.map(
                lambda i: quote(server, ["ZZZZ", "BRK-B", "1BM"][i % 3]).status_code, range(120)
            )
        )
    assert statuses == {400, 404}
    assert quote(server).json()["callIn"] == 5000  # 120 refusals in a moment: the pace holds


class Provider:
    """A stub quote provider on loopback that counts its calls."""

    def __init__(self):
        self.calls = 0
        self.fail = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                provider.calls += 1
                time.sleep(0.2)  # a slow provider: concurrent pollers pile up meanwhile
                if provider.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                body = json.dumps({"price": 101.5, "change": 1.5, "open": 100.0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/quote?s={{symbol}}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def provider():
    stub = Provider()
    yield stub
    stub.close()


def wave(server, symbol, clients=50):
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: quote(server, symbol), range(clients)))


@pytest.mark.slow
def test_fifty_pollers_cause_one_upstream_call_per_interval(start_server, provider):
    server = start_server(
        TICKER_UPSTREAM_URL=provider.url,
        TICKER_UPSTREAM_INTERVAL=2,
        REDIS_PREFIX=f"tk{uuid.uuid4().hex[:6]}:",
    )
    answers = wave(server, "IBM")
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["quote"]["price"] for a in answers} == {101.5}
    assert len({a.headers["X-Served-By"] for a in answers}) == 2  # both workers polled
    assert provider.calls == 1
    wave(server, "IBM")
    assert provider.calls == 1  # still within the interval: all from the cache
    time.sleep(2.1)
    wave(server, "IBM")
    assert provider.calls == 2


@pytest.mark.slow
def test_upstream_failures_back_off(start_server, provider):
    server = start_server(
        TICKER_UPSTREAM_URL=provider.url,
        TICKER_UPSTREAM_INTERVAL=1,
        REDIS_PREFIX=f"tk{uuid.uuid4().hex[:6]}:",
    )
    provider.fail = True
    first = quote(server, "AAPL")
    assert first.status_code == 502
    assert first.json()["callIn"] == 10_000 and "error" in first.json()
    time.sleep(1.1)
    second = quote(server, "AAPL")
    assert second.json()["callIn"] == 20_000  # repeated failures back off further
    provider.fail = False
    time.sleep(1.1)
    recovered = quote(server, "AAPL")
    assert recovered.status_code == 200 and recovered.json()["callIn"] == 5000
