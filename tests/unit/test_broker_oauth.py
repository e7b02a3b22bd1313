"""The broker's OAuth 2.0 authorization server (services/registry/oauth.py), in process.

The registry app runs over httpx's ASGI transport on a real SQLite file database brought to its
latest migration (or a fresh PostgreSQL schema with DATABASE_URL); no NATS. Clients use
shared.authclient; tokens are checked with shared.auth. Error answers follow RFC 6749 section 5.2.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from fastapi import Depends, FastAPI
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey
from sqlalchemy import select, text

from services.registry import models, oauth
from services.registry.app import create_app
from shared import auth, authclient, envelope, migrations
from shared.authclient import (DEV_ADMIN_CLIENT_ID, DEV_ADMIN_KEY, DEV_REGULATOR_CLIENT_ID, DEV_REGULATOR_KEY, AsyncTokenSource,
                               BearerAuth, TokenError, generate_keypair, load_private_key)
from shared.errors import Unavailable
from shared.http import install_problem_handlers
from shared.runtime import Runtime
from shared.settings import DEV_OAUTH_ISSUER, Settings

BASE = "http://127.0.0.1:8101"
TOKEN_URL = f"{BASE}/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, Runtime, httpx.AsyncClient]]:
    """The registry app (no lifespan: no NATS) on a migrated database, and an HTTP client to it."""
    settings = Settings(database_url=os.environ.get("DATABASE_URL") or None, data_dir=tmp_path,
                        db_schema_prefix=f"o{uuid.uuid4().hex[:8]}_", environment="development", oauth_clients=None,
                        oauth_signing_key=None, oauth_issuer=DEV_OAUTH_ISSUER, oauth_audience=None, oauth_token_ttl_s=300)
    app = create_app(settings)
    rt: Runtime = app.state.runtime
    await migrations.upgrade(rt.db, "registry")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield app, rt, client
    if rt.db.schema:
        async with rt.db.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{rt.db.schema}" CASCADE'))
    await rt.db.dispose()


async def register(client: httpx.AsyncClient, pid: str, roles: list[str], *, jwks: dict[str, Any] | None = None,
                   jwks_uri: str | None = None) -> None:
    body: dict[str, Any] = {"name": pid, "roles": roles, "allow_private_network": True, "jwks": jwks, "jwks_uri": jwks_uri}
    if "holder" in roles:
        body["export_base_url"] = "http://127.0.0.1:9/export"
    if "recipient" in roles:
        body["import_base_url"] = "http://127.0.0.1:9/import"
    r = await client.put(f"/participants/{pid}", json=body, headers=await admin_headers(client))
    assert r.status_code in (200, 201), r.text


async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """Registry changes need the admin scope."""
    source = AsyncTokenSource(DEV_ADMIN_CLIENT_ID, DEV_ADMIN_KEY, TOKEN_URL, scope="admin", http=client)
    return {"Authorization": f"Bearer {await source.token()}"}


async def participant(client: httpx.AsyncClient, roles: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    pid = f"p-{uuid.uuid4().hex[:8]}"
    private, public = generate_keypair()
    await register(client, pid, roles or ["recipient"], jwks=public)
    return pid, private


def assertion(key: Any, client_id: str, *, aud: str = TOKEN_URL, exp_in: int = 60, iss: str | None = None, alg: str | None = None,
              jti: str | None = None, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A client assertion (RFC 7523 section 3) with the given defects."""
    k = load_private_key(key) if not isinstance(key, OctKey) else key
    now = int(time.time())
    body = {"iss": iss or client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + exp_in, "jti": jti or uuid.uuid4().hex, **claims}
    alg = alg or ("HS256" if isinstance(k, OctKey) else authclient.signing_alg(k))
    return jwt.encode({"alg": alg, "kid": str(k.kid), **(header or {})}, body, k, algorithms=[alg])


