"""Enedis 2026 "mesures" format (``consommation_quotidienne``, ``courbe_de_charge_consommation``).

Source format (Enedis "Mesures" API of 2026, French field names; see SOURCES.md)::

    {"idPrm": str, "etapeMetier": "BRUT", "periode": {"dateDebut", "dateFin"},
     "typeValeur": "GLOBALE"?, "modeCalcul": "DIFF.INDEX"|"MESURE", "pas": "P1D"?,
     "grandeur": [{"grandeurMetier": "CONS", "grandeurPhysique": "EA"|"PA", "unite": "Wh"|"W",
                   "points": [{"v": "<integer string>", "d": str, "p": "PT30M"?, "n": "B"?,
                               "iv": str?, "ec": str?}], "calendrier": []}],
     "contexte": []}

One record per ``points`` item. Record fields (value ← source field, values unchanged):
``usage_point_id`` ← idPrm, ``date`` ← d, ``value`` ← v (string), ``unit`` ← unite,
``quality`` ← etapeMetier, ``calculation_mode`` ← modeCalcul, ``value_type`` ← typeValeur,
``business_quantity`` ← grandeurMetier, ``physical_quantity`` ← grandeurPhysique,
``measuring_period`` ← pas (daily), ``interval_length`` ← p, ``measure_type`` ← n (load curve),
``iv`` and ``ec`` (kept under their source names: SOURCES.md does not document them).

The names follow the Enedis v5 records where the concept is the same, so both can be read
alike; the ids differ because the source formats differ.

Quirks and decisions:
- a day/interval absent from ``points`` stays absent (``quirks()`` reports ``missing_day`` for
  the daily series); it is never filled with a zero;
- ``d`` may be a local date-time (``YYYY-MM-DD HH:MM:SS``, French local time, no offset) or carry an
  offset (``...T01:00:00+02:00``, absolute): both spellings are accepted and kept;
- a document holding a production series (``grandeurMetier`` other than ``CONS``) is refused
  (not read as consumption): the parser returns ``None``, so ``parse_file`` raises ``UnknownFormat``;
- ``periode.dateFin`` is exclusive (the daily sample covers 2026-09-29 and 2026-09-30).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _util as u

DAILY_ID = "enedis.mesures2026.daily_consumption"
LOAD_CURVE_ID = "enedis.mesures2026.consumption_load_curve"

_DATE_DAY = {"anyOf": [
    {"type": "string", "pattern": f"^{u.ISO_DATE}$", "format": "date"},
    {"type": "string", "pattern": f"^{u.ISO_DATE}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}{u.ISO_OFFSET}$"},
]}
_DATE_TIME = {"type": "string", "pattern": f"^{u.ISO_DATE}( [0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}|T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}{u.ISO_OFFSET})$"}

_COMMON = {
    "usage_point_id": {"type": "string", "pattern": "^[0-9]{14}$", "description": "PRM (idPrm)"},
    "value": {"type": "string", "pattern": "^-?[0-9]+$", "maxLength": 20},
    "quality": u.string(32),
    "calculation_mode": u.string(32),
    "value_type": u.string(32),
    "business_quantity": {"const": "CONS"},
    "physical_quantity": u.string(16),
}

_TIME = ("Time: `date` is the point's `d`, kept as served. Without an offset it is French local time; with an "
         "offset (`+02:00`) it is absolute. ")
_QUIRKS = ("Quirks: a missing day/interval is kept missing, never a zero (accepted; `quirks()` flags `missing_day` on "
           "daily series, and `invalid_date`/`duplicate_date`/`negative_value`). A document with a production "
           "(non-CONS) series is refused (UnknownFormat). `iv`/`ec` are carried under their source names because "
           "their meaning is not documented.")

DAILY_CONSUMPTION: dict[str, Any] = {
    "id": DAILY_ID,
    "version": 1,
    "title": "Enedis daily electricity consumption (2026 'mesures' format)",
    "description": "One record per `grandeur[].points[]` item of a `consommation_quotidienne` document. "
    "Units: `value` is active energy (grandeurPhysique EA) consumed over the day, in Wh, as an integer string "
    "(`unit` 'Wh'); `measuring_period` 'P1D'. "
    + _TIME + "A daily `date` names the local calendar day; `periode.dateFin` is exclusive. "
    "Fields: usage_point_id←idPrm, date←d, value←v, unit←unite, measuring_period←pas, quality←etapeMetier, "
    "calculation_mode←modeCalcul, value_type←typeValeur, business_quantity←grandeurMetier, "
    "physical_quantity←grandeurPhysique. " + _QUIRKS,
    "units": {"value": "Wh"},
    "schema": u.record_schema(
        {**_COMMON, "date": _DATE_DAY, "unit": {"const": "Wh"}, "measuring_period": {"const": "P1D"}},
        ["usage_point_id", "date", "value", "unit", "measuring_period", "business_quantity"],
    ),
}

LOAD_CURVE: dict[str, Any] = {
    "id": LOAD_CURVE_ID,
    "version": 1,
    "title": "Enedis electricity load curve (2026 'mesures' format)",
    "description": "One record per `grandeur[].points[]` item of a `courbe_de_charge_consommation` document. "
    "Units: `value` is the average active power (grandeurPhysique PA) in W over the interval, as an integer "
    "string (`unit` 'W'). "
    + _TIME + "The interval of length `interval_length` (ISO 8601 duration, PT30M) ENDS at `date` "
    "(e.g. '2026-09-29 00:30:00' covers 00:00-00:30). "
    "Fields: usage_point_id←idPrm, date←d, value←v, unit←unite, interval_length←p, measure_type←n, iv, ec, "
    "quality←etapeMetier, calculation_mode←modeCalcul, business_quantity←grandeurMetier, "
    "physical_quantity←grandeurPhysique. " + _QUIRKS,
    "units": {"value": "W"},
    "schema": u.record_schema(
        {**_COMMON, "date": _DATE_TIME, "unit": {"const": "W"},
         "interval_length": {"type": "string", "pattern": "^PT[0-9]+M$"},
         "measure_type": u.string(8), "iv": u.string(8), "ec": u.string(8)},
        ["usage_point_id", "date", "value", "unit", "interval_length", "business_quantity"],
    ),
}

_HEADER_FIELDS = (("quality", "etapeMetier"), ("calculation_mode", "modeCalcul"), ("value_type", "typeValeur"))
_POINT_FIELDS = (("interval_length", "p"), ("measure_type", "n"), ("iv", "iv"), ("ec", "ec"))


def parse(doc: Any, path: Path) -> Any:
    """Records of an Enedis 2026 mesures document, or ``None`` if ``doc`` is not one (or is not consumption)."""
    from .registry import ParsedFile

    if not isinstance(doc, dict) or "idPrm" not in doc or not isinstance(doc.get("grandeur"), list):
        return None
    grandeurs = doc["grandeur"]
    if not grandeurs or any(not isinstance(g, dict) or g.get("grandeurMetier") != "CONS" for g in grandeurs):
        return None
    units = {g.get("unite") for g in grandeurs}
    if units == {"Wh"}:
        dataset_id = DAILY_ID
    elif units == {"W"}:
        dataset_id = LOAD_CURVE_ID
    else:
        return None
    records: list[dict[str, Any]] = []
    for g in grandeurs:
        for pt in g.get("points") or []:
            rec: dict[str, Any] = {"usage_point_id": doc["idPrm"], "date": pt.get("d"), "value": pt.get("v"), "unit": g["unite"]}
            if dataset_id == DAILY_ID:
                rec["measuring_period"] = doc.get("pas")
            for out_key, src_key in _POINT_FIELDS:
                if src_key in pt:
                    rec[out_key] = pt[src_key]
            for out_key, src_key in _HEADER_FIELDS:
                if src_key in doc:
                    rec[out_key] = doc[src_key]
            rec["business_quantity"] = g.get("grandeurMetier")
            if "grandeurPhysique" in g:
                rec["physical_quantity"] = g["grandeurPhysique"]
            records.append(rec)
    return ParsedFile(dataset_id=dataset_id, subject_key=str(doc["idPrm"]), records=records)


def _daily(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return u.daily_series(records, lambda r: r.get("date"), lambda r: r.get("value"), "date", "value")


def _load_curve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return u.invalid_dates(records, ["date"])


QUIRK_CHECKS = {DAILY_ID: _daily, LOAD_CURVE_ID: _load_curve}
