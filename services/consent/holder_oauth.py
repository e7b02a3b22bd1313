"""The broker as an OAuth 2.0 client of data holders' authorization servers.

* discovery: the holder's RFC 8414 metadata, from ``authorization_server_metadata_url`` in its registry entry
  (or ``<export_base_url>/.well-known/oauth-authorization-server``), cached for five minutes;
* the authorization code flow with PKCE S256 (RFC 6749 section 4.1, RFC 7636; authlib builds the request);
* refresh (RFC 6749 section 6) and revocation (RFC 7009) of a consent's tokens;
* the cheap check that the holder still sees the consent (``GET <export_base_url>/grant``).

The broker authenticates at the holder's token endpoint with ``client_secret_basic`` (RFC 6749 section
2.3.1), with the credentials of :class:`~shared.settings.Settings` ``holder_client_id`` /
``holder_client_secret`` or the holder's entry in ``holder_clients``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from shared.errors import Forbidden, InvalidInput, Unavailable, Unprocessable
from shared.settings import Settings
from shared.urlguard import check_address, check_url

METADATA_TTL_S = 300.0
IDENTITY_SCOPE = "openid"  # a sign-in's scope at holders that support it (scopes_supported): who the person is, no data
WELL_KNOWN = "/.well-known/oauth-authorization-server"
HTTP_TIMEOUT_S = 15.0
_metadata_cache: dict[str, tuple[float, dict[str, Any]]] = {}


class HolderAuthError(Exception):
    """The holder's authorization server refused: ``error`` is its RFC 6749 section 5.2 code."""

    def __init__(self, error: str, description: str | None = None) -> None:
        super().__init__(f"{error}: {description or ''}".rstrip(": "))
        self.error, self.description = error, description


def client_credentials(settings: Settings, holder_id: str) -> tuple[str, str]:
    """``(client_id, client_secret)`` of the broker at this holder.

    Outside development every holder must have its own entry in ``HOLDER_CLIENTS``: a secret shared by all
    holders would be sent to every holder's token endpoint, so any holder could redeem codes at another
    (the OAuth mix-up attack). Raises Unprocessable when there is none."""
    own = settings.holder_clients.get(holder_id) or {}
    if not own and settings.environment != "development":
        raise Unprocessable(f"the broker has no client credentials at holder {holder_id} (HOLDER_CLIENTS)", field="holder_id")
    return own.get("client_id", settings.holder_client_id), own.get("client_secret", settings.holder_client_secret)


def metadata_url(holder: dict[str, Any]) -> str:
    url = holder.get("authorization_server_metadata_url")
    if url:
        return str(url)
    base = holder.get("export_base_url")
    if not base:
        raise Unprocessable(f"holder {holder.get('id')} has no authorization server in the registry", field="holder_id")
    return f"{str(base).rstrip('/')}{WELL_KNOWN}"


async def _check_endpoints(holder: dict[str, Any], doc: dict[str, Any], url: str, *, development: bool) -> None:
    """RFC 8414 section 3.3: the ``issuer`` is the one the metadata URL was built from; and the endpoints the
    broker will call or send people to pass the SSRF guard of the holder's registry entry."""
    expected = url[: -len(WELL_KNOWN)].rstrip("/") if url.endswith(WELL_KNOWN) else None
    if expected is not None and str(doc.get("issuer", "")).rstrip("/") != expected:
        raise Unavailable(f"the holder's metadata names issuer {str(doc.get('issuer'))[:200]!r}, not {expected!r} (RFC 8414 section 3.3)")
    for field in ("authorization_endpoint", "token_endpoint", "revocation_endpoint"):
        if not doc.get(field):
            continue
        try:
            check_url(str(doc[field]), field, development=development)
            if not holder.get("allow_private_network"):
                await check_address(str(urlsplit(str(doc[field])).hostname), field)
        except InvalidInput as exc:
            raise Unavailable(f"the holder's metadata is refused: {exc.detail}") from None


