"""Resource-server side of the broker's OAuth 2.0: verify access tokens, and protect FastAPI routes.

The registry issues JWT access tokens (RFC 9068) with the client credentials grant
(services/registry/oauth.py). Every service verifies them locally, without asking the registry
for each request:

- :class:`TokenVerifier` checks a token as RFC 9068 section 4 says: ``typ`` is ``at+jwt``, the
  signature verifies with one of the authorization server's keys (an algorithm of
  :data:`ACCESS_TOKEN_ALGS`, never ``none``), ``iss`` is the configured issuer, ``aud`` names the
  broker, ``exp``/``iat`` hold (with a small leeway, RFC 7519 section 4.1.4), and it carries
  ``sub``, ``client_id`` and ``jti``. It also refuses tokens that were revoked (RFC 7009) and tokens
  of participants suspended or revoked since.
- The keys come over NATS, never HTTP: request/reply ``registry.oauth.jwks`` answers
  ``{"issuer", "keys": [JWK...], "revoked": [{"jti", "exp"}...]}``. The verifier asks at start,
  every ``refresh_s`` seconds, and when a token names an unknown ``kid`` (at most every
  ``min_refetch_s``); it listens to ``registry.events.oauth_token_revoked`` and
  ``registry.events.participant_status_changed`` to drop tokens at once.
- :func:`requires` is a FastAPI dependency factory returning the :class:`Caller`, with RFC 6750
  section 3 errors: 401 + ``WWW-Authenticate: Bearer`` when the token is missing or invalid,
  403 ``insufficient_scope`` when it lacks the scope. Errors are RFC 9457 problem details
  (shared/http.py); call :func:`install_bearer_errors` on the app so that they also carry the
  ``WWW-Authenticate`` header.

Scopes are the roles: ``holder`` and ``recipient`` (participants, by their registry roles),
``regulator`` (read-only: the consent log and metrics) and ``admin`` (registry changes).

Wiring a service (e.g. consent)::

    verifier = TokenVerifier.from_settings(rt.settings)
    app.state.token_verifier = verifier
    install_bearer_errors(app)
    # on start: await verifier.start(rt.require_bus());   on stop: await verifier.stop()

    @router.get("/log/checkpoint")
    async def checkpoint(caller: Caller = Depends(requires("regulator", "admin"))): ...
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from . import envelope, subjects
from .errors import BrokerError, Forbidden, Unauthorized, Unavailable

if TYPE_CHECKING:
    from .bus import Bus
    from .settings import Settings

log = logging.getLogger("shared.auth")

#: scopes, one per role (services/registry/oauth.py grants a client the scopes of its roles only)
HOLDER, RECIPIENT, REGULATOR, ADMIN = "holder", "recipient", "regulator", "admin"
SCOPES: tuple[str, ...] = (HOLDER, RECIPIENT, REGULATOR, ADMIN)
PARTICIPANT_ROLES = frozenset({HOLDER, RECIPIENT})
#: JWS algorithms of the broker's access tokens (RFC 7518 section 3.4, RFC 9864 section 2.2)
ACCESS_TOKEN_ALGS: tuple[str, ...] = ("ES256", "Ed25519")
#: RFC 9068 section 2.1: the ``typ`` header of a JWT access token
ACCESS_TOKEN_TYP = "at+jwt"
#: the event the registry publishes when a token is revoked (RFC 7009): data ``{"jti", "client_id", "exp", ...}``
TOKEN_REVOKED = f"{subjects.REGISTRY_EVENTS}.oauth_token_revoked"
PARTICIPANT_STATUS_CHANGED = f"{subjects.REGISTRY_EVENTS}.participant_status_changed"
REALM = "portability-broker"


@dataclass(frozen=True)
class Caller:
    """Who called: the client, its scopes and roles, and its participant id (None for regulators and admins)."""

    client_id: str
    scopes: frozenset[str]
    roles: frozenset[str]
    participant_id: str | None
    jti: str
    expires_at: int
    claims: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def acting_as(caller: Caller, *, holder_id: str, recipient_id: str, what: str) -> str:
    """In which capacity ``caller`` acts on something whose parties are ``holder_id`` and ``recipient_id``:
    ``"admin"``, ``"holder"`` or ``"recipient"`` (a participant with both roles that is both parties acts as
    the holder). Tenant isolation: raises :class:`Forbidden` (403, ``reason: not_a_party``) for anyone else."""
    if caller.has(ADMIN):
        return ADMIN
    if caller.participant_id is not None:
        if caller.participant_id == holder_id and caller.has(HOLDER):
            return HOLDER
        if caller.participant_id == recipient_id and caller.has(RECIPIENT):
            return RECIPIENT
    raise Forbidden(f"{what} is not one of yours", reason="not_a_party")


def own_party(caller: Caller) -> str | None:
    """The participant whose things a listing is limited to: None for an admin (everything)."""
    if caller.has(ADMIN):
        return None
    if caller.participant_id is None:
        raise Forbidden("only participants and admins list these", reason="not_a_party")
    return caller.participant_id


class BearerError(BrokerError):
    """An RFC 6750 section 3 error: a problem-details body plus a ``WWW-Authenticate`` header."""

    def __init__(self, detail: str, *, www_authenticate: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"WWW-Authenticate": www_authenticate}


def _challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace('"', "'").replace("\\", "/") + '"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


class InvalidToken(BearerError, Unauthorized):
    """401: the token is missing (RFC 6750 section 3.1: no error code then), malformed, expired, revoked or not ours."""

    code, title = "invalid_token", "Invalid access token"

    def __init__(self, detail: str, *, missing: bool = False) -> None:
        super().__init__(detail, www_authenticate=_challenge() if missing else _challenge("invalid_token", detail))
        if missing:
            self.code = "unauthorized"  # type: ignore[misc]


class InsufficientScope(BearerError, Forbidden):
    """403 ``insufficient_scope`` (RFC 6750 section 3.1), naming the scope(s) that would do."""

    code, title = "insufficient_scope", "Insufficient scope"

    def __init__(self, detail: str, *, needed: Iterable[str]) -> None:
        needed = list(needed)
        super().__init__(detail, www_authenticate=_challenge("insufficient_scope", detail, " ".join(needed)), required_scopes=needed)


def install_bearer_errors(app: FastAPI) -> None:
    """Make :class:`BearerError` answers carry their ``WWW-Authenticate`` header (RFC 6750 section 3).

    Without it they are still problem details with the right status (shared/http.py handles every
    :class:`BrokerError`), only without the header.
    """
    from .http import PROBLEM, PROBLEM_SCHEMA, problem_response

    @app.exception_handler(BearerError)
    async def _bearer(_: Request, exc: BearerError) -> Any:
        response = problem_response(exc.to_problem())
        response.headers.update(exc.headers)
        return response

    # the OpenAPI document: every operation that takes a bearer token documents its 401 and 403 answers
    make_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = make_openapi()
            for item in doc.get("paths", {}).values():
                for op in item.values():
                    if isinstance(op, dict) and op.get("security"):
                        for status, what in (("401", "no, or an invalid, access token (RFC 6750 section 3.1)"),
                                             ("403", "the token lacks the scope, or the caller is not a party")):
                            op.setdefault("responses", {}).setdefault(status, {
                                "description": what, "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}})
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


# ---- the verifier -------------------------------------------------------------------------------------------


class TokenVerifier:
    """Verifies the broker's JWT access tokens (RFC 9068 section 4) with keys it keeps up to date.

    ``fetch`` returns the verification material ``{"issuer", "keys", "revoked"}``; with
    :meth:`from_settings` + :meth:`start` it is the ``registry.oauth.jwks`` request over NATS.
    ``jwks`` gives fixed keys instead (tests, or the registry verifying its own tokens).
    """

    def __init__(self, *, issuer: str, audience: str, jwks: Mapping[str, Any] | None = None,
                 fetch: Callable[[], Awaitable[Mapping[str, Any]]] | None = None, leeway_s: int = 30, refresh_s: float = 60.0,
                 min_refetch_s: float = 10.0, max_token_ttl_s: int = 3600) -> None:
        self.issuer, self.audience, self.leeway_s = issuer, audience, leeway_s
        self.refresh_s, self.min_refetch_s, self.max_token_ttl_s = refresh_s, min_refetch_s, max_token_ttl_s
        self._fetch = fetch
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._revoked: dict[str, float] = {}  # jti -> exp
        self._blocked: dict[str, float] = {}  # client_id -> until (participants no longer active)
        self._fetched_at = 0.0
        self._refresh_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        if jwks is not None:
            self.set_keys(jwks)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> TokenVerifier:
        """A verifier for this deployment's issuer and audience; keys come with :meth:`start`."""
        return cls(issuer=settings.oauth_issuer, audience=settings.oauth_audience or settings.oauth_issuer,
                   max_token_ttl_s=settings.oauth_token_ttl_s, **kwargs)

    # ---- keys and deny-lists ----

    def set_keys(self, jwks: Mapping[str, Any]) -> None:
        """Use these public keys (a JWK Set); keys with private parts are refused."""
        keys = [k for k in jwks.get("keys", []) if isinstance(k, Mapping)]
        if any("d" in k for k in keys):
            raise ValueError("the verification keys must be public keys")
        self._keys = KeySet.import_key_set({"keys": keys}) if keys else None  # type: ignore[typeddict-item]
        self._kids = {str(k.kid) for k in self._keys} if self._keys else set()

    def apply(self, material: Mapping[str, Any]) -> None:
        """Take a ``registry.oauth.jwks`` answer: the keys, and the revoked token ids."""
        if material.get("issuer") not in (None, self.issuer):
            log.error("the registry's issuer is %r but this service expects %r (OAUTH_ISSUER): every token will be refused",
                      material.get("issuer"), self.issuer)
        self.set_keys({"keys": list(material.get("keys") or [])})
        for entry in material.get("revoked") or []:
            self.revoke(str(entry["jti"]), float(entry["exp"]))
        if "inactive" in material:  # suspended or revoked participants: refuse their tokens; reactivated ones again
            inactive = {str(x) for x in material.get("inactive") or []}
            for client_id in inactive - set(self._blocked):
                self.block_client(client_id)
            for client_id in set(self._blocked) - inactive:
                self.unblock_client(client_id)
        self._fetched_at = time.monotonic()

    def revoke(self, jti: str, exp: float) -> None:
        """Refuse the token ``jti`` from now on (kept until it would have expired anyway)."""
        self._revoked[jti] = float(exp)

    def block_client(self, client_id: str) -> None:
        """Refuse the tokens already issued to ``client_id`` (a participant suspended or revoked)."""
        self._blocked[client_id] = time.time() + self.max_token_ttl_s + self.leeway_s

    def unblock_client(self, client_id: str) -> None:
        self._blocked.pop(client_id, None)

    def _prune(self) -> None:
        now = time.time()
        for jti in [j for j, exp in self._revoked.items() if exp + self.leeway_s < now]:
            del self._revoked[jti]
        for cid in [c for c, until in self._blocked.items() if until < now]:
            del self._blocked[cid]

    @property
    def ready(self) -> bool:
        """True once keys are known (a readiness check)."""
        return self._keys is not None

    # ---- life cycle over NATS ----

    async def start(self, bus: Bus | None = None) -> None:
        """Listen to revocations on ``bus``, fetch the keys (``registry.oauth.jwks``), and keep them fresh.

        Does not fail when the registry is not up yet: the keys are fetched in the background, and
        :meth:`verify` answers 503 until they are there.
        """
        if bus is not None:
            if self._fetch is None:
                async def fetch() -> Mapping[str, Any]:
                    return await bus.request(subjects.REGISTRY_OAUTH_JWKS, {}, timeout=5.0, no_responder_retries=3)

                self._fetch = fetch
            # subscribe before the first fetch, so that no revocation falls between the two
            self._subs.append(await bus.nc.subscribe(TOKEN_REVOKED, cb=self._on_revoked))
            self._subs.append(await bus.nc.subscribe(PARTICIPANT_STATUS_CHANGED, cb=self._on_status))
        if self._fetch is not None:
            try:
                await self.refresh()
            except BrokerError as exc:
                log.warning("access-token keys not available yet (%s); retrying in the background", exc.detail)
            self._task = asyncio.create_task(self._keep_fresh())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass
        self._subs.clear()

    async def refresh(self) -> None:
        """Fetch the keys and the revoked ids now; raises :class:`Unavailable` when nobody answers."""
        if self._fetch is None:
            return
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            self.apply(await self._fetch())
            self._prune()

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s if self.ready else 2.0)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not refresh the access-token keys: %s", exc)

    async def _on_revoked(self, msg: Any) -> None:
        try:
            data = envelope.decode(msg.data)["data"]
            self.revoke(str(data["jti"]), float(data["exp"]))
        except Exception as exc:  # a malformed event must not stop the subscription
            log.warning("ignored a malformed %s event: %s", TOKEN_REVOKED, exc)

    async def _on_status(self, msg: Any) -> None:
        try:
            participant = envelope.decode(msg.data)["data"]["participant"]
            if participant["status"] == "active":
                self.unblock_client(str(participant["id"]))
            else:
                self.block_client(str(participant["id"]))
        except Exception as exc:
            log.warning("ignored a malformed %s event: %s", PARTICIPANT_STATUS_CHANGED, exc)

    # ---- verification ----

    async def verify(self, token: str) -> Caller:
        """The :class:`Caller` of a valid token; raises :class:`InvalidToken` (401) or :class:`Unavailable` (503)."""
        kid = _kid(token)
        stale = time.monotonic() - self._fetched_at > self.min_refetch_s
        if self._fetch is not None and (self._keys is None or (kid is not None and kid not in self._kids and stale)):
            try:  # a new key after a rotation, or no keys yet
                await self.refresh()
            except BrokerError as exc:
                if self._keys is None:
                    raise Unavailable(f"the access-token keys are not available: {exc.detail}") from None
        return self.verify_now(token)

    def verify_now(self, token: str) -> Caller:
        """As :meth:`verify`, with the keys at hand (no fetch)."""
        if self._keys is None:
            raise Unavailable("the access-token keys are not available")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, UnicodeEncodeError, ValueError):
            raise InvalidToken("the access token is not a JWT") from None
        # RFC 9068 section 4: typ must be at+jwt (or application/at+jwt); this also keeps other JWTs out
        if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYP, "application/" + ACCESS_TOKEN_TYP):
            raise InvalidToken("the token is not a JWT access token (typ at+jwt)")
        if header.get("alg") not in ACCESS_TOKEN_ALGS:
            raise InvalidToken("the token's algorithm is not accepted")
        try:
            decoded = jwt.decode(token, self._keys, algorithms=list(ACCESS_TOKEN_ALGS))
        except JoseError:
            raise InvalidToken("the token's signature does not verify") from None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway_s,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True}, iat={"essential": True}, sub={"essential": True}, jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidToken(f"the token is not valid: {exc.description or exc.error}") from None
        client_id, scope = claims.get("client_id"), claims.get("scope", "")
        if not isinstance(client_id, str) or not client_id or not isinstance(scope, str):
            raise InvalidToken("the token lacks client_id or has a malformed scope")
        jti = str(claims["jti"])
        if jti in self._revoked:
            raise InvalidToken("the token was revoked")
        if client_id in self._blocked and self._blocked[client_id] > time.time():
            raise InvalidToken("the token's client is no longer active")
        roles = claims.get("roles") or []
        roles = frozenset(str(r) for r in roles) if isinstance(roles, list) else frozenset()
        return Caller(client_id=client_id, scopes=frozenset(scope.split()), roles=roles,
                      participant_id=client_id if roles & PARTICIPANT_ROLES else None, jti=jti, expires_at=int(claims["exp"]),
                      claims=dict(claims))


