"""Personal clouds end to end: real files, through a real broker, into a real Solid pod and a Cozy (issue 8).

The broker (its own nats-server, the three services, one worker process, the reference holder)
moves each real energy and water file of ../shared/fixtures/real into:

- a real Community Solid Server (``@solid/community-server`` 7, in-memory pod), installed by
  ``.ci/run`` under ``.cache/css``: every file as JSON (recipient ``solid-pod``), and the Enedis 2026
  and Green Button files converted by the catalogue (recipient ``solid-normalised``, which accepts
  only Enedis v5 and the normalised interval reading);
- the Cozy data API contract server (``examples/cozy``): the files that have a converter to an
  Ecolyo doctype, as the documents Ecolyo reads (recipients ``cozy-ecolyo``, ``-month``, ``-year``).

Converted values are checked against values worked out by hand from the source files (a few per
file, and totals, in exact decimals). Re-running a transfer creates nothing twice; a worker killed
in the middle of a converted transfer resumes and delivers the same documents.

Without the Solid server (``npm install --prefix .cache/css @solid/community-server@7``) the Solid
tests are skipped, unless ``REQUIRE_SOLID=1`` (CI), which makes its absence a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.authclient import BearerAuth, ClientCredentials, dev_participant_key, public_jwks
from shared.canonical import records_digest
from shared.catalogue import DATASET_TYPES, parse_file
from shared.demo import HOLDER_ID, client_as
from shared.launcher import Stack, free_port
from tests.conftest import REAL, REPO, running_stack

pytestmark = pytest.mark.e2e

CSS_BIN = REPO / ".cache" / "css" / "node_modules" / ".bin" / "community-solid-server"
NO_CSS = f"Community Solid Server not installed at {CSS_BIN} (npm install --prefix .cache/css @solid/community-server@7)"
COZY_TOKEN = "cozy-broker-token"
COZY_READ_ONLY = "cozy-read-only-token"
PAGE = 50

SOLID = "solid-pod"  # accepts every dataset type as it is: records arrive as JSON, unconverted
SOLID_NORMALISED = "solid-normalised"  # accepts Enedis v5 and metering.interval_reading only: the rest is converted
COZY = "cozy-ecolyo"  # Ecolyo's doctypes (minute, day, gas day, water day)
COZY_MONTH = "cozy-ecolyo-month"
COZY_YEAR = "cozy-ecolyo-year"
COZY_RO = "cozy-read-only"  # a token without write permission

# files served together by the reference holder (a customer id and a dataset type at most once per group)
GROUPS: list[list[str]] = [
    ["enedis_v5_daily_consumption_myelectricaldatapy.json", "enedis_v5_consumption_load_curve_myelectricaldatapy.json",
     "enedis_v5_consumption_load_curve_myelectricaldata.json", "enedis_2026_mesure_consommation_quotidienne.json",
     "enedis_2026_mesure_courbe_de_charge_consommation.json", "grdf_adict_v2_donnees_consos_informatives.ndjson",
     "grdf_adict_v2_donnees_consos_publiees.ndjson", "greenbutton_espi_sample_Electric.xml", "greenbutton_espi_sample_Gas.xml",
     "eaudugrandlyon_agence_daily_litres_export_nextdom.csv", "veolia_eau_api_consommations_mensuelles_homeassistant_veolia.json",
     "veolia_eau_api_facturation_mensualisation_plan_homeassistant_veolia.json"],
    ["eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json", "greenbutton_espi_sample_Water.xml"],
    ["veolia_eau_api_consommations_journalieres_homeassistant_veolia.json"],
    ["veolia_sudest_daily_litres_export_meter_change_nextdom.csv"],
]
ENERGY_AND_WATER = [name for group in GROUPS for name in group]

DAILY = "enedis_v5_daily_consumption_myelectricaldatapy.json"
LOAD_PY = "enedis_v5_consumption_load_curve_myelectricaldatapy.json"
LOAD_MED = "enedis_v5_consumption_load_curve_myelectricaldata.json"


# ---- the servers ---------------------------------------------------------------------------------


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited during start-up:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not up after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def css_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A Community Solid Server with an open in-memory pod, on a free port: its root URL (None when it is not installed)."""
    if not CSS_BIN.exists():
        if os.environ.get("REQUIRE_SOLID") == "1":
            pytest.fail(f"REQUIRE_SOLID=1 but {NO_CSS}")
        yield None
        return
    port = free_port()
    root = f"http://127.0.0.1:{port}/"
    log = tmp_path_factory.mktemp("css") / "css.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(CSS_BIN), "-p", str(port), "-b", root, "-l", "warn"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_http(root, proc, log)
        yield root
    finally:
        _stop(proc)