async def metadata(holder: dict[str, Any], *, development: bool = True) -> dict[str, Any]:
    """The holder's authorization server metadata (RFC 8414 section 3.2); needs at least
    ``authorization_endpoint`` and ``token_endpoint``, an ``issuer`` matching the metadata URL and endpoints
    that pass the SSRF guard. Raises Unavailable if it cannot be read or is refused."""
    url = metadata_url(holder)
    hit = _metadata_cache.get(url)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            resp = await client.get(url, headers={"Accept": "application/json"})
        doc = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        raise Unavailable(f"the holder's authorization server metadata cannot be read: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or not doc.get("authorization_endpoint") or not doc.get("token_endpoint"):
        raise Unavailable(f"the holder's authorization server metadata at {url} is unusable (HTTP {resp.status_code})")
    if "S256" not in doc.get("code_challenge_methods_supported", ["S256"]):
        raise Unprocessable("the holder's authorization server does not support PKCE S256", field="holder_id")
    await _check_endpoints(holder, doc, url, development=development)
    _metadata_cache[url] = (time.monotonic() + METADATA_TTL_S, doc)
    return doc


async def authorization_url(settings: Settings, holder: dict[str, Any], *, redirect_uri: str, scope: list[str],
                            login_hint: str | None = None, ui_locales: str | None = None) -> tuple[str, str, str]:
    """Where to send the person: ``(url, state, code_verifier)`` (RFC 6749 section 4.1.1 with RFC 7636 S256).
    ``ui_locales``: the language of the broker's page the person came from (OpenID Connect Core 1.0 section
    3.1.2.1, which many OAuth servers honour), so that the holder's login page can speak it too."""
    meta = await metadata(holder, development=settings.environment == "development")
    verifier = generate_token(64)
    state = generate_token(32)
    client_id, _ = client_credentials(settings, str(holder["id"]))
    extra: dict[str, str] = {"code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"}
    if login_hint:
        extra["login_hint"] = login_hint
    if ui_locales:
        extra["ui_locales"] = ui_locales
    url = prepare_grant_uri(meta["authorization_endpoint"], client_id, "code", redirect_uri=redirect_uri, scope=" ".join(scope),
                            state=state, **extra)
    return url, state, verifier


async def _token_request(settings: Settings, holder: dict[str, Any], url: str, data: dict[str, str]) -> dict[str, Any]:
    """POST to the token endpoint with client_secret_basic (RFC 6749 sections 2.3.1, 5.1, 5.2)."""
    client_id, secret = client_credentials(settings, str(holder["id"]))
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            resp = await client.post(url, data=data, auth=(client_id, secret), headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise Unavailable(f"the holder's token endpoint cannot be reached: {type(exc).__name__}") from None
    if resp.status_code >= 500:
        raise Unavailable(f"the holder's token endpoint answered {resp.status_code}")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HolderAuthError("invalid_response", f"HTTP {resp.status_code}, not JSON")
    if resp.status_code != 200 or "error" in body:
        raise HolderAuthError(str(body.get("error") or "invalid_grant")[:100], str(body.get("error_description") or "")[:300] or None)
    if not body.get("access_token"):
        raise HolderAuthError("invalid_response", "the token response has no access_token")
    return body


async def exchange_code(settings: Settings, holder: dict[str, Any], *, code: str, redirect_uri: str, code_verifier: str) -> dict[str, Any]:
    """Exchange an authorization code for tokens (RFC 6749 section 4.1.3 with the RFC 7636 verifier).

    Returns the token response (``access_token``, ``refresh_token``, ``expires_in``, ``scope``, ``sub``).
    Raises HolderAuthError (refused) or Unavailable (unreachable)."""
    meta = await metadata(holder, development=settings.environment == "development")
    return await _token_request(settings, holder, meta["token_endpoint"], {
        "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "code_verifier": code_verifier})


async def refresh(settings: Settings, holder: dict[str, Any], *, refresh_token: str) -> dict[str, Any]:
    """RFC 6749 section 6 refresh. Raises Forbidden(reason=refresh_refused) when the holder refuses,
    Unavailable when it cannot be reached."""
    token_url = holder.get("oauth_token_url")
    try:
        token_url = (await metadata(holder, development=settings.environment == "development"))["token_endpoint"]
    except (Unavailable, Unprocessable):
        if not token_url:
            raise Forbidden(f"holder {holder['id']} has no token endpoint in the registry", reason="refresh_refused") from None
    try:
        return await _token_request(settings, holder, str(token_url), {"grant_type": "refresh_token", "refresh_token": refresh_token})
    except HolderAuthError as exc:
        raise Forbidden(f"the holder refused to refresh the token ({exc.error})", reason="refresh_refused") from None


async def revoke(settings: Settings, holder: dict[str, Any], *, token: dict[str, Any]) -> None:
    """Revoke the consent's refresh and access tokens at the holder (RFC 7009 section 2.1). A holder
    without a revocation endpoint has nothing to call. Raises Unavailable to be retried later."""
    try:
        meta = await metadata(holder, development=settings.environment == "development")
    except Unprocessable:
        return
    url = meta.get("revocation_endpoint")
    if not url:
        return
    client_id, secret = client_credentials(settings, str(holder["id"]))
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
        for value, hint in ((token.get("refresh_token"), "refresh_token"), (token.get("access_token"), "access_token")):
            if not value:
                continue
            try:
                resp = await client.post(url, data={"token": value, "token_type_hint": hint}, auth=(client_id, secret))
            except httpx.HTTPError as exc:
                raise Unavailable(f"holder revocation endpoint unreachable: {type(exc).__name__}") from None
            if resp.status_code >= 500 or resp.status_code == 429:
                raise Unavailable(f"holder revocation endpoint answered {resp.status_code}")
            # 200 (revoked or unknown, RFC 7009 section 2.2); 400 unsupported_token_type etc.: nothing to retry


async def check_grant(holder: dict[str, Any], *, access_token: str) -> str:
    """Does the holder still see the consent? ``GET <export_base_url>/grant`` with its token:
    ``confirmed`` (2xx), ``holder_lost_consent`` (401/403/404) or ``unreachable``."""
    base = str(holder.get("export_base_url") or "").rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            resp = await client.get(f"{base}/grant", headers={"Authorization": f"Bearer {access_token}"})
    except httpx.HTTPError:
        return "unreachable"
    if resp.is_success:
        return "confirmed"
    if resp.status_code in (401, 403, 404):
        return "holder_lost_consent"
    return "unreachable"


def check_issuer_parameter(meta: dict[str, Any], iss: str | None) -> None:
    """RFC 9207: when the holder's server says it sends ``iss`` in its authorization responses, the
    callback's ``iss`` must be its issuer (a response from another server is a mix-up). Raises HolderAuthError."""
    if iss is None and not meta.get("authorization_response_iss_parameter_supported"):
        return
    if str(iss or "").rstrip("/") != str(meta.get("issuer", "")).rstrip("/"):
        raise HolderAuthError("invalid_issuer", "the authorization response came from another server (RFC 9207)")
