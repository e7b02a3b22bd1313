"""HTTP API of the consent service."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from opentelemetry.metrics import Observation

from shared import telemetry
from shared.auth import ADMIN, HOLDER, RECIPIENT, REGULATOR, Caller, acting_as, own_party, requires
from shared.consumer import PullConsumer
from shared.db import Database
from shared.errors import Forbidden, InvalidInput, NotFound
from shared.http import PROBLEM_RESPONSES, install_problem_handlers, known_query
from shared.runtime import Runtime, build_app
from shared.settings import Settings
from shared.tlog import Signer

from . import handlers, log, models, notify, pages, receipts, service
from .schemas import (
    Amendment,
    Consent,
    ConsentList,
    ConsentRequest,
    ConsistencyProof,
    HolderToken,
    InclusionProof,
    LogEntries,
    Receipt,
    Revocation,
    SubjectErased,
)

router = APIRouter(prefix="/consents", tags=["consents"], responses=PROBLEM_RESPONSES)


def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


PARTY = requires(HOLDER, RECIPIENT, ADMIN)  # then: a party to the consent (acting_as), or an admin
REGULATOR_READ = requires(REGULATOR, ADMIN)


async def _party(request: Request, consent_id: str, caller: Caller) -> tuple[dict[str, Any], str]:
    """The consent and the capacity in which the caller acts on it; 404 unknown, 403 ``not_a_party``."""
    c = await service.get_consent(_rt(request), consent_id=consent_id)
    return c, acting_as(caller, holder_id=c["holder_id"], recipient_id=c["recipient_id"], what=f"consent {consent_id}")


@router.post("", status_code=201, response_model=Consent)
async def request_consent(body: ConsentRequest, request: Request, caller: Caller = Depends(requires(RECIPIENT, ADMIN))) -> Any:
    """A data recipient asks for a consent in its own name (403 ``not_a_party`` otherwise); the person then
    answers on the consent screen ``/consent/{id}``. 422 problem if a participant or dataset is unknown or
    unfit; nothing is stored then."""
    if not caller.has(ADMIN) and caller.participant_id != body.recipient_id:
        raise Forbidden("a recipient asks for consents in its own name only", reason="not_a_party")
    return await service.request_consent(_rt(request), body=body.model_dump())


@router.get("", response_model=ConsentList)
async def list_consents(request: Request, data_subject: str | None = Query(None, max_length=128),
                        status: str | None = Query(None, max_length=16),
                        limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=1_000_000),
                        caller: Caller = Depends(PARTY)) -> Any:
    """The caller's consents (as holder or recipient; an admin sees all), newest first."""
    return {"consents": await service.list_consents(_rt(request), data_subject=data_subject, party=own_party(caller), status=status,
                                                    limit=limit, offset=offset)}


