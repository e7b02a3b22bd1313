"""Canonical JSON (RFC 8785, JCS) and the record digest used in transfer manifests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import rfc8785


CanonicalizationError = rfc8785.CanonicalizationError  # a value RFC 8785 cannot write: NaN, infinities, integers beyond 2**53


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON bytes of ``obj`` (UTF-8, sorted keys, no whitespace).
    Raises :data:`CanonicalizationError` (a ValueError) for NaN, infinities and integers beyond +-(2**53 - 1)."""
    return rfc8785.dumps(obj)


class RecordDigest:
    """SHA-256 over records in order, each as RFC 8785 canonical JSON followed by ``\\n``.

    This is the ``sha256`` of a transfer manifest and of the demo summary: the digest of
    the file that has one canonical record per line.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0
        self.bytes = 0

    def update(self, records: Iterable[Any]) -> None:
        """Add ``records`` in order. Raises what :func:`canonical` raises (rfc8785: a NaN, an integer beyond 2**53...)."""
        self.update_canonical(canonical(record) for record in records)

    def update_canonical(self, texts: Iterable[bytes]) -> None:
        """Add records already made canonical (:func:`canonical` bytes, without the ``\\n``), in order."""
        for text in texts:
            line = text + b"\n"
            self._h.update(line)
            self.count += 1
            self.bytes += len(line)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def records_digest(records: Iterable[Any]) -> str:
    """Hex SHA-256 of ``records`` as defined by :class:`RecordDigest`."""
    d = RecordDigest()
    d.update(records)
    return d.hexdigest()
