"""Use cases of the consent service (keyword-only; shared by HTTP routes and NATS handlers)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from shared import subjects, telemetry
from shared.crypto import SecretBox
from shared.durations import duration_seconds
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable, Unprocessable
from shared.outbox import add_event
from shared.runtime import Runtime

from . import log, models
from .domain import check_transition


_meter = telemetry.meter()
# the authorisation counts a regulator asks for: granted (authorised), rejected, revoked, expired, consumed
CONSENT_TRANSITIONS = _meter.create_counter("consent_transitions", description="consent state changes, by the new status")
CONSENT_CHECKS = _meter.create_counter("consent_checks", description="consent.check answers, by validity")
CONSENT_CHECK_SECONDS = _meter.create_histogram("consent_check_duration", unit="s", description="time to answer consent.check")


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _consent(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "data_subject": row.data_subject,
        "holder_id": row.holder_id,
        "recipient_id": row.recipient_id,
        "datasets": list(row.datasets),
        "purpose": row.purpose,
        "one_off": bool(row.one_off),
        "frequency": row.frequency,
        "status": row.status,
        "status_reason": row.status_reason,
        "expires_at": _aware(row.expires_at).isoformat(),
        "created_at": _aware(row.created_at).isoformat(),
        "updated_at": _aware(row.updated_at).isoformat(),
        "log_index": row._mapping.get("log_index"),
    }


def _select_consents() -> Any:
    """Consents with ``log_index``: the index of the consent log entry that records their current status."""
    return select(models.consents, log.latest_index_for_consent().label("log_index"))


def _event_data(consent: dict[str, Any]) -> dict[str, Any]:
    """What a consent event says: the consent without anything secret."""
    return {"consent": consent}


async def _check_participant(rt: Runtime, participant_id: str, role: str) -> dict[str, Any]:
    bus = rt.require_bus()
    try:
        p = await bus.request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": participant_id})
    except NotFound:
        raise Unprocessable(f"unknown {role} {participant_id!r}", field=f"{role}_id") from None
    if role not in p["roles"]:
        raise Unprocessable(f"participant {participant_id!r} is not a data {role}", field=f"{role}_id")
    if p["status"] != "active":
        raise Unprocessable(f"{role} {participant_id!r} is {p['status']}", field=f"{role}_id")
    return p


async def request_consent(rt: Runtime, *, body: dict[str, Any]) -> dict[str, Any]:
    """Create a consent in state ``requested`` after checking both participants and the datasets
    with the registry over NATS. Raises Unprocessable (422) for unknown or unfit participants or
    datasets, Unavailable if the registry does not answer. Nothing is stored on error.
    """
    holder = await _check_participant(rt, body["holder_id"], "holder")
    recipient = await _check_participant(rt, body["recipient_id"], "recipient")
    bus = rt.require_bus()
    datasets = list(dict.fromkeys(body["datasets"]))
    for ds in datasets:
        try:
            await bus.request(subjects.REGISTRY_DATASET_GET, {"dataset_id": ds})
        except NotFound:
            raise Unprocessable(f"unknown dataset {ds!r}", field="datasets") from None
        if ds not in holder["datasets_offered"]:
            raise Unprocessable(f"holder {holder['id']!r} does not offer dataset {ds!r}", field="datasets")
        if ds not in recipient["datasets_accepted"]:
            raise Unprocessable(f"recipient {recipient['id']!r} does not accept dataset {ds!r}", field="datasets")
    frequency = body.get("frequency")
    if frequency is not None:
        if body.get("one_off", True):
            raise InvalidInput("a consent with a frequency is recurring: set one_off to false")
        if not 1 <= duration_seconds(frequency) <= 366 * 86400:
            raise InvalidInput("frequency must be between one second and one year")
    if body["holder_id"] == body["recipient_id"]:
        raise InvalidInput("holder and recipient must differ")
    days = int(body.get("duration_days", 90))
    if days > rt.settings.consent_max_days:
        raise Unprocessable(f"a consent may last at most {rt.settings.consent_max_days} days", field="duration_days")
    now = datetime.now(UTC)
    cid = uuid.uuid4().hex
    async with rt.db.unit_of_work() as s:
        await s.execute(
            models.consents.insert().values(
                id=cid, data_subject=body["data_subject"], holder_id=body["holder_id"], recipient_id=body["recipient_id"],
                datasets=datasets, purpose=body["purpose"], one_off=bool(body.get("one_off", True)), frequency=frequency, status="requested",
                status_reason=None, expires_at=now + timedelta(days=days), created_at=now, updated_at=now,
            )
        )
        out = _consent((await s.execute(select(models.consents).where(models.consents.c.id == cid))).one())
        out["log_index"] = await log.append_consent_event(s, out, "requested", time=now)
        await add_event(s, models.outbox, f"{subjects.CONSENT_EVENTS}.requested", "consent.events.requested", _event_data(out))
    rt.events_committed()
    return out


async def get_consent(rt: Runtime, *, consent_id: str) -> dict[str, Any]:
    async with rt.db.sessions() as s:
        row = (await s.execute(_select_consents().where(models.consents.c.id == consent_id))).first()
    if row is None:
        raise NotFound(f"no consent {consent_id!r}")
    return _consent(row)


async def list_consents(rt: Runtime, *, data_subject: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    q = _select_consents().order_by(models.consents.c.created_at.desc()).limit(limit).offset(offset)
    if data_subject:
        q = q.where(models.consents.c.data_subject == data_subject)
    async with rt.db.sessions() as s:
        return [_consent(r) for r in (await s.execute(q)).all()]


async def _transition(
    rt: Runtime, *, consent_id: str, target: str, reason: str | None, extra: Any = None, idempotent: bool = False,
    by: str | None = None, transfer_id: str | None = None,
) -> dict[str, Any]:
    """Move the consent to ``target`` and, in the same transaction, append the event to the consent log
    (``by``/``transfer_id`` go into the entry) and to the outbox."""
    t = models.consents
    async with rt.db.unit_of_work() as s:
        row = (await s.execute(select(t).where(t.c.id == consent_id).with_for_update())).first()
        if row is None:
            raise NotFound(f"no consent {consent_id!r}")
        if idempotent and row.status == target:
            return _consent((await s.execute(_select_consents().where(t.c.id == consent_id))).one())
        check_transition(row.status, target, consent_id=consent_id)
        now = datetime.now(UTC)
        await s.execute(t.update().where(t.c.id == consent_id).values(status=target, status_reason=reason, updated_at=now))
        if extra is not None:
            await extra(s)
        if target in {"revoked", "expired", "rejected", "consumed"}:
            await s.execute(models.holder_tokens.delete().where(models.holder_tokens.c.consent_id == consent_id))
        out = _consent((await s.execute(select(t).where(t.c.id == consent_id))).one())
        out["log_index"] = await log.append_consent_event(s, out, target, time=now, by=by, transfer_id=transfer_id)
        await add_event(s, models.outbox, f"{subjects.CONSENT_EVENTS}.{target}", f"consent.events.{target}", _event_data(out))
    rt.events_committed()
    CONSENT_TRANSITIONS.add(1, {"status": target})
    return out


async def authorise(rt: Runtime, *, consent_id: str, token: dict[str, Any]) -> dict[str, Any]:
    """``requested -> authorised`` with the data holder's tokens, sealed at rest. 409 from any other state."""
    box = SecretBox(rt.settings.token_encryption_key)
    expires_at = datetime.now(UTC) + timedelta(seconds=int(token["expires_in"])) if token.get("expires_in") else None

    async def store(s: Any) -> None:
        await s.execute(models.holder_tokens.delete().where(models.holder_tokens.c.consent_id == consent_id))
        await s.execute(models.holder_tokens.insert().values(consent_id=consent_id, sealed=box.seal(token, aad=consent_id), expires_at=expires_at))

    return await _transition(rt, consent_id=consent_id, target="authorised", reason=None, extra=store)