@router.get("/{consent_id}", response_model=Consent)
async def get_consent(consent_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """One of the caller's consents (403 ``not_a_party`` otherwise)."""
    c, _ = await _party(request, consent_id, caller)
    return c


@router.post("/{consent_id}/authorise", response_model=Consent)
async def authorise(consent_id: str, body: HolderToken, request: Request, caller: Caller = Depends(requires(ADMIN))) -> Any:
    """Development and tests only (403 outside development): authorise a requested consent with holder tokens
    obtained elsewhere. People authorise through the consent screen (``/consent/{id}``) and the holder's
    OAuth 2.0 login; the tokens are kept sealed and never returned. 409 unless requested."""
    rt = _rt(request)
    if rt.settings.environment != "development":
        raise Forbidden("consents are authorised by the data subject on the consent screen", reason="development_only")
    c = await service.get_consent(rt, consent_id=consent_id)
    return await service.authorise(rt, consent_id=consent_id, token=body.model_dump(), receipt=await service.receipt_writer(rt, c, base_url=str(request.base_url)))


@router.post("/{consent_id}/reject", response_model=Consent)
async def reject(consent_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """End a consent request that the person has not answered (``requested -> rejected``); 409 otherwise."""
    await _party(request, consent_id, caller)
    return await service.reject(_rt(request), consent_id=consent_id)


@router.post("/{consent_id}/revoke", response_model=Consent)
async def revoke(consent_id: str, body: Revocation, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """Revoke an authorised consent, as its holder or recipient (``by`` is then the caller's capacity; an
    admin may say ``by``, e.g. a support desk acting for the data subject); idempotent (a repeat or a
    crossing revocation changes nothing and notifies nobody twice). Running transfers under it stop; the
    holder's tokens are revoked at the holder (RFC 7009)."""
    _, capacity = await _party(request, consent_id, caller)
    by = body.by if capacity == ADMIN else capacity
    return await service.revoke(_rt(request), consent_id=consent_id, by=by, reason=body.reason)


@router.post("/{consent_id}/amend", status_code=201, response_model=Consent)
async def amend(consent_id: str, body: Amendment, request: Request, caller: Caller = Depends(requires(RECIPIENT, ADMIN))) -> Any:
    """Ask for an amended consent replacing this authorised one (its recipient, or an admin): a new
    ``requested`` consent with ``supersedes``; when the person allows it, this one becomes ``superseded``.
    409 unless authorised."""
    _, capacity = await _party(request, consent_id, caller)
    if capacity not in (RECIPIENT, ADMIN):
        raise Forbidden("only the consent's recipient asks for an amendment", reason="not_a_party")
    return await service.amend(_rt(request), consent_id=consent_id, changes=body.changes())


@router.get("/{consent_id}/receipt", response_model=Receipt)
async def receipt(consent_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """The signed consent receipt (compact JWS, EdDSA; Kantara Consent Receipt v1.1 payload). 404 if none.
    The person gets theirs on the dashboard (``/me/consents/{id}/receipt``)."""
    await _party(request, consent_id, caller)
    return await service.get_receipt(_rt(request), consent_id=consent_id)


@router.get("/{consent_id}/receipt/proof")
async def receipt_proof(consent_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """The proof that the consent's receipt is in the consent log (format ``portability-receipt-proof/1``:
    receipt, entry, signed checkpoint, RFC 9162 inclusion proof; ``portability receipt verify`` checks it
    offline). 404 without a receipt; 503 for a second after the authorisation (no checkpoint covers it yet)."""
    await _party(request, consent_id, caller)
    return await receipt_proof_document(request, consent_id)


async def receipt_proof_document(request: Request, consent_id: str) -> dict[str, Any]:
    rt = _rt(request)
    base = (rt.settings.public_url or str(request.base_url)).rstrip("/")
    return await service.receipt_proof(rt, consent_id=consent_id, log_public_key=request.app.state.log_signer.vkey,
                                       receipt_keys_url=f"{base}/.well-known/jwks.json")


@router.post("/{consent_id}/holder-check", response_model=Consent)
async def holder_check(consent_id: str, request: Request, caller: Caller = Depends(PARTY)) -> Any:
    """Ask the holder whether it still sees this consent; ``holder_check`` becomes ``confirmed``,
    ``holder_lost_consent`` or ``unreachable``. 409 unless authorised."""
    rt = _rt(request)
    await _party(request, consent_id, caller)
    await service.confirm_with_holder(rt, consent_id=consent_id)
    return await service.get_consent(rt, consent_id=consent_id)


subjects_router = APIRouter(prefix="/subjects", tags=["data subjects"], responses=PROBLEM_RESPONSES)


@subjects_router.delete("/{data_subject:path}", response_model=SubjectErased, dependencies=[Depends(requires(ADMIN))])
async def erase_data_subject(data_subject: str, request: Request) -> Any:
    """Erase a data subject (GDPR Art. 17): their live consents end (logged), then the secret behind their
    pseudonym in the consent log, their name and customer id in their consents, their stored receipts and
    dashboard sessions go. The log stays verifiable; its entries can no longer be linked to the person.
    404 if the broker knows nothing of them (or already erased them)."""
    return await service.erase_data_subject(_rt(request), data_subject=data_subject)


# ---- the consent log, for regulators (read-only; RFC 9162 proofs, C2SP signed checkpoints) ----------

log_router = APIRouter(prefix="/log", tags=["consent log"], responses=PROBLEM_RESPONSES, dependencies=[Depends(known_query)])
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


# log indexes and sizes: the databases' signed 64-bit integer (a larger one is a 422, not a driver overflow)
MAX_LOG_INDEX = 2**63 - 1


@log_router.get("/entries", response_model=LogEntries, dependencies=[Depends(REGULATOR_READ)])
async def log_entries(
    request: Request,
    start: int = Query(0, ge=0, le=MAX_LOG_INDEX, description="first index (inclusive)"),
    end: int | None = Query(None, ge=0, le=MAX_LOG_INDEX, description="last index (exclusive)"),
    limit: int = Query(log.MAX_PAGE, ge=1, le=log.MAX_PAGE),
    consent_id: str | None = Query(None, min_length=1, max_length=64),
    holder_id: str | None = Query(None, min_length=1, max_length=64),
    recipient_id: str | None = Query(None, min_length=1, max_length=64),
    event: str | None = Query(None, description="requested, authorised, ..., transfer_completed, ... (an unknown one is a 422)",
                              pattern=log.EVENT_PATTERN),
    since: datetime | None = Query(None, description="entries at or after this RFC 3339 time (inclusive)"),
    until: datetime | None = Query(None, description="entries before this RFC 3339 time (exclusive)"),
) -> Any:
    """Entries by index, at most 1000 per page, with every filter given (AND); follow ``next_start`` for more.
    An unknown query parameter is a 400 (a filter misspelt does not answer everything)."""
    return await log.list_entries(_rt(request).db, start=start, end=end, limit=limit, consent_id=consent_id, holder_id=holder_id,
                                  recipient_id=recipient_id, event=event, since=since, until=until)


async def _default_size(request: Request, size: int | None) -> int:
    if size is not None:
        return size
    signed = await log.latest_checkpoint_size(_rt(request).db)
    if signed is None:
        raise NotFound("no checkpoint has been signed yet")
    return signed


@log_router.get("/proof/inclusion", response_model=InclusionProof)
async def log_inclusion_proof(request: Request, index: int = Query(ge=0, le=MAX_LOG_INDEX),
                              size: int | None = Query(None, ge=1, le=MAX_LOG_INDEX, description="tree size; default: the latest checkpoint's")) -> Any:
    """RFC 9162 section 2.1.3.1 inclusion proof of entry ``index`` in the tree of ``size`` entries (hex hashes)."""
    size = await _default_size(request, size)
    proof = await log.inclusion_proof(_rt(request).db, index, size)
    return {"index": index, "size": size, "proof": [h.hex() for h in proof]}


@log_router.get("/proof/consistency", response_model=ConsistencyProof)
async def log_consistency_proof(request: Request, first: int = Query(ge=1, le=MAX_LOG_INDEX),
                                second: int | None = Query(None, ge=1, le=MAX_LOG_INDEX, description="default: the latest checkpoint's size")) -> Any:
    """RFC 9162 section 2.1.4.1 proof that the tree of ``first`` entries is a prefix of the tree of ``second``."""
    second = await _default_size(request, second)
    proof = await log.consistency_proof(_rt(request).db, first, second)
    return {"first": first, "second": second, "proof": [h.hex() for h in proof]}


@log_router.get("/export.jsonl", response_class=StreamingResponse, responses={200: {"content": {"application/jsonl": {}}}},
                dependencies=[Depends(REGULATOR_READ)])
async def log_export(request: Request, start: int = Query(0, ge=0, le=MAX_LOG_INDEX),
                     end: int | None = Query(None, ge=0, le=MAX_LOG_INDEX)) -> StreamingResponse:
    """Every entry with ``start <= index < end`` (default: to the current size) as JSON Lines, streamed;
    one ``{"index", "entry", "leaf_hash"}`` object per line. 400 if ``end < start`` (as ``/log/entries``)."""
    db = _rt(request).db
    if end is None:
        end = await log.current_size(db)
    elif end < start:
        raise InvalidInput("need start <= end", start=start, end=end)

    async def lines() -> AsyncIterator[bytes]:
        async for item in log.iter_entries(db, start, end):
            yield json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"

    return StreamingResponse(lines(), media_type="application/jsonl")


def log_reader_app(db: Database, signer: Signer, verifier: Any = None) -> FastAPI:
    """The read-only ``/log`` API alone over ``db`` (no NATS, no writes): for a read replica, benchmarks, tests.
    The caller owns ``db`` (creates its tables, disposes of it). With ``verifier`` (a shared.auth.TokenVerifier)
    entries need a regulator's token as in the service; without, they are open (a private benchmark socket)."""
    app = FastAPI(title="Portability broker: consent log (read-only)", version="0.1.0")
    app.state.runtime = SimpleNamespace(db=db)  # the /log routes only use the runtime's database
    if verifier is None:
        app.dependency_overrides[REGULATOR_READ] = lambda: None
    else:
        app.state.token_verifier = verifier
    app.state.log_signer = signer
    install_problem_handlers(app)
    app.include_router(log_router)
    return app


def _is_running(c: PullConsumer) -> Callable[[], bool]:
    return lambda: c.running


class Sweeper:
    """Every ``consent_sweep_interval_s``: expires consents that are due and abandoned requests; and,
    in a loop of its own (a slow holder must not hold up expiries), revokes at the holders the tokens of
    ended consents (RFC 7009). Errors are logged, the loops go on."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(lambda: service.expire_due(self.rt))),
                       asyncio.create_task(self._run(lambda: service.revoke_tokens_due(self.rt)))]

    async def stop(self) -> None:
        self._stopping.set()
        for t in self._tasks:  # a revocation in progress is retried by the next process (it stays queued)
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, sweep: Callable[[], Awaitable[Any]]) -> None:
        while not self._stopping.is_set():
            try:
                await sweep()
            except Exception:  # noqa: BLE001 - a sweep that fails is tried again next time
                logging.getLogger("consent.sweep").exception("consent sweep failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self.rt.settings.consent_sweep_interval_s)
            except TimeoutError:
                pass


def create_app(settings: Settings | None = None) -> FastAPI:
    rt = Runtime("consent", models.metadata, models.outbox, settings)
    consumers: list[PullConsumer] = []
    signer = log.signer_from_settings(rt.settings)
    checkpointer = log.Checkpointer(rt.db, signer, rt.settings.log_origin, interval_s=rt.settings.log_checkpoint_interval_s)
    sweeper = Sweeper(rt)
    telemetry.meter().create_observable_gauge("consent_log_entries", callbacks=[lambda _o: [Observation(checkpointer.size)]],
                                              description="entries in the consent log (its tree size)")

    async def on_start(rt: Runtime) -> None:
        await log.ensure_state(rt.db)
        checkpointer.start()
        rt.ready_checks["log_checkpointer"] = lambda: checkpointer.running
        await handlers.register(rt)
        completed = handlers.transfer_events_consumer(rt)
        for name, c in [("transfer_events", completed), ("registry_events", handlers.registry_events_consumer(rt)),
                        ("notify_holder", notify.consumer(rt, "holder")), ("notify_recipient", notify.consumer(rt, "recipient")),
                        *((c.spec.durable, c) for c in handlers.transfer_log_consumers(rt))]:
            c.start()
            consumers.append(c)
            rt.ready_checks[name] = _is_running(c)
        sweeper.start()
        rt.ready_checks["sweeper"] = lambda: sweeper.running

    async def on_stop(_rt: Runtime) -> None:
        await sweeper.stop()
        await asyncio.gather(*(c.stop(timeout=3.0) for c in consumers))  # each may wait out a 2 s fetch: together
        await checkpointer.stop()

    app = build_app(rt, title="Portability broker: consent", description="Consent lifecycle and the consent log.",
                    on_start=on_start, on_stop=on_stop)
    app.state.log_signer = signer
    receipt_signer = receipts.signer_from_settings(rt.settings)

    @app.get("/.well-known/jwks.json", tags=["consent receipts"])
    async def jwks() -> Any:
        """The broker's public keys (RFC 7517 JWK Set) that verify consent receipts and notifications."""
        return JSONResponse(receipt_signer.jwks(), headers={"Cache-Control": "public, max-age=300"})

    app.include_router(pages.router)
    app.include_router(router)
    app.include_router(subjects_router)
    app.include_router(log_router)
    return app
