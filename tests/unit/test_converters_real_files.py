"""Converters (shared.catalogue.converters) on the real-format files of /work/shared/fixtures/real.

Every file is parsed with ``shared.catalogue.parse_file`` (read in place, never copied). The
expected values are worked out by hand from the files, the arithmetic is written in the comments,
and every output record is validated against its target schema. Cross-checks: where a daily file
and a load-curve file cover the same days, the energy of one day's load curve is compared with
that day's daily value.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shared.catalogue import parse_file
from shared.catalogue import ecolyo
from shared.catalogue.converters import CONVERTERS, ConversionError, ESPI_UOM, convert, dataset_types, find, validator

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"

V5_DAILY = "enedis.v5.daily_consumption"
V5_CURVE = "enedis.v5.consumption_load_curve"
M26_DAILY = "enedis.mesures2026.daily_consumption"
M26_CURVE = "enedis.mesures2026.consumption_load_curve"
ESPI = "greenbutton.espi.interval_reading"
METERING = "metering.interval_reading"
WATER = "water.daily_litres"


def records(name: str, dataset_id: str) -> list[dict[str, Any]]:
    parsed = parse_file(REAL / name)
    assert parsed.dataset_id == dataset_id
    return parsed.records


def assert_valid(target: str, out: list[dict[str, Any]]) -> None:
    v = validator(target)
    for i, rec in enumerate(out):
        errors = [e.message for e in v.iter_errors(rec)]
        assert not errors, (target, i, rec, errors)


def run(source: str, target: str, recs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Output records and notes of one run; also checks purity (input unchanged) and streaming (chunked = whole)."""
    before = copy.deepcopy(recs)
    conv = CONVERTERS[(source, target)]
    s = conv.stream()
    out = list(s.feed(recs)) + list(s.finish())
    assert recs == before, "a converter modified its input"
    chunked = conv.stream()
    half = len(recs) // 2
    assert list(chunked.feed(iter(recs[:half]))) + list(chunked.feed(iter(recs[half:]))) + list(chunked.finish()) == out
    assert convert(source, target, recs) == out
    assert_valid(target, out)
    return out, s.notes


def kwh_sum(docs: list[dict[str, Any]]) -> Decimal:
    # exact: each load is a float whose repr is the exact decimal the converter computed (e.g. '0.672')
    return sum((Decimal(repr(d["load"])) for d in docs), Decimal(0))


# --------------------------------------------------------------------------- Ecolyo types


def test_ecolyo_types_match_the_documented_example() -> None:
    import json

    example = json.loads((REAL / "ecolyo_com.grandlyon.enedis.day_doc_example.json").read_text("utf-8"))
    # {"load": 770.18, "minute": 0, "hour": 0, "day": 1, "month": 1, "year": 2020}: load a JSON number, the rest integers
    assert type(example["load"]) is float
    assert all(type(example[k]) is int for k in ("minute", "hour", "day", "month", "year"))
    assert not list(validator(ecolyo.ENEDIS_DAY_ID).iter_errors(example))
    types = dataset_types()
    assert set(types) == {"com.grandlyon.enedis.minute", "com.grandlyon.enedis.day", "com.grandlyon.enedis.month",
                          "com.grandlyon.enedis.year", "com.grandlyon.grdf.day", "com.grandlyon.egl.day", METERING}
    for t in types.values():
        assert t.schema["additionalProperties"] is False and t.description and t.units
    assert types["com.grandlyon.egl.day"].units == {"load": "L"}
    # an extra field or a string load is refused
    assert list(validator(ecolyo.ENEDIS_DAY_ID).iter_errors({**example, "partial": True}))
    assert list(validator(ecolyo.ENEDIS_DAY_ID).iter_errors({**example, "load": "770.18"}))


# --------------------------------------------------------------------------- Enedis v5 -> Ecolyo


