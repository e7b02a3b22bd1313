"""The broker as an OAuth client of holders: what it refuses in a holder's metadata and callbacks
(the OAuth mix-up and SSRF findings of the adversarial review)."""

from __future__ import annotations

import pytest

from services.consent import holder_oauth
from services.consent.holder_oauth import HolderAuthError
from shared import auth
from shared.errors import Unavailable, Unprocessable
from shared.settings import Settings

URL = "https://holder.example/.well-known/oauth-authorization-server"
GOOD = {"issuer": "https://holder.example", "authorization_endpoint": "https://holder.example/oauth/authorize",
        "token_endpoint": "https://holder.example/oauth/token", "revocation_endpoint": "https://holder.example/oauth/revoke"}


async def test_metadata_whose_issuer_is_not_the_metadata_url_is_refused() -> None:
    await holder_oauth._check_endpoints({"id": "h"}, GOOD, URL, development=False)
    with pytest.raises(Unavailable, match="RFC 8414"):
        await holder_oauth._check_endpoints({"id": "h"}, GOOD | {"issuer": "https://other.example"}, URL, development=False)


@pytest.mark.parametrize("field", ["authorization_endpoint", "token_endpoint", "revocation_endpoint"])
@pytest.mark.parametrize("url", ["http://holder.example/x", "https://127.0.0.1/x", "https://10.0.0.8/x", "https://user:pw@holder.example/x"])
async def test_metadata_endpoints_pass_the_ssrf_guard(field: str, url: str) -> None:
    with pytest.raises(Unavailable, match="refused"):
        await holder_oauth._check_endpoints({"id": "h"}, GOOD | {field: url}, URL, development=False)


async def test_a_holder_allowed_on_the_private_network_may_use_loopback_in_development() -> None:
    local = {k: v.replace("https://holder.example", "http://127.0.0.1:8201") for k, v in GOOD.items()}
    await holder_oauth._check_endpoints({"id": "h", "allow_private_network": True}, local,
                                        "http://127.0.0.1:8201/.well-known/oauth-authorization-server", development=True)


def test_rfc9207_iss_must_be_the_holders_issuer_when_it_sends_one() -> None:
    holder_oauth.check_issuer_parameter(GOOD, None)  # a server that does not send iss
    holder_oauth.check_issuer_parameter(GOOD, "https://holder.example")
    with pytest.raises(HolderAuthError):
        holder_oauth.check_issuer_parameter(GOOD, "https://evil.example")
    with pytest.raises(HolderAuthError):
        holder_oauth.check_issuer_parameter(GOOD | {"authorization_response_iss_parameter_supported": True}, None)


def test_outside_development_every_holder_needs_its_own_client_credentials() -> None:
    dev = Settings()
    assert holder_oauth.client_credentials(dev, "any-holder") == (dev.holder_client_id, dev.holder_client_secret)
    prod = dev.model_copy(update={"environment": "production", "holder_clients": {"h1": {"client_id": "b", "client_secret": "s"}}})
    assert holder_oauth.client_credentials(prod, "h1") == ("b", "s")
    with pytest.raises(Unprocessable, match="no client credentials"):
        holder_oauth.client_credentials(prod, "h2")


def test_a_verifier_started_after_a_suspension_learns_it_from_the_key_material() -> None:
    v = auth.TokenVerifier(issuer="https://i.example", audience="https://i.example")
    v.apply({"issuer": "https://i.example", "keys": [], "revoked": [], "inactive": ["suspended-cloud"]})
    assert "suspended-cloud" in v._blocked
    v.apply({"issuer": "https://i.example", "keys": [], "revoked": [], "inactive": []})
    assert "suspended-cloud" not in v._blocked
