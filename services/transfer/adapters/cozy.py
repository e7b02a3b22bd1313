"""Cozy clouds (cozy-stack data API, ``docs/data-system.md``): one document per record, in the doctype of the dataset.

The dataset type delivered is the doctype (``com.grandlyon.enedis.day`` for Ecolyo's documents).
Each record is created with a fixed, deterministic id (:mod:`.naming`)::

    PUT {cozy}/data/{doctype}/{id}        "Create a document with a fixed id": 200 created
                                          409 it exists: read it (GET), the same content is a duplicate, kept once

so a batch sent again, a resumed transfer or a re-run creates no second document. (``POST
/data/{doctype}/`` would make a new random id at each call: it cannot be repeated safely.)
``finish`` reads every document back (``POST /data/{doctype}/_all_docs?include_docs=true`` with
their ids) and recomputes the manifest's count and SHA-256 over their fields (the ``_id``,
``_rev`` and ``_type`` that cozy-stack adds are left out).

Credentials: an OAuth bearer token of the Cozy with write access to the doctypes, as
``{"bearer": "..."}`` in ``RECIPIENT_CREDENTIALS`` (required). 401/403 end the transfer
``recipient_error``; 413/507 ``destination_full``.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from shared.canonical import RecordDigest

from ..errors import TransferEnded
from . import Adapter, BatchAck, ManifestAck, recipient_failed
from .naming import record_name

CONCURRENCY = 8
KEYS_PER_READ = 200


def stripped(doc: Any) -> Any:
    """A Cozy document without the fields cozy-stack owns (``_id``, ``_rev``, ``_type``...)."""
    return {k: v for k, v in doc.items() if not k.startswith("_")} if isinstance(doc, dict) else doc


class CozyAdapter(Adapter):
    protocol = "cozy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.credentials.get("bearer"):
            raise TransferEnded("failed", "recipient_error", {
                "message": f"no token for the Cozy of recipient {self.recipient.get('id')}: set RECIPIENT_CREDENTIALS "
                           f'{{"{self.recipient.get("id")}": {{"bearer": "..."}}}}'})
        self.ids: list[tuple[str, str]] = []  # (doctype, id) of every record, in delivery order
        self._limit = asyncio.Semaphore(CONCURRENCY)

    @staticmethod
    def doc_id(dataset: str, record: Any) -> str:
        return record_name(dataset, record)[1]

    def _url(self, doctype: str, doc_id: str = "") -> str:
        return f"{self.base}/data/{quote(doctype, safe='')}/{quote(doc_id, safe='')}"

    async def _create(self, doctype: str, doc_id: str, record: Any, n: int) -> None:
        if isinstance(record, dict) and any(str(k).startswith("_") for k in record):
            raise TransferEnded("failed", "recipient_error", {"message": "a record has a field starting with '_', which a Cozy document "
                                                              "cannot have", "batch": n})
        async with self._limit:
            resp = await self.send("PUT", self._url(doctype, doc_id), json=record, headers=self.headers())
        if resp.status_code in (200, 201):
            return
        if resp.status_code != 409:
            raise recipient_failed(f"PUT /data/{doctype}/{doc_id}", resp, batch=n)
        async with self._limit:  # it exists: the same content is this record, already delivered
            got = await self.send("GET", self._url(doctype, doc_id), headers=self.headers())
        if got.status_code != 200:
            raise recipient_failed(f"GET /data/{doctype}/{doc_id}", got, batch=n)
        try:
            same = stripped(got.json()) == record
        except ValueError:
            same = False
        if not same:
            raise TransferEnded("failed", "recipient_error", {"message": f"document {doctype}/{doc_id} exists with other content", "batch": n})

    async def put_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> BatchAck:
        ids = [self.doc_id(dataset, r) for r in records]
        await asyncio.gather(*(self._create(dataset, i, r, n) for i, r in zip(ids, records)))
        self.ids.extend((dataset, i) for i in ids)
        return BatchAck()

    def skip_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> None:
        self.ids.extend((dataset, self.doc_id(dataset, r)) for r in records)

    async def _read(self, doctype: str, keys: list[str]) -> dict[str, Any]:
        resp = await self.send("POST", f"{self._url(doctype)}_all_docs", params={"include_docs": "true"}, json={"keys": sorted(set(keys))},
                               headers=self.headers())
        if resp.status_code != 200:
            raise recipient_failed(f"POST /data/{doctype}/_all_docs", resp)
        try:
            rows = resp.json().get("rows") or []
        except (ValueError, AttributeError):
            rows = []
        return {str(r.get("id") or r.get("key")): stripped(r["doc"]) for r in rows if isinstance(r, dict) and isinstance(r.get("doc"), dict)}

    async def finish(self, transfer_id: str, manifest: dict[str, Any]) -> ManifestAck:
        digest = RecordDigest()
        missing = 0
        for start in range(0, len(self.ids), KEYS_PER_READ):
            chunk = self.ids[start:start + KEYS_PER_READ]
            docs: dict[tuple[str, str], Any] = {}
            for doctype in dict.fromkeys(d for d, _ in chunk):
                found = await self._read(doctype, [i for d, i in chunk if d == doctype])
                docs.update({(doctype, k): v for k, v in found.items()})
            for key in chunk:
                if key in docs:
                    digest.update([docs[key]])
                else:
                    missing += 1
        match = missing == 0 and digest.count == manifest.get("records") and digest.hexdigest() == manifest.get("sha256")
        return ManifestAck(match=match, detail={"records": digest.count, "sha256": digest.hexdigest(), "missing": missing})
