"""NATS handlers of the consent service."""

from __future__ import annotations

from typing import Any

from shared import subjects
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
