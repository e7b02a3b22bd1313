"""Water consumption: daily litres (three holder formats), Veolia monthly m3, Veolia direct-debit schedule.

``water.daily_litres`` reads, without changing any value:

1. the Veolia-run customer portals' CSV export (Eau du Grand Lyon agence, Veolia Sud-Est)::

       date;consommation(litre)
       31/03/2018;707

   ``;`` separator, ``DD/MM/YYYY`` dates, integer litres. CSV is text: the cells are kept as
   strings (``"707"``, ``"-1754359"``). Blank lines are ignored; a row without exactly two cells
   is refused (``UnknownFormat``);
2. the eau.veolia.fr API ``/consommations/{id}/journalieres``: ``[{date_releve, consommation{litre,
   m3}, index{m3}, fiabilite_index}]`` (JSON numbers kept as numbers);
3. the Société des Eaux de Marseille "SOMEI" mobile API ``getSyntheseConsoUnite``:
   ``{"Code": 100, "Result": {"SyntheseConso": {"Releves": [{DateReleve "DD/MM/YYYY",
   TypeAgregat "R"|"T", ValeurIndex (litres, string or null), Consommation (litres)}]}}}``.
   Another ``Code`` (an error answer) is refused.

Record fields: ``date`` (as spelled by the source), ``date_format`` (``"DD/MM/YYYY"`` or
``"YYYY-MM-DD"``, so that the spelling can be read without guessing), ``litres``, ``source``, and
per source ``m3``/``index_m3``/``index_reliability`` (Veolia API) or ``index_litres``/
``aggregate_type`` (Marseille).

Quirks and decisions (``quirks()`` codes in brackets):

- a missing day (Grand Lyon: 03/04/2018; Veolia API: 07-02 and 07-04..07-07) is kept missing,
  never a zero [``missing_day``, flagged on the record after the gap];
- a meter change (Sud-Est: 03/03/2018 twice, the second with −1754359 L, then +1754558 L on
  04/03) is kept as served: [``duplicate_date``], [``negative_value``] and the next day's
  [``compensating_jump``] are flagged, nothing is altered or netted;
- Marseille ``TypeAgregat`` ``"T"`` (day in progress: ``ValeurIndex`` null, ``Consommation``
  0.0) is accepted and flagged [``provisional_day``]: its 0.0 is not a measured zero;
- a date that does not exist is kept and flagged [``invalid_date``].

``water.monthly_m3`` reads the Veolia API ``/consommations/{id}/mensuelles`` answer and
``water.payment_schedule`` its ``/facturation/mensualisation/plan`` answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _util as u

DAILY_ID = "water.daily_litres"
MONTHLY_ID = "water.monthly_m3"
SCHEDULE_ID = "water.payment_schedule"

CSV_HEADER = "date;consommation(litre)"
SOURCE_CSV = "veolia.portal_csv"
SOURCE_VEOLIA_API = "veolia.api.journalieres"
SOURCE_MARSEILLE = "eauxdemarseille.somei"

_DMY = {"type": "string", "pattern": "^[0-9]{2}/[0-9]{2}/[0-9]{4}$"}
_YMD = {"type": "string", "pattern": f"^{u.ISO_DATE}$", "format": "date"}
_LITRES = {"anyOf": [{"type": "string", "pattern": "^-?[0-9]+$", "maxLength": 20}, {"type": "number"}]}

DAILY_LITRES: dict[str, Any] = {
    "id": DAILY_ID,
    "version": 1,
    "title": "Daily water consumption in litres",
    "description": "One record per day as served by the water holder: the Veolia portals' CSV export (Eau du Grand "
    "Lyon agence, Veolia Sud-Est; source 'veolia.portal_csv'), the eau.veolia.fr API daily readings "
    "('veolia.api.journalieres') or the Eaux de Marseille SOMEI API ('eauxdemarseille.somei'). "
    "Units: `litres` is the volume consumed over the day in litres (L), a string when the source is CSV text "
    "('707'), a JSON number otherwise; `m3` (Veolia API) is the same volume in m3; `index_m3` (Veolia API) is the "
    "cumulative meter index in m3; `index_litres` (Marseille, string or null) is the cumulative index in litres. "
    "Time: `date` is the local (French) calendar day, spelled as the source spells it; `date_format` says which "
    "spelling ('DD/MM/YYYY' or 'YYYY-MM-DD'). "
    "Quirks: a missing day is kept missing, never a zero (accepted, flagged `missing_day`); a meter change with a "
    "negative day and a duplicated date is kept as served (accepted, flagged `negative_value`, `duplicate_date`, "
    "`compensating_jump` for the next day's jump); Marseille TypeAgregat 'T' (day in progress, index null, "
    "consumption 0.0 that is not a measured zero) is accepted and flagged `provisional_day`; a non-existent date is "
    "kept and flagged `invalid_date`; a malformed CSV row or a Marseille error answer (Code ≠ 100) is refused "
    "(UnknownFormat).",
    "units": {"litres": "L", "m3": "m3", "index_m3": "m3", "index_litres": "L"},
    "schema": u.record_schema(
        {
            "date": {"anyOf": [_DMY, _YMD]},
            "date_format": {"enum": ["DD/MM/YYYY", "YYYY-MM-DD"]},
            "litres": _LITRES,
            "source": {"enum": [SOURCE_CSV, SOURCE_VEOLIA_API, SOURCE_MARSEILLE]},
            "m3": {"type": "number"},
            "index_m3": u.nullable({"type": "number"}),
            "index_reliability": u.nullable(u.string(32)),
            "index_litres": u.nullable({"anyOf": [{"type": "string", "pattern": "^[0-9]+$", "maxLength": 20}, {"type": "number"}]}),
            "aggregate_type": u.string(4),
        },
        ["date", "date_format", "litres", "source"],
        allOf=[
            {"if": {"properties": {"date_format": {"const": "DD/MM/YYYY"}}}, "then": {"properties": {"date": _DMY}}},
            {"if": {"properties": {"date_format": {"const": "YYYY-MM-DD"}}}, "then": {"properties": {"date": _YMD}}},
            {"if": {"properties": {"source": {"const": SOURCE_MARSEILLE}}}, "then": {"required": ["aggregate_type"]}},
        ],
    ),
}

MONTHLY_M3: dict[str, Any] = {
    "id": MONTHLY_ID,
    "version": 1,
    "title": "Monthly water consumption in m3 (Veolia API)",
    "description": "One record per item of the eau.veolia.fr `/consommations/{id}/mensuelles` answer: year←annee, "
    "month←mois, m3←consommation.m3, reliability←fiabilite_conso (values unchanged). Units: `m3` is the volume "
    "consumed over the month in cubic metres. Time: `year`/`month` name a local calendar month (month 1-12). "
    "Quirks: months need not be contiguous (the sample holds 2025-07, 2026-06, 2026-07: the same month a year "
    "earlier is served for comparison); an absent month is kept absent, never a zero (accepted). `quirks()` flags "
    "`duplicate_month`.",
    "units": {"m3": "m3"},
    "schema": u.record_schema(
        {"year": {"type": "integer", "minimum": 1900, "maximum": 2999},
         "month": {"type": "integer", "minimum": 1, "maximum": 12},
         "m3": {"type": "number"}, "reliability": u.nullable(u.string(32))},
        ["year", "month", "m3"],
    ),
}

PAYMENT_SCHEDULE: dict[str, Any] = {
    "id": SCHEDULE_ID,
    "version": 1,
    "title": "Water bill direct-debit schedule (Veolia API)",
    "description": "One record per `prelevements_echeancier` item of the eau.veolia.fr "
    "`/facturation/mensualisation/plan` answer: date, amount←montant, status←etat_prelevement (DONE = debited, "
    "WAITING = scheduled), values unchanged. Units: `amount` in EUR (incl. tax). Time: `date` is the local "
    "calendar day of the debit (YYYY-MM-DD). Quirks: none seen; `quirks()` flags `invalid_date`.",
    "units": {"amount": "EUR"},
    "schema": u.record_schema(
        {"date": _YMD, "amount": {"type": "number"}, "status": u.string(32)},
        ["date", "amount", "status"],
    ),
}


def _csv(text: str, path: Path) -> list[dict[str, Any]] | None:
    from .registry import UnknownFormat

    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != CSV_HEADER:
        return None
    records = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.rstrip("\r").split(";")
        if len(cells) != 2:
            raise UnknownFormat(f"{path.name}: line {n} has {len(cells)} cells, expected 2")
        records.append({"date": cells[0], "date_format": "DD/MM/YYYY", "litres": cells[1], "source": SOURCE_CSV})
    return records


def _is_veolia_daily(doc: Any) -> bool:
    return isinstance(doc, list) and bool(doc) and all(
        isinstance(x, dict) and "date_releve" in x and isinstance(x.get("consommation"), dict) for x in doc)


def _is_veolia_monthly(doc: Any) -> bool:
    return isinstance(doc, list) and bool(doc) and all(
        isinstance(x, dict) and "annee" in x and "mois" in x and isinstance(x.get("consommation"), dict) for x in doc)


def parse(doc: Any, path: Path) -> Any:
    """Records of a water holder file (daily, monthly or schedule), or ``None`` if ``doc`` is not one."""
    from .registry import ParsedFile, UnknownFormat

    if isinstance(doc, str):
        records = _csv(doc, path)
        return None if records is None else ParsedFile(dataset_id=DAILY_ID, subject_key="", records=records)
    if _is_veolia_daily(doc):
        records = []
        for x in doc:
            rec: dict[str, Any] = {"date": x.get("date_releve"), "date_format": "YYYY-MM-DD",
                                   "litres": x["consommation"].get("litre"), "source": SOURCE_VEOLIA_API}
            if "m3" in x["consommation"]:
                rec["m3"] = x["consommation"]["m3"]
            if isinstance(x.get("index"), dict) and "m3" in x["index"]:
                rec["index_m3"] = x["index"]["m3"]
            if "fiabilite_index" in x:
                rec["index_reliability"] = x["fiabilite_index"]
            records.append(rec)
        return ParsedFile(dataset_id=DAILY_ID, subject_key="", records=records)
    if isinstance(doc, dict) and "Code" in doc and "Result" in doc:
        releves = u.get_path(doc, "Result.SyntheseConso.Releves")
        if not isinstance(releves, list):
            return None
        if doc["Code"] != 100:
            raise UnknownFormat(f"{path.name}: Eaux de Marseille error answer (Code {doc['Code']!r})")
        records = [{"date": x.get("DateReleve"), "date_format": "DD/MM/YYYY", "litres": x.get("Consommation"),
                    "source": SOURCE_MARSEILLE, "index_litres": x.get("ValeurIndex"), "aggregate_type": x.get("TypeAgregat")}
                   for x in releves]
        return ParsedFile(dataset_id=DAILY_ID, subject_key="", records=records)
    if _is_veolia_monthly(doc):
        records = []
        for x in doc:
            rec = {"year": x.get("annee"), "month": x.get("mois"), "m3": x["consommation"].get("m3")}
            if "fiabilite_conso" in x:
                rec["reliability"] = x["fiabilite_conso"]
            records.append(rec)
        return ParsedFile(dataset_id=MONTHLY_ID, subject_key="", records=records)
    if isinstance(doc, dict) and set(doc) == {"prelevements_echeancier"} and isinstance(doc["prelevements_echeancier"], list):
        records = [{"date": x.get("date"), "amount": x.get("montant"), "status": x.get("etat_prelevement")}
                   for x in doc["prelevements_echeancier"]]
        return ParsedFile(dataset_id=SCHEDULE_ID, subject_key="", records=records)
    return None


def _daily(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = u.daily_series(records, lambda r: r.get("date"), lambda r: r.get("litres"), "date", "litres")
    for i, r in enumerate(records):
        if r.get("source") == SOURCE_MARSEILLE and r.get("aggregate_type") == "T":
            out.append(u.quirk(i, "provisional_day", "aggregate_type", "T",
                               f"day in progress (index {r.get('index_litres')!r}); litres {r.get('litres')!r} is not a measured value"))
    return out


def _monthly(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], {}
    for i, r in enumerate(records):
        key = (r.get("year"), r.get("month"))
        if key in seen:
            out.append(u.quirk(i, "duplicate_month", "month", r.get("month"), f"month {key} already at position {seen[key]}; both kept",
                               related=[seen[key]]))
        seen.setdefault(key, i)
    return out


QUIRK_CHECKS = {DAILY_ID: _daily, MONTHLY_ID: _monthly, SCHEDULE_ID: lambda records: u.invalid_dates(records, ["date"])}
