"""The AJAX stock ticker (chapter 6): the server, which sees the load and the
errors, tells each client when to call back (`callIn`, in ms).

    GET /ticker/                     the page
    GET /ticker/quote?symbol=IBM     {"quote": {...}, "callIn": ms}

Quotes come from a simulated market: a random walk per symbol kept in Redis
and advanced one step per second by a Lua script, so every worker returns the
same price at a given moment. With TICKER_UPSTREAM_URL set, quotes come from
that provider instead, through a Redis cache and lock: however many clients
poll, one upstream call per symbol per TICKER_UPSTREAM_INTERVAL seconds.

The callIn rule:
- normally TICKER_CALL_IN_MS (5000);
- under load, scaled by (requests per second over the last 5 s) / TICKER_TARGET_RPS
  when that exceeds 1, up to 60000;
- after an upstream failure 10000, doubling with each consecutive failure, up to 120000;
- `null` (stop polling) for an invalid (400) or unknown (404) symbol.

Only quotes served count toward the load: requests for unknown symbols or
failed upstream calls cannot slow everyone else's polling.
"""

import json
import re
import time
import urllib.request

from flask import Blueprint, current_app, request

from core.errors import abort_json
from core.web import get_hub, get_keys, get_redis

bp = Blueprint("ticker", __name__, url_prefix="/ticker")

LISTED = {
    "IBM": 140.0,
    "AAPL": 190.0,
    "MSFT": 410.0,
    "GOOG": 150.0,
    "AMZN": 180.0,
    "NVDA": 120.0,
    "TSLA": 250.0,
    "META": 480.0,
}
SYMBOL = re.compile(r"[A-Z][A-Z0-9.]{0,9}\Z")
MAX_CALL_IN, MAX_ERROR_CALL_IN, ERROR_CALL_IN = 60_000, 120_000, 10_000
RATE_WINDOW = 5
FIELDS = ("price", "change", "changePercent", "open", "high", "low", "volume")


def _key(*parts):
    return get_keys().ticker(*parts)


@bp.get("/")
def page():
    return current_app.send_static_file("ticker.html")


@bp.get("/quote")
def quote():
    symbol = request.args.get("symbol", "").strip().upper()
    if not SYMBOL.match(symbol):
        abort_json(400, "symbol: 1-10 of A-Z 0-9 ., starting with a letter", callIn=None)
    if current_app.config["TICKER_UPSTREAM_URL"]:
        result, error_call_in = _upstream_quote(symbol)
        if result is None:
            return {"error": error_call_in[0], "callIn": error_call_in[1]}, 502
        return {"quote": result, "callIn": _call_in_for_load()}
    if symbol not in LISTED:
        return {
            "error": f"unknown symbol {symbol!r}",
            "listed": sorted(LISTED),
            "callIn": None,
        }, 404
    return {"quote": _simulated_quote(symbol), "callIn": _call_in_for_load()}


def _simulated_quote(symbol):
    script = get_hub().scripts["ticker_market"]
    price, open_, high, low, volume, t = script(
        keys=[_key("market", symbol)], args=[symbol, int(time.time()), LISTED[symbol]]
    )
    price, open_ = float(price), float(open_)
    return {
        "symbol": symbol,
        "price": round(price, 2),
        "change": round(price - open_, 2),
        "changePercent": round((price - open_) / open_ * 100, 3),
        "open": round(open_, 2),
        "high": round(float(high), 2),
        "low": round(float(low), 2),
        "volume": int(float(volume)),
        "time": int(t) * 1000,
        "source": "simulated",
    }


def _call_in_for_load():
    """Count this served quote and derive callIn from the recent rate of them."""
    config, redis_client = current_app.config, get_redis()
    now = int(time.time())
    pipe = redis_client.pipeline(transaction=False)
    pipe.incr(_key("rate", str(now)))
    pipe.expire(_key("rate", str(now)), RATE_WINDOW + 2)
    for second in range(now - RATE_WINDOW + 1, now + 1):  # (no MGET: they are in many slots)
        pipe.get(_key("rate", str(second)))
    counts = pipe.execute()[2:]
    rate = sum(int(c or 0) for c in counts) / RATE_WINDOW
    factor = max(1.0, rate / config["TICKER_TARGET_RPS"])
    return int(min(MAX_CALL_IN, config["TICKER_CALL_IN_MS"] * factor))


def _upstream_quote(symbol):
    """(quote, None) from the shared cache or one upstream call; on failure
    (None, (error, callIn))."""
    config, redis_client = current_app.config, get_redis()
    interval = config["TICKER_UPSTREAM_INTERVAL"]
    cache_key, lock_key = _key("cache", symbol), _key("lock", symbol)
    failures_key = _key("failures", symbol)
    cached = redis_client.get(cache_key)
    if cached is not None and time.time() - json.loads(cached)["fetchedAt"] < interval:
        return json.loads(cached)["quote"], None
    if redis_client.set(lock_key, "1", nx=True, px=int(interval * 1000)):
        try:
            quote = _fetch(config["TICKER_UPSTREAM_URL"].format(symbol=symbol), symbol)
        except (OSError, ValueError) as exc:
            failures = redis_client.incr(failures_key)
            redis_client.expire(failures_key, 3600)
            redis_client.set(_key("last-error", symbol), str(exc)[:200], ex=3600)
            return None, _upstream_error(failures)
        redis_client.delete(failures_key)
        redis_client.set(
            cache_key,
            json.dumps({"quote": quote, "fetchedAt": time.time()}),
            ex=int(interval * 10) + 1,
        )
        return quote, None
    # Another request is fetching: serve the previous value, or wait briefly for the new one.
    deadline = time.monotonic() + 3
    while cached is None and time.monotonic() < deadline:
        time.sleep(0.05)
        cached = redis_client.get(cache_key)
    if cached is not None:
        return json.loads(cached)["quote"], None
    return None, _upstream_error(int(redis_client.get(failures_key) or 1))


def _upstream_error(failures):
    call_in = min(MAX_ERROR_CALL_IN, ERROR_CALL_IN * 2 ** (max(failures, 1) - 1))
    return "the quote provider is unavailable, retrying later", call_in


def _fetch(url, symbol):
    with urllib.request.urlopen(url, timeout=3) as response:  # the operator configures this URL
        data = json.loads(response.read(64 * 1024))
    if not isinstance(data, dict) or not isinstance(data.get("price"), (int, float)):
        raise ValueError("the provider's answer has no numeric price")
    quote = {name: data[name] for name in FIELDS if isinstance(data.get(name), (int, float))}
    return {**quote, "symbol": symbol, "time": int(time.time() * 1000), "source": "upstream"}
