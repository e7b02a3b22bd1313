"""Request and response bodies of the consent service's HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Ident = Field(min_length=1, max_length=128)


class ConsentRequest(BaseModel):
    """A data recipient asks for a consent: who, from whom, what, why, how long."""

    model_config = ConfigDict(extra="forbid", strict=True)
    data_subject: str = Field(min_length=1, max_length=128, description="the person's id at the broker")
    holder_id: str = Field(min_length=1, max_length=64)
    recipient_id: str = Field(min_length=1, max_length=64)
    datasets: list[str] = Field(min_length=1, max_length=20)
    purpose: str = Field(min_length=1, max_length=1000)
    duration_days: int = Field(default=90, ge=1, le=1095, description="validity in days (capped by the broker's maximum)")
    one_off: bool = True


class HolderToken(BaseModel):
    """The data holder's OAuth 2.0 token response for this consent (RFC 6749 section 5.1)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    access_token: str = Field(min_length=1, max_length=4096)
    token_type: str = Field(default="Bearer", max_length=32)
    refresh_token: str | None = Field(default=None, max_length=4096)
    expires_in: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    by: Literal["data_subject", "holder", "recipient"] = "data_subject"
    reason: str | None = Field(default=None, max_length=500)


class Consent(BaseModel):
    id: str
    data_subject: str
    holder_id: str
    recipient_id: str
    datasets: list[str]
    purpose: str
    one_off: bool
    status: Literal["requested", "authorised", "rejected", "revoked", "expired", "consumed"]
    status_reason: str | None = None
    expires_at: datetime
    created_at: datetime
    updated_at: datetime


class ConsentList(BaseModel):
    consents: list[Consent]
