"""Enedis Data Connect v5 metering data (``daily_consumption``, ``consumption_load_curve``).

Source format (Enedis Data Connect API "Mesures" v5; see ../shared/fixtures/real/SOURCES.md)::

    {"meter_reading": {"usage_point_id": str, "start": date, "end": date, "quality": str,
      "reading_type": {"unit": "Wh"|"W", "measurement_kind": "energy"|"power",
                       "measuring_period": "P1D"?, "aggregate": "sum"|"average"},
      "interval_reading": [{"value": "<integer as string>", "date": str,
                            "interval_length": "PT30M"?, "measure_type": "B"?}, ...]}}

One record per ``interval_reading`` item, with the meter and unit carried along so that
each record is self-describing. Values stay strings, exactly as the holder served them.

- daily consumption: ``value`` is energy in Wh over the day ``date`` (``YYYY-MM-DD``).
- load curve: ``value`` is the average power in W over the interval of ``interval_length``
  that ENDS at ``date`` (``YYYY-MM-DD HH:MM:SS``, French local time).
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

DAILY_ID = "enedis.v5.daily_consumption"
LOAD_CURVE_ID = "enedis.v5.consumption_load_curve"

_COMMON = {
    "usage_point_id": {"type": "string", "pattern": "^[0-9]{14}$|^[0-9]{11}$", "description": "PRM (meter) identifier"},
    "value": {"type": "string", "pattern": "^-?[0-9]+$", "maxLength": 20},
    "quality": {"type": "string", "maxLength": 32},
    "measurement_kind": {"type": "string", "maxLength": 32},
    "aggregate": {"type": "string", "maxLength": 32},
}

DAILY_CONSUMPTION: dict[str, Any] = {
    "id": DAILY_ID,
    "version": 1,
    "title": "Enedis daily electricity consumption (Data Connect v5)",
    "description": "One record per day: energy consumed over the day `date` (local calendar day), "
    "`value` in Wh as an integer string, `unit` 'Wh', `measuring_period` 'P1D'.",
    "units": {"value": "Wh"},
    "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["usage_point_id", "date", "value", "unit", "measuring_period"],
        "properties": {
            **_COMMON,
            "date": {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "unit": {"const": "Wh"},
            "measuring_period": {"const": "P1D"},
        },
    },
}

LOAD_CURVE: dict[str, Any] = {
    "id": LOAD_CURVE_ID,
    "version": 1,
    "title": "Enedis electricity load curve (Data Connect v5)",
    "description": "One record per interval: average power over the `interval_length` (ISO 8601 duration, "
    "e.g. PT30M) that ENDS at `date` ('YYYY-MM-DD HH:MM:SS', French local time); `value` in W as an "
    "integer string, `unit` 'W'.",
    "units": {"value": "W"},
    "schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["usage_point_id", "date", "value", "unit", "interval_length"],
        "properties": {
            **_COMMON,
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"},
            "unit": {"const": "W"},
            "interval_length": {"type": "string", "pattern": "^PT[0-9]+M$"},
            "measure_type": {"type": "string", "maxLength": 8},
        },
    },
}


def parse(doc: Any, path: Path) -> Any:
    """Records of an Enedis v5 document, or ``None`` if ``doc`` is not one."""
    from .registry import ParsedFile

    if not isinstance(doc, dict) or not isinstance(doc.get("meter_reading"), dict):
        return None
    mr = doc["meter_reading"]
    rt = mr.get("reading_type") or {}
    unit = rt.get("unit")
    if unit == "Wh":
        dataset_id = DAILY_ID
    elif unit == "W":
        dataset_id = LOAD_CURVE_ID
    else:
        return None
    records: list[dict[str, Any]] = []
    for item in mr.get("interval_reading") or []:
        rec: dict[str, Any] = {"usage_point_id": mr.get("usage_point_id"), "date": item.get("date"), "value": item.get("value"), "unit": unit}
        if dataset_id == DAILY_ID:
            rec["measuring_period"] = item.get("measuring_period", rt.get("measuring_period", "P1D"))
        else:
            rec["interval_length"] = item.get("interval_length")
            if "measure_type" in item:
                rec["measure_type"] = item["measure_type"]
        for key in ("quality", "measurement_kind", "aggregate"):
            src = mr.get(key) if key == "quality" else rt.get(key)
            if src is not None:
                rec[key] = src
        records.append(rec)
    return ParsedFile(dataset_id=dataset_id, subject_key=str(mr.get("usage_point_id")), records=records)


def sample_daily(usage_point_id: str = "00000000000001", days: int = 365, start: date = date(2025, 1, 1), seed: int = 7) -> dict[str, Any]:
    """A generated ``daily_consumption`` document in the v5 format (values in Wh)."""
    rng = random.Random(seed)
    readings = [
        {"value": str(int(9000 + 6000 * rng.random() + (4000 if (start + timedelta(d)).month in (1, 2, 12) else 0))),
         "date": (start + timedelta(d)).isoformat()}
        for d in range(days)
    ]
    return {
        "meter_reading": {
            "usage_point_id": usage_point_id,
            "start": start.isoformat(),
            "end": (start + timedelta(days)).isoformat(),
            "quality": "BRUT",
            "reading_type": {"measurement_kind": "energy", "measuring_period": "P1D", "unit": "Wh", "aggregate": "sum"},
            "interval_reading": readings,
        }
    }


def sample_load_curve(usage_point_id: str = "00000000000001", points: int = 336, start: date = date(2025, 1, 1), seed: int = 11) -> dict[str, Any]:
    """A generated ``consumption_load_curve`` document (half-hour average W, date = interval end)."""
    rng = random.Random(seed)
    t0 = datetime(start.year, start.month, start.day)
    readings = [
        {"value": str(int(300 + 2500 * rng.random())), "date": (t0 + timedelta(minutes=30 * (i + 1))).strftime("%Y-%m-%d %H:%M:%S"),
         "interval_length": "PT30M", "measure_type": "B"}
        for i in range(points)
    ]
    return {
        "meter_reading": {
            "usage_point_id": usage_point_id,
            "start": start.isoformat(),
            "end": (t0 + timedelta(minutes=30 * points)).date().isoformat(),
            "quality": "BRUT",
            "reading_type": {"measurement_kind": "power", "unit": "W", "aggregate": "average"},
            "interval_reading": readings,
        }
    }