async def ask_token(client: httpx.AsyncClient, signed: str | None, **form: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", **form}
    if signed is not None:
        data |= {"client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}
    return await client.post("/oauth/token", data=data)


def error_of(r: httpx.Response) -> str:
    assert r.headers["cache-control"] == "no-store", r.headers
    return str(r.json()["error"])


async def verifier_for(client: httpx.AsyncClient) -> auth.TokenVerifier:
    jwks = (await client.get("/oauth/jwks")).json()
    return auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER, jwks=jwks)


# ---- token issuance -------------------------------------------------------------------------------------------


async def test_a_good_assertion_gets_an_rfc9068_access_token(registry: Any) -> None:
    _, _, client = registry
    pid, key = await participant(client, ["holder", "recipient"])
    r = await ask_token(client, assertion(key, pid))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["scope"] == "holder recipient"
    assert "refresh_token" not in body  # RFC 6749 section 4.4.3
    token = body["access_token"]
    decoded = jwt.decode(token, ECKey.import_key(authclient.public_jwks(authclient.DEV_SIGNING_KEY)["keys"][0]), algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt" and decoded.header["kid"] == authclient.DEV_SIGNING_KEY["kid"]
    c = decoded.claims
    assert (c["iss"], c["sub"], c["client_id"], c["aud"], c["scope"]) == (DEV_OAUTH_ISSUER, pid, pid, DEV_OAUTH_ISSUER, "holder recipient")
    assert c["exp"] - c["iat"] == 300 and abs(c["iat"] - time.time()) < 5 and len(c["jti"]) >= 16
    caller = (await verifier_for(client)).verify_now(token)
    assert caller == auth.Caller(pid, frozenset({"holder", "recipient"}), frozenset({"holder", "recipient"}), pid, c["jti"], c["exp"])


async def test_the_client_library_gets_and_caches_a_token_and_asks_for_part_of_its_scopes(registry: Any) -> None:
    _, _, client = registry
    pid, key = await participant(client, ["holder", "recipient"])
    source = AsyncTokenSource(pid, key, TOKEN_URL, scope="holder", http=client)
    first = await source.token()
    assert await source.token() == first  # cached
    assert (await verifier_for(client)).verify_now(first).scopes == {"holder"}
    # concurrent callers with an expired cache make one token request (STACK_PITFALLS A1)
    source.invalidate()
    tokens = []
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(lambda: _append(tokens, source))
    assert len(set(tokens)) == 1 and tokens[0] != first


async def _append(out: list[str], source: AsyncTokenSource) -> None:
    out.append(await source.token())


async def test_dev_admin_and_regulator_get_their_scopes_only(registry: Any) -> None:
    _, _, client = registry
    r = await ask_token(client, assertion(DEV_ADMIN_KEY, DEV_ADMIN_CLIENT_ID))
    assert r.status_code == 200 and r.json()["scope"] == "admin"
    caller = (await verifier_for(client)).verify_now(r.json()["access_token"])
    assert caller.participant_id is None and caller.roles == {"admin"}
    r = await ask_token(client, assertion(DEV_REGULATOR_KEY, DEV_REGULATOR_CLIENT_ID), scope="regulator")
    assert r.status_code == 200 and r.json()["scope"] == "regulator"
    r = await ask_token(client, assertion(DEV_REGULATOR_KEY, DEV_REGULATOR_CLIENT_ID), scope="admin")
    assert r.status_code == 400 and error_of(r) == "invalid_scope"


@pytest.mark.parametrize(("roles", "scope"), [(["recipient"], "holder"), (["holder"], "holder recipient"), (["holder"], "admin"),
                                               (["holder"], "regulator"), (["holder"], "no-such-scope")])
async def test_a_scope_outside_the_roles_is_invalid_scope(registry: Any, roles: list[str], scope: str) -> None:
    _, _, client = registry
    pid, key = await participant(client, roles)
    r = await ask_token(client, assertion(key, pid), scope=scope)
    assert r.status_code == 400 and error_of(r) == "invalid_scope", r.text


def _other_key_same_kid(key: dict[str, Any]) -> dict[str, Any]:
    other, _ = generate_keypair()
    return other | {"kid": key["kid"]}


@pytest.mark.parametrize("defect", ["bad signature", "wrong aud", "expired", "not yet valid", "iss is not sub", "lives too long",
                                    "alg none", "hmac with a public key", "unknown kid", "no jti", "client_id differs",
                                    "deprecated EdDSA", "garbage"])
async def test_a_bad_assertion_is_invalid_client(registry: Any, defect: str) -> None:
    _, _, client = registry
    pid, key = await participant(client)
    extra: dict[str, str] = {}
    if defect == "bad signature":
        signed = assertion(_other_key_same_kid(key), pid)
    elif defect == "wrong aud":
        signed = assertion(key, pid, aud="https://elsewhere.example/oauth/token")
    elif defect == "expired":
        signed = assertion(key, pid, exp_in=-120)
    elif defect == "not yet valid":
        signed = assertion(key, pid, nbf=int(time.time()) + 600, exp_in=200)
    elif defect == "iss is not sub":
        signed = assertion(key, pid, iss="someone-else")
    elif defect == "lives too long":
        signed = assertion(key, pid, exp_in=3600)
    elif defect == "alg none":
        good = assertion(key, pid).split(".")
        import base64

        head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": key["kid"]}).encode()).rstrip(b"=").decode()
        signed = f"{head}.{good[1]}."
    elif defect == "hmac with a public key":
        # the classic confusion: HS256 keyed with the client's public key material
        secret = OctKey.import_key(json.dumps(authclient.public_jwks(key)["keys"][0]).encode(), parameters={"kid": key["kid"]})
        signed = assertion(secret, pid, alg="HS256")
    elif defect == "unknown kid":
        signed = assertion(_other_key_same_kid(key) | {"kid": "nobody"}, pid)
    elif defect == "no jti":
        k = load_private_key(key)
        now = int(time.time())
        signed = jwt.encode({"alg": "ES256", "kid": k.kid}, {"iss": pid, "sub": pid, "aud": TOKEN_URL, "iat": now, "exp": now + 60}, k,
                            algorithms=["ES256"])
    elif defect == "client_id differs":
        signed, extra = assertion(key, pid), {"client_id": "another"}
    elif defect == "deprecated EdDSA":
        okp, public = generate_keypair("Ed25519")
        await register(client, pid, ["recipient"], jwks=public)
        k = load_private_key(okp)
        now = int(time.time())
        signed = jwt.encode({"alg": "Ed25519", "kid": k.kid}, {"iss": pid, "sub": pid, "aud": TOKEN_URL, "exp": now + 60, "jti": "x"}, k,
                            algorithms=["Ed25519"])
        signed = signed.replace(signed.split(".")[0], _b64({"alg": "EdDSA", "kid": k.kid}), 1)
    else:
        signed = "not.a.jwt"
    r = await ask_token(client, signed, **extra)
    assert r.status_code == 400 and error_of(r) == "invalid_client", r.text
    assert "access_token" not in r.json()
    assert WHY[defect] in r.json()["error_description"]


WHY = {"bad signature": "bad_signature", "wrong aud": "'aud'", "expired": "expired", "not yet valid": "not yet valid",
       "iss is not sub": "Issuer and Subject", "lives too long": "expire within", "alg none": "signed with one of",
       "hmac with a public key": "signed with one of", "unknown kid": "No key for kid", "no jti": "Missing JWT ID",
       "client_id differs": "client_id does not match", "deprecated EdDSA": "signed with one of", "garbage": "Invalid JWT"}


def _b64(obj: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_an_ed25519_client_key_works(registry: Any) -> None:
    _, _, client = registry
    pid = f"p-{uuid.uuid4().hex[:8]}"
    private, public = generate_keypair("Ed25519")
    await register(client, pid, ["holder"], jwks=public)
    assert await AsyncTokenSource(pid, private, TOKEN_URL, http=client).token()


async def test_a_replayed_assertion_is_refused_even_concurrently(registry: Any, ) -> None:
    _, rt, client = registry
    pid, key = await participant(client)
    signed = assertion(key, pid)
    assert (await ask_token(client, signed)).status_code == 200
    r = await ask_token(client, signed)
    assert r.status_code == 400 and error_of(r) == "invalid_client" and "used" in r.json()["error_description"]
    # the same fresh assertion sent 8 times at once: exactly one token
    signed = assertion(key, pid)
    answers: list[int] = []

    async def send() -> None:
        answers.append((await ask_token(client, signed)).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(send)
    assert sorted(answers) == [200] + [400] * 7
    # the used ids are stored until the assertions expire (plus leeway)
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(models.oauth_used_jti).where(models.oauth_used_jti.c.client_id == pid))).all()
    assert len(rows) == 2


async def test_unknown_client_no_assertion_and_malformed_requests(registry: Any) -> None:
    _, _, client = registry
    _, key = await participant(client)
    r = await ask_token(client, assertion(key, "nobody-registered"))
    assert r.status_code == 400 and error_of(r) == "invalid_client"
    r = await ask_token(client, None)  # no client authentication at all: no fallback to "none"
    assert r.status_code == 400 and error_of(r) == "invalid_client"
    r = await ask_token(client, None, client_id="dev-admin")
    assert r.status_code == 400 and error_of(r) == "invalid_client"
    r = await client.post("/oauth/token", data={"grant_type": "password", "username": "a", "password": "b"})
    assert r.status_code == 400 and error_of(r) == "unsupported_grant_type"
    r = await client.post("/oauth/token", data={"scope": "holder"})
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    r = await client.post("/oauth/token", content="grant_type=client_credentials&grant_type=client_credentials",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    r = await client.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert r.status_code == 400 and error_of(r) == "invalid_request"


async def test_a_suspended_participant_gets_no_token(registry: Any) -> None:
    _, _, client = registry
    pid, key = await participant(client)
    r = await client.post(f"/participants/{pid}/status", json={"status": "suspended", "reason": "audit"}, headers=await admin_headers(client))
    assert r.status_code == 200
    r = await ask_token(client, assertion(key, pid))
    assert r.status_code == 400 and error_of(r) == "invalid_client" and "suspended" in r.json()["error_description"]
    await client.post(f"/participants/{pid}/status", json={"status": "active", "reason": "audit done"}, headers=await admin_headers(client))
    assert (await ask_token(client, assertion(key, pid))).status_code == 200


async def test_a_participant_without_keys_gets_no_token(registry: Any) -> None:
    _, _, client = registry
    pid = f"p-{uuid.uuid4().hex[:8]}"
    await register(client, pid, ["recipient"])
    key, _ = generate_keypair()
    r = await ask_token(client, assertion(key, pid))
    assert r.status_code == 400 and error_of(r) == "invalid_client"


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A participant's jwks_uri: a local HTTP server answering the JWK Set in ``state["jwks"]``, counting hits."""
    state: dict[str, Any] = {"jwks": {"keys": []}, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["hits"] += 1
            body = json.dumps(state["jwks"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", state
    finally:
        server.shutdown()
        server.server_close()


async def test_keys_from_a_jwks_uri_are_cached_and_refetched_for_a_new_kid(registry: Any, jwks_server: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, client = registry
    uri, state = jwks_server
    pid = f"p-{uuid.uuid4().hex[:8]}"
    key1, public1 = generate_keypair(kid="k1")
    state["jwks"] = public1
    await register(client, pid, ["recipient"], jwks_uri=uri)
    assert (await ask_token(client, assertion(key1, pid))).status_code == 200
    assert (await ask_token(client, assertion(key1, pid))).status_code == 200
    assert state["hits"] == 1  # cached
    # the participant rotates to a new key: an unknown kid refetches (once the minimum interval has passed)
    key2, public2 = generate_keypair(kid="k2")
    state["jwks"] = {"keys": public1["keys"] + public2["keys"]}
    monkeypatch.setattr(oauth, "JWKS_MIN_REFETCH_S", 0.0)
    assert (await ask_token(client, assertion(key2, pid))).status_code == 200
    assert state["hits"] == 2


# ---- introspection, revocation, metadata ------------------------------------------------------------------------


async def introspect(client: httpx.AsyncClient, key: Any, client_id: str, token: str) -> dict[str, Any]:
    r = await client.post("/oauth/introspect", data={"token": token, "client_assertion_type": ASSERTION_TYPE,
                                                     "client_assertion": assertion(key, client_id)})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def revoke(client: httpx.AsyncClient, key: Any, client_id: str, token: str) -> httpx.Response:
    return await client.post("/oauth/revoke", data={"token": token, "token_type_hint": "access_token",
                                                    "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion(key, client_id)})


async def test_introspection_answers_the_owner_and_admins_and_inactive_otherwise(registry: Any) -> None:
    _, _, client = registry
    pid, key = await participant(client)
    other, other_key = await participant(client)
    token = (await ask_token(client, assertion(key, pid))).json()["access_token"]
    info = await introspect(client, key, pid, token)
    assert info["active"] is True and info["client_id"] == pid and info["scope"] == "recipient" and info["token_type"] == "Bearer"
    assert info["iss"] == DEV_OAUTH_ISSUER and info["exp"] - info["iat"] == 300 and info["sub"] == pid
    assert (await introspect(client, DEV_ADMIN_KEY, DEV_ADMIN_CLIENT_ID, token))["active"] is True
    assert await introspect(client, other_key, other, token) == {"active": False}
    assert await introspect(client, key, pid, "garbage") == {"active": False}
    # a well-signed token that has expired
    signer = load_private_key(authclient.DEV_SIGNING_KEY)
    now = int(time.time())
    old = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": signer.kid},
                     {"iss": DEV_OAUTH_ISSUER, "sub": pid, "client_id": pid, "aud": DEV_OAUTH_ISSUER, "iat": now - 900, "exp": now - 600,
                      "jti": "old", "scope": "recipient"}, signer, algorithms=["ES256"])
    assert await introspect(client, key, pid, old) == {"active": False}
    # the caller authenticates too
    r = await client.post("/oauth/introspect", data={"token": token})
    assert r.status_code == 400 and error_of(r) == "invalid_client"


async def test_revocation_by_the_owner_is_stored_published_and_honoured(registry: Any) -> None:
    _, rt, client = registry
    pid, key = await participant(client)
    token = (await ask_token(client, assertion(key, pid))).json()["access_token"]
    verifier = await verifier_for(client)
    caller = verifier.verify_now(token)
    r = await revoke(client, key, pid, token)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert await introspect(client, key, pid, token) == {"active": False}
    assert (await revoke(client, key, pid, token)).status_code == 200  # again: nothing more happens
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(models.oauth_revoked_tokens))).all()
        events = (await s.execute(select(models.outbox).where(models.outbox.c.subject == auth.TOKEN_REVOKED))).all()
    assert [(r.jti, r.client_id, r.revoked_by) for r in rows] == [(caller.jti, pid, pid)]
    assert len(events) == 1
    data = envelope.decode(events[0].envelope.encode())["data"]
    assert data["jti"] == caller.jti and data["exp"] == caller.expires_at and data["client_id"] == pid
    # what registry.oauth.jwks answers: a verifier fed with it refuses the token
    material = await oauth.authority_for(rt).verification_material()
    assert material["revoked"] == [{"jti": caller.jti, "exp": caller.expires_at}] and material["issuer"] == DEV_OAUTH_ISSUER
    assert all("d" not in k for k in material["keys"])
    fresh = auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER)
    fresh.apply(material)
    with pytest.raises(auth.InvalidToken, match="revoked"):
        fresh.verify_now(token)


async def test_only_the_owner_or_an_admin_may_revoke_and_unknown_tokens_are_fine(registry: Any) -> None:
    _, _, client = registry
    pid, key = await participant(client)
    other, other_key = await participant(client)
    token = (await ask_token(client, assertion(key, pid))).json()["access_token"]
    r = await revoke(client, other_key, other, token)
    assert r.status_code == 400 and error_of(r) == "invalid_grant"
    assert (await introspect(client, key, pid, token))["active"] is True
    assert (await revoke(client, other_key, other, "not-a-token")).status_code == 200  # RFC 7009 section 2.2
    assert (await revoke(client, DEV_ADMIN_KEY, DEV_ADMIN_CLIENT_ID, token)).status_code == 200
    assert (await introspect(client, key, pid, token))["active"] is False
    r = await client.post("/oauth/revoke", data={"token": token})
    assert r.status_code == 400 and error_of(r) == "invalid_client"


async def test_metadata_and_jwks(registry: Any) -> None:
    _, _, client = registry
    meta = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == DEV_OAUTH_ISSUER
    assert meta["token_endpoint"] == TOKEN_URL and meta["jwks_uri"] == f"{BASE}/oauth/jwks"
    assert meta["introspection_endpoint"] == f"{BASE}/oauth/introspect" and meta["revocation_endpoint"] == f"{BASE}/oauth/revoke"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert meta["scopes_supported"] == ["holder", "recipient", "regulator", "admin"]
    assert "none" not in meta["token_endpoint_auth_signing_alg_values_supported"]
    # every RFC 8414 rule authlib checks, but response_types_supported (REQUIRED, empty: there is no authorization endpoint)
    checked = AuthorizationServerMetadata(meta)
    for name in checked.REGISTRY_KEYS:
        if name != "response_types_supported":
            getattr(checked, f"validate_{name}")()
    assert meta["response_types_supported"] == []
    keys = (await client.get("/oauth/jwks")).json()["keys"]
    assert keys == authclient.public_jwks(authclient.DEV_SIGNING_KEY)["keys"] and all("d" not in k for k in keys)
    # the issuer's own token URL is an accepted audience too (RFC 7523bis), the request's one in development
    pid, key = await participant(client)
    assert (await ask_token(client, assertion(key, pid, aud=DEV_OAUTH_ISSUER))).status_code == 200
    assert (await ask_token(client, assertion(key, pid, aud=f"{DEV_OAUTH_ISSUER}/oauth/token"))).status_code == 200


# ---- the resource-server side (shared.auth) ---------------------------------------------------------------------


def protected_app(verifier: auth.TokenVerifier) -> FastAPI:
    app = FastAPI()
    app.state.token_verifier = verifier
    install_problem_handlers(app)
    auth.install_bearer_errors(app)

    @app.get("/log")
    async def read_log(caller: auth.Caller = Depends(auth.requires("regulator", "admin"))) -> dict[str, Any]:
        return {"client_id": caller.client_id}

    @app.get("/mine")
    async def mine(caller: auth.Caller = Depends(auth.requires())) -> dict[str, Any]:
        return {"participant_id": caller.participant_id}

    return app


async def test_requires_gives_rfc6750_errors_and_the_caller(registry: Any) -> None:
    _, _, client = registry
    verifier = await verifier_for(client)
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=protected_app(verifier)), base_url="http://api")
    async with api:
        r = await api.get("/log")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == 'Bearer realm="portability-broker"'  # RFC 6750 section 3.1: no error code
        r = await api.get("/log", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        assert r.json()["status"] == 401 and r.json()["code"] == "invalid_token"
        pid, key = await participant(client)
        source = AsyncTokenSource(pid, key, TOKEN_URL, http=client)
        r = await api.get("/log", auth=BearerAuth(source))
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"] and 'scope="regulator admin"' in r.headers["www-authenticate"]
        assert (await api.get("/mine", auth=BearerAuth(source))).json() == {"participant_id": pid}
        regulator = AsyncTokenSource(DEV_REGULATOR_CLIENT_ID, DEV_REGULATOR_KEY, TOKEN_URL, http=client)
        assert (await api.get("/log", auth=BearerAuth(regulator))).json() == {"client_id": DEV_REGULATOR_CLIENT_ID}
        # a revoked token: BearerAuth gets a new one and retries once
        old = await source.token()
        verifier.revoke(verifier.verify_now(old).jti, time.time() + 300)
        r = await api.get("/mine", auth=BearerAuth(source))
        assert r.status_code == 200 and await source.token() != old


def _token(claims: dict[str, Any], *, header: dict[str, Any] | None = None, key: Any = None,
           from_now: dict[str, int] | None = None) -> str:
    """A signed access token; ``from_now``: time claims as seconds from the moment it is made (not from test collection)."""
    k = load_private_key(key or authclient.DEV_SIGNING_KEY)
    alg = authclient.signing_alg(k)
    now = int(time.time())
    body = {"iss": DEV_OAUTH_ISSUER, "sub": "c", "client_id": "c", "aud": DEV_OAUTH_ISSUER, "iat": now, "exp": now + 60, "jti": "j",
            "scope": "holder", "roles": ["holder"]} | claims | {name: now + offset for name, offset in (from_now or {}).items()}
    return jwt.encode({"alg": alg, "typ": "at+jwt", "kid": k.kid} | (header or {}), {k2: v for k2, v in body.items() if v is not None},
                      k, algorithms=[alg])


@pytest.mark.parametrize(("claims", "header", "match"), [
    ({}, {"typ": "JWT"}, "typ at\\+jwt"),
    ({"aud": "another-api"}, None, "not valid"),
    ({"iss": "https://evil.example"}, None, "not valid"),
    ({"from_now": {"exp": -120}}, None, "not valid"),
    ({"from_now": {"iat": 600, "exp": 900}}, None, "not valid"),
    ({"jti": None}, None, "not valid"),
    ({"client_id": None}, None, "client_id"),
])
def test_the_verifier_refuses_what_rfc9068_section4_refuses(claims: dict[str, Any], header: dict[str, Any] | None, match: str) -> None:
    v = auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER, jwks=authclient.public_jwks(authclient.DEV_SIGNING_KEY))
    assert v.verify_now(_token({})).client_id == "c"
    claims = dict(claims)
    from_now = claims.pop("from_now", None)  # times taken when the test runs: collection may be many minutes earlier
    with pytest.raises(auth.InvalidToken, match=match):
        v.verify_now(_token(claims, header=header, from_now=from_now))


def test_the_verifier_refuses_other_keys_and_blocked_clients() -> None:
    v = auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER, jwks=authclient.public_jwks(authclient.DEV_SIGNING_KEY))
    other, _ = generate_keypair()
    with pytest.raises(auth.InvalidToken):
        v.verify_now(_token({}, key=other | {"kid": authclient.DEV_SIGNING_KEY["kid"]}))
    with pytest.raises(auth.InvalidToken):
        v.verify_now(_token({}, key=other))
    v.block_client("c")
    with pytest.raises(auth.InvalidToken, match="no longer active"):
        v.verify_now(_token({}))
    v.unblock_client("c")
    assert v.verify_now(_token({})).scopes == {"holder"}
    with pytest.raises(ValueError, match="public"):
        v.set_keys({"keys": [authclient.DEV_SIGNING_KEY]})
    with pytest.raises(ValueError, match="unknown scope"):
        auth.requires("superuser")


async def test_the_verifier_fetches_keys_when_it_has_none_or_meets_a_new_kid() -> None:
    calls: list[int] = []
    material: dict[str, Any] = {"issuer": DEV_OAUTH_ISSUER, "keys": authclient.public_jwks(authclient.DEV_SIGNING_KEY)["keys"], "revoked": []}

    async def fetch() -> dict[str, Any]:
        calls.append(1)
        return material

    v = auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER, fetch=fetch, min_refetch_s=0)
    assert (await v.verify(_token({}))).client_id == "c" and len(calls) == 1
    rotated, public = generate_keypair()
    material = dict(material, keys=material["keys"] + public["keys"], revoked=[{"jti": "gone", "exp": time.time() + 60}])
    assert (await v.verify(_token({}, key=rotated))).client_id == "c" and len(calls) == 2
    with pytest.raises(auth.InvalidToken, match="revoked"):
        await v.verify(_token({"jti": "gone"}))

    async def down() -> dict[str, Any]:
        raise Unavailable("no service answers registry.oauth.jwks")

    with pytest.raises(Unavailable):
        await auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER, fetch=down).verify(_token({}))


