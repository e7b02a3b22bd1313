"""Green Button (NAESB ESPI, Atom+XML) interval readings, for electricity, gas and water alike.

Source format: an Atom ``feed`` whose ``entry``s hold ESPI resources linked by ``link`` hrefs::

    UsagePoint (ServiceCategory/kind: 0 electricity, 1 gas, 2 water)
      --related--> MeterReading --related--> ReadingType (uom, powerOfTenMultiplier, currency, ...)
                                --related--> IntervalBlock collection
    IntervalBlock entry (rel="up" = the MeterReading's IntervalBlock collection)
      IntervalBlock+ / IntervalReading+ {cost?, ReadingQuality*, timePeriod{duration, start}, value}
    LocalTimeParameters (tzOffset, dstOffset, dstStartRule, dstEndRule), related from the UsagePoint

One record per ``IntervalReading``, carrying its ``start``, ``duration``, ``value`` and ``cost``
plus every simple field of its ReadingType (``uom``, ``powerOfTenMultiplier``, ``commodity``,
``kind``, ``currency``, ...) under its ESPI name, the resolved hrefs and, when linked, the
LocalTimeParameters. **The multiplier is carried, never applied**: the quantity is
``value × 10^powerOfTenMultiplier`` in ``uom``. All values are the XML element text (integer
strings, surrounding whitespace stripped, which is insignificant in these XSD integer types).

Links are resolved strictly through the hrefs (no "only ReadingType in the file" guess). An
IntervalBlock whose MeterReading, ReadingType or UsagePoint cannot be resolved is refused
(``UnknownFormat``): a reading without its unit would be meaningless. A document type declaration
(``<!DOCTYPE``/``<!ENTITY``) is refused before parsing (no entity expansion).

Quirks in the public samples (accepted): the ReadingType entry titles say "Energy Delivered
(kWh)" even for gas (uom 169) and water (uom 128): titles are ignored, ``uom`` is authoritative;
ReadingType ``intervalLength`` (2678400 s) differs from the readings' own ``duration`` (partial
months, DST): the reading's ``duration`` is authoritative; the water sample's IntervalBlock self
href ends with a stray backtick (not used). ``ElectricPowerUsageSummary`` entries (billing
summaries) are not interval readings and are not read.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from . import _util as u

INTERVAL_READING_ID = "greenbutton.espi.interval_reading"

ATOM = "{http://www.w3.org/2005/Atom}"
ESPI = "{http://naesb.org/espi}"

_INT = {"type": "string", "pattern": "^[+-]?[0-9]+$", "maxLength": 24}
_HEX = {"type": "string", "pattern": "^[0-9A-Fa-f]+$", "maxLength": 16}
_READING_TYPE_FIELDS = ("accumulationBehaviour", "commodity", "consumptionTier", "cpp", "currency", "dataQualifier",
                        "defaultQuality", "flowDirection", "intervalLength", "kind", "phase", "powerOfTenMultiplier",
                        "timeAttribute", "tou", "uom", "measuringPeriod", "aggregate")
_LOCAL_TIME_FIELDS = {"tzOffset": _INT, "dstOffset": _INT, "dstStartRule": _HEX, "dstEndRule": _HEX}
_READING_EXTRA = {"consumptionTier": "interval_consumptionTier", "tou": "interval_tou", "cpp": "interval_cpp"}

INTERVAL_READING: dict[str, Any] = {
    "id": INTERVAL_READING_ID,
    "version": 1,
    "title": "Green Button (NAESB ESPI) interval reading",
    "description": "One record per ESPI IntervalReading (electricity, gas or water), with its ReadingType fields and "
    "resolved links carried along. Units: `value` is in `uom` (ESPI UnitSymbolKind code, e.g. 72 = Wh) scaled by "
    "10^`powerOfTenMultiplier`; the multiplier is carried, NEVER applied (value '2575', multiplier '3' means "
    "2575×10^3 uom). `cost` is in hundred-thousandths of `currency` (ISO 4217 numeric code, 840 = USD). "
    "`service_kind` is the UsagePoint ServiceCategory kind (0 electricity, 1 gas, 2 water). All values are the XML "
    "text as integer strings. Time: `start` is seconds since 1970-01-01T00:00:00Z (UTC), `duration` is in seconds; "
    "the reading covers [start, start+duration). `tzOffset`/`dstOffset` (seconds) and the DST rules come from the "
    "linked LocalTimeParameters and give the holder's local time; they are not applied to `start`. "
    "Quirks: ReadingType titles ('Energy Delivered (kWh)' on gas and water samples) are ignored, uom is "
    "authoritative (accepted); ReadingType `intervalLength` may differ from the reading's `duration`, which is "
    "authoritative (accepted); unresolvable links are refused (UnknownFormat). `quirks()` flags `interval_gap` and "
    "`interval_overlap` between consecutive readings of one MeterReading.",
    "units": {"value": "uom × 10^powerOfTenMultiplier", "cost": "1/100000 of currency", "start": "s since epoch (UTC)",
              "duration": "s"},
    "schema": u.record_schema(
        {
            "usage_point_href": u.string(512),
            "service_kind": _INT,
            "meter_reading_href": u.string(512),
            "meter_reading_title": u.string(256),
            "reading_type_href": u.string(512),
            "start": _INT,
            "duration": _INT,
            "value": _INT,
            "cost": _INT,
            "reading_quality": {"type": "array", "items": _INT},
            **{name: _INT for name in _READING_EXTRA.values()},
            **{name: _INT for name in _READING_TYPE_FIELDS},
            **_LOCAL_TIME_FIELDS,
        },
        ["usage_point_href", "service_kind", "meter_reading_href", "reading_type_href", "start", "duration", "value",
         "uom", "powerOfTenMultiplier"],
    ),
}


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _entries(root: ET.Element) -> list[dict[str, Any]]:
    out = []
    for entry in root.findall(f"{ATOM}entry"):
        links: dict[str, list[str]] = {}
        for link in entry.findall(f"{ATOM}link"):
            links.setdefault(link.get("rel", ""), []).append(link.get("href", ""))
        content = entry.find(f"{ATOM}content")
        resources = [c for c in content] if content is not None else []
        out.append({
            "self": (links.get("self") or [None])[0],
            "up": (links.get("up") or [None])[0],
            "related": links.get("related", []),
            "title": _text(entry.find(f"{ATOM}title")),
            "resources": resources,
        })
    return out


def _leaves(el: ET.Element, fields: tuple[str, ...] | dict[str, Any], path: Path) -> dict[str, str]:
    from .registry import UnknownFormat

    out: dict[str, str] = {}
    for child in el:
        name = child.tag.removeprefix(ESPI)
        if len(child):
            raise UnknownFormat(f"{path.name}: {el.tag.removeprefix(ESPI)}/{name} has sub-elements the catalogue does not read")
        if name in fields:
            out[name] = _text(child) or ""
    return out


def parse(doc: Any, path: Path) -> Any:
    """Records of a Green Button ESPI feed, or ``None`` if ``doc`` is not one."""
    from .registry import ParsedFile, UnknownFormat

    if not isinstance(doc, str) or "<feed" not in doc or "http://naesb.org/espi" not in doc:
        return None
    if "<!DOCTYPE" in doc or "<!ENTITY" in doc:
        raise UnknownFormat(f"{path.name}: XML with a document type declaration is refused")
    try:
        root = ET.fromstring(doc)
    except ET.ParseError as exc:
        raise UnknownFormat(f"{path.name}: not well-formed XML ({exc})") from exc
    if root.tag != f"{ATOM}feed":
        return None
    entries = _entries(root)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    blocks: list[dict[str, Any]] = []
    for e in entries:
        for res in e["resources"]:
            kind = res.tag.removeprefix(ESPI)
            if kind == "IntervalBlock":
                blocks.append({**e, "block": res})
            elif e["self"] is not None:
                by_kind.setdefault(kind, {})[e["self"]] = {**e, "resource": res}

    def one(kind: str, hrefs: list[str], what: str) -> dict[str, Any]:
        found = [by_kind.get(kind, {})[h] for h in hrefs if h in by_kind.get(kind, {})]
        if len(found) != 1:
            raise UnknownFormat(f"{path.name}: {what} resolves to {len(found)} {kind} entries")
        return found[0]

    records: list[dict[str, Any]] = []
    usage_points: set[str] = set()
    for b in blocks:
        meter_readings = [m for m in by_kind.get("MeterReading", {}).values()
                          if b["up"] in m["related"] or b["up"] == f"{m['self']}/IntervalBlock"]
        if len(meter_readings) != 1:
            raise UnknownFormat(f"{path.name}: IntervalBlock (up={b['up']!r}) resolves to {len(meter_readings)} MeterReading entries")
        mr = meter_readings[0]
        rt = one("ReadingType", mr["related"], f"MeterReading {mr['self']!r}")
        ups = [p for p in by_kind.get("UsagePoint", {}).values() if mr["up"] in p["related"] or mr["up"] == f"{p['self']}/MeterReading"]
        if len(ups) != 1:
            raise UnknownFormat(f"{path.name}: MeterReading {mr['self']!r} resolves to {len(ups)} UsagePoint entries")
        up = ups[0]
        usage_points.add(up["self"])
        ltp_hrefs = [h for h in up["related"] if h in by_kind.get("LocalTimeParameters", {})]
        ltp = _leaves(by_kind["LocalTimeParameters"][ltp_hrefs[0]]["resource"], _LOCAL_TIME_FIELDS, path) if len(ltp_hrefs) == 1 else {}
        reading_type = _leaves(rt["resource"], _READING_TYPE_FIELDS, path)
        base: dict[str, Any] = {
            "usage_point_href": up["self"],
            "service_kind": _text(up["resource"].find(f"{ESPI}ServiceCategory/{ESPI}kind")),
            "meter_reading_href": mr["self"],
        }
        if mr["title"]:
            base["meter_reading_title"] = mr["title"]
        base["reading_type_href"] = rt["self"]
        for reading in b["block"].findall(f"{ESPI}IntervalReading"):
            rec = dict(base)
            rec["start"] = _text(reading.find(f"{ESPI}timePeriod/{ESPI}start"))
            rec["duration"] = _text(reading.find(f"{ESPI}timePeriod/{ESPI}duration"))
            rec["value"] = _text(reading.find(f"{ESPI}value"))
            for child in reading:
                name = child.tag.removeprefix(ESPI)
                if name == "cost":
                    rec["cost"] = _text(child)
                elif name == "ReadingQuality":
                    rec.setdefault("reading_quality", []).append(_text(child.find(f"{ESPI}quality")))
                elif name in _READING_EXTRA:
                    rec[_READING_EXTRA[name]] = _text(child)
                elif name not in ("timePeriod", "value"):
                    raise UnknownFormat(f"{path.name}: IntervalReading/{name} is not read by the catalogue")
            rec.update(reading_type)
            rec.update(ltp)
            records.append(rec)
    if not records:
        return None
    return ParsedFile(dataset_id=INTERVAL_READING_ID, subject_key=usage_points.pop() if len(usage_points) == 1 else "", records=records)


def _intervals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    series: dict[Any, list[tuple[int, int, int]]] = {}
    for i, r in enumerate(records):
        s, d = u.as_number(r.get("start")), u.as_number(r.get("duration"))
        if isinstance(s, int) and isinstance(d, int):
            series.setdefault((r.get("usage_point_href"), r.get("meter_reading_href")), []).append((s, d, i))
    for items in series.values():
        items.sort()
        for (s0, d0, i0), (s1, _d1, i1) in zip(items, items[1:]):
            end = s0 + d0
            if s1 > end:
                out.append(u.quirk(i1, "interval_gap", "start", records[i1].get("start"),
                                   f"{s1 - end} s without reading after position {i0}; kept missing", related=[i0]))
            elif s1 < end:
                out.append(u.quirk(i1, "interval_overlap", "start", records[i1].get("start"),
                                   f"overlaps the reading at position {i0} by {end - s1} s; both kept", related=[i0]))
    return out


QUIRK_CHECKS = {INTERVAL_READING_ID: _intervals}
