"""Recipient adapters (services/transfer/adapters): naming, idempotency, manifests and error mapping,
against the reference cloud and the Cozy contract server in process, and a recorded Solid server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.cloud.app import create_app as cloud_app
from examples.cozy.app import create_app as cozy_app
from services.transfer.adapters import BatchAck, for_recipient
from services.transfer.adapters.naming import content_hash, period_and_when, record_name
from services.transfer.errors import TransferEnded
from services.transfer.worker import TransferWorker
from shared.canonical import records_digest
from shared.catalogue import converters, parse_file
from tests.conftest import REAL

DAY = "com.grandlyon.enedis.day"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def sender(client: httpx.AsyncClient) -> Any:
    async def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await client.request(method, url, **kwargs)
    return send


def ecolyo_days(n: int, load: float = 1.5) -> list[dict[str, Any]]:
    return [{"load": load, "minute": 0, "hour": 0, "day": d, "month": 3, "year": 2022} for d in range(1, n + 1)]


# ---- naming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "record", "period", "when"), [
    ("enedis.v5.daily_consumption", {"date": "2022-03-08", "value": "42045"}, "2022-03", "2022-03-08"),
    ("enedis.v5.consumption_load_curve", {"date": "2023-03-01 00:30:00", "value": "1344"}, "2023-03", "2023-03-01T00-30"),
    ("enedis.v5.daily_consumption", {"date": "2016-09-31", "value": "1"}, "2016-09", "2016-09-31"),  # a date that does not exist, kept
    ("water.daily_litres", {"date": "31/03/2018", "litres": "707"}, "2018-03", "2018-03-31"),
    ("greenbutton.espi.interval_reading", {"start": "1333252800", "value": "1"}, "2012-04", "2012-04-01T04-00"),
    ("metering.interval_reading", {"start": "2012-04-01T04:00:00Z", "value": 1}, "2012-04", "2012-04-01T04-00"),
    ("grdf.adict.v2.informative_consumption", {"consommation": {"journee_gaziere": "2021-08-16"}}, "2021-08", "2021-08-16"),
    ("water.monthly_m3", {"year": 2025, "month": 7, "m3": 3.0}, "2025", "2025-07"),
    (DAY, {"load": 1, "minute": 0, "hour": 0, "day": 8, "month": 3, "year": 2022}, "2022-03", "2022-03-08"),
    ("com.grandlyon.enedis.minute", {"load": 1, "minute": 0, "hour": 0, "day": 2, "month": 3, "year": 2023}, "2023-03", "2023-03-02T00-00"),
    ("com.grandlyon.enedis.month", {"load": 1, "minute": 0, "hour": 0, "day": 0, "month": 4, "year": 2022}, "2022", "2022-04"),
    ("maif.contract", {"name": "x"}, "undated", "record"),
])
def test_period_and_when(dataset: str, record: dict[str, Any], period: str, when: str) -> None:
    assert period_and_when(dataset, record) == (period, when)


def test_names_are_deterministic_and_distinct_for_every_real_record() -> None:
    for f in sorted(REAL.iterdir()):
        try:
            parsed = parse_file(f)
        except ValueError:
            continue
        names = [record_name(parsed.dataset_id, r) for r in parsed.records]
        assert names == [record_name(parsed.dataset_id, json.loads(json.dumps(r))) for r in parsed.records], f.name
        assert len(set(names)) == len({json.dumps(r, sort_keys=True) for r in parsed.records}), f.name
        for period, name in names:
            assert all(c.isalnum() or c in "-._" for c in period + name), (f.name, name)


def test_duplicated_day_of_a_meter_change_gets_two_names() -> None:
    a = {"date": "03/03/2018", "litres": "379"}
    b = {"date": "03/03/2018", "litres": "-1754359"}
    assert record_name("water.daily_litres", a)[1].startswith("2018-03-03-")
    assert record_name("water.daily_litres", a) != record_name("water.daily_litres", b)
    assert content_hash({"x": 1, "y": 2}) == content_hash({"y": 2, "x": 1})  # RFC 8785: key order does not matter


# ---- the broker's own contract (reference cloud) --------------------------------------------------------


def test_broker_adapter_is_the_import_contract(tmp_path: Path) -> None:
    async def go() -> None:
        app = cloud_app(tmp_path / "cloud.db", token="broker-token")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cloud") as c:
            recipient = {"id": "cloud", "import_base_url": "http://cloud/"}
            a = for_recipient(recipient, send=sender(c), credentials={}, broker_token="broker-token")
            assert a.protocol == "broker"
            recs = [{"value": str(i)} for i in range(5)]
            assert await a.put_batch("t1", 1, "x", recs[:3]) == BatchAck()
            assert await a.put_batch("t1", 1, "x", recs[:3]) == BatchAck()  # the same key: stored once
            await a.put_batch("t1", 2, "x", recs[3:])
            ok = await a.finish("t1", {"dataset": "x", "records": 5, "sha256": records_digest(recs)})
            assert ok.match and ok.status == 200
            bad = await a.finish("t1", {"dataset": "x", "records": 5, "sha256": records_digest(recs[::-1])})
            assert not bad.match and bad.status == 409
            await c.put("/dev/faults", json={"refuse_values": ["1"]})
            assert (await a.put_batch("t2", 1, "x", recs)).refused == {1: "value not accepted by this cloud"}
            await c.put("/dev/faults", json={"capacity_records": 0})
            with pytest.raises(TransferEnded) as full:
                await a.put_batch("t3", 1, "x", recs)
            assert full.value.reason == "destination_full"
            wrong = for_recipient(recipient, send=sender(c), credentials={}, broker_token="not-the-token")
            with pytest.raises(TransferEnded) as refused:
                await wrong.put_batch("t4", 1, "x", recs)
            assert refused.value.reason == "recipient_error" and refused.value.error["status"] == 401
            assert "recipient answered 401" in refused.value.error["message"]
    run(go())


# ---- Cozy ----------------------------------------------------------------------------------------------


def cozy(tokens: dict[str, Any] | None = None) -> Any:
    return cozy_app(tokens if tokens is not None else {"tok": {"com.grandlyon.*": "ALL"}, "ro": {"*": ["GET"]}})


def test_cozy_adapter_creates_each_document_once_and_confirms_by_reading_back() -> None:
    async def go() -> None:
        app = cozy()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cozy") as c:
            recipient = {"id": "me", "import_base_url": "http://cozy", "import_protocol": "cozy"}
            a = for_recipient(recipient, send=sender(c), credentials={"me": {"bearer": "tok"}}, broker_token="unused")
            docs = ecolyo_days(5)
            await a.put_batch("t", 1, DAY, docs[:3])
            await a.put_batch("t", 2, DAY, docs[3:])
            stats = (await c.get("/dev/stats")).json()
            assert stats["documents"] == {DAY: 5} and stats["writes"] == 5
            assert (await a.finish("t", {"records": 5, "sha256": records_digest(docs)})).match
            # a re-run (another transfer, same records): the fixed ids exist, the same content is kept once
            again = for_recipient(recipient, send=sender(c), credentials={"me": {"bearer": "tok"}}, broker_token="unused")
            await again.put_batch("t2", 1, DAY, docs)
            assert (await c.get("/dev/stats")).json()["documents"] == {DAY: 5}
            assert (await again.finish("t2", {"records": 5, "sha256": records_digest(docs)})).match
            # ids are the documented fixed-id creation: GET /data/:doctype/:id gives the record back
            doc_id = a.doc_id(DAY, docs[0])  # type: ignore[attr-defined]
            got = (await c.get(f"/data/{DAY}/{doc_id}", headers={"Authorization": "Bearer tok"})).json()
            assert {k: v for k, v in got.items() if not k.startswith("_")} == docs[0] and got["_type"] == DAY
            # a document changed behind the broker's back: the read-back does not match
            await c.put(f"/data/{DAY}/{doc_id}", json={**got, "load": 99}, headers={"Authorization": "Bearer tok"})
            assert not (await a.finish("t", {"records": 5, "sha256": records_digest(docs)})).match
            # and sending that record again finds other content under its id
            with pytest.raises(TransferEnded) as differs:
                await again.put_batch("t2", 1, DAY, docs[:1])
            assert differs.value.reason == "recipient_error" and "other content" in differs.value.error["message"]
    run(go())


def test_resumed_cozy_adapter_covers_the_batches_sent_before() -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cozy()), base_url="http://cozy") as c:
            recipient = {"id": "me", "import_base_url": "http://cozy", "import_protocol": "cozy"}
            docs = ecolyo_days(6)
            first = for_recipient(recipient, send=sender(c), credentials={"me": {"bearer": "tok"}}, broker_token="")
            await first.put_batch("t", 1, DAY, docs[:4])
            resumed = for_recipient(recipient, send=sender(c), credentials={"me": {"bearer": "tok"}}, broker_token="")
            resumed.skip_batch("t", 1, DAY, docs[:4])
            await resumed.put_batch("t", 2, DAY, docs[4:])
            assert (await resumed.finish("t", {"records": 6, "sha256": records_digest(docs)})).match
    run(go())


@pytest.mark.parametrize(("token", "status"), [("ro", 403), ("nope", 401)])
def test_cozy_refusals_end_the_transfer_recipient_error(token: str, status: int) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cozy()), base_url="http://cozy") as c:
            a = for_recipient({"id": "me", "import_base_url": "http://cozy", "import_protocol": "cozy"}, send=sender(c),
                              credentials={"me": {"bearer": token}}, broker_token="")
            with pytest.raises(TransferEnded) as end:
                await a.put_batch("t", 7, DAY, ecolyo_days(1))
            assert end.value.reason == "recipient_error" and end.value.error["status"] == status and end.value.error["batch"] == 7
    run(go())


def test_cozy_needs_a_token_and_refuses_reserved_fields() -> None:
    recipient = {"id": "me", "import_base_url": "http://cozy", "import_protocol": "cozy"}
    with pytest.raises(TransferEnded) as no_token:
        for_recipient(recipient, send=sender(httpx.AsyncClient()), credentials={}, broker_token="x")
    assert no_token.value.reason == "recipient_error" and "RECIPIENT_CREDENTIALS" in no_token.value.error["message"]

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cozy()), base_url="http://cozy") as c:
            a = for_recipient(recipient, send=sender(c), credentials={"me": {"bearer": "tok"}}, broker_token="")
            with pytest.raises(TransferEnded) as reserved:
                await a.put_batch("t", 1, DAY, [{"_id": "x", "load": 1}])
            assert reserved.value.reason == "recipient_error"
    run(go())


def test_unknown_protocol_ends_the_transfer() -> None:
    with pytest.raises(TransferEnded) as end:
        for_recipient({"id": "x", "import_base_url": "http://x", "import_protocol": "ftp"}, send=sender(httpx.AsyncClient()),
                      credentials={}, broker_token="")
    assert end.value.reason == "recipient_error" and "ftp" in end.value.error["message"]


# ---- the Cozy contract server itself (docs/data-system.md) -----------------------------------------------


def test_cozy_contract_server_follows_the_documented_api() -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cozy()), base_url="http://cozy",
                                     headers={"Authorization": "Bearer tok"}) as c:
            t = "com.grandlyon.egl.day"
            created = await c.post(f"/data/{t}/", json={"load": 1})
            assert created.status_code == 201 and created.json()["ok"] and created.json()["rev"].startswith("1-")
            assert (await c.post(f"/data/{t}/", json={"_id": "x", "load": 1})).status_code == 400
            assert (await c.post(f"/data/{t}/", json={"_other": 1})).status_code == 400
            fixed = await c.put(f"/data/{t}/day-1", json={"load": 2})
            assert fixed.status_code == 200 and fixed.json()["id"] == "day-1"
            rev = fixed.json()["rev"]
            assert (await c.put(f"/data/{t}/day-1", json={"load": 3})).status_code == 409  # no _rev: conflict
            assert (await c.put(f"/data/{t}/day-1", json={"load": 3, "_rev": "1-other"})).status_code == 409
            assert (await c.put(f"/data/{t}/day-1", json={"_id": "day-2", "load": 3, "_rev": rev})).status_code == 400
            updated = await c.put(f"/data/{t}/day-1", json={"_id": "day-1", "load": 3, "_rev": rev})
            assert updated.status_code == 200 and updated.json()["rev"].startswith("2-")
            got = await c.get(f"/data/{t}/day-1")
            assert got.json()["load"] == 3 and got.headers["etag"] == f'"{updated.json()["rev"]}"'
            rows = (await c.post(f"/data/{t}/_all_docs", params={"include_docs": "true"}, json={"keys": ["day-1", "nope"]})).json()["rows"]
            assert rows[0]["doc"]["load"] == 3 and rows[1] == {"key": "nope", "error": "not_found"}
            listed = (await c.get(f"/data/{t}/_all_docs", params={"include_docs": "true"})).json()
            assert listed["total_rows"] == 2
            assert (await c.get(f"/data/{t}/_normal_docs", params={"limit": 1})).json()["total_rows"] == 2
            assert (await c.get("/data/_all_doctypes")).json() == [t]
            assert (await c.delete(f"/data/{t}/day-1")).status_code == 400
            assert (await c.delete(f"/data/{t}/day-1", params={"rev": "1-x"})).status_code == 409
            assert (await c.delete(f"/data/{t}/day-1", params={"rev": updated.json()["rev"]})).json()["_deleted"] is True
            gone = await c.get(f"/data/{t}/day-1")
            assert gone.status_code == 404 and gone.json()["reason"] == "deleted"
            assert (await c.get(f"/data/{t}/never")).json()["reason"] == "missing"
            assert (await c.get(f"/data/{t}/day-1", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await c.get("/data/io.cozy.files/x", headers={"Authorization": "Bearer tok"})).status_code == 403
    run(go())


# ---- Solid (a recorded server: the real one runs in tests/integration/test_personal_clouds.py) --------------


class FakePod:
    """Records requests; answers PUT 201 (412 when the resource exists), GET the stored bytes."""

    def __init__(self, status: dict[str, int] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.store: dict[str, bytes] = {}
        self.status = status or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url)
        for needle, code in self.status.items():
            if needle in url:
                return httpx.Response(code, headers={"content-type": "application/problem+json"}, json={"title": "no"})
        if request.method == "PUT":
            if url in self.store and request.headers.get("if-none-match") == "*":
                return httpx.Response(412)
            self.store[url] = request.content
            return httpx.Response(201)
        if url in self.store:
            return httpx.Response(200, content=self.store[url], headers={"content-type": "application/json"})
        return httpx.Response(404)


def solid(pod: FakePod, credentials: dict[str, Any] | None = None) -> Any:
    client = httpx.AsyncClient(transport=httpx.MockTransport(pod))
    return for_recipient({"id": "pod", "import_base_url": "https://pod.example/me/portability/", "import_protocol": "solid"},
                         send=sender(client), credentials=credentials or {}, broker_token="broker-secret")


def test_solid_layout_conditional_puts_and_read_back() -> None:
    records = [{"date": "2022-03-31", "value": "1"}, {"date": "2022-04-01", "value": "2"}, {"date": "2022-04-02", "value": 2.0}]

    async def go() -> None:
        pod = FakePod()
        a = solid(pod, {"pod": {"bearer": "pod-token"}})
        await a.put_batch("t1", 1, "enedis.v5.daily_consumption", records)
        puts = [r for r in pod.requests if r.method == "PUT"]
        base = "https://pod.example/me/portability/enedis.v5.daily_consumption/"
        assert [str(r.url).rsplit("/", 2)[1] for r in puts[:2]] == ["2022-03", "2022-04"]  # each new container's first record first, alone
        assert {str(r.url) for r in puts} == {f"{base}{p}/{n}.json" for p, n in (record_name("enedis.v5.daily_consumption", r) for r in records)}
        assert all(r.headers["if-none-match"] == "*" and r.headers["authorization"] == "Bearer pod-token" for r in puts)
        assert json.loads(pod.store[str(puts[-1].url)]) in records and b"2.0" in b"".join(pod.store.values())  # the JSON as served
        ack = await a.finish("t1", {"dataset": "enedis.v5.daily_consumption", "records": 3, "sha256": records_digest(records)})
        assert ack.match and ack.detail == {"records": 3, "sha256": records_digest(records), "missing": 0}
        assert "https://pod.example/me/portability/portability-transfers/t1.json" in pod.store
        # a re-run: the same names, every PUT answered 412, nothing new
        before = dict(pod.store)
        again = solid(pod)
        await again.put_batch("t2", 1, "enedis.v5.daily_consumption", records)
        assert {k: v for k, v in pod.store.items() if "portability-transfers" not in k} == \
            {k: v for k, v in before.items() if "portability-transfers" not in k}
        assert "authorization" not in pod.requests[-1].headers  # an open pod: no credentials configured
        # a resource lost from the pod: the read-back says so
        del pod.store[str(puts[0].url)]
        lost = await a.finish("t1", {"records": 3, "sha256": records_digest(records)})
        assert not lost.match and lost.detail["missing"] == 1
    run(go())


@pytest.mark.parametrize(("status", "reason"), [(401, "recipient_error"), (403, "recipient_error"), (409, "recipient_error"),
                                                (507, "destination_full"), (413, "destination_full")])
def test_solid_error_mapping(status: int, reason: str) -> None:
    async def go() -> None:
        a = solid(FakePod({"/2022-03/": status}))
        with pytest.raises(TransferEnded) as end:
            await a.put_batch("t", 4, "enedis.v5.daily_consumption", [{"date": "2022-03-31", "value": "1"}])
        assert end.value.reason == reason and end.value.error["batch"] == 4
        assert f"recipient answered {status}: no" in end.value.error["message"]
    run(go())


# ---- conversion notes keep no values --------------------------------------------------------------------


def test_conversion_notes_are_counts_and_periods_only() -> None:
    parsed = parse_file(REAL / "veolia_sudest_daily_litres_export_meter_change_nextdom.csv")
    stream = converters.CONVERTERS[("water.daily_litres", "com.grandlyon.egl.day")].stream()
    list(stream.feed(parsed.records))
    notes = TransferWorker._notes(stream)["conversion"]
    assert notes["notes"] == {"duplicate_day": 1, "negative_value": 1} and "periods_left_out" not in notes
    assert "1754359" not in json.dumps(notes)
    daily = parse_file(REAL / "enedis_v5_daily_consumption_myelectricaldatapy.json")
    months = converters.CONVERTERS[("enedis.v5.daily_consumption", "com.grandlyon.enedis.month")].stream()
    list(months.feed(daily.records))
    list(months.finish())
    assert TransferWorker._notes(months)["conversion"]["periods_left_out"] == ["2022-03", "2023-03"]
    assert TransferWorker._notes(None) == {}
