"""Enedis Data Connect v5 ``customers`` API: usage point contracts and addresses.

Source format (``customers/usage_points/contracts`` and ``.../addresses``)::

    {"customer": {"customer_id": str, "usage_points": [
        {"usage_point": {"usage_point_id", "usage_point_status", "meter_type",
                         "usage_point_addresses"?: {...}},
         "contracts"?: {"segment", "subscribed_power", "last_activation_date", ...}}]}}

One record per ``usage_points`` item: the item unchanged, with the ``customer_id`` carried
along so that the record is self-describing. The ``contracts`` answer gives
``enedis.v5.customer_contract`` records, the ``addresses`` answer gives
``enedis.v5.customer_address`` records; an item with both or neither is refused.

Quirks (accepted, kept verbatim): ``customer_id`` is a negative number in a string
(``"-123456789"``); contract dates are ``xsd:date`` with an offset (``"2006-05-24+02:00"``);
``subscribed_power`` is a label with its unit (``"9 kVA"``); ``geo_points`` may be ``{}``;
``locality`` may be ``null``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _util as u

CONTRACT_ID = "enedis.v5.customer_contract"
ADDRESS_ID = "enedis.v5.customer_address"

_XSD_DATE = {"type": "string", "pattern": f"^{u.ISO_DATE}{u.ISO_OFFSET}?$"}
_S = u.string
_NS = lambda n=256: u.nullable(u.string(n))  # noqa: E731

_USAGE_POINT = {
    "usage_point_id": {"type": "string", "pattern": "^[0-9]{14}$|^[0-9]{11}$"},
    "usage_point_status": _S(32),
    "meter_type": _S(32),
}
_ADDRESS = u.obj({
    "street": _NS(), "locality": _NS(), "postal_code": _NS(16), "insee_code": _NS(16), "city": _NS(),
    "country": _NS(64), "geo_points": {"type": "object"},
})
_CONTRACTS = u.obj({
    "segment": _S(16), "subscribed_power": _S(32), "last_activation_date": _XSD_DATE,
    "distribution_tariff": _S(64), "offpeak_hours": _S(256), "contract_status": _S(32),
    "last_distribution_tariff_change_date": _XSD_DATE,
})
_CUSTOMER_ID = {"type": "string", "pattern": "^-?[0-9]+$", "maxLength": 32}

_QUIRKS = ("Quirks (accepted, kept verbatim): `customer_id` is a negative number in a string; dates are xsd:date with an "
           "offset ('2006-05-24+02:00'); `subscribed_power` keeps its unit in the label ('9 kVA'); empty `geo_points` "
           "and null fields are kept. `quirks()` flags only `invalid_date`.")

CUSTOMER_CONTRACT: dict[str, Any] = {
    "id": CONTRACT_ID,
    "version": 1,
    "title": "Enedis usage point contract (Data Connect v5 customers)",
    "description": "One record per `customer.usage_points[]` item of a `customers/usage_points/contracts` answer: "
    "{customer_id, usage_point{usage_point_id, usage_point_status, meter_type}, contracts{...}} unchanged. "
    "Units: `subscribed_power` is a label such as '9 kVA' (kVA); `offpeak_hours` lists local-time ranges "
    "('HC (1H30-8H00;12H30-14H00)'). Time: `last_activation_date` and `last_distribution_tariff_change_date` are "
    "calendar days with their UTC offset (French local time). " + _QUIRKS,
    "units": {"contracts.subscribed_power": "kVA (in the label)"},
    "schema": u.record_schema(
        {"customer_id": _CUSTOMER_ID, "usage_point": u.obj(_USAGE_POINT, ["usage_point_id"]), "contracts": _CONTRACTS},
        ["customer_id", "usage_point", "contracts"],
    ),
}

CUSTOMER_ADDRESS: dict[str, Any] = {
    "id": ADDRESS_ID,
    "version": 1,
    "title": "Enedis usage point address (Data Connect v5 customers)",
    "description": "One record per `customer.usage_points[]` item of a `customers/usage_points/addresses` answer: "
    "{customer_id, usage_point{usage_point_id, usage_point_status, meter_type, usage_point_addresses{street, "
    "locality, postal_code, insee_code, city, country, geo_points}}} unchanged. Units: none (postal data; "
    "`geo_points` WGS84 when present). Time: none (no time field). " + _QUIRKS,
    "units": {},
    "schema": u.record_schema(
        {"customer_id": _CUSTOMER_ID,
         "usage_point": u.obj({**_USAGE_POINT, "usage_point_addresses": _ADDRESS}, ["usage_point_id", "usage_point_addresses"])},
        ["customer_id", "usage_point"],
    ),
}


def parse(doc: Any, path: Path) -> Any:
    """Records of an Enedis v5 customers answer, or ``None`` if ``doc`` is not one."""
    from .registry import ParsedFile, UnknownFormat

    if not isinstance(doc, dict) or not isinstance(doc.get("customer"), dict):
        return None
    cust = doc["customer"]
    items = cust.get("usage_points")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) and isinstance(i.get("usage_point"), dict) for i in items):
        return None
    kinds = set()
    for item in items:
        has_contract = "contracts" in item
        has_address = "usage_point_addresses" in item["usage_point"]
        if has_contract == has_address:
            raise UnknownFormat(f"{path.name}: a usage point with both or neither contracts and addresses")
        kinds.add(CONTRACT_ID if has_contract else ADDRESS_ID)
    if len(kinds) != 1:
        raise UnknownFormat(f"{path.name}: contracts and addresses mixed in one answer")
    records = [{"customer_id": cust.get("customer_id"), **item} for item in items]
    ids = {r["usage_point"].get("usage_point_id") for r in records}
    return ParsedFile(dataset_id=kinds.pop(), subject_key=str(ids.pop()) if len(ids) == 1 else "", records=records)


def _dates(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return u.invalid_dates(records, ["contracts.last_activation_date", "contracts.last_distribution_tariff_change_date"])


QUIRK_CHECKS = {CONTRACT_ID: _dates, ADDRESS_ID: lambda records: []}
