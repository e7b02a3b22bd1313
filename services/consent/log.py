"""The consent log: an append-only Merkle tree (RFC 9162 section 2.1) over every consent and
transfer event, kept in the consent service's database, with signed checkpoints (C2SP
tlog-checkpoint). The Merkle arithmetic is :mod:`shared.tlog`; this module only stores it.

Entries (the leaf inputs, RFC 9162 section 2.1.1) are RFC 8785 canonical JSON objects, version 1:

* a consent event (``event`` in :data:`CONSENT_EVENTS`)::

    {"v": 1, "event": "authorised", "consent_id": "...", "subject": "<64 hex>",
     "holder_id": "...", "recipient_id": "...", "datasets": ["..."], "purpose_hash": "<64 hex>",
     "one_off": true, "expires_at": "<RFC 3339>", "status": "authorised", "time": "<RFC 3339>",
     "frequency": "P1D"              (recurring consents with a frequency only: ISO 8601 duration)
     "purpose_category": "dpv:ServiceProvision", "legal_basis": ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]
                                     (or "legal_basis_hash": "<64 hex>" for a basis written as free text)
     "data_from": "2025-01-01", "data_to": "2025-12-31", "supersedes": "<consent id>"   (each when set)
     "by": "data_subject"            (revoked only: who revoked)
     "transfer_id": "..."            (consumed only: the transfer that consumed it)}

  ``subject`` is the keyed pseudonym HMAC-SHA256(per-subject secret, data subject id); the secret
  lives in ``subject_secrets``, outside the log, and erasing it (GDPR Art. 17) leaves the log
  verifiable but unlinkable. ``purpose_hash`` is SHA-256 of the purpose text (UTF-8). No free
  text (purpose, revocation reason) enters the log.

* a transfer that ended (``event`` = ``transfer_<status>``, status in :data:`TRANSFER_ENDINGS`)::

    {"v": 1, "event": "transfer_completed", "transfer_id": "...", "consent_id": "...",
     "holder_id": "...", "recipient_id": "...", "dataset": "...", "records": 365,
     "sha256": "<64 hex>" | null, "status": "completed", "reason": null | "<reason code>",
     "time": "<RFC 3339>"}

  A ``failed`` or ``cancelled`` transfer with ``records > 0`` delivered part of the data.

Tables (:mod:`.models`): ``log_entries`` (one row per leaf), ``log_nodes`` (every complete
subtree hash, written once; the compact-range peaks of size n are its ``root_keys(n)`` nodes),
``log_state`` (one row: the size; every append takes the next index with ``UPDATE ... SET size =
size + 1 RETURNING``, which locks the row until commit on PostgreSQL, while SQLite's BEGIN
IMMEDIATE already serializes writers: one writer at a time, consecutive indexes),
``log_checkpoints``, ``subject_secrets``.

Costs: an append is four statements: claim the index (reading the subject's secret or the
dedupe key in the same statement), read the O(log n) peak nodes in one query, insert the entry,
insert the nodes it completes (1 + trailing ones of the index; 2 on average). A proof is one
statement reading the current size and the O(log n) nodes it needs. Nothing is ever rebuilt.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    LargeBinary,
    Result,
    SmallInteger,
    and_,
    bindparam,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.canonical import canonical
from shared.db import Database
from shared.errors import BrokerError, InvalidInput
from shared.settings import Settings
from shared.tlog import (
    Checkpoint,
    CompactRange,
    NodeKey,
    Signer,
    assemble_proof,
    consistency_proof_keys,
    fold_subtrees,
    inclusion_proof_keys,
    leaf_hash,
    required_nodes,
    root_keys,
)
from shared.tlog.merkle import MAX_TREE_SIZE

from . import models

log = logging.getLogger("consent.log")

ENTRY_VERSION = 1
CONSENT_EVENTS = frozenset({"requested", "authorised", "rejected", "revoked", "expired", "consumed", "superseded"})
TRANSFER_ENDINGS = ("completed", "partial", "failed", "cancelled")
# the ``event`` of every entry: a consent event, or ``transfer_<ending>`` (the /log/entries filter)
EVENT_PATTERN = "^(" + "|".join(sorted(CONSENT_EVENTS) + [f"transfer_{e}" for e in TRANSFER_ENDINGS]) + ")$"
MAX_PAGE = 1000
STATE_ID = 1


def rfc3339(dt: datetime) -> str:
    """``dt`` as RFC 3339 UTC with microseconds and ``Z`` (naive datetimes are taken as UTC)."""
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def pseudonym(secret: bytes, data_subject: str) -> str:
    """The data subject's pseudonym in the log: hex HMAC-SHA256(``secret``, UTF-8 subject id) (RFC 2104); 64 hex chars."""
    return hmac.new(secret, data_subject.encode("utf-8"), hashlib.sha256).hexdigest()


