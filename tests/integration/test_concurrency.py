"""Two transfer workers and two consent-service replicas on one database (PostgreSQL in CI's
second run) never process the same thing twice (issue "Production")."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.demo import client_as, CLOUD_ID, HOLDER_ID
from shared.launcher import Stack
from tests.conftest import running_stack

pytestmark = pytest.mark.e2e
DAILY = "enedis.v5.daily_consumption"
CUSTOMER = "01234567890"


@pytest.fixture(scope="module")
def cstack(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[Stack]:
    files = [real_dir / "enedis_v5_daily_consumption_myelectricaldatapy.json"]
    with running_stack(tmp_path_factory.mktemp("concurrency"), files, env={"TRANSFER_PAGE_LIMIT": "50"},
                       worker_processes=2, consent_replicas=2) as s:
        yield s


def test_two_consent_replicas_change_a_consent_once(cstack: Stack) -> None:
    replicas = [cstack.url("consent"), cstack.url("consent-2")]
    with client_as(cstack, "admin", timeout=30) as c:
        consent = c.post(f"{replicas[0]}/consents", json={"data_subject": "subject-race", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                        "datasets": [DAILY], "purpose": "race"}).json()
        tokens = [c.post(f"{cstack.url('holder')}/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY]}).json() for _ in range(20)]

    def authorise(i: int) -> int:
        with client_as(cstack, "admin", timeout=30) as c:
            return c.post(f"{replicas[i % 2]}/consents/{consent['id']}/authorise", json=tokens[i]).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(authorise, range(20)))
    assert sorted(codes) == [200] + [409] * 19, codes

    def revoke(i: int) -> int:
        with client_as(cstack, "admin", timeout=30) as c:
            return c.post(f"{replicas[i % 2]}/consents/{consent['id']}/revoke", json={"by": "holder" if i % 2 else "recipient"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(revoke, range(10))) == {200}  # idempotent
    with client_as(cstack, "admin", timeout=30) as c:
        entries = c.get(f"{replicas[1]}/log/entries", params={"consent_id": consent["id"]}).json()["entries"]
    assert [e["entry"]["event"] for e in entries] == ["requested", "authorised", "revoked"]


def test_two_workers_and_two_consent_replicas_process_each_transfer_once(cstack: Stack) -> None:
    with client_as(cstack, "admin", timeout=30) as c:
        before = c.get(f"{cstack.url('cloud')}/dev/stats").json()
        ids = []
        for i in range(8):
            consent = c.post(f"{cstack.url('consent')}/consents", json={"data_subject": f"subject-{i}", "holder_id": HOLDER_ID,
                                                                      "recipient_id": CLOUD_ID, "datasets": [DAILY], "purpose": "p"}).json()
            token = c.post(f"{cstack.url('holder')}/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY]}).json()
            c.post(f"{cstack.url('consent-2')}/consents/{consent['id']}/authorise", json=token).raise_for_status()
            ids.append((consent["id"], c.post(f"{cstack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": DAILY}).json()["id"]))
        import time

        deadline = time.monotonic() + 120
        for cid, tid in ids:
            while (t := c.get(f"{cstack.url('transfer')}/transfers/{tid}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert t["status"] == "completed" and t["records"] == 365, t
            while c.get(f"{cstack.url('consent')}/consents/{cid}").json()["status"] != "consumed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        after = c.get(f"{cstack.url('cloud')}/dev/stats").json()
        # every batch went to the recipient exactly once: 8 transfers x 8 batches, no repeat
        assert after["batch_requests"] - before["batch_requests"] == 8 * 8 and after["duplicates"] == before["duplicates"]
        for cid, tid in ids:
            entries = c.get(f"{cstack.url('consent')}/log/entries", params={"consent_id": cid}).json()["entries"]
            events = [e["entry"]["event"] for e in entries]
            assert events.count("transfer_completed") == 1 and events.count("consumed") == 1, events
        # the log's indexes are consecutive, whichever replica appended
        size = int(c.get(f"{cstack.url('consent')}/log/entries", params={"start": 0, "limit": 1}).json()["size"])
        indexes = []
        start = 0
        while start < size:
            page = c.get(f"{cstack.url('consent-2')}/log/entries", params={"start": start, "limit": 1000}).json()
            indexes += [e["index"] for e in page["entries"]]
            start = page.get("next_start") or size
        assert indexes == list(range(size))


def test_a_revocation_on_one_replica_reaches_the_other_replicas_consent_check(cstack: Stack) -> None:
    """consent.check answers authorised consents from a short cache (services/consent/service.py ValidConsents):
    a revocation made through one replica must empty the other's at once (its consent event), never after
    more than CONSENT_CHECK_CACHE_S (1 s), and once seen invalid a consent is never valid again."""
    import asyncio
    import time

    import nats

    from shared import envelope, subjects

    with client_as(cstack, "admin", timeout=30) as c:
        consent = c.post(f"{cstack.url('consent')}/consents", json={"data_subject": "subject-cache", "holder_id": HOLDER_ID,
                                                                    "recipient_id": CLOUD_ID, "datasets": [DAILY], "purpose": "cache"}).json()
        token = c.post(f"{cstack.url('holder')}/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY]}).json()
        c.post(f"{cstack.url('consent')}/consents/{consent['id']}/authorise", json=token).raise_for_status()

    async def scenario() -> list[tuple[float, bool]]:
        nc = await nats.connect(cstack.nats_url or "")
        body = envelope.encode(envelope.make(subjects.CONSENT_CHECK, {"consent_id": consent["id"], "dataset": DAILY}))

        async def valid() -> bool:
            reply = envelope.decode((await nc.request(subjects.CONSENT_CHECK, body, timeout=5)).data)
            return bool(reply["data"]["result"]["valid"])

        try:
            # both replicas answer the queue group: enough checks warm both caches
            assert all([await valid() for _ in range(40)])
            with client_as(cstack, "admin", timeout=30) as c:
                c.post(f"{cstack.url('consent-2')}/consents/{consent['id']}/revoke", json={"by": "holder"}).raise_for_status()
            revoked_at = time.monotonic()
            answers = []
            while time.monotonic() - revoked_at < 1.5:
                answers.append((time.monotonic() - revoked_at, await valid()))
            return answers
        finally:
            await nc.close()

    answers = asyncio.run(scenario())
    first_invalid = next(i for i, (_, ok) in enumerate(answers) if not ok)
    # valid after the revocation only while its event travels (well under the 1 s bound), then never again
    assert answers[first_invalid][0] < 0.5, answers[:first_invalid + 1]
    assert not any(ok for _, ok in answers[first_invalid:]), "a revoked consent was answered valid again"
    assert len(answers) - first_invalid > 20
