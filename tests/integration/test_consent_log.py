"""The consent log over the real broker (issue "The consent log"): every consent event and every
finished transfer is logged, the regulator API serves entries, proofs and signed checkpoints, and
``portability-audit`` verifies the log, then catches each kind of tampering done directly in the
consent service's database (SQLite file, or its PostgreSQL schema when DATABASE_URL is set).

The module runs its own broker, so that tampering never disturbs other test modules.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from sqlalchemy import delete, insert, select, update
from typer.testing import CliRunner

from services.consent import models
from shared import envelope, subjects
from shared.audit import app as audit_app
from shared.canonical import canonical
from shared.catalogue import parse_file
from shared.db import Database
from shared.demo import client_as, credentials, CLOUD_ID, HOLDER_ID, consented_transfer, holder_records, register_participants
from shared.launcher import Stack
from shared.settings import Settings
from shared.tlog import Signer, leaf_hash, open_checkpoint
from tests.conftest import BAD_CUSTOMER, _bad_file, _drop_pg_schemas

pytestmark = pytest.mark.e2e

DAILY = "enedis.v5.daily_consumption"
DAILY_FILE = "enedis_v5_daily_consumption_myelectricaldatapy.json"
PAGE = 20


@pytest.fixture(scope="module")
def lstack(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("consent-log")
    database_url = os.environ.get("DATABASE_URL") or None
    prefix = f"l{uuid.uuid4().hex[:8]}_"
    s = Stack(data_dir=data_dir, database_url=database_url,
              holder_files=[real_dir / DAILY_FILE, _bad_file(real_dir, data_dir / "bad_daily.json")],
              extra_env={"DB_SCHEMA_PREFIX": prefix, "TRANSFER_PAGE_LIMIT": str(PAGE), "LOG_LEVEL": "INFO"})
    s.start()
    try:
        yield s
    finally:
        s.stop()
        if database_url and database_url.startswith("postgres"):
            _drop_pg_schemas(database_url, prefix)


@pytest.fixture(scope="module")
def c(lstack: Stack) -> Iterator[httpx.Client]:
    with client_as(lstack, "admin", timeout=30) as client:
        register_participants(client, lstack)
        yield client


@pytest.fixture(scope="module")
def customer(real_dir: Path) -> str:
    return parse_file(real_dir / DAILY_FILE).subject_key


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The regulator's state file, kept across the module's tests."""
    return tmp_path_factory.mktemp("auditor") / "state.json"


# ---- helpers --------------------------------------------------------------------------------------


