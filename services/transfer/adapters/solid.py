"""Solid pods (Solid Protocol 0.11, LDP containers): one JSON resource per record, written with PUT.

Layout, under the recipient's ``import_base_url`` (a container of the pod the broker may write to)::

    {base}/{dataset}/{period}/{when}-{hash}.json      one record, as JSON (application/json)
    {base}/portability-transfers/{transfer_id}.json   the transfer's manifest, once it is confirmed

``period`` is ``YYYY-MM`` (daily and finer records) or ``YYYY`` (monthly and yearly ones); names are
deterministic (:mod:`.naming`: the time of the record and the hash of its content), so a record
sent again (a retried batch, a resumed or re-run transfer) lands on the resource that holds it:
the PUT is conditional (``If-None-Match: *``), and 412 (it exists) counts as written. The server creates the
intermediate containers (Solid Protocol section 5.3): the first record of a container is written
alone, the others then in parallel. ``finish`` reads every record back (GET) and recomputes the
count and SHA-256 of the manifest.

Credentials: none for an open pod; ``{"bearer": "..."}`` in ``RECIPIENT_CREDENTIALS`` sends
``Authorization: Bearer``. (Solid-OIDC's DPoP-bound tokens are not made by the broker yet.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

from shared.canonical import RecordDigest

from ..errors import TransferEnded
from . import Adapter, BatchAck, ManifestAck, recipient_failed
from .naming import record_name, safe_segment

CONCURRENCY = 8
# 412: the conditional PUT (If-None-Match: *) found the resource there; its name is its content's hash, so it is this record
WRITTEN = (200, 201, 204, 205, 412)


class SolidAdapter(Adapter):
    protocol = "solid"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.urls: list[str] = []  # every record's resource, in delivery order (for finish)
        self.containers: set[str] = set()  # containers known to exist
        self._limit = asyncio.Semaphore(CONCURRENCY)

    def resource_url(self, dataset: str, record: Any) -> str:
        period, name = record_name(dataset, record)
        return f"{self.base}/{safe_segment(dataset)}/{period}/{name}.json"

    async def _put(self, url: str, body: bytes, *, what: str) -> None:
        async with self._limit:
            resp = await self.send("PUT", url, content=body, headers={**self.headers(), "Content-Type": "application/json", "If-None-Match": "*"})
        if resp.status_code not in WRITTEN:
            raise recipient_failed(f"PUT {urlsplit(url).path}", resp, **({"batch": int(what)} if what.isdigit() else {}))

    async def put_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> BatchAck:
        urls = [self.resource_url(dataset, r) for r in records]
        first: dict[str, int] = {}  # new container -> index of the record that creates it
        for i, url in enumerate(urls):
            container = url.rsplit("/", 1)[0] + "/"
            if container not in self.containers:
                first.setdefault(container, i)
        for container, i in first.items():  # one PUT per new container first: the server creates it (and its parents)
            await self._put(urls[i], _json(records[i]), what=str(n))
            self.containers.add(container)
        rest = set(first.values())
        await asyncio.gather(*(self._put(url, _json(rec), what=str(n)) for i, (url, rec) in enumerate(zip(urls, records)) if i not in rest))
        self.urls.extend(urls)
        return BatchAck()

    def skip_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> None:
        self.urls.extend(self.resource_url(dataset, r) for r in records)

    async def _get(self, url: str) -> Any:
        async with self._limit:
            resp = await self.send("GET", url, headers={**self.headers(), "Accept": "application/json"})
        if resp.status_code == 404:
            return _MISSING
        if resp.status_code != 200:
            raise recipient_failed(f"GET {urlsplit(url).path}", resp)
        try:
            return json.loads(resp.content)
        except ValueError:
            return _MISSING

    async def finish(self, transfer_id: str, manifest: dict[str, Any]) -> ManifestAck:
        digest = RecordDigest()
        missing = 0
        for start in range(0, len(self.urls), 256):  # in order, a slice at a time
            for record in await asyncio.gather(*(self._get(u) for u in self.urls[start:start + 256])):
                if record is _MISSING:
                    missing += 1
                else:
                    digest.update([record])
        found = {"records": digest.count, "sha256": digest.hexdigest(), "missing": missing}
        match = missing == 0 and digest.count == manifest.get("records") and digest.hexdigest() == manifest.get("sha256")
        if match:  # the pod owner's record of the transfer: no personal data, only what the broker keeps too
            body = {"transfer_id": transfer_id, **{k: manifest[k] for k in ("dataset", "records", "sha256") if k in manifest},
                    **({"converted_from": manifest["converted_from"]} if manifest.get("converted_from") else {})}
            try:
                await self._put(f"{self.base}/portability-transfers/{safe_segment(transfer_id)}.json", _json(body), what="manifest")
            except TransferEnded:
                pass  # the records are confirmed; a pod that refuses the manifest resource does not undo that
        return ManifestAck(match=match, detail=found)


def _json(record: Any) -> bytes:
    """The record as the holder served it (numbers keep their JSON spelling, e.g. 637.0), compact UTF-8."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _Missing:
    pass


_MISSING: Any = _Missing()
