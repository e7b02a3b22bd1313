"""HTTP API of the transfer service; the process also runs ``TRANSFER_WORKERS_IN_PROCESS`` workers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from opentelemetry.metrics import Observation

from shared import subjects, telemetry
from shared.auth import ADMIN, HOLDER, RECIPIENT, Caller, own_party, requires
from shared.consumer import PullConsumer
from shared.http import PROBLEM_RESPONSES
from shared.runtime import Runtime, build_app
from shared.settings import Settings

from . import models, service
from .schemas import Transfer, TransferList, TransferRequest
from .schedule import Scheduler, consent_events_consumer
from .worker import make_consumers

router = APIRouter(prefix="/transfers", tags=["transfers"], responses=PROBLEM_RESPONSES)
PARTY = requires(HOLDER, RECIPIENT, ADMIN)  # then: a party to the consent or transfer, or an admin


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


@router.post("", status_code=202, response_model=Transfer, responses={403: PROBLEM_RESPONSES[400]})
async def start_transfer(body: TransferRequest, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """Queue a transfer. 403 problem (``reason: consent_invalid``) without a valid authorised consent,
    (``reason: not_a_party``) under someone else's consent."""
    return await service.start_transfer(_rt(request), consent_id=body.consent_id, dataset=body.dataset, caller=caller)


@router.get("", response_model=TransferList)
async def list_transfers(request: Request, consent_id: str | None = Query(None, max_length=64),
                         limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000), caller: Caller = Depends(PARTY)) -> Any:
    """The caller's transfers (as holder or recipient; an admin sees all), newest first."""
    return {"transfers": await service.list_transfers(_rt(request), consent_id=consent_id, party=own_party(caller), limit=limit, offset=offset)}


@router.get("/{transfer_id}", response_model=Transfer)
async def get_transfer(transfer_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """One transfer of the caller's (403 ``not_a_party`` otherwise)."""
    return await service.get_transfer(_rt(request), transfer_id=transfer_id, caller=caller)


@router.post("/{transfer_id}/resume", status_code=202, response_model=Transfer, responses={403: PROBLEM_RESPONSES[400]})
async def resume_transfer(transfer_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """Resume a transfer that failed for a passing reason (destination full, retries exhausted); 409 otherwise."""
    return await service.resume_transfer(_rt(request), transfer_id=transfer_id, caller=caller)


class QueueLag:
    """``transfer_queue_pending``: jobs waiting on the work queue, and ``transfer_queue_ack_pending``,
    jobs being worked on, read from the durable consumer every 5 s."""

    def __init__(self) -> None:
        self.pending = 0
        self.ack_pending = 0
        self._task: asyncio.Task[None] | None = None
        m = telemetry.meter()
        m.create_observable_gauge("transfer_queue_pending", callbacks=[lambda _o: [Observation(self.pending)]])
        m.create_observable_gauge("transfer_queue_ack_pending", callbacks=[lambda _o: [Observation(self.ack_pending)]])

    def start(self, rt: Runtime) -> None:
        async def loop() -> None:
            while True:
                try:
                    info = await rt.require_bus().js.consumer_info("TRANSFER_JOBS", subjects.TRANSFER_WORKERS_DURABLE)
                    self.pending, self.ack_pending = int(info.num_pending or 0), int(info.num_ack_pending or 0)
                except Exception:  # not created yet, NATS away: try again
                    pass
                await asyncio.sleep(5)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = Runtime("transfer", models.metadata, models.outbox, settings)
    consumers: list[PullConsumer] = []

    scheduler = Scheduler(rt)
    lag = QueueLag()

    async def on_start(rt: Runtime) -> None:
        consumers.extend(await make_consumers(rt, rt.settings.transfer_workers_in_process))
        consumers.append(consent_events_consumer(rt))
        for c in consumers:
            c.start()
        rt.ready_checks["workers"] = lambda: all(c.running for c in consumers)
        scheduler.start()
        lag.start(rt)

    async def on_stop(rt: Runtime) -> None:
        await lag.stop()
        await scheduler.stop()
        await asyncio.gather(*(c.stop(timeout=5.0) for c in consumers))

    app = build_app(rt, title="Portability broker: transfer", description="Transfers between data holders and data recipients.",
                    on_start=on_start, on_stop=on_stop)
    app.include_router(router)
    return app
