"""Routing with path variables (chapter 5): GET /listCities/<country>/<state>
(a trailing slash is accepted).

The dataset lives in Redis (one hash per country, seeded from
data/cities.json on first use), so every worker answers the same.
"""

import json
import re

from flask import Blueprint, jsonify

from core.config import PROJECT_ROOT
from core.errors import abort_json
from core.web import get_keys, get_redis

bp = Blueprint("cities", __name__)

DATA_FILE = PROJECT_ROOT / "data" / "cities.json"
DATA_VERSION = "2"  # bump when data/cities.json (or the keys' layout) changes to reseed
_NAME = re.compile(r"[a-z][a-z-]{0,63}\Z")


def _key(suffix):
    return get_keys().cities(suffix)


def _country_key(country):
    return get_keys().cities_country(country)


def _normalise(raw):
    """'New York', 'new_york' and 'NEW-YORK' all mean new-york."""
    return re.sub(r"[\s_]+", "-", raw.strip().lower())


def _seed(redis_client):
    if redis_client.get(_key("version")) == DATA_VERSION:
        return
    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    pipe = redis_client.pipeline(transaction=True)
    for country, states in data.items():
        if country.startswith("_"):
            continue
        pipe.delete(_country_key(country))
        pipe.hset(_country_key(country), mapping={s: json.dumps(c) for s, c in states.items()})
    pipe.set(_key("version"), DATA_VERSION)
    pipe.execute()


# strict_slashes=False: `/listCities/usa/ohio/` answers the same, as the book's
# Express route (not strict by default) does, instead of a 404.
@bp.get("/listCities/<country>/<state>", strict_slashes=False)
def list_cities(country, state):
    country, state = _normalise(country), _normalise(state)
    if not _NAME.match(country) or not _NAME.match(state):
        abort_json(400, "country and state are names of letters and hyphens, e.g. usa/ohio")
    redis_client = get_redis()
    _seed(redis_client)
    if not redis_client.exists(_country_key(country)):
        abort_json(404, f"unknown country {country!r}", country=country)
    cities = redis_client.hget(_country_key(country), state)
    if cities is None:
        abort_json(404, f"unknown state {state!r} in {country!r}", country=country, state=state)
    return jsonify(json.loads(cities))
