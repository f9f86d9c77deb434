"""Passwords (argon2) and users' access tokens (RS256 JWTs) with the public key set (JWKS)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import structlog
from agentline_common.auth import ALGORITHM, Role
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from agentline_registry.settings import RegistrySettings

log = structlog.get_logger()

_HASHER = PasswordHasher()
# Verifying against this when the email is unknown keeps a failed log-in's timing the same either way.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


_HASHING = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2")
"""Where passwords are hashed and verified: off the event loop, since each costs about 0.2 s of CPU
that on the loop would hold up every look-up and request meanwhile; and one at a time, since argon2
already runs several threads (lanes) per hash, so a burst of log-ins cannot take every core from the
look-ups. Its thread starts on first use."""


async def hash_password_off_loop(password: str) -> str:
    """`hash_password` on the hashing thread (see `_HASHING`)."""
    return await asyncio.get_running_loop().run_in_executor(_HASHING, hash_password, password)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    """`verify_password` on the hashing thread (see `_HASHING`)."""
    return await asyncio.get_running_loop().run_in_executor(
        _HASHING, verify_password, password_hash, password
    )


def new_password() -> str:
    return secrets.token_urlsafe(18)


class SigningKeyError(Exception):
    """No usable private key is configured where one is required."""


@dataclass(frozen=True)
class SigningKey:
    """The registry's RSA key: signs tokens; its public half is published as a JWKS."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningKeyError("the JWT private key must be an RSA key")
        return cls(private_key=key, kid=_thumbprint(key.public_key()))

    @classmethod
    def generate(cls) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(private_key=key, kid=_thumbprint(key.public_key()))

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}


def _thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 thumbprint: the same key always gets the same `kid`."""
    jwk = json.loads(RSAAlgorithm.to_jwk(public_key))
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_signing_key(settings: RegistrySettings) -> SigningKey:
    """The configured key; in development and tests an ephemeral one (tokens die with the process)."""
    if settings.jwt_private_key is not None:
        return SigningKey.from_pem(settings.jwt_private_key.get_secret_value().encode())
    if settings.jwt_private_key_file is not None:
        return SigningKey.from_pem(settings.jwt_private_key_file.read_bytes())
    if settings.environment == "production":
        raise SigningKeyError("set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE in production")
    log.warning("credentials.ephemeral_signing_key", reason="no JWT_PRIVATE_KEY configured")
    return SigningKey.generate()


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_at: datetime


def issue_access_token(
    key: SigningKey,
    *,
    user_id: uuid.UUID,
    email: str,
    orgs: dict[uuid.UUID, Role],
    issuer: str,
    audience: str,
    lifetime: timedelta,
    now: datetime | None = None,
) -> AccessToken:
    issued_at = (now or datetime.now(UTC)).replace(microsecond=0)
    expires_at = issued_at + lifetime
    claims = {
        "sub": str(user_id),
        "email": email,
        "orgs": {str(org_id): role.value for org_id, role in orgs.items()},
        "iss": issuer,
        "aud": audience,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
    return AccessToken(token=token, expires_at=expires_at)
