"""Use cases of the consent service (keyword-only; shared by HTTP routes and NATS handlers)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
import weakref
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from shared import subjects, telemetry
from shared.crypto import SecretBox
from shared.durations import duration_seconds
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable, Unprocessable
from shared.outbox import add_event
from shared.runtime import Runtime

from . import log, models
from .domain import ENDED, check_transition


_meter = telemetry.meter()
# the authorisation counts a regulator asks for: granted (authorised), rejected, revoked, expired, consumed
CONSENT_TRANSITIONS = _meter.create_counter("consent_transitions", description="consent state changes, by the new status")
CONSENT_CHECKS = _meter.create_counter("consent_checks", description="consent.check answers, by validity")
CONSENT_CHECK_SECONDS = _meter.create_histogram("consent_check_duration", unit="s", description="time to answer consent.check")
CONSENT_REQUESTS_ABANDONED = _meter.create_counter("consent_requests_abandoned",
                                                   description="consent requests that expired unanswered, by the step where the person stopped")


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
        "purpose_category": row.purpose_category,
        "legal_basis": row.legal_basis,
        "data_from": row.data_from.isoformat() if row.data_from else None,
        "data_to": row.data_to.isoformat() if row.data_to else None,
        "holder_subject": row.holder_subject,
        "supersedes": row.supersedes,
        "superseded_by": row.superseded_by,
        "holder_check": row.holder_check,
        "log_index": row._mapping.get("log_index"),
    }


def _select_consents() -> Any:
    """Consents with ``log_index``: the index of the consent log entry that records their current status."""
    return select(models.consents, log.latest_index_for_consent().label("log_index"))


PERSONAL = ("data_subject", "holder_subject", "purpose")


def _event_data(consent: dict[str, Any]) -> dict[str, Any]:
    """What a consent event says: the consent without anything secret and without what names or may describe
    the person (``data_subject``, ``holder_subject``, the purpose text): events stay in the outbox and the
    ``CONSENT_EVENTS`` stream for days (``EVENT_RETENTION_DAYS``), where an erasure cannot reach them; the
    consent id leads whoever may know more to ``GET /consents/{id}``."""
    return {"consent": {k: v for k, v in consent.items() if k not in PERSONAL}}


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


async def request_consent(rt: Runtime, *, body: dict[str, Any], supersedes: str | None = None) -> dict[str, Any]:
    """Create a consent in state ``requested`` after checking both participants and the datasets
    with the registry over NATS. Raises Unprocessable (422) for unknown or unfit participants or
    datasets, or a duration above the holder's cap (``limits.max_consent_days`` in its registry entry,
    default the broker's ``consent_max_days``, never above ``consent_max_days_cap``), InvalidInput (400)
    for inconsistent fields, Unavailable if the registry does not answer. Nothing is stored on error.
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
            # fine when the catalogue converts it to a type the recipient accepts (the transfer then converts it)
            from shared.catalogue import converters

            if converters.find(ds, recipient["datasets_accepted"]) is None:
                raise Unprocessable(f"recipient {recipient['id']!r} does not accept dataset {ds!r} (nor a type it converts to)", field="datasets")
    frequency = body.get("frequency")
    if frequency is not None:
        if body.get("one_off", True):
            raise InvalidInput("a consent with a frequency is recurring: set one_off to false")
        if not 1 <= duration_seconds(frequency) <= 366 * 86400:
            raise InvalidInput("frequency must be between one second and one year")
    if body["holder_id"] == body["recipient_id"]:
        raise InvalidInput("holder and recipient must differ")
    data_from, data_to = _date(body.get("data_from")), _date(body.get("data_to"))
    if data_from and data_to and data_from > data_to:
        raise InvalidInput("data_from must not be after data_to")
    days = int(body.get("duration_days", 90))
    cap = min(int((holder.get("limits") or {}).get("max_consent_days") or rt.settings.consent_max_days), rt.settings.consent_max_days_cap)
    if days > cap:
        raise Unprocessable(f"holder {holder['id']!r} allows consents of at most {cap} days", field="duration_days")
    now = datetime.now(UTC)
    cid = uuid.uuid4().hex
    async with rt.db.unit_of_work() as s:
        await s.execute(
            models.consents.insert().values(
                id=cid, data_subject=body["data_subject"], holder_id=body["holder_id"], recipient_id=body["recipient_id"],
                datasets=datasets, purpose=body["purpose"], one_off=bool(body.get("one_off", True)), frequency=frequency, status="requested",
                status_reason=None, expires_at=now + timedelta(days=days), created_at=now, updated_at=now,
                purpose_category=body.get("purpose_category") or "dpv:ServiceProvision", legal_basis=body.get("legal_basis") or "dpv:Consent",
                data_from=data_from, data_to=data_to, supersedes=supersedes,
            )
        )
        out = _consent((await s.execute(select(models.consents).where(models.consents.c.id == cid))).one())
        out["log_index"] = await log.append_consent_event(s, out, "requested", time=now)
        await add_event(s, models.outbox, f"{subjects.CONSENT_EVENTS}.requested", "consent.events.requested", _event_data(out))
    rt.events_committed()
    return out


