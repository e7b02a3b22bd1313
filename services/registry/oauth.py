"""The broker's OAuth 2.0 authorization server, for the callers of its APIs (authlib, on FastAPI).

- Client credentials grant (RFC 6749 section 4.4) at ``POST /oauth/token``, and only that.
- Client authentication ``private_key_jwt`` (RFC 7523 section 2.2 and 3; the name is OpenID Connect
  Core section 9's), with authlib's :class:`~authlib.oauth2.rfc7523.JWTBearerClientAssertion`:
  a JWT signed with the client's key, ``iss`` = ``sub`` = the client id, ``aud`` = the token
  endpoint URL (or the issuer), a short ``exp``, and a ``jti`` accepted once: used ids are kept in
  the table ``oauth_used_jti`` until the assertion expires. No other client authentication exists,
  so a client can never fall back to none (STACK_PITFALLS A5).
- The clients: every participant of the registry (client id = participant id; keys = its ``jwks``
  or ``jwks_uri``, fetched with httpx and cached briefly; only an ``active`` participant gets
  tokens), and the regulators and admins of the ``OAUTH_CLIENTS`` setting (in development also the
  built-in ``dev-admin`` and ``dev-regulator`` of :mod:`shared.authclient`).
- Scopes are roles (:data:`shared.auth.SCOPES`): a participant may get ``holder`` and/or
  ``recipient`` as its registry roles say, a regulator ``regulator``, an admin ``admin``. Asking for
  another scope is ``invalid_scope`` (RFC 6749 section 5.2); asking for none gives all of the client's.
- Access tokens are JWTs (RFC 9068 section 2): header ``typ: at+jwt``; claims ``iss``, ``sub`` =
  ``client_id``, ``aud`` (the broker), ``exp`` (``OAUTH_TOKEN_TTL_S``, 5 minutes by default),
  ``iat``, ``jti``, ``scope``, and ``roles`` (RFC 9068 section 2.2.3.1), signed with
  ``OAUTH_SIGNING_KEY`` (ES256 or Ed25519).
- ``POST /oauth/introspect`` (RFC 7662; the caller authenticates with ``private_key_jwt`` too;
  a client sees its own tokens, an admin any; anything else is ``{"active": false}``),
  ``POST /oauth/revoke`` (RFC 7009; the owner or an admin; the id is kept in
  ``oauth_revoked_tokens`` until the token expires, and ``registry.events.oauth_token_revoked`` is
  published through the outbox so that every service drops it), ``GET /oauth/jwks`` (the
  verification keys, RFC 7517 section 5) and ``GET /.well-known/oauth-authorization-server``
  (RFC 8414 section 3).
- Over NATS, ``registry.oauth.jwks`` answers the keys and the revoked ids (:mod:`shared.auth`).

Errors of these endpoints are OAuth errors (RFC 6749 section 5.2: ``{"error", "error_description"}``
with ``Cache-Control: no-store``), not problem details, since OAuth clients expect them.
``invalid_client`` is a 400: RFC 6749 section 5.2 requires 401 only when the client used the
``Authorization`` header, and a 401 must name an HTTP authentication scheme (RFC 9110 section
11.6.1), which ``private_key_jwt`` is not.

authlib has no Starlette server integration (STACK_PITFALLS A4): :class:`_Server` subclasses
``AuthorizationServer`` as authlib's Flask integration does (``create_oauth2_request``,
``handle_response``). authlib's hooks are synchronous, so each request runs authlib in a worker
thread (``anyio.to_thread``) and the hooks reach the async database and httpx on the event loop
with ``anyio.from_thread.run``.

Endpoint URLs: outside development they are the issuer's (``OAUTH_ISSUER`` is the registry's public
https URL, so that the audience a client signs matches behind a proxy, A5); in development they are
the request's own base URL, and assertions naming the issuer's token URL are accepted too.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio.from_thread
import anyio.to_thread
import httpx
from authlib.common.security import is_secure_transport
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientCredentialsGrant,
    ClientMixin,
    InvalidClientError,
    InvalidScopeError,
    OAuth2Payload,
    OAuth2Request,
    TokenMixin,
    scope_to_list,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from shared import auth, authclient, subjects
from shared.errors import NotFound
from shared.outbox import add_event
from shared.runtime import Runtime

from . import models, service

log = logging.getLogger("services.registry.oauth")

PRIVATE_KEY_JWT = "private_key_jwt"
#: JWS algorithms accepted for client assertions (no ``none``, no HMAC, no deprecated ``EdDSA``)
ASSERTION_ALGS: tuple[str, ...] = ("ES256", "Ed25519", "PS256", "RS256")
#: a client assertion may not expire later than this after it is presented (RFC 7523 section 3, item 4)
MAX_ASSERTION_LIFETIME_S = 300
LEEWAY_S = 30  # clock skew allowed on exp / iat / nbf (RFC 7519 section 4.1.4)
JWKS_CACHE_S = 300.0  # how long a participant's jwks_uri answer is used
JWKS_MIN_REFETCH_S = 10.0  # an unknown kid refetches the jwks_uri, at most this often
JWKS_MAX_BYTES = 64 * 1024
MAX_REVOKED_IN_REPLY = 10_000
CLIENT_ROLES = frozenset({auth.REGULATOR, auth.ADMIN})  # of the clients that are not participants

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

router = APIRouter(tags=["oauth"])


# ---- clients and tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerClient(ClientMixin):
    """A client of the authorization server: a participant, or a regulator / admin from the settings."""

    client_id: str
    roles: frozenset[str]
    participant: bool
    status: str = "active"
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None

    @property
    def scopes(self) -> frozenset[str]:
        return self.roles & frozenset(auth.SCOPES)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no shared secrets at all

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == PRIVATE_KEY_JWT

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == ClientCredentialsGrant.GRANT_TYPE

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """RFC 6749 section 3.3: no scope asked gives all the client's; a scope it may not have gives None (invalid_scope)."""
        if not scope:
            return " ".join(s for s in auth.SCOPES if s in self.scopes)
        asked = list(dict.fromkeys(scope_to_list(scope)))
        if not asked or not set(asked) <= self.scopes:
            return None
        return " ".join(asked)


