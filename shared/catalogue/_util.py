"""Small helpers shared by the catalogue modules (schemas, date reading, quirk reports).

Nothing here changes a record: the helpers only *read* values (to build schemas or to
detect quirks). A quirk report is a plain dict::

    {"position": <index of the record in the list>, "code": "<stable code>",
     "field": "<dotted path or None>", "value": <the value as found>, "message": "<text>"}

plus optional keys (``missing`` for the dates absent before the record, ``related`` for the
positions of the records involved in the same quirk).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# A record's JSON Schema is Draft 2020-12. Dates that are valid in every record of a real file
# carry ``format: date`` (which jsonschema's FormatChecker checks with the standard library).
# ``format: date-time`` is NOT used: jsonschema only checks it when the optional
# ``rfc3339-validator`` package is installed, so the result would depend on the environment.
# Calendar validity of timestamps is checked by ``quirks()`` instead (code ``invalid_date``).

ISO_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
ISO_OFFSET = r"(Z|[+-][0-9]{2}:[0-9]{2})"


def obj(properties: dict[str, Any], required: Iterable[str] = (), *, additional: bool = False, **extra: Any) -> dict[str, Any]:
    """An ``object`` sub-schema (closed unless ``additional``)."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": additional, "properties": properties}
    req = list(required)
    if req:
        schema["required"] = req
    schema.update(extra)
    return schema


def record_schema(properties: dict[str, Any], required: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """The top-level (Draft 2020-12) schema of one record."""
    return {"$schema": DIALECT, **obj(properties, required, **extra)}


def string(max_length: int = 256, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or JSON ``null`` (the holder serves ``null`` for an absent value)."""
    return {"anyOf": [{"type": "null"}, schema]}


def quirk(position: int, code: str, field: str | None, value: Any, message: str, **extra: Any) -> dict[str, Any]:
    return {"position": position, "code": code, "field": field, "value": value, "message": message, **extra}


def get_path(record: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``record`` (``None`` when absent)."""
    cur = record
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


_DMY = re.compile(r"^([0-9]{2})/([0-9]{2})/([0-9]{4})$")
_YMD = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})")


def calendar_day(text: Any) -> date | None:
    """The calendar day spelled by ``text`` (``YYYY-MM-DD...`` or ``DD/MM/YYYY``), or ``None``.

    Only the date part is read; ``None`` when the spelling is not a date or the day does not
    exist (``2016-09-31``)."""
    if not isinstance(text, str):
        return None
    m = _YMD.match(text)
    if m:
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    else:
        m = _DMY.match(text)
        if not m:
            return None
        d, mo, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
    try:
        return date(y, mo, d)
    except ValueError:
        return None


def looks_dated(text: Any) -> bool:
    return isinstance(text, str) and bool(_YMD.match(text) or _DMY.match(text))


def timestamp_is_valid(text: str) -> bool:
    """True when ``text`` (an ISO 8601 date, date-time, or ``DD/MM/YYYY``) names a real instant."""
    if _DMY.match(text):
        return calendar_day(text) is not None
    candidate = text[:-1] + "+00:00" if text.endswith("Z") else text
    try:
        datetime.fromisoformat(candidate)
    except ValueError:
        # ``2006-05-24+02:00`` (xsd:date with an offset) is a valid day.
        return bool(re.fullmatch(ISO_DATE + ISO_OFFSET, text)) and calendar_day(text) is not None
    return True


def invalid_dates(records: list[dict[str, Any]], fields: Iterable[str]) -> list[dict[str, Any]]:
    """``invalid_date`` for every date-like value (at dotted ``fields``) naming no real day/instant."""
    out = []
    fields = list(fields)
    for i, rec in enumerate(records):
        for f in fields:
            v = get_path(rec, f)
            if isinstance(v, str) and looks_dated(v) and not timestamp_is_valid(v):
                out.append(quirk(i, "invalid_date", f, v, f"{f}={v!r} is not a real date; record kept, value not corrected"))
    return out


