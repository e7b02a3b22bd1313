"""Use cases of the registry. Keyword-only; called by the HTTP routes and the NATS handlers alike."""

from __future__ import annotations

import uuid
import warnings
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy import select

from shared import subjects
from shared.catalogue import DATASET_TYPES
from shared.errors import Conflict, InvalidInput, NotFound, Unprocessable
from shared.outbox import add_event
from shared.runtime import Runtime
from shared.urlguard import check_address as _check_address
from shared.urlguard import check_url as _check_url

from . import models


PROFILE_FIELDS = ("name", "roles", "export_base_url", "import_base_url", "import_protocol", "oauth_token_url", "limits", "legal_entity",
                  "brands", "contacts", "notification_url", "authorization_server_metadata_url", "jwks_uri", "jwks",
                  "allow_private_network")
URL_FIELDS = ("export_base_url", "import_base_url", "oauth_token_url", "notification_url", "authorization_server_metadata_url", "jwks_uri")


def _ts(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def _participant(row: Any) -> dict[str, Any]:
    return {
        "legal_entity": row.legal_entity, "brands": list(row.brands or []), "contacts": list(row.contacts or []),
        "notification_url": row.notification_url, "authorization_server_metadata_url": row.authorization_server_metadata_url,
        "jwks_uri": row.jwks_uri, "jwks": row.jwks, "allow_private_network": bool(row.allow_private_network),
        "status_effective_at": _ts(row.status_effective_at),
        "id": row.id,
        "name": row.name,
        "roles": list(row.roles),
        "status": row.status,
        "status_reason": row.status_reason,
        "export_base_url": row.export_base_url,
        "import_base_url": row.import_base_url,
        "import_protocol": row.import_protocol or "broker",
        "oauth_token_url": row.oauth_token_url,
        "limits": dict(row.limits) if row.limits else None,
        "datasets_offered": list(row.datasets_offered),
        "datasets_accepted": list(row.datasets_accepted),
        "created_at": _ts(row.created_at),
        "updated_at": _ts(row.updated_at),
    }


def _dataset(row: Any) -> dict[str, Any]:
    return {"id": row.id, "version": row.version, "title": row.title, "description": row.description,
            "schema": row.schema, "units": dict(row.units)}


PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")  # RFC 7518 sections 6.2.2, 6.3.2 and 6.4
MAX_PARTICIPANT_KEYS = 10


def _check_jwks(jwks: Any, *, participant_id: str | None, development: bool) -> None:
    """A participant's ``jwks`` must be a JWK Set (RFC 7517 section 5) of 1 to 10 asymmetric PUBLIC keys
    (EC, OKP, or RSA of at least 2,048 bits) that joserfc can read: the registry publishes it as given, so a
    private part ("d", ...) or a symmetric key would be handed to every reader. Outside development, the
    development keys (``shared.authclient.is_dev_key``, and the participant's own
    ``dev_participant_key``, whose seed is public) are refused too. Raises InvalidInput / Unprocessable."""
    from joserfc.errors import SecurityWarning
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    from shared import authclient

    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not 1 <= len(jwks["keys"]) <= MAX_PARTICIPANT_KEYS:
        raise InvalidInput(f"jwks must be a JWK Set of 1 to {MAX_PARTICIPANT_KEYS} keys: {{\"keys\": [...]}}", field="jwks")
    own_dev_key = authclient.public_jwks(authclient.dev_participant_key(participant_id))["keys"][0] if participant_id else None
    for n, k in enumerate(jwks["keys"]):
        where = f"jwks key {n}" + (f" ({k.get('kid')!r})" if isinstance(k, dict) and k.get("kid") else "")
        if not isinstance(k, dict):
            raise InvalidInput(f"{where} is not a JSON object", field="jwks")
        private = [m for m in PRIVATE_JWK_MEMBERS if m in k]
        if private:
            raise InvalidInput(f"{where} holds private or secret key material ({', '.join(private)}): register only the public key "
                               "(the registry publishes this set)", field="jwks")
        cls = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}.get(str(k.get("kty")))
        if cls is None:
            raise InvalidInput(f"{where} has kty {k.get('kty')!r}: only EC, OKP and RSA public keys", field="jwks")
        try:
            with warnings.catch_warnings():  # joserfc warns of a small RSA key: refused just below, with a reason
                warnings.simplefilter("ignore", SecurityWarning)
                key = cls.import_key(dict(k))
        except Exception as exc:  # joserfc and cryptography raise several types for a malformed key
            raise InvalidInput(f"{where} is not a usable {k['kty']} public key: {type(exc).__name__}", field="jwks") from None
        bits = getattr(key.raw_value, "key_size", None) if cls is RSAKey else None
        if bits is not None and bits < 2048:
            raise InvalidInput(f"{where} is an RSA key of {bits} bits: at least 2,048", field="jwks")
        if not development and (authclient.is_dev_key(k) or (own_dev_key and (k.get("kty"), k.get("crv"), k.get("x")) ==
                                                              (own_dev_key["kty"], own_dev_key["crv"], own_dev_key["x"]))):
            raise Unprocessable(f"{where} is a development key (its seed is public): outside development, register a key of your own",
                                field="jwks")


