"""Tables of the registry service (its own database or PostgreSQL schema)."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Integer, MetaData, String, Table, Text

from shared.outbox import outbox_table

metadata = MetaData()

participants = Table(
    "participants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(500), nullable=True),
    Column("export_base_url", String(500), nullable=True),
    Column("import_base_url", String(500), nullable=True),
    Column("import_protocol", String(16), nullable=True),  # broker (when null), solid, cozy: docs/personal-clouds.md
    Column("oauth_token_url", String(500), nullable=True),
    Column("limits", JSON, nullable=True),
    Column("legal_entity", JSON, nullable=True),
    Column("brands", JSON, nullable=True),
    Column("contacts", JSON, nullable=True),
    Column("notification_url", String(500), nullable=True),
    Column("authorization_server_metadata_url", String(500), nullable=True),
    Column("jwks_uri", String(500), nullable=True),
    Column("jwks", JSON, nullable=True),
    Column("allow_private_network", Boolean, nullable=False, default=False),
    Column("status_effective_at", DateTime(timezone=True), nullable=True),
    Column("datasets_offered", JSON, nullable=False),
    Column("datasets_accepted", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

dataset_types = Table(
    "dataset_types",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("title", String(300), nullable=False),
    Column("description", Text, nullable=False),
    Column("schema", JSON, nullable=False),
    Column("units", JSON, nullable=False),
)

# every change, with who made it and when
changes = Table(
    "changes",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False, index=True),
    Column("details", JSON, nullable=False),
)

# OAuth 2.0 authorization server (oauth.py): client assertion ids already used (RFC 7523 section 3, item 7),
# kept until the assertion expires, so that an assertion is accepted once
oauth_used_jti = Table(
    "oauth_used_jti",
    metadata,
    Column("client_id", String(200), primary_key=True),
    Column("jti", String(200), primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# access tokens revoked (RFC 7009) before their expiry, kept until then
oauth_revoked_tokens = Table(
    "oauth_revoked_tokens",
    metadata,
    Column("jti", String(200), primary_key=True),
    Column("client_id", String(200), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("revoked_at", DateTime(timezone=True), nullable=False),
    Column("revoked_by", String(200), nullable=False),
)

outbox = outbox_table(metadata)
