"""docs/openapi.yaml is true: valid OpenAPI, exactly the app's routes, its
limits those of the code, and schemathesis finds no mismatch against a real
gunicorn server (2 gevent workers).

ROUTE RULE, what the document lists: every rule of the Flask url_map except
WebSocket routes (`rule.websocket`: their frames are beyond OpenAPI; the
README describes them) and the `static` endpoint (files). HTML pages are
listed, briefly. A new route without documentation fails
`test_document_lists_exactly_the_app_routes`, and so does a documented route
that no longer exists.
"""

import json
import re
import secrets
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import redis
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from itsdangerous import URLSafeSerializer
from schemathesis import GenerationMode

from blueprints import auth as auth_bp
from blueprints import qa as qa_bp
from core import stream_log as core_hub
from core.config import SETTINGS, load_settings
from core.tokens import issue
from core.users import UserStore
from tests.settings import SECRET_KEY

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
DOCUMENTED = sorted(
    (path, method.upper())
    for path, item in SPEC["paths"].items()
    for method in item
    if method in HTTP_METHODS
)

# Server-Sent Event streams never end, so schemathesis (which reads the whole
# body) cannot call them; test_sse.py, test_qa.py, test_processes.py and
# test_ws_apps.py cover them. GET /sub/{channel} is fuzzed as a long-poll
# (schemathesis sends no `Accept: text/event-stream`).
SSE_ONLY = {
    ("/sse/clock", "GET"),
    ("/qa/stream", "GET"),
    ("/admin/monitor/stream", "GET"),
    ("/admin/track/stream", "GET"),
}
FUZZED = [op for op in DOCUMENTED if op not in SSE_ONLY]


def _takes_input(path, method):
    operation = SPEC["paths"][path][method.lower()]
    return "{" in path or "parameters" in operation or "requestBody" in operation


# Negative examples (inputs the document rules out) only where there is an
# input to break: without one, Hypothesis has nothing to generate.
CASES = [(path, method, GenerationMode.POSITIVE) for path, method in FUZZED] + [
    (path, method, GenerationMode.NEGATIVE) for path, method in FUZZED if _takes_input(path, method)
]

MAX_EXAMPLES = 15
PREFIX = "openapi-test:"  # this file's own Redis keyspace: its questions, channels, users
LONGPOLL_SECONDS = 0.3  # a long-poll without news answers {"events": []} after this
ADMIN, ADMIN_PASSWORD = "openapi-admin", "openapi-admin-password"
PLAIN, PLAIN_PASSWORD = "openapi-plain", "openapi-plain-password"

# The four checks of issue 9, none dropped.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def set_cookie(response, name):
    """The value a (schemathesis) response sets for cookie `name`."""
    jar = SimpleCookie()
    for header in response.headers.get("set-cookie", []):
        jar.load(header)
    return jar[name].value


def flask_to_openapi(rule):
    """`/listCities/<country>/<state>` -> `/listCities/{country}/{state}`;
    converters (`<int:n>`, `<path:p>`) are dropped."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def app_routes(app):
    """(path template, method) of every route the document must list (ROUTE RULE)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or getattr(rule, "websocket", False):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((flask_to_openapi(rule.rule), method))
    return routes


# --- the document -----------------------------------------------------------


@pytest.mark.unit
def test_document_is_valid_openapi():
    schema = schemathesis.openapi.from_path(SPEC_PATH)
    schema.validate()  # the OpenAPI 3.0 meta-schema; raises jsonschema_rs.ValidationError
    assert SPEC["openapi"].startswith("3.0")
    ids = [SPEC["paths"][path][method.lower()]["operationId"] for path, method in DOCUMENTED]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for path, method in DOCUMENTED:  # every operation loads, its $refs resolve
        assert schema[path][method].definition.raw["responses"], (path, method)


@pytest.mark.integration
def test_document_lists_exactly_the_app_routes(app):
    routes, documented = app_routes(app), set(DOCUMENTED)
    assert not routes - documented, f"routes missing from docs/openapi.yaml: {routes - documented}"
    assert not documented - routes, f"documented routes the app lacks: {documented - routes}"


@pytest.mark.unit
def test_flask_to_openapi():
    assert flask_to_openapi("/a/<x>/<int:y>/<path:z>") == "/a/{x}/{y}/{z}"