async def reject(rt: Runtime, *, consent_id: str) -> dict[str, Any]:
    return await _transition(rt, consent_id=consent_id, target="rejected", reason="rejected by the data subject")


async def revoke(rt: Runtime, *, consent_id: str, by: str, reason: str | None = None) -> dict[str, Any]:
    """``authorised -> revoked``; idempotent (revoking a revoked consent returns it unchanged)."""
    return await _transition(rt, consent_id=consent_id, target="revoked", reason=reason or f"revoked by the {by.replace('_', ' ')}",
                             idempotent=True, by=by)


async def end_consents_of_participant(rt: Runtime, *, participant_id: str, reason: str) -> int:
    """End every live consent of a revoked participant: ``authorised -> revoked``, ``requested -> rejected``.
    Returns how many changed; idempotent."""
    t = models.consents
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(t.c.id, t.c.status).where((t.c.holder_id == participant_id) | (t.c.recipient_id == participant_id))
                                .where(t.c.status.in_(("requested", "authorised"))))).all()
    changed = 0
    for row in rows:
        try:
            target = "revoked" if row.status == "authorised" else "rejected"
            await _transition(rt, consent_id=row.id, target=target, reason=reason, by="registry" if target == "revoked" else None)
            changed += 1
        except Conflict:
            pass  # changed meanwhile
    return changed


