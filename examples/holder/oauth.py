"""The reference holder's OAuth 2.0 authorization server, built on authlib.

* RFC 6749 section 4.1: the authorization code grant, with RFC 7636 PKCE (``S256`` only, required);
* RFC 6749 section 6: the refresh token grant; refresh tokens rotate (the old one stops working);
* RFC 7009: token revocation (a token and the other tokens of the same grant);
* RFC 8414: authorization server metadata at ``/.well-known/oauth-authorization-server``.

authlib ships server integrations for Flask and Django only. :class:`HolderAuthorizationServer`
adapts :class:`authlib.oauth2.rfc6749.AuthorizationServer` to Starlette the way authlib's Flask
integration does (``create_oauth2_request``, ``create_json_request``, ``handle_response``,
``send_signal``), with one difference: authlib is synchronous, so the routes read the form body
first (an async dependency) and run authlib in a synchronous endpoint (FastAPI's threadpool).
:class:`HolderOAuth2Request` carries what was read.

Scopes are dataset ids. Clients come from ``HOLDER_OAUTH_CLIENTS``; the customers log in with their
customer id and the demo password (``HOLDER_DEMO_PASSWORD``). Everything is kept in memory, in the
holder's :class:`~examples.holder.app.Store`. The login and error pages speak English and French
(:func:`page_language`: ``?lang=``, the request's ``ui_locales``, or ``Accept-Language``).

The tokens of ``POST /dev/tokens`` belong to the pseudo-client :data:`DEV_TOKENS_CLIENT_ID`: their
refresh works without client authentication (the development stand-in's behaviour, kept), or with
the credentials of any registered client.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import (AuthorizationCodeGrant, AuthorizationCodeMixin, AuthorizationServer, ClientMixin, InvalidClientError,
                                    InvalidGrantError, InvalidRequestError, InvalidScopeError, JsonPayload, JsonRequest,
                                    OAuth2Error, OAuth2Payload, OAuth2Request, RefreshTokenGrant, TokenMixin)
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from starlette.templating import Jinja2Templates

if TYPE_CHECKING:
    from .app import Store

log = logging.getLogger("examples.holder.oauth")

DEV_CLIENT_ID = "portability-broker"
DEV_CLIENT_SECRET = "dev-broker-secret"  # noqa: S105 - the public development secret (shared.settings.DEV_HOLDER_CLIENT_SECRET)
DEV_TOKENS_CLIENT_ID = "holder-dev-tokens"  # the pseudo-client the tokens of POST /dev/tokens are issued to
DEFAULT_DEMO_PASSWORD = "demo"  # noqa: S105 - the demo customers' password
DEFAULT_TOKEN_TTL_S = 3600
CODE_TTL_S = 600  # RFC 6749 section 4.1.2: "a maximum authorization code lifetime of 10 minutes is RECOMMENDED"
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # RFC 6749 section 2.3.1
DEV_TOKENS_AUTH = "dev_tokens"  # the client authentication "method" of an unauthenticated /dev/tokens refresh
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
IDENTITY_SCOPE = "openid"  # who the customer is, no dataset: what a client's sign-in asks (OpenID Connect's scope name)
MAX_FORM_FIELDS = 64
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
# the HTML pages: no caching (they carry the request), no framing (clickjacking of the Allow button)
PAGE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"}
_UNSAFE_IN_ERRORS = re.compile(r'[^\x20-\x21\x23-\x5b\x5d-\x7e]')
# the texts of the HTML pages, by language (see page_language); the OAuth error codes and authlib's
# descriptions stay as the RFCs write them
PAGE_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "lang_name": "English",
        "site": "Reference data holder",
        "footer": "Reference data holder · demonstration only",
        "login_title": "Sign in to share your data",
        "login_heading": "Share your data with {client}",
        "login_asks": "asks to read these datasets of yours:",
        "signin_title": "Sign in",
        "signin_heading": "Sign in to {client}",
        "signin_asks": "asks only to know who you are: none of your data is shared.",
        "login_sent_back": "You will then be sent back to",
        "customer_id": "Customer id",
        "password": "Password",
        "password_hint_demo": "demo customers: password demo",
        "password_hint_env": "demo customers: the password is set by HOLDER_DEMO_PASSWORD",
        "allow": "Allow",
        "deny": "Deny",
        "choose": "Choose Allow or Deny.",
        "wrong_login": "Unknown customer id or wrong password.",
        "error_title": "Authorization request refused",
        "error_heading": "This authorization request cannot be served",
        "error_text": "The application that sent you here made a request this holder does not accept, so you are not sent back to it. "
                      "Go back to that application and try again, or contact it.",
    },
    "fr": {
        "lang_name": "Français",
        "site": "Détenteur de données de référence",
        "footer": "Détenteur de données de référence · démonstration uniquement",
        "login_title": "Connectez-vous pour partager vos données",
        "login_heading": "Partager vos données avec {client}",
        "login_asks": "demande à lire ces jeux de données qui vous concernent :",
        "signin_title": "Connexion",
        "signin_heading": "Se connecter à {client}",
        "signin_asks": "demande seulement qui vous êtes : aucune de vos données n'est partagée.",
        "login_sent_back": "Vous serez ensuite renvoyé vers",
        "customer_id": "Identifiant client",
        "password": "Mot de passe",
        "password_hint_demo": "clients de démonstration : mot de passe demo",
        "password_hint_env": "clients de démonstration : le mot de passe est défini par HOLDER_DEMO_PASSWORD",
        "allow": "Autoriser",
        "deny": "Refuser",
        "choose": "Choisissez Autoriser ou Refuser.",
        "wrong_login": "Identifiant client inconnu ou mot de passe erroné.",
        "error_title": "Demande d'autorisation refusée",
        "error_heading": "Cette demande d'autorisation ne peut pas être traitée",
        "error_text": "L'application qui vous a envoyé ici a fait une demande que ce détenteur n'accepte pas : vous n'y êtes donc pas "
                      "renvoyé. Revenez à cette application et réessayez, ou contactez-la.",
    },
}
DEFAULT_PAGE_LANGUAGE = "en"


def _safe(text: str, limit: int = 200) -> str:
    """``text`` reduced to the characters RFC 6749 section 5.2 allows in ``error_description``."""
    return _UNSAFE_IN_ERRORS.sub("?", text)[:limit]


def _accept_language(header: str) -> list[str]:
    """The language ranges of an ``Accept-Language`` header (RFC 9110 section 12.5.4), most wanted first
    (by ``q``, then by order); those with ``q=0`` (not wanted) or a bad ``q`` are left out."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header[:500].split(",")[:20]):
        tag, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if tag.strip() and 0 < q <= 1:
            ranked.append((-q, i, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def page_language(request: Request) -> str:
    """The language of the holder's pages, a key of :data:`PAGE_TEXTS`: ``?lang=``, else the authorization
    request's ``ui_locales`` (OpenID Connect Core 1.0 section 3.1.2.1: space-separated BCP 47 tags, most
    wanted first), else the browser's ``Accept-Language``; English when none of them names one the pages
    speak. Only the primary subtag counts (``fr-CA`` is ``fr``)."""
    wanted = [request.query_params.get("lang", ""), *request.query_params.get("ui_locales", "")[:200].split()[:10],
              *_accept_language(request.headers.get("accept-language", ""))]
    for tag in wanted:
        code = tag.strip().lower().split("-")[0]
        if code in PAGE_TEXTS:
            return code
    return DEFAULT_PAGE_LANGUAGE


def page_translator(lang: str) -> Callable[..., str]:
    """``t(key, **values)``: the text of ``key`` in ``lang`` (English if it has none), with ``values`` put
    in (the templates escape the result)."""
    table = PAGE_TEXTS[lang]

    def t(key: str, **values: Any) -> str:
        text = table.get(key) or PAGE_TEXTS[DEFAULT_PAGE_LANGUAGE].get(key) or key
        return text.format(**values) if values else text

    return t


# ---------------------------------------------------------------- models (authlib's mixins)

@dataclass(frozen=True)
class Customer:
    """The resource owner (RFC 6749 section 1.1): one of the holder's customers."""

    customer_id: str

    def get_user_id(self) -> str:
        return self.customer_id


@dataclass(frozen=True)
class Client(ClientMixin):
    """A registered OAuth client (RFC 6749 section 2): confidential, with a secret (section 2.3.1).

    ``loopback_redirects``: accept any ``http(s)`` redirect URI on 127.0.0.1 or localhost, whatever
    the port and path (the development client); otherwise the redirect URI must be one of
    ``redirect_uris``, compared as strings (RFC 6749 section 3.1.2.3).
    """

    client_id: str
    client_secret: str | None
    redirect_uris: tuple[str, ...] = ()
    loopback_redirects: bool = False
    client_name: str | None = None
    auth_methods: frozenset[str] = frozenset(CLIENT_AUTH_METHODS)
    grant_types: frozenset[str] = frozenset({"authorization_code", "refresh_token"})

    @property
    def name(self) -> str:
        return self.client_name or self.client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        """None: every authorization request names its ``redirect_uri`` (as OAuth 2.1 requires)."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scope, without repeated datasets; None (invalid_scope, RFC 6749 section 3.3) when empty."""
        names = list(dict.fromkeys(scope_to_list(scope) or []))
        return " ".join(names) if names else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if not self.loopback_redirects:
            return redirect_uri in self.redirect_uris
        try:
            parts = urlsplit(redirect_uri)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            return False
        return (parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS and not parts.username
                and not parts.password and not parts.fragment and "#" not in redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


DEV_TOKENS_CLIENT = Client(DEV_TOKENS_CLIENT_ID, None, client_name="POST /dev/tokens", auth_methods=frozenset({DEV_TOKENS_AUTH}),
                           grant_types=frozenset({"refresh_token"}))


@dataclass(frozen=True)
class AuthorizationCode(AuthorizationCodeMixin):
    """An authorization code (RFC 6749 section 4.1.2) with its PKCE challenge (RFC 7636 section 4.4)."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    customer_id: str
    code_challenge: str
    code_challenge_method: str
    expires_at: float
    grant_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class IssuedToken(TokenMixin):
    """An access or refresh token the holder issued (a view of an entry of ``Store.tokens`` / ``Store.refresh_tokens``).

    ``grant_id`` ties together the tokens of one authorization (its code, the refreshes that followed).
    """

    value: str
    kind: Literal["access_token", "refresh_token"]
    customer_id: str
    datasets: tuple[str, ...]
    client_id: str | None = None
    grant_id: str | None = None
    expires_at: float | None = None  # access tokens
    expires_in: int | None = None  # refresh tokens: the lifetime of the access tokens they get

    def check_client(self, client: ClientMixin) -> bool:
        """RFC 6749 section 6 / RFC 7009 section 2.1: the token was issued to this client. The tokens of
        ``POST /dev/tokens`` (and tokens put into the store by tests) belong to no particular client."""
        return self.client_id in (None, DEV_TOKENS_CLIENT_ID) or client.get_client_id() == self.client_id

    def get_scope(self) -> str:
        return " ".join(self.datasets)

    def get_expires_in(self) -> int:
        return int(self.expires_in or max(0, (self.expires_at or 0) - time.time()))

    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at < time.time()

    def is_revoked(self) -> bool:
        return False  # revoked tokens are forgotten

    def get_user(self) -> Customer:
        return Customer(self.customer_id)


# ---------------------------------------------------------------- settings

class ClientConfig(BaseModel):
    """One entry of ``HOLDER_OAUTH_CLIENTS``."""

    model_config = ConfigDict(extra="forbid")
    client_id: str = Field(min_length=1, max_length=200)
    client_secret: str = Field(min_length=1, max_length=500)
    redirect_uris: list[str] = Field(min_length=1)
    client_name: str | None = Field(default=None, max_length=200)

    @field_validator("redirect_uris")
    @classmethod
    def _absolute_without_fragment(cls, uris: list[str]) -> list[str]:
        """RFC 6749 section 3.1.2: absolute URIs without a fragment."""
        for uri in uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or "#" in uri:
                raise ValueError(f"redirect URI {uri!r} is not an absolute http(s) URI without a fragment")
        return uris


@dataclass(frozen=True)
class OAuthSettings:
    """The authorization server's settings (see :meth:`from_env`)."""

    clients: tuple[Client, ...] = (Client(DEV_CLIENT_ID, DEV_CLIENT_SECRET, loopback_redirects=True, client_name="Portability broker (development)"),)
    demo_password: str = DEFAULT_DEMO_PASSWORD
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    issuer: str | None = None  # None: the base URL of each request

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OAuthSettings:
        """``HOLDER_OAUTH_CLIENTS`` (JSON list of ``{"client_id", "client_secret", "redirect_uris": [...]}``;
        default: the development client ``portability-broker`` / ``dev-broker-secret`` with any loopback
        redirect URI), ``HOLDER_DEMO_PASSWORD`` (default ``demo``), ``HOLDER_TOKEN_TTL_S`` (default 3600)
        and ``HOLDER_ISSUER`` (default: the request's base URL)."""
        env = os.environ if env is None else env
        out = cls()
        raw = env.get("HOLDER_OAUTH_CLIENTS", "").strip()
        if raw:
            try:
                configs = TypeAdapter(list[ClientConfig]).validate_json(raw)
            except ValidationError as exc:
                raise ValueError(f"HOLDER_OAUTH_CLIENTS is not a JSON list of clients: {exc}") from None
            if len({c.client_id for c in configs}) != len(configs):
                raise ValueError("HOLDER_OAUTH_CLIENTS names a client twice")
            clients = tuple(Client(c.client_id, c.client_secret, tuple(c.redirect_uris), client_name=c.client_name) for c in configs)
            out = cls(clients=clients)
        ttl = int(env.get("HOLDER_TOKEN_TTL_S", DEFAULT_TOKEN_TTL_S))
        if ttl < 1:
            raise ValueError("HOLDER_TOKEN_TTL_S must be at least 1")
        issuer = env.get("HOLDER_ISSUER", "").strip().rstrip("/") or None
        return cls(clients=out.clients, demo_password=env.get("HOLDER_DEMO_PASSWORD") or DEFAULT_DEMO_PASSWORD,
                   token_ttl_s=ttl, issuer=issuer)


# ---------------------------------------------------------------- authlib on Starlette

class HolderOAuth2Payload(OAuth2Payload):
    """The OAuth parameters of a request (the query of the authorization endpoint, the form body of the
    token and revocation endpoints), first value of each name in ``data``, every value in ``datalist``."""

    def __init__(self, params: Iterable[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in params:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class HolderOAuth2Request(OAuth2Request):
    """authlib's view of a Starlette request, built from the already-read body (cf. authlib's ``FlaskOAuth2Request``).

    authlib checks the transport here (``InsecureTransportError``): ``uri`` must be https, or http on
    a loopback address (RFC 8252 section 7.3)."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], params: Iterable[tuple[str, str]],
                 form: Mapping[str, str], args: Mapping[str, str]) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = HolderOAuth2Payload(params)
        self._form = dict(form)
        self._args = dict(args)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class HolderJsonPayload(JsonPayload):
    def __init__(self, data: Any) -> None:
        self._data = data

    @property
    def data(self) -> Any:
        return self._data


class HolderJsonRequest(JsonRequest):
    """authlib's view of a JSON request (cf. authlib's ``FlaskJsonRequest``); no endpoint of the holder takes one yet."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], data: Any) -> None:
        super().__init__(method, uri, headers)
        self.payload = HolderJsonPayload(data)


async def read_form(request: Request) -> list[tuple[str, str]]:
    """The ``application/x-www-form-urlencoded`` body of a POST, read before authlib's synchronous code runs."""
    if request.method != "POST":
        return []
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    return [(k, v) for k, v in form.multi_items() if isinstance(v, str)]


class S256CodeChallenge(CodeChallenge):
    """RFC 7636 with ``S256`` only, and required: an authorization request without ``code_challenge``,
    or with ``code_challenge_method`` absent (which means ``plain``, section 4.3) or ``plain``, is refused
    with ``invalid_request`` (section 4.4.1); the token request must then carry the verifier (section 4.5)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def validate_code_challenge(self, grant: AuthorizationCodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: code_challenge with code_challenge_method=S256 (RFC 7636)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (RFC 7636 section 4.3)")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(AuthorizationCodeGrant):
    """RFC 6749 section 4.1 against the holder's store. Codes live 10 minutes and are single-use: the
    first token request that names a code consumes it, whatever its outcome; a second one is refused
    and revokes the tokens issued from that code (section 4.1.2)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: HolderAuthorizationServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.store.save_code(AuthorizationCode(
            code=code, client_id=request.client.get_client_id(), redirect_uri=request.payload.redirect_uri, scope=request.scope,
            customer_id=request.user.customer_id, code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"], expires_at=time.time() + CODE_TTL_S))

    def query_authorization_code(self, code: str, client: ClientMixin) -> AuthorizationCode | None:
        found = self.server.store.take_code(code)
        if found is None or found.client_id != client.get_client_id():
            return None
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing left to do: :meth:`query_authorization_code` took the code out of the store."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Customer:
        return Customer(authorization_code.customer_id)


class RotatingRefreshTokenGrant(RefreshTokenGrant):
    """RFC 6749 section 6 with rotation: each refresh returns a new refresh token and the old one stops
    working (RFC 9700 section 4.14.2). The access tokens issued before stay valid until they expire."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*CLIENT_AUTH_METHODS, DEV_TOKENS_AUTH]
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: HolderAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        return self.server.store.find_token(refresh_token, ("refresh_token",))

    def authenticate_user(self, refresh_token: IssuedToken) -> Customer:
        return refresh_token.get_user()

    def issue_token(self, user: Customer, refresh_token: IssuedToken) -> dict[str, Any]:
        """The new tokens keep the lifetime of the grant's access tokens (``expires_in`` of ``/dev/tokens``)."""
        scope = self.request.payload.scope or refresh_token.get_scope()
        return self.generate_token(user=user, scope=scope, expires_in=refresh_token.expires_in,
                                   include_refresh_token=True)

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        """Nothing left to do: :meth:`HolderAuthorizationServer.save_token` swapped the refresh token atomically."""


class HolderRevocationEndpoint(RevocationEndpoint):
    """RFC 7009: a client revokes an access or refresh token; the holder forgets every token of the same
    grant (section 2.1). Unknown tokens are answered 200 too (section 2.2)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: HolderAuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return self.server.store.find_token(token_string)

    def revoke_token(self, token: IssuedToken, request: OAuth2Request) -> None:
        self.server.store.revoke(token)


class HolderAuthorizationServer(AuthorizationServer):
    """authlib's :class:`~authlib.oauth2.rfc6749.AuthorizationServer` on Starlette, with the holder's store."""

    def __init__(self, store: Store, settings: OAuthSettings) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.clients = {c.client_id: c for c in settings.clients}
        self.register_token_generator("default", self.generate_bearer_token)
        self.register_client_auth_method(DEV_TOKENS_AUTH, self.authenticate_dev_tokens_refresh)
        self.register_grant(CodeGrant, [S256CodeChallenge(required=True)])
        self.register_grant(RotatingRefreshTokenGrant)
        self.register_endpoint(HolderRevocationEndpoint)

    # -- storage
    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Keep the tokens of a token response; a refresh swaps the old refresh token for the new one
        atomically, so that two refreshes with the same refresh token cannot both succeed."""
        old: IssuedToken | None = request.refresh_token
        if old is not None:
            requested = request.payload.scope
            datasets = tuple(dict.fromkeys(scope_to_list(requested))) if requested else old.datasets
            if not self.store.save_tokens(token["access_token"], token["refresh_token"], customer_id=old.customer_id,
                                          datasets=datasets, expires_in=int(token["expires_in"]), grant_id=old.grant_id,
                                          client_id=old.client_id, replaces=old.value):
                raise InvalidGrantError("unknown or used refresh token")
            return
        code: AuthorizationCode = request.authorization_code
        self.store.save_tokens(token["access_token"], token["refresh_token"], customer_id=code.customer_id,
                               datasets=tuple(scope_to_list(code.scope)), expires_in=int(token["expires_in"]),
                               grant_id=code.grant_id, client_id=code.client_id)

    def generate_bearer_token(self, grant_type: str, client: Client, user: Customer | None = None, scope: str | None = None,
                              expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        """An RFC 6749 section 5.1 token response (RFC 6750 bearer token), plus ``sub``: the customer id."""
        token: dict[str, Any] = {"access_token": secrets.token_urlsafe(32), "token_type": "Bearer",
                                 "expires_in": int(expires_in or self.settings.token_ttl_s)}
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(32)
        if scope:
            token["scope"] = scope
        if user is not None:
            token["sub"] = user.customer_id
        return token

    def validate_requested_scope(self, scope: str | None) -> None:
        """RFC 6749 section 3.3: the scope is a list of dataset ids the holder serves (to anyone: a
        customer may authorise a dataset it has no data for)."""
        if scope:
            unknown = sorted(set(scope_to_list(scope)) - set(self.store.dataset_ids()) - {IDENTITY_SCOPE})
            if unknown:
                raise InvalidScopeError(_safe(f"this holder serves no dataset {', '.join(unknown)}"))

    def authenticate_client(self, request: OAuth2Request, methods: list[str], endpoint: str = "token") -> Client:
        """RFC 6749 section 2.3.1 client authentication (authlib's), with an error that names only the methods
        a client can use (401 with ``WWW-Authenticate: Basic`` when no method worked, section 5.2)."""
        try:
            return super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            if error.description and error.description.startswith("The client cannot authenticate"):
                error.description = "client authentication failed: use client_secret_basic or client_secret_post"
            raise

    def authenticate_dev_tokens_refresh(self, query_client: Callable[[str], Client | None], request: OAuth2Request) -> Client | None:
        """Client "authentication" of an unauthenticated refresh of a ``POST /dev/tokens`` token (the
        development stand-in's behaviour). A request without client credentials and an unknown refresh
        token gets ``invalid_grant``, as it did before the holder had an authorization server."""
        if request.headers.get("Authorization") or request.form.get("client_id") or request.form.get("client_secret"):
            return None
        found = self.store.find_token(request.form.get("refresh_token") or "", ("refresh_token",))
        if found is None:
            raise InvalidGrantError("unknown or used refresh token")
        return DEV_TOKENS_CLIENT if found.client_id in (None, DEV_TOKENS_CLIENT_ID) else None

    # -- the framework integration (cf. authlib.integrations.flask_oauth2.AuthorizationServer)
    def issuer(self, request: Request) -> str:
        """RFC 8414 section 2 ``issuer``: ``HOLDER_ISSUER``, or the base URL the request came to."""
        return self.settings.issuer or str(request.base_url).rstrip("/")

    def build_request(self, request: Request, params: Iterable[tuple[str, str]], form: Iterable[tuple[str, str]] = (),
                      single_params: bool = False) -> HolderOAuth2Request:
        """authlib's request for ``request``: ``params`` are the OAuth parameters, ``form`` the body.
        With ``single_params``, a repeated parameter is refused (RFC 6749 section 3.2)."""
        params, form = list(params), list(form)
        if single_params:
            names = [k for k, _ in params]
            repeated = sorted({k for k in names if names.count(k) > 1})
            if repeated:
                raise InvalidRequestError(_safe(f"repeated parameter {', '.join(repeated)}"))
        base = urlsplit(self.issuer(request))
        uri = f"{base.scheme}://{base.netloc}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        return HolderOAuth2Request(request.method, uri, request.headers, params, dict(reversed(form)),
                                   dict(reversed(list(request.query_params.multi_items()))))

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        raise TypeError("build the request with HolderAuthorizationServer.build_request (the body must be read first)")

    def create_json_request(self, request: Any) -> JsonRequest:
        if isinstance(request, JsonRequest):
            return request
        raise TypeError("build the request as a HolderJsonRequest (the body must be read first)")

    def handle_response(self, status: int, body: Any, headers: Iterable[tuple[str, str]]) -> Response:
        content = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        response = Response(content, status_code=status)
        for key, value in headers:
            response.headers.append(key, value)
        return response

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "after_revoke_token":
            log.info("token revoked by client %s", getattr(kwargs.get("client"), "client_id", None))

    # -- the login page
    def check_login(self, username: str, password: str) -> Customer | None:
        """A demo customer: a customer id of the store and the demo password."""
        ok = hmac.compare_digest(password.encode(), self.settings.demo_password.encode())
        return Customer(username) if ok and username in self.store.customers() else None


# ---------------------------------------------------------------- routes

class OAuthTokenResponse(BaseModel):
    """RFC 6749 section 5.1 token response, plus ``sub`` (the customer id)."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str | None = None
    scope: str | None = None
    sub: str | None = None


class OAuthError(BaseModel):
    """RFC 6749 section 5.2 error response."""

    error: str
    error_description: str | None = None


def _form_body(fields: dict[str, str], required: list[str]) -> dict[str, Any]:
    """OpenAPI request body of a form endpoint (the routes read the form themselves)."""
    schema = {"type": "object", "required": required, "properties": {k: {"type": "string", "description": v} for k, v in fields.items()}}
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}}


TOKEN_FORM = _form_body({"grant_type": "authorization_code or refresh_token", "code": "authorization_code: the code",
                         "redirect_uri": "authorization_code: the redirect_uri of the authorization request",
                         "code_verifier": "authorization_code: the PKCE verifier (RFC 7636 section 4.5)",
                         "refresh_token": "refresh_token: the refresh token", "scope": "refresh_token: optional, narrower scope",
                         "client_id": "client_secret_post", "client_secret": "client_secret_post"}, ["grant_type"])
REVOKE_FORM = _form_body({"token": "the access or refresh token", "token_type_hint": "access_token or refresh_token",
                          "client_id": "client_secret_post", "client_secret": "client_secret_post"}, ["token"])


def oauth_router(server: HolderAuthorizationServer) -> APIRouter:
    """The authorization server's routes: metadata, authorization, token and revocation endpoints."""
    router = APIRouter(tags=["oauth"])

    @router.get("/.well-known/oauth-authorization-server")
    def metadata(request: Request) -> dict[str, Any]:
        """RFC 8414 section 3.2 authorization server metadata; ``scopes_supported`` are the datasets the holder serves and
        ``openid`` (who the customer is, nothing else: what a sign-in asks)."""
        issuer = server.issuer(request)
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oauth/authorize",
            "token_endpoint": f"{issuer}/oauth/token",
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "scopes_supported": [*server.store.dataset_ids(), IDENTITY_SCOPE],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        }

    def page(request: Request, name: str, status: int, **context: Any) -> Response:
        """An HTML page in the language of :func:`page_language`, with links to the same URL in the others
        (the OAuth parameters kept, ``lang`` replaced)."""
        lang = page_language(request)
        links = []
        for code, texts in PAGE_TEXTS.items():
            url = request.url.include_query_params(lang=code)
            links.append({"code": code, "name": texts["lang_name"], "href": f"{url.path}?{url.query}"})
        return TEMPLATES.TemplateResponse(request, name, {**context, "lang": lang, "t": page_translator(lang), "languages": links},
                                          status_code=status, headers={**PAGE_HEADERS, "Content-Language": lang})

    def error_page(request: Request, error: OAuth2Error) -> Response:
        return page(request, "error.html", 400, error=error.error, description=error.description)

    def login_page(request: Request, oauth: HolderOAuth2Request, client: Client, status: int = 200,
                   username: str = "", error: str | None = None) -> Response:
        """The login page; ``error``: a key of :data:`PAGE_TEXTS` (``choose``, ``wrong_login``)."""
        redirect = urlsplit(oauth.payload.redirect_uri or "")
        hint = "password_hint_demo" if server.settings.demo_password == DEFAULT_DEMO_PASSWORD else "password_hint_env"
        return page(request, "authorize.html", status, client_name=client.name, client_id=client.client_id,
                    datasets=[s for s in scope_to_list(oauth.scope) or [] if s != IDENTITY_SCOPE], redirect_host=redirect.netloc,
                    username=username,
                    error=error, password_hint=hint, demo_customers=sorted(server.store.customers()),
                    action="?" + request.url.query)

    def authorize(request: Request, form: list[tuple[str, str]]) -> Response:
        """RFC 6749 section 4.1.1 (request) and 4.1.2 (response). Errors about the client or the redirect
        URI are shown to the person (400 page, never a redirect: section 4.1.2.1); the others go back to
        the client's redirect URI with ``error`` and ``state``."""
        try:
            oauth = server.build_request(request, request.query_params.multi_items(), form)
            grant = server.get_consent_grant(oauth)
        except OAuth2Error as error:
            if error.redirect_uri:
                return no_store(server.handle_error_response(None, error))
            return error_page(request, error)
        client: Client = oauth.client
        if request.method == "GET":
            return login_page(request, oauth, client, username=oauth.payload.data.get("login_hint", "")[:256])
        fields = oauth.form
        action, username = fields.get("action"), fields.get("username", "").strip()[:256]
        if action == "deny":
            return no_store(server.create_authorization_response(request=oauth, grant_user=None, grant=grant))
        if action != "allow":
            return login_page(request, oauth, client, 400, username, "choose")
        customer = server.check_login(username, fields.get("password", ""))
        if customer is None:
            return login_page(request, oauth, client, 401, username, "wrong_login")
        return no_store(server.create_authorization_response(request=oauth, grant_user=customer, grant=grant))

    @router.get("/oauth/authorize", response_class=Response, responses={200: {"content": {"text/html": {}}, "description": "the login page"},
                                                                        302: {"description": "back to the client with an error"},
                                                                        400: {"description": "bad client or redirect URI (HTML page)"}})
    def authorize_get(request: Request) -> Response:
        """The authorization endpoint (RFC 6749 section 3.1): checks the request, then shows the login page."""
        return authorize(request, [])

    @router.post("/oauth/authorize", response_class=Response, responses={302: {"description": "back to the client with code or error"},
                                                                         400: {"description": "bad client, redirect URI or action (HTML page)"},
                                                                         401: {"description": "wrong customer id or password (HTML page)"}},
                 openapi_extra=_form_body({"username": "customer id", "password": "password", "action": "allow or deny"}, ["action"]))
    def authorize_post(request: Request, form: list[tuple[str, str]] = Depends(read_form)) -> Response:
        """The login form: ``action=allow`` with the customer's credentials issues a code, ``action=deny`` refuses."""
        return authorize(request, form)

    @router.post("/oauth/token", response_model=None, openapi_extra=TOKEN_FORM,
                 responses={200: {"model": OAuthTokenResponse, "description": "RFC 6749 section 5.1"},
                            400: {"model": OAuthError, "description": "RFC 6749 section 5.2"},
                            401: {"model": OAuthError, "description": "invalid_client"}})
    def token(request: Request, form: list[tuple[str, str]] = Depends(read_form)) -> Response:
        """The token endpoint (RFC 6749 section 3.2): ``authorization_code`` with PKCE (section 4.1.3, RFC 7636
        section 4.5) and ``refresh_token`` (section 6, rotating). Clients authenticate with ``client_secret_basic``
        or ``client_secret_post``; the refresh of a ``POST /dev/tokens`` token needs no client authentication."""
        try:
            oauth = server.build_request(request, form, form, single_params=True)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        return server.create_token_response(oauth)

    @router.post("/oauth/revoke", response_model=None, openapi_extra=REVOKE_FORM,
                 responses={200: {"description": "revoked, or unknown (RFC 7009 section 2.2)"},
                            400: {"model": OAuthError, "description": "RFC 7009 section 2.2.1"},
                            401: {"model": OAuthError, "description": "invalid_client"}})
    def revoke(request: Request, form: list[tuple[str, str]] = Depends(read_form)) -> Response:
        """The revocation endpoint (RFC 7009 section 2.1): forgets the token and the other tokens of its grant."""
        try:
            oauth = server.build_request(request, form, form, single_params=True)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        return server.create_endpoint_response(HolderRevocationEndpoint.ENDPOINT_NAME, oauth)

    return router


def no_store(response: Response) -> Response:
    """RFC 6749 section 10.12 / 5.1: redirects carrying a code and token responses must not be cached."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


__all__ = ["AuthorizationCode", "Client", "Customer", "DEV_CLIENT_ID", "DEV_CLIENT_SECRET", "DEV_TOKENS_CLIENT_ID",
           "HolderAuthorizationServer", "IssuedToken", "OAuthSettings", "OAuthTokenResponse", "oauth_router"]