def signer_from_settings(settings: Settings) -> Signer:
    """The Ed25519 checkpoint signer: key name ``log_origin``, seed ``log_signing_key`` (base64, 32 bytes)."""
    return Signer.from_seed(settings.log_origin, base64.b64decode(settings.log_signing_key))


# ---------------------------------------------------------------------------
# State: the size in one locked row; the peaks are stored nodes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogState:
    """Tree ``size`` (leaves) and the hashes of ``root_keys(size)`` (``peaks``, 32 bytes each, left to right)."""

    size: int
    peaks: tuple[bytes, ...]

    def root(self) -> bytes:
        """MTH(D[size]) (RFC 9162 section 2.1.1): the right-to-left fold of the peaks."""
        return fold_subtrees(self.peaks)


def _upsert(db_is_sqlite: bool, table: Any) -> Any:
    return (sqlite_insert if db_is_sqlite else pg_insert)(table)


async def ensure_state(db: Database) -> None:
    """Create the single ``log_state`` row (size 0) if it does not exist yet; idempotent, race-free."""
    async with db.unit_of_work() as s:
        await s.execute(_upsert(db.is_sqlite, models.log_state).values(id=STATE_ID, size=0)
                        .on_conflict_do_nothing(index_elements=["id"]))


# Statements are built once (with bound parameters): building and keying a new one costs more CPU than
# running it on SQLite, and an append runs four.


@functools.cache
def _nodes_query(count: int) -> Any:
    """``count`` primary-key lookups OR-ed: SQLite plans a row-value ``IN`` as a full scan, this as one
    index search per key (PostgreSQL as a bitmap OR of index scans)."""
    t = models.log_nodes
    return select(t.c.level, t.c.idx, t.c.hash).where(
        or_(*(and_(t.c.level == bindparam(f"l{i}"), t.c.idx == bindparam(f"i{i}")) for i in range(count))))


@functools.cache
def _nodes_and_size_query(count: int) -> Any:
    """:func:`_nodes_query` plus one row ``(-1, current size, NULL)``: a proof's reads in one round trip."""
    st = models.log_state
    size_row = select(literal(-1, SmallInteger), st.c.size, sql_cast(null(), LargeBinary)).where(st.c.id == STATE_ID)
    return union_all(_nodes_query(count), size_row) if count else size_row


def _claim_query(also: Any) -> Any:
    st = models.log_state
    return (st.update().where(st.c.id == STATE_ID).values(size=st.c.size + 1)
            .returning(st.c.size, also.scalar_subquery().label("also")))


_CLAIM_WITH_SECRET = _claim_query(select(models.subject_secrets.c.secret)
                                  .where(models.subject_secrets.c.data_subject == bindparam("subject")))
_CLAIM_WITH_DEDUPE = _claim_query(select(models.log_entries.c["index"])
                                  .where(models.log_entries.c.dedupe_key == bindparam("dedupe_key")))
_RELEASE = (models.log_state.update().where(models.log_state.c.id == STATE_ID)
            .values(size=models.log_state.c.size - 1))
_INSERT_ENTRY = models.log_entries.insert()
_INSERT_NODE = models.log_nodes.insert()


def _key_params(keys: Sequence[NodeKey]) -> dict[str, int]:
    params: dict[str, int] = {}
    for i, (level, idx) in enumerate(keys):
        params[f"l{i}"], params[f"i{i}"] = level, idx
    return params


