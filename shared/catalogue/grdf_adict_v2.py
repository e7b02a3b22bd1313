"""GRDF ADICT v2 gas consumption: published (``donnees_consos_publiees``) and informative (``donnees_consos_informatives``).

Source format: ``application/x-ndjson``, one JSON object per line::

    {"pce": {"id_pce"}, "periode": {"valeur", "date_debut", "date_fin"},
     "releve_debut": {...index_brut_debut, index_converti_debut...},
     "releve_fin": {...index_brut_fin, index_converti_fin...},
     "consommation": {"date_debut_consommation", "date_fin_consommation", "flag_retour_zero",
                      "volume_brut", "coeff_calcul": {"coeff_pta", "valeur_pcs", "coeff_conversion"},
                      "volume_converti", "energie", "type_qualif_conso", "sens_flux_gaz",
                      "statut_conso", "journee_gaziere", "type_conso"},
     "bordereau_publication"?: {...}, "statut_restitution"}

One record per line: the line's object, unchanged (nulls kept). ``consommation.type_conso``
decides the dataset: ``"Publiée"`` → published, ``"Informative Journalier"`` → informative; a
file mixing both, or a line with another ``type_conso``, is refused (``UnknownFormat``).

``parse_file`` hands a one-line NDJSON file over already decoded (it is valid JSON); a
multi-line file arrives as text and is split on line breaks here (blank lines ignored).

Units and time: ``energie`` kWh, ``volume_brut``/``volume_converti`` m3, ``coeff_conversion``
kWh/m3, ``valeur_index`` m3. The gas day starts at 06:00 local time: timestamps carry their UTC
offset (``2021-01-01T06:00:00+01:00``) and ``journee_gaziere`` names the gas day.

Quirks (accepted, kept verbatim, not recomputed): ``energie`` is not always ``volume_brut`` ×
``coeff_conversion`` (informative sample: 1 m3 × 11.16 but 8 kWh: ``volume_brut`` is a rounded
index difference); ``volume_converti`` is ``0`` in the published sample although energy was
delivered; ``periode`` is the requested window, not the record's coverage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _util as u

PUBLISHED_ID = "grdf.adict.v2.published_consumption"
INFORMATIVE_ID = "grdf.adict.v2.informative_consumption"

_TYPE_CONSO = {"Publiée": PUBLISHED_ID, "Informative Journalier": INFORMATIVE_ID}

_NS = lambda n=128: u.nullable(u.string(n))  # noqa: E731
_NNUM = u.nullable({"type": "number"})
_NBOOL = u.nullable({"type": "boolean"})
_TS = u.nullable({"type": "string", "pattern": f"^{u.ISO_DATE}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}{u.ISO_OFFSET}$"})
_DAY = u.nullable({"type": "string", "pattern": f"^{u.ISO_DATE}$", "format": "date"})
_INDEX = u.obj({"valeur_index": _NNUM, "horodate_Index": _TS}, ["valeur_index", "horodate_Index"])


def _releve(side: str) -> dict[str, Any]:
    return u.obj({
        "date_releve": _TS, "raison_releve": _NS(), "libelle_raison_releve": _NS(), "qualite_releve": _NS(),
        "statut_releve": _NS(), f"index_brut_{side}": _INDEX, f"index_converti_{side}": _INDEX,
    }, ["date_releve", f"index_brut_{side}", f"index_converti_{side}"])


_PROPERTIES = {
    "pce": u.obj({"id_pce": {"type": "string", "pattern": "^[0-9A-Z]{1,20}$"}}, ["id_pce"]),
    "periode": u.obj({"valeur": _NNUM, "date_debut": _DAY, "date_fin": _DAY}, ["date_debut", "date_fin"]),
    "releve_debut": _releve("debut"),
    "releve_fin": _releve("fin"),
    "consommation": u.obj({
        "date_debut_consommation": _TS, "date_fin_consommation": _TS, "flag_retour_zero": _NBOOL,
        "volume_brut": _NNUM,
        "coeff_calcul": u.obj({"coeff_pta": _NNUM, "valeur_pcs": _NNUM, "coeff_conversion": _NNUM}),
        "volume_converti": _NNUM, "energie": _NNUM, "type_qualif_conso": _NS(), "sens_flux_gaz": _NS(),
        "statut_conso": _NS(), "journee_gaziere": _DAY, "type_conso": u.string(64),
    }, ["date_debut_consommation", "date_fin_consommation", "volume_brut", "energie", "type_conso"]),
    "bordereau_publication": u.obj({"date_debut_bordereau": _DAY, "date_fin_bordereau": _DAY, "nb_jour_gazier": _NNUM}),
    "statut_restitution": u.nullable({"type": ["string", "object"]}),
}

_UNITS = {"consommation.energie": "kWh", "consommation.volume_brut": "m3", "consommation.volume_converti": "m3",
          "consommation.coeff_calcul.coeff_conversion": "kWh/m3", "releve_*.index_*.valeur_index": "m3"}
_COMMON_DOC = ("Units: `consommation.energie` kWh, `volume_brut`/`volume_converti` m3, `coeff_conversion` kWh/m3, "
               "index values m3. Time: the gas day starts at 06:00 local time; timestamps carry their UTC offset; "
               "`periode` is the requested window (dates, end exclusive), not the record's coverage. "
               "Quirks (accepted, kept verbatim, never recomputed): energie ≠ volume_brut × coeff_conversion "
               "(volume_brut is a rounded index difference); volume_converti may be 0 or null; nulls are kept. "
               "`quirks()` flags `invalid_date` (and `missing_day`/`duplicate_date` on gas days for the daily type). "
               "A file mixing type_conso values is refused.")

PUBLISHED: dict[str, Any] = {
    "id": PUBLISHED_ID,
    "version": 1,
    "title": "GRDF published gas consumption (ADICT v2)",
    "description": "One record per NDJSON line of `donnees_consos_publiees`, unchanged: the consumption between two "
    "meter readings (`releve_debut`, `releve_fin`; `consommation.type_conso` 'Publiée'), as billed. " + _COMMON_DOC,
    "units": _UNITS,
    "schema": u.record_schema(
        {**_PROPERTIES, "consommation": {**_PROPERTIES["consommation"],
                                          "properties": {**_PROPERTIES["consommation"]["properties"], "type_conso": {"const": "Publiée"}}}},
        ["pce", "periode", "releve_debut", "releve_fin", "consommation"],
    ),
}

INFORMATIVE: dict[str, Any] = {
    "id": INFORMATIVE_ID,
    "version": 1,
    "title": "GRDF daily informative gas consumption (ADICT v2)",
    "description": "One record per NDJSON line of `donnees_consos_informatives`, unchanged: the consumption of one gas "
    "day (`consommation.journee_gaziere`, from 06:00 to 06:00 local time; `type_conso` 'Informative Journalier'), "
    "not billed and possibly provisional (`statut_conso`). " + _COMMON_DOC,
    "units": _UNITS,
    "schema": u.record_schema(
        {**_PROPERTIES, "consommation": {**_PROPERTIES["consommation"],
                                          "properties": {**_PROPERTIES["consommation"]["properties"],
                                                         "type_conso": {"const": "Informative Journalier"}}}},
        ["pce", "periode", "releve_fin", "consommation"],
    ),
}


def _lines(doc: Any) -> list[Any] | None:
    if isinstance(doc, dict):
        return [doc]
    if not isinstance(doc, str):
        return None
    out = []
    for line in doc.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            return None
    return out


def parse(doc: Any, path: Path) -> Any:
    """Records of a GRDF ADICT v2 NDJSON answer, or ``None`` if ``doc`` is not one."""
    from .registry import ParsedFile, UnknownFormat

    lines = _lines(doc)
    if not lines or not all(isinstance(x, dict) and isinstance(x.get("pce"), dict) and isinstance(x.get("consommation"), dict) for x in lines):
        return None
    kinds = {x["consommation"].get("type_conso") for x in lines}
    if len(kinds) != 1 or next(iter(kinds)) not in _TYPE_CONSO:
        raise UnknownFormat(f"{path.name}: GRDF type_conso {sorted(map(str, kinds))} is not one known kind")
    pces = {x["pce"].get("id_pce") for x in lines}
    return ParsedFile(dataset_id=_TYPE_CONSO[kinds.pop()], subject_key=str(pces.pop()) if len(pces) == 1 else "", records=lines)


_DATE_FIELDS = ["periode.date_debut", "periode.date_fin", "releve_debut.date_releve", "releve_fin.date_releve",
                "consommation.date_debut_consommation", "consommation.date_fin_consommation", "consommation.journee_gaziere"]


def _published(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return u.invalid_dates(records, _DATE_FIELDS)


def _informative(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = u.invalid_dates(records, _DATE_FIELDS)
    series = u.daily_series(records, lambda r: u.get_path(r, "consommation.journee_gaziere"), None, "consommation.journee_gaziere")
    return out + [q for q in series if q["code"] != "invalid_date"]


QUIRK_CHECKS = {PUBLISHED_ID: _published, INFORMATIVE_ID: _informative}