async def test_the_verifier_follows_revocation_and_status_events() -> None:
    v = auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience=DEV_OAUTH_ISSUER, jwks=authclient.public_jwks(authclient.DEV_SIGNING_KEY))

    class Msg:
        def __init__(self, subject: str, data: dict[str, Any]) -> None:
            self.data = envelope.encode(envelope.make(subject, data))

    await v._on_revoked(Msg(auth.TOKEN_REVOKED, {"jti": "j", "client_id": "c", "exp": int(time.time()) + 60}))
    with pytest.raises(auth.InvalidToken, match="revoked"):
        v.verify_now(_token({}))
    await v._on_status(Msg(auth.PARTICIPANT_STATUS_CHANGED, {"participant": {"id": "c2", "status": "suspended"}}))
    with pytest.raises(auth.InvalidToken, match="no longer active"):
        v.verify_now(_token({"client_id": "c2", "sub": "c2", "jti": "k"}))
    await v._on_status(Msg(auth.PARTICIPANT_STATUS_CHANGED, {"participant": {"id": "c2", "status": "active"}}))
    assert v.verify_now(_token({"client_id": "c2", "sub": "c2", "jti": "k"})).client_id == "c2"
    await v._on_revoked(type("M", (), {"data": b"junk"})())  # ignored, logged