def _check_found(keys: Sequence[NodeKey], found: dict[NodeKey, bytes]) -> dict[NodeKey, bytes]:
    missing = [k for k in keys if k not in found]
    if missing:
        raise BrokerError(f"the consent log lacks node {missing[0]}")
    return found


async def _fetch_nodes(s: AsyncSession, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
    """Hashes of the complete subtrees ``keys`` in one query; BrokerError (500) if one is missing."""
    if not keys:
        return {}
    rows = (await s.execute(_nodes_query(len(keys)), _key_params(keys))).all()
    return _check_found(keys, {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows})


class NodeCache:
    """The proof nodes read lately, at most ``capacity`` (least recently used go first; 32-byte hashes, about
    10 MB for the default). A node is the hash of a complete subtree: written once and never changed, so a
    cached one is what the database holds. Only proofs read it (appends and checkpoints always read the
    database), and every node an append writes leaves it (:func:`_write`): a log truncated and regrown behind
    the service (a backup restored) is served as the database holds it once this process wrote the new
    history. Another replica's cache keeps the old nodes until they leave it: its proofs then fail to verify,
    which a verifier reports, as it must report that rewrite anyway. One cache per database engine."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._nodes: OrderedDict[NodeKey, bytes] = OrderedDict()

    def get(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        found: dict[NodeKey, bytes] = {}
        for k in keys:
            h = self._nodes.get(k)
            if h is not None:
                self._nodes.move_to_end(k)
                found[k] = h
        return found

    def discard(self, keys: Sequence[NodeKey]) -> None:
        for k in keys:
            self._nodes.pop(k, None)

    def put(self, nodes: dict[NodeKey, bytes]) -> None:
        self._nodes.update(nodes)
        for k in nodes:
            self._nodes.move_to_end(k)
        while len(self._nodes) > self.capacity:
            self._nodes.popitem(last=False)


_NODE_CACHES: weakref.WeakKeyDictionary[Any, NodeCache] = weakref.WeakKeyDictionary()  # by the writer's sync Engine


async def _fetch_proof_nodes(db: Database, keys: Sequence[NodeKey], size: int) -> dict[NodeKey, bytes]:
    """The nodes ``keys`` of a proof within the first ``size`` leaves: those the :class:`NodeCache` lacks, with
    the current size, in one statement. Raises InvalidInput (400) if ``size`` exceeds the current size,
    BrokerError if a node is missing."""
    cache = _NODE_CACHES.setdefault(db.engine.sync_engine, NodeCache())
    found = cache.get(keys)
    missing = [k for k in keys if k not in found]
    async with db.read_engine.connect() as conn:  # a bare read connection: no ORM session on the hot path
        rows = (await conn.execute(_nodes_and_size_query(len(missing)), _key_params(missing))).all()
    current = next((int(r[1]) for r in rows if int(r[0]) == -1), None)
    if current is None:
        raise BrokerError("the consent log is not initialised")
    if size > current:
        raise InvalidInput(f"the log has {current} entries, fewer than {size}", tree_size=current)
    read = {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows if int(r[0]) >= 0}
    cache.put(read)
    return _check_found(keys, found | read)


async def _peaks(s: AsyncSession, size: int) -> list[bytes]:
    keys = root_keys(size)
    nodes = await _fetch_nodes(s, keys)
    return [nodes[k] for k in keys]


async def _size(s: AsyncSession) -> int:
    size = (await s.execute(select(models.log_state.c.size).where(models.log_state.c.id == STATE_ID))).scalar_one_or_none()
    if size is None:
        raise BrokerError("the consent log is not initialised")
    return int(size)


async def current_size(db: Database) -> int:
    """The number of entries in the log (one read). Raises BrokerError if :func:`ensure_state` never ran."""
    async with db.sessions() as s:
        return await _size(s)


async def read_state(db: Database) -> LogState:
    """The current size and peaks, without a lock (two reads: the size, then its O(log n) peak nodes).
    Raises BrokerError if :func:`ensure_state` never ran."""
    async with db.sessions() as s:
        size = await _size(s)
        return LogState(size, tuple(await _peaks(s, size)))


async def _claim_index(s: AsyncSession, claim: Any, params: dict[str, Any]) -> tuple[int, Any]:
    """Take the next index: ``UPDATE log_state SET size = size + 1 ... RETURNING`` locks the row until the
    transaction ends (PostgreSQL; on SQLite BEGIN IMMEDIATE already holds the write lock), so concurrent
    appends get distinct, consecutive indexes. ``claim`` also returns one scalar (the subject's secret or
    the index logged under a dedupe key) in the same statement; on PostgreSQL that subquery reads the
    snapshot taken before the lock was granted, so callers check a None again. Returns ``(index, scalar)``."""
    row = (await s.execute(claim, params)).first()
    if row is None:
        raise BrokerError("the consent log is not initialised")
    return int(row.size) - 1, row.also


async def _release_index(s: AsyncSession) -> None:
    await s.execute(_RELEASE)


# ---------------------------------------------------------------------------
# Appends (inside the caller's transaction)
# ---------------------------------------------------------------------------


async def _write(s: AsyncSession, index: int, entry: dict[str, Any], *, time: datetime,
                 consent_id: str | None, holder_id: str | None, recipient_id: str | None, dedupe_key: str | None) -> int:
    """Store entry ``index`` (claimed by :func:`_claim_index`) and the nodes it completes."""
    text = canonical(entry)
    lh = leaf_hash(text)
    cr = CompactRange(index, await _peaks(s, index))
    nodes = cr.append(lh)
    await s.execute(_INSERT_ENTRY, {"index": index, "entry": text.decode("utf-8"), "leaf_hash": lh, "event": str(entry["event"]),
                                    "consent_id": consent_id, "holder_id": holder_id, "recipient_id": recipient_id, "time": time,
                                    "dedupe_key": dedupe_key})
    rows = [{"level": level, "idx": idx, "hash": h} for (level, idx), h in nodes]
    await s.execute(_INSERT_NODE, rows[0] if len(rows) == 1 else rows)
    cache = _NODE_CACHES.get(s.bind.sync_engine)
    if cache is not None:  # these keys are written anew: a cached old node of them goes (NodeCache)
        cache.discard([key for key, _ in nodes])
    return index


def _rowcount(result: Result[Any]) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _on_sqlite(s: AsyncSession) -> bool:
    return s.get_bind().dialect.name == "sqlite"


async def _new_subject_secret(s: AsyncSession, data_subject: str) -> bytes:
    """Create the subject's secret, or read the one a concurrent transaction just committed (PostgreSQL: the
    subquery of :func:`_claim_index` reads the snapshot taken before the lock was granted)."""
    t = models.subject_secrets
    secret = os.urandom(32)
    ins = _upsert(_on_sqlite(s), t).values(data_subject=data_subject, secret=secret, created_at=datetime.now(UTC))
    if _rowcount(await s.execute(ins.on_conflict_do_nothing(index_elements=["data_subject"]))) == 1:
        return secret
    return bytes((await s.execute(select(t.c.secret).where(t.c.data_subject == data_subject))).scalar_one())


async def append_consent_event(s: AsyncSession, consent: dict[str, Any], event: str, *, time: datetime,
                               by: str | None = None, transfer_id: str | None = None) -> int:
    """Append the consent event ``event`` for ``consent`` (the service's consent dict) in the caller's
    transaction; returns the entry's 0-based index. Takes the log lock, then derives the subject's
    pseudonym (creating its secret on first use). Raises ValueError for an unknown ``event``.
    """
    if event not in CONSENT_EVENTS:
        raise ValueError(f"unknown consent event {event!r}")
    index, secret = await _claim_index(s, _CLAIM_WITH_SECRET, {"subject": consent["data_subject"]})
    secret = bytes(secret) if secret is not None else await _new_subject_secret(s, consent["data_subject"])
    entry: dict[str, Any] = {
        "v": ENTRY_VERSION, "event": event, "consent_id": consent["id"], "subject": pseudonym(secret, consent["data_subject"]),
        "holder_id": consent["holder_id"], "recipient_id": consent["recipient_id"], "datasets": list(consent["datasets"]),
        "purpose_hash": hashlib.sha256(consent["purpose"].encode("utf-8")).hexdigest(), "one_off": bool(consent["one_off"]),
        "expires_at": rfc3339(datetime.fromisoformat(consent["expires_at"])), "status": consent["status"], "time": rfc3339(time),
    }
    if consent.get("frequency"):
        entry["frequency"] = consent["frequency"]
    entry |= _lawfulness(consent)
    if by is not None:
        entry["by"] = by
    if transfer_id is not None:
        entry["transfer_id"] = transfer_id
    return await _write(s, index, entry, time=time, consent_id=consent["id"], holder_id=consent["holder_id"],
                        recipient_id=consent["recipient_id"], dedupe_key=None)


_TERM = re.compile(r"^([a-z][a-z0-9-]*:[A-Za-z0-9][A-Za-z0-9._/#-]*|https://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+)$")


@functools.lru_cache(maxsize=256)
def _legal_basis(value: str) -> tuple[str, tuple[str, ...] | str]:
    """``("legal_basis", terms)``, or ``("legal_basis_hash", hex)`` for a basis written as free text (a few
    distinct values in a whole log: cached, hence immutable)."""
    from .receipts import legal_bases

    terms = tuple(legal_bases(value))
    if all(_TERM.match(t) for t in terms):
        return "legal_basis", terms
    return "legal_basis_hash", hashlib.sha256(value.encode("utf-8")).hexdigest()


def _lawfulness(consent: dict[str, Any]) -> dict[str, Any]:
    """What a regulator checks the consent's lawfulness by, without free text: ``purpose_category`` (a DPV term,
    validated on the way in), ``legal_basis`` (DPV / eu-gdpr terms, :func:`services.consent.receipts.legal_bases`;
    a basis written as other text enters only as ``legal_basis_hash``, the SHA-256 of it), the data window
    (``data_from``/``data_to``, days) and ``supersedes`` (the consent it amends), each when set."""
    out: dict[str, Any] = {}
    if consent.get("purpose_category"):
        out["purpose_category"] = str(consent["purpose_category"])
    if consent.get("legal_basis"):
        key, value = _legal_basis(str(consent["legal_basis"]))
        out[key] = list(value) if isinstance(value, tuple) else value
    for key in ("data_from", "data_to", "supersedes"):
        if consent.get(key):
            out[key] = str(consent[key])
    return out


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(str(value))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def transfer_dedupe_key(transfer: dict[str, Any]) -> str:
    """``transfer:<id>:<status>:<finished_at as RFC 3339 UTC>``: one entry per ending of a transfer, whatever
    the redeliveries (a transfer resumed after a ``failed`` ending may end again, and is logged again)."""
    finished = _when(transfer.get("finished_at"))
    return f"transfer:{transfer['id']}:{transfer['status']}:{rfc3339(finished) if finished else ''}"[:200]


async def append_transfer_ending(s: AsyncSession, transfer: dict[str, Any]) -> tuple[int, bool]:
    """Append the ending of ``transfer`` (the ``transfer`` object of a ``transfer.events.<status>`` event) in the
    caller's transaction, exactly once per :func:`transfer_dedupe_key`. Returns ``(index, appended)``;
    ``appended`` is False when the same ending was logged before (a redelivery). Raises ValueError if its
    status is not one of :data:`TRANSFER_ENDINGS`.
    """
    status = str(transfer["status"])
    if status not in TRANSFER_ENDINGS:
        raise ValueError(f"transfer {transfer.get('id')} is {status}, not an ending")
    key = transfer_dedupe_key(transfer)
    t = models.log_entries
    index, existing = await _claim_index(s, _CLAIM_WITH_DEDUPE, {"dedupe_key": key})
    if existing is None and not _on_sqlite(s):  # PostgreSQL: look again, now that we hold the lock (new snapshot)
        existing = (await s.execute(select(t.c["index"]).where(t.c.dedupe_key == key))).scalar_one_or_none()
    if existing is not None:  # a redelivery: give the index back (we still hold the lock)
        await _release_index(s)
        return int(existing), False
    time = _when(transfer.get("finished_at")) or _when(transfer.get("updated_at")) or datetime.now(UTC)
    entry = {
        "v": ENTRY_VERSION, "event": f"transfer_{status}", "transfer_id": transfer["id"], "consent_id": transfer.get("consent_id"),
        "holder_id": transfer.get("holder_id"), "recipient_id": transfer.get("recipient_id"), "dataset": transfer.get("dataset"),
        "records": int(transfer.get("records") or 0), "sha256": transfer.get("sha256"), "status": status,
        "reason": transfer.get("reason"), "time": rfc3339(time),
    }
    await _write(s, index, entry, time=time, consent_id=transfer.get("consent_id"), holder_id=transfer.get("holder_id"),
                         recipient_id=transfer.get("recipient_id"), dedupe_key=key)
    return index, True


async def erase_subject_secret_in(s: AsyncSession, data_subject: str) -> bool:
    """Delete the data subject's pseudonym secret (GDPR Art. 17) in the caller's transaction; True if there
    was one. The log stays verifiable; its entries for this subject can no longer be linked to them. A later
    consent of the same person gets a new secret, hence a new, unlinkable pseudonym."""
    return bool(_rowcount(await s.execute(models.subject_secrets.delete().where(models.subject_secrets.c.data_subject == data_subject))))


def latest_index_for_consent() -> Any:
    """A correlated scalar subquery: the index of the latest consent-event entry of ``consents.id`` (None if none)."""
    t = models.log_entries
    return (select(func.max(t.c["index"])).where(t.c.consent_id == models.consents.c.id)
            .where(t.c.event.not_like("transfer\\_%", escape="\\")).scalar_subquery())


# ---------------------------------------------------------------------------
# Reads: entries, proofs, checkpoints
# ---------------------------------------------------------------------------


def entry_json(row: Any) -> dict[str, Any]:
    """``{"index", "entry", "leaf_hash"}`` of a ``log_entries`` row; ``entry`` is the stored JSON object
    (or the stored text as a string if it is not JSON: the verifier then reports that index)."""
    m = row._mapping
    try:
        entry: Any = json.loads(m["entry"])
    except ValueError:
        entry = m["entry"]
    return {"index": int(m["index"]), "entry": entry, "leaf_hash": bytes(m["leaf_hash"]).hex()}


def _as_utc(dt: datetime) -> datetime:
    """``dt`` in UTC (a naive one is taken as UTC). A time whose UTC value is outside the years 1 to 9999
    (``0001-01-01T00:00:00+01:00``) becomes the first or last representable instant, which bounds the
    same entries."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        return (datetime.min if dt.year == 1 else datetime.max).replace(tzinfo=UTC)


