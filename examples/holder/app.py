"""Reference data holder: serves real-format files (Enedis, GRDF, Green Button, water, MesInfos...).

Implements the holder export contract (``examples/contracts/holder-export.openapi.json``)::

    GET /datasets/{dataset}/records?cursor=&limit=&from=&to=     Authorization: Bearer <token of the customer>
    -> 200 {"records": [...], "next_cursor": "..."}    (no next_cursor: last page)

Cursors are opaque and stable: the same cursor always returns the same page. ``from``/``to``
(optional, inclusive calendar days ``YYYY-MM-DD``) keep only the records whose day
(:func:`shared.catalogue.record_day`) is inside the window; records without a day are always
served. A cursor is bound to its query (customer, dataset and window).
Data: the files named by ``HOLDER_FILES`` (separated by ``os.pathsep``), or a generated sample.
Each file belongs to the customer of its meter (``usage_point_id``).

Tokens come from the holder's OAuth 2.0 authorization server (:mod:`examples.holder.oauth`, authlib)::

    GET  /.well-known/oauth-authorization-server   RFC 8414 metadata (scopes: the dataset ids served)
    GET  /oauth/authorize                          RFC 6749 4.1 + RFC 7636 (PKCE S256 required): login page
    POST /oauth/authorize                          username (customer id), password, action=allow|deny
    POST /oauth/token                              authorization_code, refresh_token (rotating); + "sub"
    POST /oauth/revoke                             RFC 7009: the token and the other tokens of its grant
    GET  /grant                                    Bearer: {"sub", "datasets", "expires_at"} or 401

A token reads only its customer's records of the datasets of its scope. Settings (environment):
``HOLDER_OAUTH_CLIENTS`` (JSON list of ``{"client_id", "client_secret", "redirect_uris"}``; default:
``portability-broker`` / ``dev-broker-secret`` with any redirect URI on 127.0.0.1 or localhost),
``HOLDER_DEMO_PASSWORD`` (the demo customers' password, default ``demo``), ``HOLDER_TOKEN_TTL_S``
(default 3600) and ``HOLDER_ISSUER`` (default: the base URL of each request; set it behind a TLS
proxy: the OAuth endpoints need https, or http on a loopback address).

Development only: ``POST /dev/tokens`` issues the tokens of one customer for some datasets without
the login (their refresh needs no client authentication), ``POST /dev/expire-tokens`` expires them,
``POST /dev/revoke-all?customer_id=`` forgets every token of a customer (the holder lost the
consent), and ``/dev/faults`` injects faults into the export endpoint.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import threading
import time
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from shared.catalogue import in_window, parse_file
from shared.catalogue import enedis_v5

from .oauth import (CODE_TTL_S, DEV_TOKENS_CLIENT_ID, AuthorizationCode, HolderAuthorizationServer, IssuedToken, OAuthSettings,
                    oauth_router)

PROBLEM = "application/problem+json"
MAX_LIMIT = 1000


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail}, status_code=status,
                        media_type=PROBLEM, headers=headers)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(min_length=1, max_length=64)
    datasets: list[str] = Field(min_length=1, max_length=20)
    expires_in: int = Field(default=3600, ge=1, le=86400 * 366)


class TokenResponse(BaseModel):
    """RFC 6749 section 5.1 token response."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    refresh_token: str | None = None


class GrantInfo(BaseModel):
    """What a token grants: the customer, the datasets of its scope, and when it expires (Unix seconds)."""

    sub: str
    datasets: list[str]
    expires_at: int


class RecordsPage(BaseModel):
    """One page of records; ``next_cursor`` is absent on the last page; ``total`` (optional) counts all pages' records."""

    records: list[dict[str, Any]]
    next_cursor: str | None = None
    total: int | None = None
    resume_cursor: str | None = None  # on the last page: ask with it later to get only what is new


class Append(BaseModel):
    """New records for one customer's dataset (development and tests)."""

    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(max_length=256)
    dataset: str = Field(max_length=128)
    records: list[dict[str, Any]] = Field(max_length=10_000)


class Faults(BaseModel):
    """Faults to inject (development and tests): every Nth export request answers 500 or 429, each page is slow."""

    model_config = ConfigDict(extra="forbid")
    fail_every: int = Field(default=0, ge=0, description="answer 500 to every Nth export request (0: never)")
    throttle_every: int = Field(default=0, ge=0, description="answer 429 with Retry-After to every Nth request")
    retry_after_s: int = Field(default=1, ge=0, le=60)
    delay_s: float = Field(default=0.0, ge=0, le=30, description="seconds to wait before serving a page")
    repeat_cursor: bool = Field(default=False, description="broken holder: always hand back the cursor it was given")
    ignore_window: bool = Field(default=False, description="a holder that cannot filter by date: `from` and `to` are ignored")


