"""The reference holder's OAuth 2.0 authorization server (examples/holder/oauth.py), in process.

RFC 6749 (code grant, refresh, errors), RFC 7636 (PKCE S256), RFC 7009 (revocation), RFC 8414
(metadata), and what the broker relies on: ``sub`` in the token response, ``GET /grant``, the export
endpoint's 401/403, ``POST /dev/revoke-all``, and the unchanged ``POST /dev/tokens`` with its
unauthenticated refresh.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import FastAPI

from examples.holder.app import create_app, write_sample
from examples.holder.oauth import DEV_CLIENT_ID, DEV_CLIENT_SECRET, OAuthSettings

BASE = "http://127.0.0.1:8201"
CUSTOMER = "00000000000001"  # the generated sample's meter
OTHER = "99999999999999"  # a second customer, given records by /dev/append
DAILY = "enedis.v5.daily_consumption"
LOAD = "enedis.v5.consumption_load_curve"
REDIRECT = "http://127.0.0.1:54321/consents/callback"
BROKER = (DEV_CLIENT_ID, DEV_CLIENT_SECRET)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_sample(tmp_path_factory.mktemp("holder-sample"))


def make_app(sample: list[Path], settings: OAuthSettings | None = None) -> FastAPI:
    return create_app(files=sample, oauth=settings or OAuthSettings())


@pytest.fixture
def app(sample: list[Path]) -> FastAPI:
    return make_app(sample)


def http(app: FastAPI, base_url: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.fixture
async def c(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http(app) as client:
        r = await client.post("/dev/append", json={"customer_id": OTHER, "dataset": DAILY,
                                                  "records": [{"date": "2024-01-01", "value": 1, "unit": "Wh"}]})
        r.raise_for_status()
        yield client


def authorize_url(verifier: str | None = None, **params: Any) -> str:
    """An authorization request (RFC 6749 section 4.1.1 + RFC 7636 section 4.3); ``None`` drops a parameter."""
    verifier = verifier or secrets.token_urlsafe(48)
    query = {"response_type": "code", "client_id": DEV_CLIENT_ID, "redirect_uri": REDIRECT, "scope": DAILY, "state": "st-123",
             "code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"}
    query.update(params)
    return "/oauth/authorize?" + urlencode({k: v for k, v in query.items() if v is not None})


def location_params(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 302, (r.status_code, r.text[:500])
    loc = urlsplit(r.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT
    return {k: v[0] for k, v in parse_qs(loc.query).items()}


async def get_code(c: httpx.AsyncClient, verifier: str, username: str = CUSTOMER, **params: Any) -> str:
    """Play the customer: open the login page, then post the same URL with the credentials and Allow."""
    url = authorize_url(verifier, **params)
    page = await c.get(url)
    assert page.status_code == 200, page.text[:500]
    r = await c.post(url, data={"username": username, "password": "demo", "action": "allow"})
    got = location_params(r)
    assert got["state"] == params.get("state", "st-123")
    return got["code"]


async def redeem(c: httpx.AsyncClient, code: str, verifier: str, auth: Any = BROKER, **extra: str) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier, **extra}
    return await c.post("/oauth/token", data=data, auth=auth)


async def tokens(c: httpx.AsyncClient, username: str = CUSTOMER, scope: str = DAILY) -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    r = await redeem(c, await get_code(c, verifier, username, scope=scope), verifier)
    assert r.status_code == 200, r.text
    return r.json()


async def refresh(c: httpx.AsyncClient, refresh_token: str, auth: Any = BROKER) -> httpx.Response:
    return await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=auth)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def records(c: httpx.AsyncClient, token: str, dataset: str = DAILY, **params: Any) -> httpx.Response:
    return await c.get(f"/datasets/{dataset}/records", headers=bearer(token), params=params)


# ---------------------------------------------------------------- RFC 8414 metadata

async def test_metadata_names_the_endpoints_under_the_request_base_url(c: httpx.AsyncClient) -> None:
    r = await c.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    meta = r.json()
    assert meta["issuer"] == BASE
    assert meta["authorization_endpoint"] == f"{BASE}/oauth/authorize"
    assert meta["token_endpoint"] == f"{BASE}/oauth/token"
    assert meta["revocation_endpoint"] == f"{BASE}/oauth/revoke"
    assert meta["response_types_supported"] == ["code"]
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post"]
    assert meta["scopes_supported"] == [*sorted([DAILY, LOAD]), "openid"]  # openid: a sign-in, no data


async def test_a_sign_in_asks_only_who_the_customer_is_and_its_token_reads_no_data(c: httpx.AsyncClient) -> None:
    """scope=openid: the login page says no data is shared, and the token it gives reads no dataset."""
    page = await c.get(authorize_url(scope="openid"), headers={"Accept-Language": "en"})
    assert page.status_code == 200 and "none of your data is shared" in page.text and "Share your data" not in page.text
    assert "aucune de vos données" in (await c.get(authorize_url(scope="openid", lang="fr"))).text
    token = await tokens(c, scope="openid")
    assert token["sub"] == CUSTOMER and token["scope"] == "openid"
    assert (await c.get(f"/datasets/{DAILY}/records", headers=bearer(token["access_token"]))).status_code == 403
    assert (await c.get("/grant", headers=bearer(token["access_token"]))).json()["sub"] == CUSTOMER


async def test_metadata_issuer_from_settings_and_environment(sample: list[Path]) -> None:
    async with http(make_app(sample, OAuthSettings(issuer="https://holder.example")), "http://10.0.0.5:8201") as client:
        meta = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == "https://holder.example" and meta["token_endpoint"] == "https://holder.example/oauth/token"
    s = OAuthSettings.from_env({"HOLDER_ISSUER": "https://h.example/", "HOLDER_DEMO_PASSWORD": "pw", "HOLDER_TOKEN_TTL_S": "60"})
    assert (s.issuer, s.demo_password, s.token_ttl_s) == ("https://h.example", "pw", 60)
    default = OAuthSettings.from_env({})
    assert [c.client_id for c in default.clients] == [DEV_CLIENT_ID] and default.demo_password == "demo" and default.token_ttl_s == 3600
    for bad in ('[{"client_id": "x"}]', '[{"client_id": "x", "client_secret": "y", "redirect_uris": ["/cb"]}]', "{"):
        with pytest.raises(ValueError):
            OAuthSettings.from_env({"HOLDER_OAUTH_CLIENTS": bad})


# ---------------------------------------------------------------- the code flow with PKCE

async def test_full_code_flow_with_authlib_client(app: FastAPI, c: httpx.AsyncClient) -> None:
    """What the broker does: authlib's client builds the S256 request and redeems the code with client_secret_basic."""
    with warnings.catch_warnings():  # authlib 1.9 warns on import that it prefers httpx2 to httpx
        warnings.simplefilter("ignore", DeprecationWarning)
        from authlib.integrations.httpx_client import AsyncOAuth2Client
    async with AsyncOAuth2Client(client_id=DEV_CLIENT_ID, client_secret=DEV_CLIENT_SECRET, redirect_uri=REDIRECT, scope=DAILY,
                                 code_challenge_method="S256", token_endpoint_auth_method="client_secret_basic",
                                 transport=httpx.ASGITransport(app=app), base_url=BASE) as oauth:
        verifier = secrets.token_urlsafe(48)
        url, state = oauth.create_authorization_url(f"{BASE}/oauth/authorize", code_verifier=verifier, login_hint=CUSTOMER)
        page = await c.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
        html = page.text
        assert "Portability broker" in html and DAILY in html and "demo customers: password demo" in html
        assert f'name="username" value="{CUSTOMER}"' in html and 'name="password"' in html
        assert '<button type="submit" name="action" value="allow">' in html and 'value="deny"' in html
        action = html.split('action="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        assert action == "?" + urlsplit(url).query  # the form posts back to the same URL
        r = await c.post(url, data={"username": CUSTOMER, "password": "demo", "action": "allow"})
        got = location_params(r)
        assert got["state"] == state and r.headers["cache-control"] == "no-store"
        token = await oauth.fetch_token(f"{BASE}/oauth/token", grant_type="authorization_code", code=got["code"],
                                        code_verifier=verifier, redirect_uri=REDIRECT)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600 and token["scope"] == DAILY
    assert token["sub"] == CUSTOMER and token["refresh_token"] and token["access_token"]
    r = await records(c, token["access_token"], limit=10)
    assert r.status_code == 200 and len(r.json()["records"]) == 10 and r.json()["total"] == 365
    grant = (await c.get("/grant", headers=bearer(token["access_token"]))).json()
    assert grant["sub"] == CUSTOMER and grant["datasets"] == [DAILY] and grant["expires_at"] == pytest.approx(token["expires_at"], abs=2)


async def test_token_response_shape_and_client_secret_post(c: httpx.AsyncClient) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await get_code(c, verifier, scope=f"{DAILY} {LOAD} {DAILY}")
    r = await redeem(c, code, verifier, auth=None, client_id=DEV_CLIENT_ID, client_secret=DEV_CLIENT_SECRET)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope", "sub"}
    assert body["scope"] == f"{DAILY} {LOAD}" and body["sub"] == CUSTOMER


async def test_token_ttl_setting(sample: list[Path]) -> None:
    async with http(make_app(sample, OAuthSettings(token_ttl_s=120))) as client:
        assert (await tokens(client))["expires_in"] == 120


async def test_wrong_verifier_is_refused_and_burns_the_code(c: httpx.AsyncClient) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await get_code(c, verifier)
    r = await redeem(c, code, secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant" and r.headers["cache-control"] == "no-store"
    assert (await redeem(c, code, verifier)).json()["error"] == "invalid_grant"


async def test_missing_verifier_is_refused(c: httpx.AsyncClient) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await get_code(c, verifier)
    r = await c.post("/oauth/token", data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}, auth=BROKER)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


async def test_code_reuse_is_refused_and_revokes_its_tokens(c: httpx.AsyncClient) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await get_code(c, verifier)
    first = await redeem(c, code, verifier)
    assert first.status_code == 200
    again = await redeem(c, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # RFC 6749 section 4.1.2: the tokens issued from a code used twice are revoked
    assert (await c.get("/grant", headers=bearer(first.json()["access_token"]))).status_code == 401
    assert (await refresh(c, first.json()["refresh_token"])).json()["error"] == "invalid_grant"


async def test_code_bound_to_client_redirect_uri_and_lifetime(app: FastAPI, c: httpx.AsyncClient) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await get_code(c, verifier)
    r = await c.post("/oauth/token", data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                                           "redirect_uri": "http://127.0.0.1:54321/other"}, auth=BROKER)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = await redeem(c, await get_code(c, verifier), verifier, auth=(DEV_CLIENT_ID, "wrong-secret"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client" and r.headers["www-authenticate"].startswith("Basic")
    code = await get_code(c, verifier)
    store = app.state.store
    store.codes[code] = dataclasses.replace(store.codes[code], expires_at=0)  # older than 10 minutes
    assert (await redeem(c, code, verifier)).json()["error"] == "invalid_grant"


async def test_token_endpoint_errors(c: httpx.AsyncClient) -> None:
    r = await c.post("/oauth/token", data={"grant_type": "password", "username": "a", "password": "b"}, auth=BROKER)
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = await c.post("/oauth/token", content="grant_type=refresh_token&grant_type=refresh_token&refresh_token=x",
                     headers={"Content-Type": "application/x-www-form-urlencoded"}, auth=BROKER)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    verifier = secrets.token_urlsafe(48)
    r = await redeem(c, await get_code(c, verifier), verifier, auth=None)  # a confidential client must authenticate
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


# ---------------------------------------------------------------- the login page

async def test_wrong_password_shows_the_page_again_with_401(c: httpx.AsyncClient) -> None:
    url = authorize_url()
    for username, password in ((CUSTOMER, "wrong"), ("no-such-customer", "demo"), ("", "")):
        r = await c.post(url, data={"username": username, "password": password, "action": "allow"})
        assert r.status_code == 401 and "location" not in r.headers
        assert "wrong password" in r.text and 'name="password"' in r.text
    r = await c.post(url, data={"username": CUSTOMER, "password": "demo"})  # neither button
    assert r.status_code == 400 and "location" not in r.headers


async def test_deny_redirects_with_access_denied(c: httpx.AsyncClient) -> None:
    r = await c.post(authorize_url(state="s-deny"), data={"username": CUSTOMER, "action": "deny"})
    got = location_params(r)
    assert got["error"] == "access_denied" and got["state"] == "s-deny" and "code" not in got


async def test_the_login_page_in_french_keeps_its_form_and_the_demo_password(c: httpx.AsyncClient) -> None:
    url = authorize_url(lang="fr")
    page = await c.get(url)
    assert page.status_code == 200 and page.headers["content-language"] == "fr"
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    html = page.text
    assert '<html lang="fr">' in html and "Partager vos données avec Portability broker (development)" in html
    assert "demande à lire ces jeux de données qui vous concernent" in html and DAILY in html
    assert "Identifiant client" in html and "Mot de passe" in html and "clients de démonstration : mot de passe demo" in html
    assert '<button type="submit" name="action" value="allow">Autoriser</button>' in html and ">Refuser</button>" in html
    assert 'name="username"' in html and 'name="password"' in html and "Customer id" not in html
    action = html.split('action="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert action == "?" + urlsplit(url).query  # the form posts back to the same URL, lang=fr included
    # the link to the English page keeps the authorization request and changes only lang
    english = html.split('hreflang="en"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert english.startswith("/oauth/authorize?") and parse_qs(urlsplit(english).query)["lang"] == ["en"]
    assert {k: v for k, v in parse_qs(urlsplit(english).query).items() if k != "lang"} == \
        {k: v for k, v in parse_qs(urlsplit(url).query).items() if k != "lang"}
    r = await c.post(url, data={"username": CUSTOMER, "password": "wrong", "action": "allow"})
    assert r.status_code == 401 and "Identifiant client inconnu ou mot de passe erroné." in r.text and '<html lang="fr">' in r.text
    r = await c.post(url, data={"username": CUSTOMER, "password": "demo"})
    assert r.status_code == 400 and "Choisissez Autoriser ou Refuser." in r.text
    got = location_params(await c.post(url, data={"username": CUSTOMER, "password": "demo", "action": "allow"}))
    assert got["code"] and got["state"] == "st-123"


@pytest.mark.parametrize(("params", "headers", "lang"), [
    ({}, {}, "en"),
    ({}, {"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.8"}, "fr"),
    ({}, {"Accept-Language": "de, en;q=0.5, fr;q=0.9"}, "fr"),  # by q, not by order
    ({}, {"Accept-Language": "fr;q=0, en"}, "en"),  # q=0: not wanted
    ({}, {"Accept-Language": "de"}, "en"),
    ({"ui_locales": "fr-CA en"}, {}, "fr"),  # OpenID Connect's ui_locales, most wanted first
    ({"ui_locales": "de fr"}, {"Accept-Language": "en"}, "fr"),
    ({"ui_locales": "en"}, {"Accept-Language": "fr"}, "en"),
    ({"lang": "en", "ui_locales": "fr"}, {"Accept-Language": "fr"}, "en"),  # ?lang= first
    ({"lang": "<script>x</script>"}, {"Accept-Language": "fr"}, "fr"),  # an unknown lang is ignored, never shown
])
async def test_the_login_page_language_comes_from_lang_ui_locales_or_accept_language(
        c: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], lang: str) -> None:
    page = await c.get(authorize_url(**params), headers=headers)
    assert page.status_code == 200 and page.headers["content-language"] == lang and f'<html lang="{lang}">' in page.text
    assert ("Mot de passe" in page.text) == (lang == "fr") and ("Password" in page.text) == (lang == "en")
    assert "<script>" not in page.text


async def test_the_error_page_in_french(c: httpx.AsyncClient) -> None:
    r = await c.get(authorize_url(client_id="unknown-client"), headers={"Accept-Language": "fr"})
    assert r.status_code == 400 and "location" not in r.headers and r.headers["x-frame-options"] == "DENY"
    assert '<html lang="fr">' in r.text and "Cette demande d&#39;autorisation ne peut pas être traitée" in r.text
    assert "invalid_client" in r.text  # the OAuth error code stays as RFC 6749 names it


@pytest.mark.parametrize("params", [
    {"redirect_uri": "https://evil.example/cb"},
    {"redirect_uri": "http://127.0.0.1.evil.example/cb"},
    {"redirect_uri": "http://user@127.0.0.1:1/cb"},
    {"redirect_uri": "ftp://127.0.0.1/cb"},
    {"redirect_uri": None},
    {"client_id": "unknown-client"},
    {"client_id": None},
])
async def test_bad_client_or_redirect_uri_gives_a_400_page_not_a_redirect(c: httpx.AsyncClient, params: dict[str, Any]) -> None:
    for method in ("GET", "POST"):
        r = await c.request(method, authorize_url(**params), data={"username": CUSTOMER, "password": "demo", "action": "allow"}
                            if method == "POST" else None)
        assert r.status_code == 400 and "location" not in r.headers
        assert r.headers["content-type"].startswith("text/html") and "cannot be served" in r.text


async def test_loopback_redirects_of_the_development_client(c: httpx.AsyncClient) -> None:
    for uri in ("http://localhost:8000/cb", "http://127.0.0.1/x?y=1", "https://localhost:9/cb"):
        r = await c.get(authorize_url(redirect_uri=uri))
        assert r.status_code == 200, uri


@pytest.mark.parametrize(("params", "error"), [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),  # absent means plain (RFC 7636 section 4.3)
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": "short"}, "invalid_request"),
    ({"scope": "no.such.dataset"}, "invalid_scope"),
    ({"scope": f"{DAILY} no.such.dataset"}, "invalid_scope"),
    ({"scope": None}, "invalid_scope"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
async def test_bad_request_goes_back_to_the_client_with_error_and_state(c: httpx.AsyncClient, params: dict[str, Any], error: str) -> None:
    r = await c.get(authorize_url(**params, state="s-err"))
    got = location_params(r)
    assert got["error"] == error and got["state"] == "s-err"


async def test_a_customer_may_authorise_a_dataset_it_has_no_data_for(c: httpx.AsyncClient) -> None:
    token = await tokens(c, username=OTHER, scope=LOAD)  # OTHER has daily records only
    assert token["sub"] == OTHER
    r = await records(c, token["access_token"], LOAD)
    assert r.status_code == 200 and r.json()["records"] == []


async def test_insecure_transport_is_refused_except_on_loopback(sample: list[Path]) -> None:
    async with http(make_app(sample), "http://holder.example") as client:
        r = await client.get(authorize_url())
        assert r.status_code == 400 and "insecure_transport" in r.text and "location" not in r.headers
        r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
        assert r.status_code == 400 and r.json()["error"] == "insecure_transport"
    async with http(make_app(sample), "https://holder.example") as client:
        assert (await client.get(authorize_url())).status_code == 200
    async with http(make_app(sample, OAuthSettings(issuer="https://holder.example")), "http://holder.internal") as client:
        assert (await client.get(authorize_url())).status_code == 200  # TLS ends at the proxy


async def test_configured_clients_compare_redirect_uris_exactly(sample: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    clients = [{"client_id": "cloud-x", "client_secret": "s3cret", "redirect_uris": ["https://broker.example/cb"]}]
    monkeypatch.setenv("HOLDER_OAUTH_CLIENTS", json.dumps(clients))
    monkeypatch.setenv("HOLDER_DEMO_PASSWORD", "hunter2")
    async with http(create_app(files=sample), "https://holder.example") as client:
        assert (await client.get(authorize_url(client_id=DEV_CLIENT_ID))).status_code == 400  # no development client now
        assert (await client.get(authorize_url(client_id="cloud-x"))).status_code == 400  # loopback: not registered
        url = authorize_url(verifier := secrets.token_urlsafe(48), client_id="cloud-x", redirect_uri="https://broker.example/cb")
        page = await client.get(url)
        assert page.status_code == 200 and "password demo" not in page.text
        assert (await client.post(url, data={"username": CUSTOMER, "password": "demo", "action": "allow"})).status_code == 401
        r = await client.post(url, data={"username": CUSTOMER, "password": "hunter2", "action": "allow"})
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        r = await client.post("/oauth/token", auth=("cloud-x", "s3cret"), data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": "https://broker.example/cb"})
        assert r.status_code == 200 and r.json()["sub"] == CUSTOMER


# ---------------------------------------------------------------- refresh, revocation, the resource server

async def test_refresh_rotates(c: httpx.AsyncClient) -> None:
    first = await tokens(c)
    r = await refresh(c, first["refresh_token"])
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert second["sub"] == CUSTOMER and second["scope"] == DAILY and second["expires_in"] == 3600
    again = await refresh(c, first["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert (await records(c, second["access_token"], limit=1)).status_code == 200
    assert (await refresh(c, second["refresh_token"])).status_code == 200


async def test_refresh_needs_the_client_it_was_issued_to(c: httpx.AsyncClient) -> None:
    token = await tokens(c)
    r = await refresh(c, token["refresh_token"], auth=None)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client" and "www-authenticate" in r.headers
    r = await refresh(c, token["refresh_token"], auth=(DEV_CLIENT_ID, "nope"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert (await refresh(c, token["refresh_token"])).status_code == 200  # still unused


async def test_refresh_may_narrow_the_scope(c: httpx.AsyncClient) -> None:
    token = await tokens(c, scope=f"{DAILY} {LOAD}")
    r = await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "scope": LOAD}, auth=BROKER)
    assert r.status_code == 200 and r.json()["scope"] == LOAD
    assert (await records(c, r.json()["access_token"], DAILY)).status_code == 403
    r = await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"], "scope": DAILY},
                     auth=BROKER)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_revocation_ends_the_whole_grant(c: httpx.AsyncClient, which: str) -> None:
    first = await tokens(c)
    second = (await refresh(c, first["refresh_token"])).json()
    other = await tokens(c)  # another grant of the same customer stays
    r = await c.post("/oauth/revoke", data={"token": second[which], "token_type_hint": which}, auth=BROKER)
    assert r.status_code == 200
    for access in (first["access_token"], second["access_token"]):
        r = await records(c, access, limit=1)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        g = await c.get("/grant", headers=bearer(access))
        assert g.status_code == 401 and g.headers["content-type"] == "application/problem+json" and "www-authenticate" in g.headers
    assert (await refresh(c, second["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await c.get("/grant", headers=bearer(other["access_token"]))).status_code == 200


async def test_revocation_answers_200_for_unknown_tokens_and_needs_client_auth(c: httpx.AsyncClient) -> None:
    r = await c.post("/oauth/revoke", data={"token": "never-issued"}, auth=BROKER)
    assert r.status_code == 200
    token = await tokens(c)
    r = await c.post("/oauth/revoke", data={"token": token["access_token"]})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = await c.post("/oauth/revoke", data={"token": token["access_token"], "client_id": DEV_CLIENT_ID, "client_secret": DEV_CLIENT_SECRET})
    assert r.status_code == 200
    assert (await c.get("/grant", headers=bearer(token["access_token"]))).status_code == 401


async def test_export_is_limited_to_the_scope_and_the_customer(c: httpx.AsyncClient) -> None:
    mine = await tokens(c, CUSTOMER, DAILY)
    theirs = await tokens(c, OTHER, DAILY)
    r = await records(c, mine["access_token"], LOAD)
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    page = (await records(c, theirs["access_token"], limit=1000)).json()
    assert page["total"] == 1 and page["records"] == [{"date": "2024-01-01", "value": 1, "unit": "Wh"}]
    first = (await records(c, mine["access_token"], limit=10)).json()
    assert first["total"] == 365
    r = await records(c, theirs["access_token"], cursor=first["next_cursor"])  # my cursor, their token
    assert r.status_code == 400
    assert (await records(c, "forged-" + secrets.token_urlsafe(16))).status_code == 401
    assert (await c.get(f"/datasets/{DAILY}/records")).status_code == 401


async def test_grant_endpoint(c: httpx.AsyncClient) -> None:
    token = await tokens(c, scope=f"{LOAD} {DAILY}")
    r = await c.get("/grant", headers=bearer(token["access_token"]))
    assert r.status_code == 200 and r.json()["sub"] == CUSTOMER and r.json()["datasets"] == [LOAD, DAILY]
    assert isinstance(r.json()["expires_at"], int)
    for headers in ({}, bearer("unknown"), {"Authorization": "Basic eDp5"}):
        r = await c.get("/grant", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json" and r.json()["status"] == 401
    await c.post("/dev/expire-tokens")
    assert (await c.get("/grant", headers=bearer(token["access_token"]))).status_code == 401


async def test_dev_revoke_all_forgets_a_customers_tokens(c: httpx.AsyncClient) -> None:
    mine, theirs = await tokens(c, CUSTOMER), await tokens(c, OTHER)
    dev = (await c.post("/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY]})).json()
    r = await c.post("/dev/revoke-all", params={"customer_id": CUSTOMER})
    assert r.status_code == 200 and r.json()["revoked"] >= 4
    for token in (mine, dev):
        assert (await c.get("/grant", headers=bearer(token["access_token"]))).status_code == 401
        assert (await records(c, token["access_token"])).status_code == 401
    assert (await refresh(c, mine["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await c.get("/grant", headers=bearer(theirs["access_token"]))).status_code == 200
    assert (await c.post("/dev/revoke-all", params={"customer_id": "nobody"})).json() == {"revoked": 0}


# ---------------------------------------------------------------- backwards compatibility of /dev/tokens

async def test_dev_tokens_and_their_unauthenticated_refresh_still_work(c: httpx.AsyncClient) -> None:
    r = await c.post("/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY], "expires_in": 120})
    assert r.status_code == 200
    dev = r.json()
    assert set(dev) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert dev["token_type"] == "Bearer" and dev["expires_in"] == 120
    assert (await records(c, dev["access_token"], limit=1)).status_code == 200
    await c.post("/dev/expire-tokens")
    assert (await records(c, dev["access_token"], limit=1)).status_code == 401
    r = await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": dev["refresh_token"]})  # no client auth
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store", r.text
    new = r.json()
    assert new["token_type"] == "Bearer" and new["expires_in"] == 120 and new["refresh_token"] != dev["refresh_token"]
    assert (await records(c, new["access_token"], limit=1)).status_code == 200
    r = await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": dev["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"  # rotated
    # the broker refreshes with its client credentials: fine for /dev tokens too, and they stay refreshable without
    r = await refresh(c, new["refresh_token"])
    assert r.status_code == 200
    assert (await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"]})).status_code == 200
    await c.post("/dev/expire-tokens", params={"refresh_too": "true"})
    r = await c.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert (await c.post("/oauth/token", data={"grant_type": "refresh_token"})).json()["error"] == "invalid_grant"
    assert (await c.post("/dev/tokens", json={"customer_id": "nobody", "datasets": [DAILY]})).status_code == 404


async def test_dev_tokens_can_be_revoked_by_the_broker(c: httpx.AsyncClient) -> None:
    dev = (await c.post("/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY]})).json()
    assert (await c.post("/oauth/revoke", data={"token": dev["refresh_token"]}, auth=BROKER)).status_code == 200
    assert (await records(c, dev["access_token"])).status_code == 401


async def test_tokens_put_into_the_store_directly_still_read(app: FastAPI, c: httpx.AsyncClient) -> None:
    """tests/participants_broken.py writes ``{"customer_id", "datasets", "expires_at"}`` into ``store.tokens``."""
    import time

    app.state.store.tokens["raw"] = {"customer_id": CUSTOMER, "datasets": [DAILY], "expires_at": time.time() + 60}
    assert (await records(c, "raw", limit=1)).status_code == 200
    assert (await c.get("/grant", headers=bearer("raw"))).json()["sub"] == CUSTOMER
    assert (await c.post("/oauth/revoke", data={"token": "raw"}, auth=BROKER)).status_code == 200
    assert (await records(c, "raw")).status_code == 401

