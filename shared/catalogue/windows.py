"""The calendar day a record is about, per dataset type, to apply a consent's data window.

A consent may limit the data to a window of calendar days (``data_from``/``data_to``, inclusive,
either open). :func:`in_window` says whether a record falls inside it; :func:`record_day` gives the
day it is judged by; :func:`has_days` says whether a type is dated at all. Records of an undated
type (a contract, an address, an identity...) and records that carry no readable day are never
filtered out. Standard library only; nothing here changes a record.

General rules:

- a date or date-time is read "as written": a date-time with an offset (``...T00:30:00+02:00``,
  ``...Z``) gives the date written before the ``T``, without converting to another zone (so a ``Z``
  time-stamp is dated by its UTC day);
- a record about an interval is dated by the day of the interval's START;
- a day past the end of its month (``2016-09-31``, flagged ``invalid_date`` by ``quirks()``) is read
  as the month's last day: the year and month written are kept, and the record stays inside the
  windows that cover that month rather than passing every window; any other unreadable value gives
  ``None`` (never an exception).

Per type (dataset id: field, convention):

- enedis.v5.daily_consumption: ``date`` (YYYY-MM-DD), the local calendar day of consumption.
- enedis.v5.consumption_load_curve: ``date`` (local wall-clock time) is the interval's END: the day of ``date`` minus ``interval_length`` (2022-04-02 00:00:00, PT30M -> 2022-04-01); without a readable interval_length, the instant just before ``date``.
- enedis.mesures2026.daily_consumption: ``date`` (YYYY-MM-DD or a date-time with offset): the date as written.
- enedis.mesures2026.consumption_load_curve: as enedis.v5.consumption_load_curve; an offset (``...T00:30:00+02:00``) is ignored, the wall clock as written is used.
- enedis.v5.customer_contract: undated (a contract's state; its activation dates are not what the data is about).
- enedis.v5.customer_address: undated (no time field).
- grdf.adict.v2.published_consumption: ``consommation.date_debut_consommation`` (start of the billed period, date as written; the gas day starts at 06:00 local time, so it is the first gas day), else ``releve_debut.date_releve``.
- grdf.adict.v2.informative_consumption: ``consommation.journee_gaziere`` (the gas day, named by the day it starts), else the date of ``consommation.date_debut_consommation``.
- greenbutton.espi.interval_reading: ``start`` (seconds since the epoch, UTC) moved to the holder's local time by ``tzOffset``, plus ``dstOffset`` when the ESPI DST rules (``dstStartRule``/``dstEndRule``) say daylight time is in effect: the LOCAL day of the interval's start; the UTC day when the record has no ``tzOffset``.
- water.daily_litres: ``date`` (DD/MM/YYYY or YYYY-MM-DD, per ``date_format``), the local calendar day.
- water.monthly_m3: ``year``/``month``: the first day of the month (the interval's start).
- water.payment_schedule: ``date``, the day of the debit.
- orange.geopoint: ``timestamp`` (UTC, ``Z``): its UTC date as written.
- orange.phone_communication_log: ``timestamp`` (UTC, ``Z``): its UTC date as written.
- orange.videostream: ``timestamp`` (UTC, ``Z``): its UTC date as written.
- maif.contract: undated (a contract; ``startDate`` is when it began, not what the data is about).
- maif.home: undated (no time field).
- maif.foyer: undated (a household; birthdates are not what the data is about).
- maif.societaire: undated (an identity).
- maif.payment_terms: undated (no time field).
- maif.claim: ``timestamp`` (local time of the event, no zone): the date of loss.
- maif.identity: undated (an identity).
- cozy.bills: ``date`` (the bill's emission or refund date; UTC when it ends in Z): its date as written; a stub without ``date`` has no day.
- com.grandlyon.enedis.minute: the time fields name the interval's END (local time) and the document has no interval length: the day of one minute before the end (00:00 on day 2 -> day 1), which is the start's day for any interval of the day's grid.
- com.grandlyon.enedis.day: ``year``/``month``/``day``, the local calendar day.
- com.grandlyon.enedis.month: ``year``/``month``: the first day of the month.
- com.grandlyon.enedis.year: ``year``: 1 January.
- com.grandlyon.grdf.day: ``year``/``month``/``day``, the gas day (named by the day it starts).
- com.grandlyon.egl.day: ``year``/``month``/``day``, the local calendar day.
- metering.interval_reading: ``start`` (UTC instant, ``Z``; the record carries no local-time parameters): its UTC date as written.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

from . import bills, converters, ecolyo, enedis_mesures2026, enedis_v5, enedis_v5_customers, greenbutton_espi, grdf_adict_v2, maif, orange_mesinfos, water

__all__ = ["record_day", "has_days", "in_window"]

Extractor = Callable[[Mapping[str, Any]], date | None]

# -- reading values (each returns None for anything it cannot read) -------------------------------

_DATE_PREFIX = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?=$|[T ]|Z$|[+-][0-9]{2}:[0-9]{2}$)")
_DMY = re.compile(r"([0-9]{2})/([0-9]{2})/([0-9]{4})")
_DATE_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]+)?)?"
                        r"(?:Z|[+-][0-9]{2}:[0-9]{2})?")
_DURATION = re.compile(r"PT(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?")
_INT = re.compile(r"[+-]?[0-9]{1,20}")
_HEX32 = re.compile(r"[0-9A-Fa-f]{1,8}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _day(year: Any, month: Any, day: Any) -> date | None:
    """The day ``year-month-day``; a day past the month's end (31 September) is the month's last day."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (year, month, day)):
        return None
    if not (1 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= 31):
        return None
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _date_as_written(text: Any) -> date | None:
    """The date written in ``text``: ``YYYY-MM-DD`` alone or before a time or an offset, or ``DD/MM/YYYY``."""
    if not isinstance(text, str):
        return None
    m = _DATE_PREFIX.match(text)
    if m:
        return _day(int(m[1]), int(m[2]), int(m[3]))
    m = _DMY.fullmatch(text)
    return _day(int(m[3]), int(m[2]), int(m[1])) if m else None


