"""Request and response bodies of the consent service's HTTP API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Ident = Field(min_length=1, max_length=128)
# no NUL nor other control characters (tab and newline aside), nor bidirectional overrides that would make
# a purpose read differently on the consent screen than it is
NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]+$"


class ConsentRequest(BaseModel):
    """A data recipient asks for a consent: who, from whom, what, why, how long."""

    model_config = ConfigDict(extra="forbid", strict=True)
    data_subject: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                              description="the person's id at the recipient (a label: the holder login proves who the person is)")
    holder_id: str = Field(min_length=1, max_length=64)
    recipient_id: str = Field(min_length=1, max_length=64)
    datasets: list[str] = Field(min_length=1, max_length=20)
    purpose: str = Field(min_length=1, max_length=1000, pattern=NO_CONTROL, description="in plain words, shown to the person")
    duration_days: int = Field(default=90, ge=1, le=1095, description="validity in days (capped by the broker's maximum)")
    one_off: bool = True
    frequency: str | None = Field(default=None, max_length=32, pattern=r"^P(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$",
                                  description="recurring consents: ISO 8601 duration between transfers, e.g. P1D")
    purpose_category: str = Field(default="dpv:ServiceProvision", max_length=200, pattern=r"^(dpv:[A-Za-z]+|https://w3id\.org/dpv[#/][A-Za-z#/]+)$",
                                  description="W3C Data Privacy Vocabulary purpose, e.g. dpv:ServiceProvision")
    legal_basis: str = Field(default="dpv:Consent", max_length=200, description="e.g. dpv:Consent (GDPR Art. 6(1)(a)) for portability")
    data_from: date | None = Field(default=None, strict=False, description="first day of data the consent covers (inclusive)")
    data_to: date | None = Field(default=None, strict=False, description="last day of data the consent covers (inclusive)")


class Amendment(BaseModel):
    """What changes in an amended consent; the rest is copied from the consent it replaces."""

    model_config = ConfigDict(extra="forbid", strict=True)
    datasets: list[str] | None = Field(default=None, min_length=1, max_length=20)
    purpose: str | None = Field(default=None, min_length=1, max_length=1000, pattern=NO_CONTROL)
    purpose_category: str | None = Field(default=None, max_length=200, pattern=r"^(dpv:[A-Za-z]+|https://w3id\.org/dpv[#/][A-Za-z#/]+)$")
    duration_days: int | None = Field(default=None, ge=1, le=1095)
    data_from: date | None = Field(default=None, strict=False)
    data_to: date | None = Field(default=None, strict=False)

    def changes(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in self.model_dump().items() if v is not None}


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
    frequency: str | None = None
    status: Literal["requested", "authorised", "rejected", "revoked", "expired", "consumed", "superseded"]
    status_reason: str | None = Field(default=None, description="who revoked it, that it expired, or where an abandoned request stopped")
    purpose_category: str = "dpv:ServiceProvision"
    legal_basis: str = "dpv:Consent"
    data_from: date | None = None
    data_to: date | None = None
    holder_subject: str | None = Field(default=None, description="the data subject's id at the holder (from its authorization server)")
    supersedes: str | None = Field(default=None, description="the consent this amended one replaces")
    superseded_by: str | None = None
    holder_check: str | None = Field(default=None, description="confirmed | holder_lost_consent | unreachable: does the holder see it")
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    log_index: int | None = Field(default=None, description="index of the consent log entry that records the current status "
                                  "(ask GET /log/proof/inclusion?index=... for its inclusion proof)")


class ConsentList(BaseModel):
    consents: list[Consent]


class LogEntry(BaseModel):
    """One consent log entry: its 0-based leaf ``index``, the ``entry`` object (its RFC 8785 canonical JSON is
    the leaf input; a stored text that is not JSON is given as a string) and its ``leaf_hash`` as stored (hex)."""

    index: int
    entry: dict[str, Any] | str
    leaf_hash: str


class SubjectErased(BaseModel):
    """What ``DELETE /subjects/{data_subject}`` did (GDPR Art. 17)."""

    data_subject: str = Field(description="the marker that replaces the data subject in their consents: erased:<random>")
    consents_ended: int = Field(description="live consents ended first (authorised: revoked; requested: rejected)")
    consents_erased: int = Field(description="consents no longer naming the person")
    secret_erased: bool = Field(description="whether a pseudonym secret was deleted (false: none had been made)")


class LogEntries(BaseModel):
    size: int = Field(description="current tree size (entries in the log)")
    entries: list[LogEntry]
    next_start: int | None = Field(description="ask again with start=next_start for the next page; null at the end")


class InclusionProof(BaseModel):
    """RFC 9162 section 2.1.3.1 audit path of leaf ``index`` in the tree of ``size`` leaves (hex SHA-256 hashes)."""

    index: int
    size: int
    proof: list[str]


class ConsistencyProof(BaseModel):
    """RFC 9162 section 2.1.4.1 proof that the tree of ``first`` leaves is a prefix of the tree of ``second`` (hex)."""

    first: int
    second: int
    proof: list[str]


class Receipt(BaseModel):
    """A signed consent receipt: compact JWS (EdDSA, Ed25519; RFC 7515, RFC 8037) whose payload is a Kantara
    Consent Receipt v1.1; verify it with the keys at ``/.well-known/jwks.json``."""

    consent_id: str
    log_index: int = Field(description="index of the consent log entry of the authorisation (ask its inclusion proof)")
    jws: str
    payload: dict[str, Any]