def _kid(token: str) -> str | None:
    try:
        kid = jws.extract_compact(token.encode("ascii")).headers().get("kid")
    except (JoseError, UnicodeEncodeError, ValueError):
        return None
    return str(kid) if kid is not None else None


# ---- FastAPI ------------------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, scheme_name="broker_oauth",
                     description="An access token of the broker (POST /oauth/token of the registry, client credentials + private_key_jwt)")


def satisfies(scopes: frozenset[str], alternatives: Iterable[str]) -> bool:
    """True if ``scopes`` hold every scope of at least one alternative (each a space-separated list)."""
    alternatives = list(alternatives)
    return not alternatives or any(set(alt.split()) <= scopes for alt in alternatives)


def requires(*alternatives: str) -> Callable[..., Awaitable[Caller]]:
    """A FastAPI dependency: the :class:`Caller` of a valid bearer token holding the scopes.

    Each argument is one acceptable set of scopes, space-separated: ``requires("regulator", "admin")``
    lets a regulator or an admin in, ``requires("holder recipient")`` needs both, ``requires()``
    any valid token. The verifier is ``app.state.token_verifier`` (a :class:`TokenVerifier`).
    Raises :class:`InvalidToken` (401) or :class:`InsufficientScope` (403), RFC 6750 section 3.
    """
    for alt in alternatives:
        unknown = set(alt.split()) - set(SCOPES)
        if unknown or not alt.split():
            raise ValueError(f"unknown scope(s) in {alt!r}; the scopes are {', '.join(SCOPES)}")

    async def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Caller:
        verifier: TokenVerifier | None = getattr(request.app.state, "token_verifier", None)
        if verifier is None:
            raise RuntimeError("app.state.token_verifier is not set: see shared/auth.py")
        if credentials is None or not credentials.credentials:
            raise InvalidToken("an access token is needed (Authorization: Bearer)", missing=True)
        caller = await verifier.verify(credentials.credentials)
        if not satisfies(caller.scopes, alternatives):
            raise InsufficientScope(f"this needs the scope {' or '.join(repr(a) for a in alternatives)}", needed=alternatives)
        request.state.caller = caller
        return caller

    return dependency


__all__ = [
    "ACCESS_TOKEN_ALGS", "ACCESS_TOKEN_TYP", "ADMIN", "acting_as", "own_party", "BearerError", "Caller", "HOLDER", "InsufficientScope", "InvalidToken",
    "PARTICIPANT_ROLES", "RECIPIENT", "REGULATOR", "SCOPES", "TOKEN_REVOKED", "TokenVerifier", "install_bearer_errors", "requires",
    "satisfies",
]
