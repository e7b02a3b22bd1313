"""Contract server of the Cozy data API: the subset of cozy-stack's ``docs/data-system.md`` that the broker uses.

It is not a Cozy: it answers as that document says a Cozy answers, so that the broker's Cozy
adapter (``services/transfer/adapters/cozy.py``) is tested against the documented API::

    GET    /data/:doctype/:id                 200 the document (_id, _rev, _type) | 404 not_found (missing, deleted)
    POST   /data/:doctype/                    201 created with a new id | 400 if the body has _id or another _ field
    PUT    /data/:doctype/:id                 create with a fixed id (body without _id/_rev): 200
                                              update (body with the current _rev): 200 | 409 Conflict if _rev differs
                                              or is missing; 400 if the body's _id is not the URL's id
    DELETE /data/:doctype/:id?rev=            200 | 400 without rev | 409 if rev differs
    POST   /data/:doctype/_all_docs?include_docs=true   {"keys": [...]} -> rows (not found keys: error rows)
    GET    /data/:doctype/_all_docs?include_docs=true   every document of the doctype
    GET    /data/:doctype/_normal_docs?skip=&limit=     {"rows": [docs], "total_rows"}
    GET    /data/_all_doctypes                          the doctypes that hold documents

Every call needs ``Authorization: Bearer <token>``: 401 without a known token, 403 when the
token's permissions do not cover the doctype and verb. Tokens come from ``COZY_TOKENS``, JSON
``{"<token>": {"<doctype or prefix.*>": "ALL" | ["GET", "POST", "PUT", "DELETE"]}}``; by default
one development token, ``dev-cozy-token``, with every verb on every doctype. Documents are kept in
memory. Errors have the document's shape: ``{"status", "error", "reason", "title", "details"}``.

Development routes (not part of a Cozy): ``GET /dev/stats`` counts requests and writes,
``PUT /dev/faults`` ``{"fail_every": n}`` answers 503 to every n-th data request.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from typing import Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

DEV_TOKEN = "dev-cozy-token"
VERBS = ("GET", "POST", "PUT", "DELETE")


def error(status: int, name: str, reason: str, details: str) -> JSONResponse:
    title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 503: "Service Unavailable"}[status]
    return JSONResponse({"status": status, "error": name, "reason": reason, "title": title, "details": details}, status_code=status,
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_every: int = Field(default=0, ge=0, description="answer 503 to every n-th data request")


class Store:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}  # doctype -> id -> document (with _id, _rev, _type)
        self.deleted: dict[str, set[str]] = {}
        self.lock = threading.RLock()
        self.stats = {"requests": 0, "writes": 0, "conflicts": 0}
        self.faults = Faults()


def _rev(generation: int, body: dict[str, Any]) -> str:
    digest = hashlib.md5(json.dumps(body, sort_keys=True, ensure_ascii=False).encode(), usedforsecurity=False).hexdigest()
    return f"{generation}-{digest}"


def _tokens() -> dict[str, dict[str, Any]]:
    raw = os.environ.get("COZY_TOKENS")
    return json.loads(raw) if raw else {DEV_TOKEN: {"*": "ALL"}}


def _allowed(perms: dict[str, Any], doctype: str, verb: str) -> bool:
    for pattern, verbs in perms.items():
        hit = pattern == "*" or pattern == doctype or (pattern.endswith(".*") and doctype.startswith(pattern[:-1]))
        if hit and (verbs == "ALL" or verb in verbs):
            return True
    return False


def create_app(tokens: dict[str, dict[str, Any]] | None = None) -> FastAPI:
    perms_by_token = tokens if tokens is not None else _tokens()
    store = Store()
    app = FastAPI(title="Cozy data API (contract server)", version="0.1.0",
                  description="The subset of cozy-stack's data system API (docs/data-system.md) that the broker's Cozy adapter uses.")
    app.state.store = store

    def guard(authorization: str | None, doctype: str, verb: str) -> JSONResponse | None:
        with store.lock:
            store.stats["requests"] += 1
            n = store.stats["requests"]
        if store.faults.fail_every and n % store.faults.fail_every == 0:
            return error(503, "service_unavailable", "injected", "injected fault")
        if not authorization or not authorization.startswith("Bearer ") or authorization[7:] not in perms_by_token:
            return error(401, "unauthorized", "no_token", "a valid bearer token is required")
        if "/" in doctype or not doctype:
            return error(400, "bad_request", "doctype", "a doctype cannot contain '/'")
        if not _allowed(perms_by_token[authorization[7:]], doctype, verb):
            return error(403, "forbidden", "permissions", f"the token has no {verb} permission on {doctype}")
        return None

    def missing(doctype: str, doc_id: str) -> JSONResponse:
        if doc_id in store.deleted.get(doctype, set()):
            return error(404, "not_found", "deleted", f"{doctype} {doc_id} was deleted")
        return error(404, "not_found", "missing", f"{doctype} {doc_id} does not exist")

    async def body_object(request: Request) -> dict[str, Any] | JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "bad_request", "json", "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "bad_request", "json", "the body must be a JSON object")
        return body

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/data/_all_doctypes")
    def all_doctypes(authorization: str | None = Header(default=None)) -> Any:
        if not authorization or authorization[7:] not in perms_by_token:
            return error(401, "unauthorized", "no_token", "a valid bearer token is required")
        with store.lock:
            return sorted(d for d, docs in store.docs.items() if docs)

    @app.post("/data/{doctype}/_all_docs")
    async def some_docs(doctype: str, request: Request, include_docs: bool = Query(False), authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "GET")) is not None:
            return refused
        body = await body_object(request)
        if isinstance(body, JSONResponse):
            return body
        keys = body.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            return error(400, "bad_request", "keys", "keys must be a list of ids")
        rows: list[dict[str, Any]] = []
        with store.lock:
            docs = store.docs.get(doctype, {})
            for k in keys:
                doc = docs.get(k)
                if doc is None:
                    rows.append({"key": k, "error": "not_found"})
                else:
                    row = {"id": k, "key": k, "value": {"rev": doc["_rev"]}}
                    if include_docs:
                        row["doc"] = {x: v for x, v in doc.items() if x != "_type"}
                    rows.append(row)
            total = len(docs)
        return {"total_rows": total, "rows": rows}

    @app.get("/data/{doctype}/_all_docs")
    def all_docs(doctype: str, include_docs: bool = Query(False), authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "GET")) is not None:
            return refused
        with store.lock:
            docs = dict(sorted(store.docs.get(doctype, {}).items()))
        rows = [{"id": k, "key": k, "value": {"rev": d["_rev"]}, **({"doc": {x: v for x, v in d.items() if x != "_type"}} if include_docs else {})}
                for k, d in docs.items()]
        return {"offset": 0, "rows": rows, "total_rows": len(rows)}

    @app.get("/data/{doctype}/_normal_docs")
    def normal_docs(doctype: str, skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                    authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "GET")) is not None:
            return refused
        with store.lock:
            docs = [{x: v for x, v in d.items() if x != "_type"} for _, d in sorted(store.docs.get(doctype, {}).items())]
        return {"rows": docs[skip: skip + limit], "total_rows": len(docs)}

    @app.get("/data/{doctype}/{doc_id}")
    def get_doc(doctype: str, doc_id: str, authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "GET")) is not None:
            return refused
        with store.lock:
            doc = store.docs.get(doctype, {}).get(doc_id)
        if doc is None:
            return missing(doctype, doc_id)
        return JSONResponse(doc, headers={"Etag": f'"{doc["_rev"]}"'})

    @app.post("/data/{doctype}/", status_code=201)
    async def create_doc(doctype: str, request: Request, authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "POST")) is not None:
            return refused
        body = await body_object(request)
        if isinstance(body, JSONResponse):
            return body
        if "_id" in body:
            return error(400, "bad_request", "id", "a document to create cannot contain an _id field")
        if any(k.startswith("_") for k in body):
            return error(400, "bad_request", "reserved", "fields starting with _ are reserved")
        doc_id = uuid.uuid4().hex
        return JSONResponse(_save(store, doctype, doc_id, body, 1), status_code=201)

    @app.put("/data/{doctype}/{doc_id}")
    async def put_doc(doctype: str, doc_id: str, request: Request, authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "PUT")) is not None:
            return refused
        body = await body_object(request)
        if isinstance(body, JSONResponse):
            return body
        if doc_id.startswith("_"):
            return error(400, "bad_request", "id", "an id cannot start with _")
        if "_id" in body and body["_id"] != doc_id:
            return error(400, "bad_request", "id", "the _id of the document is not the id of the URL")
        if any(k.startswith("_") and k not in ("_id", "_rev", "_type") for k in body):
            return error(400, "bad_request", "reserved", "fields starting with _ are reserved")
        with store.lock:
            current = store.docs.get(doctype, {}).get(doc_id)
            if current is None:
                if "_id" in body:  # "Create a document with a fixed id": no id in the document itself
                    return error(400, "bad_request", "id", "no _id should be given in a document created with a fixed id")
                if "_rev" in body:
                    return missing(doctype, doc_id)
                generation = 1
            else:
                if body.get("_rev") != current["_rev"]:  # conflict prevention: the client MUST give the current _rev
                    store.stats["conflicts"] += 1
                    return error(409, "conflict", "rev", f"{doctype} {doc_id} exists: give its current _rev to update it")
                generation = int(current["_rev"].split("-", 1)[0]) + 1
            saved = _save(store, doctype, doc_id, {k: v for k, v in body.items() if not k.startswith("_")}, generation)
        return JSONResponse(saved, status_code=200)

    @app.delete("/data/{doctype}/{doc_id}")
    def delete_doc(doctype: str, doc_id: str, rev: str | None = Query(None), if_match: str | None = Header(default=None),
                   authorization: str | None = Header(default=None)) -> Any:
        if (refused := guard(authorization, doctype, "DELETE")) is not None:
            return refused
        given = {r.strip('"') for r in (rev, if_match) if r}
        if len(given) != 1:
            return error(400, "bad_request", "rev", "give the document's rev (query string or If-Match), once")
        with store.lock:
            current = store.docs.get(doctype, {}).get(doc_id)
            if current is None:
                return missing(doctype, doc_id)
            if current["_rev"] not in given:
                return error(409, "conflict", "rev", f"{doctype} {doc_id} has another rev")
            del store.docs[doctype][doc_id]
            store.deleted.setdefault(doctype, set()).add(doc_id)
            new_rev = _rev(int(current["_rev"].split("-", 1)[0]) + 1, {"_deleted": True})
        return {"id": doc_id, "type": doctype, "ok": True, "rev": new_rev, "_deleted": True}

    @app.get("/dev/stats", tags=["development"])
    def stats() -> dict[str, Any]:
        with store.lock:
            return {**store.stats, "documents": {d: len(docs) for d, docs in store.docs.items()}}

    @app.put("/dev/faults", tags=["development"])
    def set_faults(body: Faults) -> Faults:
        store.faults = body
        return body

    return app


def _save(store: Store, doctype: str, doc_id: str, fields: dict[str, Any], generation: int) -> dict[str, Any]:
    rev = _rev(generation, fields)
    doc = {"_id": doc_id, "_type": doctype, "_rev": rev, **fields}
    with store.lock:
        store.docs.setdefault(doctype, {})[doc_id] = doc
        store.deleted.get(doctype, set()).discard(doc_id)
        store.stats["writes"] += 1
    return {"id": doc_id, "type": doctype, "ok": True, "rev": rev, "data": doc}
