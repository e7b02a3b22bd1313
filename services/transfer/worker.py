"""The transfer worker: takes jobs from ``transfer.jobs`` and moves records holder -> recipient.

For each job (../shared/DESIGN.md, "The main job", step 4):

1. ``consent.check`` over NATS; without a valid consent the transfer ends before any request
   to the holder. The check is repeated before every holder request, and the worker also
   listens to ``consent.events.>`` and ``registry.events.>``: once it has seen a revocation,
   expiry or suspension it makes no further request to the holder and the transfer ends
   ``cancelled`` with the reason.
2. ``registry.participant.get`` for both parties and ``registry.dataset.get`` for the schema.
3. ``consent.token.get`` for the holder access token.
4. Pages ``GET {export}/datasets/{dataset}/records?cursor&limit[&from&to]`` (holder export
   contract; ``from``/``to``: the consent's data window, and records the holder serves dated
   outside it are dropped, never delivered: :mod:`shared.catalogue.windows`);
   every record is validated against the dataset schema; each page is pushed as batch ``n``
   with ``Idempotency-Key: {id}:{n}``; after the recipient's acknowledgement the cursor,
   counts and bytes are committed together with a progress event. The worker reads one page
   ahead: page ``n + 1`` is requested from the holder (after its own consent check) while
   page ``n`` is checked and delivered; a page read ahead is dropped, never delivered, when
   the transfer ends, fails or is released, or when a revocation arrived meanwhile.
5. ``PUT {import}/transfers/{id}/manifest`` (record count, SHA-256 of the RFC 8785 records,
   one per line); the recipient must confirm it.

Resuming: a job redelivered after a crash continues after the last committed batch. Since
the broker keeps no copy of the records, the digest of the batches already delivered is
recomputed by reading those pages again from the holder (stable cursors), without pushing
them again; a batch that was pushed but not committed is pushed again and deduplicated by
the recipient on its idempotency key.

Failures: 5xx, 429, time-outs and connection errors are retried in place with exponential
backoff and jitter (``Retry-After`` honoured, tenacity); when those retries run out the job
is nak'ed and redelivered later; after ``TRANSFER_MAX_FAILURES`` failed deliveries the transfer
fails ``retries_exhausted``. Per-holder limits (:mod:`.limits`) hold across all workers.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import json
import os
import socket
import logging
import time
from datetime import UTC, date, datetime
from typing import Any

import httpx
from sqlalchemy import select
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from shared import envelope, subjects, telemetry
from shared.canonical import CanonicalizationError, RecordDigest, canonical
from shared.catalogue import converters, windows
from shared.consumer import Abandon, ConsumerSpec, Delivery, PullConsumer, Postpone, Reject, Release, Retry
from shared.errors import BrokerError, InvalidInput, NotFound, Unavailable
from shared.outbox import add_event
from shared.recordcheck import checker_for
from shared.runtime import Runtime

from . import adapters, models
from .errors import Transient, TransferEnded
from .errors import problem_title as _problem_of
from .limits import HolderLimits, NoSlot
from .service import TERMINAL, as_dict, event_data

log = logging.getLogger("services.transfer.worker")

END = ""  # stored cursor once the holder has served its last page
_worker_numbers = itertools.count(1)
_meter = telemetry.meter()
TRANSFERS_ENDED = _meter.create_counter("transfers_ended", description="transfers that ended, by status and reason")
RECORDS_MOVED = _meter.create_counter("transfer_records_moved", description="records delivered to recipients")
BYTES_MOVED = _meter.create_counter("transfer_bytes_moved", unit="By", description="bytes of canonical records delivered")
MAX_EMPTY_PAGES = 100
GUARD_AGAIN_AFTER_S = 0.5  # a wait for the holder's rate longer than this is followed by a second consent check


CANONICAL_CHUNK = 100  # records made canonical between two turns of the event loop


async def _canonical_texts(records: list[Any]) -> list[bytes]:
    """RFC 8785 texts of ``records`` (for the manifest digest), ``CANONICAL_CHUNK`` at a time with a turn of the
    event loop between chunks, so that the batch being sent and the page being read ahead go on meanwhile."""
    texts: list[bytes] = []
    for start in range(0, len(records), CANONICAL_CHUNK):
        await asyncio.sleep(0)
        texts += [canonical(r) for r in records[start:start + CANONICAL_CHUNK]]
    return texts


class _NotJson(ValueError):
    pass


def _not_json(name: str) -> Any:
    """``json.loads``' ``parse_constant``: Python reads NaN and Infinity, which are not JSON (RFC 8259 section 6)."""
    raise _NotJson(f"{name} is not a JSON number (RFC 8259 section 6)")