def test_enedis_v5_daily_to_ecolyo_day() -> None:
    recs = records("enedis_v5_daily_consumption_myelectricaldatapy.json", V5_DAILY)
    out, notes = run(V5_DAILY, ecolyo.ENEDIS_DAY_ID, recs)
    assert len(out) == 365 and notes == []
    # first record: "42045" Wh on 2022-03-08 -> 42045 / 1000 = 42.045 kWh
    assert out[0] == {"load": 42.045, "minute": 0, "hour": 0, "day": 8, "month": 3, "year": 2022}
    assert repr(out[0]["load"]) == "42.045"  # no float noise (decimal division)
    # second: "32464" Wh on 2022-03-09 -> 32.464 kWh
    assert out[1] == {"load": 32.464, "minute": 0, "hour": 0, "day": 9, "month": 3, "year": 2022}
    # last: "53021" Wh on 2023-03-07 -> 53.021 kWh
    assert out[-1] == {"load": 53.021, "minute": 0, "hour": 0, "day": 7, "month": 3, "year": 2023}
    assert all(type(d["load"]) in (int, float) for d in out)


def test_enedis_v5_load_curve_to_ecolyo_minute_keeps_interval_end() -> None:
    recs = records("enedis_v5_consumption_load_curve_myelectricaldatapy.json", V5_CURVE)
    out, _ = run(V5_CURVE, ecolyo.ENEDIS_MINUTE_ID, recs)
    assert len(out) == 144
    # "1344" W averaged over PT30M ending 2023-03-01 00:30:00 -> 1344 × 0.5 h / 1000 = 0.672 kWh, dated 00:30 (END)
    assert out[0] == {"load": 0.672, "minute": 30, "hour": 0, "day": 1, "month": 3, "year": 2023}
    # "1248" W ending 01:00 -> 1248 × 0.5 / 1000 = 0.624 kWh
    assert out[1] == {"load": 0.624, "minute": 0, "hour": 1, "day": 1, "month": 3, "year": 2023}
    # last: "2158" W ending 2023-03-04 00:00:00 (the interval 23:30-24:00 of 3 March) -> 1.079 kWh, dated 4 March 00:00
    assert out[-1] == {"load": 1.079, "minute": 0, "hour": 0, "day": 4, "month": 3, "year": 2023}


def test_enedis_v5_daily_to_month_only_complete_months() -> None:
    recs = records("enedis_v5_daily_consumption_myelectricaldatapy.json", V5_DAILY)
    out, notes = run(V5_DAILY, ecolyo.ENEDIS_MONTH_ID, recs)
    # the file covers 2022-03-08 .. 2023-03-07: complete months 2022-04 .. 2023-02 (11); March 2022 (24 of 31
    # days) and March 2023 (7 of 31) are partial, not emitted, and reported in the notes
    assert [(d["year"], d["month"]) for d in out] == [(2022, m) for m in range(4, 13)] + [(2023, 1), (2023, 2)]
    assert [(n["code"], n["period"], n["days_present"], n["days_expected"]) for n in notes] == [
        ("partial_period", "2022-03", 24, 31), ("partial_period", "2023-03", 7, 31)]
    # February 2023, the 28 daily values (Wh) of the file:
    feb = [53820, 42051, 57205, 68347, 40913, 59397, 81915, 80208, 75895, 34320, 47758, 44986, 61731, 89207,
           86194, 60667, 47388, 36467, 18503, 36755, 58547, 53145, 52704, 67832, 76956, 58734, 72518, 69151]
    assert sum(feb) == 1633314  # Wh -> 1633.314 kWh
    assert out[-1] == {"load": 1633.314, "minute": 0, "hour": 0, "day": 0, "month": 2, "year": 2023}
    # the months add up to the complete days: total of all days minus the partial Marches
    days = {r["date"]: int(r["value"]) for r in recs}
    partial = sum(v for k, v in days.items() if k.startswith(("2022-03", "2023-03")))
    assert kwh_sum(out) == Decimal(sum(days.values()) - partial) / 1000


def test_enedis_v5_daily_to_year_emits_no_partial_year() -> None:
    recs = records("enedis_v5_daily_consumption_myelectricaldatapy.json", V5_DAILY)
    out, notes = run(V5_DAILY, ecolyo.ENEDIS_YEAR_ID, recs)
    # 2022: 2022-03-08 .. 2022-12-31 = 24 + 275 = 299 of 365 days; 2023: 31 + 28 + 7 = 66 of 365: no complete year
    assert out == []
    assert [(n["period"], n["days_present"], n["days_expected"]) for n in notes] == [("2022", 299, 365), ("2023", 66, 365)]
    # a complete (leap) year from generated days: 366 days × 1000 Wh = 366 kWh
    from datetime import date, timedelta

    year = [{"usage_point_id": "01234567890", "date": (date(2024, 1, 1) + timedelta(i)).isoformat(), "value": "1000",
             "unit": "Wh", "measuring_period": "P1D"} for i in range(366)]
    assert convert(V5_DAILY, ecolyo.ENEDIS_YEAR_ID, year) == [{"load": 366, "minute": 0, "hour": 0, "day": 0, "month": 1, "year": 2024}]