def _date(value: Any) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"{value!r} is not an ISO 8601 date (YYYY-MM-DD)") from None


AMENDABLE = ("datasets", "purpose", "purpose_category", "duration_days", "one_off", "frequency", "data_from", "data_to")


async def amend(rt: Runtime, *, consent_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Ask for an amended consent that replaces the authorised consent ``consent_id``: a new consent in
    ``requested`` with ``supersedes`` set. When the person authorises it, the old one becomes
    ``superseded`` (with ``superseded_by``) in the same transaction. 409 unless the old one is authorised
    (who may ask is the HTTP route's business: its recipient or an admin)."""
    old = await get_consent(rt, consent_id=consent_id)
    if old["status"] != "authorised":
        raise Conflict(f"consent {consent_id} is {old['status']}; only an authorised consent can be amended", current_status=old["status"])
    body = {k: old[k] for k in ("data_subject", "holder_id", "recipient_id", "datasets", "purpose", "one_off", "frequency",
                                "purpose_category", "legal_basis", "data_from", "data_to")}
    body["duration_days"] = 90
    body.update({k: v for k, v in changes.items() if k in AMENDABLE})
    return await request_consent(rt, body=body, supersedes=consent_id)


async def get_consent(rt: Runtime, *, consent_id: str) -> dict[str, Any]:
    async with rt.db.sessions() as s:
        row = (await s.execute(_select_consents().where(models.consents.c.id == consent_id))).first()
    if row is None:
        raise NotFound(f"no consent {consent_id!r}")
    return _consent(row)


async def list_consents(rt: Runtime, *, data_subject: str | list[str] | None = None, party: str | None = None,
                        status: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Consents, newest first; ``data_subject`` (one or several), ``party`` (holder or recipient id) and
    ``status`` filter."""
    t = models.consents
    q = _select_consents().order_by(t.c.created_at.desc(), t.c.id).limit(limit).offset(offset)
    if isinstance(data_subject, list):
        q = q.where(t.c.data_subject.in_(data_subject))
    elif data_subject:
        q = q.where(t.c.data_subject == data_subject)
    if party:
        q = q.where((t.c.holder_id == party) | (t.c.recipient_id == party))
    if status:
        q = q.where(t.c.status == status)
    async with rt.db.sessions() as s:
        return [_consent(r) for r in (await s.execute(q)).all()]


async def _transition(
    rt: Runtime, *, consent_id: str, target: str, reason: str | None, extra: Any = None, idempotent: bool = False,
    by: str | None = None, transfer_id: str | None = None, after: Any = None, expect: str | None = None,
) -> dict[str, Any]:
    """Move the consent to ``target`` and, in the same transaction, append the event to the consent log
    (``by``/``transfer_id`` go into the entry) and to the outbox. ``extra(s)`` runs before the log append,
    ``after(s, consent)`` after it (it sees the entry's ``log_index``). ``expect`` refuses (409) unless the
    current status is that one. The holder's tokens of an ended consent move to ``token_revocations``,
    to be revoked at the holder (RFC 7009) and deleted."""
    t = models.consents
    async with rt.db.unit_of_work() as s:
        row = (await s.execute(select(t).where(t.c.id == consent_id).with_for_update())).first()
        if row is None:
            raise NotFound(f"no consent {consent_id!r}")
        if idempotent and row.status == target:
            return _consent((await s.execute(_select_consents().where(t.c.id == consent_id))).one())
        if expect is not None and row.status != expect:
            raise Conflict(f"consent {consent_id} is {row.status}", current_status=row.status, requested_status=target)
        check_transition(row.status, target, consent_id=consent_id)
        now = datetime.now(UTC)
        await s.execute(t.update().where(t.c.id == consent_id).values(status=target, status_reason=reason, updated_at=now))
        if extra is not None:
            await extra(s)
        if target in ENDED:
            await _queue_token_revocation(s, consent_id=consent_id, holder_id=row.holder_id, now=now)
        out = _consent((await s.execute(select(t).where(t.c.id == consent_id))).one())
        out["log_index"] = await log.append_consent_event(s, out, target, time=now, by=by, transfer_id=transfer_id)
        if after is not None:
            await after(s, out)
        await add_event(s, models.outbox, f"{subjects.CONSENT_EVENTS}.{target}", f"consent.events.{target}", _event_data(out) | {"by": by})
    forget_valid_consents(rt)  # committed: no check answers from before it
    rt.events_committed()
    CONSENT_TRANSITIONS.add(1, {"status": target})
    return out


async def _queue_token_revocation(s: Any, *, consent_id: str, holder_id: str, now: datetime) -> None:
    tok = (await s.execute(select(models.holder_tokens).where(models.holder_tokens.c.consent_id == consent_id))).first()
    if tok is None:
        return
    await s.execute(models.token_revocations.insert().values(consent_id=consent_id, holder_id=holder_id, sealed=tok.sealed,
                                                             attempts=0, next_attempt_at=now))
    await s.execute(models.holder_tokens.delete().where(models.holder_tokens.c.consent_id == consent_id))


async def authorise(rt: Runtime, *, consent_id: str, token: dict[str, Any], holder_subject: str | None = None,
                    receipt: Any = None, pending_revocation: int | None = None) -> dict[str, Any]:
    """``requested -> authorised`` with the data holder's tokens, sealed at rest (AES-GCM, never returned).

    In the same transaction: the consent it amends (``supersedes``) becomes ``superseded``, and
    ``receipt(s, consent)`` (if given) stores the signed consent receipt, which carries the log index.
    409 from any other state than ``requested`` (a second Allow, a replayed callback)."""
    box = SecretBox(rt.settings.token_encryption_key)
    expires_at = datetime.now(UTC) + timedelta(seconds=int(token["expires_in"])) if token.get("expires_in") else None
    stored = {k: token[k] for k in ("access_token", "token_type", "refresh_token", "expires_in", "scope") if token.get(k) is not None}

    async def store(s: Any) -> None:
        await s.execute(models.holder_tokens.delete().where(models.holder_tokens.c.consent_id == consent_id))
        await s.execute(models.holder_tokens.insert().values(consent_id=consent_id, sealed=box.seal(stored, aad=consent_id), expires_at=expires_at))
        if holder_subject is not None:
            await s.execute(models.consents.update().where(models.consents.c.id == consent_id).values(holder_subject=holder_subject[:128]))
        if pending_revocation is not None:  # the tokens are kept now: no longer to be revoked
            await s.execute(models.token_revocations.delete().where(models.token_revocations.c.id == pending_revocation))

    async def after(s: Any, consent: dict[str, Any]) -> None:
        if consent.get("supersedes"):
            await _supersede(rt, s, old_id=consent["supersedes"], new_id=consent["id"])
        if receipt is not None:
            await receipt(s, consent)

    return await _transition(rt, consent_id=consent_id, target="authorised", reason=None, extra=store, after=after)


async def _supersede(rt: Runtime, s: Any, *, old_id: str, new_id: str) -> None:
    """``authorised -> superseded`` of ``old_id`` inside the caller's transaction (the amended consent's)."""
    t = models.consents
    row = (await s.execute(select(t).where(t.c.id == old_id).with_for_update())).first()
    if row is None or row.status != "authorised":
        return  # revoked or expired meanwhile: the amended consent stands on its own
    now = datetime.now(UTC)
    await s.execute(t.update().where(t.c.id == old_id).values(status="superseded", superseded_by=new_id,
                                                                status_reason=f"replaced by consent {new_id}", updated_at=now))
    await _queue_token_revocation(s, consent_id=old_id, holder_id=row.holder_id, now=now)
    out = _consent((await s.execute(select(t).where(t.c.id == old_id))).one())
    out["log_index"] = await log.append_consent_event(s, out, "superseded", time=now)
    await add_event(s, models.outbox, f"{subjects.CONSENT_EVENTS}.superseded", "consent.events.superseded", _event_data(out))
    CONSENT_TRANSITIONS.add(1, {"status": "superseded"})


async def reject(rt: Runtime, *, consent_id: str) -> dict[str, Any]:
    return await _transition(rt, consent_id=consent_id, target="rejected", reason="rejected by the data subject")


async def revoke(rt: Runtime, *, consent_id: str, by: str, reason: str | None = None) -> dict[str, Any]:
    """``authorised -> revoked``; idempotent (revoking a revoked consent returns it unchanged, with no new
    event: two revocations that cross end in one). ``by`` is data_subject, holder, recipient, registry or
    an admin's word (who may revoke is checked by the caller: the HTTP route or the dashboard). 404 unknown,
    409 from another state."""
    return await _transition(rt, consent_id=consent_id, target="revoked", reason=reason or f"revoked by the {by.replace('_', ' ')}",
                             idempotent=True, by=by)


async def expire_due(rt: Runtime, *, now: datetime | None = None) -> dict[str, int]:
    """The scheduled sweep: ``authorised`` consents past ``expires_at`` become ``expired``; ``requested``
    consents older than ``consent_request_ttl_s`` expire as abandoned, with the step where the person
    stopped in the reason (``abandoned at screen`` ...). Safe to run on several replicas at once (each
    transition locks its row; a lost race is skipped). Returns counts by kind."""
    now = now or datetime.now(UTC)
    t = models.consents
    ttl = timedelta(seconds=rt.settings.consent_request_ttl_s)
    async with rt.db.sessions() as s:
        due = (await s.execute(select(t.c.id).where(t.c.status == "authorised").where(t.c.expires_at <= now).limit(500))).scalars().all()
        stale = (await s.execute(select(t.c.id, t.c.flow_step).where(t.c.status == "requested")
                                 .where(t.c.created_at <= now - ttl).limit(500))).all()
    counts = {"expired": 0, "abandoned": 0}
    for cid in due:
        try:
            await _transition(rt, consent_id=cid, target="expired", reason="expired", by="broker", expect="authorised")
            counts["expired"] += 1
        except (Conflict, NotFound):
            pass
    for row in stale:
        step = row.flow_step or "not_opened"
        try:
            await _transition(rt, consent_id=row.id, target="expired", reason=f"abandoned at {step}", by="broker", expect="requested")
            counts["abandoned"] += 1
            CONSENT_REQUESTS_ABANDONED.add(1, {"step": step})
        except (Conflict, NotFound):
            pass
    return counts


async def set_flow_step(rt: Runtime, *, consent_id: str, step: str) -> None:
    """Remember how far the person went with a requested consent (for the abandoned-request counts)."""
    t = models.consents
    async with rt.db.unit_of_work() as s:
        await s.execute(t.update().where(t.c.id == consent_id).where(t.c.status == "requested").values(flow_step=step))


async def record_holder_check(rt: Runtime, *, consent_id: str, result: str) -> None:
    t = models.consents
    async with rt.db.unit_of_work() as s:
        await s.execute(t.update().where(t.c.id == consent_id).values(holder_check=result, holder_checked_at=datetime.now(UTC)))
    forget_valid_consents(rt)


async def confirm_with_holder(rt: Runtime, *, consent_id: str) -> str:
    """The cheap check after authorisation: does the holder still see the consent (``GET <export>/grant``
    with its token)? Stores and returns ``confirmed``, ``holder_lost_consent`` or ``unreachable``;
    a consent that is not authorised answers 409."""
    from . import holder_oauth

    row, tok = await _token_row(rt, consent_id)
    token = SecretBox(rt.settings.token_encryption_key).open(tok.sealed, aad=consent_id)
    holder = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": row.holder_id})
    result = await holder_oauth.check_grant(holder, access_token=token["access_token"])
    await record_holder_check(rt, consent_id=consent_id, result=result)
    return result


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


class ValidConsents:
    """The authorised consents that ``consent.check`` read lately: a read cache, so that the check a transfer
    worker makes before every holder page costs no database read.

    Only authorised consents are kept (every other answer is read again each time), each for at most
    ``ttl_s`` seconds, and the whole cache is emptied whenever a consent changes: at once by this replica's own
    transitions (after their commit, :func:`_transition`) and, for another replica's, when its event arrives on
    ``consent.events.>`` (:func:`forget_valid_consents`). A check that read the database while the cache was
    emptied does not keep what it read (``epoch``), so a row read before a commit never outlives it. With one
    replica a check therefore always answers what is committed; with several, a revocation made on another
    replica may be answered valid here until its event arrives (milliseconds, and never for more than
    ``ttl_s``), as it may by a worker that has not heard that event yet: workers stop on the same event."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self.epoch = 0  # bumped by every forget_all
        self._rows: dict[str, tuple[float, Any, dict[str, Any]]] = {}

    def get(self, consent_id: str) -> tuple[Any, dict[str, Any]] | None:
        """``(row, consent dict)`` of an authorised consent read less than ``ttl_s`` seconds ago, or None."""
        hit = self._rows.get(consent_id)
        if hit is None:
            return None
        if time.monotonic() - hit[0] > self.ttl_s:
            self._rows.pop(consent_id, None)
            return None
        return hit[1], hit[2]

    def put(self, consent_id: str, row: Any, consent: dict[str, Any], *, epoch: int) -> None:
        """Keep an authorised consent read when the cache was at ``epoch`` (dropped if it was emptied since)."""
        if epoch != self.epoch or self.ttl_s <= 0:
            return
        if len(self._rows) >= self.max_entries:
            self._rows.clear()
        self._rows[consent_id] = (time.monotonic(), row, consent)

    def forget_all(self) -> None:
        self.epoch += 1
        self._rows.clear()


_valid_consents: weakref.WeakKeyDictionary[Runtime, ValidConsents] = weakref.WeakKeyDictionary()


def valid_consents(rt: Runtime) -> ValidConsents:
    """This runtime's :class:`ValidConsents` (created on first use, ``consent_check_cache_s`` seconds)."""
    cache = _valid_consents.get(rt)
    if cache is None:
        cache = _valid_consents[rt] = ValidConsents(ttl_s=rt.settings.consent_check_cache_s)
    return cache


def forget_valid_consents(rt: Runtime) -> None:
    """A consent changed (here or on another replica): nothing cached for ``consent.check`` stays."""
    valid_consents(rt).forget_all()


async def check(rt: Runtime, *, consent_id: str, dataset: str) -> dict[str, Any]:
    """Is consent ``consent_id`` valid now for ``dataset``? Answers ``{valid, reason, status, consent}``.

    ``reason`` is one of ``not_found``, ``not_authorised``, ``expired``, ``dataset_not_covered`` or null.
    Authorised consents come from :class:`ValidConsents` when read less than ``consent_check_cache_s`` ago;
    expiry and the dataset are always judged now.
    """
    cache = valid_consents(rt)
    hit = cache.get(consent_id)
    if hit is not None:
        row, c = hit
    else:
        epoch = cache.epoch
        async with rt.db.sessions() as s:
            row = (await s.execute(select(models.consents).where(models.consents.c.id == consent_id))).first()
        if row is None:
            return {"valid": False, "reason": "not_found", "consent": None}
        c = _consent(row)
        if row.status == "authorised":
            cache.put(consent_id, row, c, epoch=epoch)
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
        from . import holder_oauth

        holder = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": row.holder_id})
        new = await holder_oauth.refresh(rt.settings, holder, refresh_token=token["refresh_token"])
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


ERASED_REASON = "the data subject asked for erasure (GDPR Art. 17)"


async def erase_data_subject(rt: Runtime, *, data_subject: str) -> dict[str, Any]:
    """GDPR Art. 17: erase what links the consent log, and the broker, to the data subject ``data_subject``.

    1. Their live consents end first, each logged and announced as usual: ``authorised -> revoked`` (by the
       data subject; the holder's tokens are revoked) and ``requested -> rejected``, reason :data:`ERASED_REASON`.
    2. Then, in one transaction: the secret behind their pseudonym in the log is deleted (the entries stay
       verifiable, but ``subject`` can no longer be recomputed nor linked to them); their consents keep what
       the log and the parties need (ids, parties, datasets, purpose, dates, status) but their ``data_subject``
       becomes one ``erased:<random>`` marker and their ``holder_subject`` (the customer id at the holder) is
       cleared; the stored signed receipts (which name the person) are deleted; the dashboard sessions signed
       in as them end; the events of those consents already published from the outbox are deleted (events
       never name the person: :func:`_event_data`).

    Returns ``{"data_subject": marker, "consents_ended": n, "consents_erased": m, "secret_erased": bool}``.
    Raises NotFound (404) when the broker knows nothing of ``data_subject`` (no consent, no secret: never
    seen, or already erased). What the parties already hold (the recipient's data, the holder's records,
    the events they received) is theirs to erase."""
    ended = 0
    for _ in range(5):  # a consent authorised or asked for meanwhile is ended on the next turn
        ended += await _end_live_consents(rt, data_subject=data_subject)
        try:
            done = await _erase_ended(rt, data_subject=data_subject)
        except _StillLive:
            continue
        forget_valid_consents(rt)
        return done | {"consents_ended": ended}
    raise Conflict(f"the consents of data subject {data_subject!r} kept changing during the erasure: ask again")


LIVE = ("requested", "authorised")


class _StillLive(Exception):
    """A consent of the subject became live between its ending and the erasure (rolls the erasure back)."""


async def _end_live_consents(rt: Runtime, *, data_subject: str) -> int:
    t = models.consents
    async with rt.db.sessions() as s:
        live = (await s.execute(select(t.c.id, t.c.status).where(t.c.data_subject == data_subject).where(t.c.status.in_(LIVE)))).all()
    ended = 0
    for row in live:
        try:
            if row.status == "authorised":
                await revoke(rt, consent_id=row.id, by="data_subject", reason=ERASED_REASON)
            else:
                await _transition(rt, consent_id=row.id, target="rejected", reason=ERASED_REASON, expect="requested")
            ended += 1
        except Conflict:
            pass  # changed meanwhile: the erasure sees it live and comes back, or it ended
    return ended


async def _erase_ended(rt: Runtime, *, data_subject: str) -> dict[str, Any]:
    """Step 2 of :func:`erase_data_subject`, in one transaction; raises _StillLive (rolled back) if a consent of
    the subject is live again, NotFound if nothing is known of them."""
    t = models.consents
    marker = f"erased:{uuid.uuid4().hex}"
    async with rt.db.unit_of_work() as s:
        rows = (await s.execute(select(t.c.id, t.c.status, t.c.holder_id, t.c.holder_subject)
                                .where(t.c.data_subject == data_subject).with_for_update())).all()
        if any(r.status in LIVE for r in rows):
            raise _StillLive()
        secret_erased = await log.erase_subject_secret_in(s, data_subject)
        if not rows and not secret_erased:
            raise NotFound(f"nothing is known of data subject {data_subject!r} (never seen, or already erased)")
        ids = [r.id for r in rows]
        if ids:
            await s.execute(t.update().where(t.c.id.in_(ids)).values(data_subject=marker, holder_subject=None))
            await s.execute(models.receipts.delete().where(models.receipts.c.consent_id.in_(ids)))
            for cid in ids:  # consent ids are hex: no LIKE wildcard in them
                await s.execute(models.outbox.delete().where(models.outbox.c.published_at.is_not(None))
                                .where(models.outbox.c.envelope.like(f'%"{cid}"%')))
        identities = {(r.holder_id, r.holder_subject) for r in rows if r.holder_subject}
        if identities:
            w = models.web_sessions
            for sid, ids_json in (await s.execute(select(w.c.id_hash, w.c.identities))).all():
                if any(tuple(i) in identities for i in ids_json or []):
                    await s.execute(w.delete().where(w.c.id_hash == sid))
    return {"data_subject": marker, "consents_erased": len(ids), "secret_erased": secret_erased}


# ---- token revocation at the holder (RFC 7009), receipts, what the dashboard shows --------------------

async def queue_token_revocation(rt: Runtime, *, consent_id: str, holder_id: str, token: dict[str, Any], delay_s: float = 0.0) -> int:
    """Queue tokens for revocation at the holder (RFC 7009): tokens the broker will not keep (a replayed
    Allow, a dashboard sign-in), and fresh tokens until :func:`authorise` takes them back (``pending_revocation``),
    so that a crash in between leaves no live token behind. Returns the queue entry's id."""
    box = SecretBox(rt.settings.token_encryption_key)
    async with rt.db.unit_of_work() as s:
        res = await s.execute(models.token_revocations.insert().values(
            consent_id=consent_id, holder_id=holder_id, attempts=0, next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay_s),
            sealed=box.seal({k: token.get(k) for k in ("access_token", "refresh_token")}, aad=consent_id))
            .returning(models.token_revocations.c.id))
        return int(res.scalar_one())


async def revoke_tokens_due(rt: Runtime, *, limit: int = 50) -> int:
    """Revoke at the holder the queued tokens of ended consents (RFC 7009), then delete them. A holder that
    cannot be reached is retried with exponential backoff (at most an hour apart; given up after 20 tries,
    the tokens being deleted then: they also expire on their own). Returns how many were done."""
    from . import holder_oauth

    box = SecretBox(rt.settings.token_encryption_key)
    t = models.token_revocations
    now = datetime.now(UTC)
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(t).where(t.c.next_attempt_at <= now).order_by(t.c.id).limit(limit))).all()
    done = 0
    holders: dict[str, dict[str, Any]] = {}
    for row in rows:
        try:
            if row.holder_id not in holders:
                holders[row.holder_id] = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": row.holder_id})
            # a total deadline: one holder answering slowly must not hold up the others, nor the expiry sweep
            await asyncio.wait_for(holder_oauth.revoke(rt.settings, holders[row.holder_id], token=box.open(row.sealed, aad=row.consent_id)),
                                   timeout=15.0)
        except (Unavailable, NotFound, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                exc = Unavailable("the holder's revocation endpoint did not answer in time")
            if row.attempts + 1 < 20 and not isinstance(exc, NotFound):
                delay = min(3600.0, 2.0 ** row.attempts)
                async with rt.db.unit_of_work() as s:
                    await s.execute(t.update().where(t.c.id == row.id).values(
                        attempts=row.attempts + 1, next_attempt_at=now + timedelta(seconds=delay), last_error=str(exc)[:500]))
                continue
        async with rt.db.unit_of_work() as s:
            await s.execute(t.delete().where(t.c.id == row.id))
        done += 1
    return done


async def receipt_writer(rt: Runtime, consent: dict[str, Any], *, base_url: str | None = None) -> Any:
    """A hook for :func:`authorise`: signs the consent's Kantara receipt (it carries the log index of the
    ``authorised`` entry) and stores it in the same transaction. Participants are read from the registry
    beforehand, outside the transaction. ``base_url``: the consent service as the person reaches it
    (``PUBLIC_URL``, else the request's), for the receipt's links."""
    from . import receipts

    holder = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": consent["holder_id"]})
    recipient = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": consent["recipient_id"]})
    signer = receipts.signer_from_settings(rt.settings)

    async def write(s: Any, authorised: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        payload = receipts.kantara_receipt(authorised | {"consented_at": now.isoformat()}, holder=holder, recipient=recipient,
                                           broker=broker_identity(rt, base_url), issued_at=now, signer=signer, consented_at=now)
        jws = receipts.sign_receipt(payload, signer)
        await s.execute(models.receipts.insert().values(consent_id=authorised["id"], log_index=authorised["log_index"], jws=jws, created_at=now))

    return write


def broker_identity(rt: Runtime, base_url: str | None = None) -> dict[str, Any]:
    """The broker as it names itself in receipts: its issuer URL and where the person manages consents."""
    base = (rt.settings.public_url or base_url or "http://127.0.0.1").rstrip("/")
    return {"name": "Portability broker", "issuer": base, "policy_url": f"{base}/me", "manage_url": f"{base}/me"}


async def get_receipt(rt: Runtime, *, consent_id: str) -> dict[str, Any]:
    """The consent's signed receipt ``{consent_id, log_index, jws, payload}``; 404 if it has none (never authorised)."""
    import base64
    import json as _json

    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.receipts).where(models.receipts.c.consent_id == consent_id))).first()
    if row is None:
        raise NotFound(f"consent {consent_id!r} has no receipt")
    part = row.jws.split(".")[1]
    payload = _json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return {"consent_id": consent_id, "log_index": row.log_index, "jws": row.jws, "payload": payload}


