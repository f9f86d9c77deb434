"""Users' access tokens: the claims contract, and verification against the registry's JWKS.

The registry signs short-lived JWTs (RS256) and publishes its public keys; every other service verifies
them locally with a cached key set, so no request needs a round trip to the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from enum import StrEnum
from typing import Any
from uuid import UUID

import httpx
import jwt
import structlog
from jwt import PyJWK, PyJWKSet
from pydantic import BaseModel, ConfigDict, ValidationError

ALGORITHM = "RS256"
DEFAULT_CLAIMS_CACHE_SECONDS = 5.0
CLAIMS_CACHE_SIZE = 1024
FETCH_TIMEOUT_SECONDS = 2.0

log = structlog.get_logger()


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class UserClaims(BaseModel):
    """What a user's token says: who, and their role in each organisation."""

    model_config = ConfigDict(frozen=True)

    sub: UUID
    email: str
    orgs: dict[UUID, Role]
    exp: int
    iat: int
    jti: str

    @property
    def user_id(self) -> UUID:
        return self.sub

    def role_in(self, org_id: UUID) -> Role | None:
        return self.orgs.get(org_id)


def removed_member_key(org_id: UUID, user_id: UUID) -> str:
    """Where the registry notes when it removed `user_id` from `org_id` (seconds since the epoch), for
    as long as an access token can outlive the removal: a service that authorises from a token's
    `orgs` claim, which is as old as the token, refuses tokens issued before that moment."""
    return f"agentline:removed-member:{org_id}:{user_id}"


class InvalidToken(Exception):
    """Missing, malformed, expired, or not signed by the registry. Maps to HTTP 401."""


class KeysUnavailable(Exception):
    """The key set could not be fetched and none is cached. Maps to HTTP 503."""


class JwksVerifier:
    """Verifies user tokens with the registry's public keys, fetched once and cached.

    An unknown `kid` triggers one refetch (key rotation), at most every `min_refresh_seconds`, so a
    flood of forged tokens cannot turn into a flood of requests to the registry.

    A browser sends the same token with every request, and an RS256 check costs more CPU than the rest
    of a typical request, so the claims of a token that verified are remembered for
    `claims_cache_seconds` (never past its `exp`), keyed by the whole token string, signature
    included. Only successes are kept, in a bounded LRU, and every key-set refetch forgets them all.
    """

    def __init__(
        self,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        http: httpx.AsyncClient,
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 10.0,
        claims_cache_seconds: float = DEFAULT_CLAIMS_CACHE_SECONDS,
    ) -> None:
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._http = http
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._answered_at = float("-inf")
        self._lock = asyncio.Lock()
        self._claims_cache_seconds = claims_cache_seconds
        self._verified: OrderedDict[str, tuple[float, UserClaims]] = OrderedDict()

    async def verify(self, token: str) -> UserClaims:
        """Return the token's claims, or raise InvalidToken / KeysUnavailable."""
        remembered = self._remembered(token)
        if remembered is not None:
            return remembered
        claims = await self._verify_signed(token)
        self._remember(token, claims)
        return claims

    def _remembered(self, token: str) -> UserClaims | None:
        entry = self._verified.get(token)
        if entry is None:
            return None
        until, claims = entry
        if time.monotonic() >= until or time.time() >= claims.exp:
            del self._verified[token]
            return None
        self._verified.move_to_end(token)
        return claims

    def _remember(self, token: str, claims: UserClaims) -> None:
        if self._claims_cache_seconds <= 0:
            return
        self._verified[token] = (time.monotonic() + self._claims_cache_seconds, claims)
        self._verified.move_to_end(token)
        while len(self._verified) > CLAIMS_CACHE_SIZE:
            self._verified.popitem(last=False)

    async def _verify_signed(self, token: str) -> UserClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken("malformed token") from error
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"unexpected signing algorithm; expected {ALGORITHM}")
        key = await self._key_for(str(header.get("kid", "")))
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
            return UserClaims.model_validate(payload)
        except jwt.ExpiredSignatureError as error:
            raise InvalidToken("token expired") from error
        except (jwt.PyJWTError, ValidationError) as error:
            raise InvalidToken("token rejected") from error

    async def _key_for(self, kid: str) -> PyJWK:
        if kid not in self._keys or self._stale():
            await self._refresh_for(kid, asked_at=time.monotonic())
        if not self._keys:
            raise KeysUnavailable("the registry's signing keys cannot be fetched")
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("token signed with an unknown key")
        return key

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._cache_seconds

    async def _refresh_for(self, kid: str, *, asked_at: float) -> None:
        """Fetch the key set, unless a fetch answered (or failed) while this request waited for the lock.

        Requests that queued behind a fetch share its outcome: when the registry is slow or silent,
        a burst of requests costs one fetch and one timeout, not one after another.
        """
        async with self._lock:
            if self._answered_at >= asked_at:
                return
            may_refresh = time.monotonic() - self._fetched_at > self._min_refresh_seconds
            if self._stale() or (kid not in self._keys and may_refresh):
                await self._refresh()

    async def _refresh(self) -> None:
        try:
            response = await self._http.get(self._jwks_url, timeout=FETCH_TIMEOUT_SECONDS)
            response.raise_for_status()
            key_set = PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as error:
            self._answered_at = time.monotonic()
            log.warning("auth.keys_unavailable", url=self._jwks_url, error=type(error).__name__)
            if self._keys:
                # Keep serving the cached keys; try again after the refresh interval, not on every call.
                self._fetched_at = time.monotonic() - self._cache_seconds + self._min_refresh_seconds
            return
        self._keys = {str(key.key_id): key for key in key_set.keys}
        self._verified.clear()
        self._fetched_at = self._answered_at = time.monotonic()