def test_enedis_mixed_meters_refused() -> None:
    recs = records("enedis_v5_daily_consumption_myelectricaldatapy.json", V5_DAILY)[:2]
    other = {**recs[1], "usage_point_id": "01234567891"}
    with pytest.raises(ConversionError, match="record 1: usage_point_id"):
        convert(V5_DAILY, ecolyo.ENEDIS_DAY_ID, [recs[0], other])


# --------------------------------------------------------------------------- cross-checks daily vs load curve


def _curve_kwh_by_day(curve_docs: list[dict[str, Any]], curve_recs: list[dict[str, Any]]) -> dict[str, Decimal]:
    """kWh per local day of the INTERVAL (end - 30 min): the point dated 00:00 belongs to the day before."""
    from datetime import datetime, timedelta

    out: dict[str, Decimal] = {}
    for doc, rec in zip(curve_docs, curve_recs):
        assert rec["interval_length"] == "PT30M"
        start = datetime.strptime(rec["date"], "%Y-%m-%d %H:%M:%S") - timedelta(minutes=30)
        key = start.date().isoformat()
        out[key] = out.get(key, Decimal(0)) + Decimal(repr(doc["load"]))
    return out


# Tolerance: a load-curve value is an integer average W, so each half-hour energy is exact to ±0.5 W × 0.5 h
# = ±0.25 Wh; 48 half-hours give at most ±12 Wh; the daily value (index difference, integer Wh) adds ±1 Wh.
# Hence |curve − daily| ≤ 13 Wh = 0.013 kWh. In both real pairs the difference is exactly 0 (asserted too).
TOLERANCE_KWH = Decimal("0.013")


def test_cross_check_v5_daily_against_v5_load_curve() -> None:
    daily = records("enedis_v5_daily_consumption_myelectricaldatapy.json", V5_DAILY)
    curve = records("enedis_v5_consumption_load_curve_myelectricaldatapy.json", V5_CURVE)
    assert {r["usage_point_id"] for r in daily} == {r["usage_point_id"] for r in curve} == {"01234567890"}
    day_docs = {f"{d['year']:04d}-{d['month']:02d}-{d['day']:02d}": Decimal(repr(d["load"]))
                for d in convert(V5_DAILY, ecolyo.ENEDIS_DAY_ID, daily)}
    by_day = _curve_kwh_by_day(convert(V5_CURVE, ecolyo.ENEDIS_MINUTE_ID, curve), curve)
    # the curve covers 2023-03-01 00:00 .. 2023-03-04 00:00: three complete days of 48 half-hours each
    assert sorted(by_day) == ["2023-03-01", "2023-03-02", "2023-03-03"]
    # 2023-03-01: the 48 values sum to 155118 W -> × 0.5 h = 77559 Wh = 77.559 kWh; daily "77559" Wh
    # 2023-03-02: 137360 W × 0.5 = 68680 Wh; daily "68680".  2023-03-03: 163944 × 0.5 = 81972 Wh; daily "81972".
    expected = {"2023-03-01": Decimal("77.559"), "2023-03-02": Decimal("68.680"), "2023-03-03": Decimal("81.972")}
    for day, kwh in expected.items():
        assert by_day[day] == kwh
        assert day_docs[day] == kwh
        assert abs(by_day[day] - day_docs[day]) <= TOLERANCE_KWH
        assert by_day[day] - day_docs[day] == 0  # observed in these files


