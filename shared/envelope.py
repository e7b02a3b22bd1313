"""The message envelope every NATS message of the broker carries.

Shape (JSON Schema ``shared/schemas/envelope.json``)::

    {"id": str, "type": str, "time": RFC 3339 str, "correlation_id": str, "data": {...}}

``data`` is validated against the schema for ``type``: ``shared/schemas/<type>.json`` for
questions and jobs, ``event.json`` for any ``*.events.*`` type, ``reply.json`` for replies.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from .errors import InvalidInput

MAX_MESSAGE_BYTES = 1024 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")  # JSON may escape a UTF-16 surrogate alone: not Unicode text


@lru_cache(maxsize=256)  # bounded: message types come from outside
def schema_name_for(msg_type: str) -> str:
    """Which schema file checks the ``data`` of a message of type ``msg_type``."""
    if ".events." in msg_type:
        return "event"
    if resources.files("shared.schemas").joinpath(f"{msg_type}.json").is_file():
        return msg_type
    raise InvalidInput(f"unknown message type {msg_type!r}")


@cache
def _validator(name: str) -> Draft202012Validator:
    text = resources.files("shared.schemas").joinpath(f"{name}.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text), format_checker=FormatChecker())


def new_id() -> str:
    return uuid.uuid4().hex


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def make(msg_type: str, data: dict[str, Any], *, correlation_id: str | None = None, msg_id: str | None = None,
         check: bool = True) -> dict[str, Any]:
    """Build an envelope, checked unless ``check`` is false (replies built from our own results).
    Raises :class:`InvalidInput` if ``data`` breaks its schema."""
    env = {
        "id": msg_id or new_id(),
        "type": msg_type,
        "time": now_iso(),
        "correlation_id": correlation_id or new_id(),
        "data": data,
    }
    if check:
        validate(env)
    return env


def encode(env: dict[str, Any]) -> bytes:
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _brief(detail: str, limit: int = 500) -> str:
    """A schema error quotes the offending value, which may be as long as the message: the error replies, logs
    and dead letters keep its start (a reply as long as a 1 MiB question would not fit in a NATS message)."""
    return detail if len(detail) <= limit else f"{detail[:limit]}... ({len(detail)} characters)"


def validate(env: Any, *, expected_type: str | None = None) -> dict[str, Any]:
    """Check an envelope and its data. Returns it; raises :class:`InvalidInput` with the first error."""
    outer = _validator("envelope")
    if not outer.is_valid(env):  # the fast path; the error walk only for what is invalid
        err = next(iter(outer.iter_errors(env)))
        raise InvalidInput(_brief(f"envelope: {err.message} at /{'/'.join(map(str, err.absolute_path))}"))
    if expected_type is not None and env["type"] != expected_type:
        raise InvalidInput(f"expected a message of type {expected_type!r}, got {env['type']!r}")
    inner = _validator(schema_name_for(env["type"]))
    if not inner.is_valid(env["data"]):
        err = next(iter(inner.iter_errors(env["data"])))
        raise InvalidInput(_brief(f"data: {err.message} at /{'/'.join(map(str, err.absolute_path))}"))
    return env


def decode(payload: bytes, *, expected_type: str | None = None) -> dict[str, Any]:
    """Parse and validate a message body. Raises :class:`InvalidInput` on anything malformed."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise InvalidInput(f"message of {len(payload)} bytes is over the {MAX_MESSAGE_BYTES} byte limit")
    try:
        env = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"not a JSON message: {exc}") from None
    except (RecursionError, ValueError, MemoryError) as exc:  # absurd nesting, 5000-digit integers
        raise InvalidInput(f"not an acceptable JSON message: {type(exc).__name__}") from None
    if _SURROGATE_ESCAPE.search(payload):  # rare: only then look for a lone surrogate (a pair decodes to one character)
        try:
            json.dumps(env, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput("not a JSON message: a string holds a lone UTF-16 surrogate") from None
    try:
        return validate(env, expected_type=expected_type)
    except InvalidInput:
        raise
    except (RecursionError, ValueError, TypeError) as exc:  # a validator choking on a pathological value
        raise InvalidInput(f"message cannot be validated: {type(exc).__name__}") from None