async def mark_consumed(rt: Runtime, *, consent_id: str, transfer_id: str) -> None:
    """A one-off consent whose transfer completed becomes ``consumed`` (no-op otherwise)."""
    c = await get_consent(rt, consent_id=consent_id)
    if c["one_off"] and c["status"] == "authorised":
        try:
            await _transition(rt, consent_id=consent_id, target="consumed", reason=f"transfer {transfer_id} completed",
                              transfer_id=transfer_id)
        except Conflict:
            pass


async def check(rt: Runtime, *, consent_id: str, dataset: str) -> dict[str, Any]:
    """Is consent ``consent_id`` valid now for ``dataset``? Answers ``{valid, reason, consent}``.

    ``reason`` is one of ``not_found``, ``not_authorised``, ``expired``, ``dataset_not_covered`` or null.
    """
    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.consents).where(models.consents.c.id == consent_id))).first()
    if row is None:
        return {"valid": False, "reason": "not_found", "consent": None}
    c = _consent(row)
    if row.status != "authorised":
        return {"valid": False, "reason": "not_authorised", "status": row.status, "consent": c}
    if _aware(row.expires_at) <= datetime.now(UTC):
        return {"valid": False, "reason": "expired", "status": row.status, "consent": c}
    if dataset not in row.datasets:
        return {"valid": False, "reason": "dataset_not_covered", "status": row.status, "consent": c}
    return {"valid": True, "reason": None, "status": row.status, "consent": c}


_refresh_locks: dict[str, asyncio.Lock] = {}
REFRESH_MARGIN_S = 30


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _token_row(rt: Runtime, consent_id: str) -> tuple[Any, Any]:
    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.consents).where(models.consents.c.id == consent_id))).first()
        if row is None:
            raise NotFound(f"no consent {consent_id!r}")
        if row.status != "authorised":
            raise Conflict(f"consent {consent_id} is {row.status}", current_status=row.status)
        tok = (await s.execute(select(models.holder_tokens).where(models.holder_tokens.c.consent_id == consent_id))).first()
    if tok is None:
        raise Conflict(f"consent {consent_id} has no holder token")
    return row, tok


def _answer(token: dict[str, Any], tok: Any) -> dict[str, Any]:
    return {"access_token": token["access_token"], "token_type": token.get("token_type", "Bearer"),
            "expires_at": _aware(tok.expires_at).isoformat() if tok.expires_at else None}