@pytest.mark.unit
def test_document_limits_match_the_code():
    schemas, paths = SPEC["components"]["schemas"], SPEC["paths"]
    publish = paths["/pub/{channel}"]["post"]["requestBody"]["content"]
    assert schemas["Field"]["maxLength"] == auth_bp.MAX_FIELD
    assert schemas["QuestionRequest"]["properties"]["question"]["maxLength"] == qa_bp.MAX_QUESTION
    assert schemas["AnswerRequest"]["properties"]["answer"]["maxLength"] == qa_bp.MAX_ANSWER
    assert publish["text/plain"]["schema"]["maxLength"] == SETTINGS["MAX_MESSAGE_BYTES"][1]
    channel = re.compile(SPEC["components"]["parameters"]["Channel"]["schema"]["pattern"])
    for name in ("news", "a", "private-x.y_z-1", "9", "x" * 64, "x" * 65, "-a", "a:b", "a b", ""):
        assert bool(channel.search(name)) == bool(core_hub.PUBLIC_CHANNEL.match(name)), name
    message_id = re.compile(schemas["MessageId"]["pattern"])
    for raw in ("0", "1-0", "1700000000000-3", "1" * 20, "1" * 21, "1-", "-1", "a", ""):
        assert bool(message_id.search(raw)) == bool(core_hub._ID.match(raw)), raw


# --- against a real server --------------------------------------------------


class Api:
    """The server under test, and the credentials each operation is called with."""

    def __init__(self, server, redis_url):
        self.url = server.url
        self.schema = schemathesis.openapi.from_path(SPEC_PATH)
        self.settings = load_settings(server.env)
        self.users = UserStore(redis.Redis.from_url(redis_url, decode_responses=True), PREFIX)
        admin = self.users.get(ADMIN) or self.users.create(
            ADMIN, ADMIN_PASSWORD, fullname="OpenAPI Admin", admin=True
        )
        self.users.get(PLAIN) or self.users.create(PLAIN, PLAIN_PASSWORD)
        self.admin_token = issue(admin, self.settings, ttl=3600)[0]
        self.qa_client = URLSafeSerializer(SECRET_KEY, salt="qa-client").dumps(
            secrets.token_hex(16)
        )

    def throwaway_token(self):
        return issue(self.users.get(PLAIN), self.settings, ttl=600)[0]

    def headers_for(self, path, method):
        """The headers of one call: the operation's own credentials."""
        if (path, method) == ("/auth/logout", "POST"):
            # Logging out revokes the token: a fresh one per call, never the admin's.
            return {"Authorization": f"Bearer {self.throwaway_token()}"}
        if (path, method) == ("/auth/basic", "GET"):
            return {"Authorization": requests.auth._basic_auth_str(ADMIN, ADMIN_PASSWORD)}
        if path.startswith("/qa/"):
            return {"X-Client-Id": self.qa_client}
        security = self.schema[path][method].definition.raw.get("security", [])
        if any("bearerAuth" in requirement for requirement in security):
            return {"Authorization": f"Bearer {self.admin_token}"}
        return {}

    def call(self, path, method, expect, headers=None, cookies=None, **case):
        """One explicit case through schemathesis' checks; the response."""
        case = self.schema[path][method].Case(**case)
        response = case.call(base_url=self.url, headers=headers, cookies=cookies, timeout=10)
        case.validate_response(response, checks=CHECKS, headers=headers)
        assert response.status_code == expect, (path, response.status_code, response.text)
        return response


@pytest.fixture(scope="module")
def api(start_server, redis_server):
    server = start_server(workers=2, REDIS_PREFIX=PREFIX, LONGPOLL_TIMEOUT_SECONDS=LONGPOLL_SECONDS)
    api = Api(server, redis_server.url)
    # A question this client follows, so that POST /qa/answers can succeed (201).
    qa = {"X-Client-Id": api.qa_client}
    api.call(
        "/qa/questions",
        "POST",
        201,
        headers=qa,
        body={"question": "Why OpenAPI?"},
        media_type="application/json",
    )
    api.call(
        "/qa/select",
        "POST",
        200,
        headers=qa,
        body={"question": "why  openapi?"},
        media_type="application/json",
    )
    return api


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "method", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for p, m, mode in CASES]
)
def test_schemathesis(api, path, method, mode):
    operation = api.schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    def check(case):
        headers = api.headers_for(path, method)
        response = case.call(base_url=api.url, headers=headers, timeout=10)
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


