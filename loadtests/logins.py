"""The login flows of /auth/ (HTTP Basic, SCRAM-style challenge/response,
session, JWT): LoginVisitor and the SCRAM client's helpers."""

import base64
import hashlib
import hmac

import gevent
from _common import PASSWORD, USERNAME, BrowserLikeUser, expect_status
from locust import between, task

_salted_passwords = {}


def salted_password(password, salt_b64, iterations):
    """SCRAM's SaltedPassword (PBKDF2-SHA-256, 600,000 rounds): on a thread,
    not the gevent hub, and cached per salt as RFC 5802 allows a client to."""
    key = (password, salt_b64, iterations)
    if key not in _salted_passwords:
        _salted_passwords[key] = gevent.get_hub().threadpool.apply(
            hashlib.pbkdf2_hmac,
            ("sha256", password.encode(), base64.b64decode(salt_b64), iterations),
        )
    return _salted_passwords[key]


def _hmac(key, message):
    return hmac.new(key, message, hashlib.sha256).digest()


class LoginVisitor(BrowserLikeUser):
    """Each round: HTTP Basic, the SCRAM-style challenge/response, a session
    login (with /auth/me and a CSRF-protected logout), and a JWT (tokendata,
    revoke, and the revoked token refused). Three of these cost an Argon2id
    hash on the server. A 429 from the login rate limit (LOGIN_RATE_LIMIT,
    20/min per address by default) is reported as its own, expected row."""

    weight = 1
    wait_time = between(2, 5)

    def call(self, method, path, expect=200, name=None, **kwargs):
        with self.client.request(
            method, path, name=name or path, catch_response=True, **kwargs
        ) as response:
            ok = expect_status(response, expect)
            return response if ok else None

    @task
    def log_in_four_ways(self):
        self.basic()
        self.scram()
        self.session_login()
        self.jwt()

    def basic(self):
        self.call("GET", "/auth/basic", auth=(USERNAME, PASSWORD))

    def scram(self):
        challenge = self.call("POST", "/auth/challenge", json={"username": USERNAME})
        if challenge is None:
            return
        c = challenge.json()
        salted = salted_password(PASSWORD, c["salt"], c["iterations"])
        client_key = _hmac(salted, b"Client Key")
        auth_message = f"{USERNAME}:{c['nonce']}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = base64.b64encode(
            bytes(a ^ b for a, b in zip(client_key, signature, strict=False))
        ).decode()
        with self.client.post(
            "/auth/respond", json={"nonce": c["nonce"], "proof": proof}, catch_response=True
        ) as response:
            if expect_status(response, 200):
                expected = base64.b64encode(
                    _hmac(_hmac(salted, b"Server Key"), auth_message)
                ).decode()
                if response.json().get("serverSignature") != expected:
                    response.failure("server signature mismatch")
        self.logout_session(response)

    def session_login(self):
        login = self.call("POST", "/auth/login", json={"username": USERNAME, "password": PASSWORD})
        if login is None:
            return
        self.call("GET", "/auth/me")
        self.logout_session(login)
        self.call("GET", "/auth/me", expect=401, name="/auth/me (after logout: 401)")

    def logout_session(self, login):
        if login is not None and login.status_code == 200:
            # Cookie-authenticated, no Origin: the CSRF token is required.
            self.call(
                "POST",
                "/auth/logout",
                name="/auth/logout (session)",
                headers={"X-CSRF-Token": login.json()["csrfToken"]},
            )
        self.client.cookies.clear()

    def jwt(self):
        issued = self.call("POST", "/auth/token", json={"username": USERNAME, "password": PASSWORD})
        if issued is None:
            return
        bearer = {"Authorization": f"Bearer {issued.json()['token']}"}
        self.call("POST", "/auth/tokendata", headers=bearer)
        self.call("POST", "/auth/logout", name="/auth/logout (token)", headers=bearer)
        self.call(
            "POST",
            "/auth/tokendata",
            expect=401,
            headers=bearer,
            name="/auth/tokendata (revoked: 401)",
        )
