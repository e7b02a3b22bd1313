"""Recurring consents: scheduled, incremental transfers.

The transfer service learns of recurring consents from ``consent.events`` (durable consumer
``transfer-consent-events``): an ``authorised`` consent with a ``frequency`` gets one schedule
per dataset, due at once; ``revoked``, ``expired``, ``rejected``, ``consumed`` or ``superseded`` ends them.
Every second the scheduler starts the transfers that are due; an occurrence is skipped while
the previous transfer of its schedule still runs. Each starts from the
``resume_cursor`` the holder gave at the end of the previous completed transfer, so it fetches
only what is new (a holder that gives none is read again from the start).

Several transfer API replicas may run the scheduler: a schedule is claimed with a
conditional update of its ``next_at``, so each occurrence starts one transfer only.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from shared import subjects
from shared.consumer import ConsumerSpec, Delivery, PullConsumer
from shared.durations import duration_seconds
from shared.errors import BrokerError, Forbidden
from shared.runtime import Runtime
from shared.subjects import STREAM_CONSENT_EVENTS

from . import models, service

log = logging.getLogger("services.transfer.schedule")


def consent_events_consumer(rt: Runtime) -> PullConsumer:
    """Keeps ``schedules`` in step with recurring consents."""

    async def on_event(env: dict[str, Any], _delivery: Delivery) -> None:
        consent = env["data"].get("consent") or {}
        kind = env["type"].rsplit(".", 1)[-1]
        if not consent.get("id"):
            return
        t = models.schedules
        async with rt.db.unit_of_work() as s:
            if kind == "authorised" and consent.get("frequency") and not consent.get("one_off", True):
                every = duration_seconds(consent["frequency"])
                for ds in consent.get("datasets") or []:
                    sid = f"{consent['id']}/{ds}"
                    if (await s.execute(select(t.c.id).where(t.c.id == sid))).first() is None:
                        await s.execute(t.insert().values(id=sid, consent_id=consent["id"], dataset=ds, every_s=every,
                                                          next_at=datetime.now(UTC), resume_cursor=None, active=True))
            elif kind in ("revoked", "expired", "rejected", "consumed", "superseded"):
                await s.execute(t.update().where(t.c.consent_id == consent["id"]).values(active=False))

    spec = ConsumerSpec(stream=STREAM_CONSENT_EVENTS.name, durable="transfer-consent-events",
                        filter_subject=f"{subjects.CONSENT_EVENTS}.>", msg_type=None, ack_wait_s=30, max_deliver=10)
    return PullConsumer(rt.require_bus(), spec, on_event, fetch_timeout_s=2.0)


async def run_due(rt: Runtime, *, now: datetime | None = None) -> int:
    """Start the transfers of every due, active schedule; returns how many were started."""
    now = now or datetime.now(UTC)
    t = models.schedules
    async with rt.db.sessions() as s:
        due = (await s.execute(select(t).where(t.c.active.is_(True)).where(t.c.next_at <= now))).all()
    started = 0
    for row in due:
        next_at = max(row.next_at if row.next_at.tzinfo else row.next_at.replace(tzinfo=UTC), now - timedelta(seconds=row.every_s))
        async with rt.db.unit_of_work() as s:  # claim this occurrence
            claimed = (await s.execute(t.update().where(t.c.id == row.id).where(t.c.next_at == row.next_at)
                                       .values(next_at=next_at + timedelta(seconds=row.every_s)))).rowcount
        if claimed != 1:
            continue
        if row.last_transfer_id:  # one occurrence at a time: the next one needs this one's resume cursor
            async with rt.db.sessions() as s:
                last = (await s.execute(select(models.transfers.c.status).where(models.transfers.c.id == row.last_transfer_id))).scalar()
            if last is not None and last not in service.TERMINAL:
                continue
        try:
            tr = await service.start_transfer(rt, consent_id=row.consent_id, dataset=row.dataset,
                                              start_cursor=row.resume_cursor, schedule_id=row.id)
        except Forbidden:
            async with rt.db.unit_of_work() as s:
                await s.execute(t.update().where(t.c.id == row.id).values(active=False))
            continue
        except BrokerError as exc:
            log.warning("schedule %s: could not start a transfer: %s", row.id, exc.detail)
            continue
        async with rt.db.unit_of_work() as s:
            await s.execute(t.update().where(t.c.id == row.id).values(last_transfer_id=tr["id"]))
        started += 1
    return started


class Scheduler:
    def __init__(self, rt: Runtime, *, tick_s: float = 1.0) -> None:
        self.rt, self.tick_s = rt, tick_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            try:
                await run_due(self.rt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
            await asyncio.sleep(self.tick_s)
