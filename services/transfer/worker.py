"""The transfer worker: takes jobs from ``transfer.jobs`` and moves records holder -> recipient.

For each job (../shared/DESIGN.md, "The main job", step 4):

1. ``consent.check`` over NATS; an invalid consent ends the transfer ``failed/consent_invalid``
   before any request to the holder. The check is repeated before every page, so no page is
   read from the holder once a revocation is committed.
2. ``registry.participant.get`` for both parties and ``registry.dataset.get`` for the record schema.
3. ``consent.token.get`` for the holder access token.
4. Pages ``GET {export}/datasets/{dataset}/records?cursor&limit`` (holder export contract); every
   record is validated against the dataset schema; each page is pushed as one batch
   ``PUT {import}/transfers/{id}/batches/{n}`` with ``Idempotency-Key: {id}:{n}``; after the
   recipient's acknowledgement the cursor, counts and bytes are committed with a progress event.
5. ``PUT {import}/transfers/{id}/manifest`` with the record count and SHA-256 (RFC 8785 records,
   one per line); the recipient must confirm it.

A redelivered job restarts from the first page: batch numbers and cursors are stable, so the
recipient's deduplication makes the re-run store nothing twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import select

from shared import subjects
from shared.canonical import RecordDigest
from shared.consumer import ConsumerSpec, Delivery, PullConsumer, Retry
from shared.errors import BrokerError, NotFound, Unavailable
from shared.outbox import add_event
from shared.runtime import Runtime

from . import models
from .service import TERMINAL, as_dict, event_data

log = logging.getLogger("services.transfer.worker")


class TransferEnded(Exception):
    """The transfer reached an end other than completion: ``status``, ``reason`` and ``error``."""

    def __init__(self, status: str, reason: str, error: dict[str, Any]) -> None:
        super().__init__(f"{status}: {reason}")
        self.status, self.reason, self.error = status, reason, error


def consumer_spec(rt: Runtime) -> ConsumerSpec:
    s = rt.settings
    return ConsumerSpec(
        stream="TRANSFER_JOBS", durable=subjects.TRANSFER_WORKERS_DURABLE, filter_subject=subjects.TRANSFER_JOBS,
        msg_type="transfer.job", ack_wait_s=s.transfer_ack_wait_s, max_deliver=s.transfer_max_deliver,
    )


def make_consumer(rt: Runtime) -> PullConsumer:
    worker = TransferWorker(rt)
    return PullConsumer(rt.require_bus(), consumer_spec(rt), worker.handle, fetch_timeout_s=rt.settings.transfer_fetch_timeout_s)


def _problem_of(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict):
            return str(body.get("detail") or body.get("title") or body)[:500]
    except ValueError:
        pass
    return resp.text[:500]


class TransferWorker:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.bus = rt.require_bus()

    async def handle(self, env: dict[str, Any], delivery: Delivery) -> None:
        job = env["data"]
        tid = job["transfer_id"]
        async with self.rt.db.sessions() as s:
            row = (await s.execute(select(models.transfers).where(models.transfers.c.id == tid))).first()
        if row is None:
            from shared.consumer import Reject

            raise Reject(f"unknown transfer {tid}")
        if row.status in TERMINAL:
            return
        try:
            await self._run(row, env, delivery)
        except TransferEnded as end:
            await self._finish(tid, end.status, reason=end.reason, error=end.error)
        except (Retry, Unavailable, httpx.TransportError) as exc:
            reason = exc.reason if isinstance(exc, Retry) else str(exc)
            if delivery.last_attempt:
                await self._finish(tid, "failed", reason="retries_exhausted", error={"message": reason, "attempts": delivery.number})
                return
            await self._update(tid, error={"message": reason, "attempt": delivery.number})
            raise Retry(reason, delay=min(2.0 ** delivery.number, 30.0)) from None

    async def _valid_consent(self, row: Any, correlation_id: str) -> None:
        check = await self.bus.request(subjects.CONSENT_CHECK, {"consent_id": row.consent_id, "dataset": row.dataset},
                                       correlation_id=correlation_id)
        if not check["valid"]:
            raise TransferEnded("failed" if row.batches == 0 else "cancelled", "consent_invalid",
                                {"message": f"consent is not valid: {check['reason']}", "consent_reason": check["reason"]})

    async def _participant(self, pid: str, corr: str) -> dict[str, Any]:
        try:
            p = await self.bus.request(subjects.REGISTRY_PARTICIPANT_GET, {"participant_id": pid}, correlation_id=corr)
        except NotFound:
            raise TransferEnded("failed", "participant_inactive", {"message": f"participant {pid} is not registered"}) from None
        if p["status"] != "active":
            raise TransferEnded("cancelled", "participant_inactive", {"message": f"participant {pid} is {p['status']}"})
        return p

    async def _run(self, row: Any, env: dict[str, Any], delivery: Delivery) -> None:
        corr = env["correlation_id"]
        tid = row.id
        await self._valid_consent(row, corr)
        holder = await self._participant(row.holder_id, corr)
        recipient = await self._participant(row.recipient_id, corr)
        dataset = await self.bus.request(subjects.REGISTRY_DATASET_GET, {"dataset_id": row.dataset}, correlation_id=corr)
        validator = Draft202012Validator(dataset["schema"], format_checker=FormatChecker())
        try:
            token = await self.bus.request(subjects.CONSENT_TOKEN_GET, {"consent_id": row.consent_id}, correlation_id=corr)
        except BrokerError as exc:
            if isinstance(exc, Unavailable):
                raise
            raise TransferEnded("failed", "consent_invalid", {"message": exc.detail}) from None
        await self._start(tid, attempt=delivery.number)

        settings = self.rt.settings
        export = holder["export_base_url"].rstrip("/")
        imp = recipient["import_base_url"].rstrip("/")
        digest = RecordDigest()
        cursor: str | None = None
        batch = 0
        recipient_headers = {"Authorization": f"Bearer {settings.broker_recipient_token}"}
        async with httpx.AsyncClient(timeout=settings.transfer_http_timeout_s) as client:
            while True:
                await delivery.heartbeat()
                if batch > 0:
                    await self._valid_consent(row, corr)
                params: dict[str, Any] = {"limit": settings.transfer_page_limit}
                if cursor:
                    params["cursor"] = cursor
                resp = await client.get(f"{export}/datasets/{row.dataset}/records", params=params,
                                        headers={"Authorization": f"Bearer {token['access_token']}", "X-Correlation-Id": corr})
                if resp.status_code in (401, 403):
                    raise TransferEnded("failed", "consent_invalid", {"message": f"holder refused the token ({resp.status_code}): {_problem_of(resp)}"})
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise Retry(f"holder answered {resp.status_code}", delay=float(resp.headers.get("Retry-After", "1") or 1))
                if resp.status_code != 200:
                    raise TransferEnded("failed", "holder_error", {"message": f"holder answered {resp.status_code}: {_problem_of(resp)}"})
                try:
                    page = resp.json()
                    records = page["records"]
                    next_cursor = page.get("next_cursor")
                    if not isinstance(records, list) or (next_cursor is not None and not isinstance(next_cursor, str)):
                        raise TypeError("records must be a list and next_cursor a string")
                except (ValueError, KeyError, TypeError) as exc:
                    raise TransferEnded("failed", "holder_error", {"message": f"holder page is not a records page: {exc}"}) from None
                for i, record in enumerate(records):
                    err = next(iter(validator.iter_errors(record)), None)
                    if err is not None:
                        raise TransferEnded("failed", "schema_violation", {
                            "message": f"record {digest.count + i} breaks the {row.dataset} schema: {err.message}",
                            "position": digest.count + i, "schema_error": err.message,
                            "path": "/" + "/".join(map(str, err.absolute_path)),
                        })
                if records:
                    batch += 1
                    await delivery.heartbeat()
                    put = await client.put(f"{imp}/transfers/{tid}/batches/{batch}", json={"dataset": row.dataset, "records": records},
                                           headers={**recipient_headers, "Idempotency-Key": f"{tid}:{batch}", "X-Correlation-Id": corr})
                    if put.status_code in (413, 507):
                        raise TransferEnded("failed", "destination_full", {"message": f"recipient answered {put.status_code}: {_problem_of(put)}", "batch": batch})
                    if put.status_code >= 500 or put.status_code == 429:
                        raise Retry(f"recipient answered {put.status_code}", delay=float(put.headers.get("Retry-After", "1") or 1))
                    if put.status_code not in (200, 201):
                        raise TransferEnded("failed", "recipient_error", {"message": f"recipient answered {put.status_code}: {_problem_of(put)}", "batch": batch})
                    digest.update(records)
                    await self._progress(tid, cursor=next_cursor, batches=batch, records=digest.count, nbytes=digest.bytes)
                if not next_cursor:
                    break
                cursor = next_cursor
            manifest = {"dataset": row.dataset, "records": digest.count, "sha256": digest.hexdigest(), "batches": batch}
            put = await client.put(f"{imp}/transfers/{tid}/manifest", json=manifest, headers={**recipient_headers, "X-Correlation-Id": corr})
            if put.status_code >= 500:
                raise Retry(f"recipient answered {put.status_code} to the manifest")
            body: dict[str, Any] = {}
            try:
                body = put.json()
            except ValueError:
                pass
            if put.status_code != 200 or not body.get("match"):
                raise TransferEnded("failed", "manifest_mismatch", {"message": f"recipient did not confirm the manifest ({put.status_code})", "manifest": manifest, "recipient": body})
        await self._finish(tid, "completed", sha256=digest.hexdigest())

    # ---- state changes (each with its event, in one transaction) ----------------------

    async def _update(self, tid: str, **values: Any) -> None:
        async with self.rt.db.unit_of_work() as s:
            await s.execute(models.transfers.update().where(models.transfers.c.id == tid).values(updated_at=datetime.now(UTC), **values))

    async def _start(self, tid: str, *, attempt: int) -> None:
        now = datetime.now(UTC)
        async with self.rt.db.unit_of_work() as s:
            await s.execute(models.transfers.update().where(models.transfers.c.id == tid).values(
                status="running", started_at=now, updated_at=now, attempts=attempt, cursor=None, batches=0, records=0, bytes=0, error=None))
            out = as_dict((await s.execute(select(models.transfers).where(models.transfers.c.id == tid))).one())
            await add_event(s, models.outbox, f"{subjects.TRANSFER_EVENTS}.started", "transfer.events.started", event_data(out))
        self.rt.events_committed()

    async def _progress(self, tid: str, *, cursor: str | None, batches: int, records: int, nbytes: int) -> None:
        async with self.rt.db.unit_of_work() as s:
            await s.execute(models.transfers.update().where(models.transfers.c.id == tid).values(
                cursor=cursor, batches=batches, records=records, bytes=nbytes, updated_at=datetime.now(UTC)))
            await add_event(s, models.outbox, f"{subjects.TRANSFER_EVENTS}.progress", "transfer.events.progress",
                            {"transfer_id": tid, "batches": batches, "records": records, "bytes": nbytes})
        self.rt.events_committed()

    async def _finish(self, tid: str, status: str, *, reason: str | None = None, error: dict[str, Any] | None = None, sha256: str | None = None) -> None:
        now = datetime.now(UTC)
        async with self.rt.db.unit_of_work() as s:
            await s.execute(models.transfers.update().where(models.transfers.c.id == tid).values(
                status=status, reason=reason, error=error, sha256=sha256, finished_at=now, updated_at=now))
            out = as_dict((await s.execute(select(models.transfers).where(models.transfers.c.id == tid))).one())
            await add_event(s, models.outbox, f"{subjects.TRANSFER_EVENTS}.{status}", f"transfer.events.{status}", event_data(out))
        self.rt.events_committed()
        log.info("transfer %s %s%s", tid, status, f" ({reason})" if reason else "")
