"""Ecolyo time-series documents (the Métropole de Lyon's Ecolyo app, in a Cozy personal cloud).

Source of the format: the Ecolyo technical documentation (forge.grandlyon.com, llle_project
self-data-technical-doc, ``docs/.../project_architecture/doctypes.md``; see
/work/shared/fixtures/real/SOURCES.md). Each fluid has one doctype per time step:
``com.grandlyon.<fluid>.minute`` (half an hour), ``.day``, ``.month``, ``.year``. Every
document has the same six fields; the documented example (a ``com.grandlyon.enedis.day``
document) is::

    {"load": 770.18, "minute": 0, "hour": 0, "day": 1, "month": 1, "year": 2020}

so ``load`` is a JSON number (decimals allowed) and the five time fields are JSON integers.

Units: ``load`` is in kWh for electricity (``enedis``) and gas (``grdf``), in litres for water
(``egl``, Eau du Grand Lyon).

Time conventions (applied by :mod:`shared.catalogue.converters`; documented per type below):

- the time fields are the LOCAL (French, Europe/Paris) wall-clock components of a date, with no
  zone: ``month`` is 1-12 (the example's ``month: 1`` with ``day: 1`` is 1 January), ``day`` 1-31;
- ``.day`` documents: ``hour = 0``, ``minute = 0`` (as in the example); the day is the local
  calendar day (for gas: the gas day, 06:00 to 06:00 local time, named by the day it starts);
- ``.month`` documents: ``day = 0``, ``hour = 0``, ``minute = 0``; ``.year`` documents:
  ``month = 1``, ``day = 0``, ``hour = 0``, ``minute = 0``. This is the convention of Ecolyo's
  own konnectors as far as this project knows it; it is NOT shown by the saved example (which is
  a day document), so it is an assumption to be checked against Ecolyo before production use;
- ``.minute`` documents (half-hour load curve): the saved sources do not say whether Ecolyo's
  time fields name the START or the END of the half hour. The Enedis source timestamps mark the
  END of the interval, and the converters KEEP the END timestamp (a point dated 00:30 covers
  00:00-00:30; the interval 23:30-24:00 of 1 March is ``day 2, hour 0, minute 0``).

A document names no meter: a Cozy holds one household's data per doctype, so the converters
refuse to merge records of several meters into one stream of documents.
"""

from __future__ import annotations

from typing import Any

from . import _util as u

ENEDIS_MINUTE_ID = "com.grandlyon.enedis.minute"
ENEDIS_DAY_ID = "com.grandlyon.enedis.day"
ENEDIS_MONTH_ID = "com.grandlyon.enedis.month"
ENEDIS_YEAR_ID = "com.grandlyon.enedis.year"
GRDF_DAY_ID = "com.grandlyon.grdf.day"
EGL_DAY_ID = "com.grandlyon.egl.day"

_YEAR = {"type": "integer", "minimum": 1900, "maximum": 2999}
_MONTH = {"type": "integer", "minimum": 1, "maximum": 12}
_DAY = {"type": "integer", "minimum": 1, "maximum": 31}
_HOUR = {"type": "integer", "minimum": 0, "maximum": 23}
_MINUTE = {"type": "integer", "minimum": 0, "maximum": 59}
_LOAD = {"type": "number"}
_REQUIRED = ["load", "minute", "hour", "day", "month", "year"]


def _schema(load_unit: str, minute: dict[str, Any], hour: dict[str, Any], day: dict[str, Any], month: dict[str, Any]) -> dict[str, Any]:
    return u.record_schema(
        {
            "load": {**_LOAD, "description": f"consumption over the period, in {load_unit}"},
            "minute": minute,
            "hour": hour,
            "day": day,
            "month": month,
            "year": _YEAR,
        },
        _REQUIRED,
    )


_COMMON = ("Fields: `load` (JSON number) and the integers `minute`, `hour`, `day`, `month` (1-12), `year`, the "
           "LOCAL (Europe/Paris) wall-clock components of the period, without a zone; the document names no meter "
           "(one household per Cozy). ")
_DAY_TIME = "Time: one document per local calendar day, `hour` 0 and `minute` 0 (as in Ecolyo's documented example). "
_MONTH_TIME = ("Time: one document per calendar month, `day` 0, `hour` 0, `minute` 0 (Ecolyo konnector convention as "
               "known to this project, not shown by the saved example: an assumption). ")
_YEAR_TIME = ("Time: one document per calendar year, `month` 1, `day` 0, `hour` 0, `minute` 0 (Ecolyo konnector "
              "convention as known to this project, not shown by the saved example: an assumption). ")
_AGG = ("Quirks: produced from daily values only for COMPLETE periods (every day present once); a partial period "
        "(missing or duplicated day) is never emitted as if complete: the converter reports it in its notes. ")

