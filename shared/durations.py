"""ISO 8601 durations, as used for the frequency of recurring consents."""

from __future__ import annotations

import re

from .errors import InvalidInput

_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def duration_seconds(value: str) -> int:
    """Seconds of an ISO 8601 duration of days, hours, minutes and seconds (``P1D``, ``PT30M``, ``P1DT2H``).

    Raises :class:`InvalidInput` for anything else (weeks, months and years have no fixed length).
    """
    m = _DURATION.fullmatch(value)
    if not m or value in ("P", "PT") or value.endswith("T"):
        raise InvalidInput(f"not an ISO 8601 duration of days, hours, minutes and seconds: {value!r}")
    d, h, mi, se = (int(x or 0) for x in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + se
