"""Tables of the consent service."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, MetaData, String, Table, Text

from shared.outbox import outbox_table

metadata = MetaData()

consents = Table(
    "consents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("data_subject", String(128), nullable=False, index=True),
    Column("holder_id", String(64), nullable=False, index=True),
    Column("recipient_id", String(64), nullable=False, index=True),
    Column("datasets", JSON, nullable=False),
    Column("purpose", String(1000), nullable=False),
    Column("one_off", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(500), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# the data holder's OAuth tokens for an authorised consent, encrypted (AES-GCM, shared.crypto)
holder_tokens = Table(
    "holder_tokens",
    metadata,
    Column("consent_id", String(64), primary_key=True),
    Column("sealed", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
)

outbox = outbox_table(metadata)