def write_sample(directory: Path) -> list[Path]:
    """Write the generated sample (one meter: a year of daily values and a week of load curve)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, doc in (("sample_daily_consumption.json", enedis_v5.sample_daily()), ("sample_load_curve.json", enedis_v5.sample_load_curve())):
        p = directory / name
        p.write_text(json.dumps(doc, indent=1), "utf-8")
        out.append(p)
    return out


class Store:
    """Customers' records by (customer id, dataset id), and the authorization server's codes and tokens.

    ``tokens``: access token -> ``{"customer_id", "datasets", "expires_at"}`` (+ ``grant_id``, ``client_id``);
    ``refresh_tokens``: refresh token -> ``{"customer_id", "datasets", "expires_in", "grant_id", "client_id"}``.
    A grant (``grant_id``) is one authorization: its code and the tokens issued from it.
    """

    def __init__(self, files: list[Path]) -> None:
        self.data: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for f in files:
            parsed = parse_file(f)
            customer = parsed.subject_key or "customer-1"  # files without a meter or contract id
            self.data.setdefault((customer, parsed.dataset_id), []).extend(parsed.records)
        self.tokens: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.used_codes: dict[str, tuple[str, float]] = {}  # redeemed code -> (grant id, until when to remember it)
        self.export_requests = 0
        self.window_requests = 0  # export requests that named a data window (from/to)
        self.request_log: list[float] = []  # time.time() of each export request
        self.faults = Faults()
        self.lock = threading.Lock()
        self.window_totals: dict[tuple[Any, ...], tuple[int, int]] = {}  # (customer, dataset, window) -> (records seen, inside)

    def customers(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (customer, dataset), recs in list(self.data.items()):
            out.setdefault(customer, {})[dataset] = len(recs)
        return out

    def window_total(self, key: tuple[str, str], window: tuple[date | None, date | None], n: int) -> int:
        """How many of the first ``n`` records of ``key`` (customer, dataset) are inside ``window``; counted
        once per record (the lists only grow), not on every page."""
        cache_key = (*key, *window)
        with self.lock:
            seen, inside = self.window_totals.get(cache_key, (0, 0))
        if seen > n:
            seen, inside = 0, 0
        recs = self.data.get(key, [])
        inside += sum(1 for i in range(seen, n) if in_window(key[1], recs[i], *window))
        with self.lock:
            if len(self.window_totals) >= 1024:
                self.window_totals.clear()
            self.window_totals[cache_key] = (n, inside)
        return inside

    def dataset_ids(self) -> list[str]:
        """Every dataset the holder serves (to some customer)."""
        return sorted({dataset for _, dataset in list(self.data)})

    # -- tokens
    def save_tokens(self, access_token: str, refresh_token: str, *, customer_id: str, datasets: tuple[str, ...] | list[str],
                    expires_in: int, grant_id: str | None, client_id: str | None, replaces: str | None = None) -> bool:
        """Keep an access token and its refresh token; with ``replaces``, only if that refresh token is still
        there, and it goes (rotation, atomically). False if ``replaces`` was unknown or already used."""
        with self.lock:
            if replaces is not None and self.refresh_tokens.pop(replaces, None) is None:
                return False
            grant = {"customer_id": customer_id, "datasets": list(datasets), "grant_id": grant_id, "client_id": client_id}
            self.tokens[access_token] = dict(grant, expires_at=time.time() + expires_in)
            self.refresh_tokens[refresh_token] = dict(grant, expires_in=expires_in)
        return True

    def find_token(self, value: str, kinds: tuple[str, ...] = ("access_token", "refresh_token")) -> IssuedToken | None:
        """The token ``value`` if it is of one of ``kinds`` (the revocation endpoint searches both whatever
        the hint, RFC 7009 section 2.1: a value is never both)."""
        with self.lock:
            access = self.tokens.get(value) if "access_token" in kinds else None
            refresh = self.refresh_tokens.get(value) if "refresh_token" in kinds else None
        if refresh is not None:
            return IssuedToken(value, "refresh_token", refresh["customer_id"], tuple(refresh["datasets"]), refresh.get("client_id"),
                               refresh.get("grant_id"), expires_in=int(refresh["expires_in"]))
        if access is not None:
            return IssuedToken(value, "access_token", access["customer_id"], tuple(access["datasets"]), access.get("client_id"),
                               access.get("grant_id"), expires_at=float(access["expires_at"]))
        return None

    def revoke(self, token: IssuedToken) -> int:
        """Forget ``token`` and every other token of its grant; how many went."""
        with self.lock:
            n = int(self.tokens.pop(token.value, None) is not None) + int(self.refresh_tokens.pop(token.value, None) is not None)
        return n + (self.revoke_grant(token.grant_id) if token.grant_id else 0)

    def revoke_grant(self, grant_id: str) -> int:
        """Forget every token of a grant (and its code, if not redeemed yet); how many went."""
        with self.lock:
            n = 0
            for table in (self.tokens, self.refresh_tokens):
                for value in [v for v, g in table.items() if g.get("grant_id") == grant_id]:
                    del table[value]
                    n += 1
            for code in [c for c, v in self.codes.items() if v.grant_id == grant_id]:
                del self.codes[code]
                n += 1
        return n

    def revoke_customer(self, customer_id: str) -> int:
        """Forget every code and token of a customer (development: the holder lost the consent)."""
        with self.lock:
            n = 0
            for table in (self.tokens, self.refresh_tokens):
                for value in [v for v, g in table.items() if g.get("customer_id") == customer_id]:
                    del table[value]
                    n += 1
            for code in [c for c, v in self.codes.items() if v.customer_id == customer_id]:
                del self.codes[code]
                n += 1
        return n

    # -- authorization codes
    def save_code(self, code: AuthorizationCode) -> None:
        with self.lock:
            now = time.time()
            for value in [c for c, v in self.codes.items() if v.expires_at < now]:
                del self.codes[value]
            for value in [c for c, (_, until) in self.used_codes.items() if until < now]:
                del self.used_codes[value]
            self.codes[code.code] = code

    def take_code(self, value: str) -> AuthorizationCode | None:
        """Redeem a code: it leaves the store (single use, RFC 6749 section 4.1.2). A code redeemed before
        revokes the tokens issued from it and gives None; so does an expired or unknown code."""
        with self.lock:
            code = self.codes.pop(value, None)
            if code is not None:
                self.used_codes[value] = (code.grant_id, code.expires_at + CODE_TTL_S)
            reused = self.used_codes.get(value) if code is None else None
        if reused is not None:
            self.revoke_grant(reused[0])
            return None
        if code is None or code.expires_at < time.time():
            return None
        return code


def _encode_cursor(customer: str, dataset: str, offset: int, window: tuple[date | None, date | None] = (None, None)) -> str:
    """``offset`` is a position in the customer's whole list (not in the window), so that the cursor
    stays stable when records are appended; the window's bounds, when set, are part of the query."""
    value: dict[str, Any] = {"c": customer, "d": dataset, "o": offset}
    for key, bound in zip(("f", "t"), window):
        if bound is not None:
            value[key] = bound.isoformat()
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    pad = "=" * (-len(cursor) % 4)
    value = json.loads(base64.urlsafe_b64decode((cursor + pad).encode()))
    if not isinstance(value, dict) or not isinstance(value.get("o"), int) or value["o"] < 0:
        raise ValueError("bad cursor")
    return value


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_WINDOW_DOC = ("{} day of the data window, inclusive (YYYY-MM-DD): serve only the records about {} (a record's day "
               "as its dataset type's time convention defines it); records without a day (a contract, an address) are "
               "always served. Optional: a holder that cannot filter by date may ignore it, the broker drops records "
               "outside the consent's window anyway. Send the same `from` and `to` with every page of a walk and with a "
               "resume_cursor: a cursor belongs to its window.")
