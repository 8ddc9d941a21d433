"""Password hashing (Argon2id) and SCRAM-SHA-256 credentials.

The server keeps, per user, an Argon2id hash (Basic, password login, tokens)
and SCRAM's salt, iteration count, StoredKey and ServerKey (challenge/response):
neither is a password equivalent. Every derivation runs off the gevent hub.
"""

import base64
import hashlib
import hmac
import os

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.offload import run_blocking

# OWASP Password Storage Cheat Sheet: Argon2id, m=19 MiB, t=2, p=1
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# OWASP: PBKDF2-HMAC-SHA256 with 600,000 iterations
SCRAM_ITERATIONS = 600_000
MAX_PASSWORD_BYTES = 1024  # bounds the work an attacker can ask for


def hash_password(password: str) -> str:
    return run_blocking(_hasher.hash, password)


def verify_password(stored_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return run_blocking(verify)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def scram_credentials(password: str, iterations: int = SCRAM_ITERATIONS) -> dict[str, str]:
    """What the server stores for SCRAM: {salt, iterations, stored_key, server_key} (base64)."""
    salt = os.urandom(16)
    salted = run_blocking(salted_password, password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return {
        "scram_salt": base64.b64encode(salt).decode(),
        "scram_iterations": str(iterations),
        "scram_stored_key": base64.b64encode(hashlib.sha256(client_key).digest()).decode(),
        "scram_server_key": base64.b64encode(_hmac(salted, b"Server Key")).decode(),
    }


def scram_client_proof(
    password: str, salt_b64: str | bytes, iterations: int, auth_message: str
) -> str:
    """The client's side (used by tests and tools; the browser does it with WebCrypto)."""
    salted = salted_password(password, base64.b64decode(salt_b64), iterations)
    client_key = _hmac(salted, b"Client Key")
    signature = _hmac(hashlib.sha256(client_key).digest(), auth_message.encode())
    return base64.b64encode(
        bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    ).decode()


def scram_verify(
    stored_key_b64: str, server_key_b64: str, auth_message: str, proof_b64: str | bytes
) -> str | None:
    """Check a proof; returns the base64 ServerSignature on success, else None."""
    try:
        proof = base64.b64decode(proof_b64, validate=True)
    except (ValueError, TypeError):
        return None
    stored_key = base64.b64decode(stored_key_b64)
    if len(proof) != len(stored_key):
        return None
    signature = _hmac(stored_key, auth_message.encode())
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
        return None
    return base64.b64encode(_hmac(base64.b64decode(server_key_b64), auth_message.encode())).decode()
