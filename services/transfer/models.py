"""Tables of the transfer service."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Float, Integer, MetaData, String, Table

from shared.outbox import outbox_table

metadata = MetaData()

transfers = Table(
    "transfers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("consent_id", String(64), nullable=False, index=True),
    Column("dataset", String(128), nullable=False),
    # the dataset type the recipient receives: ``dataset`` itself, or the target of the catalogue converter applied
    # (shared/catalogue/converters.py); fixed when the transfer starts, so that a resumed one converts alike
    Column("delivered_dataset", String(128), nullable=True),
    Column("holder_id", String(64), nullable=False),
    Column("recipient_id", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("reason", String(64), nullable=True),
    Column("error", JSON, nullable=True),
    Column("refused", JSON, nullable=True),
    Column("cursor", String(2048), nullable=True),
    Column("start_cursor", String(2048), nullable=True),
    Column("resume_cursor", String(2048), nullable=True),
    Column("schedule_id", String(200), nullable=True),
    Column("batches", Integer, nullable=False, default=0),
    Column("records", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("sha256", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("worker", String(128), nullable=True),
    Column("total", BigInteger, nullable=True),
    Column("rate", Float, nullable=True),
    Column("eta_s", Float, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

# recurring consents: one schedule per (consent, dataset)
schedules = Table(
    "schedules",
    metadata,
    Column("id", String(200), primary_key=True),  # "<consent_id>/<dataset>"
    Column("consent_id", String(64), nullable=False, index=True),
    Column("dataset", String(128), nullable=False),
    Column("every_s", Integer, nullable=False),
    Column("next_at", DateTime(timezone=True), nullable=False, index=True),
    Column("resume_cursor", String(2048), nullable=True),
    Column("active", Boolean, nullable=False),
    Column("last_transfer_id", String(64), nullable=True),
)

outbox = outbox_table(metadata)