def wait_for(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def all_entries(c: httpx.Client, s: Stack, **filters: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start: int | None = 0
    while start is not None:
        r = c.get(f"{s.url('consent')}/log/entries", params={"start": start, "limit": 7, **filters})
        assert r.status_code == 200, r.text
        out += r.json()["entries"]
        start = r.json()["next_start"]
    return out


def checkpoint_size(c: httpx.Client, s: Stack) -> int:
    note = c.get(f"{s.url('consent')}/log/checkpoint").text
    return int(note.split("\n")[1])


def settled(c: httpx.Client, s: Stack) -> int:
    """Wait until no entry is arriving and the latest checkpoint covers them all; returns the size."""
    def same() -> int | None:
        size = c.get(f"{s.url('consent')}/log/entries", params={"limit": 1}).json()["size"]
        time.sleep(0.3)
        again = c.get(f"{s.url('consent')}/log/entries", params={"limit": 1}).json()["size"]
        return size if size == again and checkpoint_size(c, s) == size else None
    return int(wait_for(same, timeout=30))


def audit(s: Stack, state: Path, *extra: str) -> tuple[int, str]:
    token = credentials(s, "regulator").source().token()
    r = CliRunner().invoke(audit_app, [s.url("consent"), "--state", str(state), "--token", token, *extra])
    return r.exit_code, r.output


def events_of(entries: list[dict[str, Any]], consent_id: str) -> list[str]:
    return [e["entry"]["event"] for e in entries if e["entry"].get("consent_id") == consent_id]


def new_consent(c: httpx.Client, s: Stack, subject: str, *, one_off: bool = True) -> dict[str, Any]:
    r = c.post(f"{s.url('consent')}/consents", json={"data_subject": subject, "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                     "datasets": [DAILY], "purpose": "tests of the consent log", "one_off": one_off})
    assert r.status_code == 201, r.text
    return dict(r.json())


class ConsentDb:
    """Direct access to the consent service's tables, as somebody with database access would tamper with them."""

    def __init__(self, s: Stack) -> None:
        settings = Settings(database_url=s.database_url, data_dir=s.data_dir, db_schema_prefix=s.extra_env["DB_SCHEMA_PREFIX"])
        self.url, self.schema = settings.database_url_for("consent"), settings.schema_for("consent")

    def run(self, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
        async def go() -> Any:
            db = Database(self.url, models.metadata, self.schema)
            try:
                async with db.unit_of_work() as session:
                    return await work(session)
            finally:
                await db.dispose()
        return asyncio.run(go())

    def row(self, index: int) -> dict[str, Any]:
        async def work(s: Any) -> dict[str, Any]:
            t = models.log_entries
            return dict((await s.execute(select(t).where(t.c["index"] == index))).one()._mapping)
        return dict(self.run(work))

    def set(self, index: int, **values: Any) -> None:
        async def work(s: Any) -> None:
            await s.execute(update(models.log_entries).where(models.log_entries.c["index"] == index).values(**values))
        self.run(work)

    def delete(self, index: int) -> None:
        async def work(s: Any) -> None:
            await s.execute(delete(models.log_entries).where(models.log_entries.c["index"] == index))
        self.run(work)

    def insert(self, row: dict[str, Any]) -> None:
        async def work(s: Any) -> None:
            await s.execute(insert(models.log_entries).values(**row))
        self.run(work)

    def truncate(self, size: int) -> None:
        """Cut the log back to ``size`` entries, with its nodes, state and later checkpoints."""
        async def work(s: Any) -> None:
            n = models.log_nodes.c
            await s.execute(delete(models.log_entries).where(models.log_entries.c["index"] >= size))
            for level in range(64):  # node (level, idx) covers leaves up to (idx + 1) * 2**level
                await s.execute(delete(models.log_nodes).where(n.level == level, n.idx >= size >> level))
            await s.execute(delete(models.log_checkpoints).where(models.log_checkpoints.c.size > size))
            await s.execute(update(models.log_state).values(size=size))
        self.run(work)


# ---- the log records everything ---------------------------------------------------------------------


def test_every_consent_event_and_every_finished_transfer_is_logged_once(c: httpx.Client, lstack: Stack, customer: str) -> None:
    s = lstack
    done = consented_transfer(c, s, customer=customer, dataset=DAILY, data_subject="log-alice")
    assert done["status"] == "completed"
    failed = consented_transfer(c, s, customer=BAD_CUSTOMER, dataset=DAILY, data_subject="log-bob")
    assert failed["status"] == "failed" and failed["transfer"]["reason"] == "schema_violation"
    rejected = new_consent(c, s, "log-carol")
    assert c.post(f"{s.url('consent')}/consents/{rejected['id']}/reject").json()["status"] == "rejected"
    # a transfer cancelled by a revocation in its middle
    slow = new_consent(c, s, "log-dave", one_off=False)
    token = c.post(f"{s.url('holder')}/dev/tokens", json={"customer_id": customer, "datasets": [DAILY]}).json()
    assert c.post(f"{s.url('consent')}/consents/{slow['id']}/authorise", json=token).status_code == 200
    c.put(f"{s.url('holder')}/dev/faults", json={"delay_s": 0.3}).raise_for_status()
    try:
        t = c.post(f"{s.url('transfer')}/transfers", json={"consent_id": slow["id"], "dataset": DAILY}).json()
        wait_for(lambda: c.get(f"{s.url('transfer')}/transfers/{t['id']}").json()["batches"] >= 1)
        assert c.post(f"{s.url('consent')}/consents/{slow['id']}/revoke", json={"by": "holder"}).json()["status"] == "revoked"
        cancelled = wait_for(lambda: (x := c.get(f"{s.url('transfer')}/transfers/{t['id']}").json())["status"] == "cancelled" and x)
    finally:
        c.put(f"{s.url('holder')}/dev/faults", json={}).raise_for_status()
    # a partial transfer: the recipient refuses some records and keeps the others
    refused = holder_records(c, s, customer, DAILY)[10]["value"]
    c.put(f"{s.url('cloud')}/dev/faults", json={"refuse_values": [refused]}).raise_for_status()
    try:
        partial = consented_transfer(c, s, customer=customer, dataset=DAILY, data_subject="log-henri")
    finally:
        c.put(f"{s.url('cloud')}/dev/faults", json={}).raise_for_status()
    assert partial["status"] == "partial", partial["transfer"]

    def logged() -> list[dict[str, Any]] | None:
        entries = all_entries(c, s)
        ok = (events_of(entries, done["consent_id"])[-1:] == ["consumed"]
              and "transfer_failed" in events_of(entries, failed["consent_id"])
              and "transfer_cancelled" in events_of(entries, slow["id"])
              and "transfer_partial" in events_of(entries, partial["consent_id"]))
        return entries if ok else None

    entries = wait_for(logged)
    assert events_of(entries, done["consent_id"]) == ["requested", "authorised", "transfer_completed", "consumed"]
    assert events_of(entries, failed["consent_id"]) == ["requested", "authorised", "transfer_failed"]
    assert events_of(entries, rejected["id"]) == ["requested", "rejected"]
    assert events_of(entries, slow["id"]) in (["requested", "authorised", "revoked", "transfer_cancelled"],
                                              ["requested", "authorised", "transfer_cancelled", "revoked"])
    assert [e["index"] for e in entries] == list(range(len(entries)))
    by_transfer: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e["entry"]["event"].startswith("transfer_"):
            by_transfer.setdefault(e["entry"]["transfer_id"], []).append(e["entry"])
    assert events_of(entries, partial["consent_id"])[:3] == ["requested", "authorised", "transfer_partial"]
    assert sorted(len(v) for v in by_transfer.values()) == [1, 1, 1, 1]
    (completed,) = by_transfer[done["transfer_id"]]
    assert (completed["records"], completed["sha256"], completed["status"]) == (365, done["sha256"], "completed")
    (bad,) = by_transfer[failed["transfer_id"]]
    assert bad["reason"] == "schema_violation" and bad["records"] == failed["transfer"]["records"] > 0  # partly delivered
    (stop,) = by_transfer[cancelled["id"]]
    assert stop["reason"] == "consent_revoked" and stop["records"] < 365
    (part,) = by_transfer[partial["transfer_id"]]
    assert part["status"] == "partial" and part["reason"] == "records_refused" and 0 < part["records"] < 365
    revoked = next(e["entry"] for e in entries if e["entry"]["event"] == "revoked")
    assert revoked["by"] == "holder" and revoked["consent_id"] == slow["id"]
    # entries are canonical JSON with pseudonyms, never the person's id nor free text
    for e in entries:
        assert leaf_hash(canonical(e["entry"])).hex() == e["leaf_hash"]
        text = json.dumps(e["entry"])
        assert "log-alice" not in text and "tests of the consent log" not in text and "Show my electricity" not in text
    alice = [e["entry"]["subject"] for e in entries if e["entry"].get("consent_id") == done["consent_id"] and "subject" in e["entry"]]
    assert len(set(alice)) == 1 and len(alice[0]) == 64
    # each consent tells the index of the entry of its current status
    consent = c.get(f"{s.url('consent')}/consents/{done['consent_id']}").json()
    assert entries[consent["log_index"]]["entry"]["event"] == "consumed" == consent["status"]
    listed = c.get(f"{s.url('consent')}/consents", params={"data_subject": "log-carol"}).json()["consents"]
    assert entries[listed[0]["log_index"]]["entry"]["event"] == "rejected"


def test_a_redelivered_transfer_event_appends_nothing(c: httpx.Client, lstack: Stack) -> None:
    s = lstack
    before = settled(c, s)
    last = next(e for e in reversed(all_entries(c, s)) if e["entry"]["event"] == "transfer_completed")
    transfer = c.get(f"{s.url('transfer')}/transfers/{last['entry']['transfer_id']}").json()

    async def republish() -> None:
        nc = await nats.connect(s.nats_url or "")
        try:
            js = nc.jetstream()
            env = envelope.make("transfer.events.completed", {"transfer": transfer})  # a new message id: not deduplicated by NATS
            ack = await js.publish(f"{subjects.TRANSFER_EVENTS}.completed", envelope.encode(env))
            deadline = time.monotonic() + 20
            while True:
                info = await js.consumer_info(subjects.STREAM_TRANSFER_EVENTS.name, "consent-transfer-completed")
                if info.delivered.stream_seq >= ack.seq and info.num_ack_pending == 0:
                    return
                assert time.monotonic() < deadline, info
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    asyncio.run(republish())
    assert settled(c, s) == before


def test_entries_are_appended_concurrently_without_gaps(c: httpx.Client, lstack: Stack) -> None:
    s = lstack
    before = settled(c, s)
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: new_consent(c, s, f"log-many-{i % 3}"), range(24)))
    indexes = sorted(m["log_index"] for m in made)
    assert indexes == list(range(before, before + 24))
    assert settled(c, s) == before + 24


# ---- the regulator API --------------------------------------------------------------------------------


def test_regulator_api(c: httpx.Client, lstack: Stack) -> None:
    s = lstack
    size = settled(c, s)
    base = f"{s.url('consent')}/log"
    signer = Signer.from_seed(Settings().log_origin, base64.b64decode(Settings().log_signing_key))
    r = c.get(f"{base}/public-key")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain") and r.text == signer.vkey
    r = c.get(f"{base}/checkpoint")
    assert r.headers["content-type"].startswith("text/plain")
    cp, _ = open_checkpoint(r.text, [signer.verifier()], origin=Settings().log_origin)
    assert cp.size == size
    entries = all_entries(c, s)
    first = entries[0]["entry"]
    assert {e["index"] for e in all_entries(c, s, consent_id=first["consent_id"])} == {
        e["index"] for e in entries if e["entry"].get("consent_id") == first["consent_id"]}
    assert all(e["entry"]["holder_id"] == HOLDER_ID for e in all_entries(c, s, holder_id=HOLDER_ID))
    assert all_entries(c, s, recipient_id="nobody") == []
    mid = entries[len(entries) // 2]["entry"]["time"]
    later = all_entries(c, s, since=mid)
    assert later and all(e["entry"]["time"] >= mid for e in later)
    assert all(e["entry"]["time"] < mid for e in all_entries(c, s, until=mid))
    r = c.get(f"{base}/entries", params={"start": 2, "end": 5})
    assert [e["index"] for e in r.json()["entries"]] == [2, 3, 4] and r.json()["size"] == size
    r = c.get(f"{base}/export.jsonl", params={"start": 1, "end": 4})
    assert r.headers["content-type"].startswith("application/jsonl")
    assert [json.loads(line) for line in r.text.splitlines()] == entries[1:4]
    r = c.get(f"{base}/proof/inclusion", params={"index": 3, "size": size})
    assert r.status_code == 200 and len(r.json()["proof"]) >= 1
    r = c.get(f"{base}/proof/consistency", params={"first": 3})
    assert r.json()["second"] == size
    for path, params in (("proof/inclusion", {"index": size, "size": size}), ("proof/inclusion", {"index": 0, "size": size + 1}),
                         ("proof/consistency", {"first": 5, "second": 4}), ("entries", {"start": 5, "end": 4}),
                         ("export.jsonl", {"start": 5, "end": 4})):
        r = c.get(f"{base}/{path}", params=params)
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", (path, r.text)
    assert c.get(f"{base}/entries", params={"limit": 1001}).status_code == 422
    # a filter misspelt or not offered is refused, not ignored; filters combine (AND)
    for path in ("entries", "export.jsonl", "proof/inclusion"):
        r = c.get(f"{base}/{path}", params={"index": 0, "consentid": "x"})
        assert r.status_code == 400 and "consentid" in r.json()["unknown"], (path, r.text)
    for bad in ({"event": "AUTHORISED"}, {"event": "authorized"}, {"event": ""}, {"consent_id": ""}):
        assert c.get(f"{base}/entries", params=bad).status_code == 422, bad
    authorised = all_entries(c, s, event="authorised")
    assert authorised and {e["entry"]["event"] for e in authorised} == {"authorised"}
    one = authorised[0]["entry"]
    assert [e["entry"] for e in all_entries(c, s, event="authorised", consent_id=one["consent_id"])] == [one]
    # times whose UTC value falls outside the years 1..9999 bound like the first or last instant
    assert len(c.get(f"{base}/entries", params={"since": "0001-01-01T00:00:00+01:00", "limit": 1000}).json()["entries"]) == min(size, 1000)
    assert c.get(f"{base}/entries", params={"until": "9999-12-31T23:59:59-01:00"}).status_code == 200
    # a checkpoint follows the entries within about a second
    new_consent(c, s, "log-erin")
    t0 = time.monotonic()
    wait_for(lambda: checkpoint_size(c, s) == size + 1, timeout=5, step=0.02)
    assert time.monotonic() - t0 < 2.5


def test_erasing_a_data_subject_keeps_the_log_verifiable_but_unlinkable(c: httpx.Client, lstack: Stack, tmp_path: Path,
                                                                        customer: str) -> None:
    s = lstack
    base = s.url("consent")
    asked = new_consent(c, s, "frank@example.org")
    given = new_consent(c, s, "frank@example.org", one_off=False)
    token = c.post(f"{s.url('holder')}/dev/tokens", json={"customer_id": customer, "datasets": [DAILY]}).json()
    assert c.post(f"{base}/consents/{given['id']}/authorise", json=token).status_code == 200
    assert c.get(f"{base}/consents/{given['id']}/receipt").status_code == 200
    settled(c, s)
    before = all_entries(c, s)
    pseudonym = before[given["log_index"]]["entry"]["subject"]
    r = c.delete(f"{base}/subjects/frank@example.org")
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["consents_ended"] == 2 and done["consents_erased"] == 2 and done["secret_erased"] is True
    assert done["data_subject"].startswith("erased:")
    # the live consents ended first, logged under the old pseudonym, with the reason
    for cid, status in ((given["id"], "revoked"), (asked["id"], "rejected")):
        got = c.get(f"{base}/consents/{cid}").json()
        assert got["status"] == status and "GDPR Art. 17" in got["status_reason"], got
        assert got["data_subject"] == done["data_subject"] and got.get("holder_subject") is None
        assert "frank" not in json.dumps(got)
    assert c.get(f"{base}/consents/{given['id']}/receipt").status_code == 404
    assert c.get(f"{base}/consents", params={"data_subject": "frank@example.org"}).json()["consents"] == []
    # a second erasure finds nothing to erase
    r = c.delete(f"{base}/subjects/frank@example.org")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    settled(c, s)
    after = all_entries(c, s)
    assert after[: len(before)] == before
    ended = [e for e in after[len(before):] if e["entry"].get("consent_id") in (given["id"], asked["id"])]
    assert sorted(e["entry"]["event"] for e in ended) == ["rejected", "revoked"]
    assert {e["entry"]["subject"] for e in ended} == {pseudonym}
    # events never named the person: nothing in the outbox (published or not) does
    async def outbox_texts(session: Any) -> list[str]:
        return list((await session.execute(select(models.outbox.c.envelope))).scalars())
    texts = ConsentDb(s).run(outbox_texts)
    assert texts and not [t for t in texts if "frank@example.org" in t]
    # any subject id can be erased, a "/" in it too
    slashed = new_consent(c, s, "frank/2")
    assert c.delete(f"{base}/subjects/frank%2F2").status_code == 200
    assert c.get(f"{base}/consents/{slashed['id']}").json()["status"] == "rejected"
    # the same person later gets a new, unlinkable pseudonym
    again = new_consent(c, s, "frank@example.org")
    settled(c, s)
    assert all_entries(c, s)[again["log_index"]]["entry"]["subject"] != pseudonym
    code, out = audit(s, tmp_path / "fresh.json")
    assert code == 0, out


def test_an_erasure_racing_authorisations_leaves_no_live_consent(c: httpx.Client, lstack: Stack, customer: str) -> None:
    s, base = lstack, lstack.url("consent")
    ids = [new_consent(c, s, "race-carol")["id"] for _ in range(16)]
    tokens = {cid: c.post(f"{s.url('holder')}/dev/tokens", json={"customer_id": customer, "datasets": [DAILY]}).json() for cid in ids}
    with ThreadPoolExecutor(2) as pool:
        authorising = pool.submit(lambda: [c.post(f"{base}/consents/{cid}/authorise", json=tokens[cid]).status_code
                                           for cid in reversed(ids)])
        time.sleep(0.05)
        erased = pool.submit(lambda: c.delete(f"{base}/subjects/race-carol"))
        codes, r = authorising.result(), erased.result()
    assert set(codes) <= {200, 409} and r.status_code == 200, (codes, r.text)
    after = [c.get(f"{base}/consents/{cid}").json() for cid in ids]
    assert not [x for x in after if x["status"] in ("requested", "authorised")], [(x["id"], x["status"]) for x in after]
    assert {x["data_subject"] for x in after} == {r.json()["data_subject"]}
    assert r.json()["consents_ended"] == 16


# ---- the verifier, and tampering -----------------------------------------------------------------------


def test_portability_audit_verifies_the_log(lstack: Stack, c: httpx.Client, pinned: Path) -> None:
    size = settled(c, lstack)
    code, out = audit(lstack, pinned)
    assert code == 0, out
    assert "pinned the log's public key" in out and f"verified: {size} entries" in out
    new_consent(c, lstack, "log-gina")
    settled(c, lstack)
    # the installed command line, in its own process
    env = {**os.environ, "PORTABILITY_TOKEN": credentials(lstack, "regulator").source().token()}
    p = subprocess.run([sys.executable, "-m", "shared.audit", lstack.url("consent"), "--state", str(pinned)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"consistent with the {size} entries verified before" in p.stdout and "1 new" in p.stdout
    code, out = audit(lstack, pinned, "--public-key", "someone+00000000+AQ==")
    assert code == 2


@pytest.fixture()
def db(lstack: Stack, c: httpx.Client, pinned: Path) -> Iterator[ConsentDb]:
    """The consent database, once the log is quiet and the pinned state is up to date; verified again after the test."""
    settled(c, lstack)
    code, out = audit(lstack, pinned)
    assert code == 0, out
    yield ConsentDb(lstack)
    code, out = audit(lstack, pinned)
    assert code == 0, f"the log does not verify after the test restored it: {out}"


def test_one_changed_byte_is_caught_and_named(lstack: Stack, c: httpx.Client, db: ConsentDb, pinned: Path, tmp_path: Path) -> None:
    entries = all_entries(c, lstack)
    k = next(e["index"] for e in entries if e["entry"]["event"] == "transfer_completed")
    row = db.row(k)
    assert '"records":365' in row["entry"]
    forged = row["entry"].replace('"records":365', '"records":366')
    db.set(k, entry=forged)
    try:
        code, out = audit(lstack, pinned)
        assert code == 1 and f"mismatch at index {k}:" in out, out
        db.set(k, leaf_hash=leaf_hash(forged.encode()))  # a careful forger also fixes the stored hash
        code, out = audit(lstack, pinned)
        assert code == 1 and f"mismatch at index {k}:" in out, out
        code, out = audit(lstack, tmp_path / "fresh.json")  # without any pinned state: the signed root tells
        assert code == 1 and f"mismatch at index {k}:" in out, out
    finally:
        db.set(k, entry=row["entry"], leaf_hash=row["leaf_hash"])


def test_a_deleted_entry_is_caught_and_named(lstack: Stack, c: httpx.Client, db: ConsentDb, pinned: Path) -> None:
    k = 5
    row = db.row(k)
    db.delete(k)
    try:
        code, out = audit(lstack, pinned)
        assert code == 1 and f"mismatch at index {k}:" in out and "missing" in out, out
    finally:
        db.insert(row)


def test_two_swapped_entries_are_caught_and_named(lstack: Stack, c: httpx.Client, db: ConsentDb, pinned: Path, tmp_path: Path) -> None:
    i, j = 2, 9
    a, b = db.row(i), db.row(j)
    db.set(i, entry=b["entry"], leaf_hash=b["leaf_hash"])
    db.set(j, entry=a["entry"], leaf_hash=a["leaf_hash"])
    try:
        for state in (pinned, tmp_path / "fresh.json"):
            code, out = audit(lstack, state)
            assert code == 1 and f"mismatch at index {i}:" in out, out
    finally:
        db.set(i, entry=a["entry"], leaf_hash=a["leaf_hash"])
        db.set(j, entry=b["entry"], leaf_hash=b["leaf_hash"])


def test_a_truncated_and_regrown_log_resigned_by_the_operator_is_caught_by_the_consistency_proof(
    lstack: Stack, c: httpx.Client, pinned: Path, tmp_path: Path
) -> None:
    s = lstack
    size = settled(c, s)
    code, out = audit(s, pinned)
    assert code == 0, out
    k = size - 3
    ConsentDb(s).truncate(k)
    for i in range(5):  # the real consent service appends the new history and signs its checkpoints
        new_consent(c, s, f"log-rewrite-{i}")
    assert settled(c, s) == k + 5 > size
    code, out = audit(s, pinned)
    assert code == 1 and f"mismatch at index {k}:" in out and "consistency proof" in out, out
    code, out = audit(s, tmp_path / "fresh.json")
    assert code == 0, out  # the rewritten log is self-consistent: only a pinned state can tell