@pytest.fixture()
def css(css_root: str | None) -> str:
    if css_root is None:
        pytest.skip(NO_CSS)
    return css_root


@pytest.fixture(scope="module")
def cozy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Cozy data API contract server (examples/cozy), with a write token and a read-only one."""
    port = free_port()
    log = tmp_path_factory.mktemp("cozy") / "cozy.log"
    env = {**os.environ, "COZY_TOKENS": json.dumps({COZY_TOKEN: {"com.grandlyon.*": "ALL"}, COZY_READ_ONLY: {"*": ["GET"]}})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "examples.cozy", "--port", str(port)], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


class Broker:
    """The running broker and the group of files its holder serves now."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.group = 0

    def serve(self, name: str) -> None:
        """Make the reference holder serve the group of ``name`` (restarting it with those files if needed)."""
        group = next(i for i, g in enumerate(GROUPS) if name in g)
        if group != self.group:
            holder = self.stack.procs["holder"]
            holder.env["HOLDER_FILES"] = os.pathsep.join(str(REAL / n) for n in GROUPS[group])
            self.stack.restart("holder")
            self.group = group


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, css_root: str | None, cozy: str) -> Iterator[Broker]:
    credentials = {r: {"bearer": COZY_TOKEN} for r in (COZY, COZY_MONTH, COZY_YEAR)} | {COZY_RO: {"bearer": COZY_READ_ONLY}}
    env = {"TRANSFER_PAGE_LIMIT": str(PAGE), "RECIPIENT_CREDENTIALS": json.dumps(credentials), "TRANSFER_ACK_WAIT_S": "2",
           "TRANSFER_RETRY_INITIAL_S": "0.05", "TRANSFER_RETRY_MAX_S": "0.5", "TRANSFER_FETCH_TIMEOUT_S": "1"}
    files = [REAL / n for n in GROUPS[0]]
    with running_stack(tmp_path_factory.mktemp("clouds"), files, env=env, worker_processes=1) as s:
        everything = sorted(DATASET_TYPES)
        recipients = {} if css_root is None else {
            SOLID: ("solid", f"{css_root}portability/", everything),
            SOLID_NORMALISED: ("solid", f"{css_root}normalised/", ["enedis.v5.daily_consumption", "enedis.v5.consumption_load_curve",
                                                                   "metering.interval_reading"]),
        }
        recipients |= {
            COZY: ("cozy", cozy, ["com.grandlyon.enedis.minute", "com.grandlyon.enedis.day", "com.grandlyon.grdf.day", "com.grandlyon.egl.day"]),
            COZY_MONTH: ("cozy", cozy, ["com.grandlyon.enedis.month"]),
            COZY_YEAR: ("cozy", cozy, ["com.grandlyon.enedis.year"]),
            COZY_RO: ("cozy", cozy, ["com.grandlyon.enedis.day"]),
        }
        with client_as(s, "admin") as admin:
            for rid, (protocol, url, accepted) in recipients.items():
                r = admin.put(f"{s.url('registry')}/participants/{rid}", json={
                    "name": f"Personal cloud {rid}", "roles": ["recipient"], "import_base_url": url, "import_protocol": protocol,
                    "datasets_accepted": accepted, "jwks": public_jwks(dev_participant_key(rid)), "allow_private_network": True})
                assert r.status_code in (200, 201), r.text
                assert r.json()["import_protocol"] == protocol
        yield Broker(s)


