"""Dataset types and the parsers that read real-format files into their records."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bills, converters, ecolyo, enedis_mesures2026, enedis_v5, enedis_v5_customers, greenbutton_espi, grdf_adict_v2, maif, orange_mesinfos, water
from ._util import by_position, control_characters, daily_series, invalid_dates


class UnknownFormat(ValueError):
    """The file is not in any format the catalogue can read, or is in one but refused (see the type's quirks)."""


@dataclass(frozen=True)
class DatasetType:
    """A dataset type: ``id``, ``version``, ``title``, ``description`` (units, time conventions), record ``schema``."""

    id: str
    version: int
    title: str
    description: str
    schema: dict[str, Any]
    units: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "schema": self.schema,
            "units": self.units,
        }


@dataclass(frozen=True)
class ParsedFile:
    """Records read from one file: their ``dataset_id``, the ``subject_key`` (meter, contract...) they belong to."""

    dataset_id: str
    subject_key: str
    records: list[dict[str, Any]]


DATASET_TYPES: dict[str, DatasetType] = {
    t.id: t
    for t in (
        DatasetType(**enedis_v5.DAILY_CONSUMPTION),
        DatasetType(**enedis_v5.LOAD_CURVE),
        DatasetType(**enedis_mesures2026.DAILY_CONSUMPTION),
        DatasetType(**enedis_mesures2026.LOAD_CURVE),
        DatasetType(**enedis_v5_customers.CUSTOMER_CONTRACT),
        DatasetType(**enedis_v5_customers.CUSTOMER_ADDRESS),
        DatasetType(**grdf_adict_v2.PUBLISHED),
        DatasetType(**grdf_adict_v2.INFORMATIVE),
        DatasetType(**greenbutton_espi.INTERVAL_READING),
        DatasetType(**water.DAILY_LITRES),
        DatasetType(**water.MONTHLY_M3),
        DatasetType(**water.PAYMENT_SCHEDULE),
        DatasetType(**orange_mesinfos.GEOPOINT),
        DatasetType(**orange_mesinfos.CALL_LOG),
        DatasetType(**orange_mesinfos.VIDEOSTREAM),
        DatasetType(**maif.CONTRACT),
        DatasetType(**maif.HOME),
        DatasetType(**maif.FOYER),
        DatasetType(**maif.SOCIETAIRE),
        DatasetType(**maif.PAYMENT_TERMS),
        DatasetType(**maif.CLAIM),
        DatasetType(**maif.IDENTITY),
        DatasetType(**bills.BILLS),
        *(DatasetType(**t) for t in ecolyo.ALL),
        DatasetType(**converters.METERING_INTERVAL_READING),
    )
}

# Each parser returns a ParsedFile or None when the document is not its format (a parser may raise
# UnknownFormat when the document is its format but is refused, e.g. a malformed CSV row).
# A file that holds no subject identifier (water CSV exports, bill lists) has subject_key "".
PARSERS: list[Callable[[Any, Path], ParsedFile | None]] = [
    enedis_v5.parse,
    enedis_mesures2026.parse,
    enedis_v5_customers.parse,
    grdf_adict_v2.parse,
    greenbutton_espi.parse,
    water.parse,
    orange_mesinfos.parse,
    maif.parse,
    bills.parse,
]


def _enedis_v5_daily_quirks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return daily_series(records, lambda r: r.get("date"), lambda r: r.get("value"), "date", "value")


def _enedis_v5_load_curve_quirks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return invalid_dates(records, ["date"])


# dataset id -> function(records) -> quirk reports (see ``quirks``)
QUIRK_CHECKS: dict[str, Callable[[list[dict[str, Any]]], list[dict[str, Any]]]] = {
    enedis_v5.DAILY_ID: _enedis_v5_daily_quirks,
    enedis_v5.LOAD_CURVE_ID: _enedis_v5_load_curve_quirks,
    **enedis_mesures2026.QUIRK_CHECKS,
    **enedis_v5_customers.QUIRK_CHECKS,
    **grdf_adict_v2.QUIRK_CHECKS,
    **greenbutton_espi.QUIRK_CHECKS,
    **water.QUIRK_CHECKS,
    **orange_mesinfos.QUIRK_CHECKS,
    **maif.QUIRK_CHECKS,
    **bills.QUIRK_CHECKS,
}


def get_dataset_type(dataset_id: str) -> DatasetType:
    """The dataset type ``dataset_id``; raises ``KeyError`` if the catalogue has none."""
    return DATASET_TYPES[dataset_id]


def quirks(dataset_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The quirks flagged in ``records`` (of dataset type ``dataset_id``), ordered by record position.

    Each report is ``{"position": int, "code": str, "field": str | None, "value": ..., "message": str}``
    (plus ``missing`` for ``missing_day``, ``related`` for quirks involving other positions).
    Flagging never changes a record: the documented policy of each dataset type says whether a quirk
    is accepted as is, flagged here, or refused by the parser. Codes: ``invalid_date``,
    ``missing_day``, ``duplicate_date``, ``negative_value``, ``compensating_jump``,
    ``provisional_day``, ``duplicate_month``, ``interval_gap``, ``interval_overlap``,
    ``invalid_postcode``, ``invalid_iban``, ``unexpanded_template``, ``incomplete_bill``,
    ``duplicate_id``, ``negative_amount``, and for every type ``control_character`` (a C0/C1
    control character in a string, e.g. a mis-decoded '€'). Raises ``KeyError`` for an unknown dataset id.
    """
    get_dataset_type(dataset_id)
    check = QUIRK_CHECKS.get(dataset_id)
    found = check(records) if check else []
    return by_position(found + control_characters(records))


def validator(dataset_id: str) -> Any:
    """A Draft 2020-12 validator of one record of ``dataset_id``, with jsonschema's format checker.

    The schemas use ``format`` only where every real record is valid (``date``); calendar checks
    of timestamps are in :func:`quirks`, so that accepted quirk records are not rejected here.
    """
    from jsonschema import Draft202012Validator

    schema = get_dataset_type(dataset_id).schema
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def parse_file(path: str | Path) -> ParsedFile:
    """Read a real-format file into records. Raises :class:`UnknownFormat` if no parser reads it."""
    p = Path(path)
    text = p.read_text("utf-8")
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError:
        doc = text
    for parser in PARSERS:
        parsed = parser(doc, p)
        if parsed is not None:
            return parsed
    raise UnknownFormat(f"{p.name}: not a format the catalogue reads")
