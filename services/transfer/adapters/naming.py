"""Deterministic names of delivered records, for recipients that store one record per resource or document.

A record's name is ``<when>-<hash>``: ``when`` is the time the record is about, read from its own
fields (``2022-03-08``, ``2023-03-01T00-30``, ``2022-03``...), and ``hash`` the first 16 hex
digits of the SHA-256 of its RFC 8785 canonical JSON. The name depends on the record only: sending
the same record again, in a resumed batch or in a later transfer, gives the same name, so the
recipient keeps it once. Two records that differ (a source's duplicated day with two values, two
meters on the same day, a corrected value) get different names and are both kept, as served.

``period`` groups records into containers: ``YYYY-MM`` for daily and finer records, ``YYYY`` for
monthly and yearly ones, ``undated`` when a record carries no time that this module reads.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from shared.canonical import canonical

_YMD = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?")
_DMY = re.compile(r"^(\d{2})/(\d{2})/(\d{4})")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

# fields read, in this order, for the time a record is about (dotted paths for nested ones)
TIME_FIELDS = ("date", "start", "timestamp", "time", "consommation.journee_gaziere", "consommation.date_debut_consommation",
               "periode.date_debut")


def content_hash(record: Any) -> str:
    """The first 16 hex digits of the SHA-256 of the record's RFC 8785 canonical JSON."""
    return hashlib.sha256(canonical(record)).hexdigest()[:16]


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _from_text(text: str) -> tuple[str, str] | None:
    """(period, when) from ``YYYY-MM-DD[ HH:MM[:SS]]`` or ``DD/MM/YYYY``; the digits are kept as spelled, so
    that a date that does not exist in the calendar (a real source quirk) still gets a stable name."""
    m = _YMD.match(text)
    if m:
        y, mo, d, hh, mi = m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)
        when = f"{y}-{mo}-{d}" + (f"T{hh}-{mi}" if hh is not None else "")
        return f"{y}-{mo}", when
    m = _DMY.match(text)
    if m:
        d, mo, y = m.group(1), m.group(2), m.group(3)
        return f"{y}-{mo}", f"{y}-{mo}-{d}"
    return None


def _from_epoch(value: Any) -> tuple[str, str] | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or len(str(value)) > 12:
        return None
    t = datetime.fromtimestamp(int(value), UTC)
    return t.strftime("%Y-%m"), t.strftime("%Y-%m-%dT%H-%M")


def _ecolyo(record: dict[str, Any], dataset: str) -> tuple[str, str] | None:
    """Ecolyo-style documents: integer ``year``, ``month``, ``day``, ``hour``, ``minute`` (``day`` 0 for a month or year)."""
    parts = [record.get(k) for k in ("year", "month", "day", "hour", "minute")]
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return None
    y, mo, d, hh, mi = parts
    if d == 0:
        return f"{y:04d}", f"{y:04d}-{mo:02d}"
    when = f"{y:04d}-{mo:02d}-{d:02d}"
    if dataset.endswith(".minute") or hh or mi:
        when += f"T{hh:02d}-{mi:02d}"
    return f"{y:04d}-{mo:02d}", when


def period_and_when(dataset: str, record: Any) -> tuple[str, str]:
    """(period, when) of a record of ``dataset``; ``("undated", "record")`` when it names no time this module reads."""
    if not isinstance(record, dict):
        return "undated", "record"
    found = _ecolyo(record, dataset)
    if found:
        return found
    for path in TIME_FIELDS:
        value = _get(record, path)
        if isinstance(value, str):
            found = _from_text(value) or _from_epoch(value)
        elif isinstance(value, int):
            found = _from_epoch(value)
        if found:
            return found
    y, mo = record.get("year"), record.get("month")
    if isinstance(y, int) and isinstance(mo, int) and not isinstance(y, bool) and not isinstance(mo, bool):
        return f"{y:04d}", f"{y:04d}-{mo:02d}"
    return "undated", "record"


def record_name(dataset: str, record: Any) -> tuple[str, str]:
    """(period, name) of a record: the container it goes in and its deterministic name (no extension)."""
    period, when = period_and_when(dataset, record)
    return _SAFE.sub("-", period), f"{_SAFE.sub('-', when)}-{content_hash(record)}"


def safe_segment(text: str) -> str:
    """``text`` as one URL path segment: letters, digits, ``.``, ``_`` and ``-`` kept, anything else ``-``."""
    return _SAFE.sub("-", text).strip("-") or "-"