# ---- settings and client configuration -------------------------------------------------------------------------


def _production(**values: Any) -> Settings:
    """Production settings checked by the OAuth validator only (the other validators have their own tests)."""
    s = Settings.model_construct(**(Settings().model_dump() | {"environment": "production", "oauth_issuer": "https://broker.example.org",
                                                               "oauth_signing_key": json.dumps(generate_keypair()[0])} | values))
    return s._check_oauth()


def test_production_refuses_development_oauth_settings(tmp_path: Path) -> None:
    assert _production().oauth_issuer == "https://broker.example.org"
    with pytest.raises(ValueError, match="OAUTH_ISSUER must be set"):
        _production(oauth_issuer=DEV_OAUTH_ISSUER)
    with pytest.raises(ValueError, match="https"):
        _production(oauth_issuer="http://broker.example.org")
    with pytest.raises(ValueError, match="OAUTH_SIGNING_KEY must be set"):
        _production(oauth_signing_key=None)
    with pytest.raises(ValueError, match="development key"):
        _production(oauth_signing_key=json.dumps(authclient.DEV_SIGNING_KEY))
    with pytest.raises(ValueError, match="development key"):
        _production(oauth_signing_key=json.dumps({"keys": [generate_keypair()[0], authclient.DEV_SIGNING_KEY]}))
    with pytest.raises(ValueError, match="development key"):
        _production(oauth_clients=json.dumps(authclient.DEV_CLIENTS))
    with pytest.raises(ValueError, match="OAUTH_TOKEN_TTL_S"):
        Settings(oauth_token_ttl_s=5)
    # a process that does not sign may carry an inert stand-in; the registry refuses it when it starts
    standin = _production(oauth_signing_key="an inert stand-in")
    with pytest.raises(ValueError):
        oauth._signing_keys(standin)
    unchecked = Settings.model_construct(**(Settings().model_dump() | {"environment": "production",
                                                                       "oauth_signing_key": json.dumps(authclient.DEV_SIGNING_KEY)}))
    with pytest.raises(ValueError, match="development key"):
        oauth._signing_keys(unchecked)
    # the clients file: the built-in development clients exist only in development
    regulator_key, regulator_jwks = generate_keypair()
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"client_id": "cnil", "role": "regulator", "jwks": regulator_jwks}]))
    assert set(oauth.load_clients(_production(oauth_clients=str(path)))) == {"cnil"}
    assert set(oauth.load_clients(Settings(environment="development", oauth_clients=str(path)))) == {"cnil", "dev-admin", "dev-regulator"}
    path.write_text(json.dumps([{"client_id": "x", "role": "holder", "jwks": regulator_jwks}]))
    with pytest.raises(ValueError, match="regulator or admin"):
        oauth.load_clients(Settings(oauth_clients=str(path)))
    path.write_text(json.dumps([{"client_id": "sneaky", "role": "admin", "jwks": authclient.public_jwks(DEV_ADMIN_KEY)}]))
    with pytest.raises(ValueError, match="development key"):
        oauth.load_clients(_production(oauth_clients=str(path)))
    with pytest.raises(ValueError, match="appears twice"):
        oauth.load_clients(Settings(oauth_clients=json.dumps([{"client_id": "dev-admin", "role": "admin", "jwks": regulator_jwks}])))


