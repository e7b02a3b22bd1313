"""Dataset types and the parsers that read real-format files into their records."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import enedis_v5


class UnknownFormat(ValueError):
    """The file is not in any format the catalogue can read."""


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
    )
}

# Each parser returns a ParsedFile or None when the document is not its format.
PARSERS: list[Callable[[Any, Path], ParsedFile | None]] = [enedis_v5.parse]


def get_dataset_type(dataset_id: str) -> DatasetType:
    """The dataset type ``dataset_id``; raises ``KeyError`` if the catalogue has none."""
    return DATASET_TYPES[dataset_id]


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