async def list_entries(db: Database, *, start: int = 0, end: int | None = None, limit: int = MAX_PAGE,
                       consent_id: str | None = None, holder_id: str | None = None, recipient_id: str | None = None,
                       event: str | None = None, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """One page of entries with ``start <= index < end`` matching every given filter, by index.

    ``since``/``until`` bound the entry time (inclusive, exclusive). Returns ``{"size": tree size,
    "entries": [entry_json...], "next_start": index to ask next | None}``. Raises InvalidInput (400)
    if ``start < 0``, ``end < start`` or ``limit`` is not in ``[1, 1000]``.
    """
    if start < 0 or (end is not None and end < start) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"need 0 <= start <= end and 1 <= limit <= {MAX_PAGE}")
    t = models.log_entries
    where: list[ColumnElement[bool]] = [t.c["index"] >= start]
    if end is not None:
        where.append(t.c["index"] < end)
    for col, value in (("consent_id", consent_id), ("holder_id", holder_id), ("recipient_id", recipient_id), ("event", event)):
        if value is not None:
            where.append(t.c[col] == value)
    if since is not None:
        where.append(t.c.time >= _as_utc(since))
    if until is not None:
        where.append(t.c.time < _as_utc(until))
    q = select(t.c["index"], t.c.entry, t.c.leaf_hash).where(*where).order_by(t.c["index"]).limit(limit + 1)
    async with db.sessions() as s:
        size = await _size(s)
        rows = (await s.execute(q)).all()
    page = [entry_json(r) for r in rows[:limit]]
    return {"size": size, "entries": page, "next_start": page[-1]["index"] + 1 if len(rows) > limit else None}


