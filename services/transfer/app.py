"""HTTP API of the transfer service; the process also runs ``TRANSFER_WORKERS_IN_PROCESS`` workers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request

from shared.consumer import PullConsumer
from shared.http import PROBLEM_RESPONSES
from shared.runtime import Runtime, build_app
from shared.settings import Settings

from . import models, service
from .schemas import Transfer, TransferList, TransferRequest
from .schedule import Scheduler, consent_events_consumer
from .worker import make_consumers

router = APIRouter(prefix="/transfers", tags=["transfers"], responses=PROBLEM_RESPONSES)


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


@router.post("", status_code=202, response_model=Transfer, responses={403: PROBLEM_RESPONSES[400]})
async def start_transfer(body: TransferRequest, request: Request) -> Any:
    """Queue a transfer. 403 problem (``reason: consent_invalid``) without a valid authorised consent."""
    return await service.start_transfer(_rt(request), consent_id=body.consent_id, dataset=body.dataset)


@router.get("", response_model=TransferList)
async def list_transfers(request: Request, consent_id: str | None = Query(None, max_length=64),
                         limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000)) -> Any:
    return {"transfers": await service.list_transfers(_rt(request), consent_id=consent_id, limit=limit, offset=offset)}


@router.get("/{transfer_id}", response_model=Transfer)
async def get_transfer(transfer_id: str, request: Request) -> Any:
    return await service.get_transfer(_rt(request), transfer_id=transfer_id)


@router.post("/{transfer_id}/resume", status_code=202, response_model=Transfer, responses={403: PROBLEM_RESPONSES[400]})
async def resume_transfer(transfer_id: str, request: Request) -> Any:
    """Resume a transfer that failed for a passing reason (destination full, retries exhausted); 409 otherwise."""
    return await service.resume_transfer(_rt(request), transfer_id=transfer_id)


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = Runtime("transfer", models.metadata, models.outbox, settings)
    consumers: list[PullConsumer] = []

    scheduler = Scheduler(rt)

    async def on_start(rt: Runtime) -> None:
        consumers.extend(await make_consumers(rt, rt.settings.transfer_workers_in_process))
        consumers.append(consent_events_consumer(rt))
        for c in consumers:
            c.start()
        rt.ready_checks["workers"] = lambda: all(c.running for c in consumers)
        scheduler.start()

    async def on_stop(rt: Runtime) -> None:
        await scheduler.stop()
        await asyncio.gather(*(c.stop(timeout=5.0) for c in consumers))

    app = build_app(rt, title="Portability broker: transfer", description="Transfers between data holders and data recipients.",
                    on_start=on_start, on_stop=on_stop)
    app.include_router(router)
    return app
