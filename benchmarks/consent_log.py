"""Consent log benchmarks (issue "The consent log"), on SQLite files in a temporary directory:

- appends per second, one transaction per consent event as the consent service does it, with the
  checkpointer signing every second, as a ratio to bare inserts of the same rows (one per
  transaction, same database settings) measured in the same run; goal >= 0.5;
- inclusion and consistency proof latency, p50/p99, from the DB-backed store of a log of
  1,000,000 entries (built directly with bulk inserts); goal p99 < 5 ms;
- the same proofs as a regulator gets them: ``GET /log/proof/inclusion`` and
  ``/log/proof/consistency`` of the read-only /log API served by uvicorn in another process,
  over one keep-alive connection of the standard library's client (the server's whole answer);
- the verifier (``portability-audit``) against that log served over HTTP by the read-only /log
  API in another process: entries per second for a daily audit (every entry streamed, hashed
  and compared with the pinned hashes, root, consistency proof, inclusion proofs for the new
  entries and a sample of the others).

Run with ``make bench`` (or ``python -m benchmarks.consent_log --entries 1000000``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, select

from services.consent import log, models
from shared.audit import HttpLogSource, TrustedState, verify_log
from shared.canonical import canonical
from shared.db import Database
from shared.settings import Settings
from shared.tlog import Checkpoint, CompactRange, leaf_hash, verify_consistency, verify_inclusion

ORIGIN = Settings().log_origin


def _url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _consent(i: int, now: datetime) -> dict[str, Any]:
    return {"id": f"{i:032x}", "data_subject": f"subject-{i // 4}", "holder_id": "demo-holder", "recipient_id": "demo-cloud",
            "datasets": ["enedis.v5.daily_consumption"], "purpose": "Show my electricity use in my personal cloud", "one_off": True,
            "status": "authorised", "expires_at": (now + timedelta(days=30)).isoformat()}


def _p(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[98] * 1e3


# ---- appends ---------------------------------------------------------------------------------


async def appends(d: Path, n: int, block: int = 250) -> dict[str, float]:
    """Seconds for ``n`` appends (checkpointer running) and for ``n`` bare inserts of the same rows, interleaved by blocks."""
    db = Database(_url(d / "log.db"), models.metadata, "consent")
    bare_md = MetaData()
    bare_entries = models.log_entries.to_metadata(bare_md)
    bare = Database(_url(d / "bare.db"), bare_md, "consent")
    await db.create_all()
    await bare.create_all()
    await log.ensure_state(db)
    settings = Settings()
    signer = log.signer_from_settings(settings)
    cp = log.Checkpointer(db, signer, ORIGIN, interval_s=1.0)
    cp.start()
    t_log = t_bare = 0.0
    now = datetime.now(UTC)
    for lo in range(0, n, block):
        t0 = time.perf_counter()
        for i in range(lo, min(n, lo + block)):
            async with db.unit_of_work() as s:
                await log.append_consent_event(s, _consent(i, now), "authorised", time=now)
        t_log += time.perf_counter() - t0
        async with db.sessions() as s:
            rows = [dict(r._mapping) for r in (await s.execute(select(models.log_entries).where(
                models.log_entries.c["index"] >= lo).order_by(models.log_entries.c["index"]))).all()]
        t0 = time.perf_counter()
        for row in rows:
            async with bare.unit_of_work() as s:
                await s.execute(bare_entries.insert().values(**row))
        t_bare += time.perf_counter() - t0
    await cp.stop()
    async with db.sessions() as s:
        checkpoints = len((await s.execute(select(models.log_checkpoints.c.size))).all())
    state = await log.read_state(db)
    assert state.size == n
    await db.dispose()
    await bare.dispose()
    return {"log_s": t_log, "bare_s": t_bare, "checkpoints": checkpoints}


# ---- a log of 1,000,000 entries, built directly -------------------------------------------------


def build(path: Path, n: int) -> tuple[list[bytes], bytes]:
    """Write ``n`` transfer entries, their nodes, the state and a checkpoint into a fresh SQLite file.
    Returns the leaf hashes and the root."""
    create_engine(f"sqlite:///{path}").dispose()
    eng = create_engine(f"sqlite:///{path}")
    models.metadata.create_all(eng)
    eng.dispose()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    cr = CompactRange()
    leaves: list[bytes] = []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    entries: list[tuple[Any, ...]] = []
    nodes: list[tuple[int, int, bytes]] = []

    def flush() -> None:
        con.executemany('INSERT INTO log_entries ("index", entry, leaf_hash, event, consent_id, holder_id, recipient_id, time, '
                        "dedupe_key) VALUES (?,?,?,?,?,?,?,?,?)", entries)
        con.executemany("INSERT INTO log_nodes (level, idx, hash) VALUES (?,?,?)", nodes)
        entries.clear()
        nodes.clear()

    for i in range(n):
        when = t0 + timedelta(seconds=i)
        entry = {"v": 1, "event": "transfer_completed", "transfer_id": f"{i:032x}", "consent_id": f"{i // 3:032x}",
                 "holder_id": "demo-holder", "recipient_id": "demo-cloud", "dataset": "enedis.v5.daily_consumption",
                 "records": 365, "sha256": hashlib.sha256(i.to_bytes(8, "big")).hexdigest(), "status": "completed",
                 "reason": None, "time": log.rfc3339(when)}
        # ASCII strings and small ints only: sorted compact json.dumps is exactly RFC 8785 here (checked below)
        text = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        if i % 100_000 == 0:
            assert text == canonical(entry)
        h = leaf_hash(text)
        leaves.append(h)
        entries.append((i, text.decode(), h, "transfer_completed", entry["consent_id"], "demo-holder", "demo-cloud",
                        when.strftime("%Y-%m-%d %H:%M:%S.%f"), f"transfer:{entry['transfer_id']}:completed:"))
        nodes.extend((level, idx, node) for (level, idx), node in cr.append(h))
        if len(entries) >= 50_000:
            flush()
    flush()
    root = cr.root()
    con.execute("INSERT INTO log_state (id, size) VALUES (1, ?)", (n,))
    note = Checkpoint(ORIGIN, n, root).sign(log.signer_from_settings(Settings()))
    con.execute("INSERT INTO log_checkpoints (size, note, created_at) VALUES (?, ?, ?)", (n, note, "2026-01-01 00:00:00.000000"))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return leaves, root


async def proofs(path: Path, n: int, leaves: list[bytes], queries: int, seed: int = 1) -> dict[str, float]:
    """p50/p99 (ms) of :func:`log.inclusion_proof` and :func:`log.consistency_proof` at random sizes up to ``n``;
    every proof is then verified against the root of its size (outside the timing)."""
    rng = random.Random(seed)
    db = Database(_url(path), models.metadata, "consent")
    full = CompactRange()
    roots: dict[int, bytes] = {}
    sizes = sorted({n, *(rng.randint(1, n) for _ in range(2 * queries))})
    want = iter(sizes)
    nxt = next(want)
    for i, h in enumerate(leaves):  # roots of every size we ask about, computed independently of the database
        full.append(h)
        while nxt == i + 1:
            roots[nxt] = full.root()
            nxt = next(want, -1)
    size_list = list(roots)
    # the benchmark's own million leaf hashes are not the log's: keep the collector from walking them during the timing
    gc.collect()
    gc.freeze()
    for _ in range(500):  # warm up the connection pool and the page cache
        await log.inclusion_proof(db, rng.randrange(n), n)
    inc: list[float] = []
    for _ in range(queries):
        size = rng.choice(size_list)
        index = rng.randrange(size)
        t = time.perf_counter()
        proof = await log.inclusion_proof(db, index, size)
        inc.append(time.perf_counter() - t)
        verify_inclusion(leaves[index], index, size, proof, roots[size])
    con: list[float] = []
    for _ in range(queries):
        a, b = sorted((rng.choice(size_list), rng.choice(size_list)))
        t = time.perf_counter()
        proof = await log.consistency_proof(db, a, b)
        con.append(time.perf_counter() - t)
        verify_consistency(a, b, proof, roots[a], roots[b])
    await db.dispose()
    gc.unfreeze()
    i50, i99 = _p(inc)
    c50, c99 = _p(con)
    return {"inclusion_p50_ms": i50, "inclusion_p99_ms": i99, "consistency_p50_ms": c50, "consistency_p99_ms": c99}


# ---- the verifier over HTTP ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(path: Path, port: int) -> None:
    """Serve the read-only /log API over the SQLite file ``path`` (``--serve``; runs until killed)."""
    import uvicorn

    from services.consent.app import log_reader_app

    db = Database(_url(path), models.metadata, "consent")
    uvicorn.run(log_reader_app(db, log.signer_from_settings(Settings())), host="127.0.0.1", port=port, log_level="warning")


def _start_server(path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The read-only /log API over ``path`` in another process; returns it and its port once it accepts connections."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.consent_log", "--serve", str(path), "--port", str(port)])
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the /log server did not start") from None
            time.sleep(0.1)


def http_proofs(port: int, n: int, leaves: list[bytes], queries: int, seed: int = 2) -> dict[str, float]:
    """p50/p99 (ms) of ``GET /log/proof/inclusion`` and ``/log/proof/consistency`` against the server on ``port``,
    random sizes up to ``n``, each proof verified against its root outside the timing. The client is the
    standard library's ``http.client`` on one keep-alive connection: what is timed is the server's answer
    (socket, HTTP, routing, database, JSON), not a client library's own overhead."""
    import http.client

    rng = random.Random(seed)
    sizes = sorted({n, *(rng.randint(1, n) for _ in range(64))})
    roots: dict[int, bytes] = {}
    cr = CompactRange()
    want = iter(sizes)
    nxt = next(want)
    for i, h in enumerate(leaves):
        cr.append(h)
        while nxt == i + 1:
            roots[nxt] = cr.root()
            nxt = next(want, -1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(path: str) -> tuple[float, list[bytes]]:
        t = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t
        if resp.status != 200:
            raise RuntimeError(f"GET {path} answered {resp.status}: {body[:200]!r}")
        return elapsed, [bytes.fromhex(h) for h in json.loads(body)["proof"]]

    inc: list[float] = []
    con: list[float] = []
    try:
        for _ in range(300):  # warm up
            get(f"/log/proof/inclusion?index={rng.randrange(n)}&size={n}")
        for _ in range(queries):
            size = rng.choice(sizes)
            index = rng.randrange(size)
            elapsed, proof = get(f"/log/proof/inclusion?index={index}&size={size}")
            inc.append(elapsed)
            verify_inclusion(leaves[index], index, size, proof, roots[size])
        for _ in range(queries):
            a, b = sorted((rng.choice(sizes), rng.choice(sizes)))
            elapsed, proof = get(f"/log/proof/consistency?first={a}&second={b}")
            con.append(elapsed)
            verify_consistency(a, b, proof, roots[a], roots[b])
    finally:
        conn.close()
    i50, i99 = _p(inc)
    c50, c99 = _p(con)
    return {"http_inclusion_p50_ms": i50, "http_inclusion_p99_ms": i99, "http_consistency_p50_ms": c50, "http_consistency_p99_ms": c99}


async def audit(port: int, n: int, leaves: list[bytes], new: int) -> dict[str, float]:
    """Seconds for ``verify_log`` with a state pinned at ``n - new`` entries, against the server on ``port``."""
    old = n - new
    prefix = CompactRange()
    for h in leaves[:old]:
        prefix.append(h)
    signer = log.signer_from_settings(Settings())
    state = TrustedState(public_key=signer.vkey, origin=ORIGIN, size=old, root_hash=prefix.root(),
                         note=Checkpoint(ORIGIN, old, prefix.root()).sign(signer), leaves=list(leaves[:old]),
                         verified_at="yesterday")
    source = HttpLogSource(f"http://127.0.0.1:{port}", timeout=120)
    try:
        t0 = time.perf_counter()
        report, _ = await verify_log(source, state=state, sample=64, concurrency=16)
        seconds = time.perf_counter() - t0
    finally:
        await source.aclose()
    assert report.size == n and report.new_entries == new
    return {"audit_s": seconds, "proofs": report.inclusion_proofs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries of the log the proofs and the verifier run on")
    ap.add_argument("--appends", type=int, default=3000, help="appends in the append-rate run")
    ap.add_argument("--queries", type=int, default=2000, help="proofs of each kind timed")
    ap.add_argument("--new", type=int, default=1000, help="entries the audited log gained since the verifier's last run")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        d = Path(tmp)
        a = asyncio.run(appends(d, args.appends))
        ratio = a["bare_s"] / a["log_s"]
        results |= {"appends_per_s": round(args.appends / a["log_s"]), "bare_inserts_per_s": round(args.appends / a["bare_s"]),
                    "append_ratio": round(ratio, 3)}
        print(f"appends: {args.appends / a['log_s']:,.0f}/s with a checkpoint every second ({a['checkpoints']} signed) vs bare inserts "
              f"of the same rows {args.appends / a['bare_s']:,.0f}/s: ratio {ratio:.2f} (goal >= 0.5)")
        t0 = time.perf_counter()
        big = d / "big.db"
        leaves, _root = build(big, args.entries)
        print(f"built a log of {args.entries:,} entries in {time.perf_counter() - t0:.1f} s "
              f"({os.path.getsize(big) / 2**20:,.0f} MB)")
        os.sync()  # the build left about a gigabyte of dirty pages: written out now, not during the timing
        p = asyncio.run(proofs(big, args.entries, leaves, args.queries))
        results |= {k: round(v, 3) for k, v in p.items()}
        print(f"proofs from the database at {args.entries:,} entries ({args.queries} each, random sizes; all verified): "
              f"inclusion p50 {p['inclusion_p50_ms']:.2f} ms p99 {p['inclusion_p99_ms']:.2f} ms, "
              f"consistency p50 {p['consistency_p50_ms']:.2f} ms p99 {p['consistency_p99_ms']:.2f} ms (goal p99 < 5 ms)")
        proc, port = _start_server(big)
        try:
            h = http_proofs(port, args.entries, leaves, args.queries)
            results |= {k: round(v, 3) for k, v in h.items()}
            print(f"the same over HTTP (GET /log/proof/..., uvicorn in another process, one keep-alive connection, all verified): "
                  f"inclusion p50 {h['http_inclusion_p50_ms']:.2f} ms p99 {h['http_inclusion_p99_ms']:.2f} ms, "
                  f"consistency p50 {h['http_consistency_p50_ms']:.2f} ms p99 {h['http_consistency_p99_ms']:.2f} ms")
            v = asyncio.run(audit(port, args.entries, leaves, args.new))
        finally:
            proc.terminate()
            proc.wait(10)
        rate = args.entries / v["audit_s"]
        results["verifier_entries_per_s"] = round(rate)
        print(f"verifier: {args.entries:,} entries in {v['audit_s']:.1f} s = {rate:,.0f} entries/s over HTTP "
              f"(stream, canonical JSON, leaf hashes vs pinned, root, consistency proof, {int(v['proofs'])} inclusion proofs)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
