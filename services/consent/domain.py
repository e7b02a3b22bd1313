"""Consent lifecycle (../shared/DESIGN.md, "Consent lifecycle"): pure rules, no I/O.

    requested  -> authorised | rejected | expired   (a request left for over 10 minutes is abandoned)
    authorised -> revoked | expired | consumed | superseded   (replaced by an amended consent)

``requested -> expired`` and ``authorised -> superseded`` extend DESIGN.md's table: the consent issue
asks for abandoned requests to expire and for amended consents to link to the one they replace.
"""

from __future__ import annotations

from shared.errors import Conflict

TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"authorised", "rejected", "expired"}),
    "authorised": frozenset({"revoked", "expired", "consumed", "superseded"}),
    "rejected": frozenset(),
    "revoked": frozenset(),
    "expired": frozenset(),
    "consumed": frozenset(),
    "superseded": frozenset(),
}

ENDED = frozenset({"rejected", "revoked", "expired", "consumed", "superseded"})

STATES = frozenset(TRANSITIONS)


def check_transition(current: str, target: str, *, consent_id: str) -> None:
    """Raise :class:`Conflict` (409, with ``current_status``) unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise Conflict(
            f"consent {consent_id} is {current}; it cannot become {target}",
            current_status=current,
            requested_status=target,
        )