# ---- playing the parties ------------------------------------------------------------------------------


def as_recipient(stack: Stack, rid: str) -> httpx.Client:
    creds = ClientCredentials(rid, dev_participant_key(rid), f"{stack.url('registry')}/oauth/token", scope="recipient")
    return httpx.Client(auth=BearerAuth(creds.source()), timeout=30)


def customer_of(name: str) -> tuple[str, str, list[dict[str, Any]]]:
    parsed = parse_file(REAL / name)
    return parsed.subject_key or "customer-1", parsed.dataset_id, parsed.records


def consent_for(b: Broker, rid: str, name: str, *, one_off: bool = True) -> str:
    b.serve(name)
    customer, dataset, _ = customer_of(name)
    s = b.stack
    with as_recipient(s, rid) as me, client_as(s, "admin") as admin:
        r = me.post(f"{s.url('consent')}/consents", json={
            "data_subject": f"subject-{rid}", "holder_id": HOLDER_ID, "recipient_id": rid, "datasets": [dataset],
            "purpose": "Keep my energy and water data in my personal cloud", "duration_days": 30, "one_off": one_off})
        assert r.status_code in (200, 201), r.text
        consent = r.json()
        token = httpx.post(f"{s.url('holder')}/dev/tokens", json={"customer_id": customer, "datasets": [dataset]}, timeout=30).json()
        r = admin.post(f"{s.url('consent')}/consents/{consent['id']}/authorise", json=token)
        assert r.status_code == 200, r.text
    return str(consent["id"])


def start(b: Broker, rid: str, consent_id: str, dataset: str) -> str:
    with as_recipient(b.stack, rid) as me:
        r = me.post(f"{b.stack.url('transfer')}/transfers", json={"consent_id": consent_id, "dataset": dataset})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def wait(b: Broker, rid: str, tid: str, until: Any = None, timeout: float = 120.0) -> dict[str, Any]:
    until = until or (lambda t: t["status"] not in ("queued", "running"))
    deadline = time.monotonic() + timeout
    with as_recipient(b.stack, rid) as me:
        while True:
            t = me.get(f"{b.stack.url('transfer')}/transfers/{tid}").json()
            if until(t):
                return dict(t)
            assert time.monotonic() < deadline, f"transfer still {t}"
            time.sleep(0.1)


def transfer(b: Broker, rid: str, name: str) -> dict[str, Any]:
    """One consented transfer of the file ``name`` to ``rid``, to its end."""
    _, dataset, _ = customer_of(name)
    return wait(b, rid, start(b, rid, consent_for(b, rid, name), dataset))


# ---- reading the clouds -------------------------------------------------------------------------


def pod_listing(container: str) -> set[str]:
    """Every non-container resource under ``container``, walking the LDP containment triples (JSON-LD)."""
    out: set[str] = set()
    todo = [container]
    with httpx.Client(timeout=30) as c:
        while todo:
            url = todo.pop()
            r = c.get(url, headers={"Accept": "application/ld+json"})
            if r.status_code == 404:
                continue
            assert r.status_code == 200, (url, r.status_code)
            for node in r.json():
                for item in node.get("http://www.w3.org/ns/ldp#contains", []):
                    (todo.append if item["@id"].endswith("/") else out.add)(item["@id"])
    return out


def pod_get(urls: set[str]) -> dict[str, Any]:
    """The JSON content of each resource."""
    async def get_all() -> dict[str, Any]:
        limit = asyncio.Semaphore(8)
        async with httpx.AsyncClient(timeout=30) as c:
            async def one(url: str) -> tuple[str, Any]:
                async with limit:
                    r = await c.get(url, headers={"Accept": "application/json"})
                assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), url
                return url, r.json()
            return dict(await asyncio.gather(*(one(u) for u in sorted(urls))))
    return asyncio.run(get_all())


def pod_resources(container: str) -> dict[str, Any]:
    return pod_get(pod_listing(container))