@pytest.mark.integration
def test_success_paths(api):
    """Answers random inputs rarely reach, checked against the document too."""
    admin = {"Authorization": f"Bearer {api.admin_token}"}
    json_body = {"media_type": "application/json"}
    api.call("/healthz", "GET", 200)
    assert api.call("/whoami", "GET", 200, query={"format": "json"}).json()["pid"] > 0
    assert (
        "Columbus"
        in api.call(
            "/listCities/{country}/{state}",
            "GET",
            200,
            path_parameters={"country": "USA", "state": "ohio"},
        ).json()
    )
    api.call(
        "/listCities/{country}/{state}",
        "GET",
        404,
        path_parameters={"country": "usa", "state": "atlantis"},
    )
    assert (
        api.call("/ticker/quote", "GET", 200, query={"symbol": "ibm"}).json()["quote"]["symbol"]
        == "IBM"
    )
    cookie = set_cookie(api.call("/cookie", "GET", 200), "demo_cookie")
    api.call("/mycookie", "GET", 200, cookies={"demo_cookie": cookie})
    api.call("/mycookie", "GET", 404)

    # Publish text and JSON, read both back with a long-poll; then a reset.
    channel = {"channel": f"explicit-{secrets.token_hex(4)}"}
    api.call(
        "/pub/{channel}",
        "POST",
        201,
        headers=admin,
        path_parameters=channel,
        body="hello",
        media_type="text/plain",
    )
    api.call(
        "/pub/{channel}",
        "POST",
        201,
        headers=admin,
        path_parameters=channel,
        body={"n": [1, 2.5, None]},
        **json_body,
    )
    api.call(
        "/pub/{channel}", "POST", 401, path_parameters=channel, body="x", media_type="text/plain"
    )
    events = api.call(
        "/sub/{channel}", "GET", 200, path_parameters=channel, query={"cursor": "0"}
    ).json()["events"]
    assert [e["data"] for e in events] == ["hello", {"n": [1, 2.5, None]}]
    assert (
        api.call(
            "/sub/{channel}", "GET", 200, path_parameters=channel, query={"cursor": "1-0"}
        ).json()["reset"]
        is True
    )
    api.call("/sub/{channel}", "GET", 400, path_parameters=channel, query={"cursor": "x"})
    api.call("/sub/{channel}", "GET", 401, path_parameters={"channel": "private-x"})

    # Password logins: a token, a session with its CSRF token, and logouts.
    credentials = {"body": {"username": PLAIN, "password": PLAIN_PASSWORD}, **json_body}
    token = api.call("/auth/token", "POST", 200, **credentials).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.call("/auth/me", "GET", 200, headers=bearer).json()["auth"] == "token"
    api.call("/auth/tokendata", "POST", 200, headers=bearer)
    api.call("/auth/tokendata", "POST", 401)
    assert api.call("/auth/logout", "POST", 200, headers=bearer).json()["revoked"]
    api.call("/auth/me", "GET", 401, headers=bearer)  # revoked
    login = api.call("/auth/login", "POST", 200, **credentials)
    session = {"session": set_cookie(login, "session")}
    me = api.call("/auth/me", "GET", 200, cookies=session).json()
    assert me["auth"] == "session" and me["csrfToken"] == login.json()["csrfToken"]
    api.call("/auth/logout", "POST", 403, cookies=session)  # no X-CSRF-Token, no Origin
    api.call(
        "/auth/logout", "POST", 200, cookies=session, headers={"X-CSRF-Token": me["csrfToken"]}
    )
    api.call("/auth/me", "GET", 401, cookies=session)
    api.call("/auth/basic", "GET", 401)
    api.call("/auth/challenge", "POST", 200, body={"username": PLAIN}, **json_body)

    plain = {"Authorization": f"Bearer {api.throwaway_token()}"}
    for path in ("/admin/processes", "/metrics"):
        api.call(path, "GET", 200, headers=admin)
        api.call(path, "GET", 401)
        api.call(path, "GET", 403, headers=plain)
    for path in ("/admin/monitor", "/admin/track"):
        api.call(path, "GET", 401)
        api.call(path, "GET", 403, headers=plain)
    api.call("/qa/questions", "POST", 401, body={"question": "who?"}, **json_body)
    api.call(
        "/qa/questions",
        "POST",
        403,
        headers={"X-Client-Id": "forged"},
        body={"question": "who?"},
        **json_body,
    )
    api.call("/editor/{doc}", "GET", 400, path_parameters={"doc": "a.b"})


@pytest.mark.integration
def test_published_json_stays_json(api):
    channel = f"nan-{secrets.token_hex(4)}"
    admin = {"Authorization": f"Bearer {api.admin_token}", "Content-Type": "application/json"}
    statuses = [
        requests.post(f"{api.url}/pub/{channel}", data=body, headers=admin, timeout=10).status_code
        for body in ("NaN", "[1e999]")
    ]
    text = requests.get(f"{api.url}/sub/{channel}?cursor=0", timeout=10).text

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert statuses == [400, 400] or json.loads(text, parse_constant=refuse)
