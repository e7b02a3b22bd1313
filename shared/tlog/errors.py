"""Exception hierarchy for :mod:`shared.tlog`.

Every error raised *because of untrusted input* (a proof, a signed note, a
checkpoint body) is a :class:`TlogError`, so callers that verify data received
from the network can catch one class. Programming errors in *our own* calls
(e.g. asking a tree for a proof of a leaf it does not hold) raise
:class:`ValueError` instead.
"""

from __future__ import annotations

__all__ = ["TlogError", "ProofError", "NoteError", "CheckpointError"]


class TlogError(Exception):
    """Base class of all transparency-log verification and parsing errors."""


class ProofError(TlogError):
    """An inclusion or consistency proof failed verification (RFC 9162 §2.1.3.2 / §2.1.4.2).

    Raised for wrong hashes, wrong proof length, out-of-range indexes or sizes,
    and malformed proof elements alike: a verifier must not distinguish them.
    """


class NoteError(TlogError):
    """A C2SP signed note is malformed, or carries no valid signature from a known key."""


class CheckpointError(TlogError):
    """A C2SP tlog-checkpoint note body is malformed."""
