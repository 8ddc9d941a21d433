"""JWT bearer tokens (RFC 7519, following RFC 8725's practices).

HS256 with a key derived from SECRET_KEY, the algorithm pinned on
verification, and every registered claim we issue required and checked
(`iss`, `aud`, `sub`, `iat`, `exp`, `jti`, and our `epoch`). `sessionData`
is encrypted (Fernet: AES-128-CBC + HMAC) so the token's holder cannot read or
alter it. Logout puts the `jti` on a denylist in Redis until the token would
expire.

`epoch` is the user's credential epoch when the token was issued
(core/users.py); `core.security` refuses the token once the user's differs.
`roles` and `perms` say what the user had at issue time, for the client to
read: the server never trusts them (it reads the user store).

Every claim's type is checked: a token signed with our key but holding odd
types (a forged key, an old version, a bug) is a 401 with the reason, never a
500 further on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.fernet import Fernet, InvalidToken

from core.keys import Keys

if TYPE_CHECKING:
    import redis

    from core.users import User

ALGORITHM = "HS256"
REQUIRED = ["iss", "aud", "sub", "iat", "exp", "jti", "epoch"]


class TokenError(Exception):
    """Why a token was refused; the message is safe to return."""


def _derive(secret_key: str, label: bytes) -> bytes:
    return hmac.new(secret_key.encode(), label, hashlib.sha256).digest()


def signing_key(secret_key: str) -> bytes:
    return _derive(secret_key, b"jwt-signing-key")


def _fernet(secret_key: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(_derive(secret_key, b"jwt-session-data")))


def issue(
    user: User, config: Mapping[str, Any], now: float | None = None, ttl: float | None = None
) -> tuple[str, dict[str, Any]]:
    """A signed token for `user`; returns (token, claims)."""
    now = int(now if now is not None else time.time())
    session_data = {"fullname": user.fullname, "roles": user.roles, "issuedAt": now}
    claims = {
        "iss": config["JWT_ISSUER"],
        "aud": config["JWT_AUDIENCE"],
        "sub": user.name,
        "iat": now,
        "exp": now + int(ttl if ttl is not None else config["JWT_TTL_SECONDS"]),
        "jti": uuid.uuid4().hex,
        "epoch": user.epoch,
        "roles": user.roles,
        "perms": {"publish": user.publish, "subscribe": user.subscribe},
        "sessionData": _fernet(config["SECRET_KEY"])
        .encrypt(json.dumps(session_data).encode())
        .decode(),
    }
    return jwt.encode(claims, signing_key(config["SECRET_KEY"]), algorithm=ALGORITHM), claims


def verify(token: str, config: Mapping[str, Any], redis_client: redis.Redis) -> dict[str, Any]:
    """The token's claims with `sessionData` decrypted, or TokenError."""
    try:
        claims = jwt.decode(
            token,
            signing_key(config["SECRET_KEY"]),
            algorithms=[ALGORITHM],
            audience=config["JWT_AUDIENCE"],
            issuer=config["JWT_ISSUER"],
            options={"require": REQUIRED},
            leeway=5,
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except jwt.InvalidAudienceError:
        raise TokenError("token is not for this audience") from None
    except jwt.InvalidIssuerError:
        raise TokenError("token has the wrong issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.InvalidTokenError:
        raise TokenError("malformed token") from None
    _check_types(claims)
    if redis_client.exists(_revoked_key(config, claims["jti"])):
        raise TokenError("token was revoked")
    try:
        session_data = json.loads(
            _fernet(config["SECRET_KEY"]).decrypt(claims["sessionData"].encode())
        )
    except (InvalidToken, ValueError):
        raise TokenError("token sessionData cannot be decrypted") from None
    _check_session_data(session_data)
    claims["sessionData"] = session_data
    return claims


def _is_list_of_str(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_types(claims: dict[str, Any]) -> None:
    """TokenError naming the first claim whose type is not the one we issue.
    (PyJWT accepts an `exp` of "9999999999", and checks nothing of ours.)"""
    for name in ("iat", "exp"):
        if type(claims[name]) is not int:  # not isinstance: True is an int, and no time
            raise TokenError(f"token claim {name!r} must be an integer")
    for name in ("sub", "jti", "epoch"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise TokenError(f"token claim {name!r} must be a non-empty string")
    if not isinstance(claims.get("sessionData"), str):
        raise TokenError("token claim 'sessionData' must be a string (it is encrypted)")
    if "roles" in claims and not _is_list_of_str(claims["roles"]):
        raise TokenError("token claim 'roles' must be a list of strings")
    perms = claims.get("perms", {})
    if not isinstance(perms, dict) or not all(
        _is_list_of_str(perms.get(action, [])) for action in ("publish", "subscribe")
    ):
        raise TokenError(
            "token claim 'perms' must be an object of string lists ('publish', 'subscribe')"
        )


def _check_session_data(data: object) -> None:
    if not isinstance(data, dict):
        raise TokenError("token sessionData must be an object")
    if not isinstance(data.get("fullname", ""), str) or not _is_list_of_str(data.get("roles", [])):
        raise TokenError("token sessionData has a 'fullname' or 'roles' of the wrong type")


def revoke(claims: Mapping[str, Any], config: Mapping[str, Any], redis_client: redis.Redis) -> None:
    """Deny this token's jti until it would have expired anyway."""
    ttl = max(int(claims["exp"] - time.time()) + 10, 1)
    redis_client.set(_revoked_key(config, claims["jti"]), "1", ex=ttl)


def _revoked_key(config: Mapping[str, Any], jti: str) -> str:
    return Keys(config["REDIS_PREFIX"]).revoked_token(jti)
