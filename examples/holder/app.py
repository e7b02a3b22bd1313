"""Reference data holder: serves real-format files (Enedis, GRDF, Green Button, water, MesInfos...).

Implements the holder export contract (``examples/contracts/holder-export.openapi.json``)::

    GET /datasets/{dataset}/records?cursor=&limit=     Authorization: Bearer <token of the customer>
    -> 200 {"records": [...], "next_cursor": "..."}    (no next_cursor: last page)

Cursors are opaque and stable: the same cursor always returns the same page.
Data: the files named by ``HOLDER_FILES`` (separated by ``os.pathsep``), or a generated sample.
Each file belongs to the customer of its meter (``usage_point_id``).

Until the holder gets its OAuth 2.0 authorization server, ``POST /dev/tokens`` issues the
bearer token of one customer for some datasets (development only).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from shared.catalogue import parse_file
from shared.catalogue import enedis_v5

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
    """Customers' records by (customer id, dataset id), and issued tokens."""

    def __init__(self, files: list[Path]) -> None:
        self.data: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for f in files:
            parsed = parse_file(f)
            customer = parsed.subject_key or "customer-1"  # files without a meter or contract id
            self.data.setdefault((customer, parsed.dataset_id), []).extend(parsed.records)
        self.tokens: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.export_requests = 0
        self.request_log: list[float] = []  # time.time() of each export request
        self.faults = Faults()
        self.lock = threading.Lock()

    def customers(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (customer, dataset), recs in self.data.items():
            out.setdefault(customer, {})[dataset] = len(recs)
        return out


def _encode_cursor(customer: str, dataset: str, offset: int) -> str:
    raw = json.dumps({"c": customer, "d": dataset, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    pad = "=" * (-len(cursor) % 4)
    value = json.loads(base64.urlsafe_b64decode((cursor + pad).encode()))
    if not isinstance(value, dict) or not isinstance(value.get("o"), int) or value["o"] < 0:
        raise ValueError("bad cursor")
    return value


def create_app(files: list[Path] | None = None) -> FastAPI:
    if files is None:
        env = os.environ.get("HOLDER_FILES", "")
        files = [Path(p) for p in env.split(os.pathsep) if p] or write_sample(Path(os.environ.get("HOLDER_SAMPLE_DIR", "var/holder-sample")))
    store = Store(files)
    app = FastAPI(title="Reference data holder", version="0.1.0",
                  description="Implements the broker's holder export contract.")
    app.state.store = store

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/datasets/{dataset}/records", response_model=None,
             responses={200: {"model": RecordsPage, "description": "a page of records"}, 401: {"description": "no or unknown token"},
                        403: {"description": "token does not cover this dataset"}, 400: {"description": "bad cursor"}})
    def records(dataset: str, authorization: str | None = Header(default=None), cursor: str | None = Query(None, max_length=2048),
                limit: int = Query(100, ge=1, le=MAX_LIMIT)) -> Any:
        """A page of the token's customer's records of ``dataset``."""
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
        if not authorization or not authorization.startswith("Bearer "):
            return problem(401, "Unauthorized", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        grant = store.tokens.get(authorization[7:])
        if grant is None or grant["expires_at"] < time.time():
            return problem(401, "Unauthorized", "unknown or expired token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if dataset not in grant["datasets"]:
            return problem(403, "Forbidden", f"the token does not cover dataset {dataset}")
        offset = 0
        if cursor:
            try:
                c = _decode_cursor(cursor)
            except (ValueError, TypeError, UnicodeDecodeError):
                return problem(400, "Bad cursor", "the cursor is not one this holder issued")
            if c.get("c") != grant["customer_id"] or c.get("d") != dataset:
                return problem(400, "Bad cursor", "the cursor belongs to another query")
            offset = c["o"]
        recs = store.data.get((grant["customer_id"], dataset), [])
        page = recs[offset: offset + limit]
        body: dict[str, Any] = {"records": page, "total": len(recs)}
        if offset + limit < len(recs):
            body["next_cursor"] = cursor if (faults.repeat_cursor and cursor) else _encode_cursor(grant["customer_id"], dataset, offset + limit)
        else:
            body["resume_cursor"] = _encode_cursor(grant["customer_id"], dataset, max(offset, len(recs)))
        return JSONResponse(body)  # records go out as the holder keeps them, without a second validation

    @app.post("/dev/tokens", response_model=TokenResponse, tags=["development"])
    def issue_token(body: TokenRequest) -> Any:
        """Development stand-in for the holder's OAuth server: a bearer token of ``customer_id`` for ``datasets``."""
        if body.customer_id not in store.customers():
            return problem(404, "Not found", f"no customer {body.customer_id}")
        return issue({"customer_id": body.customer_id, "datasets": list(body.datasets)}, body.expires_in)

    def issue(grant: dict[str, Any], expires_in: int) -> dict[str, Any]:
        token, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with store.lock:
            store.tokens[token] = dict(grant, expires_at=time.time() + expires_in)
            store.refresh_tokens[refresh] = dict(grant, expires_in=expires_in)
        return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in, "refresh_token": refresh}

    @app.post("/oauth/token", response_model=TokenResponse, response_model_exclude_none=True, tags=["oauth"])
    def token_endpoint(grant_type: str = Form(max_length=64), refresh_token: str | None = Form(default=None, max_length=512)) -> Any:
        """OAuth 2.0 token endpoint, refresh grant (RFC 6749 section 6); refresh tokens rotate."""
        headers = {"Cache-Control": "no-store"}
        if grant_type != "refresh_token":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400, headers=headers)
        with store.lock:
            grant = store.refresh_tokens.pop(refresh_token or "", None)
        if grant is None:
            return JSONResponse({"error": "invalid_grant", "error_description": "unknown or used refresh token"}, status_code=400, headers=headers)
        expires_in = int(grant.pop("expires_in"))
        return JSONResponse(issue(grant, expires_in), headers=headers)

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
        return {"export_requests": store.export_requests, "request_times": list(store.request_log[-10000:])}

    @app.put("/dev/faults", tags=["development"])
    def set_faults(body: Faults) -> Faults:
        """Inject faults into the export endpoint (tests and demos of failure handling)."""
        store.faults = body
        return body

    return app
