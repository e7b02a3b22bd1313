"""Request and response bodies of the transfer service's HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    consent_id: str = Field(min_length=1, max_length=64)
    dataset: str = Field(min_length=1, max_length=128)


class Transfer(BaseModel):
    """A transfer and where it stands. ``reason`` says why it ended when it did not complete:

    ``consent_invalid`` (no authorised consent, or the holder refused the token),
    ``schema_violation`` (a record broke its dataset schema; ``error.position`` is its 0-based index),
    ``holder_error`` / ``recipient_error`` (a participant answered with an unexpected error),
    ``destination_full`` (413 or 507 from the recipient; ``error.delivered_records`` arrived),
    ``manifest_mismatch`` (the recipient's records differ from what was sent),
    ``conversion_failed`` (a catalogue converter refused a record, ``error.position``; docs/personal-clouds.md),
    ``retries_exhausted`` (transient failures outlived every retry and redelivery);
    ``partial`` transfers (``records_refused``): the recipient refused some records, listed in
    ``error.refused`` (position in the holder's order, batch, reason); the others arrived.
    ``cancelled`` transfers: ``consent_revoked``, ``consent_expired``, ``participant_suspended``,
    ``participant_revoked``.
    """

    id: str
    consent_id: str
    dataset: str
    holder_id: str
    recipient_id: str
    status: Literal["queued", "running", "completed", "partial", "failed", "cancelled"]
    reason: str | None = None
    error: dict[str, Any] | None = None
    batches: int
    records: int
    bytes: int
    sha256: str | None = None
    attempts: int
    schedule_id: str | None = Field(default=None, description="the schedule of a recurring consent that started it")
    incremental: bool = Field(default=False, description="it fetched only what is new since the previous transfer")
    delivered_dataset: str | None = Field(default=None, description="the dataset type the recipient received, when a catalogue "
                                          "converter turned the holder's type into one the recipient accepts")
    worker: str | None = Field(default=None, description="the worker running it last: host:pid:n")
    total: int | None = Field(default=None, description="records the holder says it has, when it says")
    rate_records_per_s: float | None = None
    eta_s: float | None = Field(default=None, description="estimated seconds left, when the holder gives a total")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TransferList(BaseModel):
    transfers: list[Transfer]
