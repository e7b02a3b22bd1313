"""HTTP API of the registry service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response

from shared.auth import ADMIN as ADMIN_SCOPE
from shared.auth import Caller, requires
from shared.http import PROBLEM_RESPONSES
from shared.runtime import Runtime, build_app
from shared.settings import Settings

from . import handlers, models, oauth, service
from .schemas import DatasetList, DatasetType, Participant, ParticipantCreate, ParticipantIn, ParticipantList, StatusChange

router = APIRouter(responses=PROBLEM_RESPONSES)
ADMIN = requires(ADMIN_SCOPE)  # registry changes: the broker's operators; the change history records which one
ADMIN_ONLY = [Depends(ADMIN)]


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _cacheable(request: Request, body: Any, model: Any) -> Response:
    """A discovery answer with a strong ETag and ``Cache-Control`` (RFC 9111); 304 if the client's copy is current."""
    import hashlib
    import json

    from fastapi.encoders import jsonable_encoder

    payload = json.dumps(jsonable_encoder(model.model_validate(body), by_alias=True), separators=(",", ":"), sort_keys=True).encode()
    etag = '"' + hashlib.sha256(payload).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=30"}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(payload, media_type="application/json", headers=headers)


@router.post("/participants", status_code=201, response_model=Participant, tags=["participants"])
async def create_participant(body: ParticipantCreate, request: Request, caller: Caller = Depends(ADMIN)) -> Any:
    """Register a data holder and/or data recipient. 409 if the id is taken."""
    out, _ = await service.register_participant(_rt(request), body=body.model_dump(), actor=caller.client_id)
    oauth.authority_for(_rt(request)).forget_keys(out.get("jwks_uri"))
    return out


@router.put("/participants/{participant_id}", response_model=Participant, tags=["participants"])
async def put_participant(body: ParticipantIn, request: Request, response: Response, caller: Caller = Depends(ADMIN),
                          participant_id: str = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")) -> Any:
    """Create or replace the participant ``participant_id`` (its status is kept)."""
    out, created = await service.register_participant(_rt(request), body=body.model_dump(), participant_id=participant_id, replace=True,
                                                          actor=caller.client_id)
    # saving the entry again makes a key removed from its jwks_uri refused at once, not after the cache time
    oauth.authority_for(_rt(request)).forget_keys(out.get("jwks_uri"))
    response.status_code = 201 if created else 200
    return out


@router.get("/participants", response_model=ParticipantList, tags=["discovery"])
async def list_participants(request: Request, limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000)) -> Any:
    """Participants, their endpoints, keys and status (public, cacheable: ETag, Cache-Control)."""
    return _cacheable(request, {"participants": await service.list_participants(_rt(request), limit=limit, offset=offset)}, ParticipantList)


@router.get("/participants/{participant_id}", response_model=Participant, tags=["discovery"])
async def get_participant(participant_id: str, request: Request) -> Any:
    return _cacheable(request, await service.get_participant(_rt(request), participant_id=participant_id), Participant)


@router.get("/changes", tags=["admin"], dependencies=ADMIN_ONLY)
async def list_changes(request: Request, target: str | None = Query(None, max_length=200), limit: int = Query(100, ge=1, le=500),
                       offset: int = Query(0, ge=0, le=1_000_000)) -> Any:
    """Every change to the registry, newest first, with who made it and when."""
    return {"changes": await service.list_changes(_rt(request), target=target, limit=limit, offset=offset)}


@router.post("/participants/{participant_id}/status", response_model=Participant, tags=["participants"])
async def change_status(participant_id: str, body: StatusChange, request: Request, caller: Caller = Depends(ADMIN)) -> Any:
    """Set a participant active, suspended or revoked, with a reason."""
    return await service.set_status(_rt(request), participant_id=participant_id, status=body.status, reason=body.reason,
                                  actor=caller.client_id)


@router.get("/datasets", response_model=DatasetList, response_model_by_alias=True, tags=["discovery"])
async def list_datasets(request: Request) -> Any:
    """The dataset catalogue (public, cacheable)."""
    return _cacheable(request, {"datasets": await service.list_datasets(_rt(request))}, DatasetList)


@router.get("/datasets/{dataset_id}", response_model=DatasetType, response_model_by_alias=True, tags=["discovery"])
async def get_dataset(dataset_id: str, request: Request) -> Any:
    return _cacheable(request, await service.get_dataset(_rt(request), dataset_id=dataset_id), DatasetType)


@router.post("/datasets", status_code=201, response_model=DatasetType, response_model_by_alias=True, tags=["datasets"])
async def create_dataset(body: DatasetType, request: Request, caller: Caller = Depends(ADMIN)) -> Any:
    """Add a dataset type with its record JSON Schema."""
    return await service.register_dataset(_rt(request), body=body.model_dump(by_alias=True), actor=caller.client_id)


async def _on_start(rt: Runtime) -> None:
    await service.seed_catalogue(rt)
    await handlers.register(rt)
    await oauth.register_handlers(rt)  # registry.oauth.jwks


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = Runtime("registry", models.metadata, models.outbox, settings)
    app = build_app(rt, title="Portability broker: registry", description="Participants and the dataset catalogue.", on_start=_on_start)
    app.state.token_verifier = oauth.authority_for(rt).token_verifier()  # its own keys, no NATS round trip
    app.state.token_verifier_local = True
    app.include_router(router)
    app.include_router(oauth.router)  # the OAuth 2.0 authorization server: /oauth/*, /.well-known/oauth-authorization-server
    return app
