"""Client side of the broker's OAuth 2.0 authorization server: keys, tokens, and an httpx ``Auth``.

A caller of the broker's APIs (a participant, a regulator, an operator) authenticates to
``POST /oauth/token`` of the registry with the client credentials grant (RFC 6749 section 4.4)
and ``private_key_jwt`` client authentication (RFC 7523 section 2.2, as named by OpenID Connect
Core section 9): a short-lived JWT signed with its private key, whose public half the broker knows
(the participant's ``jwks``/``jwks_uri`` in the registry, or the settings for regulators and admins).

- :func:`generate_keypair` makes a key pair and the public JWK Set (RFC 7517 section 5) to register.
- :class:`TokenSource` / :class:`AsyncTokenSource` get access tokens and cache them until shortly
  before they expire (no refresh tokens in this grant, RFC 6749 section 4.4.3). Each keeps one token
  per instance behind a lock, so that concurrent callers make one token request (STACK_PITFALLS A1, A2).
- :class:`BearerAuth` is an ``httpx.Auth`` that adds ``Authorization: Bearer`` (RFC 6750 section 2.1)
  and, when a resource server answers 401 ``invalid_token`` (RFC 6750 section 3.1), gets a new token
  and retries the request once.
- :func:`dev_credentials`: the development admin and regulator, whose private keys are derived from
  fixed, public seeds. The registry accepts them only in development mode.

The client assertion is signed with authlib's :class:`~authlib.oauth2.rfc7523.PrivateKeyJWT`
(through :class:`authlib.oauth2.auth.ClientAuth`); the token request itself is a plain httpx call.
We do not use ``authlib.integrations.httpx_client``: its ``OAuth2Client`` re-fetches
client-credentials tokens with known bugs (authlib #650, #783) and, without the ``httpx2`` package,
warns on import, which the test suite turns into an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncGenerator, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import ECKey, OKPKey, RSAKey

Key = ECKey | OKPKey | RSAKey

FORM = "application/x-www-form-urlencoded"
ASSERTION_LIFETIME_S = 60  # the broker refuses client assertions that live longer than 5 minutes

# ---- keys ------------------------------------------------------------------------------------------


def load_private_key(key: Key | Mapping[str, Any] | str | bytes, *, kid: str | None = None) -> Key:
    """A private signing key from a JWK (dict or JSON text, RFC 7517) or a PEM (PKCS#8, SEC 1, PKCS#1).

    EC P-256, OKP Ed25519 and RSA keys are accepted. A key without ``kid`` gets its RFC 7638
    thumbprint as ``kid`` (or ``kid`` when given), which is also what the broker matches.
    """
    if isinstance(key, (ECKey, OKPKey, RSAKey)):
        out: Key = key
    else:
        if isinstance(key, (str, bytes)) and (key.strip().startswith(b"-----" if isinstance(key, bytes) else "-----")):
            raw = load_pem_private_key(key.encode() if isinstance(key, str) else key, password=None)
            params = {"kid": kid} if kid else None
            if isinstance(raw, ec.EllipticCurvePrivateKey):
                out = ECKey.import_key(raw, parameters=params)
            elif isinstance(raw, ed25519.Ed25519PrivateKey):
                out = OKPKey.import_key(raw, parameters=params)
            elif isinstance(raw, rsa.RSAPrivateKey):
                out = RSAKey.import_key(raw, parameters=params)
            else:
                raise ValueError(f"unsupported private key type {type(raw).__name__}")
        else:
            data = json.loads(key) if isinstance(key, (str, bytes)) else dict(key)
            if kid and "kid" not in data:
                data["kid"] = kid
            kty = data.get("kty")
            cls: type[Key] | None = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}.get(str(kty))  # type: ignore[assignment]
            if cls is None:
                raise ValueError(f"unsupported JWK key type {kty!r}")
            out = cls.import_key(data)
    if not out.is_private:
        raise ValueError("a private key is needed to sign")
    out.ensure_kid()
    return out


def signing_alg(key: Key) -> str:
    """The JWS algorithm (RFC 7518, RFC 9864) the broker expects for this key type."""
    if isinstance(key, ECKey):
        if key.curve_name != "P-256":
            raise ValueError("only P-256 EC keys are supported (ES256)")
        return "ES256"
    if isinstance(key, OKPKey):
        if key.curve_name != "Ed25519":
            raise ValueError("only Ed25519 OKP keys are supported")
        return "Ed25519"  # RFC 9864 section 2.2 (the deprecated "EdDSA" is refused)
    return "PS256"


def public_jwks(key: Key | Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    """The public JWK Set (RFC 7517 section 5) of a private key: what to register as ``jwks``."""
    k = load_private_key(key)
    pub = k.as_dict(private=False)
    pub.setdefault("use", "sig")
    pub.setdefault("alg", signing_alg(k))
    return {"keys": [pub]}


def generate_keypair(kind: Literal["ES256", "Ed25519"] = "ES256", *, kid: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new key pair for a client: ``(private_jwk, public_jwks)``.

    Keep ``private_jwk`` secret (it is what :class:`TokenSource` takes); register ``public_jwks``
    as the participant's ``jwks`` (or publish it at its ``jwks_uri``).
    """
    if kind == "ES256":
        key: Key = ECKey.generate_key("P-256", parameters={"kid": kid} if kid else None)
    elif kind == "Ed25519":
        key = OKPKey.generate_key("Ed25519", parameters={"kid": kid} if kid else None)
    else:
        raise ValueError(f"unsupported key kind {kind!r}")
    key.ensure_kid()
    private = key.as_dict(private=True)
    private.setdefault("alg", signing_alg(key))
    return private, public_jwks(key)


# ---- development credentials (public seeds: refused outside development) -------------------------

DEV_ADMIN_CLIENT_ID = "dev-admin"
DEV_REGULATOR_CLIENT_ID = "dev-regulator"

_P256_ORDER = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


def _dev_ed25519(label: str) -> dict[str, Any]:
    seed = hashlib.sha256(f"portability-broker development key, not secret: {label}".encode()).digest()
    key = OKPKey.import_key(ed25519.Ed25519PrivateKey.from_private_bytes(seed), parameters={"kid": f"dev-{label}-1", "alg": "Ed25519", "use": "sig"})
    return key.as_dict(private=True)


def _dev_p256(label: str) -> dict[str, Any]:
    seed = hashlib.sha256(f"portability-broker development key, not secret: {label}".encode()).digest()
    scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
    key = ECKey.import_key(ec.derive_private_key(scalar, ec.SECP256R1()), parameters={"kid": f"dev-{label}-1", "alg": "ES256", "use": "sig"})
    return key.as_dict(private=True)


#: private JWK of the development admin client (Ed25519)
DEV_ADMIN_KEY: dict[str, Any] = _dev_ed25519("admin")
#: private JWK of the development regulator client (Ed25519)
DEV_REGULATOR_KEY: dict[str, Any] = _dev_ed25519("regulator")
#: private JWK (ES256) signing the access tokens in development (``OAUTH_SIGNING_KEY`` unset)
DEV_SIGNING_KEY: dict[str, Any] = _dev_p256("access-token-signing")

#: the built-in clients of development mode, as ``OAUTH_CLIENTS`` entries
DEV_CLIENTS: list[dict[str, Any]] = [
    {"client_id": DEV_ADMIN_CLIENT_ID, "role": "admin", "jwks": public_jwks(DEV_ADMIN_KEY)},
    {"client_id": DEV_REGULATOR_CLIENT_ID, "role": "regulator", "jwks": public_jwks(DEV_REGULATOR_KEY)},
]


def dev_participant_key(participant_id: str) -> dict[str, Any]:
    """A development private key (Ed25519 JWK) for a participant of the local demo and tests, derived from its
    id (public seed: never register it outside development)."""
    return _dev_ed25519(f"participant {participant_id}")


def is_dev_key(jwk: Mapping[str, Any]) -> bool:
    """True if ``jwk`` (public or private) is one of the development keys above."""
    mine = {(k.get("kty"), k.get("crv"), k.get("x"), k.get("y")) for k in (DEV_ADMIN_KEY, DEV_REGULATOR_KEY, DEV_SIGNING_KEY)}
    return (jwk.get("kty"), jwk.get("crv"), jwk.get("x"), jwk.get("y")) in mine


@dataclass(frozen=True)
class ClientCredentials:
    """What a client needs to get tokens: its id, private key, the token URL and the scope it asks for."""

    client_id: str
    private_key: Mapping[str, Any] | str
    token_url: str
    scope: str | None = None

    def source(self, **kwargs: Any) -> TokenSource:
        return TokenSource(self.client_id, self.private_key, self.token_url, scope=self.scope, **kwargs)

    def async_source(self, **kwargs: Any) -> AsyncTokenSource:
        return AsyncTokenSource(self.client_id, self.private_key, self.token_url, scope=self.scope, **kwargs)


def dev_credentials(role: Literal["admin", "regulator"], registry_url: str) -> ClientCredentials:
    """The development admin or regulator, for the registry at ``registry_url`` (e.g. ``http://127.0.0.1:8101``)."""
    client_id, key = {"admin": (DEV_ADMIN_CLIENT_ID, DEV_ADMIN_KEY), "regulator": (DEV_REGULATOR_CLIENT_ID, DEV_REGULATOR_KEY)}[role]
    return ClientCredentials(client_id, key, f"{registry_url.rstrip('/')}/oauth/token", scope=role)


# ---- token requests --------------------------------------------------------------------------------


class TokenError(Exception):
    """The authorization server refused (RFC 6749 section 5.2), or answered something unusable."""

    def __init__(self, error: str, description: str | None = None, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error, self.description, self.status = error, description, status


class _PrivateKeyJWT(PrivateKeyJWT):
    """authlib's ``private_key_jwt`` signer with a short assertion lifetime, the key's ``kid`` and algorithm."""

    def __init__(self, audience: str, alg: str, kid: str, lifetime_s: int) -> None:
        super().__init__(audience, headers={"kid": kid}, alg=alg)
        self.lifetime_s = lifetime_s

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
                                    header=dict(self.headers or {}), alg=self.alg, expires_in=self.lifetime_s)


class _Credentials:
    """Signing of client assertions and parsing of token responses, shared by both token sources."""

    def __init__(self, client_id: str, private_key: Key | Mapping[str, Any] | str | bytes, token_url: str, *, scope: str | None = None,
                 leeway_s: float = 30.0, assertion_lifetime_s: int = ASSERTION_LIFETIME_S, audience: str | None = None,
                 introspection_url: str | None = None, revocation_url: str | None = None) -> None:
        self.client_id, self.token_url, self.scope, self.leeway_s = client_id, token_url, scope, leeway_s
        self.key = load_private_key(private_key)
        self.alg = signing_alg(self.key)
        base = token_url.rsplit("/", 1)[0]
        self.introspection_url = introspection_url or f"{base}/introspect"
        self.revocation_url = revocation_url or f"{base}/revoke"
        # RFC 7523 section 3: the audience is the token endpoint URL (for every endpoint of the server)
        self._auth = ClientAuth(client_id, self.key, _PrivateKeyJWT(audience or token_url, self.alg, str(self.key.kid), assertion_lifetime_s))
        self._token: dict[str, Any] | None = None
        self._expires_at = 0.0

    def assertion(self) -> str:
        """A fresh signed client assertion (RFC 7523 section 3), single-use."""
        _, _, body = self._auth.prepare("POST", self.token_url, {}, "")
        return dict(httpx.QueryParams(body))["client_assertion"]

    def _signed(self, url: str, params: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
        headers = {"Content-Type": FORM, "Accept": "application/json"}
        url, headers, body = self._auth.prepare("POST", url, headers, urlencode(params))
        return url, headers, body.encode()

    def _token_request(self) -> tuple[str, dict[str, str], bytes]:
        params = {"grant_type": "client_credentials"}
        if self.scope:
            params["scope"] = self.scope
        return self._signed(self.token_url, params)

    def _fresh(self) -> str | None:
        if self._token is not None and time.monotonic() < self._expires_at - self.leeway_s:
            return str(self._token["access_token"])
        return None

    def _accept(self, response: httpx.Response, started: float) -> str:
        token = _json(response)
        if response.status_code != 200 or "error" in token:
            raise TokenError(str(token.get("error", "invalid_response")), token.get("error_description"), response.status_code)
        if str(token.get("token_type", "")).lower() != "bearer" or not isinstance(token.get("access_token"), str):
            raise TokenError("invalid_response", "not a bearer token response", response.status_code)
        # expires_in counts from the response; counting from the request start errs on the safe side
        self._token, self._expires_at = token, started + float(token.get("expires_in") or 60)
        return str(token["access_token"])

    def invalidate(self) -> None:
        """Forget the cached token (after a resource server said it is invalid)."""
        self._token, self._expires_at = None, 0.0

    @property
    def current(self) -> dict[str, Any] | None:
        """The last token response (``access_token``, ``expires_in``, ``scope``), if any."""
        return dict(self._token) if self._token else None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TokenError("invalid_response", f"HTTP {response.status_code} without a JSON object", response.status_code)
    return body


class TokenSource(_Credentials):
    """Access tokens for one client, over a synchronous ``httpx.Client``; thread-safe.

    ``token()`` returns the cached token until ``leeway_s`` before it expires, then gets a new one.
    Raises :class:`TokenError` when the server refuses, ``httpx.HTTPError`` when it cannot be reached.
    """

    def __init__(self, *args: Any, http: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = http
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=10.0)
        return self._http

    def token(self) -> str:
        with self._lock:
            fresh = self._fresh()
            if fresh:
                return fresh
            started = time.monotonic()
            url, headers, body = self._token_request()
            return self._accept(self._client().post(url, headers=headers, content=body), started)

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 section 2: what the server says about ``token`` (``{"active": false}`` if nothing)."""
        url, headers, body = self._signed(self.introspection_url, {"token": token, "token_type_hint": "access_token"})
        r = self._client().post(url, headers=headers, content=body)
        out = _json(r)
        if r.status_code != 200:
            raise TokenError(str(out.get("error", "invalid_response")), out.get("error_description"), r.status_code)
        return out

    def revoke(self, token: str | None = None) -> None:
        """RFC 7009 section 2.1: revoke ``token`` (default: this source's current token, then forget it)."""
        token = token or (self._token or {}).get("access_token")
        if not token:
            return
        url, headers, body = self._signed(self.revocation_url, {"token": token, "token_type_hint": "access_token"})
        r = self._client().post(url, headers=headers, content=body)
        if r.status_code != 200:
            out = _json(r)
            raise TokenError(str(out.get("error", "invalid_response")), out.get("error_description"), r.status_code)
        if self._token and token == self._token.get("access_token"):
            self.invalidate()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


class AsyncTokenSource(_Credentials):
    """As :class:`TokenSource`, over an ``httpx.AsyncClient``; one token request at a time per source."""

    def __init__(self, *args: Any, http: httpx.AsyncClient | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = http
        self._lock: asyncio.Lock | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        return self._http

    async def token(self) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            fresh = self._fresh()  # checked again under the lock (STACK_PITFALLS A1)
            if fresh:
                return fresh
            started = time.monotonic()
            url, headers, body = self._token_request()
            return self._accept(await self._client().post(url, headers=headers, content=body), started)

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 section 2: what the server says about ``token``."""
        url, headers, body = self._signed(self.introspection_url, {"token": token, "token_type_hint": "access_token"})
        r = await self._client().post(url, headers=headers, content=body)
        out = _json(r)
        if r.status_code != 200:
            raise TokenError(str(out.get("error", "invalid_response")), out.get("error_description"), r.status_code)
        return out

    async def revoke(self, token: str | None = None) -> None:
        """RFC 7009 section 2.1: revoke ``token`` (default: this source's current token, then forget it)."""
        token = token or (self._token or {}).get("access_token")
        if not token:
            return
        url, headers, body = self._signed(self.revocation_url, {"token": token, "token_type_hint": "access_token"})
        r = await self._client().post(url, headers=headers, content=body)
        if r.status_code != 200:
            out = _json(r)
            raise TokenError(str(out.get("error", "invalid_response")), out.get("error_description"), r.status_code)
        if self._token and token == self._token.get("access_token"):
            self.invalidate()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _says_invalid_token(response: httpx.Response) -> bool:
    return response.status_code == 401 and 'error="invalid_token"' in response.headers.get("www-authenticate", "")


class BearerAuth(httpx.Auth):
    """``httpx.Auth`` adding the source's access token (RFC 6750 section 2.1).

    On a 401 whose ``WWW-Authenticate`` says ``invalid_token`` (the token was revoked, or the
    keys rotated), the cached token is dropped and the request is sent once more with a new one.
    Use a :class:`TokenSource` with a sync ``httpx.Client``, an :class:`AsyncTokenSource` with an
    ``httpx.AsyncClient``.
    """

    requires_request_body = True  # so that the retry can send the body again

    def __init__(self, source: TokenSource | AsyncTokenSource) -> None:
        self.source = source

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not isinstance(self.source, TokenSource):
            raise TypeError("a sync httpx.Client needs a TokenSource")
        if "authorization" in request.headers:  # the caller chose its own credentials for this request
            yield request
            return
        request.headers["Authorization"] = f"Bearer {self.source.token()}"
        response = yield request
        if _says_invalid_token(response):
            self.source.invalidate()
            request.headers["Authorization"] = f"Bearer {self.source.token()}"
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if not isinstance(self.source, AsyncTokenSource):
            raise TypeError("an httpx.AsyncClient needs an AsyncTokenSource")
        if "authorization" in request.headers:  # the caller chose its own credentials for this request
            yield request
            return
        request.headers["Authorization"] = f"Bearer {await self.source.token()}"
        response = yield request
        if _says_invalid_token(response):
            self.source.invalidate()
            request.headers["Authorization"] = f"Bearer {await self.source.token()}"
            yield request


__all__ = [
    "ASSERTION_LIFETIME_S", "AsyncTokenSource", "BearerAuth", "ClientCredentials", "DEV_ADMIN_CLIENT_ID", "DEV_ADMIN_KEY",
    "DEV_CLIENTS", "DEV_REGULATOR_CLIENT_ID", "DEV_REGULATOR_KEY", "DEV_SIGNING_KEY", "TokenError", "TokenSource",
    "dev_credentials", "dev_participant_key", "generate_keypair", "is_dev_key", "load_private_key", "public_jwks", "signing_alg",
]