def as_number(value: Any) -> float | int | None:
    """The number a value spells (JSON number or integer string), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
        return float(value) if "." in value else int(value)
    return None


def daily_series(
    records: list[dict[str, Any]],
    date_of: Callable[[dict[str, Any]], Any],
    value_of: Callable[[dict[str, Any]], Any] | None,
    date_field: str,
    value_field: str | None = None,
) -> list[dict[str, Any]]:
    """Quirks of a series of daily values (one meter per list):

    - ``invalid_date``: the date does not exist (record kept, excluded from the gap check);
    - ``duplicate_date``: a second record for a day already seen (both kept; ``related`` = earlier positions);
    - ``missing_day``: days absent between two consecutive days of the series (reported on the
      record after the gap, with ``missing`` = ISO dates). Missing days are never filled in;
    - ``negative_value``: a negative daily value (kept as served; typically a meter change/index reset);
    - ``compensating_jump``: the first record of the next day after a negative value, when it is at
      least as large as the negative value is deep (the other half of a meter change; kept).
    """
    out: list[dict[str, Any]] = []
    days: list[tuple[date, int]] = []
    for i, rec in enumerate(records):
        raw = date_of(rec)
        if raw is None:  # no date at all: the schema reports it; nothing to place in the series
            continue
        d = calendar_day(raw)
        if d is None:
            out.append(quirk(i, "invalid_date", date_field, raw, f"{date_field}={raw!r} is not a real date; record kept, value not corrected"))
            continue
        days.append((d, i))
    first_seen: dict[date, list[int]] = {}
    for d, i in days:
        if d in first_seen:
            out.append(quirk(i, "duplicate_date", date_field, date_of(records[i]),
                             f"a record for {d.isoformat()} already exists; both kept", related=list(first_seen[d])))
        first_seen.setdefault(d, []).append(i)
    ordered = sorted(first_seen)
    for prev, nxt in zip(ordered, ordered[1:]):
        gap = (nxt - prev).days
        if gap > 1:
            missing = [date.fromordinal(prev.toordinal() + k).isoformat() for k in range(1, gap)]
            pos = first_seen[nxt][0]
            out.append(quirk(pos, "missing_day", date_field, date_of(records[pos]),
                             f"no record for {', '.join(missing)}: kept missing (never a zero)", missing=missing))
    if value_of is not None:
        next_day = {d: ordered[k + 1] for k, d in enumerate(ordered[:-1])}
        for d, i in days:
            v = as_number(value_of(records[i]))
            if v is None or v >= 0:
                continue
            out.append(quirk(i, "negative_value", value_field, value_of(records[i]),
                             "negative daily value (probable meter change or index reset); kept as served"))
            nd = next_day.get(d)
            if nd is None:
                continue
            j = first_seen[nd][0]
            w = as_number(value_of(records[j]))
            if w is not None and w >= -v:
                out.append(quirk(j, "compensating_jump", value_field, value_of(records[j]),
                                 f"value at least as large as the negative value at position {i} (other half of a meter change); kept",
                                 related=[i]))
    return out


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def control_characters(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``control_character`` for every string holding a C0/C1 control character (tab, CR, LF excepted).

    Such characters are usually a mis-decoded symbol: U+0080 is the Windows-1252 byte of '€' read
    as Latin-1 (MAIF ``patrimoineMobilier`` "3 501 à 6 800 " + U+0080). The value is kept verbatim."""
    out: list[dict[str, Any]] = []

    def walk(i: int, value: Any, path: str) -> None:
        if isinstance(value, str):
            found = _CONTROL.findall(value)
            if found:
                codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in found}))
                hint = " (U+0080 is a mis-decoded '€')" if "\x80" in found else ""
                out.append(quirk(i, "control_character", path, value, f"control character {codes} in the value{hint}; kept verbatim"))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(i, v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for k, v in enumerate(value):
                walk(i, v, f"{path}.{k}")

    for i, rec in enumerate(records):
        walk(i, rec, "")
    return out


def by_position(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(reports, key=lambda q: (q["position"], q["code"], str(q["field"])))
