"""NATS handlers of the registry: ``registry.participant.get`` and ``registry.dataset.get``."""

from __future__ import annotations

from typing import Any

from shared import subjects
from shared.runtime import Runtime

from . import service


async def register(rt: Runtime) -> None:
    bus = rt.require_bus()

    async def participant_get(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        return await service.get_participant(rt, participant_id=data["participant_id"])

    async def dataset_get(data: dict[str, Any], _env: dict[str, Any]) -> dict[str, Any]:
        return await service.get_dataset(rt, dataset_id=data["dataset_id"])

    await bus.serve(subjects.REGISTRY_PARTICIPANT_GET, participant_get, queue="registry")
    await bus.serve(subjects.REGISTRY_DATASET_GET, dataset_get, queue="registry")
