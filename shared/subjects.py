"""Every NATS subject and JetStream stream of the broker, in one place.

See ../shared/DESIGN.md ("Subjects") and the README's subject table.
"""

from __future__ import annotations

from dataclasses import dataclass

# request/reply (NATS core)
REGISTRY_PARTICIPANT_GET = "registry.participant.get"
REGISTRY_DATASET_GET = "registry.dataset.get"
REGISTRY_OAUTH_JWKS = "registry.oauth.jwks"  # the access-token verification keys and the revoked token ids
CONSENT_CHECK = "consent.check"
CONSENT_TOKEN_GET = "consent.token.get"

# JetStream
REGISTRY_EVENTS = "registry.events"  # registry.events.<event>
CONSENT_EVENTS = "consent.events"  # consent.events.<event>
TRANSFER_JOBS = "transfer.jobs"
TRANSFER_EVENTS = "transfer.events"  # transfer.events.<event>
DEAD_LETTER = "deadletter"  # deadletter.<original subject>

TRANSFER_WORKERS_DURABLE = "transfer-workers"


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream: its name, subjects and whether it is a work queue."""

    name: str
    subjects: tuple[str, ...]
    work_queue: bool = False


STREAM_REGISTRY_EVENTS = StreamSpec("REGISTRY_EVENTS", (f"{REGISTRY_EVENTS}.>",))
STREAM_CONSENT_EVENTS = StreamSpec("CONSENT_EVENTS", (f"{CONSENT_EVENTS}.>",))
STREAM_TRANSFER_JOBS = StreamSpec("TRANSFER_JOBS", (TRANSFER_JOBS,), work_queue=True)
STREAM_TRANSFER_EVENTS = StreamSpec("TRANSFER_EVENTS", (f"{TRANSFER_EVENTS}.>",))
STREAM_DEAD_LETTER = StreamSpec("DEAD_LETTER", (f"{DEAD_LETTER}.>",))

ALL_STREAMS = (
    STREAM_REGISTRY_EVENTS,
    STREAM_CONSENT_EVENTS,
    STREAM_TRANSFER_JOBS,
    STREAM_TRANSFER_EVENTS,
    STREAM_DEAD_LETTER,
)


def dead_letter_subject(subject: str) -> str:
    """Where a message that could not be processed on ``subject`` is parked, with its reason."""
    return f"{DEAD_LETTER}.{subject}"
