"""Converters between dataset types, for a transfer whose recipient accepts another type than the holder offers.

A :class:`Converter` turns records of one dataset type (``source``) into records of another
(``target``). It is pure (input records are never modified; no I/O, no clock, no randomness) and
streaming-friendly: :meth:`Converter.stream` starts one run, whose :meth:`Stream.feed` takes any
iterable of source records (possibly in several chunks) and yields target records as it goes,
and whose :meth:`Stream.finish` yields what only the whole series can give (month and year sums).
``converter(records)`` does both in one call. What a run deliberately does not emit (a partial
month, a provisional day, a reading without a value) is reported in ``Stream.notes``, never
silently dropped nor presented as complete.

Registry: ``CONVERTERS[(source_id, target_id)]``; :func:`convert` runs one, :func:`find` picks
one for a recipient's list of accepted types. Conversions are single-step (no chains).

Converters (rules; source formats are documented in their catalogue modules and in
/work/shared/fixtures/real/SOURCES.md):

===========================================  ======================================  ==========================================
source                                       target                                  rule
===========================================  ======================================  ==========================================
enedis.v5.daily_consumption                  com.grandlyon.enedis.day                load kWh = Wh / 1000 (exact decimal); day of
                                                                                     ``date``; hour 0, minute 0
enedis.v5.consumption_load_curve             com.grandlyon.enedis.minute             load kWh = W × interval minutes / 60 / 1000
                                                                                     (PT30M: W / 2000); time fields = END of the
                                                                                     interval (the source's ``date``), kept
enedis.v5.daily_consumption                  com.grandlyon.enedis.month / .year      sum of the days / 1000, only for COMPLETE
                                                                                     calendar months / years; partial → note
enedis.mesures2026.daily_consumption         enedis.v5.daily_consumption             field renaming; no ``aggregate`` (no 2026
                                                                                     equivalent)
enedis.mesures2026.consumption_load_curve    enedis.v5.consumption_load_curve        field renaming; ``iv``/``ec``, modeCalcul,
                                                                                     typeValeur, grandeurMetier dropped; no
                                                                                     ``aggregate``
grdf.adict.v2.informative_consumption        com.grandlyon.grdf.day                  load = energie kWh; dated by the gas day
grdf.adict.v2.published_consumption          com.grandlyon.grdf.day                  same, only for a record covering exactly one
                                                                                     gas day (else ConversionError)
greenbutton.espi.interval_reading            metering.interval_reading               value × 10^powerOfTenMultiplier in the uom's
                                                                                     unit; unknown uom → ConversionError
water.daily_litres                           com.grandlyon.egl.day                   load = litres; missing day stays missing;
                                                                                     provisional (Marseille "T") day not emitted
===========================================  ======================================  ==========================================

Numbers: values are read as :class:`decimal.Decimal` (from the source's integer string or JSON
number) and the arithmetic is exact; the result is given as a JSON number: an ``int`` when it is
integral, else the ``float`` nearest to the exact decimal (``42045 Wh`` → ``42.045``, whose
``repr`` is ``'42.045'``). Errors: :class:`ConversionError` (a ``ValueError``) names the position
of the offending record in the stream.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from . import _util as u
from . import ecolyo, enedis_mesures2026, enedis_v5, greenbutton_espi, grdf_adict_v2, water



@lru_cache(maxsize=1)
def _paris() -> ZoneInfo:
    """Europe/Paris (looked up on first use, so that importing this module needs no time-zone database)."""
    return ZoneInfo("Europe/Paris")


METERING_INTERVAL_READING_ID = "metering.interval_reading"


class ConversionError(ValueError):
    """A source record that the converter refuses (malformed, or not representable in the target without guessing).

    ``position`` is the 0-based index of the record in the stream (``None`` when the whole series is at fault).
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"record {position}: {message}")
        self.position = position


# --------------------------------------------------------------------------- converter machinery


