"""Every real-format file of /work/shared/fixtures/real against the catalogue.

For each file: the parser and dataset type it must give, the record count (worked out by hand
from the file), a few values read by hand (first/last record), schema validity of every record,
and the exact quirks ``quirks()`` must flag.

Validation uses jsonschema's Draft 2020-12 validator WITH its FormatChecker for every type. This
never wrongly rejects an accepted quirk record because the schemas put ``format`` only on dates
that are valid in every real record (``format: date``); the Orange timestamps, which include the
non-existent ``2016-09-31``, are checked for shape only (pattern) and their calendar validity is
flagged by ``quirks()`` (``invalid_date``). The files are read in place, never copied.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from shared.catalogue import DATASET_TYPES, UnknownFormat, get_dataset_type, parse_file, quirks, validator
from shared.catalogue import bills, enedis_mesures2026, enedis_v5_customers, greenbutton_espi, grdf_adict_v2, maif, orange_mesinfos, water
from shared.catalogue.maif import iban_problem

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "real"

# file -> (dataset id, record count, subject key)
EXPECTED: dict[str, tuple[str, int, str]] = {
    "enedis_v5_daily_consumption_myelectricaldatapy.json": ("enedis.v5.daily_consumption", 365, "01234567890"),
    "enedis_v5_consumption_load_curve_myelectricaldatapy.json": ("enedis.v5.consumption_load_curve", 144, "01234567890"),
    "enedis_v5_consumption_load_curve_myelectricaldata.json": ("enedis.v5.consumption_load_curve", 96, "99999999999991"),
    "enedis_v5_customers_contracts_myelectricaldatapy.json": ("enedis.v5.customer_contract", 1, "01234567890"),
    "enedis_v5_customers_addresses_myelectricaldatapy.json": ("enedis.v5.customer_address", 1, "01234567890"),
    "enedis_2026_mesure_consommation_quotidienne.json": ("enedis.mesures2026.daily_consumption", 2, "99999999999991"),
    "enedis_2026_mesure_courbe_de_charge_consommation.json": ("enedis.mesures2026.consumption_load_curve", 96, "99999999999991"),
    "grdf_adict_v2_donnees_consos_publiees.ndjson": ("grdf.adict.v2.published_consumption", 1, "23000000000000"),
    "grdf_adict_v2_donnees_consos_informatives.ndjson": ("grdf.adict.v2.informative_consumption", 1, "23000000000000"),
    "greenbutton_espi_sample_Electric.xml": ("greenbutton.espi.interval_reading", 2, "RetailCustomer/9b6c7063/UsagePoint/01"),
    "greenbutton_espi_sample_Gas.xml": ("greenbutton.espi.interval_reading", 13, "RetailCustomer/9b6c7063/UsagePoint/02"),
    "greenbutton_espi_sample_Water.xml": ("greenbutton.espi.interval_reading", 2, "RetailCustomer/9b6c7063/UsagePoint/01"),
    "eaudugrandlyon_agence_daily_litres_export_nextdom.csv": ("water.daily_litres", 6, ""),
    "veolia_sudest_daily_litres_export_meter_change_nextdom.csv": ("water.daily_litres", 20, ""),
    "veolia_eau_api_consommations_journalieres_homeassistant_veolia.json": ("water.daily_litres", 3, ""),
    "eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json": ("water.daily_litres", 3, ""),
    "veolia_eau_api_consommations_mensuelles_homeassistant_veolia.json": ("water.monthly_m3", 3, ""),
    "veolia_eau_api_facturation_mensualisation_plan_homeassistant_veolia.json": ("water.payment_schedule", 2, ""),
    "orange_mesinfos_fr.orange.geopoint_synthetic.json": ("orange.geopoint", 825, "33612345678"),
    "orange_mesinfos_fr.orange.phonecommunicationlog_synthetic.json": ("orange.phone_communication_log", 8, "33612345678"),
    "orange_mesinfos_fr.orange.videostream_vod_synthetic.json": ("orange.videostream", 30, "423456789"),
    "maif_mesinfos_fr.maif.maifuser.contrat_synthetic_redacted.json": ("maif.contract", 2, "1234567"),
    "maif_mesinfos_fr.maif.maifuser.home_synthetic_redacted.json": ("maif.home", 1, "1234567"),
    "maif_mesinfos_fr.maif.maifuser.foyer_synthetic_redacted.json": ("maif.foyer", 1, "1-A3ZICCA"),
    "maif_mesinfos_fr.maif.maifuser.societaire_synthetic_redacted.json": ("maif.societaire", 1, "1234567N"),
    "maif_mesinfos_fr.maif.maifuser.paymentterms_synthetic.json": ("maif.payment_terms", 1, "1234567"),
    "maif_mesinfos_fr.maif.maifuser.sinistre_habitation_synthetic_redacted.json": ("maif.claim", 1, "1234567N"),
    "maif_mesinfos_fr.maif.maifuser.sinistre_vehicule_synthetic.json": ("maif.claim", 1, "1234567N"),
    "maif_epa_io.cozy.identities_readme_example.json": ("maif.identity", 1, "1355575P"),
    "mesinfos_bills_phone_sfr_synthetic.json": ("cozy.bills", 8, ""),
    "cozy_banks_demo_ach.json": ("cozy.bills", 28, ""),
}

# Pure reference/documentation files: not holder data exports, so no dataset type reads them.
SKIPPED: dict[str, str] = {
    "SOURCES.md": "provenance notes of the fixtures, not data",
    "mesinfos_wikiapi_items_data_dictionary_redacted.json": "JSON-LD data dictionary of the MesInfos pilot (field "
    "descriptions), reference documentation, not a person's data",
    "ecolyo_com.grandlyon.enedis.day_doc_example.json": "a single documented example of the Ecolyo doctype taken from "
    "its technical documentation, not an export of a holder",
}

# file -> exact (position, code) list that quirks() must report
_COZY_TEMPLATES = [i for i in range(28) if i not in (15, 16)]  # 15 and 16 have no `invoice`
EXPECTED_QUIRKS: dict[str, list[tuple[int, str]]] = {
    "eaudugrandlyon_agence_daily_litres_export_nextdom.csv": [(3, "missing_day")],
    "veolia_sudest_daily_litres_export_meter_change_nextdom.csv": [(3, "duplicate_date"), (3, "negative_value"), (4, "compensating_jump")],
    "veolia_eau_api_consommations_journalieres_homeassistant_veolia.json": [(1, "missing_day"), (2, "missing_day")],
    "eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json": [(2, "provisional_day")],
    "orange_mesinfos_fr.orange.geopoint_synthetic.json": [(i, "invalid_date") for i in range(799, 825)],
    "maif_mesinfos_fr.maif.maifuser.paymentterms_synthetic.json": [(0, "invalid_iban")],
    "maif_mesinfos_fr.maif.maifuser.sinistre_habitation_synthetic_redacted.json": [(0, "invalid_postcode")],
    "maif_mesinfos_fr.maif.maifuser.home_synthetic_redacted.json": [(0, "control_character")],
    "cozy_banks_demo_ach.json": sorted(
        [(i, "unexpanded_template") for i in _COZY_TEMPLATES]
        + [(i, "incomplete_bill") for i in (17, 18, 19, 20, 21, 24, 25, 26, 27)]
        + [(6, "negative_amount"), (17, "duplicate_id")]
    ),
}

NEW_TYPE_IDS = sorted(set(DATASET_TYPES) - {"enedis.v5.daily_consumption", "enedis.v5.consumption_load_curve"})

_PARSED: dict[str, Any] = {}


def parsed(name: str) -> Any:
    if name not in _PARSED:
        _PARSED[name] = parse_file(REAL / name)
    return _PARSED[name]


def records(name: str) -> list[dict[str, Any]]:
    return parsed(name).records


# -- inventory -------------------------------------------------------------------------------------


def test_every_real_file_is_either_expected_or_explicitly_skipped() -> None:
    on_disk = {p.name for p in REAL.iterdir() if p.is_file()}
    assert on_disk == set(EXPECTED) | set(SKIPPED)
    assert not set(EXPECTED) & set(SKIPPED)


@pytest.mark.parametrize("name", sorted(n for n in SKIPPED if n != "SOURCES.md"))
def test_reference_files_are_not_claimed_by_any_parser(name: str) -> None:
    with pytest.raises(UnknownFormat):
        parse_file(REAL / name)


# -- per file: type, count, schema, quirks ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_file_parses_to_its_type_with_the_source_record_count(name: str) -> None:
    dataset_id, count, subject = EXPECTED[name]
    p = parsed(name)
    assert p.dataset_id == dataset_id
    assert len(p.records) == count
    assert p.subject_key == subject
    get_dataset_type(dataset_id)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_record_validates_against_its_schema_with_format_checker(name: str) -> None:
    p = parsed(name)
    v = validator(p.dataset_id)
    assert v.format_checker is not None
    errors = [(i, e.message) for i, r in enumerate(p.records) for e in v.iter_errors(r)]
    assert errors == []
    plain = Draft202012Validator(get_dataset_type(p.dataset_id).schema)
    assert all(plain.is_valid(r) for r in p.records)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quirks_are_exactly_the_documented_ones(name: str) -> None:
    p = parsed(name)
    before = copy.deepcopy(p.records)
    found = quirks(p.dataset_id, p.records)
    assert [(q["position"], q["code"]) for q in found] == EXPECTED_QUIRKS.get(name, [])
    assert p.records == before  # flagging never alters a record
    for q in found:
        assert set(q) >= {"position", "code", "field", "value", "message"}


# -- schemas and descriptions ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset_id", NEW_TYPE_IDS)
def test_new_types_are_documented_and_have_valid_2020_12_schemas(dataset_id: str) -> None:
    t = get_dataset_type(dataset_id)
    assert t.version == 1
    assert t.schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(t.schema)
    for section in ("Units:", "Time:", "Quirks"):
        assert section in t.description, f"{dataset_id}: description lacks {section}"


def test_modules_document_their_quirks() -> None:
    for module in (enedis_mesures2026, enedis_v5_customers, grdf_adict_v2, greenbutton_espi, water, orange_mesinfos, maif, bills):
        assert module.__doc__ and "uirk" in module.__doc__


def test_enedis_v5_types_are_unchanged() -> None:
    assert get_dataset_type("enedis.v5.daily_consumption").schema["required"] == ["usage_point_id", "date", "value", "unit", "measuring_period"]
    r = records("enedis_v5_daily_consumption_myelectricaldatapy.json")[0]
    assert r == {"usage_point_id": "01234567890", "date": "2022-03-08", "value": "42045", "unit": "Wh",
                 "measuring_period": "P1D", "quality": "BRUT", "measurement_kind": "energy", "aggregate": "sum"}


def test_quirks_rejects_an_unknown_dataset_id() -> None:
    with pytest.raises(KeyError):
        quirks("no.such.type", [])


# -- values checked by hand ------------------------------------------------------------------------


def test_enedis_2026_daily_values() -> None:
    rs = records("enedis_2026_mesure_consommation_quotidienne.json")
    assert rs[0] == {"usage_point_id": "99999999999991", "date": "2026-09-29", "value": "33495", "unit": "Wh",
                     "measuring_period": "P1D", "quality": "BRUT", "calculation_mode": "DIFF.INDEX", "value_type": "GLOBALE",
                     "business_quantity": "CONS", "physical_quantity": "EA"}
    assert (rs[-1]["date"], rs[-1]["value"]) == ("2026-09-30", "38022")


def test_enedis_2026_load_curve_values_and_same_data_as_its_v5_twin() -> None:
    rs = records("enedis_2026_mesure_courbe_de_charge_consommation.json")
    assert (rs[0]["date"], rs[0]["value"], rs[0]["interval_length"], rs[0]["measure_type"], rs[0]["iv"], rs[0]["ec"]) == (
        "2026-09-29 00:30:00", "4078", "PT30M", "B", "0", "0")
    assert (rs[-1]["date"], rs[-1]["value"]) == ("2026-10-01 00:00:00", "3974")
    v5 = records("enedis_v5_consumption_load_curve_myelectricaldata.json")
    assert [(r["date"], r["value"]) for r in rs] == [(r["date"], r["value"]) for r in v5]


def test_enedis_v5_customers_values() -> None:
    c = records("enedis_v5_customers_contracts_myelectricaldatapy.json")[0]
    assert c["customer_id"] == "-1137954749"
    assert c["contracts"]["subscribed_power"] == "9 kVA"
    assert c["contracts"]["last_activation_date"] == "2006-05-24+02:00"
    a = records("enedis_v5_customers_addresses_myelectricaldatapy.json")[0]
    assert a["customer_id"] == "-123456789"
    assert a["usage_point"]["usage_point_addresses"]["postal_code"] == "00666"
    assert a["usage_point"]["usage_point_addresses"]["locality"] is None


def test_grdf_records_are_the_ndjson_lines_unchanged() -> None:
    for name in ("grdf_adict_v2_donnees_consos_publiees.ndjson", "grdf_adict_v2_donnees_consos_informatives.ndjson"):
        lines = [json.loads(line) for line in (REAL / name).read_text("utf-8").splitlines() if line.strip()]
        assert records(name) == lines
    pub = records("grdf_adict_v2_donnees_consos_publiees.ndjson")[0]["consommation"]
    assert (pub["energie"], pub["volume_brut"], pub["volume_converti"], pub["type_conso"]) == (2032, 180, 0, "Publiée")
    inf = records("grdf_adict_v2_donnees_consos_informatives.ndjson")[0]["consommation"]
    assert (inf["energie"], inf["volume_brut"], inf["journee_gaziere"], inf["date_debut_consommation"]) == (
        8, 1, "2021-08-16", "2021-08-16T06:00:00+02:00")


@pytest.mark.parametrize(("name", "kind", "uom", "mult", "first", "last"), [
    ("greenbutton_espi_sample_Electric.xml", "0", "72", "0", ("1333252800", "2592000", "4702205", "37535756"),
     ("1335844800", "950400", "1262848", "15232385")),
    ("greenbutton_espi_sample_Gas.xml", "1", "169", "-3", ("1301630400", "2592000", "72609", "23739318"),
     ("1333252800", "1209600", "49402", "10418799")),
    ("greenbutton_espi_sample_Water.xml", "2", "128", "3", ("1333252800", "2592000", "27291", "37236"),
     ("1335844800", "345600", "2575", "5365")),
])
def test_greenbutton_values_carry_the_reading_type_without_applying_the_multiplier(
        name: str, kind: str, uom: str, mult: str, first: tuple[str, ...], last: tuple[str, ...]) -> None:
    rs = records(name)
    for r in rs:
        assert (r["service_kind"], r["uom"], r["powerOfTenMultiplier"], r["currency"]) == (kind, uom, mult, "840")
        assert (r["tzOffset"], r["dstOffset"]) == ("-18000", "3600")
    assert (rs[0]["start"], rs[0]["duration"], rs[0]["value"], rs[0]["cost"]) == first
    assert (rs[-1]["start"], rs[-1]["duration"], rs[-1]["value"], rs[-1]["cost"]) == last
    assert rs[0]["reading_type_href"].startswith("ReadingType/")


def test_water_daily_values_keep_source_spelling_and_missing_days_stay_missing() -> None:
    gl = records("eaudugrandlyon_agence_daily_litres_export_nextdom.csv")
    assert gl[0] == {"date": "31/03/2018", "date_format": "DD/MM/YYYY", "litres": "707", "source": "veolia.portal_csv"}
    assert (gl[-1]["date"], gl[-1]["litres"]) == ("06/04/2018", "370")
    assert "03/04/2018" not in {r["date"] for r in gl}
    gap = quirks("water.daily_litres", gl)[0]
    assert gap["missing"] == ["2018-04-03"]

    se = records("veolia_sudest_daily_litres_export_meter_change_nextdom.csv")
    assert [(r["date"], r["litres"]) for r in se[2:5]] == [("03/03/2018", "379"), ("03/03/2018", "-1754359"), ("04/03/2018", "1754558")]
    assert (se[-1]["date"], se[-1]["litres"]) == ("19/03/2018", "205")
    dup = quirks("water.daily_litres", se)[0]
    assert dup["related"] == [2]

    va = records("veolia_eau_api_consommations_journalieres_homeassistant_veolia.json")
    assert va[0] == {"date": "2026-07-01", "date_format": "YYYY-MM-DD", "litres": 100, "source": "veolia.api.journalieres",
                     "m3": 0.1, "index_m3": 337.0, "index_reliability": "MESURE"}
    assert (va[-1]["date"], va[-1]["litres"], va[-1]["index_m3"]) == ("2026-07-08", 120, 337.2)
    assert [q["missing"] for q in quirks("water.daily_litres", va)] == [["2026-07-02"], ["2026-07-04", "2026-07-05", "2026-07-06", "2026-07-07"]]

    ma = records("eauxdemarseille_somei_mobile_getSyntheseConsoUnite_daily.json")
    assert (ma[0]["date"], ma[0]["litres"], ma[0]["index_litres"], ma[0]["aggregate_type"]) == ("19/09/2026", 637.0, "246184", "R")
    assert (ma[-1]["date"], ma[-1]["litres"], ma[-1]["index_litres"], ma[-1]["aggregate_type"]) == ("21/09/2026", 0.0, None, "T")


def test_veolia_monthly_and_schedule_values() -> None:
    mo = records("veolia_eau_api_consommations_mensuelles_homeassistant_veolia.json")
    assert mo[0] == {"year": 2025, "month": 7, "m3": 3.0, "reliability": "MESURE"}
    assert (mo[-1]["year"], mo[-1]["month"], mo[-1]["m3"]) == (2026, 7, 3.4)
    sc = records("veolia_eau_api_facturation_mensualisation_plan_homeassistant_veolia.json")
    assert sc == [{"date": "2026-06-15", "amount": 45.0, "status": "DONE"}, {"date": "2026-07-15", "amount": 45.0, "status": "WAITING"}]


def test_orange_records_are_the_cozy_documents_unchanged() -> None:
    for name in ("orange_mesinfos_fr.orange.geopoint_synthetic.json", "orange_mesinfos_fr.orange.phonecommunicationlog_synthetic.json",
                 "orange_mesinfos_fr.orange.videostream_vod_synthetic.json"):
        assert records(name) == json.loads((REAL / name).read_text("utf-8"))
    geo = records("orange_mesinfos_fr.orange.geopoint_synthetic.json")
    assert (geo[0]["timestamp"], geo[0]["latitude"], geo[0]["longitude"], geo[0]["radius"]) == ("2016-09-01T08:00:45.000Z", 48.8661, 2.37083, 339)
    assert (geo[-1]["timestamp"], geo[-1]["radius"]) == ("2016-09-31T21:00:31.000Z", 155)
    log = records("orange_mesinfos_fr.orange.phonecommunicationlog_synthetic.json")
    assert (log[0]["type"], log[0]["length"], log[0]["chipType"]) == ("appel sortant", 59, "s")
    assert (log[1]["type"], log[1]["length"], log[1]["chipType"]) == ("SMS entrant", 1, "M")
    assert "latitude" not in log[-1] and log[-1]["length"] == 6  # voicemail: no position, not 0.0
    vod = records("orange_mesinfos_fr.orange.videostream_vod_synthetic.json")
    assert (vod[0]["content"]["title"], vod[0]["price"], vod[0]["action"]) == ("Money monster - HD", 15.99, "Commande")
    assert (vod[-1]["content"]["title"], vod[-1]["price"]) == ("02. Hypocrite", 0)
    assert (vod[20]["action"], vod[20]["viewingDuration"]) == ("Visualisation", 17100)


def test_geopoint_nonexistent_date_is_accepted_verbatim_and_flagged() -> None:
    geo = records("orange_mesinfos_fr.orange.geopoint_synthetic.json")

    def real_instant(ts: str) -> bool:
        try:
            datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError:
            return False
        return True

    impossible = [i for i, r in enumerate(geo) if not real_instant(r["timestamp"])]
    assert len(impossible) == 26
    assert all(geo[i]["timestamp"].startswith("2016-09-31T") for i in impossible)
    v = validator("orange.geopoint")
    assert all(v.is_valid(geo[i]) for i in impossible)  # accepted by the schema (shape only)...
    flagged = quirks("orange.geopoint", geo)
    assert [q["position"] for q in flagged] == impossible  # ...and flagged by quirks()
    assert all(q["field"] == "timestamp" and q["value"] == geo[q["position"]]["timestamp"] for q in flagged)
    # Why no `format` on that field: a FormatChecker 'date' check rejects the day outright.
    assert not Draft202012Validator({"format": "date"}, format_checker=Draft202012Validator.FORMAT_CHECKER).is_valid("2016-09-31")


def test_maif_values() -> None:
    contracts = records("maif_mesinfos_fr.maif.maifuser.contrat_synthetic_redacted.json")
    assert (contracts[0]["name"], contracts[0]["montantTarifTtc"], contracts[0]["objects"]["lieu"][0]["address"]["postCode"]) == ("NOR", 226.74, "69006")
    assert (contracts[-1]["name"], contracts[-1]["montantTarifTtc"], contracts[-1]["objects"]["vehicule"][0]["immatriculationVehicule"]) == (
        "VAM", 312, "AA-123-XD")
    home = records("maif_mesinfos_fr.maif.maifuser.home_synthetic_redacted.json")[0]
    assert home["patrimoineMobilier"] == "3 501 à 6 800 \x80"  # the mis-decoded '€' (U+0080) is kept verbatim
    foyer = records("maif_mesinfos_fr.maif.maifuser.foyer_synthetic_redacted.json")[0]
    assert (foyer["membres"][0]["name"]["family"], foyer["membres"][0]["birthdate"]) == ("DUPOND", "1972-03-18")
    assert records("maif_mesinfos_fr.maif.maifuser.societaire_synthetic_redacted.json")[0]["familySituation"] == "union libre"
    assert records("maif_mesinfos_fr.maif.maifuser.paymentterms_synthetic.json")[0]["rib"]["iban"] == "FR76300039876087612"
    home_claim = records("maif_mesinfos_fr.maif.maifuser.sinistre_habitation_synthetic_redacted.json")[0]
    assert (home_claim["type"], home_claim["address"]["postCode"], home_claim["timestamp"]) == ("Habitation", "6900", "2015-07-20T19:00")
    car_claim = records("maif_mesinfos_fr.maif.maifuser.sinistre_vehicule_synthetic.json")[0]
    assert (car_claim["type"], car_claim["immatriculationVehicule"], car_claim["driver"]["given"]) == ("Vehicule", "AA-123-XD", "Germaine")
    identity = records("maif_epa_io.cozy.identities_readme_example.json")[0]
    assert identity == json.loads((REAL / "maif_epa_io.cozy.identities_readme_example.json").read_text("utf-8"))
    assert identity["contact"]["maif"]["numeroSocietaire"] == "1355575P"


def test_bills_values() -> None:
    sfr = records("mesinfos_bills_phone_sfr_synthetic.json")
    assert sfr == json.loads((REAL / "mesinfos_bills_phone_sfr_synthetic.json").read_text("utf-8"))
    assert sfr[0] == {"type": "Mobile", "date": "2016-11-07T12:00:00.000Z", "vendor": "Sfr", "amount": 29.99}
    assert (sfr[-1]["vendor"], sfr[-1]["type"], sfr[-1]["amount"]) == ("Uber", "Taxi", 14.2)
    cozy = records("cozy_banks_demo_ach.json")
    assert cozy == json.loads((REAL / "cozy_banks_demo_ach.json").read_text("utf-8"))["io.cozy.bills"]
    assert (cozy[0]["_id"], cozy[0]["vendor"], cozy[0]["amount"]) == ("b0", "harmonie", 7.5)
    assert cozy[-1] == {"_id": "maif_243_57", "invoice": "io.cozy.files:{{reference 'io.cozy.files' 13 '_id' }}",
                        "vendor": "maifecheancier", "demo": True}
    assert cozy[6]["amount"] == -78.35


# -- refusals and synthetic quirks (small files written here, not copies of the fixtures) --------


def _write(tmp_path: Path, name: str, content: str) -> Path:
    p = tmp_path / name
    p.write_text(content, "utf-8")
    return p


def test_csv_row_with_wrong_cell_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormat, match="line 3"):
        parse_file(_write(tmp_path, "x.csv", "date;consommation(litre)\n01/03/2018;275\n02/03/2018;154;9\n"))


def test_marseille_error_answer_is_refused(tmp_path: Path) -> None:
    doc = {"Code": 500, "Result": {"SyntheseConso": {"Releves": []}}}
    with pytest.raises(UnknownFormat, match="Code 500"):
        parse_file(_write(tmp_path, "m.json", json.dumps(doc)))


def test_enedis_2026_production_series_is_refused(tmp_path: Path) -> None:
    doc = {"idPrm": "99999999999991", "grandeur": [{"grandeurMetier": "PROD", "unite": "W", "points": [{"v": "1", "d": "2026-01-01 00:30:00"}]}]}
    with pytest.raises(UnknownFormat):
        parse_file(_write(tmp_path, "p.json", json.dumps(doc)))


def test_enedis_2026_missing_day_is_flagged_not_filled(tmp_path: Path) -> None:
    doc = {"idPrm": "99999999999991", "pas": "P1D", "grandeur": [{"grandeurMetier": "CONS", "unite": "Wh", "points": [
        {"v": "1", "d": "2026-01-01"}, {"v": "2", "d": "2026-01-03"}, {"v": "3", "d": "2026-01-04T00:00:00+01:00"}]}]}
    p = parse_file(_write(tmp_path, "d.json", json.dumps(doc)))
    assert [r["date"] for r in p.records] == ["2026-01-01", "2026-01-03", "2026-01-04T00:00:00+01:00"]
    assert all(validator(p.dataset_id).is_valid(r) for r in p.records)
    assert [(q["position"], q["code"], q.get("missing")) for q in quirks(p.dataset_id, p.records)] == [(1, "missing_day", ["2026-01-02"])]


def test_grdf_multiline_ndjson_and_mixed_kinds(tmp_path: Path) -> None:
    line = (REAL / "grdf_adict_v2_donnees_consos_informatives.ndjson").read_text("utf-8").strip()
    other = json.loads(line)
    other["consommation"]["journee_gaziere"] = "2021-08-18"
    p = parse_file(_write(tmp_path, "two.ndjson", line + "\n\n" + json.dumps(other) + "\n"))
    assert (p.dataset_id, len(p.records)) == ("grdf.adict.v2.informative_consumption", 2)
    assert [(q["position"], q["code"]) for q in quirks(p.dataset_id, p.records)] == [(1, "missing_day")]
    other["consommation"]["type_conso"] = "Publiée"
    with pytest.raises(UnknownFormat):
        parse_file(_write(tmp_path, "mixed.ndjson", line + "\n" + json.dumps(other) + "\n"))


def test_xml_with_doctype_is_refused(tmp_path: Path) -> None:
    xml = ('<?xml version="1.0"?><!DOCTYPE feed [<!ENTITY x "y">]>'
           '<feed xmlns="http://www.w3.org/2005/Atom"><entry><content><UsagePoint xmlns="http://naesb.org/espi"/></content></entry></feed>')
    with pytest.raises(UnknownFormat, match="document type"):
        parse_file(_write(tmp_path, "x.xml", xml))


def test_iban_check() -> None:
    assert iban_problem("FR7630006000011234567890189") is None
    assert iban_problem("FR7630006000011234567890188") == "mod-97 check digits do not match"
    assert "27" in (iban_problem("FR76300039876087612") or "")