def test_cross_check_2026_daily_against_2026_load_curve() -> None:
    daily = records("enedis_2026_mesure_consommation_quotidienne.json", M26_DAILY)
    curve = records("enedis_2026_mesure_courbe_de_charge_consommation.json", M26_CURVE)
    # 2026 -> v5 -> Ecolyo (two single-step conversions)
    v5_daily = convert(M26_DAILY, V5_DAILY, daily)
    v5_curve = convert(M26_CURVE, V5_CURVE, curve)
    day_docs = convert(V5_DAILY, ecolyo.ENEDIS_DAY_ID, v5_daily)
    by_day = _curve_kwh_by_day(convert(V5_CURVE, ecolyo.ENEDIS_MINUTE_ID, v5_curve), v5_curve)
    # daily "33495" Wh on 2026-09-29 -> 33.495 kWh; "38022" Wh on 2026-09-30 -> 38.022 kWh
    assert day_docs == [{"load": 33.495, "minute": 0, "hour": 0, "day": 29, "month": 9, "year": 2026},
                        {"load": 38.022, "minute": 0, "hour": 0, "day": 30, "month": 9, "year": 2026}]
    # load curve: 96 points, 48 per day; first "4078" W -> 2.039 kWh; the sums of the day's W × 0.5 h equal the daily Wh
    assert by_day == {"2026-09-29": Decimal("33.495"), "2026-09-30": Decimal("38.022")}
    for d in day_docs:
        assert abs(by_day[f"{d['year']}-{d['month']:02d}-{d['day']:02d}"] - Decimal(repr(d["load"]))) <= TOLERANCE_KWH


# --------------------------------------------------------------------------- Enedis 2026 -> v5


def test_enedis_2026_load_curve_to_v5_equals_the_v5_twin_file() -> None:
    m26 = records("enedis_2026_mesure_courbe_de_charge_consommation.json", M26_CURVE)
    twin = records("enedis_v5_consumption_load_curve_myelectricaldata.json", V5_CURVE)
    out, _ = run(M26_CURVE, V5_CURVE, m26)
    assert len(out) == len(twin) == 96
    # `aggregate` ("average" in v5's reading_type) is the only v5 field without a 2026 equivalent: not produced.
    assert {r["aggregate"] for r in twin} == {"average"}
    assert out == [{k: v for k, v in r.items() if k != "aggregate"} for r in twin]
    # first point: v "4078", d "2026-09-29 00:30:00", p PT30M, n B -> value "4078" (still a string), same date
    assert out[0] == {"usage_point_id": "99999999999991", "date": "2026-09-29 00:30:00", "value": "4078", "unit": "W",
                      "interval_length": "PT30M", "measure_type": "B", "quality": "BRUT", "measurement_kind": "power"}
    # 2026 fields with no v5 place, dropped: iv, ec (undocumented), calculation_mode (modeCalcul "MESURE"),
    # business_quantity (grandeurMetier "CONS"), physical_quantity (grandeurPhysique "PA" -> measurement_kind "power")
    assert {"iv", "ec", "calculation_mode", "business_quantity", "physical_quantity"} <= set(m26[0])


def test_enedis_2026_daily_to_v5() -> None:
    m26 = records("enedis_2026_mesure_consommation_quotidienne.json", M26_DAILY)
    out, _ = run(M26_DAILY, V5_DAILY, m26)
    # points {v "33495", d "2026-09-29"}, {v "38022", d "2026-09-30"}; etapeMetier BRUT; grandeurPhysique EA -> energy.
    # Dropped: typeValeur "GLOBALE", modeCalcul "DIFF.INDEX", grandeurMetier "CONS"; no `aggregate` ("sum" in v5).
    base = {"usage_point_id": "99999999999991", "unit": "Wh", "measuring_period": "P1D", "quality": "BRUT", "measurement_kind": "energy"}
    assert out == [{**base, "date": "2026-09-29", "value": "33495"}, {**base, "date": "2026-09-30", "value": "38022"}]


def test_enedis_2026_offset_dates_become_paris_wall_time() -> None:
    m26 = records("enedis_2026_mesure_courbe_de_charge_consommation.json", M26_CURVE)[:1]
    # the same instant spelled with its offset (CEST, +02:00) and in UTC
    for spelling in ("2026-09-29T00:30:00+02:00", "2026-09-28T22:30:00Z"):
        out = convert(M26_CURVE, V5_CURVE, [{**m26[0], "date": spelling}])
        assert out[0]["date"] == "2026-09-29 00:30:00"


# --------------------------------------------------------------------------- GRDF -> Ecolyo