async def holder_token(rt: Runtime, *, consent_id: str, refresh: bool = False, rejected_token_sha256: str | None = None) -> dict[str, Any]:
    """The holder access token of an authorised consent, refreshed at the holder when it is near
    expiry or when ``refresh`` is asked (RFC 6749 section 6; one refresh per consent at a time).

    Raises NotFound, Conflict (consent not authorised, no token), Forbidden with
    ``reason: refresh_refused`` when the holder refuses the refresh, Unavailable when the holder
    or the registry cannot be reached.
    """
    box = SecretBox(rt.settings.token_encryption_key)
    row, tok = await _token_row(rt, consent_id)
    token = box.open(tok.sealed, aad=consent_id)
    near_expiry = tok.expires_at is not None and (_aware(tok.expires_at) - datetime.now(UTC)).total_seconds() < REFRESH_MARGIN_S
    if not (refresh or near_expiry):
        return _answer(token, tok)
    lock = _refresh_locks.setdefault(consent_id, asyncio.Lock())
    async with lock:
        row, tok = await _token_row(rt, consent_id)
        token = box.open(tok.sealed, aad=consent_id)
        if rejected_token_sha256 and _sha(token["access_token"]) != rejected_token_sha256:
            return _answer(token, tok)  # somebody refreshed it meanwhile
        if not token.get("refresh_token"):
            raise Forbidden("the holder token expired and there is no refresh token", reason="refresh_refused")
        holder = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": row.holder_id})
        if not holder.get("oauth_token_url"):
            raise Forbidden(f"holder {row.holder_id} has no token endpoint in the registry", reason="refresh_refused")
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                resp = await client.post(holder["oauth_token_url"], data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
        except httpx.HTTPError as exc:
            raise Unavailable(f"holder token endpoint unreachable: {type(exc).__name__}") from None
        if resp.status_code >= 500:
            raise Unavailable(f"holder token endpoint answered {resp.status_code}")
        try:
            new = resp.json()
        except ValueError:
            new = {}
        if resp.status_code != 200 or not isinstance(new, dict) or not new.get("access_token"):
            error = new.get("error") if isinstance(new, dict) else None
            raise Forbidden(f"the holder refused to refresh the token ({resp.status_code} {error or ''})".strip(), reason="refresh_refused")
        merged = {"access_token": new["access_token"], "token_type": new.get("token_type", "Bearer"),
                  "refresh_token": new.get("refresh_token") or token["refresh_token"], "expires_in": new.get("expires_in")}
        expires_at = datetime.now(UTC) + timedelta(seconds=int(new["expires_in"])) if new.get("expires_in") else None
        async with rt.db.unit_of_work() as s:
            # compare-and-set: only replace the token we refreshed
            await s.execute(models.holder_tokens.update().where(models.holder_tokens.c.consent_id == consent_id)
                            .where(models.holder_tokens.c.sealed == tok.sealed)
                            .values(sealed=box.seal(merged, aad=consent_id), expires_at=expires_at))
        row, tok = await _token_row(rt, consent_id)
        return _answer(box.open(tok.sealed, aad=consent_id), tok)


async def log_transfer_ending(rt: Runtime, *, transfer: dict[str, Any]) -> tuple[int, bool]:
    """Append a transfer's ending (the ``transfer`` of a ``transfer.events.completed|partial|failed|cancelled``
    event) to the consent log, once per ending: ``(index, appended)``, ``appended`` False for a redelivery."""
    async with rt.db.unit_of_work() as s:
        return await log.append_transfer_ending(s, transfer)


async def erase_subject_secret(rt: Runtime, *, data_subject: str) -> None:
    """GDPR Art. 17: erase the secret behind the data subject's pseudonym in the consent log, so that its
    entries stay verifiable but can no longer be linked to them. Raises NotFound (404) if there is none
    (never logged, or already erased)."""
    if not await log.erase_subject_secret(rt.db, data_subject):
        raise NotFound(f"no pseudonym secret for data subject {data_subject!r}")
