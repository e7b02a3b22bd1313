"""The broker's OAuth 2.0 authorization server over real processes: a participant registers its public
keys in the registry, gets an access token with shared.authclient (private_key_jwt), and a service's
TokenVerifier (shared.auth) accepts it with keys fetched over NATS (``registry.oauth.jwks``), then
refuses it once revoked (``registry.events.oauth_token_revoked``) or once its participant is suspended.
The verifier connects to NATS as the consent service's own user, so shared/natsauth.py must allow it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from shared import auth, subjects
from shared.authclient import TokenError, TokenSource, dev_credentials, generate_keypair
from shared.bus import Bus
from shared.demo import client_as
from shared.launcher import Stack
from shared.settings import Settings

pytestmark = pytest.mark.e2e


async def consent_bus(stack: Stack) -> Bus:
    """A NATS connection as the consent service's own user (shared/natsauth.py permissions apply)."""
    assert stack.nats_server_url and stack.nats_passwords
    parts = urlsplit(stack.nats_server_url)
    return await Bus.connect(f"{parts.scheme}://consent:{stack.nats_passwords['consent']}@{parts.hostname}:{parts.port}", "consent")


def register(http: httpx.Client, registry: str, jwks: dict[str, Any]) -> str:
    pid = f"oauth-{uuid.uuid4().hex[:8]}"
    r = http.put(f"{registry}/participants/{pid}", json={
        "name": "A personal cloud", "roles": ["recipient"], "import_base_url": "http://127.0.0.1:9/import",
        "allow_private_network": True, "jwks": jwks})
    assert r.status_code == 201, r.text
    return pid


async def refused(verifier: auth.TokenVerifier, token: str, why: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await verifier.verify(token)
        except auth.InvalidToken as exc:
            assert why in exc.detail
            return
        assert time.monotonic() < deadline, f"the verifier still accepts the token ({why})"
        await asyncio.sleep(0.05)


async def test_a_token_is_verified_with_keys_from_nats_and_dropped_when_revoked_or_suspended(stack: Stack) -> None:
    registry = stack.url("registry")
    private, public = generate_keypair()
    bus = await consent_bus(stack)
    verifier = auth.TokenVerifier.from_settings(Settings())
    with httpx.Client(timeout=30) as http, client_as(stack, "admin") as admin:
        pid = register(admin, registry, public)  # registry changes need the admin scope
        source = TokenSource(pid, private, f"{registry}/oauth/token", http=http)
        token = source.token()
        try:
            # the request/reply subject the consent and transfer services use
            material = await bus.request(subjects.REGISTRY_OAUTH_JWKS, {})
            assert material["issuer"] == Settings().oauth_issuer and material["keys"] and material["revoked"] == []
            assert all("d" not in k for k in material["keys"])
            await verifier.start(bus)
            assert verifier.ready
            caller = await verifier.verify(token)
            assert (caller.client_id, caller.participant_id, caller.scopes) == (pid, pid, frozenset({"recipient"}))
            assert source.introspect(token)["active"] is True

            # RFC 7009: revoked at the registry, the event reaches the running verifier
            source.revoke(token)
            await refused(verifier, token, "revoked")
            assert source.introspect(token) == {"active": False}
            # and a verifier started afterwards learns it from registry.oauth.jwks
            late = auth.TokenVerifier.from_settings(Settings())
            await late.start(bus)
            with pytest.raises(auth.InvalidToken, match="revoked"):
                await late.verify(token)
            await late.stop()

            # a participant suspended: its tokens already issued stop working, and it gets no new one
            second = source.token()
            assert second != token and (await verifier.verify(second)).client_id == pid
            r = admin.post(f"{registry}/participants/{pid}/status", json={"status": "suspended", "reason": "test"})
            assert r.status_code == 200
            await refused(verifier, second, "no longer active")
            source.invalidate()
            with pytest.raises(TokenError) as exc:
                source.token()
            assert exc.value.error == "invalid_client" and exc.value.status == 400
        finally:
            await verifier.stop()
            await bus.close()


def test_the_dev_regulator_gets_a_regulator_token_from_the_running_registry(stack: Stack) -> None:
    with httpx.Client(timeout=30) as http:
        source = dev_credentials("regulator", stack.url("registry")).source(http=http)
        token = source.token()
        assert source.current and source.current["scope"] == "regulator"
        info = source.introspect(token)
        assert info["active"] is True and info["client_id"] == "dev-regulator" and info["scope"] == "regulator"
        meta = http.get(f"{stack.url('registry')}/.well-known/oauth-authorization-server").json()
        assert meta["token_endpoint"] == f"{stack.url('registry')}/oauth/token"