async def test_a_configured_regulator_and_an_ed25519_signing_key(tmp_path: Path) -> None:
    regulator_key, regulator_jwks = generate_keypair("Ed25519")
    signing, _ = generate_keypair("Ed25519")
    settings = Settings(data_dir=tmp_path, database_url=None, environment="development", oauth_signing_key=json.dumps(signing),
                        oauth_clients=json.dumps([{"client_id": "cnil", "roles": ["regulator"], "jwks": regulator_jwks}]),
                        oauth_token_ttl_s=60, oauth_audience="portability-broker-api")
    app = create_app(settings)
    rt: Runtime = app.state.runtime
    await migrations.upgrade(rt.db, "registry")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
            source = AsyncTokenSource("cnil", regulator_key, TOKEN_URL, http=client)
            token = await source.token()
            assert source.current and source.current["expires_in"] == 60
            jwks = (await client.get("/oauth/jwks")).json()
            assert jwks["keys"][0]["alg"] == "Ed25519"
            v = auth.TokenVerifier(issuer=DEV_OAUTH_ISSUER, audience="portability-broker-api", jwks=jwks)
            assert v.verify_now(token).scopes == {"regulator"}
            with pytest.raises(TokenError) as exc:
                await AsyncTokenSource("cnil", regulator_key, TOKEN_URL, scope="admin", http=client).token()
            assert exc.value.error == "invalid_scope" and exc.value.status == 400
            await source.revoke()
            assert source.current is None
            assert (await source.introspect(token)) == {"active": False}
    finally:
        await rt.db.dispose()


