"""Consent notifications to the data holder and the data recipient, at the ``notification_url`` of their
registry entry.

One durable JetStream consumer per party role on ``consent.events.>``: a party that is down does not
hold back the other one. A notification is retried with exponential backoff (capped at five minutes)
for as long as the party does not acknowledge it with a 2xx, so a party that was down gets it when it
comes back. The party that caused the change (``by``: a holder revoking) is not notified of its own act,
and an idempotent repeat (two revocations that cross) publishes no second event: no ping-pong.

The body is a Security Event Token (RFC 8417), a JWS signed with the broker's receipt key (verify it with
``/.well-known/jwks.json``), sent as ``application/secevent+jwt``; its ``events`` member holds
``{"https://portability-broker.example/events/consent-<status>": {consent fields}}`` and ``jti`` doubles
as the ``Idempotency-Key`` header (a redelivered notification carries the same one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from shared import subjects, telemetry
from shared.consumer import ConsumerSpec, Delivery, PullConsumer, Retry
from shared.errors import NotFound
from shared.runtime import Runtime
from shared.subjects import STREAM_CONSENT_EVENTS

from . import receipts

log = logging.getLogger("consent.notify")
NOTIFIED = frozenset({"authorised", "rejected", "revoked", "expired", "consumed", "superseded"})
EVENT_URI = "https://portability-broker.example/events/consent-"
CALL_DEADLINE_S = 10.0
_meter = telemetry.meter()
NOTIFICATIONS = _meter.create_counter("consent_notifications", description="consent notifications sent, by party role and outcome")


def security_event(env: dict[str, Any], *, role: str, issuer: str) -> dict[str, Any]:
    """The RFC 8417 section 2.2 payload of one consent event for the party in ``role``."""
    consent = env["data"]["consent"]
    status = consent["status"]
    keep = ("id", "status", "status_reason", "holder_id", "recipient_id", "datasets", "expires_at", "updated_at", "supersedes",
            "superseded_by", "log_index")
    return {
        "iss": issuer, "iat": int(time.time()), "jti": f"{env['id']}:{role}", "aud": consent[f"{role}_id"],
        "txn": env["id"], "sub_id": {"format": "opaque", "id": consent["id"]},
        "events": {f"{EVENT_URI}{status}": {k: consent.get(k) for k in keep} | {"by": env["data"].get("by")}},
    }


def consumer(rt: Runtime, role: str) -> PullConsumer:
    """The durable ``consent-notify-<role>`` consumer."""
    signer = receipts.signer_from_settings(rt.settings)

    async def on_event(env: dict[str, Any], delivery: Delivery) -> None:
        data = env.get("data") or {}
        consent = data.get("consent") or {}
        status = consent.get("status")
        if status not in NOTIFIED or not consent.get(f"{role}_id"):
            return
        if data.get("by") == role:
            return  # its own act
        try:
            party = await rt.require_bus().request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": consent[f"{role}_id"]})
        except NotFound:
            return
        url = party.get("notification_url")
        if not url:
            return
        payload = security_event(env, role=role, issuer=rt.settings.public_url or rt.settings.log_origin)
        token = receipts.sign_receipt(payload, signer, typ="secevent+jwt")
        delay = min(2.0 ** min(delivery.number, 9), 300.0)
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                # a total deadline: a party that answers one byte at a time must not hold the others' notifications
                resp = await asyncio.wait_for(client.post(str(url), content=token, headers={
                    "Content-Type": "application/secevent+jwt", "Idempotency-Key": payload["jti"]}), timeout=CALL_DEADLINE_S)
        except (httpx.HTTPError, TimeoutError) as exc:
            NOTIFICATIONS.add(1, {"role": role, "outcome": "unreachable"})
            raise Retry(f"{role} {party['id']} unreachable: {type(exc).__name__}", delay=delay) from None
        if not resp.is_success:
            NOTIFICATIONS.add(1, {"role": role, "outcome": f"http_{resp.status_code}"})
            raise Retry(f"{role} {party['id']} answered {resp.status_code}", delay=delay)
        NOTIFICATIONS.add(1, {"role": role, "outcome": "delivered"})

    spec = ConsumerSpec(stream=STREAM_CONSENT_EVENTS.name, durable=f"consent-notify-{role}", filter_subject=f"{subjects.CONSENT_EVENTS}.>",
                        msg_type=None, ack_wait_s=30, max_deliver=-1)
    return PullConsumer(rt.require_bus(), spec, on_event, fetch_timeout_s=2.0)