async def receipt_proof(rt: Runtime, *, consent_id: str, log_public_key: str, receipt_keys_url: str) -> dict[str, Any]:
    """The proof that the consent's receipt is in the consent log: the receipt, its entry, the latest signed
    checkpoint and the RFC 9162 inclusion proof of the entry in it (the document of :mod:`shared.receiptproof`,
    which checks it offline). Raises NotFound (no receipt) or Unavailable (503: the entry is younger than
    the latest checkpoint, which follows within about a second)."""
    from shared import receiptproof

    rec = await get_receipt(rt, consent_id=consent_id)
    index = int(rec["log_index"])
    note = await log.latest_checkpoint(rt.db)
    size = int(note.split("\n")[1]) if note else 0
    if index >= size:
        raise Unavailable("the receipt's log entry is not in a signed checkpoint yet: ask again in a second", retry_after=1)
    entry = (await log.list_entries(rt.db, start=index, end=index + 1, limit=1))["entries"][0]
    return {"format": receiptproof.FORMAT, "consent_id": consent_id, "receipt": rec["jws"], "receipt_keys": receipt_keys_url,
            "log_index": index, "entry": entry["entry"], "leaf_hash": entry["leaf_hash"], "checkpoint": note, "tree_size": size,
            "inclusion_proof": [h.hex() for h in await log.inclusion_proof(rt.db, index, size)], "log_public_key": log_public_key}


