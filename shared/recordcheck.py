"""Validation of records against their dataset type's JSON Schema, fast.

``jsonschema`` (Draft 2020-12, with its ``FormatChecker``) is the authority, but at about
200 µs a record it would dominate a transfer. So each schema is also compiled to Python with
``fastjsonschema``, using the very same format checkers, and a record is first checked by the
compiled function; only a record it rejects goes through ``jsonschema``, which gives the precise
error (and has the last word). No schema may load anything from outside: both validators refuse
remote references (the registry already refuses them at registration).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry


@dataclass(frozen=True)
class RecordError:
    """The first record that breaks the schema: its ``index`` in the list given, the message and the JSON path."""

    index: int
    message: str
    path: str


def _no_remote(uri: str) -> Any:
    raise ValueError(f"schemas may not refer to {uri}")


class RecordChecker:
    def __init__(self, schema: dict[str, Any]) -> None:
        checker = FormatChecker()
        self._authority = Draft202012Validator(schema, format_checker=checker, registry=Registry())
        formats: dict[str, Callable[[Any], bool]] = {name: (lambda value, name=name: checker.conforms(value, name)) for name in checker.checkers}
        try:
            self._fast: Callable[[Any], Any] | None = fastjsonschema.compile(
                schema, handlers={"http": _no_remote, "https": _no_remote, "file": _no_remote}, formats=formats, use_default=False)
        except Exception:  # a schema the compiler does not support: jsonschema alone
            self._fast = None

    def first_error(self, records: Iterable[Any]) -> RecordError | None:
        """The first invalid record of ``records``, or None when all are valid."""
        for i, record in enumerate(records):
            if self._fast is not None:
                try:
                    self._fast(record)
                    continue
                except fastjsonschema.JsonSchemaException:
                    pass
            err = next(iter(self._authority.iter_errors(record)), None)
            if err is not None:
                return RecordError(i, err.message, "/" + "/".join(map(str, err.absolute_path)))
        return None


@lru_cache(maxsize=64)
def _cached(schema_json: str) -> RecordChecker:
    return RecordChecker(json.loads(schema_json))


def checker_for(schema: dict[str, Any]) -> RecordChecker:
    """A (cached) checker for ``schema``."""
    return _cached(json.dumps(schema, sort_keys=True))