@dataclass
class AccessToken(TokenMixin):
    """A verified access token of ours (signature, issuer, typ), expired or not."""

    claims: dict[str, Any]
    revoked: bool = False

    @property
    def client_id(self) -> str:
        return str(self.claims.get("client_id", ""))

    def check_client(self, client: BrokerClient) -> bool:
        """RFC 7009 section 2.1: the token was issued to this client (or the client is an admin)."""
        return self.client_id == client.client_id or auth.ADMIN in client.roles

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])

    def is_expired(self) -> bool:
        return float(self.claims["exp"]) <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass(frozen=True)
class Urls:
    """The endpoint URLs as the caller should use them, and the audiences accepted in client assertions."""

    base: str
    issuer: str

    @property
    def token(self) -> str:
        return f"{self.base}/oauth/token"

    @property
    def introspection(self) -> str:
        return f"{self.base}/oauth/introspect"

    @property
    def revocation(self) -> str:
        return f"{self.base}/oauth/revoke"

    @property
    def jwks(self) -> str:
        return f"{self.base}/oauth/jwks"

    @property
    def audiences(self) -> list[str]:
        # RFC 7523 section 3: the token endpoint URL; RFC 7523bis / FAPI 2: the issuer identifier
        return list(dict.fromkeys([self.token, self.issuer, f"{self.issuer.rstrip('/')}/oauth/token"]))