def test_grdf_informative_to_ecolyo_gas_day() -> None:
    recs = records("grdf_adict_v2_donnees_consos_informatives.ndjson", "grdf.adict.v2.informative_consumption")
    out, notes = run("grdf.adict.v2.informative_consumption", ecolyo.GRDF_DAY_ID, recs)
    # energie 8 kWh for journee_gaziere 2021-08-16 (2021-08-16T06:00+02:00 .. 2021-08-17T06:00+02:00)
    assert out == [{"load": 8, "minute": 0, "hour": 0, "day": 16, "month": 8, "year": 2021}] and notes == []


def test_grdf_published_multi_day_total_is_refused_not_spread() -> None:
    recs = records("grdf_adict_v2_donnees_consos_publiees.ndjson", "grdf.adict.v2.published_consumption")
    # 2032 kWh from 2021-01-01T06:00+01:00 to 2021-01-23T06:00+01:00 = 22 gas days: no daily split without guessing
    with pytest.raises(ConversionError, match="22-day total"):
        convert("grdf.adict.v2.published_consumption", ecolyo.GRDF_DAY_ID, recs)
    # a published record of exactly one gas day converts (same record, end moved to the next 06:00)
    one = copy.deepcopy(recs[0])
    one["consommation"]["date_fin_consommation"] = "2021-01-02T06:00:00+01:00"
    one["consommation"]["energie"] = 95
    assert convert("grdf.adict.v2.published_consumption", ecolyo.GRDF_DAY_ID, [one]) == [
        {"load": 95, "minute": 0, "hour": 0, "day": 1, "month": 1, "year": 2021}]


def test_grdf_null_energy_is_missing_not_zero() -> None:
    recs = copy.deepcopy(records("grdf_adict_v2_donnees_consos_informatives.ndjson", "grdf.adict.v2.informative_consumption"))
    recs[0]["consommation"]["energie"] = None
    s = CONVERTERS[("grdf.adict.v2.informative_consumption", ecolyo.GRDF_DAY_ID)].stream()
    assert list(s.feed(recs)) + list(s.finish()) == []
    assert [n["code"] for n in s.notes] == ["no_value"]


# --------------------------------------------------------------------------- Green Button -> metering.interval_reading


def test_green_button_uom_and_multiplier_applied() -> None:
    el, _ = run(ESPI, METERING, records("greenbutton_espi_sample_Electric.xml", ESPI))
    # uom 72 = Wh, multiplier 0: "4702205" × 10^0 = 4702205 Wh; start 1333252800 s = 2012-04-01T04:00:00Z; 2592000 s = 30 days
    assert el[0] == {"value": 4702205, "unit": "Wh", "quantity": "energy", "start": "2012-04-01T04:00:00Z", "duration": 2592000,
                     "series": "RetailCustomer/9b6c7063/UsagePoint/01/MeterReading/01", "flow_direction": "1"}
    # "1262848" Wh from 1335844800 = 2012-05-01T04:00:00Z for 950400 s (11 days)
    assert (el[1]["value"], el[1]["start"], el[1]["duration"]) == (1262848, "2012-05-01T04:00:00Z", 950400)
    gas, _ = run(ESPI, METERING, records("greenbutton_espi_sample_Gas.xml", ESPI))
    assert len(gas) == 13
    # uom 169 = therm, multiplier -3: "72609" × 10^-3 = 72.609 therm (exact: repr '72.609')
    assert (gas[0]["value"], gas[0]["unit"], gas[0]["quantity"], gas[0]["start"]) == (72.609, "therm", "energy", "2011-04-01T04:00:00Z")
    # last: "49402" × 10^-3 = 49.402 therm
    assert gas[-1]["value"] == 49.402
    water, _ = run(ESPI, METERING, records("greenbutton_espi_sample_Water.xml", ESPI))
    # uom 128 = US gallon, multiplier 3: "27291" × 10^3 = 27291000 gal; "2575" × 10^3 = 2575000 gal (as the sample says)
    assert [(w["value"], w["unit"], w["quantity"]) for w in water] == [(27291000, "US_gal", "volume"), (2575000, "US_gal", "volume")]


def test_green_button_unknown_uom_refused() -> None:
    rec = records("greenbutton_espi_sample_Electric.xml", ESPI)[0]
    assert "38" not in ESPI_UOM  # W (a power) is not a quantity over the interval
    for uom in ("38", "999"):
        with pytest.raises(ConversionError, match="refused, not guessed"):
            convert(ESPI, METERING, [{**rec, "uom": uom}])
    with pytest.raises(ConversionError, match="accumulationBehaviour"):
        convert(ESPI, METERING, [{**rec, "accumulationBehaviour": "1"}])


