"""The reference holder's export (examples/holder/app.py) with a data window: ``from`` and ``to``.

The holder serves real files of customer 01234567890 (Enedis v5 daily consumption 2022-03-08 ..
2023-03-07, its load curve 2023-03-01 .. 2023-03-03, its contract), in process over ASGI.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.contracts import HERE as CONTRACTS
from examples.holder.app import create_app
from examples.holder.oauth import OAuthSettings
from shared.catalogue import in_window, parse_file

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"
FILES = [REAL / "enedis_v5_daily_consumption_myelectricaldatapy.json", REAL / "enedis_v5_consumption_load_curve_myelectricaldatapy.json",
         REAL / "enedis_v5_customers_contracts_myelectricaldatapy.json"]
CUSTOMER = "01234567890"
DAILY = "enedis.v5.daily_consumption"
CURVE = "enedis.v5.consumption_load_curve"
CONTRACT = "enedis.v5.customer_contract"
ALL_DAILY = parse_file(FILES[0]).records


@pytest.fixture
async def c() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(files=FILES, oauth=OAuthSettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8201") as client:
        r = await client.post("/dev/tokens", json={"customer_id": CUSTOMER, "datasets": [DAILY, CURVE, CONTRACT]})
        r.raise_for_status()
        client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        yield client


async def page(c: httpx.AsyncClient, dataset: str = DAILY, **params: Any) -> httpx.Response:
    if "from_" in params:
        params["from"] = params.pop("from_")
    return await c.get(f"/datasets/{dataset}/records", params={k: v for k, v in params.items() if v is not None})


async def walk(c: httpx.AsyncClient, dataset: str = DAILY, **params: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page of a walk: (records, page bodies)."""
    out: list[dict[str, Any]] = []
    bodies: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = await page(c, dataset, cursor=cursor, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        bodies.append(body)
        out.extend(body["records"])
        cursor = body.get("next_cursor")
        if cursor is None:
            return out, bodies


def windowed(start: date | None, end: date | None) -> list[dict[str, Any]]:
    return [r for r in ALL_DAILY if in_window(DAILY, r, start, end)]


async def test_a_window_on_the_real_daily_file(c: httpx.AsyncClient) -> None:
    r = await page(c, from_="2022-12-01", to="2022-12-31", limit=1000)
    assert r.status_code == 200
    body = r.json()
    assert [x["date"] for x in body["records"]] == [f"2022-12-{d:02d}" for d in range(1, 32)]
    assert body["total"] == 31 and "next_cursor" not in body and body["resume_cursor"]
    # "my data from 2023": January (31) + February (28) + 1..7 March
    body = (await page(c, from_="2023-01-01", limit=1000)).json()
    assert body["total"] == 66 and body["records"] == windowed(date(2023, 1, 1), None)
    assert body["records"][0]["date"] == "2023-01-01" and body["records"][-1]["date"] == "2023-03-07"
    # no window: everything, as before
    body = (await page(c, limit=1000)).json()
    assert body["total"] == 365 and body["records"] == ALL_DAILY


@pytest.mark.parametrize(("start", "end", "dates"), [
    ("2022-03-08", "2022-03-08", ["2022-03-08"]),  # the first record: both bounds inclusive
    ("2023-03-07", "2023-03-07", ["2023-03-07"]),  # the last one
    ("2023-03-05", None, ["2023-03-05", "2023-03-06", "2023-03-07"]),  # open end
    (None, "2022-03-09", ["2022-03-08", "2022-03-09"]),  # open start
    ("2023-03-08", None, []),  # after the data
    (None, "2022-03-07", []),  # before the data
])
async def test_bounds_are_inclusive_and_either_may_be_open(c: httpx.AsyncClient, start: str | None, end: str | None,
                                                           dates: list[str]) -> None:
    body = (await page(c, from_=start, to=end, limit=1000)).json()
    assert [x["date"] for x in body["records"]] == dates
    assert body["total"] == len(dates) and "next_cursor" not in body and body["resume_cursor"]


async def test_load_curve_points_are_windowed_by_the_day_their_interval_starts(c: httpx.AsyncClient) -> None:
    body = (await page(c, CURVE, from_="2023-03-01", to="2023-03-01", limit=1000)).json()
    assert body["total"] == 48
    assert (body["records"][0]["date"], body["records"][-1]["date"]) == ("2023-03-01 00:30:00", "2023-03-02 00:00:00")


async def test_undated_records_are_served_whatever_the_window(c: httpx.AsyncClient) -> None:
    body = (await page(c, CONTRACT, from_="2030-01-01", to="2030-12-31")).json()
    assert body["total"] == 1 and body["records"][0]["contracts"]["subscribed_power"] == "9 kVA"


@pytest.mark.parametrize("params", [
    {"from_": "2022-13-01"}, {"from_": "yesterday"}, {"to": "2022-3-8"}, {"to": "20220308"}, {"from_": "2022-02-30"},
    {"from_": ""}, {"to": "2022-03-08T00:00:00"}, {"from_": "2022-03-08", "to": "x" * 3000},
])
async def test_a_bound_that_is_not_a_date_is_a_bad_request(c: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await page(c, **params)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["status"] == 400 and "is not a date" in problem["detail"]
    assert len(problem["detail"]) < 200


async def test_from_after_to_is_a_bad_request(c: httpx.AsyncClient) -> None:
    r = await page(c, from_="2023-01-02", to="2023-01-01")
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "`from` (2023-01-02) is after `to` (2023-01-01)"
    assert (await page(c, from_="2023-01-01", to="2023-01-01")).status_code == 200


async def test_a_cursor_belongs_to_its_window(c: httpx.AsyncClient) -> None:
    window = {"from_": "2022-06-01", "to": "2022-06-30"}
    cursor = (await page(c, **window, limit=10)).json()["next_cursor"]
    for other in ({"from_": "2022-06-02", "to": "2022-06-30"}, {"from_": "2022-06-01", "to": "2022-07-01"},
                  {"from_": "2022-06-01"}, {"to": "2022-06-30"}, {}):
        r = await page(c, **other, cursor=cursor, limit=10)
        assert r.status_code == 400, other
        assert r.json()["detail"] == "the cursor belongs to another query"
    assert (await page(c, **window, cursor=cursor, limit=10)).status_code == 200
    # a cursor of no window (one issued before the consent's window was sent, e.g. a recurring consent's stored
    # resume_cursor) goes on with the window asked now: its offset is a position in the whole list
    plain = (await page(c, limit=10)).json()["next_cursor"]
    r = await page(c, from_="2022-06-01", cursor=plain, limit=10)
    assert r.status_code == 200 and all(x["date"] >= "2022-06-01" for x in r.json()["records"])
    assert (await page(c, cursor=plain, limit=10)).status_code == 200


async def test_paging_through_a_window_gives_exactly_its_records_in_order(c: httpx.AsyncClient) -> None:
    window = {"from_": "2022-07-01", "to": "2022-08-31"}  # 31 + 31 = 62 days
    expected = windowed(date(2022, 7, 1), date(2022, 8, 31))
    assert len(expected) == 62 and (expected[0]["date"], expected[-1]["date"]) == ("2022-07-01", "2022-08-31")
    got, bodies = await walk(c, **window, limit=7)
    assert got == expected
    assert len(bodies) == 9 and [len(b["records"]) for b in bodies] == [7] * 8 + [6]
    assert {b["total"] for b in bodies} == {62}
    assert "resume_cursor" in bodies[-1] and all("resume_cursor" not in b for b in bodies[:-1])
    # cursors are stable: asking again with the same cursor gives the same page
    second = (await page(c, **window, limit=7)).json()["next_cursor"]
    again = [(await page(c, **window, cursor=second, limit=7)).json() for _ in range(2)]
    assert again[0] == again[1] and again[0]["records"] == expected[7:14]
    # a limit that divides the window exactly: no empty trailing page
    got, bodies = await walk(c, **window, limit=31)
    assert got == expected and [len(b["records"]) for b in bodies] == [31, 31]


async def test_the_resume_cursor_of_a_window_brings_only_the_new_records_of_that_window(c: httpx.AsyncClient) -> None:
    window = {"from_": "2023-03-01", "to": "2024-12-31"}
    _, bodies = await walk(c, **window, limit=5)
    resume = bodies[-1]["resume_cursor"]
    new = [{"usage_point_id": CUSTOMER, "date": "2023-03-08", "value": "1", "unit": "Wh", "measuring_period": "P1D"},
           {"usage_point_id": CUSTOMER, "date": "2025-01-01", "value": "2", "unit": "Wh", "measuring_period": "P1D"},
           {"usage_point_id": CUSTOMER, "date": "2023-03-09", "value": "3", "unit": "Wh", "measuring_period": "P1D"}]
    r = await c.post("/dev/append", json={"customer_id": CUSTOMER, "dataset": DAILY, "records": new})
    r.raise_for_status()
    body = (await page(c, **window, cursor=resume, limit=5)).json()
    assert [x["date"] for x in body["records"]] == ["2023-03-08", "2023-03-09"]  # 2025-01-01 is outside the window
    assert body["total"] == 7 + 2 and body["resume_cursor"]
    r = await page(c, cursor=resume, limit=5)  # without the window: another query
    assert r.status_code == 400 and r.json()["detail"] == "the cursor belongs to another query"


def test_the_contract_names_the_window_parameters() -> None:
    doc = json.loads((CONTRACTS / "holder-export.openapi.json").read_text("utf-8"))
    params = {p["name"]: p for p in doc["paths"]["/datasets/{dataset}/records"]["get"]["parameters"]}
    for name in ("from", "to"):
        p = params[name]
        assert p["in"] == "query" and p["required"] is False
        assert p["schema"]["type"] == "string" and p["schema"]["format"] == "date"
        assert "inclusive" in p["description"] and "may ignore it" in p["description"]
        assert "drops records outside the consent's window anyway" in p["description"]