def cozy_docs(cozy: str, doctype: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{cozy}/data/{doctype}/_all_docs", params={"include_docs": "true"}, headers={"Authorization": f"Bearer {COZY_TOKEN}"})
    assert r.status_code == 200, r.text
    return [{k: v for k, v in row["doc"].items() if not k.startswith("_")} for row in r.json()["rows"]]


def key(doc: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return doc["year"], doc["month"], doc["day"], doc["hour"], doc["minute"]


def by_time(docs: list[dict[str, Any]]) -> dict[tuple[int, ...], list[Any]]:
    out: dict[tuple[int, ...], list[Any]] = {}
    for d in docs:
        out.setdefault(key(d), []).append(d["load"])
    return out


def dec(x: Any) -> Decimal:
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


# ---- Solid ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENERGY_AND_WATER)
def test_each_file_lands_in_the_solid_pod_as_json(name: str, broker: Broker, css: str) -> None:
    _, dataset, records = customer_of(name)
    container = f"{css}portability/{dataset}/"
    before = pod_listing(container)
    t = transfer(broker, SOLID, name)
    assert t["status"] == "completed", t
    assert t["records"] == len(records) and t["sha256"] == records_digest(records)
    new = pod_get(pod_listing(container) - before)
    # every record of the file, unchanged (values keep the source's spelling), one resource each
    assert sorted(json.dumps(v, sort_keys=True) for v in new.values()) == sorted(json.dumps(r, sort_keys=True) for r in records)
    assert [type(v) for r in sorted(new.values(), key=json.dumps) for v in r.values()] == \
        [type(v) for r in sorted(records, key=json.dumps) for v in r.values()]
    for url in new:  # a container per dataset and period; the name starts with the record's time
        period, leaf = url[len(container):].split("/")
        assert leaf.endswith(".json") and (period == "undated" or leaf.startswith(period)), url
    manifest = httpx.get(f"{css}portability/portability-transfers/{t['id']}.json").json()
    assert manifest == {"transfer_id": t["id"], "dataset": dataset, "records": len(records), "sha256": records_digest(records)}


def test_rerunning_a_transfer_creates_no_duplicates_in_the_pod(broker: Broker, css: str) -> None:
    _, dataset, records = customer_of(LOAD_MED)
    consent = consent_for(broker, SOLID, LOAD_MED, one_off=False)
    first = wait(broker, SOLID, start(broker, SOLID, consent, dataset))
    held = pod_listing(f"{css}portability/{dataset}/")
    second = wait(broker, SOLID, start(broker, SOLID, consent, dataset))
    assert first["status"] == second["status"] == "completed"
    assert first["sha256"] == second["sha256"] == records_digest(records)
    assert pod_listing(f"{css}portability/{dataset}/") == held
    mine = [u for u in held if "/2026-09/" in u or "/2026-10/" in u]  # this meter's days; the other load curve is of March 2023
    assert len(mine) == len(records)


@pytest.mark.parametrize(("name", "delivered"), [
    ("enedis_2026_mesure_consommation_quotidienne.json", "enedis.v5.daily_consumption"),
    ("enedis_2026_mesure_courbe_de_charge_consommation.json", "enedis.v5.consumption_load_curve"),
    ("greenbutton_espi_sample_Electric.xml", "metering.interval_reading"),
    ("greenbutton_espi_sample_Gas.xml", "metering.interval_reading"),
    ("greenbutton_espi_sample_Water.xml", "metering.interval_reading"),
])
def test_converted_into_the_pod_when_it_accepts_another_type(name: str, delivered: str, broker: Broker, css: str) -> None:
    _, dataset, records = customer_of(name)
    t = transfer(broker, SOLID_NORMALISED, name)
    assert t["status"] == "completed" and t["records"] == len(records), t
    got = [v for u, v in pod_resources(f"{css}normalised/{delivered}/").items()]
    if dataset.startswith("enedis.mesures2026"):  # renamed fields, same values (Wh or W strings), same timestamps
        src = {r["date"]: r["value"] for r in records}
        mine = {r["date"]: r for r in got if r["usage_point_id"] == "99999999999991"}
        assert {d: r["value"] for d, r in mine.items()} == src
        assert {r["unit"] for r in mine.values()} == {records[0]["unit"]}
        assert all("business_quantity" not in r for r in got)
        return
    # Green Button: value × 10^powerOfTenMultiplier in the uom's unit (hand-checked: 72 Wh, 169 therm × 10^-3, 128 US gal × 10^3)
    series = {r["start"]: r for r in got if r["series"] == records[0]["meter_reading_href"] and r["unit"] == {
        "greenbutton_espi_sample_Electric.xml": "Wh", "greenbutton_espi_sample_Gas.xml": "therm", "greenbutton_espi_sample_Water.xml": "US_gal"}[name]}
    assert len(series) == len(records)
    if name.endswith("Electric.xml"):
        assert series["2012-04-01T04:00:00Z"]["value"] == 4702205 and series["2012-04-01T04:00:00Z"]["duration"] == 2592000
    elif name.endswith("Gas.xml"):
        assert series["2011-04-01T04:00:00Z"]["value"] == 72.609
        assert sum(dec(r["value"]) for r in series.values()) == sum(Decimal(r["value"]) for r in records) / 1000
    else:
        assert series["2012-04-01T04:00:00Z"]["value"] == 27291000 and series["2012-04-01T04:00:00Z"]["quantity"] == "volume"


# ---- Cozy (Ecolyo) -----------------------------------------------------------------------------------


def test_enedis_daily_becomes_ecolyo_day_documents(broker: Broker, cozy: str) -> None:
    _, _, records = customer_of(DAILY)
    t = transfer(broker, COZY, DAILY)
    assert t["status"] == "completed" and t["records"] == 365, t
    docs = by_time(cozy_docs(cozy, "com.grandlyon.enedis.day"))
    assert len(docs) == 365 and all(len(v) == 1 for v in docs.values())
    # by hand: 42045 Wh on 2022-03-08 is 42.045 kWh; 53021 Wh on 2023-03-07 is 53.021 kWh
    assert docs[(2022, 3, 8, 0, 0)] == [42.045] and docs[(2023, 3, 7, 0, 0)] == [53.021]
    assert sum(dec(v[0]) for v in docs.values()) == sum(Decimal(r["value"]) for r in records) / 1000


def test_enedis_daily_becomes_ecolyo_month_documents_for_complete_months_only(broker: Broker, cozy: str) -> None:
    _, _, records = customer_of(DAILY)
    t = transfer(broker, COZY_MONTH, DAILY)
    assert t["status"] == "completed" and t["records"] == 11, t
    assert t["error"]["conversion"]["notes"] == {"partial_period": 2}  # March 2022 (from the 8th) and March 2023 (to the 7th)
    assert t["error"]["conversion"]["periods_left_out"] == ["2022-03", "2023-03"]
    docs = by_time(cozy_docs(cozy, "com.grandlyon.enedis.month"))
    assert sorted(docs) == [(2022, m, 0, 0, 0) for m in range(4, 13)] + [(2023, 1, 0, 0, 0), (2023, 2, 0, 0, 0)]
    for (y, m, *_), loads in docs.items():  # each month: the sum of its days, in kWh
        assert dec(loads[0]) == sum(Decimal(r["value"]) for r in records if r["date"].startswith(f"{y:04d}-{m:02d}")) / 1000
    assert docs[(2022, 4, 0, 0, 0)] == [951.593]


def test_no_complete_year_gives_no_year_document(broker: Broker, cozy: str) -> None:
    t = transfer(broker, COZY_YEAR, DAILY)
    assert t["status"] == "completed" and t["records"] == 0, t
    assert t["error"]["conversion"]["notes"] == {"partial_period": 2} and t["error"]["conversion"]["periods_left_out"] == ["2022", "2023"]
    assert cozy_docs(cozy, "com.grandlyon.enedis.year") == []


@pytest.mark.parametrize(("name", "first", "first_kwh"), [
    (LOAD_PY, (2023, 3, 1, 0, 30), 0.672),  # 1344 W over the 30 minutes ending at 00:30
    (LOAD_MED, (2026, 9, 29, 0, 30), 2.039),  # 4078 W over the 30 minutes ending at 00:30
])
def test_enedis_load_curves_become_ecolyo_minute_documents(name: str, first: tuple[int, ...], first_kwh: float, broker: Broker, cozy: str) -> None:
    _, _, records = customer_of(name)
    t = transfer(broker, COZY, name)
    assert t["status"] == "completed" and t["records"] == len(records), t
    docs = by_time(cozy_docs(cozy, "com.grandlyon.enedis.minute"))
    assert docs[first] == [first_kwh]
    # every point: dated by the END of its interval (the one ending at midnight is the next day's 00:00), W / 2000 kWh
    ends = {(int(r["date"][:4]), int(r["date"][5:7]), int(r["date"][8:10]), int(r["date"][11:13]), int(r["date"][14:16])): r["value"]
            for r in records}
    assert len(ends) == len(records) and (int(records[-1]["date"][8:10]), records[-1]["date"][11:]) in ((4, "00:00:00"), (1, "00:00:00"))
    for k, watts in ends.items():
        assert len(docs[k]) == 1 and dec(docs[k][0]) == Decimal(watts) / 2000, k
    assert sum(dec(docs[k][0]) for k in ends) == sum(Decimal(r["value"]) for r in records) / 2000


def test_grdf_informative_day_becomes_an_ecolyo_gas_day(broker: Broker, cozy: str) -> None:
    t = transfer(broker, COZY, "grdf_adict_v2_donnees_consos_informatives.ndjson")
    assert t["status"] == "completed" and t["records"] == 1, t
    assert by_time(cozy_docs(cozy, "com.grandlyon.grdf.day")) == {(2021, 8, 16, 0, 0): [8]}  # 8 kWh on the gas day of 16 August


def test_grdf_published_total_over_22_days_is_refused_not_spread(broker: Broker, cozy: str) -> None:
    before = cozy_docs(cozy, "com.grandlyon.grdf.day")
    t = transfer(broker, COZY, "grdf_adict_v2_donnees_consos_publiees.ndjson")
    assert t["status"] == "failed" and t["reason"] == "conversion_failed" and t["error"]["position"] == 0, t
    assert "22-day total" in t["error"]["message"]
    assert cozy_docs(cozy, "com.grandlyon.grdf.day") == before


@pytest.mark.parametrize(("name", "expected", "notes"), [
    # by hand from the files: litres per day; a missing day stays missing (2018-04-03)
    ("eaudugrandlyon_agence_daily_litres_export_nextdom.csv",
     {(2018, 3, 31): [707], (2018, 4, 1): [528], (2018, 4, 2): [337], (2018, 4, 4): [350], (2018, 4, 5): [360], (2018, 4, 6): [370]}, None),
    # the day in progress ("T", 21/09) is not a measure: no document
    ("eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json", {(2026, 9, 19): [637], (2026, 9, 20): [470]}, {"provisional_day": 1}),
    ("veolia_eau_api_consommations_journalieres_homeassistant_veolia.json", {(2026, 7, 1): [100], (2026, 7, 3): [110], (2026, 7, 8): [120]}, None),
])
def test_water_days_become_ecolyo_water_documents(name: str, expected: dict[tuple[int, int, int], list[int]], notes: Any, broker: Broker,
                                                  cozy: str) -> None:
    t = transfer(broker, COZY, name)
    assert t["status"] == "completed" and t["records"] == len(expected), t
    assert (t["error"] or {}).get("conversion", {}).get("notes") == notes
    docs = by_time(cozy_docs(cozy, "com.grandlyon.egl.day"))
    assert {k[:3]: v for k, v in docs.items() if k[:3] in expected} == expected


def test_meter_change_keeps_both_documents_of_the_duplicated_day(broker: Broker, cozy: str) -> None:
    name = "veolia_sudest_daily_litres_export_meter_change_nextdom.csv"
    _, _, records = customer_of(name)
    t = transfer(broker, COZY, name)
    assert t["status"] == "completed" and t["records"] == 20, t
    assert t["error"]["conversion"]["notes"] == {"duplicate_day": 1, "negative_value": 1}
    docs = by_time(cozy_docs(cozy, "com.grandlyon.egl.day"))
    march = {k: v for k, v in docs.items() if k[:2] == (2018, 3) and k[2] <= 19}
    assert sorted(march[(2018, 3, 3, 0, 0)]) == [-1754359, 379] and march[(2018, 3, 4, 0, 0)] == [1754558]
    assert len([x for v in march.values() for x in v]) == 20
    assert sum(x for v in march.values() for x in v) == sum(int(r["litres"]) for r in records) == 4843  # as served: -1754359 + 1754558 on the meter change


def test_rerunning_a_transfer_creates_no_duplicates_in_the_cozy(broker: Broker, cozy: str) -> None:
    _, dataset, _ = customer_of(LOAD_PY)
    consent = consent_for(broker, COZY, LOAD_PY, one_off=False)
    first = wait(broker, COZY, start(broker, COZY, consent, dataset))
    held = sorted(map(json.dumps, cozy_docs(cozy, "com.grandlyon.enedis.minute")))
    second = wait(broker, COZY, start(broker, COZY, consent, dataset))
    assert first["status"] == second["status"] == "completed" and first["sha256"] == second["sha256"]
    assert sorted(map(json.dumps, cozy_docs(cozy, "com.grandlyon.enedis.minute"))) == held
    assert Counter(key(d) for d in cozy_docs(cozy, "com.grandlyon.enedis.minute")).most_common(1)[0][1] == 1


def test_no_converter_to_what_the_cozy_accepts_refuses_the_consent(broker: Broker) -> None:
    s = broker.stack
    with as_recipient(s, COZY) as me:
        r = me.post(f"{s.url('consent')}/consents", json={
            "data_subject": "subject-2026", "holder_id": HOLDER_ID, "recipient_id": COZY, "datasets": ["enedis.mesures2026.daily_consumption"],
            "purpose": "test", "duration_days": 30})
    assert r.status_code == 422 and "does not accept dataset" in r.json()["detail"], r.text


def test_a_cozy_token_without_write_permission_fails_the_transfer(broker: Broker, cozy: str) -> None:
    t = transfer(broker, COZY_RO, DAILY)
    assert t["status"] == "failed" and t["reason"] == "recipient_error" and t["error"]["status"] == 403, t


def test_worker_killed_during_a_converted_transfer_resumes_with_the_same_documents(broker: Broker, cozy: str) -> None:
    """Month sums need every day: the resumed worker re-reads the delivered pages to rebuild the converter's state."""
    s = broker.stack
    _, dataset, records = customer_of(DAILY)
    consent = consent_for(broker, COZY_MONTH, DAILY)
    httpx.put(f"{s.url('holder')}/dev/faults", json={"delay_s": 0.3}).raise_for_status()
    try:
        tid = start(broker, COZY_MONTH, consent, dataset)
        wait(broker, COZY_MONTH, tid, lambda t: t["batches"] >= 3 or t["status"] not in ("queued", "running"))
        for w in s.workers():
            w.kill()
        for w in s.workers():
            w.start()
        t = wait(broker, COZY_MONTH, tid)
    finally:
        httpx.put(f"{s.url('holder')}/dev/faults", json={}).raise_for_status()
    assert t["status"] == "completed" and t["records"] == 11 and t["attempts"] >= 2, t
    docs = by_time(cozy_docs(cozy, "com.grandlyon.enedis.month"))
    assert len(docs) == 11 and all(len(v) == 1 for v in docs.values())
    assert sum(dec(v[0]) for v in docs.values()) == sum(Decimal(r["value"]) for r in records if "2022-04-01" <= r["date"] < "2023-03-01") / 1000