class Stream:
    """One run of a :class:`Converter`: call :meth:`feed` (any number of times), then :meth:`finish` once.

    ``notes`` lists what the run did not emit or carried with a caveat, as
    ``{"position": int | None, "code": str, "message": str, ...}`` (codes: ``partial_period``,
    ``no_value``, ``provisional_day``, ``duplicate_day``, ``negative_value``).
    """

    def __init__(self, converter: Converter) -> None:
        self.converter = converter
        self.state: dict[str, Any] = {}
        self.notes: list[dict[str, Any]] = []
        self.position = 0
        self._finished = False

    def feed(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield the target records of ``records`` (source records, in stream order)."""
        if self._finished:
            raise ConversionError("stream already finished")
        for rec in records:
            if not isinstance(rec, dict):
                raise ConversionError(f"not a record: {type(rec).__name__}", self.position)
            yield from self.converter.step(rec, self)
            self.position += 1

    def finish(self) -> Iterator[dict[str, Any]]:
        """Yield the records that need the whole series (aggregations); nothing for record-by-record converters."""
        if self._finished:
            raise ConversionError("stream already finished")
        self._finished = True
        if self.converter.finish is not None:
            yield from self.converter.finish(self)

    def note(self, code: str, message: str, position: int | None = -1, **extra: Any) -> None:
        self.notes.append({"position": self.position if position == -1 else position, "code": code, "message": message, **extra})


@dataclass(frozen=True)
class Converter:
    """A conversion from dataset type ``source`` to ``target`` (ids of the catalogue), with its ``version``.

    ``step(record, stream)`` returns the target records of one source record (it may keep state in
    ``stream.state``); ``finish(stream)``, when set, returns the records that need the whole series.
    ``converter(records)`` runs both over an iterable and yields the target records.
    """

    source: str
    target: str
    version: int
    description: str
    step: Callable[[dict[str, Any], Stream], Iterable[dict[str, Any]]]
    finish: Callable[[Stream], Iterable[dict[str, Any]]] | None = None

    def stream(self) -> Stream:
        """A new run (fresh state): ``feed()`` chunks of source records, then ``finish()``."""
        return Stream(self)

    def __call__(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The target records of ``records`` (an iterable of source records), lazily."""
        s = self.stream()
        yield from s.feed(records)
        yield from s.finish()

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "version": self.version, "description": self.description}


# --------------------------------------------------------------------------- small helpers


def _decimal(value: Any, what: str, pos: int) -> Decimal:
    """The exact decimal of an integer/decimal string or a JSON number (bool and other types refused)."""
    if isinstance(value, bool) or value is None:
        raise ConversionError(f"{what} is {value!r}, not a number", pos)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConversionError(f"{what} is {value!r}, not a finite number", pos)
        return Decimal(repr(value))  # the shortest decimal that reads back as this float: 637.0 -> 637.0
    if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", value):
        raise ConversionError(f"{what} is {value!r}, not a decimal number", pos)
    try:
        return Decimal(value)
    except InvalidOperation as exc:  # pragma: no cover - the pattern above excludes it
        raise ConversionError(f"{what} is {value!r}, not a decimal number", pos) from exc


def json_number(d: Decimal) -> int | float:
    """``d`` as a JSON number: an ``int`` when integral, else the ``float`` nearest to the exact decimal."""
    if d == d.to_integral_value():
        return int(d)
    return float(d)


def _local(text: Any, what: str, pos: int) -> datetime:
    """A naive Europe/Paris wall-clock datetime from ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM:SS`` (local) or an ISO
    date-time with an offset (converted to Europe/Paris)."""
    if not isinstance(text, str):
        raise ConversionError(f"{what} is {text!r}, not a date", pos)
    candidate = text[:-1] + "+00:00" if text.endswith("Z") else text
    try:
        dt = datetime.fromisoformat(candidate)
    except ValueError as exc:
        raise ConversionError(f"{what}={text!r} is not a real date/time", pos) from exc
    if dt.tzinfo is not None:
        dt = dt.astimezone(_paris()).replace(tzinfo=None)
    return dt


