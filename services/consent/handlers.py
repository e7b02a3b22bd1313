"""NATS handlers of the consent service."""

from __future__ import annotations

import time
from typing import Any

from shared import subjects
from shared.consumer import ConsumerSpec, Delivery, PullConsumer, Reject
from shared.subjects import STREAM_REGISTRY_EVENTS, STREAM_TRANSFER_EVENTS
from shared.runtime import Runtime

from . import service
from .log import TRANSFER_ENDINGS


async def register(rt: Runtime) -> None:
    bus = rt.require_bus()

    async def check(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        answer = await service.check(rt, consent_id=data["consent_id"], dataset=data["dataset"])
        service.CONSENT_CHECKS.add(1, {"valid": str(answer["valid"]).lower()})
        service.CONSENT_CHECK_SECONDS.record(time.perf_counter() - started)
        return answer

    async def token_get(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        return await service.holder_token(rt, consent_id=data["consent_id"], refresh=bool(data.get("refresh")),
                                          rejected_token_sha256=data.get("rejected_token_sha256"))

    async def consent_changed(_msg: Any) -> None:
        service.forget_valid_consents(rt)  # another replica's change (our own ones are forgotten at their commit)

    # subscribed before answering checks, so that no change on another replica falls between the two
    await bus.nc.subscribe(f"{subjects.CONSENT_EVENTS}.>", cb=consent_changed)
    await bus.serve(subjects.CONSENT_CHECK, check, queue="consent")
    await bus.serve(subjects.CONSENT_TOKEN_GET, token_get, queue="consent")


async def _log_ending(rt: Runtime, env: dict[str, Any], ending: str) -> dict[str, Any]:
    """Append the transfer's ending to the consent log (idempotent); Reject a message that names no transfer."""
    transfer = env["data"].get("transfer")
    if not isinstance(transfer, dict) or not transfer.get("id") or transfer.get("status") != ending:
        raise Reject(f"transfer.events.{ending} without a transfer whose status is {ending}")
    await service.log_transfer_ending(rt, transfer=transfer)
    return transfer


def transfer_events_consumer(rt: Runtime) -> PullConsumer:
    """On ``transfer.events.completed``: appends the transfer to the consent log (once), then marks a
    one-off consent ``consumed`` (which appends the ``consumed`` entry)."""

    async def on_completed(env: dict[str, Any], _delivery: Delivery) -> None:
        transfer = await _log_ending(rt, env, "completed")
        if transfer.get("consent_id"):
            await service.mark_consumed(rt, consent_id=str(transfer["consent_id"]), transfer_id=str(transfer["id"]))

    spec = ConsumerSpec(stream=STREAM_TRANSFER_EVENTS.name, durable="consent-transfer-completed",
                        filter_subject=f"{subjects.TRANSFER_EVENTS}.completed", msg_type="transfer.events.completed",
                        ack_wait_s=30, max_deliver=10)
    return PullConsumer(rt.require_bus(), spec, on_completed, fetch_timeout_s=2.0)


def transfer_log_consumers(rt: Runtime) -> list[PullConsumer]:
    """One durable pull consumer per other transfer ending (``partial``, ``failed``, ``cancelled``), each
    appending the transfer to the consent log exactly once (dedupe key in ``log_entries``)."""
    consumers = []
    for ending in TRANSFER_ENDINGS:
        if ending == "completed":
            continue

        async def on_ending(env: dict[str, Any], _delivery: Delivery, ending: str = ending) -> None:
            await _log_ending(rt, env, ending)

        spec = ConsumerSpec(stream=STREAM_TRANSFER_EVENTS.name, durable=f"consent-log-transfer-{ending}",
                            filter_subject=f"{subjects.TRANSFER_EVENTS}.{ending}", msg_type=f"transfer.events.{ending}",
                            ack_wait_s=30, max_deliver=10)
        consumers.append(PullConsumer(rt.require_bus(), spec, on_ending, fetch_timeout_s=2.0))
    return consumers


def registry_events_consumer(rt: Runtime) -> PullConsumer:
    """A participant revoked in the registry ends every consent it takes part in, with that reason
    (``registry.events.participant_status_changed``). Suspension only blocks new consents (checked
    when one is asked for) and stops running transfers (the transfer workers listen themselves)."""

    async def on_status(env: dict[str, Any], _delivery: Delivery) -> None:
        p = env["data"].get("participant") or {}
        if p.get("id") and p.get("status") == "revoked":
            await service.end_consents_of_participant(rt, participant_id=str(p["id"]),
                                                      reason=f"participant {p['id']} revoked: {p.get('status_reason') or 'no reason given'}")

    spec = ConsumerSpec(stream=STREAM_REGISTRY_EVENTS.name, durable="consent-registry-status",
                        filter_subject=f"{subjects.REGISTRY_EVENTS}.participant_status_changed",
                        msg_type="registry.events.participant_status_changed", ack_wait_s=30, max_deliver=10)
    return PullConsumer(rt.require_bus(), spec, on_status, fetch_timeout_s=2.0)
