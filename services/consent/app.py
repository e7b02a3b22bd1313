"""HTTP API of the consent service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request

from shared.consumer import PullConsumer
from shared.http import PROBLEM_RESPONSES
from shared.runtime import Runtime, build_app
from shared.settings import Settings

from . import handlers, models, service
from .schemas import Consent, ConsentList, ConsentRequest, HolderToken, Revocation

router = APIRouter(prefix="/consents", tags=["consents"], responses=PROBLEM_RESPONSES)


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


@router.post("", status_code=201, response_model=Consent)
async def request_consent(body: ConsentRequest, request: Request) -> Any:
    """Ask for a consent. 422 problem if a participant or dataset is unknown or unfit; nothing is stored then."""
    return await service.request_consent(_rt(request), body=body.model_dump())


@router.get("", response_model=ConsentList)
async def list_consents(request: Request, data_subject: str | None = Query(None, max_length=128),
                        limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000)) -> Any:
    return {"consents": await service.list_consents(_rt(request), data_subject=data_subject, limit=limit, offset=offset)}


@router.get("/{consent_id}", response_model=Consent)
async def get_consent(consent_id: str, request: Request) -> Any:
    return await service.get_consent(_rt(request), consent_id=consent_id)


@router.post("/{consent_id}/authorise", response_model=Consent)
async def authorise(consent_id: str, body: HolderToken, request: Request) -> Any:
    """Authorise a requested consent with the holder's OAuth tokens (kept sealed; never returned). 409 otherwise."""
    return await service.authorise(_rt(request), consent_id=consent_id, token=body.model_dump())


@router.post("/{consent_id}/reject", response_model=Consent)
async def reject(consent_id: str, request: Request) -> Any:
    return await service.reject(_rt(request), consent_id=consent_id)


@router.post("/{consent_id}/revoke", response_model=Consent)
async def revoke(consent_id: str, body: Revocation, request: Request) -> Any:
    """Revoke an authorised consent; idempotent. Running transfers under it stop."""
    return await service.revoke(_rt(request), consent_id=consent_id, by=body.by, reason=body.reason)


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = Runtime("consent", models.metadata, models.outbox, settings)
    consumers: list[PullConsumer] = []

    async def on_start(rt: Runtime) -> None:
        await handlers.register(rt)
        c = handlers.transfer_events_consumer(rt)
        c.start()
        consumers.append(c)
        rt.ready_checks["transfer_events"] = lambda: c.running

    async def on_stop(_rt: Runtime) -> None:
        for c in consumers:
            await c.stop(timeout=3.0)

    app = build_app(rt, title="Portability broker: consent", description="Consent lifecycle.", on_start=on_start, on_stop=on_stop)
    app.include_router(router)
    return app
