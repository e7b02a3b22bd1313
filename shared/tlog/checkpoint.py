"""C2SP tlog-checkpoint note bodies (https://c2sp.org/tlog-checkpoint).

Body layout (every line ends in LF)::

    <origin>
    <tree size, ASCII decimal, no leading zeros>
    <base64 of the 32-byte RFC 6962/9162 root hash>
    [<extension line> ...]
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.tlog.errors import CheckpointError
from shared.tlog.merkle import HASH_SIZE, MAX_TREE_SIZE
from shared.tlog.note import Signer, Verifier, open_note, sign_note

__all__ = ["Checkpoint", "open_checkpoint"]

_SIZE = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x1f]")


def _check_line(value: object, what: str) -> str:
    if not isinstance(value, str) or value == "":
        raise CheckpointError(f"{what} must be a non-empty str")
    if _CONTROL.search(value):
        raise CheckpointError(f"{what} contains control characters or newlines")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """A transparency-log tree head: ``origin`` (log identity), ``size`` (leaves), ``root_hash`` (32 bytes).

    ``extensions`` are optional opaque non-empty lines after the root hash.
    Construction validates every field and raises CheckpointError, so
    :meth:`to_text` always yields a well-formed body.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError("size must be an int in [0, 2**64)")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")
        if isinstance(self.extensions, str) or not isinstance(self.extensions, (list, tuple)):
            raise CheckpointError("extensions must be a list of str")
        for ext in self.extensions:
            _check_line(ext, "extension line")

    def to_text(self) -> str:
        """The note body: ``origin LF size LF base64(root) LF`` followed by ``ext LF`` per extension."""
        root_b64 = base64.b64encode(self.root_hash).decode("ascii")
        return "".join(f"{line}\n" for line in [self.origin, str(self.size), root_b64, *self.extensions])

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a note body (e.g. the text returned by :func:`~shared.tlog.note.open_note`).

        Raises CheckpointError unless ``text`` is at least three non-empty
        LF-terminated lines: non-empty origin; decimal size without leading
        zeros (``0`` allowed) below 2**64; canonical padded base64 of exactly
        32 bytes; then any number of non-empty extension lines.
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise CheckpointError("checkpoint body must be a str ending in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint body needs origin, size and root hash lines")
        origin, size_line, root_line, *extensions = lines
        for i, line in enumerate(lines):
            _check_line(line, f"line {i + 1}")
        if not _SIZE.fullmatch(size_line):
            raise CheckpointError(f"invalid tree size {size_line!r}")
        size = int(size_line)
        if size > MAX_TREE_SIZE:
            raise CheckpointError("tree size exceeds 2**64 - 1")
        try:
            root_hash = base64.b64decode(root_line.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CheckpointError("root hash is not valid base64") from exc
        if len(root_hash) != HASH_SIZE or base64.b64encode(root_hash).decode("ascii") != root_line:
            raise CheckpointError(f"root hash must be canonical base64 of {HASH_SIZE} bytes")
        return cls(origin, size, root_hash, list(extensions))

    def sign(self, signer: Signer) -> str:
        """Return the signed checkpoint note (C2SP signed-note over :meth:`to_text`)."""
        return sign_note(self.to_text(), signer)


def open_checkpoint(
    note: str, verifiers: Iterable[Verifier], *, origin: str | None = None
) -> tuple[Checkpoint, list[str]]:
    """Verify a signed checkpoint note and parse its body; return ``(checkpoint, verified signer names)``.

    Raises NoteError (bad note / no valid known signature, see
    :func:`~shared.tlog.note.open_note`) or CheckpointError (malformed body, or
    ``origin`` given and different from the checkpoint's origin line).
    """
    text, names = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint origin {checkpoint.origin!r} != expected {origin!r}")
    return checkpoint, names
