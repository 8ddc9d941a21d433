"""Quotas: how much one client may do, in one place.

- `spend(setting, what)`: one use of a rate quota whose limit is the setting's
  value (a `limits` string such as "30 per minute"), counted per client
  address and, for a logged-in user, per account as well, in Redis (the
  `limits` library's fixed windows, shared by every worker and host). Over it:
  429 with `Retry-After` and a reason naming the limit; the worker then
  refuses that client from memory until the window resets (no Redis round
  trip for the rest of a flood). `scope=` spends one share alone: the
  address's before a view authenticates (a flood, bad credentials included,
  is refused before each request costs a verification), the account's
  after. Raised in a WebSocket
  handler, `core.transports.websocket.route` turns the same refusal into close
  1008 with that reason.
- `@per_address(setting, what)`: a view that spends one use per request, per
  client address (the logins: one budget for every login endpoint).
- `spend(..., per_worker=True)`: the same, counted in the worker's memory,
  per address only: for WebSocket frames (drawing moves, editor ops), which
  would otherwise cost a Redis round trip each. An address can spread over at
  most every worker, so its budget is at most the workers' count times this.
- `admit_connection(environ)`: before a stream (SSE, long-poll, WebSocket)
  is accepted, refuse with 429 when its address already holds
  CONNECTIONS_PER_ADDRESS open streams on this worker (core.lifecycle counts
  them while they are open), and with 503 when the worker holds
  WORKER_CONNECTIONS streams in all. (An idle stream leaves gunicorn's pool,
  core.parking: the pool alone no longer bounds them.)

The client address is REMOTE_ADDR, which TRUSTED_PROXIES (werkzeug's
ProxyFix) sets from X-Forwarded-For behind nginx.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NoReturn, ParamSpec, TypeVar

from flask import current_app, g, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from core import lifecycle
from core.errors import abort_json

if TYPE_CHECKING:
    from wsgiref.types import WSGIEnvironment

    from flask import Flask

P = ParamSpec("P")
R = TypeVar("R")

_parsed: dict[str, list[RateLimitItem]] = {}  # a setting's value -> its parsed limits
_worker_limiter = FixedWindowRateLimiter(MemoryStorage())


def init_app(app: Flask) -> None:
    """The shared counters: in Redis, on a small pool of their own made where
    every other one is (core/redis_connections.py), under the app's key prefix."""
    prefix = app.config.get("QUOTA_KEY_PREFIX") or app.extensions["hub"].keys.rate_limits()
    app.extensions["quotas"] = FixedWindowRateLimiter(
        app.extensions["redis_connections"].rate_limit_storage(prefix, max_connections=16)
    )
    app.extensions["quota_refusals"] = {}  # see _known_refused


def _limits(text: str) -> list[RateLimitItem]:
    items = _parsed.get(text)
    if items is None:
        items = _parsed[text] = parse_many(text)
    return items


def _identities() -> Iterator[tuple[str, str]]:
    yield "address", request.remote_addr or "unknown"
    user = g.get("user")  # only who current_user() already found: no extra lookup
    if user is not None:
        yield "account", user.name


def spend(
    setting: str,
    what: str,
    *,
    per_worker: bool = False,
    cost: int = 1,
    scope: str | None = None,
) -> None:
    """Count `cost` uses of quota `setting` (its value in app.config) by this
    client; abort 429 (`what` names the thing counted) once it is spent.
    `scope` ("address" or "account") spends that share alone: a view can
    spend the address's before it authenticates, the account's after."""
    if per_worker:
        spend_on(
            setting, what, "address", request.remote_addr or "unknown", per_worker=True, cost=cost
        )
        return
    for identity, who in _identities():
        if scope is None or identity == scope:
            spend_on(setting, what, identity, who, cost=cost)


def spend_on(
    setting: str, what: str, scope: str, who: str, *, per_worker: bool = False, cost: int = 1
) -> None:
    """Count `cost` uses of quota `setting` by `who`, a `scope` ("address",
    "account"); e.g. login attempts on a named account, whoever asks."""
    strategy = _worker_limiter if per_worker else current_app.extensions["quotas"]
    refusals = None if per_worker else current_app.extensions["quota_refusals"]
    for item in _limits(current_app.config[setting]):
        memo = (item, setting, scope, who)
        if refusals is not None and (reset_at := _known_refused(refusals, memo)) is not None:
            _refuse(item, what, scope, reset_at)
        if not strategy.hit(item, setting, scope, who, cost=cost):
            reset_at, remaining = strategy.get_window_stats(item, setting, scope, who)
            if refusals is not None and remaining == 0:
                _remember_refused(refusals, memo, reset_at)
            _refuse(item, what, scope, reset_at)


# A client over a shared quota is refused from this worker's memory until its
# window resets, without the three Redis round trips of counting and reading
# the window: a flood of refused requests costs Redis nothing more. (It cannot
# spend more than its quota by it: it is only refused sooner.) Bounded: past
# REFUSALS_KEPT entries the expired ones go, then all of them if need be.
REFUSALS_KEPT = 10_000


def _known_refused(
    refusals: dict[tuple[object, ...], float], memo: tuple[object, ...]
) -> float | None:
    reset_at = refusals.get(memo)
    if reset_at is None:
        return None
    if reset_at > time.time():
        return reset_at
    del refusals[memo]
    return None


def _remember_refused(
    refusals: dict[tuple[object, ...], float], memo: tuple[object, ...], reset_at: float
) -> None:
    if len(refusals) >= REFUSALS_KEPT:
        now = time.time()
        for old in [key for key, until in list(refusals.items()) if until <= now]:
            del refusals[old]
        if len(refusals) >= REFUSALS_KEPT:
            refusals.clear()
    refusals[memo] = reset_at


def _refuse(item: RateLimitItem, what: str, scope: str, reset_at: float) -> NoReturn:
    retry = max(1, math.ceil(reset_at - time.time()))
    abort_json(
        429,
        f"too many {what}: at most {item} per {scope}; retry in {retry} s",
        headers={"Retry-After": str(retry)},
        retry_after=retry,
    )


def per_address(setting: str, what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A view decorator: each request spends one use of quota `setting` from
    the client's address before the view runs."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            spend_on(setting, what, "address", request.remote_addr or "unknown")
            return view(*args, **kwargs)

        return limited

    return decorate


def admit_connection(environ: WSGIEnvironment) -> None:
    """Refuse a new stream from an address that holds its share already
    (429), or when the worker holds all it may (503)."""
    worker_cap = current_app.config["WORKER_CONNECTIONS"]
    if lifecycle.held_by_all() >= worker_cap:
        abort_json(
            503,
            f"this worker holds all the streams it may ({worker_cap}); retry shortly",
            headers={"Retry-After": "5"},
            retry_after=5,
        )
    address = environ.get("REMOTE_ADDR") or "unknown"
    cap = current_app.config["CONNECTIONS_PER_ADDRESS"]
    if lifecycle.held_by(address) >= cap:
        abort_json(
            429,
            f"too many open connections from your address: at most {cap} "
            "per worker; close some and retry",
            headers={"Retry-After": "5"},
            retry_after=5,
        )
