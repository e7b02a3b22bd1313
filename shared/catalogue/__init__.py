"""The dataset catalogue: dataset types (one JSON Schema per record) and real-format parsers.

A *dataset type* has a stable id (``enedis.v5.daily_consumption``), a version, a JSON
Schema for one record, and documentation of its units and time conventions. A *parser*
turns a holder's real-format file into the records of one dataset type, without changing
any value (values keep the type and spelling of the source).
"""

from __future__ import annotations

from .registry import DATASET_TYPES, DatasetType, ParsedFile, UnknownFormat, get_dataset_type, parse_file, quirks, validator
from .windows import has_days, in_window, record_day

__all__ = ["DATASET_TYPES", "DatasetType", "ParsedFile", "UnknownFormat", "get_dataset_type", "has_days", "in_window", "parse_file",
           "quirks", "record_day", "validator"]