async def _validate_participant(rt: Runtime, body: dict[str, Any], *, participant_id: str | None = None) -> None:
    roles = set(body["roles"])
    if len(roles) != len(body["roles"]):
        raise InvalidInput("roles must not repeat")
    if "holder" in roles and not body.get("export_base_url"):
        raise InvalidInput("a data holder needs export_base_url")
    if "recipient" in roles and not body.get("import_base_url"):
        raise InvalidInput("a data recipient needs import_base_url")
    if body.get("datasets_offered") and "holder" not in roles:
        raise InvalidInput("only a data holder can offer datasets")
    if body.get("datasets_accepted") and "recipient" not in roles:
        raise InvalidInput("only a data recipient can accept datasets")
    dev = rt.settings.environment == "development"
    for field in URL_FIELDS:
        _check_url(body.get(field), field, development=dev)
        if body.get(field) and not body.get("allow_private_network"):
            await _check_address(str(urlsplit(body[field]).hostname), field)
    if body.get("jwks") is not None:
        _check_jwks(body["jwks"], participant_id=participant_id, development=dev)
    wanted = set(body.get("datasets_offered", [])) | set(body.get("datasets_accepted", []))
    if wanted:
        async with rt.db.sessions() as s:
            known = set((await s.execute(select(models.dataset_types.c.id).where(models.dataset_types.c.id.in_(wanted)))).scalars())
        missing = sorted(wanted - known)
        if missing:
            raise Unprocessable(f"unknown dataset type(s): {', '.join(missing)}", unknown=missing)


async def _record_change(s: Any, *, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
    await s.execute(models.changes.insert().values(time=datetime.now(UTC), actor=actor, action=action, target=target, details=details))


async def list_changes(rt: Runtime, *, target: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """The registry's change history, newest first: time, actor, action, target and details."""
    t = models.changes
    q = select(t).order_by(t.c.seq.desc()).limit(limit).offset(offset)
    if target:
        q = q.where(t.c.target == target)
    async with rt.db.sessions() as s:
        rows = (await s.execute(q)).all()
    return [{"time": _ts(r.time), "actor": r.actor, "action": r.action, "target": r.target, "details": r.details} for r in rows]


async def register_participant(rt: Runtime, *, body: dict[str, Any], participant_id: str | None = None, replace: bool = False,
                               actor: str = "unauthenticated") -> tuple[dict[str, Any], bool]:
    """Create (or, with ``replace``, create or replace) a participant. Returns (participant, created).

    Raises InvalidInput / Unprocessable for a bad body, Conflict if the id exists and not ``replace``.
    """
    pid = participant_id or body.get("id") or uuid.uuid4().hex
    await _validate_participant(rt, body, participant_id=pid)
    now = datetime.now(UTC)
    values = {k: body.get(k) for k in PROFILE_FIELDS}
    values["allow_private_network"] = bool(values["allow_private_network"])
    if values["limits"] and "holder" not in body["roles"]:
        raise InvalidInput("only a data holder sets limits")
    values["datasets_offered"] = list(body.get("datasets_offered", []))
    values["datasets_accepted"] = list(body.get("datasets_accepted", []))
    t = models.participants
    async with rt.db.unit_of_work() as s:
        existing = (await s.execute(select(t).where(t.c.id == pid).with_for_update())).first()
        if existing is not None and not replace:
            raise Conflict(f"participant {pid!r} already exists")
        if existing is None:
            await s.execute(t.insert().values(id=pid, status="active", status_reason=None, status_effective_at=now, created_at=now,
                                              updated_at=now, **values))
            event = "participant_registered"
        else:
            await s.execute(t.update().where(t.c.id == pid).values(updated_at=now, **values))
            event = "participant_updated"
        row = (await s.execute(select(t).where(t.c.id == pid))).one()
        out = _participant(row)
        await _record_change(s, actor=actor, action=event, target=pid,
                             details={"before": _participant(existing) if existing is not None else None, "after": out})
        await add_event(s, models.outbox, f"{subjects.REGISTRY_EVENTS}.{event}", f"registry.events.{event}", {"participant": out})
    rt.events_committed()
    return out, existing is None


async def set_status(rt: Runtime, *, participant_id: str, status: str, reason: str, actor: str = "unauthenticated") -> dict[str, Any]:
    """Change a participant's status (active, suspended, revoked); publishes ``registry.events.participant_status_changed``."""
    t = models.participants
    async with rt.db.unit_of_work() as s:
        row = (await s.execute(select(t).where(t.c.id == participant_id).with_for_update())).first()
        if row is None:
            raise NotFound(f"no participant {participant_id!r}")
        now = datetime.now(UTC)
        await s.execute(t.update().where(t.c.id == participant_id).values(status=status, status_reason=reason, status_effective_at=now,
                                                                           updated_at=now))
        out = _participant((await s.execute(select(t).where(t.c.id == participant_id))).one())
        await _record_change(s, actor=actor, action="participant_status_changed", target=participant_id,
                             details={"from": row.status, "to": status, "reason": reason})
        await add_event(s, models.outbox, f"{subjects.REGISTRY_EVENTS}.participant_status_changed",
                        "registry.events.participant_status_changed", {"participant": out, "previous_status": row.status})
    rt.events_committed()
    return out


async def get_participant(rt: Runtime, *, participant_id: str) -> dict[str, Any]:
    """The participant ``participant_id``; raises NotFound."""
    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.participants).where(models.participants.c.id == participant_id))).first()
    if row is None:
        raise NotFound(f"no participant {participant_id!r}")
    return _participant(row)


