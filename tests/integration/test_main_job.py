"""The main job over real processes: three services, a real nats-server, the reference
holder serving the real Enedis v5 files, and the reference personal cloud."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.canonical import records_digest
from shared.catalogue import parse_file
from examples.cloud.app import DEV_OWNER_TOKEN
from shared.demo import client_as, CLOUD_ID, HOLDER_ID, consented_transfer, register_participants
from shared.launcher import Stack
from tests.conftest import BAD_CUSTOMER, BAD_POSITION, PAGE_LIMIT, REAL_ENEDIS_FILES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with client_as(stack, "admin", timeout=30) as c:
        register_participants(c, stack)
        yield c


def holder_requests(client: httpx.Client, stack: Stack) -> int:
    return int(client.get(f"{stack.url('holder')}/dev/stats").json()["export_requests"])


@pytest.mark.parametrize("name", sorted(REAL_ENEDIS_FILES))
def test_real_file_arrives_exactly(name: str, real_dir, client: httpx.Client, stack: Stack) -> None:
    dataset, count = REAL_ENEDIS_FILES[name]
    parsed = parse_file(real_dir / name)
    assert parsed.dataset_id == dataset and len(parsed.records) == count

    result = consented_transfer(client, stack, customer=parsed.subject_key, dataset=dataset)

    t = result["transfer"]
    assert t["status"] == "completed", t
    assert t["records"] == count and result["records"] == count
    assert t["batches"] == -(-count // PAGE_LIMIT)
    # the recipient holds exactly the file's records: count, values, timestamps, units, order
    assert result["cloud_records"] == parsed.records
    assert [r["value"] for r in result["cloud_records"]] == [
        i["value"] for i in json.loads((real_dir / name).read_text())["meter_reading"]["interval_reading"]
    ]
    assert {r["unit"] for r in result["cloud_records"]} == {"Wh" if "daily" in dataset else "W"}
    assert t["sha256"] == records_digest(parsed.records) == result["sha256"]
    # a one-off consent is consumed by its transfer: a second transfer is refused
    deadline = time.monotonic() + 10
    while (consent := client.get(f"{stack.url('consent')}/consents/{result['consent_id']}").json())["status"] == "authorised":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert consent["status"] == "consumed" and t["id"] in consent["status_reason"]
    r = client.post(f"{stack.url('transfer')}/transfers", json={"consent_id": result["consent_id"], "dataset": dataset})
    assert r.status_code == 403 and r.json()["consent_reason"] == "not_authorised"


def _consents(client: httpx.Client, stack: Stack, subject: str) -> list[dict]:
    return client.get(f"{stack.url('consent')}/consents", params={"data_subject": subject}).json()["consents"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"holder_id": "no-such-holder"}, "unknown holder"),
        ({"recipient_id": "no-such-cloud"}, "unknown recipient"),
        ({"datasets": ["no.such.dataset"]}, "unknown dataset"),
        ({"holder_id": CLOUD_ID}, "is not a data holder"),
        ({"recipient_id": HOLDER_ID}, "is not a data recipient"),
    ],
)
def test_bad_consent_request_is_refused_and_nothing_stored(change: dict, needle: str, client: httpx.Client, stack: Stack) -> None:
    subject = "subject-bad-request"
    body = {"data_subject": subject, "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
            "datasets": ["enedis.v5.daily_consumption"], "purpose": "test"} | change
    r = client.post(f"{stack.url('consent')}/consents", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert needle in problem["detail"] and problem["status"] == 422 and problem["title"]
    assert _consents(client, stack, subject) == []


def test_dataset_not_offered_by_holder(client: httpx.Client, stack: Stack) -> None:
    r = client.put(f"{stack.url('registry')}/participants/daily-only-holder", json={
        "name": "Holder of daily data only", "roles": ["holder"], "export_base_url": stack.url("holder"),
        "datasets_offered": ["enedis.v5.daily_consumption"], "allow_private_network": True})
    assert r.status_code in (200, 201), r.text
    r = client.post(f"{stack.url('consent')}/consents", json={
        "data_subject": "subject-not-offered", "holder_id": "daily-only-holder", "recipient_id": CLOUD_ID,
        "datasets": ["enedis.v5.consumption_load_curve"], "purpose": "test"})
    assert r.status_code == 422
    assert "does not offer dataset 'enedis.v5.consumption_load_curve'" in r.json()["detail"]
    assert _consents(client, stack, "subject-not-offered") == []


def test_malformed_http_bodies_get_problem_details(client: httpx.Client, stack: Stack) -> None:
    for url, body in [
        (f"{stack.url('consent')}/consents", {"data_subject": "x"}),
        (f"{stack.url('transfer')}/transfers", {"consent": 1}),
        (f"{stack.url('registry')}/participants", {"name": "x", "roles": ["king"]}),
    ]:
        r = client.post(url, json=body)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    r = client.post(f"{stack.url('consent')}/consents", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_transfer_without_authorised_consent_never_reaches_holder(client: httpx.Client, stack: Stack) -> None:
    consent = client.post(f"{stack.url('consent')}/consents", json={
        "data_subject": "subject-unauthorised", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
        "datasets": ["enedis.v5.daily_consumption"], "purpose": "test"}).json()
    before = holder_requests(client, stack)
    for consent_id in (consent["id"], "no-such-consent"):
        r = client.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent_id, "dataset": "enedis.v5.daily_consumption"})
        assert r.status_code == 403, r.text
        assert r.json()["reason"] == "consent_invalid"
    # authorised, but for another dataset than asked
    token = client.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": "01234567890", "datasets": ["enedis.v5.daily_consumption"]}).json()
    assert client.post(f"{stack.url('consent')}/consents/{consent['id']}/authorise", json=token).status_code == 200
    r = client.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": "enedis.v5.consumption_load_curve"})
    assert r.status_code == 403 and r.json()["consent_reason"] == "dataset_not_covered"
    # revoked
    assert client.post(f"{stack.url('consent')}/consents/{consent['id']}/revoke", json={"by": "data_subject"}).json()["status"] == "revoked"
    r = client.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": "enedis.v5.daily_consumption"})
    assert r.status_code == 403 and r.json()["consent_reason"] == "not_authorised"
    assert holder_requests(client, stack) == before


def test_refused_transitions_answer_409_with_current_state(client: httpx.Client, stack: Stack) -> None:
    consent = client.post(f"{stack.url('consent')}/consents", json={
        "data_subject": "subject-transitions", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
        "datasets": ["enedis.v5.daily_consumption"], "purpose": "test"}).json()
    r = client.post(f"{stack.url('consent')}/consents/{consent['id']}/revoke", json={})
    assert r.status_code == 409 and r.json()["current_status"] == "requested"
    assert client.post(f"{stack.url('consent')}/consents/{consent['id']}/reject").json()["status"] == "rejected"
    r = client.post(f"{stack.url('consent')}/consents/{consent['id']}/authorise", json={"access_token": "x"})
    assert r.status_code == 409 and r.json()["current_status"] == "rejected"


def test_record_breaking_its_schema_fails_the_transfer_and_keeps_delivered_batches(client: httpx.Client, stack: Stack) -> None:
    result = consented_transfer(client, stack, customer=BAD_CUSTOMER, dataset="enedis.v5.daily_consumption")
    t = result["transfer"]
    assert t["status"] == "failed" and t["reason"] == "schema_violation", t
    assert t["error"]["position"] == BAD_POSITION
    assert "12 kWh" in t["error"]["schema_error"] and t["error"]["path"] == "/value"
    delivered = (BAD_POSITION // PAGE_LIMIT) * PAGE_LIMIT
    assert t["records"] == delivered and t["batches"] == BAD_POSITION // PAGE_LIMIT
    assert len(result["cloud_records"]) == delivered
    assert result["cloud_records"] == result["holder_records"][:delivered]


def test_http_limits_and_odd_input(client: httpx.Client, stack: Stack) -> None:
    big = {"data_subject": "x" * (2 * 1024 * 1024)}
    r = client.post(f"{stack.url('consent')}/consents", json=big)
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
    for name, path in (("consent", "/consents"), ("transfer", "/transfers"), ("registry", "/participants")):
        r = client.get(f"{stack.url(name)}{path}", params={"offset": 10**20})
        assert r.status_code == 422, (name, r.text)
    for url in ("http://user:pass@example.org", "http://[::1", "ftp://example.org", "http://a b.example", "http://h:99999/"):
        r = client.put(f"{stack.url('registry')}/participants/odd-url", json={"name": "x", "roles": ["holder"], "export_base_url": url})
        assert r.status_code == 400, (url, r.text)
    for pid in ("a" * 65, "a%00b", "été"):
        r = client.put(f"{stack.url('registry')}/participants/{pid}", json={"name": "x", "roles": ["recipient"], "import_base_url": "http://x.example"})
        assert r.status_code == (400 if "%00" in pid else 422), (pid, r.text)  # NUL: refused at the HTTP edge
    r = client.post(f"{stack.url('consent')}/consents", json={"data_subject": "s", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID,
                                                           "datasets": ["enedis.v5.daily_consumption"], "purpose": "p", "duration_days": True})
    assert r.status_code == 422
    r = client.post(f"{stack.url('registry')}/datasets", json={"id": "remote.ref", "version": 1, "title": "t", "description": "d",
                                                             "schema": {"$ref": "http://127.0.0.1:1/x.json"}})
    assert r.status_code == 400 and "refer inside itself" in r.json()["detail"]


def test_holder_whose_cursor_does_not_advance_fails_the_transfer(client: httpx.Client, stack: Stack) -> None:
    client.put(f"{stack.url('holder')}/dev/faults", json={"repeat_cursor": True}).raise_for_status()
    try:
        result = consented_transfer(client, stack, customer="01234567890", dataset="enedis.v5.daily_consumption", timeout=30)
    finally:
        client.put(f"{stack.url('holder')}/dev/faults", json={}).raise_for_status()
    t = result["transfer"]
    assert t["status"] == "failed" and t["reason"] == "holder_error" and "does not advance" in t["error"]["message"], t


@pytest.mark.parametrize("holder_filters", [True, False], ids=["holder-filters", "holder-ignores-window"])
def test_only_records_inside_the_consents_data_window_arrive(holder_filters: bool, real_dir, client: httpx.Client, stack: Stack) -> None:
    """The consent's data_from/data_to go to the holder as from/to; a holder that cannot filter still gets
    nothing outside the window delivered: the worker drops those records and says how many."""
    from datetime import date

    from shared.catalogue import in_window

    name = "enedis_v5_daily_consumption_myelectricaldatapy.json"
    parsed = parse_file(real_dir / name)
    dataset = parsed.dataset_id
    start, end = date(2022, 5, 1), date(2022, 6, 15)
    inside = [r for r in parsed.records if in_window(dataset, r, start, end)]
    assert 0 < len(inside) < len(parsed.records)
    assert client.put(f"{stack.url('holder')}/dev/faults", json={"ignore_window": not holder_filters}).status_code == 200
    try:
        stats = client.get(f"{stack.url('holder')}/dev/stats").json()
        before = (stats["export_requests"], stats["window_requests"])
        with client_as(stack, CLOUD_ID) as cloud:
            consent = cloud.post(f"{stack.url('consent')}/consents", json={
                "data_subject": f"subject-window-{holder_filters}", "holder_id": HOLDER_ID, "recipient_id": CLOUD_ID, "datasets": [dataset],
                "purpose": "Spring consumption only", "data_from": start.isoformat(), "data_to": end.isoformat()}).json()
            token = client.post(f"{stack.url('holder')}/dev/tokens", json={"customer_id": parsed.subject_key, "datasets": [dataset]}).json()
            client.post(f"{stack.url('consent')}/consents/{consent['id']}/authorise", json=token).raise_for_status()
            t = cloud.post(f"{stack.url('transfer')}/transfers", json={"consent_id": consent["id"], "dataset": dataset}).json()
            deadline = time.monotonic() + 60
            while t["status"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
                t = cloud.get(f"{stack.url('transfer')}/transfers/{t['id']}").json()
        assert t["status"] == "completed", t
        got = client.get(f"{stack.url('cloud')}/transfers/{t['id']}/records", headers={"Authorization": f"Bearer {DEV_OWNER_TOKEN}"}).json()["records"]
        assert got == inside and t["records"] == len(inside) and t["sha256"] == records_digest(inside)
        stats = client.get(f"{stack.url('holder')}/dev/stats").json()
        requests, with_window = stats["export_requests"] - before[0], stats["window_requests"] - before[1]
        assert requests >= 1 and with_window == requests  # every page was asked with the window
        if holder_filters:
            assert not (t.get("error") or {}).get("outside_window")
        else:
            assert t["error"]["outside_window"]["records"] == len(parsed.records) - len(inside)
            assert t["error"]["outside_window"]["data_from"] == start.isoformat()
    finally:
        client.put(f"{stack.url('holder')}/dev/faults", json={})
