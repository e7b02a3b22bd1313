"""Tables of the consent service."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Date, DateTime, Integer, LargeBinary, MetaData, SmallInteger, String, Table, Text

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
    # W3C Data Privacy Vocabulary purpose category (e.g. dpv:ServiceProvision) and legal basis (e.g. dpv:Consent)
    Column("purpose_category", String(200), nullable=False, server_default="dpv:ServiceProvision"),
    Column("legal_basis", String(200), nullable=False, server_default="dpv:Consent"),
    Column("data_from", Date, nullable=True),  # the data window the consent covers (inclusive dates)
    Column("data_to", Date, nullable=True),
    Column("holder_subject", String(128), nullable=True),  # the customer id the holder's authorization server gave (``sub``)
    Column("supersedes", String(64), nullable=True),  # the consent this amended one replaces
    Column("superseded_by", String(64), nullable=True),
    Column("flow_step", String(32), nullable=True),  # how far the person went: screen, holder_login, callback
    Column("holder_check", String(32), nullable=True),  # confirmed | holder_lost_consent | unreachable
    Column("holder_checked_at", DateTime(timezone=True), nullable=True),
)

# signed consent receipts (JWS, Kantara Consent Receipt v1.1 payload), one per authorised consent
receipts = Table(
    "receipts",
    metadata,
    Column("consent_id", String(64), primary_key=True),
    Column("log_index", BigInteger, nullable=False),
    Column("jws", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# OAuth 2.0 authorization code flows in progress (state -> PKCE verifier): one use each, 10 minutes at most
auth_flows = Table(
    "auth_flows",
    metadata,
    Column("state_hash", String(64), primary_key=True),  # SHA-256 of the state: a database dump cannot finish a flow
    Column("kind", String(16), nullable=False),  # consent | login
    Column("consent_id", String(64), nullable=True, index=True),
    Column("holder_id", String(64), nullable=False),
    Column("session_hash", String(64), nullable=True),  # the browser session that started it
    Column("verifier_sealed", Text, nullable=False),  # the PKCE code verifier (RFC 7636), sealed
    Column("redirect_uri", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

# the person's browser sessions on the broker's pages: the cookie is a random id, we keep its hash
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    # who signed in at which holder: [[holder_id, holder_subject], ...]; this browser sees and revokes their consents
    Column("identities", JSON, nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# holder tokens of ended consents waiting to be revoked at the holder (RFC 7009), retried with backoff
token_revocations = Table(
    "token_revocations",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("consent_id", String(64), nullable=False),
    Column("holder_id", String(64), nullable=False),
    Column("sealed", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(500), nullable=True),
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
