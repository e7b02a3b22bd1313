"""Tables of the consent service."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Integer, LargeBinary, MetaData, SmallInteger, String, Table, Text

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
    Column("frequency", String(32), nullable=True),
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

# ---- the consent log (services/consent/log.py; RFC 9162 section 2.1 Merkle tree over the entries) ----

# one leaf per consent or transfer event: RFC 8785 canonical JSON, never updated nor deleted
log_entries = Table(
    "log_entries",
    metadata,
    Column("index", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", Text, nullable=False),  # the canonical JSON text that is hashed
    Column("leaf_hash", LargeBinary(32), nullable=False),  # SHA-256(0x00 || entry)
    Column("event", String(32), nullable=False),
    Column("consent_id", String(64), nullable=True, index=True),
    Column("holder_id", String(64), nullable=True, index=True),
    Column("recipient_id", String(64), nullable=True, index=True),
    Column("time", DateTime(timezone=True), nullable=False, index=True),
    Column("dedupe_key", String(200), nullable=True, unique=True),  # a redelivered event appends nothing
)

# every complete subtree hash (level 0 = leaf hashes), written once when its last leaf arrives
log_nodes = Table(
    "log_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

# one row (id = 1): the tree size; every append locks it (UPDATE ... RETURNING) to take the next index
log_state = Table(
    "log_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
)

# signed checkpoints (C2SP tlog-checkpoint notes)
log_checkpoints = Table(
    "log_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# the per-subject HMAC keys behind the log's pseudonyms; erasing one makes the log unlinkable (GDPR Art. 17)
subject_secrets = Table(
    "subject_secrets",
    metadata,
    Column("data_subject", String(128), primary_key=True),
    Column("secret", LargeBinary(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
