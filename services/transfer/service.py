"""Use cases of the transfer service: start a transfer, read it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from shared import subjects
from shared.auth import Caller, acting_as
from shared.errors import Conflict, Forbidden, NotFound
from shared.outbox import add_event
from shared.runtime import Runtime

from . import models

TERMINAL = frozenset({"completed", "partial", "failed", "cancelled"})
RESUMABLE = frozenset({"destination_full", "retries_exhausted", "recipient_error", "holder_error"})


def _ts(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def as_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "consent_id": row.consent_id, "dataset": row.dataset, "holder_id": row.holder_id,
        "recipient_id": row.recipient_id, "status": row.status, "reason": row.reason, "error": row.error,
        "batches": row.batches, "records": row.records, "bytes": row.bytes, "sha256": row.sha256,
        "attempts": row.attempts, "worker": row.worker, "schedule_id": row.schedule_id,
        "incremental": row.start_cursor is not None, "total": row.total, "rate_records_per_s": row.rate, "eta_s": row.eta_s, "created_at": _ts(row.created_at), "updated_at": _ts(row.updated_at),
        "started_at": _ts(row.started_at), "finished_at": _ts(row.finished_at),
        "delivered_dataset": row._mapping.get("delivered_dataset"),
    }


def event_data(t: dict[str, Any]) -> dict[str, Any]:
    return {"transfer": t}


async def start_transfer(rt: Runtime, *, consent_id: str, dataset: str, start_cursor: str | None = None,
                         schedule_id: str | None = None, caller: Caller | None = None) -> dict[str, Any]:
    """Queue a transfer of ``dataset`` under ``consent_id``.

    The consent is checked first over NATS (``consent.check``); without a valid authorised
    consent this raises :class:`Forbidden` (403, ``reason``) and nothing is queued, so no
    request ever reaches the holder. Raises Unavailable if the consent service does not answer.
    ``caller`` (an HTTP caller) must be a party to the consent or an admin (403 ``not_a_party``).
    """
    consent = await _require_consent(rt, consent_id, dataset, caller)
    now = datetime.now(UTC)
    tid = uuid.uuid4().hex
    async with rt.db.unit_of_work() as s:
        await s.execute(models.transfers.insert().values(
            id=tid, consent_id=consent_id, dataset=dataset, holder_id=consent["holder_id"], recipient_id=consent["recipient_id"],
            status="queued", reason=None, error=None, cursor=None, start_cursor=start_cursor, schedule_id=schedule_id, batches=0, records=0, bytes=0, sha256=None, attempts=0, failures=0, total=None, rate=None, eta_s=None,
            created_at=now, updated_at=now,
        ))
        out = as_dict((await s.execute(select(models.transfers).where(models.transfers.c.id == tid))).one())
        await add_event(s, models.outbox, subjects.TRANSFER_JOBS, "transfer.job", {"transfer_id": tid, "consent_id": consent_id, "dataset": dataset})
        await add_event(s, models.outbox, f"{subjects.TRANSFER_EVENTS}.queued", "transfer.events.queued", event_data(out))
    rt.events_committed()
    return out


async def _require_consent(rt: Runtime, consent_id: str, dataset: str, caller: Caller | None = None) -> dict[str, Any]:
    """The consent, if valid now for ``dataset``; a ``caller`` must be one of its parties (checked first,
    so that nobody learns anything of other parties' consents)."""
    check = await rt.require_bus().request(subjects.CONSENT_CHECK, {"consent_id": consent_id, "dataset": dataset})
    if caller is not None:
        c = check.get("consent") or {}
        acting_as(caller, holder_id=str(c.get("holder_id")), recipient_id=str(c.get("recipient_id")), what=f"consent {consent_id}")
    if not check["valid"]:
        raise Forbidden(f"no valid consent {consent_id} for dataset {dataset}: {check['reason']}", reason="consent_invalid",
                        consent_reason=check["reason"])
    return dict(check["consent"])


async def resume_transfer(rt: Runtime, *, transfer_id: str, caller: Caller | None = None) -> dict[str, Any]:
    """Queue again a transfer that failed for a reason that may pass (``RESUMABLE``, e.g. the
    recipient was full); it continues after the last batch the recipient acknowledged.
    Raises NotFound, Conflict (409, not resumable), Forbidden (consent no longer valid).
    """
    t = await get_transfer(rt, transfer_id=transfer_id, caller=caller)
    if t["status"] != "failed" or t["reason"] not in RESUMABLE:
        raise Conflict(f"transfer {transfer_id} is {t['status']}" + (f" ({t['reason']})" if t["reason"] else "") + "; it cannot be resumed",
                       current_status=t["status"], current_reason=t["reason"])
    await _require_consent(rt, t["consent_id"], t["dataset"])
    async with rt.db.unit_of_work() as s:
        n = (await s.execute(models.transfers.update().where(models.transfers.c.id == transfer_id).where(models.transfers.c.status == "failed")
                             .values(status="queued", reason=None, failures=0, updated_at=datetime.now(UTC), finished_at=None))).rowcount
        if n != 1:
            raise Conflict(f"transfer {transfer_id} changed meanwhile")
        out = as_dict((await s.execute(select(models.transfers).where(models.transfers.c.id == transfer_id))).one())
        await add_event(s, models.outbox, subjects.TRANSFER_JOBS, "transfer.job",
                        {"transfer_id": transfer_id, "consent_id": t["consent_id"], "dataset": t["dataset"]})
        await add_event(s, models.outbox, f"{subjects.TRANSFER_EVENTS}.queued", "transfer.events.queued", event_data(out))
    rt.events_committed()
    return out


async def get_transfer(rt: Runtime, *, transfer_id: str, caller: Caller | None = None) -> dict[str, Any]:
    """One transfer; 404 if unknown, 403 ``not_a_party`` if ``caller`` is neither of its parties nor an admin."""
    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.transfers).where(models.transfers.c.id == transfer_id))).first()
    if row is None:
        raise NotFound(f"no transfer {transfer_id!r}")
    out = as_dict(row)
    if caller is not None:
        acting_as(caller, holder_id=out["holder_id"], recipient_id=out["recipient_id"], what=f"transfer {transfer_id}")
    return out


async def list_transfers(rt: Runtime, *, consent_id: str | None = None, party: str | None = None, limit: int = 100,
                         offset: int = 0) -> list[dict[str, Any]]:
    """Transfers, newest first; ``party`` limits them to those of one holder or recipient."""
    t = models.transfers
    q = select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit).offset(offset)
    if consent_id:
        q = q.where(t.c.consent_id == consent_id)
    if party:
        q = q.where((t.c.holder_id == party) | (t.c.recipient_id == party))
    async with rt.db.sessions() as s:
        return [as_dict(r) for r in (await s.execute(q)).all()]