def test_outside_development_the_endpoints_are_the_issuers_whatever_the_proxy_forwards() -> None:
    """STACK_PITFALLS A5: behind a TLS-terminating proxy the registry sees http://<pod>:8080; the audience a
    client signs is still the public https token URL."""
    from types import SimpleNamespace

    settings = _production(oauth_issuer="https://broker.example.org", oauth_clients=None)
    authority = oauth.Authority(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    urls = authority.urls(SimpleNamespace(base_url="http://10.0.0.5:8080/"))  # type: ignore[arg-type]
    assert urls.token == "https://broker.example.org/oauth/token"
    assert "http://10.0.0.5:8080/oauth/token" not in urls.audiences
    assert authority.metadata(urls)["issuer"] == "https://broker.example.org"
    assert authority.clients == {}  # no development clients outside development


async def test_a_client_key_given_as_pem_rsa_or_ec_works(registry: Any) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    _, _, client = registry
    for raw in (rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1())):
        pem = raw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        pid = f"p-{uuid.uuid4().hex[:8]}"
        await register(client, pid, ["holder"], jwks=authclient.public_jwks(pem))
        source = AsyncTokenSource(pid, pem, TOKEN_URL, http=client)
        assert (await verifier_for(client)).verify_now(await source.token()).client_id == pid


