"""The DB-backed consent log (services/consent/log.py) on a SQLite file, and the verifier reading it
through the read-only /log HTTP API (in process, over httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update

from services.consent import log, models
from services.consent.app import log_reader_app
from shared.audit import HttpLogSource, Mismatch, verify_log
from shared.canonical import canonical
from shared.db import Database
from shared.settings import Settings
from shared.tlog import MemoryTree, leaf_hash, open_checkpoint, verify_consistency, verify_inclusion

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def consent(i: int, subject: str = "alice") -> dict[str, Any]:
    return {"id": f"consent-{i}", "data_subject": subject, "holder_id": f"holder-{i % 2}", "recipient_id": "cloud",
            "datasets": ["enedis.v5.daily_consumption"], "purpose": "See my power use", "one_off": True, "status": "requested",
            "expires_at": (NOW + timedelta(days=30)).isoformat()}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh consent database: a SQLite file, or a fresh PostgreSQL schema when DATABASE_URL is set."""
    settings = Settings(database_url=os.environ.get("DATABASE_URL") or None, data_dir=tmp_path,
                        db_schema_prefix=f"u{uuid.uuid4().hex[:8]}_")
    d = Database(settings.database_url_for("consent"), models.metadata, settings.schema_for("consent"))
    await d.create_all()
    await log.ensure_state(d)
    await log.ensure_state(d)  # idempotent
    yield d
    if d.schema:
        async with d.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{d.schema}" CASCADE'))
    await d.dispose()


async def append(db: Database, i: int, subject: str = "alice", event: str = "requested") -> int:
    async with db.unit_of_work() as s:
        return await log.append_consent_event(s, consent(i, subject), event, time=NOW + timedelta(seconds=i))


async def test_concurrent_appends_get_consecutive_indexes_and_proofs_match_a_memory_tree(db: Database) -> None:
    got = await asyncio.gather(*(append(db, i, subject=f"s{i % 5}") for i in range(60)))
    assert sorted(got) == list(range(60))
    async with db.sessions() as s:
        rows = (await s.execute(select(models.log_entries).order_by(models.log_entries.c["index"]))).all()
    tree = MemoryTree()
    for r in rows:
        text = r.entry.encode()
        assert canonical(json.loads(text)) == text  # stored as RFC 8785 canonical JSON
        assert bytes(r.leaf_hash) == leaf_hash(text)
        tree.append_hash(bytes(r.leaf_hash))
    state = await log.read_state(db)
    assert state.size == 60 and state.root() == tree.root()
    rng = random.Random(3)
    for _ in range(100):
        size = rng.randint(1, 60)
        index = rng.randrange(size)
        proof = await log.inclusion_proof(db, index, size)
        assert proof == tree.inclusion_proof(index, size)
        verify_inclusion(tree.leaf_hash_at(index), index, size, proof, tree.root(size))
        first = rng.randint(1, size)
        cproof = await log.consistency_proof(db, first, size)
        assert cproof == tree.consistency_proof(first, size)
        verify_consistency(first, size, cproof, tree.root(first), tree.root(size))


async def test_entries_hold_pseudonyms_only_and_erasing_the_secret_unlinks_them(db: Database) -> None:
    await append(db, 0, subject="alice@example.org")
    await append(db, 1, subject="alice@example.org", event="authorised")
    await append(db, 2, subject="bob")
    page = await log.list_entries(db)
    texts = [str(e["entry"]) for e in page["entries"]]
    assert not any("alice" in t or "bob" in t or "See my power use" in t for t in texts)
    subjects = [e["entry"]["subject"] for e in page["entries"]]
    assert subjects[0] == subjects[1] != subjects[2] and len(subjects[0]) == 64
    for erased in (True, False):  # a second erasure finds no secret
        async with db.unit_of_work() as s:
            assert await log.erase_subject_secret_in(s, "alice@example.org") is erased
    await append(db, 3, subject="alice@example.org", event="requested")  # a new secret, a new pseudonym
    page = await log.list_entries(db)
    assert page["entries"][3]["entry"]["subject"] not in subjects
    assert page["entries"][0]["entry"]["subject"] == subjects[0]  # the log itself is unchanged


async def test_transfer_endings_are_logged_once_per_ending(db: Database) -> None:
    t = {"id": "t1", "consent_id": "consent-1", "holder_id": "holder-1", "recipient_id": "cloud", "dataset": "d", "status": "failed",
         "reason": "destination_full", "records": 200, "sha256": None, "finished_at": NOW.isoformat()}
    async with db.unit_of_work() as s:
        assert await log.append_transfer_ending(s, t) == (0, True)
    async with db.unit_of_work() as s:
        assert await log.append_transfer_ending(s, dict(t)) == (0, False)  # a redelivery
    resumed = dict(t, status="completed", reason=None, records=365, sha256="ab" * 32, finished_at=(NOW + timedelta(hours=1)).isoformat())
    async with db.unit_of_work() as s:
        assert await log.append_transfer_ending(s, resumed) == (1, True)
    assert (await append(db, 1)) == 2  # the redelivery gave its index back
    with pytest.raises(ValueError):
        async with db.unit_of_work() as s:
            await log.append_transfer_ending(s, dict(t, status="running"))
    page = await log.list_entries(db, consent_id="consent-1")
    assert [e["entry"]["event"] for e in page["entries"]] == ["transfer_failed", "transfer_completed", "requested"]
    assert page["entries"][0]["entry"]["records"] == 200


