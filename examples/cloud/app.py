"""Reference personal cloud (a data recipient).

Implements the recipient import contract (``examples/contracts/recipient-import.openapi.json``)::

    PUT /transfers/{transfer_id}/batches/{n}   Idempotency-Key: {transfer_id}:{n}
        {"dataset": str, "records": [...]}  -> 201 stored | 200 duplicate (stored once)
    PUT /transfers/{transfer_id}/manifest
        {"dataset": str, "records": int, "sha256": hex} -> 200 {"match": true, ...} | 409 {"match": false, ...}

Records are kept in SQLite (``CLOUD_DB``), deduplicated by idempotency key. The broker
authenticates with a bearer token (``CLOUD_BROKER_TOKEN``).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Path as PathParam, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from shared.canonical import RecordDigest
from shared.http import BodyLimitMiddleware
from shared.settings import DEV_RECIPIENT_TOKEN

PROBLEM = "application/problem+json"
MAX_BATCH = 10_000


def problem(status: int, title: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail}, status_code=status,
                        media_type=PROBLEM, headers=headers)


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(min_length=1, max_length=128)
    records: list[dict[str, Any]] = Field(max_length=MAX_BATCH)


class Refusal(BaseModel):
    index: int  # position of the record in the batch, from 0
    reason: str


class BatchAck(BaseModel):
    """``stored`` (201) or ``duplicate`` (200); ``refused`` lists the records the recipient would not keep."""

    status: str  # "stored" | "duplicate"
    records: int
    refused: list[Refusal] = []


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    dataset: str = Field(min_length=1, max_length=128)
    records: int = Field(ge=0, le=2**63 - 1)  # SQLite's INTEGER
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class ManifestAck(BaseModel):
    match: bool
    records: int
    sha256: str


class Faults(BaseModel):
    """Faults to inject (tests): every Nth batch answers 500; above ``capacity_records`` the cloud is full (507)."""

    model_config = ConfigDict(extra="forbid")
    fail_every: int = Field(default=0, ge=0)
    capacity_records: int | None = Field(default=None, ge=0)
    refuse_values: list[str] = Field(default_factory=list, description="refuse records whose value is one of these")
    notifications_down: bool = Field(default=False, description="answer 503 to consent notifications (a cloud that is down)")


class Db:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.lock = threading.Lock()
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS batches (idempotency_key TEXT PRIMARY KEY, transfer_id TEXT NOT NULL, n INTEGER NOT NULL,
                dataset TEXT NOT NULL, count INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS records (transfer_id TEXT NOT NULL, n INTEGER NOT NULL, position INTEGER NOT NULL,
                dataset TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (transfer_id, n, position));
            CREATE TABLE IF NOT EXISTS manifests (transfer_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, records INTEGER NOT NULL,
                sha256 TEXT NOT NULL, match INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS notifications (idempotency_key TEXT PRIMARY KEY, received_at REAL NOT NULL, token TEXT NOT NULL,
                event TEXT NOT NULL);
            """
        )


DEV_OWNER_TOKEN = "dev-cloud-owner-token"