async def iter_entries(db: Database, start: int, end: int, *, chunk: int = MAX_PAGE) -> AsyncIterator[dict[str, Any]]:
    """Every stored entry with ``start <= index < end`` as :func:`entry_json`, by index, read ``chunk`` rows
    per short transaction (keyset pagination, so a long export never holds a read transaction)."""
    t = models.log_entries
    pos = start
    while pos < end:
        async with db.sessions() as s:
            rows = (await s.execute(select(t.c["index"], t.c.entry, t.c.leaf_hash)
                                    .where(t.c["index"] >= pos, t.c["index"] < end).order_by(t.c["index"]).limit(chunk))).all()
        if not rows:
            return
        for r in rows:
            yield entry_json(r)
        pos = int(rows[-1]._mapping["index"]) + 1


async def inclusion_proof(db: Database, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 section 2.1.3.1), as 32-byte
    hashes: one statement reads the current size and the O(log size) nodes. Raises InvalidInput (400)
    unless ``0 <= index < size <= current size``."""
    if not 0 <= index < size <= MAX_TREE_SIZE:
        raise InvalidInput("need 0 <= index < size")
    elements = inclusion_proof_keys(index, size)
    keys = required_nodes(elements)
    return assemble_proof(elements, await _fetch_proof_nodes(db, keys, size))


async def consistency_proof(db: Database, first: int, second: int) -> list[bytes]:
    """The consistency proof between tree sizes ``first`` and ``second`` (RFC 9162 section 2.1.4.1), as 32-byte
    hashes: one statement reads the current size and the O(log second) nodes. Raises InvalidInput (400)
    unless ``0 < first <= second <= current size``."""
    if not 0 < first <= second <= MAX_TREE_SIZE:
        raise InvalidInput("need 0 < first <= second")
    elements = consistency_proof_keys(first, second)
    keys = required_nodes(elements)
    return assemble_proof(elements, await _fetch_proof_nodes(db, keys, second))


async def latest_checkpoint(db: Database) -> str | None:
    """The signed note of the largest checkpoint, or None before the first one."""
    t = models.log_checkpoints
    async with db.sessions() as s:
        note: str | None = (await s.execute(select(t.c.note).order_by(t.c.size.desc()).limit(1))).scalar_one_or_none()
    return note


async def latest_checkpoint_size(db: Database) -> int | None:
    """The tree size of the largest signed checkpoint, or None before the first one."""
    t = models.log_checkpoints
    async with db.sessions() as s:
        size = (await s.execute(select(func.max(t.c.size)))).scalar_one_or_none()
    return None if size is None else int(size)


async def issue_checkpoint(db: Database, signer: Signer, origin: str) -> int | None:
    """Sign and store a C2SP tlog-checkpoint for the current tree if it differs in size from the latest
    one; returns the size signed, or None when there was nothing new. Concurrent issuers are harmless
    (the size is the key; the same size always has the same root)."""
    if await latest_checkpoint_size(db) == await current_size(db):
        return None
    state = await read_state(db)
    t = models.log_checkpoints
    note = Checkpoint(origin, state.size, state.root()).sign(signer)
    async with db.unit_of_work() as s:
        await s.execute(_upsert(db.is_sqlite, t).values(size=state.size, note=note, created_at=datetime.now(UTC))
                        .on_conflict_do_nothing(index_elements=["size"]))
    return state.size


class Checkpointer:
    """Background task: a checkpoint at least every ``interval_s`` seconds while entries arrive."""

    def __init__(self, db: Database, signer: Signer, origin: str, *, interval_s: float = 1.0) -> None:
        self.db, self.signer, self.origin, self.interval_s = db, signer, origin, interval_s
        self._task: asyncio.Task[None] | None = None
        self.size = 0  # entries in the log at the last tick (the consent_log_entries gauge)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await issue_checkpoint(self.db, self.signer, self.origin)  # sign what arrived since the last tick
        except Exception:
            log.exception("final checkpoint failed")

    async def _run(self) -> None:
        while True:
            try:
                await issue_checkpoint(self.db, self.signer, self.origin)
                self.size = await current_size(self.db)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checkpoint failed; will retry")
            await asyncio.sleep(self.interval_s)
