"""The broker's own recipient import contract (``examples/contracts/recipient-import.openapi.json``).

``PUT {import}/transfers/{id}/batches/{n}`` with ``Idempotency-Key: {id}:{n}`` and
``{"dataset", "records"}``; the acknowledgement may list ``refused`` records. Then
``PUT {import}/transfers/{id}/manifest``: the recipient answers ``match``.
The broker authenticates with ``BROKER_RECIPIENT_TOKEN``, or the recipient's own ``bearer`` in
``RECIPIENT_CREDENTIALS`` when set.
"""

from __future__ import annotations

from typing import Any

import httpx

from . import Adapter, BatchAck, ManifestAck, recipient_failed


def refused_indexes(resp: httpx.Response, size: int) -> dict[int, str]:
    """``{index: reason}`` of the records of a batch that the recipient refused (its ack's ``refused``
    list, recipient import contract). Reasons are cut to 200 characters; malformed items are ignored."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    out: dict[int, str] = {}
    items = body.get("refused") if isinstance(body, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("index"), int) and 0 <= item["index"] < size:
            out[item["index"]] = str(item.get("reason", ""))[:200]
    return out


class BrokerAdapter(Adapter):
    protocol = "broker"

    def headers(self) -> dict[str, str]:
        h = super().headers()
        h.setdefault("Authorization", f"Bearer {self.broker_token}")
        return h

    async def put_batch(self, transfer_id: str, n: int, dataset: str, records: list[Any]) -> BatchAck:
        put = await self.send("PUT", f"{self.base}/transfers/{transfer_id}/batches/{n}", json={"dataset": dataset, "records": records},
                              headers={**self.headers(), "Idempotency-Key": f"{transfer_id}:{n}"})
        if put.status_code not in (200, 201):
            raise recipient_failed(f"batch {n}", put, batch=n)
        return BatchAck(refused=refused_indexes(put, len(records)))

    async def finish(self, transfer_id: str, manifest: dict[str, Any]) -> ManifestAck:
        put = await self.send("PUT", f"{self.base}/transfers/{transfer_id}/manifest", json=manifest, headers=self.headers())
        body: Any = None
        try:
            body = put.json()
        except ValueError:
            pass
        detail = body if isinstance(body, dict) else None
        return ManifestAck(match=put.status_code == 200 and detail is not None and detail.get("match") is True, status=put.status_code, detail=detail)