def _day(value: Any) -> date | None:
    """An ISO date (or the date of an ISO datetime) from a consent field; None for null or unreadable."""
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def retry_after_seconds(value: str | None, *, cap: float = 60.0) -> float | None:
    """``Retry-After`` (RFC 9110 section 10.2.3: delay-seconds or HTTP-date) in seconds, capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), cap))


class Cancellations:
    """What this worker process has heard on ``consent.events`` and ``registry.events``."""

    def __init__(self) -> None:
        self.consents: dict[str, str] = {}  # consent id -> reason
        self.participants: dict[str, str] = {}  # participant id -> reason

    def reason_for(self, row: Any) -> str | None:
        if row.consent_id in self.consents:
            return self.consents[row.consent_id]
        for pid in (row.holder_id, row.recipient_id):
            if pid in self.participants:
                return self.participants[pid]
        return None

    async def listen(self, rt: Runtime) -> None:
        bus = rt.require_bus()

        async def on_consent(msg: Any) -> None:
            try:
                env = envelope.decode(msg.data)
            except InvalidInput:
                return
            consent = env["data"].get("consent") or {}
            status = env["type"].rsplit(".", 1)[-1]
            if status in ("revoked", "expired") and consent.get("id"):
                self.consents[consent["id"]] = f"consent_{status}"
            elif status == "authorised" and consent.get("id"):
                self.consents.pop(consent["id"], None)

        async def on_registry(msg: Any) -> None:
            try:
                env = envelope.decode(msg.data)
            except InvalidInput:
                return
            p = env["data"].get("participant") or {}
            if not p.get("id"):
                return
            status = p.get("status")
            if status in ("suspended", "revoked"):
                self.participants[p["id"]] = f"participant_{status}"
            elif status == "active":
                self.participants.pop(p["id"], None)
            else:  # a missing or unreadable status never cascades: the last known one stays
                log.error("ALERT: registry event for %s carries no readable status (%r); keeping the last known", p["id"], status)

        await bus.nc.subscribe(f"{subjects.CONSENT_EVENTS}.>", cb=on_consent)
        await bus.nc.subscribe(f"{subjects.REGISTRY_EVENTS}.>", cb=on_registry)


def consumer_spec(rt: Runtime) -> ConsumerSpec:
    s = rt.settings
    return ConsumerSpec(
        stream="TRANSFER_JOBS", durable=subjects.TRANSFER_WORKERS_DURABLE, filter_subject=subjects.TRANSFER_JOBS,
        # unlimited deliveries: a job waiting for a holder slot is redelivered without failing;
        # real failures are counted on the transfer itself (TRANSFER_MAX_FAILURES)
        msg_type="transfer.job", ack_wait_s=s.transfer_ack_wait_s, max_deliver=-1,
    )


async def make_consumers(rt: Runtime, count: int) -> list[PullConsumer]:
    """``count`` pull consumers sharing the durable, and the cancellation listener they share."""
    cancellations = Cancellations()
    await cancellations.listen(rt)
    limits = HolderLimits(rt.require_bus(), slot_ttl_s=max(10.0, 3 * rt.settings.transfer_ack_wait_s))
    out = []
    for _ in range(count):
        worker = TransferWorker(rt, cancellations, limits)
        out.append(PullConsumer(rt.require_bus(), consumer_spec(rt), worker.handle, fetch_timeout_s=rt.settings.transfer_fetch_timeout_s))
    return out


MAX_REFUSED_LISTED = 1000
MAX_NOTES_LISTED = 20


class TransferWorker:
    def __init__(self, rt: Runtime, cancellations: Cancellations | None = None, limits: HolderLimits | None = None) -> None:
        self.rt = rt
        self.bus = rt.require_bus()
        self.cancellations = cancellations or Cancellations()
        self.limits = limits or HolderLimits(self.bus, slot_ttl_s=max(10.0, 3 * rt.settings.transfer_ack_wait_s))
        self._access_token = ""
        self._owned = False  # True once this worker holds the lease on the current transfer
        self._slot: str | None = None  # the holder slot taken for the current transfer
        self._holder: dict[str, Any] = {}
        self._resume_cursor: str | None = None
        self._window: tuple[date | None, date | None] = (None, None)  # the consent's data window (inclusive days)
        self._outside_window = 0  # records the holder served outside it (dropped, never delivered)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{next(_worker_numbers)}"

    async def handle(self, env: dict[str, Any], delivery: Delivery) -> None:
        tid = env["data"]["transfer_id"]
        row = await self._load(tid)
        if row is None:
            raise Reject(f"unknown transfer {tid}")
        if row.status in TERMINAL:
            return
        self._owned = False
        self._slot = None
        keep_slot = False  # a released or abandoned job keeps its slot for whoever runs it next
        try:
            with telemetry.tracer().start_as_current_span("transfer run", attributes={"transfer.id": tid, "transfer.dataset": row.dataset,
                                                                                      "messaging.delivery": delivery.number}):
                await self._run(row, env, delivery)
        except NoSlot as exc:
            raise Postpone(str(exc), exc.delay) from None
        except TransferEnded as end:
            await self._finish(tid, end.status, reason=end.reason, error=end.error)
        except (Release, Abandon):
            keep_slot = True
            raise
        except Reject:
            raise
        except (Transient, Unavailable, httpx.HTTPError) as exc:
            await self._retry_later(tid, delivery, "retries_exhausted", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except Exception as exc:  # a bug or a pathological input: never leave the transfer running
            log.exception("transfer %s: unexpected error", tid)
            await self._retry_later(tid, delivery, "internal_error", f"{type(exc).__name__}: {str(exc)[:200]}")
        finally:
            if not keep_slot:
                await self.limits.release_slot(self._slot)

    async def _retry_later(self, tid: str, delivery: Delivery, final_reason: str, message: str) -> None:
        """Count a failure and nak for a later delivery, or, at the last allowed failure, end the
        transfer ``failed`` with ``final_reason``."""
        row = await self._load(tid)
        failures = (row.failures if row is not None else 0) + 1
        if failures >= self.rt.settings.transfer_max_failures:
            await self._finish(tid, "failed", reason=final_reason, error={"message": message, "failures": failures})
            # the job leaves the work queue (acked) and is parked on the dead-letter subject with the reason
            await self.bus.dead_letter(subjects.TRANSFER_JOBS, delivery.msg.data, f"{final_reason} after {failures} failures: {message}",
                                       headers=delivery.msg.headers, deliveries=delivery.number)
            return
        await self._update(tid, error={"message": message, "failures": failures}, failures=failures)
        raise Retry(message, delay=min(2.0 ** failures, 60.0))

    async def _load(self, tid: str) -> Any:
        async with self.rt.db.sessions() as s:
            return (await s.execute(select(models.transfers).where(models.transfers.c.id == tid))).first()

    # ---- checks ------------------------------------------------------------------------

    async def _before_holder_request(self, row: Any, corr: str) -> None:
        await self._guard(row, corr)
        waited = time.monotonic()
        await self.limits.wait_for_request(self._holder)
        await self.limits.keep_slot(self._slot, row.id)
        if time.monotonic() - waited > GUARD_AGAIN_AFTER_S:
            await self._guard(row, corr)  # a long wait for the holder's rate: ask the consent service again
        else:
            self._stop_if_cancelled(row)

    def _stop_if_cancelled(self, row: Any) -> None:
        """Raise TransferEnded (cancelled) if this worker has heard of a revocation, expiry or suspension."""
        reason = self.cancellations.reason_for(row)
        if reason:
            raise TransferEnded("cancelled", reason, {"message": f"stopped: {reason.replace('_', ' ')}"})

    async def _guard(self, row: Any, corr: str) -> dict[str, Any]:
        """Before every request to the holder: cancelled by an event? consent still valid? Returns the consent
        (``consent.check``'s ``consent``); raises TransferEnded when the transfer must stop."""
        self._stop_if_cancelled(row)
        check = await self.bus.request(subjects.CONSENT_CHECK, {"consent_id": row.consent_id, "dataset": row.dataset}, correlation_id=corr)
        self._stop_if_cancelled(row)  # a revocation heard while the check was on its way wins over its answer
        if not check["valid"]:
            why = {"not_authorised": f"consent_{check.get('status')}", "expired": "consent_expired"}.get(check["reason"], "consent_invalid")
            if why in ("consent_revoked", "consent_expired"):
                raise TransferEnded("cancelled", why, {"message": f"stopped: consent is {check.get('status')}"})
            raise TransferEnded("failed", "consent_invalid", {"message": f"consent is not valid: {check['reason']}", "consent_reason": check["reason"]})
        return dict(check.get("consent") or {})

    def _windowed(self, dataset: str, records: list[Any]) -> list[Any]:
        """``records`` without those outside the consent's data window (``data_from``..``data_to``, inclusive): a
        record of a dated type is kept only if its day can be read and is inside (a holder's unreadable or odd date
        never carries data out of the window); records of undated types (a contract...) are all kept
        (:func:`shared.catalogue.windows.in_window`, strict); the dropped ones are counted in ``self._outside_window``."""
        start, end = self._window
        if (start is None and end is None) or not windows.has_days(dataset):
            return records
        kept = [r for r in records if windows.in_window(dataset, r, start, end, strict=True)]
        self._outside_window += len(records) - len(kept)
        return kept

    async def _participant(self, pid: str, corr: str) -> dict[str, Any]:
        try:
            p = await self.bus.request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": pid}, correlation_id=corr)
        except NotFound:
            raise TransferEnded("failed", "participant_inactive", {"message": f"participant {pid} is not registered"}) from None
        if p["status"] != "active":
            raise TransferEnded("cancelled", f"participant_{p['status']}", {"message": f"participant {pid} is {p['status']}"})
        return p

    # ---- HTTP with retries -------------------------------------------------------------

    async def _call(self, client: httpx.Client | Any, method: str, url: str, *, before: Any = None, **kwargs: Any) -> httpx.Response:
        """One HTTP call with in-place retries of transient failures (tenacity; Retry-After honoured)."""
        s = self.rt.settings

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Transient) and exc.retry_after is not None:
                return exc.retry_after
            import random

            return min(s.transfer_retry_max_s, s.transfer_retry_initial_s * 2 ** (state.attempt_number - 1)) * (0.5 + random.random() / 2)

        async for attempt in AsyncRetrying(stop=stop_after_attempt(s.transfer_http_attempts), wait=wait,
                                           retry=retry_if_exception_type((Transient, httpx.TransportError)), reraise=True):
            with attempt:
                if before is not None:
                    await before()
                resp = await client.request(method, url, **kwargs)
                if resp.status_code >= 500 or resp.status_code == 429:
                    if resp.status_code == 507:
                        return resp
                    raise Transient(f"{method} {url.split('?')[0]} answered {resp.status_code}",
                                    retry_after_seconds(resp.headers.get("Retry-After")))
                return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def _token(self, row: Any, corr: str, *, rejected: str | None = None) -> str:
        """The holder access token, through ``consent.token.get`` (refreshed when ``rejected``)."""
        data: dict[str, Any] = {"consent_id": row.consent_id}
        if rejected:
            data |= {"refresh": True, "rejected_token_sha256": hashlib.sha256(rejected.encode()).hexdigest()}
        try:
            return str((await self.bus.request(subjects.CONSENT_TOKEN_GET, data, correlation_id=corr))["access_token"])
        except BrokerError as exc:
            if isinstance(exc, Unavailable):
                raise
            raise TransferEnded("failed", "consent_invalid", {"message": exc.detail}) from None

    async def _page(self, client: Any, row: Any, export: str, cursor: str | None, corr: str) -> tuple[list[Any], str | None, int | None]:
        """One page: (records, next_cursor or None, total or None); the last page's ``resume_cursor``
        (where to ask later for what is new) is kept in ``self._resume_cursor``."""
        params: dict[str, Any] = {"limit": self.rt.settings.transfer_page_limit}
        if cursor:
            params["cursor"] = cursor
        # the consent's data window (holder export contract: optional, inclusive ISO dates; records outside it are
        # dropped here anyway, for a holder that cannot filter)
        for name, day in zip(("from", "to"), self._window):
            if day is not None:
                params[name] = day.isoformat()
        for refreshed in (False, True):
            with telemetry.tracer().start_as_current_span("holder page", attributes={"transfer.id": row.id}):
                resp = await self._call(client, "GET", f"{export}/datasets/{row.dataset}/records", params=params,
                                        headers={"Authorization": f"Bearer {self._access_token}", "X-Correlation-Id": corr},
                                        before=lambda: self._before_holder_request(row, corr))
            if resp.status_code != 401 or refreshed:
                break
            # expired mid-transfer: refresh through the consent service and ask again
            self._access_token = await self._token(row, corr, rejected=self._access_token)
        if resp.status_code in (401, 403):
            raise TransferEnded("failed", "consent_invalid", {"message": f"holder refused the token ({resp.status_code}): {_problem_of(resp)}"})
        if resp.status_code != 200:
            raise TransferEnded("failed", "holder_error", {"message": f"holder answered {resp.status_code}: {_problem_of(resp)}"})
        try:
            page = json.loads(resp.content, parse_constant=_not_json)
            records = page["records"]
            next_cursor = page.get("next_cursor")
            total = page.get("total")
            resume = page.get("resume_cursor")
            if not isinstance(records, list) or (next_cursor is not None and not isinstance(next_cursor, str)):
                raise TypeError("records must be a list and next_cursor a string")
        except _NotJson as exc:
            raise TransferEnded("failed", "holder_error", {"message": f"holder page is not JSON: {exc}"}) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransferEnded("failed", "holder_error", {"message": f"holder page is not a records page: {type(exc).__name__}"}) from None
        if len(records) > params["limit"]:
            raise TransferEnded("failed", "holder_error", {"message": f"holder sent {len(records)} records for a page of {params['limit']}"})
        if next_cursor and next_cursor == cursor:
            raise TransferEnded("failed", "holder_error", {"message": "holder cursor does not advance"})
        if not next_cursor:
            self._resume_cursor = resume if isinstance(resume, str) and len(resume) <= 2048 else None
        return records, (next_cursor or None), (total if isinstance(total, int) and not isinstance(total, bool) else None)

    # ---- the transfer ------------------------------------------------------------------

    async def _delivery_plan(self, row: Any, recipient: dict[str, Any], corr: str) -> tuple[str, converters.Converter | None, Any]:
        """What the recipient receives: (dataset type, converter or None, checker of the converted records or None).

        The holder's type as it is when the recipient accepts it; else the catalogue's converter to the
        first type the recipient accepts that has one (:func:`shared.catalogue.converters.find`); else
        (no converter) the holder's type, as before converters existed. A transfer that already
        delivered batches keeps the type it started with (``delivered_dataset``), whatever the
        recipient's registration says since."""
        target = row.delivered_dataset if row.batches > 0 and row.delivered_dataset else None
        if target is None:
            accepted = list(recipient.get("datasets_accepted") or [])
            found = None if row.dataset in accepted else converters.find(row.dataset, accepted)
            target = found.target if found is not None else row.dataset
        if target == row.dataset:
            return target, None, None
        converter = converters.CONVERTERS.get((row.dataset, target))
        if converter is None:
            raise TransferEnded("failed", "conversion_failed", {"message": f"no converter from {row.dataset} to {target} any more"})
        schema = await self.bus.request(subjects.REGISTRY_DATASET_GET, {"dataset_id": target}, correlation_id=corr)
        return target, converter, checker_for(schema["schema"])

    @staticmethod
    def _convert(stream: converters.Stream | None, records: list[Any], *, finish: bool = False) -> list[Any]:
        """The records the recipient receives for ``records`` (the page's source records): converted when
        ``stream`` is set (``finish``: what only the whole series gives, e.g. month sums)."""
        if stream is None:
            return records
        try:
            return list(stream.finish()) if finish else list(stream.feed(records))
        except converters.ConversionError as exc:
            # the message names the record's position and the rule; values of the record are not echoed
            raise TransferEnded("failed", "conversion_failed", {
                "message": f"the {stream.converter.source} -> {stream.converter.target} converter refused it: {str(exc)[:300]}",
                "position": exc.position}) from None

    async def _run(self, row: Any, env: dict[str, Any], delivery: Delivery) -> None:
        corr = env["correlation_id"]
        tid = row.id
        consent = await self._guard(row, corr)
        self._window = (_day(consent.get("data_from")), _day(consent.get("data_to")))
        self._outside_window = 0
        holder = await self._participant(row.holder_id, corr)
        recipient = await self._participant(row.recipient_id, corr)
        self._slot = await self.limits.take_slot(holder, owner=row.id)
        self._holder = holder
        dataset = await self.bus.request(subjects.REGISTRY_DATASET_GET, {"dataset_id": row.dataset}, correlation_id=corr)
        checker = checker_for(dataset["schema"])  # refers only inside itself, never fetches a URL
        target, converter, target_checker = await self._delivery_plan(row, recipient, corr)
        self._access_token = await self._token(row, corr)

        s = self.rt.settings
        export = holder["export_base_url"].rstrip("/")
        digest = RecordDigest()  # of the records the recipient accepted, in order
        served = 0  # records read from the holder: schema positions count in these
        offered = 0  # records offered to the recipient (converted, when converting): refusal positions count in these
        refused: list[dict[str, Any]] = []  # records the recipient refused: position, batch, reason
        stream = converter.stream() if converter is not None else None
        async with httpx.AsyncClient(timeout=s.transfer_http_timeout_s) as client:
            async def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
                return await self._call(client, method, url, **kwargs)

            adapter = adapters.for_recipient(recipient, send=send, credentials=s.recipient_credentials, broker_token=s.broker_recipient_token,
                                             correlation_id=corr)
            batch, cursor = 0, row.start_cursor
            self._resume_cursor = None
            resuming = row.batches > 0 and row.cursor is not None
            await self._start(tid, attempt=delivery.number, resume=resuming, delivered_dataset=target)
            if resuming:
                # recompute the digest (and the converter's state) of what was delivered, reading (not pushing) those pages again
                refused = list(row.refused or [])
                skip = {r["position"] for r in refused}
                for _ in range(row.batches):
                    await delivery.heartbeat()
                    records, cursor, _total = await self._page(client, row, export, cursor, corr)
                    out = self._convert(stream, self._windowed(row.dataset, records))
                    kept = [r for i, r in enumerate(out) if offered + i not in skip]
                    digest.update(kept)
                    served += len(records)
                    offered += len(out)
                    batch += 1
                    adapter.skip_batch(tid, batch, target, kept)
                if digest.count != row.records or (cursor or END) != row.cursor:
                    log.warning("transfer %s: holder pages changed since the crash; starting again", tid)
                    digest, batch, cursor, served, offered, refused = RecordDigest(), 0, row.start_cursor, 0, 0, []
                    stream = converter.stream() if converter is not None else None
                    adapter = adapters.for_recipient(recipient, send=send, credentials=s.recipient_credentials,
                                                     broker_token=s.broker_recipient_token, correlation_id=corr)
                else:
                    log.info("transfer %s resumes after batch %d (%d records)", tid, batch, digest.count)
            done = resuming and batch > 0 and row.cursor == END
            started = time.monotonic()
            sent_at_start = digest.count
            empty_pages = 0

            async def deliver(records: list[Any], *, commit: bool, next_cursor: str | None = None, total: int | None = None) -> None:
                """Push one batch (possibly empty after conversion: then nothing is sent), count it, and with ``commit``
                commit the cursor after it."""
                nonlocal batch, offered, refused
                batch += 1
                await delivery.heartbeat()
                refused_here: dict[int, str] = {}
                texts: list[bytes] = []
                if records:
                    with telemetry.tracer().start_as_current_span("recipient batch", attributes={"transfer.id": tid, "transfer.batch": batch}):
                        put = asyncio.create_task(adapter.put_batch(tid, batch, target, records))
                        try:
                            texts = await _canonical_texts(records)  # while the recipient takes the batch
                            refused_here = (await put).refused
                        except CanonicalizationError as exc:
                            raise TransferEnded("failed", "holder_error", {
                                "message": f"a record of batch {batch} cannot be written as RFC 8785 canonical JSON ({type(exc).__name__}: "
                                           "NaN, an infinity or an integer beyond 2**53), so no manifest can cover it"}) from None
                        except TransferEnded as end:
                            if end.reason == "destination_full":
                                end.error.update(batch=batch, delivered_records=digest.count)
                            raise
                        finally:
                            if not put.done():  # the texts failed: the batch is dropped (never committed; a retry is deduplicated)
                                put.cancel()
                                await asyncio.wait([put])
                            if not put.cancelled():
                                put.exception()  # retrieved (None if it went well): the error reported is the one raised here
                refused += [{"position": offered + i, "batch": batch, "index": i, "reason": why} for i, why in refused_here.items()]
                before_bytes = digest.bytes
                digest.update_canonical(text for i, text in enumerate(texts) if i not in refused_here)
                offered += len(records)
                RECORDS_MOVED.add(len(records) - len(refused_here), {"dataset": target})
                BYTES_MOVED.add(digest.bytes - before_bytes, {"dataset": target})
                if not commit:
                    return
                elapsed = max(time.monotonic() - started, 1e-6)
                rate = (digest.count - sent_at_start) / elapsed
                eta = (total - served) / rate if total and rate > 0 and total >= served else None
                await self._progress(tid, cursor=next_cursor if next_cursor else END, batches=batch, records=digest.count,
                                     nbytes=digest.bytes, rate=rate, eta_s=eta, total=total, refused=refused)

            # the next page is read from the holder while this one is checked, converted and delivered (one page
            # ahead, never more); its cursor is committed only once the recipient acknowledged it, like any other
            ahead: asyncio.Task[tuple[list[Any], str | None, int | None]] | None = None
            try:
                while not done:
                    await delivery.heartbeat()
                    if ahead is None:
                        records, next_cursor, total = await self._page(client, row, export, cursor, corr)
                    else:
                        records, next_cursor, total = await ahead
                        ahead = None
                    self._stop_if_cancelled(row)  # heard of a revocation while the page was on its way: deliver nothing more
                    if next_cursor is not None and not delivery.stopping:
                        ahead = asyncio.create_task(self._page(client, row, export, next_cursor, corr))
                    empty_pages = 0 if records else empty_pages + 1
                    if empty_pages > MAX_EMPTY_PAGES:
                        raise TransferEnded("failed", "holder_error", {"message": f"holder served {empty_pages} empty pages in a row"})
                    bad = checker.first_error(records)
                    if bad is not None:
                        raise TransferEnded("failed", "schema_violation", {
                            "message": f"record {served + bad.index} breaks the {row.dataset} schema: {bad.message}",
                            "position": served + bad.index, "schema_error": bad.message, "path": bad.path,
                        })
                    out = self._convert(stream, self._windowed(row.dataset, records))
                    self._check_converted(target_checker, target, out, offered)
                    served += len(records)
                    if records:
                        await deliver(out, commit=True, next_cursor=next_cursor, total=total)
                    done = next_cursor is None
                    cursor = next_cursor
                    if delivery.stopping and not done:
                        log.info("transfer %s released after batch %d: worker stopping", tid, batch)
                        raise Release()
            finally:
                if ahead is not None:  # an ending, an error or a release: the page read ahead is dropped (never delivered)
                    ahead.cancel()
                    await asyncio.wait([ahead])  # done before the client closes; our own cancellation still propagates
                    if not ahead.cancelled():
                        ahead.exception()  # retrieved: the ending that stopped us is the one reported
            if stream is not None:
                # what only the whole series gives (month and year sums): batches after the last page, never committed,
                # so that a resumed transfer computes and sends them again (same records, same idempotency keys)
                tail = self._convert(stream, [], finish=True)
                self._check_converted(target_checker, target, tail, offered)
                for start in range(0, len(tail), s.transfer_page_limit):
                    await deliver(tail[start:start + s.transfer_page_limit], commit=False)
            manifest: dict[str, Any] = {"dataset": target, "records": digest.count, "sha256": digest.hexdigest(), "batches": batch}
            if converter is not None:
                manifest["converted_from"] = row.dataset
            with telemetry.tracer().start_as_current_span("recipient manifest", attributes={"transfer.id": tid}):
                ack = await adapter.finish(tid, manifest)
            if not ack.match:
                raise TransferEnded("failed", "manifest_mismatch", {"message": f"recipient did not confirm the manifest ({ack.status or adapter.protocol})",
                                                                     "manifest": manifest, "recipient": ack.detail})
        notes = self._notes(stream)
        if self._outside_window:
            start, end = self._window
            notes["outside_window"] = {"records": self._outside_window, "data_from": start.isoformat() if start else None,
                                       "data_to": end.isoformat() if end else None,
                                       "message": f"{self._outside_window} records the holder served were outside the consent's data window "
                                                  "(or had no readable date): not delivered"}
        if refused:  # what arrived is exactly what the recipient holds, but not all that the holder served
            await self._finish(tid, "partial", reason="records_refused", sha256=digest.hexdigest(), records=digest.count, nbytes=digest.bytes,
                               error={"message": f"the recipient refused {len(refused)} of {offered} records",
                                      "refused_count": len(refused), "refused": refused[:MAX_REFUSED_LISTED], **notes},
                               resume_cursor=self._resume_cursor, schedule_id=row.schedule_id)
        else:
            await self._finish(tid, "completed", sha256=digest.hexdigest(), records=digest.count, nbytes=digest.bytes,
                               error=notes or None, resume_cursor=self._resume_cursor, schedule_id=row.schedule_id)

    @staticmethod
    def _check_converted(target_checker: Any, target: str, out: list[Any], offered: int) -> None:
        if target_checker is None:
            return
        bad = target_checker.first_error(out)
        if bad is not None:
            raise TransferEnded("failed", "conversion_failed", {
                "message": f"converted record {offered + bad.index} breaks the {target} schema: {bad.message}",
                "position": offered + bad.index, "schema_error": bad.message, "path": bad.path})

    @staticmethod
    def _notes(stream: converters.Stream | None) -> dict[str, Any]:
        """What a conversion deliberately left out or carried with a caveat, by code (partial periods, days without
        a value...). Only the codes, counts and periods are kept: a note's message may quote a value."""
        if stream is None or not stream.notes:
            return {}
        counts: dict[str, int] = {}
        for n in stream.notes:
            counts[str(n.get("code"))] = counts.get(str(n.get("code")), 0) + 1
        periods = [str(n["period"]) for n in stream.notes if n.get("period")][:MAX_NOTES_LISTED]
        summary = ", ".join(f"{code}: {k}" for code, k in sorted(counts.items()))
        return {"conversion": {"from": stream.converter.source, "to": stream.converter.target, "version": stream.converter.version,
                               "notes": counts, **({"periods_left_out": periods} if periods else {}),
                               "message": f"converted records with notes ({summary})"}}

    # ---- state changes (each with its event, in one transaction) ----------------------

    def _mine(self, tid: str) -> Any:
        """The row of ``tid`` if this worker may write it: its lease holder, or anyone before a worker took it."""
        c = models.transfers.c
        if self._owned:
            return (c.id == tid) & (c.worker == self.worker_id) & c.status.not_in(TERMINAL)
        return (c.id == tid) & c.status.not_in(TERMINAL)

    async def _write(self, tid: str, values: dict[str, Any], event: tuple[str, str, Any] | None = None, also: Any = None) -> None:
        """Update the transfer and add its event in one transaction; :class:`Abandon` if the lease was lost
        (the job was redelivered to another worker, e.g. after ack_wait passed during a NATS outage)."""
        async with self.rt.db.unit_of_work() as s:
            n = (await s.execute(models.transfers.update().where(self._mine(tid)).values(updated_at=datetime.now(UTC), **values))).rowcount
            if n != 1:
                log.warning("transfer %s: %s no longer holds it; leaving it to its new worker", tid, self.worker_id)
                raise Abandon()
            if also is not None:
                await s.execute(also)
            if event is not None:
                subject, msg_type, data = event
                if data is None:
                    data = event_data(as_dict((await s.execute(select(models.transfers).where(models.transfers.c.id == tid))).one()))
                await add_event(s, models.outbox, subject, msg_type, data)
        self.rt.events_committed()

    async def _update(self, tid: str, **values: Any) -> None:
        try:
            await self._write(tid, values)
        except Abandon:
            pass

    async def _start(self, tid: str, *, attempt: int, resume: bool, delivered_dataset: str | None = None) -> None:
        """Take the lease (the server gave us the job, so whoever had it is presumed gone) and mark it running."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"status": "running", "attempts": attempt, "error": None, "worker": self.worker_id,
                                  "delivered_dataset": delivered_dataset}
        if not resume:
            values |= {"started_at": now, "cursor": None, "batches": 0, "records": 0, "bytes": 0}
        kind = "resumed" if resume else "started"
        self._owned = False
        await self._write(tid, values, (f"{subjects.TRANSFER_EVENTS}.{kind}", f"transfer.events.{kind}", None))
        self._owned = True

    async def _progress(self, tid: str, *, cursor: str, batches: int, records: int, nbytes: int, rate: float, eta_s: float | None,
                        total: int | None, refused: list[dict[str, Any]]) -> None:
        eta = round(eta_s, 3) if eta_s is not None else None
        await self._write(tid, {"cursor": cursor, "batches": batches, "records": records, "bytes": nbytes, "total": total,
                                "rate": round(rate, 3), "eta_s": eta, "refused": refused or None},
                          (f"{subjects.TRANSFER_EVENTS}.progress", "transfer.events.progress",
                           {"transfer_id": tid, "batches": batches, "pages": batches, "records": records, "bytes": nbytes,
                            "total": total, "rate_records_per_s": round(rate, 3), "eta_s": eta}))

    async def _finish(self, tid: str, status: str, *, reason: str | None = None, error: dict[str, Any] | None = None,
                      sha256: str | None = None, records: int | None = None, nbytes: int | None = None,
                      resume_cursor: str | None = None, schedule_id: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "reason": reason, "error": error, "sha256": sha256,
                                  "finished_at": datetime.now(UTC), "eta_s": None, "resume_cursor": resume_cursor}
        if records is not None:
            values |= {"records": records, "bytes": nbytes}
        also = None
        if schedule_id and resume_cursor:  # the next occurrence asks only for what is new
            also = models.schedules.update().where(models.schedules.c.id == schedule_id).values(resume_cursor=resume_cursor)
        await self._write(tid, values, (f"{subjects.TRANSFER_EVENTS}.{status}", f"transfer.events.{status}", None), also=also)
        TRANSFERS_ENDED.add(1, {"status": status, "reason": reason or ""})
        log.info("transfer %s %s%s", tid, status, f" ({reason})" if reason else "")