def _doc(load: Decimal, *, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dict[str, Any]:
    return {"load": json_number(load), "minute": minute, "hour": hour, "day": day, "month": month, "year": year}


def _one_subject(stream: Stream, subject: Any, what: str) -> None:
    """Ecolyo documents name no meter: refuse a stream that mixes meters."""
    seen = stream.state.setdefault("subject", subject)
    if seen != subject:
        raise ConversionError(f"{what} {subject!r} differs from {seen!r} earlier in the stream: Ecolyo documents name no "
                              "meter, so several meters cannot be converted into one series", stream.position)


_PT_MINUTES = re.compile(r"^PT([0-9]+)M$")


def _interval_minutes(rec: dict[str, Any], pos: int) -> int:
    m = _PT_MINUTES.match(str(rec.get("interval_length")))
    if not m or int(m.group(1)) == 0:
        raise ConversionError(f"interval_length {rec.get('interval_length')!r} is not PT<n>M", pos)
    return int(m.group(1))


# --------------------------------------------------------------------------- Enedis v5 -> Ecolyo


def _enedis_day(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    if rec.get("unit") != "Wh":
        raise ConversionError(f"unit {rec.get('unit')!r}, expected 'Wh'", pos)
    _one_subject(s, rec.get("usage_point_id"), "usage_point_id")
    day = _local(rec.get("date"), "date", pos).date()
    wh = _decimal(rec.get("value"), "value", pos)
    # 42045 Wh -> 42.045 kWh: exact decimal division, then the nearest float.
    return [_doc(wh / 1000, year=day.year, month=day.month, day=day.day)]


def _enedis_minute(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    if rec.get("unit") != "W":
        raise ConversionError(f"unit {rec.get('unit')!r}, expected 'W'", pos)
    _one_subject(s, rec.get("usage_point_id"), "usage_point_id")
    end = _local(rec.get("date"), "date", pos)
    minutes = _interval_minutes(rec, pos)
    watts = _decimal(rec.get("value"), "value", pos)
    # average W over the interval × hours / 1000 = kWh; PT30M: 1344 W × 0.5 h / 1000 = 0.672 kWh.
    kwh = watts * minutes / 60 / 1000
    return [_doc(kwh, year=end.year, month=end.month, day=end.day, hour=end.hour, minute=end.minute)]


def _collect_day(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    if rec.get("unit") != "Wh":
        raise ConversionError(f"unit {rec.get('unit')!r}, expected 'Wh'", pos)
    _one_subject(s, rec.get("usage_point_id"), "usage_point_id")
    day = _local(rec.get("date"), "date", pos).date()
    wh = _decimal(rec.get("value"), "value", pos)
    days: dict[date, Decimal] = s.state.setdefault("days", {})
    dups: set[date] = s.state.setdefault("duplicates", set())
    if day in days:
        dups.add(day)
        s.note("duplicate_day", f"{day.isoformat()} appears twice: its period is not emitted")
        days[day] += wh
    else:
        days[day] = wh
    return []


def _periods(s: Stream, key: Callable[[date], tuple[int, ...]], length: Callable[[tuple[int, ...]], int],
             make: Callable[[Decimal, tuple[int, ...]], dict[str, Any]], label: Callable[[tuple[int, ...]], str]) -> list[dict[str, Any]]:
    days: dict[date, Decimal] = s.state.get("days", {})
    dups: set[date] = s.state.get("duplicates", set())
    groups: dict[tuple[int, ...], list[date]] = {}
    for d in days:
        groups.setdefault(key(d), []).append(d)
    out = []
    for k in sorted(groups):
        present = groups[k]
        expected = length(k)
        if len(present) != expected or any(d in dups for d in present):
            s.note("partial_period", f"{label(k)}: {len(present)} of {expected} days present"
                   + (" (a day is duplicated)" if any(d in dups for d in present) else "") + "; not emitted",
                   position=None, period=label(k), days_present=len(present), days_expected=expected)
            continue
        total_wh = sum((days[d] for d in present), Decimal(0))
        out.append(make(total_wh / 1000, k))
    return out


def _finish_months(s: Stream) -> list[dict[str, Any]]:
    return _periods(s, lambda d: (d.year, d.month), lambda k: calendar.monthrange(k[0], k[1])[1],
                    lambda kwh, k: _doc(kwh, year=k[0], month=k[1], day=0), lambda k: f"{k[0]:04d}-{k[1]:02d}")


def _finish_years(s: Stream) -> list[dict[str, Any]]:
    return _periods(s, lambda d: (d.year,), lambda k: 366 if calendar.isleap(k[0]) else 365,
                    lambda kwh, k: _doc(kwh, year=k[0], month=1, day=0), lambda k: f"{k[0]:04d}")


# --------------------------------------------------------------------------- Enedis 2026 -> Enedis v5

_PHYSICAL_TO_KIND = {"EA": "energy", "PA": "power"}  # énergie active / puissance active


def _v5_common(rec: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    if "quality" in rec:
        out["quality"] = rec["quality"]
    kind = _PHYSICAL_TO_KIND.get(rec.get("physical_quantity"))  # type: ignore[arg-type]
    if kind is not None:
        out["measurement_kind"] = kind
    return out


def _m2026_daily(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    if rec.get("unit") != "Wh" or rec.get("business_quantity") != "CONS":
        raise ConversionError(f"unit {rec.get('unit')!r} / grandeurMetier {rec.get('business_quantity')!r}, expected Wh / CONS", pos)
    if rec.get("measuring_period") != "P1D":
        raise ConversionError(f"measuring_period {rec.get('measuring_period')!r}, expected 'P1D'", pos)
    day = _local(rec.get("date"), "date", pos).date()
    out = {"usage_point_id": rec.get("usage_point_id"), "date": day.isoformat(), "value": rec.get("value"),
           "unit": "Wh", "measuring_period": "P1D"}
    return [_v5_common(rec, out)]


def _m2026_load_curve(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    if rec.get("unit") != "W" or rec.get("business_quantity") != "CONS":
        raise ConversionError(f"unit {rec.get('unit')!r} / grandeurMetier {rec.get('business_quantity')!r}, expected W / CONS", pos)
    _interval_minutes(rec, pos)
    end = _local(rec.get("date"), "date", pos)
    out: dict[str, Any] = {"usage_point_id": rec.get("usage_point_id"), "date": end.strftime("%Y-%m-%d %H:%M:%S"),
                           "value": rec.get("value"), "unit": "W", "interval_length": rec.get("interval_length")}
    if "measure_type" in rec:
        out["measure_type"] = rec["measure_type"]
    return [_v5_common(rec, out)]


# --------------------------------------------------------------------------- GRDF -> Ecolyo


def _gas_day(rec: dict[str, Any], pos: int) -> date:
    c = rec.get("consommation") or {}
    named = c.get("journee_gaziere")
    start, end = c.get("date_debut_consommation"), c.get("date_fin_consommation")
    derived: date | None = None
    if start is not None and end is not None:
        a, b = _local(start, "date_debut_consommation", pos), _local(end, "date_fin_consommation", pos)
        days = (b.date() - a.date()).days
        if (a.hour, a.minute, b.hour, b.minute) != (6, 0, 6, 0) or days != 1:
            raise ConversionError(f"consumption {start} .. {end} is not exactly one gas day (06:00 to 06:00 local): "
                                  f"a {days}-day total cannot be split into days without guessing", pos)
        derived = a.date()
    if named is not None:
        day = _local(named, "journee_gaziere", pos).date()
        if derived is not None and derived != day:
            raise ConversionError(f"journee_gaziere {named} disagrees with the consumption start {start}", pos)
        return day
    if derived is None:
        raise ConversionError("no journee_gaziere and no consumption start/end: the gas day is unknown", pos)
    return derived


def _grdf_day(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    _one_subject(s, u.get_path(rec, "pce.id_pce"), "pce.id_pce")
    day = _gas_day(rec, pos)
    energie = u.get_path(rec, "consommation.energie")
    if energie is None:
        s.note("no_value", f"gas day {day.isoformat()} has no energie: no document (missing, not zero)")
        return []
    return [_doc(_decimal(energie, "consommation.energie", pos), year=day.year, month=day.month, day=day.day)]


# --------------------------------------------------------------------------- Green Button -> metering.interval_reading

# ESPI ReadingType/uom (UnitSymbolKind, NAESB REQ.21 / IEC 61968-9 codes) -> (unit, quantity). Closed list:
# any other code is refused rather than guessed. 38 (W) is left out on purpose: a power is not a
# quantity accumulated over the interval.
ESPI_UOM: dict[str, tuple[str, str]] = {
    "42": ("m3", "volume"),
    "72": ("Wh", "energy"),
    "119": ("ft3", "volume"),
    "128": ("US_gal", "volume"),
    "169": ("therm", "energy"),
}

_UNITS = sorted({unit for unit, _ in ESPI_UOM.values()})

METERING_INTERVAL_READING: dict[str, Any] = {
    "id": METERING_INTERVAL_READING_ID,
    "version": 1,
    "title": "Metered quantity over an interval (normalised)",
    "description": "One record per metered interval: `value` is the quantity delivered over [start, start+duration), "
    "already scaled (a JSON number in `unit`; no multiplier left to apply). Units: `unit` is one of "
    + ", ".join(f"'{x}'" for x in _UNITS) + " ('US_gal' = US gallon, 3.785411784 L; 'therm' = 100 000 BTU); "
    "`quantity` says energy or volume. Time: `start` is an instant in UTC (ISO 8601, 'Z'), `duration` in seconds. "
    "`series` names the source series (Green Button: the MeterReading href); `flow_direction` is the source code "
    "when known (ESPI FlowDirectionKind, 1 = forward/delivered). From Green Button ESPI: value = value × "
    "10^powerOfTenMultiplier in the uom's unit (uom codes: 42 m3, 72 Wh, 119 ft3, 128 US gallon, 169 therm; any "
    "other code is refused); cost is not carried. Quirks: the public ESPI samples' ReadingType titles say 'kWh' for "
    "gas and water (ignored, uom is authoritative); the water sample's values are very large once scaled (27291 × "
    "10^3 US gallons in a month) and are carried as computed, not corrected.",
    "units": {"value": "unit", "duration": "s"},
    "schema": u.record_schema(
        {
            "value": {"type": "number"},
            "unit": {"enum": _UNITS},
            "quantity": {"enum": ["energy", "volume"]},
            "start": {"type": "string", "pattern": f"^{u.ISO_DATE}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}Z$"},
            "duration": {"type": "integer", "minimum": 0},
            "series": u.string(512),
            "flow_direction": {"type": "string", "pattern": "^[0-9]+$", "maxLength": 8},
        },
        ["value", "unit", "quantity", "start", "duration", "series"],
    ),
}


def _espi(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    uom = rec.get("uom")
    if uom not in ESPI_UOM:
        raise ConversionError(f"ESPI uom {uom!r} is not in the known table {sorted(ESPI_UOM, key=int)}; refused, not guessed", pos)
    acc = rec.get("accumulationBehaviour")
    if acc not in (None, "4"):
        raise ConversionError(f"accumulationBehaviour {acc!r} is not 4 (deltaData): the value is not a quantity over the interval", pos)
    unit, quantity = ESPI_UOM[uom]
    mult = rec.get("powerOfTenMultiplier")
    if not isinstance(mult, str) or not re.fullmatch(r"[+-]?[0-9]+", mult):
        raise ConversionError(f"powerOfTenMultiplier {mult!r} is not an integer", pos)
    value = _decimal(str(rec.get("value")).lstrip("+"), "value", pos).scaleb(int(mult))
    start = int(_decimal(str(rec.get("start")), "start", pos))
    duration = int(_decimal(str(rec.get("duration")), "duration", pos))
    out: dict[str, Any] = {
        "value": json_number(value),
        "unit": unit,
        "quantity": quantity,
        "start": datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration": duration,
        "series": rec.get("meter_reading_href"),
    }
    if rec.get("flowDirection") is not None:
        out["flow_direction"] = rec["flowDirection"]
    return [out]


# --------------------------------------------------------------------------- water -> Ecolyo


def _egl_day(rec: dict[str, Any], s: Stream) -> list[dict[str, Any]]:
    pos = s.position
    raw = rec.get("date")
    day = u.calendar_day(raw)
    if day is None:
        raise ConversionError(f"date {raw!r} is not a real day", pos)
    if rec.get("source") == water.SOURCE_MARSEILLE and rec.get("aggregate_type") == "T":
        s.note("provisional_day", f"{day.isoformat()} is a day in progress (TypeAgregat 'T'): its {rec.get('litres')!r} is not "
               "a measured value; no document")
        return []
    if rec.get("litres") is None:
        s.note("no_value", f"{day.isoformat()} has no litres: no document (missing, not zero)")
        return []
    litres = _decimal(rec.get("litres"), "litres", pos)
    seen: set[date] = s.state.setdefault("seen", set())
    if day in seen:
        s.note("duplicate_day", f"{day.isoformat()} appears again: both documents kept, as served")
    seen.add(day)
    if litres < 0:
        s.note("negative_value", f"{day.isoformat()}: {litres} L kept as served (probable meter change)")
    return [_doc(litres, year=day.year, month=day.month, day=day.day)]


# --------------------------------------------------------------------------- registry

_ALL = (
    Converter(enedis_v5.DAILY_ID, ecolyo.ENEDIS_DAY_ID, 1,
              "Enedis v5 daily Wh -> Ecolyo day kWh: load = Wh/1000 (exact decimal), day/month/year of `date`, hour 0, minute 0.",
              _enedis_day),
    Converter(enedis_v5.LOAD_CURVE_ID, ecolyo.ENEDIS_MINUTE_ID, 1,
              "Enedis v5 load curve (average W over the interval ENDING at `date`) -> Ecolyo minute kWh: load = W × interval "
              "minutes / 60 / 1000 (PT30M: W/2000); the time fields keep the END of the interval.",
              _enedis_minute),
    Converter(enedis_v5.DAILY_ID, ecolyo.ENEDIS_MONTH_ID, 1,
              "Enedis v5 daily Wh -> Ecolyo month kWh: sum of the days / 1000, emitted by finish() only for complete calendar "
              "months (every day present once); partial months are listed in the stream's notes.",
              _collect_day, _finish_months),
    Converter(enedis_v5.DAILY_ID, ecolyo.ENEDIS_YEAR_ID, 1,
              "Enedis v5 daily Wh -> Ecolyo year kWh: sum of the days / 1000, emitted by finish() only for complete calendar "
              "years; partial years are listed in the stream's notes.",
              _collect_day, _finish_years),
    Converter(enedis_mesures2026.DAILY_ID, enedis_v5.DAILY_ID, 1,
              "Enedis 2026 mesures daily -> v5 daily: same value (Wh string) and day; quality←etapeMetier, "
              "measurement_kind←grandeurPhysique (EA energy); no v5 `aggregate` (no 2026 equivalent); modeCalcul, "
              "typeValeur, grandeurMetier dropped.",
              _m2026_daily),
    Converter(enedis_mesures2026.LOAD_CURVE_ID, enedis_v5.LOAD_CURVE_ID, 1,
              "Enedis 2026 mesures load curve -> v5 load curve: same value (W string), end timestamp (an offset date is "
              "converted to Europe/Paris wall time), interval_length, measure_type, quality; measurement_kind←"
              "grandeurPhysique (PA power); no v5 `aggregate`; iv, ec, modeCalcul, grandeurMetier dropped.",
              _m2026_load_curve),
    Converter(grdf_adict_v2.INFORMATIVE_ID, ecolyo.GRDF_DAY_ID, 1,
              "GRDF informative daily -> Ecolyo gas day kWh: load = energie, dated by journee_gaziere (the gas day from "
              "06:00 local); a null energie gives no document (noted).",
              _grdf_day),
    Converter(grdf_adict_v2.PUBLISHED_ID, ecolyo.GRDF_DAY_ID, 1,
              "GRDF published consumption -> Ecolyo gas day kWh, only for a record covering exactly one gas day (06:00 to "
              "06:00 local); a multi-day total is refused (ConversionError), never spread over days.",
              _grdf_day),
    Converter(greenbutton_espi.INTERVAL_READING_ID, METERING_INTERVAL_READING_ID, 1,
              "Green Button ESPI IntervalReading -> normalised interval reading: value × 10^powerOfTenMultiplier in the "
              "uom's unit (42 m3, 72 Wh, 119 ft3, 128 US gallon, 169 therm; others refused), start as UTC ISO, duration s.",
              _espi),
    Converter(water.DAILY_ID, ecolyo.EGL_DAY_ID, 1,
              "Daily water litres -> Ecolyo water day (litres): load = litres, as served (negative and duplicated days "
              "kept and noted); a missing day stays missing; a provisional Marseille day ('T') gives no document (noted).",
              _egl_day),
)

CONVERTERS: dict[tuple[str, str], Converter] = {(c.source, c.target): c for c in _ALL}


def convert(source: str, target: str, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Convert ``records`` (an iterable of records of dataset type ``source``) into a list of ``target`` records.

    Raises ``KeyError`` when no converter goes from ``source`` to ``target`` and
    :class:`ConversionError` for a record the converter refuses (see the module's table).
    Notes of the run (partial periods, skipped provisional days) are dropped here; use
    ``CONVERTERS[(source, target)].stream()`` to read them.
    """
    try:
        converter = CONVERTERS[(source, target)]
    except KeyError:
        raise KeyError(f"no converter from {source!r} to {target!r}") from None
    return list(converter(records))


def find(source: str, accepted_targets: Iterable[str]) -> Converter | None:
    """The converter from ``source`` to the first of ``accepted_targets`` (the recipient's preference order) that has one.

    ``None`` when none has one. It does not check whether ``source`` itself is accepted (then no
    conversion is needed: the caller checks that first) and does not chain converters.
    """
    for target in accepted_targets:
        converter = CONVERTERS.get((source, target))
        if converter is not None:
            return converter
    return None


def dataset_types() -> dict[str, Any]:
    """The dataset types defined outside the registry for the converters' targets (Ecolyo, metering): ``{id: DatasetType}``."""
    from .registry import DatasetType

    return {**ecolyo.dataset_types(), METERING_INTERVAL_READING_ID: DatasetType(**METERING_INTERVAL_READING)}


def validator(dataset_id: str) -> Any:
    """A Draft 2020-12 validator (with format checker) for one record of ``dataset_id``, registry or converter target.

    Raises ``KeyError`` for an unknown id.
    """
    from jsonschema import Draft202012Validator

    from .registry import DATASET_TYPES

    types = {**dataset_types(), **DATASET_TYPES}
    schema = types[dataset_id].schema
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


__all__ = ["CONVERTERS", "ConversionError", "Converter", "ESPI_UOM", "METERING_INTERVAL_READING", "METERING_INTERVAL_READING_ID",
           "Stream", "convert", "dataset_types", "find", "json_number", "validator"]
