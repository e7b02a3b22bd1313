"""NATS handlers of the consent service."""

from __future__ import annotations

from typing import Any

from shared import subjects
from shared.consumer import ConsumerSpec, Delivery, PullConsumer
from shared.subjects import STREAM_TRANSFER_EVENTS
from shared.runtime import Runtime

from . import service


async def register(rt: Runtime) -> None:
    bus = rt.require_bus()

    async def check(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        return await service.check(rt, consent_id=data["consent_id"], dataset=data["dataset"])

    async def token_get(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        return await service.holder_token(rt, consent_id=data["consent_id"], refresh=bool(data.get("refresh")),
                                          rejected_token_sha256=data.get("rejected_token_sha256"))

    await bus.serve(subjects.CONSENT_CHECK, check, queue="consent")
    await bus.serve(subjects.CONSENT_TOKEN_GET, token_get, queue="consent")


def transfer_events_consumer(rt: Runtime) -> PullConsumer:
    """Marks a one-off consent ``consumed`` once a transfer under it completed (``transfer.events.completed``)."""

    async def on_completed(env: dict[str, Any], _delivery: Delivery) -> None:
        transfer = env["data"].get("transfer") or {}
        if transfer.get("consent_id") and transfer.get("id"):
            await service.mark_consumed(rt, consent_id=str(transfer["consent_id"]), transfer_id=str(transfer["id"]))

    spec = ConsumerSpec(stream=STREAM_TRANSFER_EVENTS.name, durable="consent-transfer-completed",
                        filter_subject=f"{subjects.TRANSFER_EVENTS}.completed", msg_type="transfer.events.completed",
                        ack_wait_s=30, max_deliver=10)
    return PullConsumer(rt.require_bus(), spec, on_completed, fetch_timeout_s=2.0)
