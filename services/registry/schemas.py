"""Request and response bodies of the registry's HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
Role = Literal["holder", "recipient"]
Status = Literal["active", "suspended", "revoked"]


class Limits(BaseModel):
    """What a data holder allows the broker, across all its workers."""

    model_config = ConfigDict(extra="forbid", strict=True)
    max_concurrent_transfers: int | None = Field(default=None, ge=1, le=10_000)
    requests_per_second: float | int | None = Field(default=None, gt=0, le=100_000)
    max_consent_days: int | None = Field(default=None, ge=1, le=1095,
                                         description="longest consent this holder allows (default: the broker's, one year)")


class LegalEntity(BaseModel):
    """The controller behind a participant (as in the CDR register's LegalEntity)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=300)
    identifiers: dict[str, str] = Field(default_factory=dict, max_length=10,
                                        description='national or global identifiers, e.g. {"SIREN": "552081317", "LEI": "…"}')
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(default=None, max_length=200)
    email: str = Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    role: str | None = Field(default=None, max_length=100, description="e.g. technical, data protection officer")


class ParticipantIn(BaseModel):
    """A data holder and/or data recipient. A holder needs ``export_base_url``, a recipient ``import_base_url``.

    Endpoint URLs are checked: https only outside development; no credentials; no loopback,
    private or link-local address unless ``allow_private_network`` (an SSRF guard).
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=200)
    roles: list[Role] = Field(min_length=1, max_length=2)
    legal_entity: LegalEntity | None = None
    brands: list[str] = Field(default_factory=list, max_length=20)
    contacts: list[Contact] = Field(default_factory=list, max_length=20)
    notification_url: str | None = Field(default=None, max_length=500, description="where consent notifications are sent")
    authorization_server_metadata_url: str | None = Field(default=None, max_length=500, description="a holder's RFC 8414 metadata")
    jwks_uri: str | None = Field(default=None, max_length=500)
    jwks: dict[str, Any] | None = Field(default=None, description="inline JWK Set (RFC 7517), instead of jwks_uri")
    allow_private_network: bool = Field(default=False, description="allow endpoints on loopback or private addresses")
    export_base_url: str | None = Field(default=None, max_length=500)
    import_base_url: str | None = Field(default=None, max_length=500)
    import_protocol: Literal["broker", "solid", "cozy"] = Field(
        default="broker", description="how the broker delivers to this recipient (docs/personal-clouds.md): 'broker', the recipient "
        "import contract at import_base_url; 'solid', a Solid pod, import_base_url the container written under; 'cozy', "
        "a Cozy cloud's data API, import_base_url the Cozy's URL. Secrets come from the broker's RECIPIENT_CREDENTIALS")
    oauth_token_url: str | None = Field(default=None, max_length=500, description="a holder's OAuth 2.0 token endpoint (refresh of tokens)")
    limits: Limits | None = None
    datasets_offered: list[str] = Field(default_factory=list, max_length=100)
    datasets_accepted: list[str] = Field(default_factory=list, max_length=100)


class ParticipantCreate(ParticipantIn):
    id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class Participant(ParticipantIn):
    model_config = ConfigDict(extra="ignore", strict=False)
    id: str
    status: Status
    status_reason: str | None = None
    status_effective_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    status: Status
    reason: str = Field(min_length=1, max_length=500)


class DatasetType(BaseModel):
    """A dataset type: a JSON Schema (Draft 2020-12) for one record, with units and time conventions."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: int = Field(ge=1, le=10_000)
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(max_length=10_000)
    schema_: dict[str, Any] = Field(alias="schema")
    units: dict[str, str] = Field(default_factory=dict)


class ParticipantList(BaseModel):
    participants: list[Participant]


class DatasetList(BaseModel):
    datasets: list[DatasetType]