def _public_only(jwks: Any) -> KeySet:
    """The asymmetric public keys of a JWK Set (a symmetric ``oct`` key or a private part is never used)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: list[ECKey | OKPKey | RSAKey] = []
    for k in jwks["keys"]:
        if not isinstance(k, dict):
            continue
        cls = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}.get(str(k.get("kty")))
        if cls is None:
            continue
        key = cls.import_key(k)
        keys.append(cls.import_key(key.as_dict(private=False)) if key.is_private else key)  # type: ignore[attr-defined]
    if not keys:
        raise ValueError("no usable public key")
    return KeySet(keys)  # type: ignore[arg-type]


def load_clients(settings: Any) -> dict[str, BrokerClient]:
    """The regulators and admins: ``OAUTH_CLIENTS`` (JSON list or file), plus the development ones in development."""
    entries: list[Any] = list(authclient.DEV_CLIENTS) if settings.environment == "development" else []
    raw = settings.oauth_clients
    if raw:
        text = raw if raw.lstrip().startswith("[") else Path(raw).read_text("utf-8")
        extra = json.loads(text)
        if not isinstance(extra, list):
            raise ValueError("OAUTH_CLIENTS must be a JSON list of clients")
        entries += extra
    out: dict[str, BrokerClient] = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("client_id"), str) or not 1 <= len(e["client_id"]) <= 200:
            raise ValueError(f"OAUTH_CLIENTS: an entry needs a client_id: {str(e)[:100]}")
        cid = e["client_id"]
        roles = frozenset([e["role"]] if "role" in e else e.get("roles") or [])
        if not roles or not roles <= CLIENT_ROLES:
            raise ValueError(f"OAUTH_CLIENTS: {cid!r} needs role regulator or admin (participants are in the registry)")
        if cid in out:
            raise ValueError(f"OAUTH_CLIENTS: {cid!r} appears twice")
        jwks, jwks_uri = e.get("jwks"), e.get("jwks_uri")
        if (jwks is None) == (jwks_uri is None):
            raise ValueError(f"OAUTH_CLIENTS: {cid!r} needs jwks or jwks_uri (one of them)")
        if jwks is not None:
            _public_only(jwks)  # fails now rather than at the first token request
            if settings.environment != "development" and any(authclient.is_dev_key(k) for k in jwks["keys"]):
                raise ValueError(f"OAUTH_CLIENTS: {cid!r} uses a development key outside development mode")
        elif not str(jwks_uri).startswith("https://") and settings.environment != "development":
            raise ValueError(f"OAUTH_CLIENTS: the jwks_uri of {cid!r} must be https")
        out[cid] = BrokerClient(cid, roles, participant=False, jwks=jwks, jwks_uri=jwks_uri)
    return out


def _signing_keys(settings: Any) -> tuple[ECKey | OKPKey | RSAKey, list[dict[str, Any]]]:
    """The key signing access tokens, and the public keys to publish (``OAUTH_SIGNING_KEY`` may be a
    JWK Set: its first key signs, the others are only published, for a rotation)."""
    raw: Any = json.loads(settings.oauth_signing_key) if settings.oauth_signing_key else authclient.DEV_SIGNING_KEY
    keys = raw["keys"] if isinstance(raw, dict) and "keys" in raw else [raw]
    if settings.environment != "development" and (not settings.oauth_signing_key or any(authclient.is_dev_key(k) for k in keys)):
        raise ValueError("OAUTH_SIGNING_KEY must be set, and not to the development key, outside development mode")
    signer = authclient.load_private_key(keys[0])
    if authclient.signing_alg(signer) not in auth.ACCESS_TOKEN_ALGS:
        raise ValueError(f"OAUTH_SIGNING_KEY must be an EC P-256 or Ed25519 key ({', '.join(auth.ACCESS_TOKEN_ALGS)})")
    published = []
    for k in keys:
        cls = {"EC": ECKey, "OKP": OKPKey}.get(str(k.get("kty")))
        if cls is None:
            raise ValueError("OAUTH_SIGNING_KEY: only EC P-256 and Ed25519 keys")
        key = cls.import_key(k)
        key.ensure_kid()
        pub = key.as_dict(private=False)
        pub.setdefault("use", "sig")
        pub.setdefault("alg", authclient.signing_alg(key) if key.is_private else ("ES256" if cls is ECKey else "Ed25519"))
        published.append(pub)
    return signer, published


@dataclass
class _JwksEntry:
    keys: KeySet
    kids: set[str]
    at: float


class Authority:
    """The long-lived state of the authorization server of one registry process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        s = rt.settings
        self.settings = s
        self.issuer = s.oauth_issuer
        self.audience = s.oauth_audience or s.oauth_issuer
        self.ttl_s = s.oauth_token_ttl_s
        self.clients = load_clients(s)
        self.signer, self.public_keys = _signing_keys(s)
        self.alg = authclient.signing_alg(self.signer)
        self._own_keys = KeySet.import_key_set({"keys": self.public_keys})  # type: ignore[typeddict-item]
        self._jwks_cache: dict[str, _JwksEntry] = {}
        self._purged_at = 0.0
        self.verifiers: list[auth.TokenVerifier] = []

    # -- URLs and metadata

    def urls(self, request: Request) -> Urls:
        if self.settings.environment == "development":
            base = str(request.base_url).rstrip("/")
        else:
            base = self.issuer.rstrip("/")
        return Urls(base=base, issuer=self.issuer)

    def metadata(self, urls: Urls) -> dict[str, Any]:
        """RFC 8414 section 2 metadata (no authorization endpoint: ``response_types_supported`` is empty)."""
        auth_methods = [PRIVATE_KEY_JWT]
        algs = list(ASSERTION_ALGS)
        return {
            "issuer": self.issuer,
            "token_endpoint": urls.token,
            "jwks_uri": urls.jwks,
            "scopes_supported": list(auth.SCOPES),
            "response_types_supported": [],
            "grant_types_supported": [ClientCredentialsGrant.GRANT_TYPE],
            "token_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": algs,
            "introspection_endpoint": urls.introspection,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_signing_alg_values_supported": algs,
            "revocation_endpoint": urls.revocation,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_signing_alg_values_supported": algs,
            "access_token_signing_alg_values_supported": list(auth.ACCESS_TOKEN_ALGS),  # not registered, informative
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(k) for k in self.public_keys]}

    # -- clients and their keys (async: called from the worker thread through anyio.from_thread)

    async def find_client(self, client_id: str) -> BrokerClient | None:
        if client_id in self.clients:
            return self.clients[client_id]
        try:
            p = await service.get_participant(self.rt, participant_id=client_id)
        except NotFound:
            return None
        return BrokerClient(client_id, frozenset(p["roles"]), participant=True, status=p["status"], jwks=p.get("jwks"),
                            jwks_uri=p.get("jwks_uri"))

    async def client_keys(self, client: BrokerClient, kid: str | None) -> KeySet:
        """The client's public keys: its inline ``jwks``, or its ``jwks_uri`` (cached; refetched for an unknown ``kid``)."""
        if client.jwks is not None:
            try:
                return _public_only(client.jwks)
            except (ValueError, JoseError):
                raise InvalidClientError(description="the client's registered jwks holds no usable public key") from None
        if not client.jwks_uri:
            raise InvalidClientError(description="the client has no registered keys (jwks or jwks_uri)")
        now = time.monotonic()
        cached = self._jwks_cache.get(client.jwks_uri)
        if cached and now - cached.at < JWKS_CACHE_S and (kid is None or kid in cached.kids or now - cached.at < JWKS_MIN_REFETCH_S):
            return cached.keys
        try:
            async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as http:
                async with http.stream("GET", client.jwks_uri, headers={"Accept": "application/json"}) as r:
                    r.raise_for_status()
                    body = b""
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > JWKS_MAX_BYTES:
                            raise ValueError("jwks_uri answer too large")
            keys = _public_only(json.loads(body))
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            log.warning("could not get the keys of %s from %s: %s", client.client_id, client.jwks_uri, exc)
            if cached:  # keep working on the keys we had
                return cached.keys
            raise InvalidClientError(description="the client's jwks_uri could not be fetched") from None
        self._jwks_cache[client.jwks_uri] = _JwksEntry(keys, {str(k.kid) for k in keys}, now)
        return keys

    # -- single-use assertions and revocations (the database)

    async def remember_jti(self, client_id: str, jti: str, exp: float) -> bool:
        """Record a client assertion's ``jti`` until it expires; False if it was used before (a replay)."""
        t = models.oauth_used_jti
        now = datetime.now(UTC)
        purge = time.monotonic() - self._purged_at > 60  # expired ids go at most once a minute
        try:
            async with self.rt.db.unit_of_work() as s:
                if purge:
                    await s.execute(delete(t).where(t.c.expires_at < now))
                await s.execute(t.insert().values(client_id=client_id, jti=jti, expires_at=datetime.fromtimestamp(exp + LEEWAY_S, UTC)))
        except IntegrityError:
            return False
        if purge:
            self._purged_at = time.monotonic()
        return True

    async def is_revoked(self, jti: str) -> bool:
        t = models.oauth_revoked_tokens
        async with self.rt.db.sessions() as s:
            return (await s.execute(select(t.c.jti).where(t.c.jti == jti))).first() is not None

    async def revoke(self, claims: dict[str, Any], revoked_by: str) -> None:
        """Keep the token's ``jti`` until it expires, and publish ``registry.events.oauth_token_revoked``."""
        t = models.oauth_revoked_tokens
        now = datetime.now(UTC)
        jti, exp, client_id = str(claims["jti"]), int(claims["exp"]), str(claims["client_id"])
        try:
            async with self.rt.db.unit_of_work() as s:
                await s.execute(delete(t).where(t.c.expires_at < now))
                if (await s.execute(select(t.c.jti).where(t.c.jti == jti))).first() is not None:
                    return
                await s.execute(t.insert().values(jti=jti, client_id=client_id, expires_at=datetime.fromtimestamp(exp, UTC),
                                                  revoked_at=now, revoked_by=revoked_by))
                await add_event(s, models.outbox, auth.TOKEN_REVOKED, auth.TOKEN_REVOKED,
                                {"jti": jti, "client_id": client_id, "exp": exp, "revoked_by": revoked_by,
                                 "revoked_at": now.isoformat().replace("+00:00", "Z")})
        except IntegrityError:  # revoked by a concurrent request
            return
        log.info("access token %s of %s revoked by %s", jti, client_id, revoked_by)
        for v in self.verifiers:
            v.revoke(jti, exp)
        self.rt.events_committed()

    def forget_keys(self, jwks_uri: str | None) -> None:
        """Drop the cached keys of a ``jwks_uri`` (its participant's entry changed: a key may have been revoked)."""
        if jwks_uri:
            self._jwks_cache.pop(jwks_uri, None)

    async def verification_material(self) -> dict[str, Any]:
        """The answer of ``registry.oauth.jwks``: the issuer, the public keys and the revoked, unexpired token ids."""
        t = models.oauth_revoked_tokens
        async with self.rt.db.sessions() as s:
            rows = (await s.execute(select(t.c.jti, t.c.expires_at).where(t.c.expires_at > datetime.now(UTC))
                                    .order_by(t.c.revoked_at.desc()).limit(MAX_REVOKED_IN_REPLY))).all()
        revoked = [{"jti": r.jti, "exp": int((r.expires_at if r.expires_at.tzinfo else r.expires_at.replace(tzinfo=UTC)).timestamp())}
                   for r in rows]
        # participants not active: their tokens already issued stop working in every verifier, including one
        # that starts after the suspension (it never saw the event)
        p = models.participants
        async with self.rt.db.sessions() as s:
            inactive = sorted((await s.execute(select(p.c.id).where(p.c.status != "active").limit(MAX_REVOKED_IN_REPLY))).scalars())
        return {"issuer": self.issuer, "keys": self.jwks()["keys"], "revoked": revoked, "inactive": inactive}

    def token_verifier(self) -> auth.TokenVerifier:
        """A :class:`~shared.auth.TokenVerifier` for this registry's own routes: fed here, without NATS."""
        v = auth.TokenVerifier(issuer=self.issuer, audience=self.audience, fetch=self.verification_material,
                               max_token_ttl_s=self.ttl_s, leeway_s=LEEWAY_S)
        self.verifiers.append(v)
        return v

    # -- access tokens

    def sign_access_token(self, client: BrokerClient, scope: str) -> str:
        """An RFC 9068 section 2 JWT access token."""
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": client.client_id, "client_id": client.client_id, "aud": self.audience,
            "iat": now, "exp": now + self.ttl_s, "jti": secrets.token_urlsafe(18), "scope": scope,
            "roles": sorted(client.roles),
        }
        header = {"alg": self.alg, "typ": auth.ACCESS_TOKEN_TYP, "kid": str(self.signer.kid)}
        return jwt.encode(header, claims, self.signer, algorithms=[self.alg])

    def read_own_token(self, token: str) -> dict[str, Any] | None:
        """The claims of a token we issued (signature, ``iss``, ``typ`` checked; not ``exp``), else None."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
            if str(header.get("typ", "")).lower() not in (auth.ACCESS_TOKEN_TYP, "application/" + auth.ACCESS_TOKEN_TYP):
                return None
            claims = jwt.decode(token, self._own_keys, algorithms=list(auth.ACCESS_TOKEN_ALGS)).claims
        except (JoseError, UnicodeEncodeError, ValueError):
            return None
        if claims.get("iss") != self.issuer or not all(isinstance(claims.get(c), (int, float)) for c in ("exp", "iat")) \
                or not isinstance(claims.get("jti"), str) or not isinstance(claims.get("client_id"), str):
            return None
        return dict(claims)


_authorities: weakref.WeakKeyDictionary[Runtime, Authority] = weakref.WeakKeyDictionary()


def authority_for(rt: Runtime) -> Authority:
    """The :class:`Authority` of this registry runtime (made at first use)."""
    a = _authorities.get(rt)
    if a is None:
        a = _authorities[rt] = Authority(rt)
    return a


# ---- authlib, per request -------------------------------------------------------------------------------------


class _FormPayload(OAuth2Payload):
    def __init__(self, form: dict[str, str]) -> None:
        self._form = form

    @property
    def data(self) -> dict[str, str]:
        return self._form

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {k: [v] for k, v in self._form.items()}


class _FormRequest(OAuth2Request):
    """An ``OAuth2Request`` from a form body read (and checked) by the route."""

    def __init__(self, uri: str, headers: dict[str, str], form: dict[str, str]) -> None:
        # authlib refuses non-https URIs (except loopback); outside development the URI is the https issuer's,
        # in development any host is let through
        super().__init__("POST", uri if is_secure_transport(uri) else "https://" + uri.split("://", 1)[-1], headers=headers)
        self.payload = _FormPayload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


def _description(text: str) -> str:
    """An ``error_description`` within RFC 6749's allowed characters (section 5.2)."""
    return "".join(ch if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\' else "'" if ch == '"' else " " for ch in text)[:300]


class _ClientAssertion(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523 section 3) with the broker's rules: an algorithm allow-list, a short ``exp``,
    ``client_id`` (if sent) = ``sub``, the keys of the registry or the settings, a stored single-use ``jti``,
    and only active participants."""

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(self, server: _Server) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY_S)
        self.server = server
        self._kid: str | None = None
        self._client_id_param: str | None = None

    def __call__(self, query_client: Any, request: Any) -> Any:
        self._client_id_param = request.form.get("client_id")
        return super().__call__(query_client, request)

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        headers, claims = super().extract_assertion(assertion)
        if headers.get("alg") not in ASSERTION_ALGS:
            raise InvalidClientError(description=f"the assertion must be signed with one of {', '.join(ASSERTION_ALGS)}")
        kid = headers.get("kid")
        self._kid = kid if isinstance(kid, str) else None
        if self._client_id_param is not None and claims.get("sub") != self._client_id_param:
            # RFC 7521 section 4.2: client_id, when present, identifies the same client
            raise InvalidClientError(description="client_id does not match the subject of the assertion")
        return headers, claims

    def get_audiences(self) -> list[str]:
        return self.server.audiences

    def resolve_client_public_key(self, client: BrokerClient) -> KeySet:
        return anyio.from_thread.run(self.server.authority.client_keys, client, self._kid)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=list(ASSERTION_ALGS))
        except JoseError as exc:
            raise InvalidClientError(description=_description(exc.description or exc.error or "invalid assertion")) from None
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: Any) -> None:
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp > time.time() + MAX_ASSERTION_LIFETIME_S + LEEWAY_S:
            raise InvalidClientError(description=f"the assertion must expire within {MAX_ASSERTION_LIFETIME_S} seconds")
        super().verify_claims(claims)

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not 1 <= len(jti) <= 200:
            raise InvalidClientError(description="jti must be a string of 1 to 200 characters")
        return bool(anyio.from_thread.run(self.server.authority.remember_jti, str(claims["sub"]), jti, float(claims["exp"])))

    def authenticate_client(self, client: BrokerClient) -> BrokerClient:
        if client.status != "active":
            raise InvalidClientError(description=f"the participant is {client.status}")
        return super().authenticate_client(client)  # type: ignore[no-any-return]


class _ClientCredentialsGrant(ClientCredentialsGrant):
    """RFC 6749 section 4.4, ``private_key_jwt`` only; a scope outside the client's roles is ``invalid_scope``."""

    TOKEN_ENDPOINT_AUTH_METHODS = [PRIVATE_KEY_JWT]

    def validate_requested_scope(self) -> None:
        super().validate_requested_scope()  # every scope exists (scopes_supported)
        scope = self.request.payload.scope
        if scope is not None and self.client.get_allowed_scope(scope) is None:
            may = " ".join(s for s in auth.SCOPES if s in self.client.scopes)
            raise InvalidScopeError(description=f"this client may ask for: {may}")


class _TokenGenerator(JWTBearerTokenGenerator):
    """authlib's RFC 9068 generator, signing with an explicit algorithm (authlib's would allow only joserfc's
    recommended ones, which exclude Ed25519) and adding ``roles``."""

    def __init__(self, authority: Authority) -> None:
        super().__init__(issuer=authority.issuer, alg=authority.alg, expires_generator=authority.ttl_s)
        self.authority = authority

    def access_token_generator(self, client: BrokerClient, grant_type: str, user: Any, scope: str) -> str:  # type: ignore[override]
        return self.authority.sign_access_token(client, scope)


class _Introspection(IntrospectionEndpoint):
    """RFC 7662: a client may introspect its own tokens, an admin any; others learn ``active: false``."""

    CLIENT_AUTH_METHODS = [PRIVATE_KEY_JWT]

    def query_token(self, token_string: str, token_type_hint: str | None) -> AccessToken | None:
        return self.server.load_token(token_string)

    def check_permission(self, token: AccessToken, client: BrokerClient, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: AccessToken) -> dict[str, Any]:
        c = token.claims
        return {"active": True, "scope": c.get("scope", ""), "client_id": c["client_id"], "token_type": "Bearer",
                "exp": c["exp"], "iat": c["iat"], "sub": c.get("sub"), "aud": c.get("aud"), "iss": c["iss"], "jti": c["jti"],
                "roles": c.get("roles", [])}


class _Revocation(RevocationEndpoint):
    """RFC 7009: the owner of a token (or an admin) revokes it; unknown or invalid tokens are a 200 (section 2.2)."""

    CLIENT_AUTH_METHODS = [PRIVATE_KEY_JWT]

    def query_token(self, token_string: str, token_type_hint: str | None) -> AccessToken | None:
        return self.server.load_token(token_string)

    def revoke_token(self, token: AccessToken, request: Any) -> None:
        if token.is_expired() or token.is_revoked():
            return
        anyio.from_thread.run(self.server.authority.revoke, token.claims, request.client.client_id)


class _Server(AuthorizationServer):
    """authlib's authorization server for one request (so that per-request state needs no locks)."""

    def __init__(self, authority: Authority, urls: Urls, endpoint_url: str) -> None:
        super().__init__(scopes_supported=list(auth.SCOPES))
        self.authority = authority
        self.audiences = list(dict.fromkeys([*urls.audiences, endpoint_url]))
        self.register_token_generator("default", _TokenGenerator(authority))
        self.register_client_auth_method(PRIVATE_KEY_JWT, _ClientAssertion(self))
        self.register_grant(_ClientCredentialsGrant)
        self.register_endpoint(_Introspection)
        self.register_endpoint(_Revocation)

    def query_client(self, client_id: str) -> BrokerClient | None:
        return anyio.from_thread.run(self.authority.find_client, client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        # the token is a self-contained JWT: nothing to store; log who got what (never the token)
        claims = json.loads(jws.extract_compact(token["access_token"].encode("ascii")).payload)
        log.info("access token %s issued to %s, scope %r", claims["jti"], claims["client_id"], claims.get("scope"))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def load_token(self, token_string: str) -> AccessToken | None:
        claims = self.authority.read_own_token(token_string)
        if claims is None:
            return None
        return AccessToken(claims, revoked=bool(anyio.from_thread.run(self.authority.is_revoked, str(claims["jti"]))))

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        assert isinstance(request, OAuth2Request)
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        content = json.dumps(body) if isinstance(body, dict) else str(body or "")
        return Response(content, status_code=status, headers=dict(headers), media_type="application/json")


# ---- routes ---------------------------------------------------------------------------------------------------


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": _description(description)}, status_code=status, headers=NO_STORE)


async def _read_form(request: Request) -> dict[str, str] | JSONResponse:
    """The ``application/x-www-form-urlencoded`` body, each parameter once (RFC 6749 section 3.2)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return _oauth_error(400, "invalid_request", "the body is not a valid form")
    form: dict[str, str] = {}
    for k, v in pairs:
        if k in form:
            return _oauth_error(400, "invalid_request", f"the parameter {k} is repeated")
        form[k] = v
    return form


async def _run(request: Request, endpoint: str) -> Response:
    authority = authority_for(_rt(request))
    urls = authority.urls(request)
    form = await _read_form(request)
    if isinstance(form, JSONResponse):
        return form
    url = {"token": urls.token, "introspection": urls.introspection, "revocation": urls.revocation}[endpoint]
    if endpoint == "token" and "grant_type" not in form:
        return _oauth_error(400, "invalid_request", "grant_type is missing")
    oauth_request = _FormRequest(url, {k: v for k, v in request.headers.items()}, form)
    server = _Server(authority, urls, url)
    if endpoint == "token":
        work = functools.partial(server.create_token_response, oauth_request)
    else:
        work = functools.partial(server.create_endpoint_response, endpoint, oauth_request)
    return await anyio.to_thread.run_sync(work)  # type: ignore[no-any-return]


_FORM_DOC = {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
    "client_assertion_type": {"type": "string", "enum": ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]},
    "client_assertion": {"type": "string", "description": "a JWT signed with the client's key (RFC 7523 section 3)"},
}, "required": ["client_assertion_type", "client_assertion"]}}}


_OAUTH_ERROR = {"description": "an OAuth 2.0 error (RFC 6749 section 5.2; 401: the client could not authenticate)",
                "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "error": {"type": "string"}, "error_description": {"type": "string"}}, "required": ["error"]}}}}
OAUTH_ERRORS: dict[int | str, dict[str, Any]] = {400: _OAUTH_ERROR, 401: _OAUTH_ERROR}


def _form_doc(**props: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(_FORM_DOC))
    schema = doc["application/x-www-form-urlencoded"]["schema"]
    schema["properties"].update(props)
    schema["required"] += [k for k, v in props.items() if v.pop("required", False)]
    return {"requestBody": {"required": True, "content": doc}}


@router.post("/oauth/token", responses=OAUTH_ERRORS, openapi_extra=_form_doc(grant_type={"type": "string", "enum": ["client_credentials"], "required": True},
                                                     scope={"type": "string", "description": "space-separated: holder recipient regulator admin"}))
async def token_endpoint(request: Request) -> Response:
    """Access token for the client credentials grant (RFC 6749 section 4.4) with ``private_key_jwt`` (RFC 7523)."""
    return await _run(request, "token")


@router.post("/oauth/introspect", responses=OAUTH_ERRORS, openapi_extra=_form_doc(token={"type": "string", "required": True},
                                                          token_type_hint={"type": "string"}))
async def introspection_endpoint(request: Request) -> Response:
    """Token introspection (RFC 7662 section 2); the caller authenticates with ``private_key_jwt``."""
    return await _run(request, "introspection")


@router.post("/oauth/revoke", responses=OAUTH_ERRORS, openapi_extra=_form_doc(token={"type": "string", "required": True},
                                                      token_type_hint={"type": "string"}))
async def revocation_endpoint(request: Request) -> Response:
    """Token revocation (RFC 7009 section 2); the caller authenticates with ``private_key_jwt``."""
    return await _run(request, "revocation")


@router.get("/oauth/jwks")
async def jwks_endpoint(request: Request) -> Response:
    """The keys verifying the access tokens (RFC 7517 section 5), the metadata's ``jwks_uri``."""
    return JSONResponse(authority_for(_rt(request)).jwks(), headers={"Cache-Control": "public, max-age=300"})


@router.get("/.well-known/oauth-authorization-server")
async def metadata_endpoint(request: Request) -> Response:
    """Authorization server metadata (RFC 8414 section 3)."""
    authority = authority_for(_rt(request))
    return JSONResponse(authority.metadata(authority.urls(request)), headers={"Cache-Control": "public, max-age=300"})


# ---- NATS -----------------------------------------------------------------------------------------------------


async def register_handlers(rt: Runtime) -> None:
    """Serve ``registry.oauth.jwks`` (the verification keys and the revoked token ids, for shared.auth)."""
    authority = authority_for(rt)

    async def jwks_get(_data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        return await authority.verification_material()

    await rt.require_bus().serve(subjects.REGISTRY_OAUTH_JWKS, jwks_get, queue="registry")


__all__ = ["ASSERTION_ALGS", "AccessToken", "Authority", "BrokerClient", "authority_for", "load_clients", "register_handlers", "router"]