DateParam = Annotated[str | None, WithJsonSchema({"type": "string", "format": "date"})]


def _window_bound(name: str, value: str | None) -> date | None:
    """The day ``value`` (``YYYY-MM-DD``), None when absent; ValueError when it is not a date."""
    if value is None:
        return None
    if not _ISO_DATE.fullmatch(value):
        raise ValueError(f"`{name}` is not a date (YYYY-MM-DD): {value[:40]!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"`{name}` is not a date (YYYY-MM-DD): {value!r}") from None


def create_app(files: list[Path] | None = None, *, oauth: OAuthSettings | None = None) -> FastAPI:
    """The holder app over ``files`` (default: ``HOLDER_FILES`` or the sample); ``oauth`` default: from the environment."""
    if files is None:
        env = os.environ.get("HOLDER_FILES", "")
        files = [Path(p) for p in env.split(os.pathsep) if p] or write_sample(Path(os.environ.get("HOLDER_SAMPLE_DIR", "var/holder-sample")))
    store = Store(files)
    server = HolderAuthorizationServer(store, oauth or OAuthSettings.from_env())
    app = FastAPI(title="Reference data holder", version="0.1.0",
                  description="Implements the broker's holder export contract, with an OAuth 2.0 authorization server.",
                  responses={400: {"description": "a body that is not UTF-8 JSON, or a bad request"}})
    app.state.store = store
    app.state.oauth = server
    app.include_router(oauth_router(server))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def bearer_grant(authorization: str | None) -> dict[str, Any] | JSONResponse:
        """The grant of the request's bearer token (RFC 6750 section 2.1), or the 401 problem (section 3.1)."""
        if not authorization or not authorization.startswith("Bearer "):
            return problem(401, "Unauthorized", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        grant = store.tokens.get(authorization[7:])
        if grant is None or grant["expires_at"] < time.time():
            return problem(401, "Unauthorized", "unknown, expired or revoked token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return grant

    @app.get("/datasets/{dataset}/records", response_model=None,
             responses={200: {"model": RecordsPage, "description": "a page of records"}, 401: {"description": "no or unknown token"},
                        403: {"description": "token does not cover this dataset"},
                        400: {"description": "bad cursor (not issued by the holder, or for another query), or `from`/`to` "
                                             "not a date, or `from` after `to`"}})
    def records(dataset: str, authorization: str | None = Header(default=None), cursor: str | None = Query(None, max_length=2048),
                limit: int = Query(100, ge=1, le=MAX_LIMIT),
                date_from: Annotated[DateParam, Query(alias="from", description=_WINDOW_DOC.format("First", "this day or later"))] = None,
                date_to: Annotated[DateParam, Query(alias="to", description=_WINDOW_DOC.format("Last", "this day or earlier"))] = None) -> Any:
        """A page of the token's customer's records of ``dataset`` (only those of the window ``from``..``to``, when given)."""
        with store.lock:
            store.export_requests += 1
            n = store.export_requests
            store.request_log.append(time.time())
            faults = store.faults
        if faults.delay_s:
            time.sleep(faults.delay_s)
        if faults.fail_every and n % faults.fail_every == 0:
            return problem(500, "Internal Server Error", "injected fault")
        if faults.throttle_every and n % faults.throttle_every == 0:
            return problem(429, "Too Many Requests", "slow down", {"Retry-After": str(faults.retry_after_s)})
        grant = bearer_grant(authorization)
        if isinstance(grant, JSONResponse):
            return grant
        if dataset not in grant["datasets"]:
            return problem(403, "Forbidden", f"the token does not cover dataset {dataset}")
        try:
            window = (_window_bound("from", date_from), _window_bound("to", date_to))
        except ValueError as exc:
            return problem(400, "Bad request", str(exc))
        start, end = window
        if start is not None and end is not None and start > end:
            return problem(400, "Bad request", f"`from` ({start}) is after `to` ({end})")
        if start is not None or end is not None:
            store.window_requests += 1
        if faults.ignore_window:
            window = start, end = None, None
        offset = 0
        if cursor:
            try:
                c = _decode_cursor(cursor)
            except (ValueError, TypeError, UnicodeDecodeError):
                return problem(400, "Bad cursor", "the cursor is not one this holder issued")
            # a cursor's offset is a position in the customer's whole list: one issued without a window (before the
            # window existed, e.g. a recurring consent's resume_cursor) goes on with the window asked now
            windowless = "f" not in c and "t" not in c
            if (c.get("c") != grant["customer_id"] or c.get("d") != dataset
                    or (not windowless and (c.get("f") != (start.isoformat() if start else None)
                                            or c.get("t") != (end.isoformat() if end else None)))):
                return problem(400, "Bad cursor", "the cursor belongs to another query")
            offset = c["o"]
        key = (grant["customer_id"], dataset)
        recs = store.data.get(key, [])
        size = len(recs)  # the lists only grow (appends): what is past size now is for the next request
        windowed = start is not None or end is not None
        if not windowed:
            positions = list(range(offset, min(size, offset + limit + 1)))
        else:
            positions = []  # positions (in the whole list) of this page's records, plus one more if any
            for i in range(offset, size):
                if in_window(dataset, recs[i], start, end):
                    positions.append(i)
                    if len(positions) > limit:
                        break
        body: dict[str, Any] = {"records": [recs[i] for i in positions[:limit]],
                                "total": store.window_total(key, window, size) if windowed else size}
        if len(positions) > limit:
            after = positions[limit - 1] + 1
            body["next_cursor"] = cursor if (faults.repeat_cursor and cursor) else _encode_cursor(grant["customer_id"], dataset, after, window)
        else:
            body["resume_cursor"] = _encode_cursor(grant["customer_id"], dataset, max(offset, size), window)
        return JSONResponse(body)  # records go out as the holder keeps them, without a second validation

    @app.get("/grant", response_model=None, tags=["oauth"],
             responses={200: {"model": GrantInfo, "description": "the token's grant"},
                        401: {"description": "no, unknown, expired or revoked token (problem details)"}})
    def grant_info(authorization: str | None = Header(default=None)) -> Any:
        """The cheap check a client makes after the authorisation (and later): does the holder still know
        this token? Its customer (``sub``), the datasets of its scope and its expiry (Unix seconds)."""
        grant = bearer_grant(authorization)
        if isinstance(grant, JSONResponse):
            return grant
        return JSONResponse({"sub": grant["customer_id"], "datasets": list(grant["datasets"]), "expires_at": int(grant["expires_at"])},
                            headers={"Cache-Control": "no-store"})

    @app.post("/dev/tokens", response_model=TokenResponse, tags=["development"], responses={404: {"description": "no such customer"}})
    def issue_token(body: TokenRequest) -> Any:
        """Development stand-in for the login: a bearer token of ``customer_id`` for ``datasets``, and a
        refresh token that works at ``/oauth/token`` without client authentication."""
        if body.customer_id not in store.customers():
            return problem(404, "Not found", f"no customer {body.customer_id}")
        token, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        store.save_tokens(token, refresh, customer_id=body.customer_id, datasets=list(body.datasets), expires_in=body.expires_in,
                          grant_id=secrets.token_urlsafe(12), client_id=DEV_TOKENS_CLIENT_ID)
        return {"access_token": token, "token_type": "Bearer", "expires_in": body.expires_in, "refresh_token": refresh}

    @app.post("/dev/expire-tokens", tags=["development"])
    def expire_tokens(refresh_too: bool = False) -> dict[str, int]:
        """Expire every access token now (and, with ``refresh_too``, forget every refresh token)."""
        with store.lock:
            for grant in store.tokens.values():
                grant["expires_at"] = 0
            n = len(store.tokens)
            if refresh_too:
                store.refresh_tokens.clear()
        return {"expired": n}

    @app.post("/dev/revoke-all", tags=["development"])
    def revoke_all(customer_id: str = Query(min_length=1, max_length=256)) -> dict[str, int]:
        """Forget every code and token of a customer: the holder lost the consent (its tokens answer 401)."""
        return {"revoked": store.revoke_customer(customer_id)}

    @app.post("/dev/append", tags=["development"])
    def append(body: Append) -> dict[str, int]:
        """New data for a customer (a new day of readings): what an incremental transfer picks up."""
        with store.lock:
            recs = store.data.setdefault((body.customer_id, body.dataset), [])
            recs.extend(body.records)
            return {"records": len(recs)}

    @app.get("/dev/customers", tags=["development"])
    def customers() -> dict[str, Any]:
        """Customers (meter ids) and their record counts by dataset."""
        return {"customers": store.customers()}

    @app.get("/dev/records/{dataset}", tags=["development"])
    def all_records(dataset: str, customer_id: str = Query(max_length=256)) -> dict[str, Any]:
        """Every record the holder would serve for this customer and dataset (for checks)."""
        return {"records": store.data.get((customer_id, dataset), [])}

    @app.get("/dev/stats", tags=["development"])
    def stats(request: Request) -> dict[str, Any]:
        """How many export requests arrived, and when (Unix times)."""
        return {"export_requests": store.export_requests, "window_requests": store.window_requests,
                "request_times": list(store.request_log[-10000:])}

    @app.put("/dev/faults", tags=["development"])
    def set_faults(body: Faults) -> Faults:
        """Inject faults into the export endpoint (tests and demos of failure handling)."""
        store.faults = body
        return body

    return app