async def consents_with_receipt(rt: Runtime, *, consent_ids: list[str]) -> set[str]:
    if not consent_ids:
        return set()
    async with rt.db.sessions() as s:
        return set((await s.execute(select(models.receipts.c.consent_id).where(models.receipts.c.consent_id.in_(consent_ids)))).scalars())


async def transfers_by_consent(rt: Runtime, *, consent_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The transfers that ended under each consent, from the consent log's ``transfer_*`` entries:
    ``{consent id: [{transfer_id, dataset, records, status, time}]}``, newest first."""
    import json as _json

    if not consent_ids:
        return {}
    t = models.log_entries
    out: dict[str, list[dict[str, Any]]] = {}
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(t.c.consent_id, t.c.entry).where(t.c.consent_id.in_(consent_ids))
                                .where(t.c.event.like("transfer\\_%", escape="\\")).order_by(t.c["index"].desc()).limit(5000))).all()
    for row in rows:
        try:
            e = _json.loads(row.entry)
        except ValueError:
            continue
        out.setdefault(row.consent_id, []).append({"transfer_id": e.get("transfer_id"), "dataset": e.get("dataset"),
                                                   "records": e.get("records"), "status": e.get("status"), "time": e.get("time")})
    return out


async def a_dataset_of_holder(rt: Runtime, *, holder_id: str) -> str | None:
    """A dataset some consent asked this holder for (a scope its authorization server knows), or None."""
    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.consents.c.datasets).where(models.consents.c.holder_id == holder_id)
                               .order_by(models.consents.c.created_at.desc()).limit(1))).first()
    return str(row.datasets[0]) if row and row.datasets else None


async def known_holders(rt: Runtime) -> list[str]:
    """Holders that consents name (the dashboard's sign-in choices)."""
    async with rt.db.sessions() as s:
        return sorted((await s.execute(select(models.consents.c.holder_id).distinct())).scalars())


async def consents_of_identities(rt: Runtime, *, identities: list[tuple[str, str]], limit: int = 500) -> list[dict[str, Any]]:
    """The consents authorised by these holder logins (``(holder_id, holder_subject)`` pairs), newest first."""
    if not identities:
        return []
    from sqlalchemy import and_, or_

    t = models.consents
    match = or_(*(and_(t.c.holder_id == h, t.c.holder_subject == sub) for h, sub in identities[:20]))
    q = _select_consents().where(match).order_by(t.c.created_at.desc(), t.c.id).limit(limit)
    async with rt.db.sessions() as s:
        return [_consent(r) for r in (await s.execute(q)).all()]
