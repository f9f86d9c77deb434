"""JwksVerifier against a real HTTP server on loopback that publishes a key set."""

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from agentline_common.auth import FETCH_TIMEOUT_SECONDS, InvalidToken, JwksVerifier, KeysUnavailable, Role
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

pytestmark = pytest.mark.integration

ISSUER = "agentline-registry"
AUDIENCE = "agentline"


class KeyServer:
    """Serves `jwks` at /jwks.json and counts the requests; `silent` holds every answer back."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.silent = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                if owner.silent.is_set():
                    time.sleep(FETCH_TIMEOUT_SECONDS + 1)
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
        entries = []
        for kid, key in keys:
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            entries.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        self.jwks = {"keys": entries}


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.server.shutdown()


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sign(key: rsa.RSAPrivateKey, kid: str, **overrides: Any) -> str:
    now = int(time.time())
    org = str(uuid.uuid4())
    claims = {
        "sub": str(uuid.uuid4()),
        "email": "a@example.com",
        "orgs": {org: "admin"},
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
        **overrides,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


async def make_verifier(server: KeyServer, http: httpx.AsyncClient, **kw: Any) -> JwksVerifier:
    return JwksVerifier(jwks_url=server.url, issuer=ISSUER, audience=AUDIENCE, http=http, **kw)


async def test_valid_token_is_verified_and_keys_are_cached(key_server: KeyServer) -> None:
    key = new_key()
    key_server.publish(("k1", key))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http)
        for _ in range(5):
            claims = await verifier.verify(sign(key, "k1"))
        assert key_server.requests == 1
    assert list(claims.orgs.values()) == [Role.ADMIN]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"aud": "someone-else"}, "rejected"),
        ({"iss": "someone-else"}, "rejected"),
        ({"orgs": {"not-a-uuid": "admin"}}, "rejected"),
    ],
)
async def test_bad_claims_are_rejected(
    key_server: KeyServer, overrides: dict[str, Any], message: str
) -> None:
    key = new_key()
    key_server.publish(("k1", key))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http)
        with pytest.raises(InvalidToken, match=message):
            await verifier.verify(sign(key, "k1", **overrides))


async def test_forged_and_malformed_tokens_are_rejected(key_server: KeyServer) -> None:
    key_server.publish(("k1", new_key()))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http)
        with pytest.raises(InvalidToken):
            await verifier.verify(sign(new_key(), "k1"))
        with pytest.raises(InvalidToken, match="malformed"):
            await verifier.verify("not.a.jwt")
        hs = jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "k1"})
        with pytest.raises(InvalidToken, match="algorithm"):
            await verifier.verify(hs)


async def test_rotated_key_is_fetched_once_and_unknown_kids_do_not_flood(
    key_server: KeyServer,
) -> None:
    old, new = new_key(), new_key()
    key_server.publish(("old", old))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http, min_refresh_seconds=0.0)
        await verifier.verify(sign(old, "old"))
        key_server.publish(("old", old), ("new", new))
        await verifier.verify(sign(new, "new"))
        assert key_server.requests == 2

        throttled = await make_verifier(key_server, http, min_refresh_seconds=60.0)
        await throttled.verify(sign(old, "old"))
        before = key_server.requests
        for _ in range(10):
            with pytest.raises(InvalidToken, match="unknown key"):
                await throttled.verify(sign(new_key(), "forged"))
        assert key_server.requests == before


async def test_unreachable_key_set_is_keys_unavailable() -> None:
    async with httpx.AsyncClient() as http:
        verifier = JwksVerifier(
            jwks_url="http://127.0.0.1:9/jwks.json", issuer=ISSUER, audience=AUDIENCE, http=http
        )
        with pytest.raises(KeysUnavailable):
            await verifier.verify(sign(new_key(), "k1"))


async def test_requests_that_find_the_keys_stale_share_one_fetch(key_server: KeyServer) -> None:
    key = new_key()
    key_server.publish(("k1", key))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http, cache_seconds=0.2)
        await verifier.verify(sign(key, "k1"))
        await asyncio.sleep(0.3)
        await asyncio.gather(*(verifier.verify(sign(key, "k1")) for _ in range(20)))
    assert key_server.requests == 2


async def test_requests_waiting_on_a_silent_key_set_fail_together_after_one_fetch(
    key_server: KeyServer,
) -> None:
    key = new_key()
    key_server.publish(("k1", key))
    key_server.silent.set()
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http)
        outcomes = await asyncio.gather(
            *(verifier.verify(sign(key, "k1")) for _ in range(4)), return_exceptions=True
        )
        assert [type(outcome) for outcome in outcomes] == [KeysUnavailable] * 4
        assert key_server.requests == 1
        key_server.silent.clear()
        assert (await verifier.verify(sign(key, "k1"))).email == "a@example.com"


async def test_verified_claims_are_remembered_briefly_and_never_past_exp(key_server: KeyServer) -> None:
    key = new_key()
    key_server.publish(("k1", key))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http, claims_cache_seconds=60.0)
        short_lived = sign(key, "k1", exp=int(time.time()) + 5)  # time for the first verify's key fetch
        first = await verifier.verify(short_lived)
        assert await verifier.verify(short_lived) is first
        header, payload, _ = short_lived.split(".")
        with pytest.raises(InvalidToken):
            await verifier.verify(f"{header}.{payload}.{sign(new_key(), 'k1').split('.')[2]}")
        await asyncio.sleep(max(0.0, first.exp - time.time()) + 0.1)
        with pytest.raises(InvalidToken, match="expired"):
            await verifier.verify(short_lived)


async def test_a_key_set_refetch_forgets_remembered_claims(key_server: KeyServer) -> None:
    old, new = new_key(), new_key()
    key_server.publish(("old", old))
    async with httpx.AsyncClient() as http:
        verifier = await make_verifier(key_server, http, min_refresh_seconds=0.0, claims_cache_seconds=60.0)
        token = sign(old, "old")
        await verifier.verify(token)
        key_server.publish(("new", new))
        await verifier.verify(sign(new, "new"))
        with pytest.raises(InvalidToken, match="unknown key"):
            await verifier.verify(token)