def create_app(db_path: Path | None = None, token: str | None = None) -> FastAPI:
    db = Db(db_path or Path(os.environ.get("CLOUD_DB", "var/cloud.db")))
    expected = token or os.environ.get("CLOUD_BROKER_TOKEN", DEV_RECIPIENT_TOKEN)
    owner = os.environ.get("CLOUD_OWNER_TOKEN", DEV_OWNER_TOKEN)
    app = FastAPI(title="Reference personal cloud", version="0.1.0", description="Implements the broker's recipient import contract.",
                  responses={400: {"description": "a body that is not UTF-8 JSON, or a bad key"}})
    app.state.db = db
    app.add_middleware(BodyLimitMiddleware, max_bytes=64 * 1024 * 1024)
    state: dict[str, Any] = {"faults": Faults(), "batch_requests": 0, "duplicates": 0}
    # running digest of each transfer whose batches arrived in order: (last batch n, digest);
    # the manifest is then checked without reading everything back
    running: dict[str, tuple[int, RecordDigest]] = {}

    def authorised(authorization: str | None) -> bool:
        return authorization == f"Bearer {expected}"

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.put("/transfers/{transfer_id}/batches/{n}", response_model=BatchAck, status_code=201,
             responses={200: {"model": BatchAck, "description": "duplicate: already stored"}, 400: {"description": "bad key"},
                        401: {"description": "no or wrong token"}})
    def put_batch(body: Batch, transfer_id: str = PathParam(max_length=64), n: int = PathParam(ge=1, le=2**63 - 1),
                  authorization: str | None = Header(default=None), idempotency_key: str | None = Header(default=None)) -> Any:
        """Store a batch once; a repeated ``Idempotency-Key`` is acknowledged without storing twice."""
        if not authorised(authorization):
            return problem(401, "Unauthorized", "the broker's bearer token is required")
        if idempotency_key != f"{transfer_id}:{n}":
            return problem(400, "Bad Idempotency-Key", f"Idempotency-Key must be {transfer_id}:{n}")
        with db.lock:
            state["batch_requests"] += 1
            faults: Faults = state["faults"]
            if faults.fail_every and state["batch_requests"] % faults.fail_every == 0:
                return problem(500, "Internal Server Error", "injected fault")
            conn = db.conn
            refused = [{"index": i, "reason": "value not accepted by this cloud"} for i, r in enumerate(body.records)
                       if str(r.get("value")) in faults.refuse_values]
            kept = [r for i, r in enumerate(body.records) if i not in {x["index"] for x in refused}]
            if conn.execute("SELECT 1 FROM batches WHERE idempotency_key = ?", (idempotency_key,)).fetchone():
                state["duplicates"] += 1
                return JSONResponse({"status": "duplicate", "records": len(kept), "refused": refused}, status_code=200)
            if faults.capacity_records is not None:
                held = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
                if held + len(body.records) > faults.capacity_records:
                    return problem(507, "Insufficient Storage", f"no room for {len(body.records)} more records")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?)", (idempotency_key, transfer_id, n, body.dataset, len(kept)))
                conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)",
                                 [(transfer_id, n, i, body.dataset, json.dumps(r, ensure_ascii=False)) for i, r in enumerate(kept)])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            last, digest = running.get(transfer_id, (0, RecordDigest()))
            if n == last + 1:
                digest.update(kept)
                running[transfer_id] = (n, digest)
            else:
                running.pop(transfer_id, None)  # out of order: the manifest reads the records back
        return {"status": "stored", "records": len(kept), "refused": refused}

    def stored(transfer_id: str) -> list[dict[str, Any]]:
        with db.lock:
            rows = db.conn.execute("SELECT record FROM records WHERE transfer_id = ? ORDER BY n, position", (transfer_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @app.put("/transfers/{transfer_id}/manifest", response_model=ManifestAck,
             responses={409: {"model": ManifestAck, "description": "what the cloud holds differs"}, 401: {"description": "no or wrong token"}})
    def put_manifest(body: Manifest, transfer_id: str = PathParam(max_length=64), authorization: str | None = Header(default=None)) -> Any:
        """Confirm (200, match true) or deny (409, match false) that the cloud holds exactly these records."""
        if not authorised(authorization):
            return problem(401, "Unauthorized", "the broker's bearer token is required")
        with db.lock:
            top = db.conn.execute("SELECT MAX(n) FROM batches WHERE transfer_id = ?", (transfer_id,)).fetchone()[0] or 0
        cached = running.get(transfer_id)
        if cached is not None and cached[0] == top:
            d = cached[1]
        else:
            d = RecordDigest()
            d.update(stored(transfer_id))
        match = d.count == body.records and d.hexdigest() == body.sha256
        with db.lock:
            db.conn.execute("INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?, ?)", (transfer_id, body.dataset, body.records, body.sha256, int(match)))
        return JSONResponse({"match": match, "records": d.count, "sha256": d.hexdigest()}, status_code=200 if match else 409)

    @app.get("/transfers/{transfer_id}/records", tags=["owner"], responses={401: {"description": "no or wrong owner token"}})
    def get_records(transfer_id: str, authorization: str | None = Header(default=None)) -> Any:
        """What the cloud holds for a transfer, in order: the owner's view, with the owner's token (not the broker's)."""
        if authorization != f"Bearer {owner}":
            return problem(401, "Unauthorized", "a bearer token is required")
        return {"records": stored(transfer_id)}

    @app.post("/notifications", status_code=202, tags=["notifications"],
              responses={400: {"description": "not a security event token"}, 503: {"description": "down (injected)"}})
    async def notification(request: Request, idempotency_key: str | None = Header(default=None, max_length=200)) -> Any:
        """A consent notification from the broker: a Security Event Token (RFC 8417, compact JWS) whose
        signature can be checked with the broker's ``/.well-known/jwks.json``. Stored once per
        ``Idempotency-Key``; 202 acknowledges it (the broker retries until then)."""
        if state["faults"].notifications_down:
            return problem(503, "Service Unavailable", "down (injected fault)")
        raw = (await request.body())[:65536].decode("utf-8", "replace")
        parts = raw.split(".")
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))) if len(parts) == 3 else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("events"), dict):
            return problem(400, "Bad Request", "the body must be a security event token (RFC 8417)")
        key = idempotency_key or str(payload.get("jti"))
        with db.lock:
            db.conn.execute("INSERT OR IGNORE INTO notifications VALUES (?, ?, ?, ?)",
                            (key, time.time(), raw, json.dumps(payload, ensure_ascii=False)))
        return {"status": "accepted"}

    @app.get("/dev/notifications", tags=["development"])
    def notifications() -> dict[str, Any]:
        """The consent notifications received, oldest first: ``{"notifications": [SET payload...]}``."""
        with db.lock:
            rows = db.conn.execute("SELECT event FROM notifications ORDER BY received_at").fetchall()
        return {"notifications": [json.loads(r[0]) for r in rows]}

    @app.put("/dev/faults", tags=["development"])
    def set_faults(body: Faults) -> Faults:
        state["faults"] = body
        return body

    @app.get("/dev/stats", tags=["development"])
    def stats() -> dict[str, int]:
        return {"batch_requests": state["batch_requests"], "duplicates": state["duplicates"]}

    return app