# --------------------------------------------------------------------------- water -> Ecolyo


def test_eau_du_grand_lyon_csv_missing_day_stays_missing() -> None:
    out, notes = run(WATER, ecolyo.EGL_DAY_ID, records("eaudugrandlyon_agence_daily_litres_export_nextdom.csv", WATER))
    # 31/03/2018;707 -> 707 L; 03/04/2018 is absent from the file: no document for it (not a 0 L document)
    assert out[0] == {"load": 707, "minute": 0, "hour": 0, "day": 31, "month": 3, "year": 2018}
    assert [(d["month"], d["day"]) for d in out] == [(3, 31), (4, 1), (4, 2), (4, 4), (4, 5), (4, 6)]
    assert [d["load"] for d in out if d["month"] == 4][:2] == [528, 337] and notes == []


def test_veolia_meter_change_kept_as_served() -> None:
    out, notes = run(WATER, ecolyo.EGL_DAY_ID, records("veolia_sudest_daily_litres_export_meter_change_nextdom.csv", WATER))
    # 20 rows -> 20 documents: 03/03/2018 twice (379 L, then -1754359 L), 04/03 +1754558 L; nothing netted
    assert len(out) == 20
    march3 = [d["load"] for d in out if (d["month"], d["day"]) == (3, 3)]
    assert march3 == [379, -1754359]
    assert [d["load"] for d in out if (d["month"], d["day"]) == (3, 4)] == [1754558]
    assert sorted(n["code"] for n in notes) == ["duplicate_day", "negative_value"]


def test_veolia_api_daily_litres() -> None:
    out, _ = run(WATER, ecolyo.EGL_DAY_ID, records("veolia_eau_api_consommations_journalieres_homeassistant_veolia.json", WATER))
    # litre 100 on 2026-07-01, 110 on 07-03, 120 on 07-08; 07-02 and 07-04..07-07 absent -> no documents
    assert out == [{"load": 100, "minute": 0, "hour": 0, "day": 1, "month": 7, "year": 2026},
                   {"load": 110, "minute": 0, "hour": 0, "day": 3, "month": 7, "year": 2026},
                   {"load": 120, "minute": 0, "hour": 0, "day": 8, "month": 7, "year": 2026}]


def test_marseille_provisional_day_not_emitted() -> None:
    out, notes = run(WATER, ecolyo.EGL_DAY_ID, records("eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json", WATER))
    # 637.0 L on 19/09/2026, 470.0 L on 20/09; 21/09 is TypeAgregat "T" (0.0, not measured): no document, noted
    assert out == [{"load": 637, "minute": 0, "hour": 0, "day": 19, "month": 9, "year": 2026},
                   {"load": 470, "minute": 0, "hour": 0, "day": 20, "month": 9, "year": 2026}]
    assert [n["code"] for n in notes] == ["provisional_day"]


# --------------------------------------------------------------------------- registry


def test_registry_and_find() -> None:
    assert len(CONVERTERS) == 10
    for (source, target), c in CONVERTERS.items():
        assert (c.source, c.target) == (source, target) and c.version >= 1 and c.description
        assert set(c.as_dict()) == {"source", "target", "version", "description"}
    # the recipient's preference order decides; a type without a converter is skipped
    c = find(M26_CURVE, ["com.example.unknown", V5_CURVE])
    assert c is not None and c.target == V5_CURVE
    assert find(V5_DAILY, [ecolyo.ENEDIS_MONTH_ID, ecolyo.ENEDIS_DAY_ID]).target == ecolyo.ENEDIS_MONTH_ID  # type: ignore[union-attr]
    assert find(V5_DAILY, ["com.example.unknown"]) is None
    with pytest.raises(KeyError):
        convert(V5_DAILY, "com.example.unknown", [])


def test_target_types_are_documented_like_the_catalogue_types() -> None:
    from jsonschema import Draft202012Validator

    for dataset_id, t in dataset_types().items():
        assert t.version == 1
        assert t.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(t.schema)
        for section in ("Units:", "Time:", "Quirks"):
            assert section in t.description, f"{dataset_id}: description lacks {section}"
