"""Transactional outbox: an event is written in the same transaction as the state change,
and a relay publishes it to JetStream afterwards (at least once; ``Nats-Msg-Id`` = event id,
so the stream drops the duplicates a crash between publish and mark could cause).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.trace import SpanKind
from sqlalchemy import JSON, BigInteger, Column, DateTime, Integer, MetaData, String, Table, Text, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from . import envelope, telemetry
from .bus import Bus
from .db import Database
from .errors import Unavailable

log = logging.getLogger("shared.outbox")


def outbox_table(metadata: MetaData) -> Table:
    """The ``outbox`` table of one service: (seq, id, subject, envelope, headers, created_at, published_at)."""
    return Table(
        "outbox",
        metadata,
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("subject", String(255), nullable=False),
        Column("envelope", Text, nullable=False),
        Column("headers", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
    )


async def add_event(
    session: AsyncSession, table: Table, subject: str, msg_type: str, data: dict[str, Any], *, correlation_id: str | None = None
) -> dict[str, Any]:
    """Write one event to the outbox inside the caller's transaction. Returns its envelope."""
    env = envelope.make(msg_type, data, correlation_id=correlation_id)
    await session.execute(
        table.insert().values(
            id=env["id"],
            subject=subject,
            envelope=envelope.encode(env).decode("utf-8"),
            headers=telemetry.inject_headers(),
            created_at=datetime.now(UTC),
        )
    )
    return env


class OutboxRelay:
    """Publishes unpublished outbox rows in order; woken by :meth:`notify` or every ``poll_s``."""

    PRUNE_EVERY_S = 600.0

    def __init__(self, db: Database, table: Table, bus: Bus, *, poll_s: float = 0.5, keep_published_s: float = 0.0) -> None:
        """``keep_published_s``: how long a published row stays in the table (0: for ever); older ones are
        deleted every ten minutes (:meth:`prune`): events name people, and nothing reads them once published."""
        self.db, self.table, self.bus, self.poll_s = db, table, bus, poll_s
        self.keep_published_s = keep_published_s
        self._pruned_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()

    async def prune(self, *, now: datetime | None = None) -> int:
        """Delete the rows published more than ``keep_published_s`` ago; returns how many (0 when kept for ever)."""
        if self.keep_published_s <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.keep_published_s)
        async with self.db.unit_of_work() as session:
            result = await session.execute(self.table.delete().where(self.table.c.published_at.is_not(None))
                                           .where(self.table.c.published_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)

    async def _run(self) -> None:
        while True:
            try:
                await self.flush()
                if time.monotonic() - self._pruned_at >= self.PRUNE_EVERY_S:
                    self._pruned_at = time.monotonic()
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay pass failed; will retry")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def flush(self) -> int:
        """Publish every pending row; returns how many were published."""
        published = 0
        while True:
            async with self.db.sessions() as session:
                rows = (
                    await session.execute(
                        select(self.table).where(self.table.c.published_at.is_(None)).order_by(self.table.c.seq).limit(100)
                    )
                ).all()
            if not rows:
                return published
            done: list[int] = []
            try:
                for row in rows:
                    try:
                        # the producer span continues the trace of the transaction that wrote the event
                        parent = telemetry.extract_context(dict(row.headers or {}))
                        with telemetry.tracer().start_as_current_span(f"{row.subject} publish", context=parent, kind=SpanKind.PRODUCER):
                            await self.bus.publish(row.subject, row.envelope.encode("utf-8"), msg_id=row.id, headers=telemetry.inject_headers())
                    except Unavailable:
                        log.warning("outbox: NATS unavailable, %s stays pending", row.id)
                        return published
                    done.append(row.seq)
            finally:
                if done:  # one transaction marks the whole batch published
                    async with self.db.unit_of_work() as session:
                        await session.execute(
                            update(self.table).where(self.table.c.seq.in_(done)).values(published_at=datetime.now(UTC))
                        )
                    published += len(done)

