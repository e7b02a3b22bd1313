"""Deliberately broken participants, for the conformance kit's tests (``tests/integration/test_conformance.py``).

Each holder is the reference holder (``examples.holder.app.create_app``) serving the real Enedis
daily file, with one contract rule broken, by a fault switch of its own or by an ASGI wrapper that
alters requests or answers. The clouds are small FastAPI apps that follow the recipient import
contract except for one rule. Every factory returns an ASGI app; :data:`HOLDER_CUSTOMER` and
:data:`HOLDER_DATASET` are what the holders serve (get a token from ``POST /dev/tokens``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from examples.holder.app import Faults, create_app as create_holder
from shared.canonical import RecordDigest
from shared.settings import DEV_RECIPIENT_TOKEN

REAL_DAILY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "enedis_v5_daily_consumption_myelectricaldatapy.json"
HOLDER_CUSTOMER = "01234567890"
HOLDER_DATASET = "enedis.v5.daily_consumption"
WRONG_UNITS_FROM = 100  # the wrong-units holder serves "kWh" from this record position on

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Rewrite:
    """ASGI wrapper: ``on_request(scope)`` may alter an HTTP request's scope; ``on_response(scope, status,
    headers, body)`` may return a new ``(status, headers, body)`` (answers are buffered whole)."""

    def __init__(self, app: Any, on_request: Callable[[Scope], None] | None = None,
                 on_response: Callable[[Scope, int, list[tuple[bytes, bytes]], bytes], tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None) -> None:
        self.app, self.on_request, self.on_response = app, on_request, on_response
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        if self.on_request:
            self.on_request(scope)
        if not self.on_response:
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    status, headers, body = self.on_response(scope, start["status"], list(start.get("headers", [])), b"".join(chunks))
                    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def _is_export(scope: Scope) -> bool:
    return str(scope.get("path", "")).startswith("/datasets/")


def reference_holder() -> FastAPI:
    """The reference holder serving the real Enedis v5 daily file (365 records of customer 01234567890)."""
    return create_holder(files=[REAL_DAILY])


def holder_without_auth() -> Rewrite:
    """Broken: serves records to anyone (a missing or forged token reads the customer's data)."""
    inner = reference_holder()
    store = inner.state.store
    open_token = "broken-holder-open-token"
    store.tokens[open_token] = {"customer_id": HOLDER_CUSTOMER, "datasets": [HOLDER_DATASET], "expires_at": time.time() + 86400}

    def any_token(scope: Scope) -> None:
        if _is_export(scope):
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
            scope["headers"] = headers + [(b"authorization", f"Bearer {open_token}".encode())]

    return Rewrite(inner, on_request=any_token)


def holder_repeating_cursor() -> FastAPI:
    """Broken: from the second page on, hands back the cursor it was asked with (the walk never ends)."""
    app = reference_holder()
    app.state.store.faults = Faults(repeat_cursor=True)
    return app


def holder_wrong_units(from_position: int = WRONG_UNITS_FROM) -> FastAPI:
    """Broken: records from ``from_position`` on say ``"kWh"`` while their values are in Wh."""
    app = reference_holder()
    for recs in app.state.store.data.values():
        for rec in recs[from_position:]:
            rec["unit"] = "kWh"
    return app


def holder_plain_errors() -> Rewrite:
    """Broken: errors are plain JSON ``{"error": ...}`` (application/json), not RFC 9457 problem details."""

    def plain(scope: Scope, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if status < 400:
            return status, headers, body
        try:
            title = json.loads(body).get("title", "error")
        except (ValueError, AttributeError):
            title = "error"
        headers = [(k, v) for k, v in headers if k.lower() != b"content-type"] + [(b"content-type", b"application/json")]
        return status, headers, json.dumps({"error": title}).encode()

    return Rewrite(reference_holder(), on_response=plain)


def holder_ignoring_limit() -> Rewrite:
    """Broken: ignores ``limit`` and always serves pages of its default size (100 records)."""

    def drop_limit(scope: Scope) -> None:
        if _is_export(scope):
            query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k != "limit"]
            scope["query_string"] = urlencode(query).encode()

    return Rewrite(reference_holder(), on_request=drop_limit)


def holder_throttling(retry_after: bool = True, every: int = 4) -> FastAPI | Rewrite:
    """The reference holder answering 429 to every ``every``-th export request, with ``Retry-After: 0``
    (conformant) or, with ``retry_after=False``, without the header (broken)."""
    app = reference_holder()
    app.state.store.faults = Faults(throttle_every=every, retry_after_s=0)
    if retry_after:
        return app

    def strip(scope: Scope, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return status, [(k, v) for k, v in headers if k.lower() != b"retry-after"], body

    return Rewrite(app, on_response=strip)


def _problem(status: int, title: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status}, status_code=status,
                        media_type="application/problem+json", headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def _cloud(*, dedup: bool, honest_manifest: bool, token: str = DEV_RECIPIENT_TOKEN) -> FastAPI:
    app = FastAPI(title="broken cloud")
    held: dict[str, list[Any]] = {}
    keys: set[str] = set()

    @app.put("/transfers/{transfer_id}/batches/{n}")
    async def put_batch(transfer_id: str, n: int, request: Request, authorization: str | None = Header(default=None),
                        idempotency_key: str | None = Header(default=None)) -> Any:
        if authorization != f"Bearer {token}":
            return _problem(401, "Unauthorized")
        if idempotency_key != f"{transfer_id}:{n}":
            return _problem(400, "Bad Idempotency-Key")
        body = await request.json()
        if dedup and idempotency_key in keys:
            return JSONResponse({"status": "duplicate", "records": len(body["records"])}, status_code=200)
        keys.add(idempotency_key)
        held.setdefault(transfer_id, []).extend(body["records"])
        return JSONResponse({"status": "stored", "records": len(body["records"])}, status_code=201)

    @app.put("/transfers/{transfer_id}/manifest")
    async def put_manifest(transfer_id: str, request: Request, authorization: str | None = Header(default=None)) -> Any:
        if authorization != f"Bearer {token}":
            return _problem(401, "Unauthorized")
        body = await request.json()
        d = RecordDigest()
        d.update(held.get(transfer_id, []))
        match = (d.count == body["records"] and d.hexdigest() == body["sha256"]) if honest_manifest else True
        return JSONResponse({"match": match, "records": d.count, "sha256": d.hexdigest()}, status_code=200 if match else 409)

    return app


def cloud_without_dedup() -> FastAPI:
    """Broken: stores every batch it receives, a repeated Idempotency-Key included (acknowledged 201 again)."""
    return _cloud(dedup=False, honest_manifest=True)


def cloud_confirming_any_manifest() -> FastAPI:
    """Broken: answers 200 ``match: true`` to every manifest, whatever it holds."""
    return _cloud(dedup=True, honest_manifest=False)
