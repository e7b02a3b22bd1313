"""Transfer benchmarks (issue "Transfers that survive"), each as a ratio to a baseline measured
in the same run on this machine:

- throughput through the broker with 1, 2 and 4 worker processes, against a direct copy
  between the same holder and recipient (same pages, same batches, the same manifest digest,
  no broker), the median of ``--rounds`` alternating runs of each; goal >= 0.8;
- the ``consent.check`` round trip over NATS against a bare NATS request/reply; goal <= 3;
- the peak RSS of a worker process that moves 1,000,000 records; goal < 200 MB.

Run with ``make bench`` (or ``python -m benchmarks.transfer --records 1000000``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats

from shared import envelope, subjects
from shared.canonical import RecordDigest
from shared.catalogue import enedis_v5
from shared.demo import client_as, CLOUD_ID, HOLDER_ID, register_participants
from shared.launcher import Stack
from shared.settings import DEV_RECIPIENT_TOKEN

DATASET = "enedis.v5.consumption_load_curve"
CUSTOMER = "00000000000042"
PAGE = 1000


class SkipThroughput(Exception):
    """``--transfers 0``: only the large transfer."""


def write_holder_file(path: Path, points: int) -> Path:
    path.write_text(json.dumps(enedis_v5.sample_load_curve(usage_point_id=CUSTOMER, points=points)), "utf-8")
    return path


def consent(c: httpx.Client, s: Stack) -> str:
    body = {"data_subject": f"bench-{uuid.uuid4().hex[:6]}", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [DATASET],
            "purpose": "benchmark", "one_off": False}
    cid = c.post(f"{s.url('consent')}/consents", json=body).json()["id"]
    token = c.post(f"{s.url('holder')}/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DATASET]}).json()
    c.post(f"{s.url('consent')}/consents/{cid}/authorise", json=token).raise_for_status()
    return str(cid)


def broker_run(c: httpx.Client, s: Stack, n: int) -> float:
    """Seconds to run ``n`` transfers at once through the broker."""
    consents = [consent(c, s) for _ in range(n)]
    t0 = time.perf_counter()
    ids = [c.post(f"{s.url('transfer')}/transfers", json={"consent_id": cid, "dataset": DATASET}).json()["id"] for cid in consents]
    for tid in ids:
        while True:
            t = c.get(f"{s.url('transfer')}/transfers/{tid}").json()
            if t["status"] in ("completed", "partial", "failed", "cancelled"):
                assert t["status"] == "completed", t
                break
            time.sleep(0.05)
    return time.perf_counter() - t0


async def _direct_one(client: httpx.AsyncClient, s: Stack, token: str) -> None:
    tid = f"direct-{uuid.uuid4().hex}"
    digest, cursor, n = RecordDigest(), None, 0
    while True:
        params: dict[str, Any] = {"limit": PAGE} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"{s.url('holder')}/datasets/{DATASET}/records", params=params,
                                 headers={"Authorization": f"Bearer {token}"})).json()
        if page["records"]:
            n += 1
            r = await client.put(f"{s.url('cloud')}/transfers/{tid}/batches/{n}", json={"dataset": DATASET, "records": page["records"]},
                                 headers={"Authorization": f"Bearer {DEV_RECIPIENT_TOKEN}", "Idempotency-Key": f"{tid}:{n}"})
            r.raise_for_status()
            digest.update(page["records"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    r = await client.put(f"{s.url('cloud')}/transfers/{tid}/manifest", json={"dataset": DATASET, "records": digest.count, "sha256": digest.hexdigest()},
                         headers={"Authorization": f"Bearer {DEV_RECIPIENT_TOKEN}"})
    assert r.json()["match"], r.text


def direct_run(c: httpx.Client, s: Stack, n: int, concurrency: int) -> float:
    """Seconds to copy ``n`` times holder -> recipient directly, ``concurrency`` at a time."""
    tokens = [c.post(f"{s.url('holder')}/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DATASET]}).json()["access_token"] for _ in range(n)]

    async def main() -> None:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=120) as client:
            async def one(tok: str) -> None:
                async with sem:
                    await _direct_one(client, s, tok)
            await asyncio.gather(*(one(t) for t in tokens))

    t0 = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t0


def set_workers(s: Stack, count: int) -> None:
    for i, w in enumerate(s.workers(), start=1):
        if i <= count and not w.alive():
            w.start()
        elif i > count and w.alive():
            w.stop()
    time.sleep(2.0)  # let the started workers connect


async def _rtt(url: str, consent_id: str, n: int) -> tuple[list[float], list[float]]:
    nc = await nats.connect(url)
    try:
        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe("bench.echo", cb=echo)
        body = envelope.encode(envelope.make(subjects.CONSENT_CHECK, {"consent_id": consent_id, "dataset": DATASET}))
        bare, check = [], []
        for _ in range(50):  # warm-up
            await nc.request("bench.echo", body, timeout=5)
            await nc.request(subjects.CONSENT_CHECK, body, timeout=5)
        for _ in range(n):
            t0 = time.perf_counter()
            await nc.request("bench.echo", body, timeout=5)
            bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reply = await nc.request(subjects.CONSENT_CHECK, body, timeout=5)
            check.append(time.perf_counter() - t0)
        assert envelope.decode(reply.data)["data"]["result"]["valid"] is True
        return bare, check
    finally:
        await nc.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000, help="records per transfer in the throughput runs")
    ap.add_argument("--transfers", type=int, default=8, help="transfers per throughput run (0: skip throughput and round trips)")
    ap.add_argument("--large", type=int, default=1_000_000, help="records of the peak-RSS transfer (0: skip)")
    ap.add_argument("--rtt", type=int, default=2000, help="requests per round-trip measurement")
    ap.add_argument("--rounds", type=int, default=3, help="direct and broker runs of each throughput figure (medians)")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        d = Path(tmp)
        s = Stack(data_dir=d, holder_files=[write_holder_file(d / "holder.json", args.records)], worker_processes=4,
                  extra_env={"TRANSFER_PAGE_LIMIT": str(PAGE), "LOG_LEVEL": "WARNING"})
        if args.transfers:
            s.start()
        try:
            if not args.transfers:
                raise SkipThroughput
            with client_as(s, "admin", timeout=60) as c:
                register_participants(c, s)
                total = args.records * args.transfers
                print(f"throughput: {args.transfers} transfers x {args.records:,} records, pages of {PAGE}, "
                      f"median of {args.rounds} alternating runs of each")
                for workers in (1, 2, 4):
                    set_workers(s, workers)
                    # direct and broker runs alternate, ``--rounds`` of each; the medians make the ratio (a shared
                    # machine's slow moment hits one run of each kind, not the whole figure)
                    directs, brokers = [], []
                    for _ in range(args.rounds):
                        directs.append(direct_run(c, s, args.transfers, workers))
                        brokers.append(broker_run(c, s, args.transfers))
                    direct, broker = statistics.median(directs), statistics.median(brokers)
                    ratio = direct / broker
                    results[f"throughput_ratio_{workers}w"] = round(ratio, 3)
                    print(f"  {workers} worker(s): broker {total / broker:10,.0f} rec/s   direct copy {total / direct:10,.0f} rec/s"
                          f"   ratio {ratio:.2f} (goal >= 0.8)")
                cid = consent(c, s)
            bare, check = asyncio.run(_rtt(s.nats_url or "", cid, args.rtt))
            b50, c50 = statistics.median(bare), statistics.median(check)
            b99, c99 = sorted(bare)[int(0.99 * len(bare))], sorted(check)[int(0.99 * len(check))]
            results["consent_check_rtt_ratio"] = round(c50 / b50, 2)
            print(f"consent.check round trip: p50 {c50 * 1e3:.3f} ms (p99 {c99 * 1e3:.3f}) vs bare NATS request/reply p50 "
                  f"{b50 * 1e3:.3f} ms (p99 {b99 * 1e3:.3f}): ratio {c50 / b50:.2f} (goal <= 3)")
        except SkipThroughput:
            pass
        finally:
            s.stop()
        if args.large:
            big = d / "big"
            big.mkdir()
            s = Stack(data_dir=big, holder_files=[write_holder_file(big / "holder.json", args.large)], worker_processes=1,
                      extra_env={"TRANSFER_PAGE_LIMIT": str(PAGE), "LOG_LEVEL": "WARNING"})
            s.start(timeout=180)
            try:
                with client_as(s, "admin", timeout=120) as c:
                    register_participants(c, s)
                    (worker,) = s.workers()
                    assert worker.popen is not None
                    before = peak_rss_mb(worker.popen.pid)
                    seconds = broker_run(c, s, 1)
                    peak = peak_rss_mb(worker.popen.pid)
                results["peak_rss_mb_1m"] = round(peak, 1)
                print(f"peak RSS of the worker moving {args.large:,} records: {peak:.1f} MB (at start {before:.1f} MB; goal < 200 MB); "
                      f"{args.large / seconds:,.0f} rec/s")
            finally:
                s.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