ENEDIS_MINUTE: dict[str, Any] = {
    "id": ENEDIS_MINUTE_ID,
    "version": 1,
    "title": "Ecolyo electricity load curve document (half an hour)",
    "description": "Ecolyo `com.grandlyon.enedis.minute` document: the electricity consumed over one load-curve "
    "interval (Enedis: 30 minutes). Units: `load` in kWh (energy over the interval, = average W × interval hours / "
    "1000). " + _COMMON + "Time: the time fields name the END of the interval, as the Enedis source does (a point "
    "at 00:30 covers 00:00-00:30); the saved Ecolyo sources do not say whether Ecolyo reads start or end, so the "
    "end is kept. Quirks: at the autumn DST change the local wall-clock end times 02:30/03:00 occur twice and two "
    "documents then carry the same time fields, as in the source (accepted, not merged).",
    "units": {"load": "kWh"},
    "schema": _schema("kWh", _MINUTE, _HOUR, _DAY, _MONTH),
}

ENEDIS_DAY: dict[str, Any] = {
    "id": ENEDIS_DAY_ID,
    "version": 1,
    "title": "Ecolyo daily electricity document",
    "description": "Ecolyo `com.grandlyon.enedis.day` document: the electricity consumed over one local calendar "
    "day. Units: `load` in kWh (Enedis Wh / 1000, exact decimal). " + _COMMON + _DAY_TIME
    + "Example (Ecolyo documentation): {load: 770.18, minute: 0, hour: 0, day: 1, month: 1, year: 2020}. Quirks: a "
    "missing source day has no document (never a zero); a negative source day is carried as served.",
    "units": {"load": "kWh"},
    "schema": _schema("kWh", {"const": 0}, {"const": 0}, _DAY, _MONTH),
}

ENEDIS_MONTH: dict[str, Any] = {
    "id": ENEDIS_MONTH_ID,
    "version": 1,
    "title": "Ecolyo monthly electricity document",
    "description": "Ecolyo `com.grandlyon.enedis.month` document: the electricity consumed over one calendar month "
    "(sum of the daily values). Units: `load` in kWh. " + _COMMON + _MONTH_TIME + _AGG,
    "units": {"load": "kWh"},
    "schema": _schema("kWh", {"const": 0}, {"const": 0}, {"const": 0}, _MONTH),
}

ENEDIS_YEAR: dict[str, Any] = {
    "id": ENEDIS_YEAR_ID,
    "version": 1,
    "title": "Ecolyo yearly electricity document",
    "description": "Ecolyo `com.grandlyon.enedis.year` document: the electricity consumed over one calendar year "
    "(sum of the daily values). Units: `load` in kWh. " + _COMMON + _YEAR_TIME + _AGG,
    "units": {"load": "kWh"},
    "schema": _schema("kWh", {"const": 0}, {"const": 0}, {"const": 0}, {"const": 1}),
}

GRDF_DAY: dict[str, Any] = {
    "id": GRDF_DAY_ID,
    "version": 1,
    "title": "Ecolyo daily gas document",
    "description": "Ecolyo `com.grandlyon.grdf.day` document: the gas energy consumed over one GAS day. Units: `load` "
    "in kWh (GRDF `energie`, unchanged). " + _COMMON + "Time: the gas day runs from 06:00 to 06:00 local time; the "
    "document is dated (`day`/`month`/`year`) by the day on which the gas day STARTS (GRDF `journee_gaziere`), "
    "`hour` 0 and `minute` 0 (a label, not the 06:00 start). Quirks: the provisional/definitive status of the source "
    "has no field here and is not carried; a null energy gives no document (never a zero); a total over several gas "
    "days (published data) is refused by the converter, never spread over days.",
    "units": {"load": "kWh"},
    "schema": _schema("kWh", {"const": 0}, {"const": 0}, _DAY, _MONTH),
}

EGL_DAY: dict[str, Any] = {
    "id": EGL_DAY_ID,
    "version": 1,
    "title": "Ecolyo daily water document (Eau du Grand Lyon)",
    "description": "Ecolyo `com.grandlyon.egl.day` document: the water consumed over one local calendar day. Units: "
    "`load` in LITRES (not kWh). " + _COMMON + _DAY_TIME + "Quirks: a day without a reading has no document (it is "
    "never a zero); a provisional day (Marseille 'T') has none either. A negative day (meter change) is carried as served: the document has no field to flag it; run "
    "`quirks()` on the source records.",
    "units": {"load": "L"},
    "schema": _schema("litres", {"const": 0}, {"const": 0}, _DAY, _MONTH),
}

ALL: tuple[dict[str, Any], ...] = (ENEDIS_MINUTE, ENEDIS_DAY, ENEDIS_MONTH, ENEDIS_YEAR, GRDF_DAY, EGL_DAY)


def dataset_types() -> dict[str, Any]:
    """The Ecolyo dataset types as ``{id: registry.DatasetType}`` (imported lazily: no import cycle with the registry)."""
    from .registry import DatasetType

    return {t["id"]: DatasetType(**t) for t in ALL}
