"""The day a record is about (shared.catalogue.windows), for the consent's data window.

Every real-format file of /work/shared/fixtures/real that ``parse_file`` reads: every record of a
dated type has a day in a plausible range, with exact first/last days read by hand from the files.
Then the conventions on handcrafted records (load-curve points dated by their interval's end,
offsets, Green Button local time, unreadable values), the window bounds, and the classification
of every dataset type of the catalogue.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from shared.catalogue import DATASET_TYPES, ParsedFile, UnknownFormat, has_days, in_window, parse_file, quirks, record_day, windows
from shared.catalogue.converters import CONVERTERS, ConversionError, convert

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"

# the types a record_day can never answer for (a contract, an address, an identity...)
UNDATED = {
    "enedis.v5.customer_contract", "enedis.v5.customer_address", "maif.contract", "maif.home", "maif.foyer",
    "maif.societaire", "maif.payment_terms", "maif.identity",
}

# file -> positions of records of a dated type that carry no day (checked to carry no date field at all)
NO_DAY: dict[str, list[int]] = {
    # ACH stub bills: only _id/invoice/vendor (flagged incomplete_bill), no `date`
    "cozy_banks_demo_ach.json": [17, 18, 19, 20, 21, 24, 25, 26, 27],
}

_PARSED: dict[str, ParsedFile] = {}


def _readable() -> list[str]:
    names = []
    for p in sorted(REAL.iterdir()):
        if not p.is_file():
            continue
        try:
            _PARSED[p.name] = parse_file(p)
        except UnknownFormat:
            continue
        names.append(p.name)
    return names


READABLE = _readable()


def days(name: str) -> list[date | None]:
    p = _PARSED[name]
    return [record_day(p.dataset_id, r) for r in p.records]


# -- real files --------------------------------------------------------------------------------------


def test_the_real_files_are_there() -> None:
    assert len(READABLE) >= 30
    read = {p.dataset_id for p in _PARSED.values()}
    assert read & UNDATED and len(read - UNDATED) >= 15


@pytest.mark.parametrize("name", READABLE)
def test_every_record_of_a_dated_type_has_a_plausible_day(name: str) -> None:
    p = _PARSED[name]
    got = days(name)
    if not has_days(p.dataset_id):
        assert p.dataset_id in UNDATED and got == [None] * len(p.records)
        return
    missing = [i for i, d in enumerate(got) if d is None]
    assert missing == NO_DAY.get(name, [])
    assert all("date" not in p.records[i] for i in missing)
    assert all(date(1990, 1, 1) <= d <= date(2030, 12, 31) for d in got if d is not None)


@pytest.mark.parametrize(("name", "first", "last"), [
    ("enedis_v5_daily_consumption_myelectricaldatapy.json", date(2022, 3, 8), date(2023, 3, 7)),
    # first point '2023-03-01 00:30:00' (00:00-00:30), last '2023-03-04 00:00:00' (23:30-24:00 of 3 March)
    ("enedis_v5_consumption_load_curve_myelectricaldatapy.json", date(2023, 3, 1), date(2023, 3, 3)),
    ("enedis_2026_mesure_consommation_quotidienne.json", date(2026, 9, 29), date(2026, 9, 30)),
    ("enedis_2026_mesure_courbe_de_charge_consommation.json", date(2026, 9, 29), date(2026, 9, 30)),
    ("grdf_adict_v2_donnees_consos_publiees.ndjson", date(2021, 1, 1), date(2021, 1, 1)),  # 2021-01-01T06:00:00+01:00 ..
    ("grdf_adict_v2_donnees_consos_informatives.ndjson", date(2021, 8, 16), date(2021, 8, 16)),  # journee_gaziere
    # start 1301630400 = 2011-04-01T04:00Z = 00:00 EDT; 1333252800 = 2012-04-01T04:00Z = 00:00 EDT
    ("greenbutton_espi_sample_Gas.xml", date(2011, 4, 1), date(2012, 4, 1)),
    ("greenbutton_espi_sample_Electric.xml", date(2012, 4, 1), date(2012, 5, 1)),
    ("eaudugrandlyon_agence_daily_litres_export_nextdom.csv", date(2018, 3, 31), date(2018, 4, 6)),  # 31/03/2018 .. 06/04/2018
    ("veolia_sudest_daily_litres_export_meter_change_nextdom.csv", date(2018, 3, 1), date(2018, 3, 19)),
    ("eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json", date(2026, 9, 19), date(2026, 9, 21)),
    ("veolia_eau_api_consommations_mensuelles_homeassistant_veolia.json", date(2025, 7, 1), date(2026, 7, 1)),  # 2025/7 .. 2026/7
    ("veolia_eau_api_facturation_mensualisation_plan_homeassistant_veolia.json", date(2026, 6, 15), date(2026, 7, 15)),
    ("orange_mesinfos_fr.orange.phonecommunicationlog_synthetic.json", date(2016, 10, 1), date(2016, 10, 2)),
    ("orange_mesinfos_fr.orange.videostream_vod_synthetic.json", date(2016, 12, 30), date(2016, 6, 15)),  # not chronological
    ("maif_mesinfos_fr.maif.maifuser.sinistre_habitation_synthetic_redacted.json", date(2015, 7, 20), date(2015, 7, 20)),
    ("mesinfos_bills_phone_sfr_synthetic.json", date(2016, 11, 7), date(2016, 11, 25)),
    ("cozy_banks_demo_ach.json", date(2017, 8, 25), date(2018, 10, 14)),
])
def test_first_and_last_days_read_by_hand(name: str, first: date, last: date) -> None:
    got = [d for d in days(name) if d is not None]
    assert (got[0], got[-1]) == (first, last)


def test_load_curve_points_fall_on_the_day_their_interval_starts() -> None:
    # 144 half hours from '2023-03-01 00:30:00' to '2023-03-04 00:00:00': 48 on each of three days
    assert Counter(days("enedis_v5_consumption_load_curve_myelectricaldatapy.json")) == {
        date(2023, 3, 1): 48, date(2023, 3, 2): 48, date(2023, 3, 3): 48}
    assert Counter(days("enedis_2026_mesure_courbe_de_charge_consommation.json")) == {date(2026, 9, 29): 48, date(2026, 9, 30): 48}
    curve = _PARSED["enedis_v5_consumption_load_curve_myelectricaldatapy.json"].records
    assert (curve[47]["date"], days("enedis_v5_consumption_load_curve_myelectricaldatapy.json")[47]) == (
        "2023-03-02 00:00:00", date(2023, 3, 1))


def test_green_button_readings_start_on_the_first_of_each_local_month() -> None:
    # monthly readings at local midnight: 04:00Z in daylight time (EDT), 05:00Z in standard time (EST)
    got = days("greenbutton_espi_sample_Gas.xml")
    assert got == [date(2011 + (3 + k) // 12, (3 + k) % 12 + 1, 1) for k in range(13)]


def test_geopoints_on_a_day_that_does_not_exist_keep_their_month() -> None:
    name = "orange_mesinfos_fr.orange.geopoint_synthetic.json"
    recs = _PARSED[name].records
    invalid = {q["position"] for q in quirks("orange.geopoint", recs) if q["code"] == "invalid_date"}
    assert len(invalid) == 26
    got = days(name)
    assert got[0] == date(2016, 9, 1)
    assert {got[i] for i in invalid} == {date(2016, 9, 30)}  # '2016-09-31T..' read as the month's last day
    assert not in_window("orange.geopoint", recs[max(invalid)], date(2016, 10, 1), None)


def test_a_utc_timestamp_is_dated_as_written() -> None:
    recs = _PARSED["cozy_banks_demo_ach.json"].records
    assert recs[6]["date"] == "2018-10-18T22:00:00.000Z" and record_day("cozy.bills", recs[6]) == date(2018, 10, 18)


def test_converted_records_keep_the_days_of_their_source() -> None:
    checked = set()
    for (source, target), _conv in sorted(CONVERTERS.items()):
        for name, p in sorted(_PARSED.items()):
            if p.dataset_id != source:
                continue
            try:
                out = convert(source, target, p.records)
            except ConversionError:
                continue
            src = [d for d in days(name) if d is not None]
            got = [record_day(target, r) for r in out]
            assert None not in got, (source, target, name)
            assert all(min(src) <= d <= max(src) for d in got), (source, target, name)
            if target in ("com.grandlyon.enedis.day", "com.grandlyon.enedis.minute", "enedis.v5.daily_consumption",
                          "enedis.v5.consumption_load_curve", "metering.interval_reading"):
                assert got == src, (source, target, name)  # one target record per source record
            checked.add(target)
    assert has_days("com.grandlyon.enedis.month") and "com.grandlyon.enedis.month" in checked
    assert {t for t in checked} >= {"com.grandlyon.enedis.day", "com.grandlyon.enedis.minute", "com.grandlyon.grdf.day",
                                    "com.grandlyon.egl.day", "metering.interval_reading"}


# -- conventions on handcrafted records ------------------------------------------------------------

CURVE = "enedis.v5.consumption_load_curve"
CURVE_2026 = "enedis.mesures2026.consumption_load_curve"
ESPI = "greenbutton.espi.interval_reading"
US_RULES = {"tzOffset": "-18000", "dstOffset": "3600", "dstStartRule": "360E2000", "dstEndRule": "B40E2000"}


def _epoch(*args: int) -> str:
    return str(int(datetime(*args, tzinfo=timezone.utc).timestamp()))


@pytest.mark.parametrize(("dataset", "value", "length", "day"), [
    (CURVE, "2022-04-02 00:00:00", "PT30M", date(2022, 4, 1)),  # ends the 23:30-00:00 interval of 1 April
    (CURVE, "2022-04-02 00:30:00", "PT30M", date(2022, 4, 2)),
    (CURVE, "2022-04-02 00:10:00", "PT10M", date(2022, 4, 2)),
    (CURVE, "2022-04-02 00:30:00", "PT60M", date(2022, 4, 1)),  # 23:30-00:30
    (CURVE, "2022-04-02 00:00:00", None, date(2022, 4, 1)),  # no interval_length: the instant just before the end
    (CURVE_2026, "2026-03-29T00:00:00+01:00", "PT30M", date(2026, 3, 28)),  # offset ignored, wall clock as written
    (CURVE_2026, "2026-09-29T00:30:00+02:00", "PT30M", date(2026, 9, 29)),
    (CURVE_2026, "2026-01-01 00:00:00", "PT30M", date(2025, 12, 31)),
])
def test_load_curve_points_are_dated_by_their_interval_start(dataset: str, value: str, length: str | None, day: date) -> None:
    rec: dict[str, Any] = {"date": value, "value": "1", "unit": "W"}
    if length is not None:
        rec["interval_length"] = length
    assert record_day(dataset, rec) == day


@pytest.mark.parametrize(("dataset", "record", "day"), [
    ("enedis.mesures2026.daily_consumption", {"date": "2026-01-04T00:00:00+01:00"}, date(2026, 1, 4)),
    ("grdf.adict.v2.published_consumption", {"consommation": {"date_debut_consommation": "2021-08-16T23:30:00-05:00"}},
     date(2021, 8, 16)),
    ("grdf.adict.v2.published_consumption", {"consommation": {"date_debut_consommation": None},
                                             "releve_debut": {"date_releve": "2021-01-01T06:00:00+01:00"}}, date(2021, 1, 1)),
    ("grdf.adict.v2.informative_consumption", {"consommation": {"journee_gaziere": None,
                                                                "date_debut_consommation": "2021-08-16T06:00:00+02:00"}},
     date(2021, 8, 16)),
    ("orange.phone_communication_log", {"timestamp": "2016-10-01T23:59:08Z"}, date(2016, 10, 1)),
    ("cozy.bills", {"date": "2016-11-07T12:00:00.000+02:00"}, date(2016, 11, 7)),
    ("cozy.bills", {"date": "2016-11-07"}, date(2016, 11, 7)),
    ("maif.claim", {"timestamp": "2015-07-20T19:00"}, date(2015, 7, 20)),
    ("water.daily_litres", {"date": "31/03/2018", "date_format": "DD/MM/YYYY"}, date(2018, 3, 31)),
    ("water.daily_litres", {"date": "2018-02-30", "date_format": "YYYY-MM-DD"}, date(2018, 2, 28)),  # past the month's end
    ("water.monthly_m3", {"year": 2026, "month": 2, "m3": 3.0}, date(2026, 2, 1)),
    ("metering.interval_reading", {"start": "2012-04-01T02:00:00Z", "duration": 3600}, date(2012, 4, 1)),
    ("com.grandlyon.enedis.minute", {"load": 1, "minute": 0, "hour": 0, "day": 2, "month": 3, "year": 2023}, date(2023, 3, 1)),
    ("com.grandlyon.enedis.minute", {"load": 1, "minute": 30, "hour": 0, "day": 2, "month": 3, "year": 2023}, date(2023, 3, 2)),
    ("com.grandlyon.enedis.day", {"load": 1, "minute": 0, "hour": 0, "day": 1, "month": 1, "year": 2020}, date(2020, 1, 1)),
    ("com.grandlyon.enedis.month", {"load": 1, "minute": 0, "hour": 0, "day": 0, "month": 7, "year": 2020}, date(2020, 7, 1)),
    ("com.grandlyon.enedis.year", {"load": 1, "minute": 0, "hour": 0, "day": 0, "month": 1, "year": 2020}, date(2020, 1, 1)),
    ("com.grandlyon.grdf.day", {"load": 1, "minute": 0, "hour": 0, "day": 16, "month": 8, "year": 2021}, date(2021, 8, 16)),
    ("com.grandlyon.egl.day", {"load": 1, "minute": 0, "hour": 0, "day": 31, "month": 3, "year": 2018}, date(2018, 3, 31)),
])
def test_dated_values(dataset: str, record: dict[str, Any], day: date) -> None:
    assert record_day(dataset, record) == day


def _rule(month: int, op: int, dow: int, hours: int, dom: int = 0) -> str:
    return f"{month << 28 | op << 25 | dom << 20 | dow << 17 | hours << 12:08X}"


@pytest.mark.parametrize(("record", "day"), [
    ({"start": _epoch(2012, 4, 1, 4), **US_RULES}, date(2012, 4, 1)),  # 00:00 EDT
    ({"start": _epoch(2012, 4, 1, 2), **US_RULES}, date(2012, 3, 31)),  # 22:00 EDT on 31 March; UTC day 1 April
    ({"start": _epoch(2012, 4, 1, 2)}, date(2012, 4, 1)),  # no LocalTimeParameters: the UTC day
    ({"start": _epoch(2012, 1, 1, 4, 30), **US_RULES}, date(2011, 12, 31)),  # 23:30 EST: no daylight time in winter
    ({"start": _epoch(2012, 1, 1, 5), **US_RULES}, date(2012, 1, 1)),  # 00:00 EST
    ({"start": _epoch(2012, 11, 4, 4, 30), **US_RULES}, date(2012, 11, 4)),  # 00:30 EDT, the day daylight time ends
    ({"start": _epoch(2012, 3, 11, 4, 30), **US_RULES}, date(2012, 3, 10)),  # 23:30 EST, the eve of daylight time
    ({"start": _epoch(2012, 4, 1, 4, 30), **US_RULES, "dstStartRule": "FFFFFFFF"}, date(2012, 3, 31)),  # DST disabled: 23:30 EST
    # southern hemisphere (UTC+10): daylight time from the first Sunday of October to the first Sunday of April
    ({"start": _epoch(2012, 1, 15, 13, 30), "tzOffset": "36000", "dstOffset": "3600",
      "dstStartRule": _rule(10, 2, 7, 2), "dstEndRule": _rule(4, 2, 7, 3)}, date(2012, 1, 16)),  # 00:30 daylight time
    ({"start": _epoch(2012, 6, 15, 13, 30), "tzOffset": "36000", "dstOffset": "3600",
      "dstStartRule": _rule(10, 2, 7, 2), "dstEndRule": _rule(4, 2, 7, 3)}, date(2012, 6, 15)),  # 23:30 standard time
])
def test_green_button_readings_are_dated_by_the_local_day_of_their_start(record: dict[str, Any], day: date) -> None:
    assert record_day(ESPI, {"duration": "3600", "value": "1", **record}) == day


def test_espi_dst_rules_decode_to_the_us_transitions() -> None:
    # 0x360E2000: March, 2nd Sunday, 02:00; 0xB40E2000: November, 1st Sunday, 02:00
    assert windows._dst_transition(2012, "360E2000") == datetime(2012, 3, 11, 2)
    assert windows._dst_transition(2012, "B40E2000") == datetime(2012, 11, 4, 2)
    assert windows._dst_transition(2021, _rule(3, 7, 7, 2)) == datetime(2021, 3, 28, 2)  # last Sunday of March (EU)
    assert windows._dst_transition(2021, _rule(3, 1, 7, 2, dom=8)) == datetime(2021, 3, 14, 2)  # Sunday on or after the 8th
    assert windows._dst_transition(2021, _rule(3, 0, 0, 2, dom=28)) == datetime(2021, 3, 28, 2)
    assert windows._dst_transition(2021, "FFFFFFFF") is None
    assert windows._dst_transition(2021, "not hex") is None


@pytest.mark.parametrize(("dataset", "record"), [
    ("enedis.v5.daily_consumption", {"date": "yesterday"}),
    ("enedis.v5.daily_consumption", {"date": None}),
    ("enedis.v5.daily_consumption", {"date": 20220101}),
    ("enedis.v5.daily_consumption", {}),
    ("enedis.v5.daily_consumption", {"date": "2022-13-01"}),
    ("enedis.v5.daily_consumption", {"date": "2022-00-10"}),
    ("enedis.v5.daily_consumption", {"date": "2022-01-32"}),
    ("enedis.v5.daily_consumption", {"date": "2022-01-01junk"}),
    (CURVE, {"date": "2022-04-02 25:00:00", "interval_length": "PT30M"}),
    (CURVE, {"date": "2022-04-02", "interval_length": "PT30M"}),
    (ESPI, {"start": "abc", **US_RULES}),
    (ESPI, {"start": "99999999999999999999", **US_RULES}),
    (ESPI, {"start": None}),
    ("water.monthly_m3", {"year": 2026, "month": 13}),
    ("water.monthly_m3", {"year": "2026", "month": 1}),
    ("com.grandlyon.enedis.minute", {"minute": 0, "hour": True, "day": 2, "month": 3, "year": 2023}),
    ("com.grandlyon.enedis.day", {"day": 1, "month": 1}),
    ("grdf.adict.v2.published_consumption", {"consommation": "not an object"}),
    ("cozy.bills", {"_id": "stub", "invoice": "io.cozy.files:x"}),
])
def test_an_unreadable_or_absent_day_is_none_and_the_record_is_kept(dataset: str, record: dict[str, Any]) -> None:
    assert has_days(dataset)
    assert record_day(dataset, record) is None
    assert in_window(dataset, record, date(2000, 1, 1), date(2000, 1, 1))


def test_a_record_that_is_not_a_mapping_has_no_day() -> None:
    assert record_day("enedis.v5.daily_consumption", ["2022-01-01"]) is None  # type: ignore[arg-type]


def test_a_garbled_green_button_rule_falls_back_to_standard_time() -> None:
    rec = {"start": _epoch(2012, 4, 1, 4, 30), **US_RULES, "dstEndRule": "F0000000"}  # month 15: no rule
    assert record_day(ESPI, rec) == date(2012, 3, 31)  # 23:30 standard time


# -- undated and unknown types ---------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(UNDATED))
def test_undated_types_have_no_days_and_are_never_filtered(dataset: str) -> None:
    assert not has_days(dataset)
    rec = {"date": "2022-01-01", "timestamp": "2022-01-01T00:00:00Z", "startDate": "2013-04-12T00:00:00",
           "contracts": {"last_activation_date": "2006-05-24+02:00"}}
    assert record_day(dataset, rec) is None
    assert in_window(dataset, rec, date(2030, 1, 1), date(2030, 1, 1))


def test_unknown_dataset_ids() -> None:
    assert not has_days("no.such.type")
    assert record_day("no.such.type", {"date": "2022-01-01"}) is None
    assert in_window("no.such.type", {"date": "2022-01-01"}, date(2030, 1, 1), None)


def test_every_dataset_type_is_classified() -> None:
    # A new type in DATASET_TYPES must be added to windows.DAY_OF: dated (an extractor) or explicitly undated (None).
    assert set(windows.DAY_OF) == set(DATASET_TYPES), "classify the new dataset type in shared/catalogue/windows.py DAY_OF"
    assert {d for d in DATASET_TYPES if not has_days(d)} == UNDATED
    for dataset_id in DATASET_TYPES:
        assert f"- {dataset_id}: " in (windows.__doc__ or ""), f"document the convention of {dataset_id} in the module docstring"


def test_windows_needs_only_the_standard_library() -> None:
    tree = ast.parse(Path(windows.__file__).read_text("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] in sys.stdlib_module_names for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            assert (node.module or "").split(".")[0] in sys.stdlib_module_names | {"__future__"}


# -- window bounds ---------------------------------------------------------------------------------

DAY = {"date": "2023-01-15"}
DAILY = "enedis.v5.daily_consumption"


@pytest.mark.parametrize(("start", "end", "inside"), [
    (date(2023, 1, 15), date(2023, 1, 15), True),  # both bounds inclusive
    (date(2023, 1, 15), None, True),
    (None, date(2023, 1, 15), True),
    (date(2023, 1, 1), date(2023, 12, 31), True),
    (None, None, True),
    (date(2023, 1, 16), None, False),
    (None, date(2023, 1, 14), False),
    (date(2023, 1, 16), date(2023, 1, 31), False),
    (date(2022, 1, 1), date(2022, 12, 31), False),
    (date(2023, 1, 16), date(2023, 1, 14), False),  # an empty window
])
def test_in_window_bounds(start: date | None, end: date | None, inside: bool) -> None:
    assert in_window(DAILY, DAY, start, end) is inside


def test_in_window_takes_datetimes_as_their_day() -> None:
    assert in_window(DAILY, DAY, datetime(2023, 1, 15, 23, 59), datetime(2023, 1, 15, 0, 0))


def test_strict_windows_leave_out_dated_records_whose_day_cannot_be_read() -> None:
    """What the broker applies: a holder's unreadable date never carries a record into a window."""
    from datetime import date as _date

    from shared.catalogue.windows import in_window as _in_window

    bad = {"date": "2017-13-25"}
    window = (_date(2000, 1, 1), _date(2000, 1, 31))
    assert _in_window("cozy.bills", bad, *window) is True  # lenient (the reference holder's): undated passes
    assert _in_window("cozy.bills", bad, *window, strict=True) is False
    assert _in_window("cozy.bills", {}, _date(2000, 1, 1), None, strict=True) is False
    assert _in_window("cozy.bills", bad, None, None, strict=True) is True  # no window: nothing to apply
    assert _in_window("maif.identity", {"name": "x"}, *window, strict=True) is True  # undated type: never filtered
