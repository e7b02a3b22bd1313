"""Traces, metrics, logs and health of the running services (issue "Production")."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.demo import client_as, CLOUD_ID, HOLDER_ID, register_participants
from shared.launcher import Stack

pytestmark = pytest.mark.e2e
DAILY = "enedis.v5.daily_consumption"


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with client_as(stack, "admin", timeout=30) as c:
        register_participants(c, stack)
        yield c


def spans_of(stack: Stack, trace_id: str) -> list[dict]:
    out = []
    for name in os.listdir(stack.data_dir):
        if name.startswith("spans."):
            with open(stack.data_dir / name, encoding="utf-8") as f:
                out += [s for line in f if (s := json.loads(line))["trace_id"] == trace_id]
    return out


def test_one_trace_follows_a_transfer_across_services_and_nats(client: httpx.Client, stack: Stack) -> None:
    consent = client.post(f"{stack.url('consent')}/consents", json={
        "data_subject": "subject-trace", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [DAILY], "purpose": "trace"}).json()
    token = client.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": "01234567890", "datasets": [DAILY]}).json()
    client.post(f"{stack.url('consent')}/consents/{consent['id']}/authorise", json=token).raise_for_status()
    trace_id = os.urandom(16).hex()
    r = client.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": DAILY},
                    headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while client.get(f"{stack.url('transfer')}/transfers/{r.json()['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.5)  # the last events are published and processed
    spans = spans_of(stack, trace_id)
    by_id = {s["span_id"]: s for s in spans}
    names = {(s["service"], s["name"]) for s in spans}

    expected = {
        ("transfer", "POST /transfers"),
        ("transfer", "consent.check publish"), ("consent", "consent.check process"),
        ("transfer", "transfer.jobs publish"), ("transfer", "transfer.jobs process"), ("transfer", "transfer run"),
        ("transfer", "registry.participant.get publish"), ("registry", "registry.participant.get process"),
        ("transfer", "registry.dataset.get publish"), ("registry", "registry.dataset.get process"),
        ("transfer", "consent.token.get publish"), ("consent", "consent.token.get process"),
        ("transfer", "holder page"), ("transfer", "GET"), ("transfer", "recipient batch"), ("transfer", "PUT"),
        ("transfer", "recipient manifest"),
        ("transfer", "transfer.events.completed publish"), ("consent", "transfer.events.completed process"),
    }
    assert expected <= names, sorted(expected - names)
    # one tree: every span's parent is in the trace, but the caller's (the root's parent)
    roots = [s for s in spans if s["parent_id"] not in by_id]
    assert [s["name"] for s in roots] == ["POST /transfers"], [(s["service"], s["name"]) for s in roots]

    def ancestors(s: dict) -> list[str]:
        chain = []
        while s["parent_id"] in by_id:
            s = by_id[s["parent_id"]]
            chain.append(s["name"])
        return chain

    run = next(s for s in spans if s["name"] == "transfer run")
    assert ancestors(run)[:2] == ["transfer.jobs process", "transfer.jobs publish"]
    for s in spans:
        if s["name"] in ("GET", "PUT"):
            assert ancestors(s)[0] in ("holder page", "recipient batch", "recipient manifest")
            assert "transfer run" in ancestors(s)


def test_metrics_health_and_readiness(client: httpx.Client, stack: Stack) -> None:
    for name in ("registry", "consent", "transfer"):
        assert client.get(f"{stack.url(name)}/healthz").json() == {"status": "ok"}
        ready = client.get(f"{stack.url(name)}/readyz").json()
        assert ready["status"] == "ready" and ready["checks"]["database"] == "ok" and ready["checks"]["nats"] == "ok"
    text = client.get(f"{stack.url('transfer')}/metrics").text
    for metric in ("transfers_ended", "transfer_records_moved", "transfer_bytes_moved", "transfer_queue_pending"):
        assert metric in text, metric
    consent = client.get(f"{stack.url('consent')}/metrics").text
    assert re.search(r"^consent_log_entries\{[^}]*\} [1-9]", consent, re.M), "the log size gauge"
    # /metrics is for regulators and operators only
    assert httpx.get(f"{stack.url('consent')}/metrics").status_code == 401
