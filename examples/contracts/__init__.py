"""The two contracts participants implement, as OpenAPI documents generated from the reference apps.

- ``holder-export.openapi.json``: the data holder's export endpoint.
- ``recipient-import.openapi.json``: the data recipient's import endpoints.

Regenerate with ``make contracts``; a test fails when the committed documents drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

HOLDER_PATHS = {"/datasets/{dataset}/records"}
RECIPIENT_PATHS = {"/transfers/{transfer_id}/batches/{n}", "/transfers/{transfer_id}/manifest"}


def _refs(obj: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "$ref" and isinstance(v, str):
                out.add(v.rsplit("/", 1)[-1])
            else:
                out |= _refs(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _refs(v)
    return out


def contract(openapi: dict[str, Any], paths: set[str], title: str, description: str) -> dict[str, Any]:
    """Keep only ``paths`` and the schemas they use; add the bearer security scheme."""
    doc = {"openapi": openapi["openapi"], "info": {"title": title, "version": "1.0.0", "description": description},
           "paths": {p: v for p, v in openapi["paths"].items() if p in paths}}
    schemas = openapi.get("components", {}).get("schemas", {})
    keep: set[str] = set()
    todo = _refs(doc["paths"])
    while todo:
        name = todo.pop()
        if name in keep or name not in schemas:
            continue
        keep.add(name)
        todo |= _refs(schemas[name])
    doc["components"] = {"schemas": {k: schemas[k] for k in sorted(keep)},
                         "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
    doc["security"] = [{"bearer": []}]
    return doc


def documents() -> dict[str, dict[str, Any]]:
    import tempfile

    from examples.cloud.app import create_app as cloud_app
    from examples.holder.app import create_app as holder_app

    with tempfile.TemporaryDirectory() as tmp:
        holder = holder_app(files=[])
        cloud = cloud_app(db_path=Path(tmp) / "c.db")
        return {
            "holder-export.openapi.json": contract(
                holder.openapi(), HOLDER_PATHS, "Data holder export contract",
                "What a data holder serves to the broker: pages of one data subject's records of one dataset, "
                "under the holder's export base URL, with the data subject's OAuth bearer token. Cursors are opaque "
                "and stable; no next_cursor means the last page. Errors are RFC 9457 problem details; 429 and 503 "
                "may carry Retry-After."),
            "recipient-import.openapi.json": contract(
                cloud.openapi(), RECIPIENT_PATHS, "Data recipient import contract",
                "What a data recipient (a personal cloud) implements: numbered batches, deduplicated on "
                "Idempotency-Key {transfer_id}:{n}, then a manifest (record count, SHA-256 of the records as RFC 8785 "
                "canonical JSON, one per line) that the recipient confirms or denies. The broker authenticates with a "
                "bearer token. Errors are RFC 9457 problem details; 413 or 507 mean the destination is full."),
        }


def write() -> list[Path]:
    out = []
    for name, doc in documents().items():
        p = HERE / name
        p.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", "utf-8")
        out.append(p)
    return out
