"""Consent lifecycle (../shared/DESIGN.md, "Consent lifecycle"): pure rules, no I/O.

    requested  -> authorised | rejected
    authorised -> revoked | expired | consumed
"""

from __future__ import annotations

from shared.errors import Conflict

TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"authorised", "rejected"}),
    "authorised": frozenset({"revoked", "expired", "consumed"}),
    "rejected": frozenset(),
    "revoked": frozenset(),
    "expired": frozenset(),
    "consumed": frozenset(),
}

STATES = frozenset(TRANSITIONS)


def check_transition(current: str, target: str, *, consent_id: str) -> None:
    """Raise :class:`Conflict` (409, with ``current_status``) unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise Conflict(
            f"consent {consent_id} is {current}; it cannot become {target}",
            current_status=current,
            requested_status=target,
        )
