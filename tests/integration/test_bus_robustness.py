"""Malformed NATS messages: an error reply, or a dead-lettered message with its reason; the
services keep serving, and a transfer still completes afterwards."""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import nats
import pytest

from shared import envelope, subjects
from shared.catalogue import parse_file
from shared.demo import client_as, consented_transfer, register_participants
from shared.launcher import Stack

pytestmark = pytest.mark.e2e

REQUEST_SUBJECTS = [subjects.REGISTRY_PARTICIPANT_GET, subjects.REGISTRY_DATASET_GET, subjects.CONSENT_CHECK, subjects.CONSENT_TOKEN_GET]


def malformed_payloads(subject: str, rng: random.Random, n: int) -> list[bytes]:
    good = envelope.make("consent.check", {"consent_id": "a", "dataset": "b"})
    fixed = [
        b"", b"garbage", b"\xff\xfe\x00", b"[]", b"null", b'{"id": 1}',
        json.dumps({**good, "data": {"unexpected": True}}).encode(),
        json.dumps({**good, "type": "nonsense.type"}).encode(),
        json.dumps({**good, "type": "registry.events.x" if subject != "x" else "x"}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "correlation_id"}).encode(),
        json.dumps({**good, "time": "yesterday"}).encode(),
        json.dumps({**good, "data": {"consent_id": "x" * 1000, "dataset": "b", "participant_id": 3, "dataset_id": None}}).encode(),
        b"[" * 50_000, b'{"id": ' + b"1" * 5000 + b"}",
    ]
    out = list(fixed)
    while len(out) < n:
        kind = rng.randrange(3)
        if kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
        elif kind == 1:
            out.append(json.dumps({rng.choice(["id", "type", "data", "x"]): rng.choice([1, "s", None, [], {}]) for _ in range(3)}).encode())
        else:
            env = dict(good)
            env["type"] = subject
            env["data"] = {rng.choice(["consent_id", "dataset", "participant_id", "dataset_id", "zz"]): rng.choice([1, None, "", [1], {"a": 1}])}
            out.append(json.dumps(env).encode())
    return out


async def test_malformed_requests_get_error_replies_and_services_keep_serving(stack: Stack) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        rng = random.Random(2026)
        for subject in REQUEST_SUBJECTS:
            for payload in malformed_payloads(subject, rng, 200):
                msg = await nc.request(subject, payload, timeout=5)
                reply = envelope.decode(msg.data, expected_type="reply")["data"]
                assert reply["ok"] is False, (subject, payload)
                assert reply["error"]["code"] == "invalid_input" and reply["error"]["status"] == 400
                assert reply["error"]["detail"]
        # a valid question still gets its answer
        msg = await nc.request(subjects.REGISTRY_DATASET_GET,
                               envelope.encode(envelope.make(subjects.REGISTRY_DATASET_GET, {"dataset_id": "enedis.v5.daily_consumption"})), timeout=5)
        reply = envelope.decode(msg.data, expected_type="reply")["data"]
        assert reply["ok"] and reply["result"]["id"] == "enedis.v5.daily_consumption"
    finally:
        await nc.close()


async def _dead_letters(js: nats.js.JetStreamContext, subject: str, want: int, timeout: float = 15.0) -> list[dict]:
    sub = await js.subscribe(f"{subjects.DEAD_LETTER}.{subject}", ordered_consumer=True)
    found: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while len(found) < want and asyncio.get_running_loop().time() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                continue
            found.append(envelope.decode(msg.data, expected_type="deadletter")["data"])
    finally:
        await sub.unsubscribe()
    return found


async def test_malformed_jobs_are_dead_lettered_with_reason_and_transfers_go_on(stack: Stack, real_dir) -> None:
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    try:
        marker = uuid.uuid4().hex
        bad_jobs = [
            f"garbage {marker}".encode(),
            json.dumps({"id": marker, "type": "transfer.job", "data": {}}).encode(),
            envelope.encode(envelope.make("transfer.job", {"transfer_id": f"unknown-{marker}", "consent_id": "c", "dataset": "d"})),
            b"[" * 50_000 + marker.encode(),  # nesting deeper than any parser's recursion limit
            b'{"m": "' + marker.encode() + b'", "n": ' + b"9" * 5000 + b"}",  # an integer Python refuses to parse
        ]
        for payload in bad_jobs:
            await js.publish(subjects.TRANSFER_JOBS, payload, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        # a question published without a reply inbox is dead-lettered too
        await nc.publish(subjects.CONSENT_CHECK, f"no inbox {marker}".encode())
        await nc.flush()

        letters = [d for d in await _dead_letters(js, subjects.TRANSFER_JOBS, want=100, timeout=8) if marker in d["payload"]]
        assert len(letters) == 5, letters
        reasons = sorted(d["reason"] for d in letters)
        assert sum("not an acceptable JSON message" in r for r in reasons) == 2, reasons
        assert any(r.startswith("malformed message: not a JSON message") for r in reasons), reasons
        assert any("malformed message: envelope" in r for r in reasons), reasons
        assert any(r == f"unknown transfer unknown-{marker}" for r in reasons), reasons
        letters = [d for d in await _dead_letters(js, subjects.CONSENT_CHECK, want=100, timeout=3) if marker in d["payload"]]
        assert len(letters) == 1 and "not a JSON message" in letters[0]["reason"]
        # the job stream does not keep them
        info = await js.consumer_info("TRANSFER_JOBS", subjects.TRANSFER_WORKERS_DURABLE)
        assert info.num_ack_pending == 0
    finally:
        await nc.close()

    with client_as(stack, "admin", timeout=5) as c:
        for p in stack.procs.values():
            assert p.alive(), p.name
            if p.health == "/readyz":  # the workers' loop is still running
                assert c.get(f"{p.url}/readyz").status_code == 200, (p.name, c.get(f"{p.url}/readyz").text)
    parsed = parse_file(real_dir / "enedis_v5_consumption_load_curve_myelectricaldata.json")

    def transfer() -> dict:
        with client_as(stack, "admin", timeout=30) as c:
            register_participants(c, stack)
            return consented_transfer(c, stack, customer=parsed.subject_key, dataset=parsed.dataset_id)

    result = await asyncio.to_thread(transfer)
    assert result["status"] == "completed" and result["cloud_records"] == parsed.records