def _wall_clock(text: Any) -> datetime | None:
    """The wall-clock time written in ``text`` (``YYYY-MM-DD HH:MM[:SS]``, ``T`` or space, offset ignored)."""
    if not isinstance(text, str):
        return None
    m = _DATE_TIME.fullmatch(text)
    if not m:
        return None
    d = _day(int(m[1]), int(m[2]), int(m[3]))
    hour, minute, second = int(m[4]), int(m[5]), int(m[6] or 0)
    if d is None or hour > 23 or minute > 59 or second > 59:
        return None
    return datetime(d.year, d.month, d.day, hour, minute, second)


def _duration(text: Any) -> timedelta | None:
    """An ISO 8601 duration of hours/minutes/seconds (``PT30M``), if positive and at most a day."""
    if not isinstance(text, str):
        return None
    m = _DURATION.fullmatch(text)
    if not m or not any(m.groups()):
        return None
    length = timedelta(hours=int(m[1] or 0), minutes=int(m[2] or 0), seconds=int(m[3] or 0))
    return length if timedelta(0) < length <= timedelta(days=1) else None


def _integer(value: Any) -> int | None:
    """An integer given as an integer string (ESPI) or a JSON integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _path(record: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = record
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


# -- ESPI local time (LocalTimeParameters) --------------------------------------------------------


def _dst_transition(year: int, rule: Any) -> datetime | None:
    """The local time at which an ESPI DstRuleType fires in ``year`` (None: no rule, disabled or unreadable).

    Bits 0-11 seconds, 12-16 hours, 17-19 day of week (1 Monday .. 7 Sunday), 20-24 day of month,
    25-27 operator (0 that day of month, 1 day of week on or after it, 2-6 first..fifth day of week
    of the month, 7 the last one), 28-31 month. 0xFFFFFFFF disables DST.
    """
    if not isinstance(rule, str) or not _HEX32.fullmatch(rule.strip()):
        return None
    v = int(rule.strip(), 16)
    if v == 0xFFFFFFFF:
        return None
    seconds, hours, dow = v & 0xFFF, (v >> 12) & 0x1F, (v >> 17) & 0x7
    dom, op, month = (v >> 20) & 0x1F, (v >> 25) & 0x7, (v >> 28) & 0xF
    if not 1 <= month <= 12 or hours > 23 or seconds > 3599:
        return None
    last = calendar.monthrange(year, month)[1]
    if op in (0, 1):
        if not 1 <= dom <= last or (op == 1 and not 1 <= dow <= 7):
            return None
        d = date(year, month, dom)
        if op == 1:
            d += timedelta(days=(dow - d.isoweekday()) % 7)
    elif 2 <= op <= 6:
        if not 1 <= dow <= 7:
            return None
        first = date(year, month, 1)
        d = first + timedelta(days=(dow - first.isoweekday()) % 7 + 7 * (op - 2))
        if d.month != month:
            return None
    else:
        if not 1 <= dow <= 7:
            return None
        end = date(year, month, last)
        d = end - timedelta(days=(end.isoweekday() - dow) % 7)
    return datetime(d.year, d.month, d.day) + timedelta(hours=hours, seconds=seconds)


def _espi_day(record: Mapping[str, Any]) -> date | None:
    start = _integer(record.get("start"))
    if start is None:
        return None
    utc = _EPOCH + timedelta(seconds=start)
    tz = _integer(record.get("tzOffset"))
    if tz is None:
        return utc.date()
    standard = (utc + timedelta(seconds=tz)).replace(tzinfo=None)
    dst = _integer(record.get("dstOffset"))
    if dst:
        begins = _dst_transition(standard.year, record.get("dstStartRule"))
        ends = _dst_transition(standard.year, record.get("dstEndRule"))
        if begins is not None and ends is not None:
            ends -= timedelta(seconds=dst)  # the end rule is in daylight time
            summer = begins <= standard < ends if begins <= ends else (standard >= begins or standard < ends)
            if summer:
                return (standard + timedelta(seconds=dst)).date()
    return standard.date()


# -- extractors -----------------------------------------------------------------------------------


def _first_date(*paths: str) -> Extractor:
    """The date as written of the first of ``paths`` that holds a readable one."""
    def extract(record: Mapping[str, Any]) -> date | None:
        for p in paths:
            d = _date_as_written(_path(record, p))
            if d is not None:
                return d
        return None
    return extract


def _interval_end(field: str, length_field: str) -> Extractor:
    """``field`` is the END of an interval of ``length_field``: the day of its start."""
    def extract(record: Mapping[str, Any]) -> date | None:
        end = _wall_clock(record.get(field))
        if end is None:
            return None
        length = _duration(record.get(length_field)) or timedelta(seconds=1)
        return (end - length).date()
    return extract


def _ecolyo(kind: str) -> Extractor:
    """Ecolyo time fields: ``minute`` (interval end), ``day``, ``month`` (first day) or ``year`` (1 January)."""
    def extract(record: Mapping[str, Any]) -> date | None:
        y, m, d = record.get("year"), record.get("month"), record.get("day")
        if kind == "year":
            return _day(y, 1, 1)
        if kind == "month":
            return _day(y, m, 1)
        day = _day(y, m, d)
        if kind == "day" or day is None:
            return day
        hour, minute = record.get("hour"), record.get("minute")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (hour, minute)) or not (0 <= hour <= 23 and 0 <= minute <= 59):
            return None
        return (datetime(day.year, day.month, day.day, hour, minute) - timedelta(minutes=1)).date()
    return extract


def _month_start(record: Mapping[str, Any]) -> date | None:
    return _day(record.get("year"), record.get("month"), 1)


# dataset id -> how to find the day its records are about; None: the type is explicitly undated.
DAY_OF: dict[str, Extractor | None] = {
    enedis_v5.DAILY_ID: _first_date("date"),
    enedis_v5.LOAD_CURVE_ID: _interval_end("date", "interval_length"),
    enedis_mesures2026.DAILY_ID: _first_date("date"),
    enedis_mesures2026.LOAD_CURVE_ID: _interval_end("date", "interval_length"),
    enedis_v5_customers.CONTRACT_ID: None,
    enedis_v5_customers.ADDRESS_ID: None,
    grdf_adict_v2.PUBLISHED_ID: _first_date("consommation.date_debut_consommation", "releve_debut.date_releve"),
    grdf_adict_v2.INFORMATIVE_ID: _first_date("consommation.journee_gaziere", "consommation.date_debut_consommation"),
    greenbutton_espi.INTERVAL_READING_ID: _espi_day,
    water.DAILY_ID: _first_date("date"),
    water.MONTHLY_ID: _month_start,
    water.SCHEDULE_ID: _first_date("date"),
    orange_mesinfos.GEOPOINT_ID: _first_date("timestamp"),
    orange_mesinfos.CALL_LOG_ID: _first_date("timestamp"),
    orange_mesinfos.VIDEOSTREAM_ID: _first_date("timestamp"),
    maif.CONTRACT_ID: None,
    maif.HOME_ID: None,
    maif.FOYER_ID: None,
    maif.SOCIETAIRE_ID: None,
    maif.PAYMENT_TERMS_ID: None,
    maif.CLAIM_ID: _first_date("timestamp"),
    maif.IDENTITY_ID: None,
    bills.BILLS_ID: _first_date("date"),
    ecolyo.ENEDIS_MINUTE_ID: _ecolyo("minute"),
    ecolyo.ENEDIS_DAY_ID: _ecolyo("day"),
    ecolyo.ENEDIS_MONTH_ID: _ecolyo("month"),
    ecolyo.ENEDIS_YEAR_ID: _ecolyo("year"),
    ecolyo.GRDF_DAY_ID: _ecolyo("day"),
    ecolyo.EGL_DAY_ID: _ecolyo("day"),
    converters.METERING_INTERVAL_READING_ID: _first_date("start"),
}


def record_day(dataset_id: str, record: Mapping[str, Any]) -> date | None:
    """The calendar day the record's data is about, in the source's own time convention (documented per type), or None when the type has no time (a contract, an address, an identity...) or the record does not carry one."""
    extract = DAY_OF.get(dataset_id)
    if extract is None or not isinstance(record, Mapping):
        return None
    try:
        return extract(record)
    except (ValueError, TypeError, OverflowError, ArithmeticError, LookupError, AttributeError):
        return None


def has_days(dataset_id: str) -> bool:
    """True when records of this type are dated (record_day can answer a day); False for undated types and unknown ids."""
    return DAY_OF.get(dataset_id) is not None


def in_window(dataset_id: str, record: Mapping[str, Any], start: date | None, end: date | None, *, strict: bool = False) -> bool:
    """True when the record is inside [start, end] (inclusive, None = open), or when it has no day: records of
    undated types are never filtered out, and neither are records of a dated type whose day cannot be read,
    unless ``strict`` (then they are outside any window that has a bound: what the broker applies, since it
    cannot tell such a record is inside what the person consented to)."""
    day = record_day(dataset_id, record)
    if day is None:
        return not (strict and has_days(dataset_id) and (start is not None or end is not None))
    if isinstance(start, datetime):
        start = start.date()
    if isinstance(end, datetime):
        end = end.date()
    return (start is None or start <= day) and (end is None or day <= end)
