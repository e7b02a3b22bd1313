"""Orange data of the MesInfos pilot (Cozy documents written by the Orange konnector).

Three doctypes, each file a JSON list of Cozy documents, one record per document, unchanged:

- ``fr.orange.geopoint`` → ``orange.geopoint``: ``{docType, docTypeVersion, msisdn, timestamp,
  latitude, longitude, radius}`` (the API's ``loc: [lon, lat]`` was already split by the konnector);
- ``fr.orange.phonecommunicationlog`` → ``orange.phone_communication_log`` (calls and SMS, "CRA");
- ``fr.orange.videostream`` → ``orange.videostream`` (Orange TV VOD/IPTV orders and viewings).

A list mixing doctypes, or holding a document without ``docType``, is not read by these parsers.

Quirks and decisions:

- **a date that does not exist**: 26 geopoints are dated ``2016-09-31T..`` (synthetic data).
  The record is *accepted* and its ``timestamp`` string kept as is (no silent fix such as
  2016-10-01). The schema checks the timestamp's *shape* only (pattern, no ``format``), so every
  record validates, with or without a FormatChecker; the calendar check is ``quirks()``, which
  flags each of them as ``invalid_date``. (``format: date-time`` was not used: jsonschema checks
  it only when the optional rfc3339-validator package is installed, so validation would depend on
  the environment.)
- voicemail call records have no ``latitude``/``longitude``: the fields stay absent (accepted,
  never 0.0);
- ``length`` is in the unit of ``chipType`` (``s`` seconds, ``M`` messages): both carried;
- VOD ``timestamp``s are not in chronological order (kept in file order); ``price`` is 0 for
  subscription VOD; ``viewingDuration`` appears only on the ``Visualisation`` event, its unit is
  not stated (probably seconds) and it exceeds the content ``duration`` (kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _util as u

GEOPOINT_ID = "orange.geopoint"
CALL_LOG_ID = "orange.phone_communication_log"
VIDEOSTREAM_ID = "orange.videostream"

_DOCTYPES = {"fr.orange.geopoint": GEOPOINT_ID, "fr.orange.phonecommunicationlog": CALL_LOG_ID,
             "fr.orange.videostream": VIDEOSTREAM_ID}

# Shape only: a real calendar date is checked by quirks() (the source has 2016-09-31).
_UTC_TS = {"type": "string", "pattern": f"^{u.ISO_DATE}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\\.[0-9]+)?Z$"}
_MSISDN = {"type": "string", "pattern": "^\\+?[0-9]{6,15}$"}
_LAT = {"type": "number", "minimum": -90, "maximum": 90}
_LON = {"type": "number", "minimum": -180, "maximum": 180}
_S = u.string
_NS = lambda n=256: u.nullable(u.string(n))  # noqa: E731
_TS_RULE = ("`timestamp` is ISO 8601 UTC (Z); its shape is checked by the schema (pattern, no `format`) and its "
            "calendar validity by `quirks()` (`invalid_date`)")

GEOPOINT: dict[str, Any] = {
    "id": GEOPOINT_ID,
    "version": 1,
    "title": "Orange mobile geolocation point (MesInfos)",
    "description": "One record per `fr.orange.geopoint` Cozy document, unchanged: the network-estimated position of "
    "the line `msisdn`. Units: `latitude`/`longitude` in decimal degrees (WGS84); `radius` is the accuracy radius, "
    "unit not stated by the source (probably metres). Time: " + _TS_RULE + "; points come about every 30 minutes. "
    "Quirks: a date that does not exist (26 points dated '2016-09-31' in the MesInfos sample) is ACCEPTED and kept "
    "verbatim (no silent fix), and FLAGGED by `quirks()` as `invalid_date`; the schema validates it (with or without "
    "FormatChecker) because the timestamp has no `format` keyword.",
    "units": {"latitude": "degree (WGS84)", "longitude": "degree (WGS84)", "radius": "unstated (probably m)"},
    "schema": u.record_schema(
        {"_id": _S(64), "docType": {"const": "fr.orange.geopoint"}, "docTypeVersion": _S(64), "msisdn": _MSISDN,
         "timestamp": _UTC_TS, "latitude": _LAT, "longitude": _LON, "radius": {"type": "number", "minimum": 0}},
        ["docType", "msisdn", "timestamp", "latitude", "longitude"],
    ),
}

CALL_LOG: dict[str, Any] = {
    "id": CALL_LOG_ID,
    "version": 1,
    "title": "Orange call and SMS log (MesInfos CRA)",
    "description": "One record per `fr.orange.phonecommunicationlog` Cozy document, unchanged: a call or SMS of the "
    "line `msisdn` with `partner`. Units: `length` is in the unit named by `chipType` ('s' = seconds of call, "
    "'M' = number of messages); `latitude`/`longitude` are the cell position in decimal degrees (WGS84). `type` is a "
    "French label ('appel sortant', 'SMS entrant', 'appel entrant renvoyé - vers la boite vocale'); `endCause` "
    "'0' normal, '255' for SMS. Time: " + _TS_RULE + ". Quirks: voicemail records have no position: the fields stay "
    "absent, never 0 (accepted).",
    "units": {"length": "chipType (s | M)", "latitude": "degree (WGS84)", "longitude": "degree (WGS84)"},
    "schema": u.record_schema(
        {"_id": _S(64), "docType": {"const": "fr.orange.phonecommunicationlog"}, "docTypeVersion": _S(64),
         "timestamp": _UTC_TS, "msisdn": _MSISDN, "partner": _S(32), "length": {"type": "number", "minimum": 0},
         "chipType": _S(8), "type": _S(128), "latitude": _LAT, "longitude": _LON, "networkType": _S(16),
         "endCause": _S(16)},
        ["docType", "timestamp", "msisdn", "length", "chipType", "type"],
        dependentRequired={"latitude": ["longitude"], "longitude": ["latitude"]},
    ),
}

VIDEOSTREAM: dict[str, Any] = {
    "id": VIDEOSTREAM_ID,
    "version": 1,
    "title": "Orange TV VOD/IPTV event (MesInfos)",
    "description": "One record per `fr.orange.videostream` Cozy document, unchanged: an order ('Commande') or "
    "viewing ('Visualisation') of a content by the TV client `clientId`. Units: `price` in EUR incl. tax (0 for "
    "subscription VOD); `content.duration` in seconds; `viewingDuration` unit not stated (probably seconds); "
    "`content.publicationYear` a year. Time: " + _TS_RULE + ". Quirks (accepted, kept in file order and verbatim): "
    "events are not chronological; `viewingDuration` (only on 'Visualisation') exceeds the content duration; "
    "`subTitle`/`quality` may be null.",
    "units": {"price": "EUR", "content.duration": "s", "viewingDuration": "unstated (probably s)"},
    "schema": u.record_schema(
        {"_id": _S(64), "docType": {"const": "fr.orange.videostream"}, "docTypeVersion": _S(64),
         "timestamp": _UTC_TS, "action": _S(64), "clientId": _S(32), "price": {"type": "number", "minimum": 0},
         "viewingDuration": {"type": "number", "minimum": 0},
         "content": u.obj({"type": _S(32), "title": _S(512), "subTitle": _NS(512), "duration": {"type": "number", "minimum": 0},
                           "quality": _NS(16), "publicationYear": u.nullable({"type": "integer"}), "country": _NS(16),
                           "id": _S(64), "longId": _S(128), "csaCode": u.nullable({"type": "integer"})},
                          ["type", "title", "id"]),
         "details": u.obj({k: _NS() for k in ("offer", "offerName", "service", "network", "techno", "device", "platform")})},
        ["docType", "timestamp", "action", "content", "price"],
    ),
}


def parse(doc: Any, path: Path) -> Any:
    """Records of a list of Orange MesInfos documents of one doctype, or ``None``."""
    from .registry import ParsedFile

    if not isinstance(doc, list) or not doc or not all(isinstance(x, dict) for x in doc):
        return None
    doctypes = {x.get("docType") for x in doc}
    if len(doctypes) != 1 or next(iter(doctypes)) not in _DOCTYPES:
        return None
    dataset_id = _DOCTYPES[doctypes.pop()]
    key = "clientId" if dataset_id == VIDEOSTREAM_ID else "msisdn"
    subjects = {x.get(key) for x in doc}
    return ParsedFile(dataset_id=dataset_id, subject_key=str(subjects.pop()) if len(subjects) == 1 else "", records=list(doc))


QUIRK_CHECKS = {
    GEOPOINT_ID: lambda records: u.invalid_dates(records, ["timestamp"]),
    CALL_LOG_ID: lambda records: u.invalid_dates(records, ["timestamp"]),
    VIDEOSTREAM_ID: lambda records: u.invalid_dates(records, ["timestamp"]),
}
