"""HTTP API of the consent service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from shared.consumer import PullConsumer
from shared.db import Database
from shared.errors import NotFound
from shared.http import PROBLEM_RESPONSES, install_problem_handlers
from shared.runtime import Runtime, build_app
from shared.settings import Settings
from shared.tlog import Signer

from . import handlers, log, models, service
from .schemas import (
    Consent,
    ConsentList,
    ConsentRequest,
    ConsistencyProof,
    HolderToken,
    InclusionProof,
    LogEntries,
    Revocation,
)

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


subjects_router = APIRouter(prefix="/subjects", tags=["data subjects"], responses=PROBLEM_RESPONSES)


@subjects_router.delete("/{data_subject}/secret", status_code=204)
async def erase_subject_secret(data_subject: str, request: Request) -> Response:
    """Erase the secret behind the data subject's pseudonym in the consent log (GDPR Art. 17): the log stays
    verifiable, its entries can no longer be linked to the person. 404 if there is none."""
    await service.erase_subject_secret(_rt(request), data_subject=data_subject)
    return Response(status_code=204)


# ---- the consent log, for regulators (read-only; RFC 9162 proofs, C2SP signed checkpoints) ----------

log_router = APIRouter(prefix="/log", tags=["consent log"], responses=PROBLEM_RESPONSES)
TEXT: dict[int | str, dict[str, Any]] = {200: {"content": {"text/plain": {}}}}


@log_router.get("/checkpoint", response_class=PlainTextResponse, responses=TEXT)
async def log_checkpoint(request: Request) -> PlainTextResponse:
    """The latest signed checkpoint: a C2SP tlog-checkpoint signed note (origin, size, base64 root; Ed25519)."""
    note = await log.latest_checkpoint(_rt(request).db)
    if note is None:
        raise NotFound("no checkpoint has been signed yet")
    return PlainTextResponse(note, headers={"cache-control": "no-store"})


@log_router.get("/public-key", response_class=PlainTextResponse, responses=TEXT)
async def log_public_key(request: Request) -> PlainTextResponse:
    """The checkpoint verifier key ``<name>+<hex key id>+<base64(0x01 || Ed25519 public key)>`` (C2SP signed-note)."""
    return PlainTextResponse(request.app.state.log_signer.vkey)


@log_router.get("/entries", response_model=LogEntries)
async def log_entries(
    request: Request,
    start: int = Query(0, ge=0, description="first index (inclusive)"),
    end: int | None = Query(None, ge=0, description="last index (exclusive)"),
    limit: int = Query(log.MAX_PAGE, ge=1, le=log.MAX_PAGE),
    consent_id: str | None = Query(None, max_length=64),
    holder_id: str | None = Query(None, max_length=64),
    recipient_id: str | None = Query(None, max_length=64),
    since: datetime | None = Query(None, description="entries at or after this RFC 3339 time"),
    until: datetime | None = Query(None, description="entries before this RFC 3339 time"),
) -> Any:
    """Entries by index, at most 1000 per page, optionally filtered; follow ``next_start`` for more."""
    return await log.list_entries(_rt(request).db, start=start, end=end, limit=limit, consent_id=consent_id, holder_id=holder_id,
                                  recipient_id=recipient_id, since=since, until=until)


async def _default_size(request: Request, size: int | None) -> int:
    if size is not None:
        return size
    signed = await log.latest_checkpoint_size(_rt(request).db)
    if signed is None:
        raise NotFound("no checkpoint has been signed yet")
    return signed


@log_router.get("/proof/inclusion", response_model=InclusionProof)
async def log_inclusion_proof(request: Request, index: int = Query(ge=0),
                              size: int | None = Query(None, ge=1, description="tree size; default: the latest checkpoint's")) -> Any:
    """RFC 9162 section 2.1.3.1 inclusion proof of entry ``index`` in the tree of ``size`` entries (hex hashes)."""
    size = await _default_size(request, size)
    proof = await log.inclusion_proof(_rt(request).db, index, size)
    return {"index": index, "size": size, "proof": [h.hex() for h in proof]}


@log_router.get("/proof/consistency", response_model=ConsistencyProof)
async def log_consistency_proof(request: Request, first: int = Query(ge=1),
                                second: int | None = Query(None, ge=1, description="default: the latest checkpoint's size")) -> Any:
    """RFC 9162 section 2.1.4.1 proof that the tree of ``first`` entries is a prefix of the tree of ``second``."""
    second = await _default_size(request, second)
    proof = await log.consistency_proof(_rt(request).db, first, second)
    return {"first": first, "second": second, "proof": [h.hex() for h in proof]}


@log_router.get("/export.jsonl", response_class=StreamingResponse, responses={200: {"content": {"application/jsonl": {}}}})
async def log_export(request: Request, start: int = Query(0, ge=0), end: int | None = Query(None, ge=0)) -> StreamingResponse:
    """Every entry with ``start <= index < end`` (default: to the current size) as JSON Lines, streamed;
    one ``{"index", "entry", "leaf_hash"}`` object per line."""
    db = _rt(request).db
    if end is None:
        end = await log.current_size(db)

    async def lines() -> AsyncIterator[bytes]:
        async for item in log.iter_entries(db, start, end):
            yield json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"

    return StreamingResponse(lines(), media_type="application/jsonl")


def log_reader_app(db: Database, signer: Signer) -> FastAPI:
    """The read-only ``/log`` API alone over ``db`` (no NATS, no writes): for a read replica, benchmarks, tests.
    The caller owns ``db`` (creates its tables, disposes of it)."""
    app = FastAPI(title="Portability broker: consent log (read-only)", version="0.1.0")
    app.state.runtime = SimpleNamespace(db=db)  # the /log routes only use the runtime's database
    app.state.log_signer = signer
    install_problem_handlers(app)
    app.include_router(log_router)
    return app


def _is_running(c: PullConsumer) -> Callable[[], bool]:
    return lambda: c.running


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = Runtime("consent", models.metadata, models.outbox, settings)
    consumers: list[PullConsumer] = []
    signer = log.signer_from_settings(rt.settings)
    checkpointer = log.Checkpointer(rt.db, signer, rt.settings.log_origin, interval_s=rt.settings.log_checkpoint_interval_s)

    async def on_start(rt: Runtime) -> None:
        await log.ensure_state(rt.db)
        checkpointer.start()
        rt.ready_checks["log_checkpointer"] = lambda: checkpointer.running
        await handlers.register(rt)
        completed = handlers.transfer_events_consumer(rt)
        for name, c in [("transfer_events", completed), ("registry_events", handlers.registry_events_consumer(rt)),
                        *((c.spec.durable, c) for c in handlers.transfer_log_consumers(rt))]:
            c.start()
            consumers.append(c)
            rt.ready_checks[name] = _is_running(c)

    async def on_stop(_rt: Runtime) -> None:
        for c in consumers:
            await c.stop(timeout=3.0)
        await checkpointer.stop()

    app = build_app(rt, title="Portability broker: consent", description="Consent lifecycle and the consent log.",
                    on_start=on_start, on_stop=on_stop)
    app.state.log_signer = signer
    app.include_router(router)
    app.include_router(subjects_router)
    app.include_router(log_router)
    return app