async def list_participants(rt: Runtime, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(models.participants).order_by(models.participants.c.id).limit(limit).offset(offset))).all()
    return [_participant(r) for r in rows]


async def register_dataset(rt: Runtime, *, body: dict[str, Any], replace: bool = False, actor: str = "unauthenticated") -> dict[str, Any]:
    """Add a dataset type. Raises InvalidInput if its schema is not a valid JSON Schema, Conflict if it exists."""
    try:
        Draft202012Validator.check_schema(body["schema"])
    except SchemaError as exc:
        raise InvalidInput(f"schema is not a valid JSON Schema: {exc.message}") from None
    bad_refs = sorted(r for r in _refs(body["schema"]) if not r.startswith("#"))
    if bad_refs:
        raise InvalidInput(f"schema may only refer inside itself ($ref starting with #), not to {bad_refs[0]!r}")
    t = models.dataset_types
    async with rt.db.unit_of_work() as s:
        existing = (await s.execute(select(t.c.id).where(t.c.id == body["id"]))).first()
        if existing is not None and not replace:
            raise Conflict(f"dataset type {body['id']!r} already exists")
        if existing is not None:
            await s.execute(t.delete().where(t.c.id == body["id"]))
        await s.execute(t.insert().values(**{k: body[k] for k in ("id", "version", "title", "description", "schema", "units")}))
        await _record_change(s, actor=actor, action="dataset_registered", target=body["id"], details={"version": body["version"]})
        await add_event(s, models.outbox, f"{subjects.REGISTRY_EVENTS}.dataset_registered", "registry.events.dataset_registered",
                        {"dataset": {"id": body["id"], "version": body["version"]}})
    rt.events_committed()
    return body


def _refs(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        found = {str(v) for k, v in obj.items() if k in ("$ref", "$dynamicRef")}
        return found.union(*(_refs(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_refs(v) for v in obj))
    return set()


async def get_dataset(rt: Runtime, *, dataset_id: str) -> dict[str, Any]:
    """The dataset type ``dataset_id`` with its record schema; raises NotFound."""
    async with rt.db.sessions() as s:
        row = (await s.execute(select(models.dataset_types).where(models.dataset_types.c.id == dataset_id))).first()
    if row is None:
        raise NotFound(f"no dataset type {dataset_id!r}")
    return _dataset(row)


async def list_datasets(rt: Runtime) -> list[dict[str, Any]]:
    async with rt.db.sessions() as s:
        rows = (await s.execute(select(models.dataset_types).order_by(models.dataset_types.c.id))).all()
    return [_dataset(r) for r in rows]


async def seed_catalogue(rt: Runtime) -> None:
    """Insert the built-in dataset types of :mod:`shared.catalogue` that are not there yet."""
    t = models.dataset_types
    async with rt.db.unit_of_work() as s:
        known = set((await s.execute(select(t.c.id))).scalars())
        for dt in DATASET_TYPES.values():
            if dt.id not in known:
                await s.execute(t.insert().values(**dt.as_dict()))