async def test_concurrent_redeliveries_of_one_ending_append_it_once(db: Database) -> None:
    t = {"id": "t9", "consent_id": "consent-9", "holder_id": "h", "recipient_id": "cloud", "dataset": "d", "status": "completed",
         "reason": None, "records": 3, "sha256": "cd" * 32, "finished_at": NOW.isoformat()}

    async def deliver() -> tuple[int, bool]:
        async with db.unit_of_work() as s:
            return await log.append_transfer_ending(s, dict(t))

    endings, _ = await asyncio.gather(asyncio.gather(*(deliver() for _ in range(8))),
                                      asyncio.gather(*(append(db, i, subject="zoe") for i in range(8))))
    assert sorted(appended for _, appended in endings) == [False] * 7 + [True]
    assert len({index for index, _ in endings}) == 1
    assert (await log.read_state(db)).size == 9
    assert len({e["entry"]["subject"] for e in (await log.list_entries(db))["entries"] if "subject" in e["entry"]}) == 1


async def test_filters_and_pages(db: Database) -> None:
    for i in range(12):
        await append(db, i)
    page = await log.list_entries(db, start=2, limit=4)
    assert [e["index"] for e in page["entries"]] == [2, 3, 4, 5] and page["next_start"] == 6 and page["size"] == 12
    page = await log.list_entries(db, start=10, limit=4)
    assert [e["index"] for e in page["entries"]] == [10, 11] and page["next_start"] is None
    assert [e["index"] for e in (await log.list_entries(db, holder_id="holder-1"))["entries"]] == [1, 3, 5, 7, 9, 11]
    since, until = NOW + timedelta(seconds=3), NOW + timedelta(seconds=6)
    assert [e["index"] for e in (await log.list_entries(db, since=since, until=until))["entries"]] == [3, 4, 5]
    assert [e["index"] for e in (await log.list_entries(db, consent_id="consent-4", start=0, end=4))["entries"]] == []


async def test_checkpoints_and_the_http_api_verify(db: Database) -> None:
    settings = Settings()
    signer = log.signer_from_settings(settings)
    assert await log.latest_checkpoint(db) is None
    assert await log.issue_checkpoint(db, signer, settings.log_origin) == 0
    assert await log.issue_checkpoint(db, signer, settings.log_origin) is None  # nothing new
    for i in range(9):
        await append(db, i)
    assert await log.issue_checkpoint(db, signer, settings.log_origin) == 9
    note = await log.latest_checkpoint(db)
    assert note is not None
    cp, _ = open_checkpoint(note, [signer.verifier()], origin=settings.log_origin)
    assert cp.size == 9 and cp.root_hash == (await log.read_state(db)).root()

    transport = httpx.ASGITransport(app=log_reader_app(db, signer))
    async with httpx.AsyncClient(transport=transport, base_url="http://log") as c:
        assert (await c.get("/log/public-key")).text == signer.vkey
        assert (await c.get("/log/checkpoint")).text == note
        assert (await c.get("/log/proof/inclusion", params={"index": 3})).json()["size"] == 9
        for params in ({"index": 9, "size": 9}, {"index": 0, "size": 10}):
            r = await c.get("/log/proof/inclusion", params=params)
            assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        r = await c.get("/log/proof/consistency", params={"first": 0, "second": 5})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        r = await c.get("/log/entries", params={"limit": 1001})
        assert r.status_code == 422
        lines = (await c.get("/log/export.jsonl", params={"start": 2, "end": 5})).text.splitlines()
        assert [json.loads(x)["index"] for x in lines] == [2, 3, 4]
    source = HttpLogSource("http://log", transport=transport)
    try:
        report, state = await verify_log(source, state=None)
        assert report.size == 9 and report.pinned_key
        for i in range(9, 14):
            await append(db, i)
        await log.issue_checkpoint(db, signer, settings.log_origin)
        report, state = await verify_log(source, state=state)
        assert (report.size, report.new_entries, report.consistency_from) == (14, 5, 9)
        async with db.unit_of_work() as s:  # one byte of one stored entry
            row = (await s.execute(select(models.log_entries.c.entry).where(models.log_entries.c["index"] == 11))).scalar_one()
            await s.execute(update(models.log_entries).where(models.log_entries.c["index"] == 11)
                            .values(entry=row.replace('"event":"requested"', '"event":"requestee"')))
        with pytest.raises(Mismatch) as exc:
            await verify_log(source, state=state)
        assert exc.value.index == 11
    finally:
        await source.aclose()


def test_the_proof_node_cache_keeps_the_latest_nodes_up_to_its_capacity() -> None:
    cache = log.NodeCache(capacity=3)
    cache.put({(0, 0): b"a" * 32, (0, 1): b"b" * 32, (1, 0): b"c" * 32})
    assert cache.get([(0, 0)]) == {(0, 0): b"a" * 32}  # now the most recent
    cache.put({(2, 0): b"d" * 32})  # evicts the least recently used: (0, 1)
    assert set(cache.get([(0, 0), (0, 1), (1, 0), (2, 0)])) == {(0, 0), (1, 0), (2, 0)}


async def test_proofs_served_partly_from_the_node_cache_still_verify(db: Database) -> None:
    tree = MemoryTree()
    for i in range(300):
        async with db.unit_of_work() as s:
            await log.append_consent_event(s, consent(i), "requested", time=NOW)
        async with db.sessions() as s:
            row = (await s.execute(select(models.log_entries.c.entry).where(models.log_entries.c["index"] == i))).scalar_one()
        tree.append(row.encode("utf-8"))
    for _ in range(3):  # the second and third rounds find most nodes in the cache
        for index in (0, 1, 150, 299):
            verify_inclusion(tree.leaf_hash_at(index), index, 300, await log.inclusion_proof(db, index, 300), tree.root(300))
        verify_consistency(100, 300, await log.consistency_proof(db, 100, 300), tree.root(100), tree.root(300))
    assert len(log._NODE_CACHES[db.engine.sync_engine]._nodes) > 0