async def test_a_participant_registers_public_keys_only(registry: Any) -> None:
    """The registry publishes a participant's jwks as given: private parts, secrets and weak or unreadable keys are refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, _, client = registry
    private, public = generate_keypair()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.warns(SecurityWarning):  # joserfc says so too
        weak = authclient.public_jwks(small)
    bad = {
        "private part": {"keys": [dict(private)]},
        "symmetric": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
        "unknown kty": {"keys": [{"kty": "XYZ"}]},
        "broken": {"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]},
        "empty": {"keys": []},
        "not a set": {"kty": "EC"},
        "rsa 1024": weak,
        "too many": {"keys": public["keys"] * 11},
    }
    for what, jwks in bad.items():
        body = {"name": "x", "roles": ["recipient"], "import_base_url": "http://127.0.0.1:9/import", "allow_private_network": True, "jwks": jwks}
        r = await client.put(f"/participants/p-{uuid.uuid4().hex[:8]}", json=body, headers=await admin_headers(client))
        assert r.status_code == 400 and r.json()["field"] == "jwks", (what, r.text)
        assert '"d"' not in r.text and "c2VjcmV0" not in r.text
    assert "private" in (await client.put("/participants/p-x", json={**body, "jwks": {"keys": [dict(private)]}},
                                          headers=await admin_headers(client))).json()["detail"]
    await register(client, f"p-{uuid.uuid4().hex[:8]}", ["recipient"], jwks=public)


def test_development_keys_are_refused_at_registration_outside_development() -> None:
    from services.registry.service import _check_jwks
    from shared.errors import Unprocessable

    mine = authclient.public_jwks(authclient.dev_participant_key("acme"))
    _check_jwks(mine, participant_id="acme", development=True)
    with pytest.raises(Unprocessable, match="development key"):
        _check_jwks(mine, participant_id="acme", development=False)
    with pytest.raises(Unprocessable, match="development key"):
        _check_jwks(authclient.public_jwks(DEV_ADMIN_KEY), participant_id="acme", development=False)
    _check_jwks(generate_keypair()[1], participant_id="acme", development=False)
