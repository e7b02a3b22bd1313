"""A JetStream pull consumer loop that acks, naks or terms by error class (STACK_PITFALLS N1-N12).

The handler gets the decoded envelope and a :class:`Delivery`; it returns normally to ack,
raises :class:`Retry` to be redelivered later (nak with delay), or :class:`Reject` to park
the message on the dead-letter subject with its reason (term). Malformed messages are
rejected without reaching the handler. When a message reaches ``max_deliver`` deliveries
it is dead-lettered too, since the server would only leave it stuck (N11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanKind

from . import envelope, telemetry
from .bus import Bus
from .errors import BrokerError, InvalidInput

log = logging.getLogger("shared.consumer")


class Retry(Exception):
    """Redeliver this message after ``delay`` seconds (a transient failure)."""

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


class Reject(Exception):
    """Never redeliver this message; dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Abandon(Exception):
    """Leave the message alone (no ack, no nak): another delivery of it is being worked on elsewhere."""


class Postpone(Exception):
    """Put the message back for ``delay`` seconds without it counting as a failure (e.g. a busy holder)."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


class Release(Exception):
    """Give the message back now (the worker is stopping); it is redelivered at once to another worker."""


@dataclass
class Delivery:
    """What the handler may do with the message it is working on."""

    msg: Msg
    number: int  # 1 for the first delivery
    max_deliver: int
    stopping_event: asyncio.Event | None = None

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop: release the message at the next safe point."""
        return bool(self.stopping_event and self.stopping_event.is_set())

    async def heartbeat(self) -> None:
        """Tell the server we are still working (resets ack_wait, N9)."""
        try:
            await self.msg.in_progress()
        except Exception:  # connection blip: the next heartbeat or the ack will tell
            pass

    @property
    def last_attempt(self) -> bool:
        """True on the last delivery the consumer allows (never with ``max_deliver`` = -1, unlimited)."""
        return self.max_deliver > 0 and self.number >= self.max_deliver


JobHandler = Callable[[dict[str, Any], Delivery], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    msg_type: str | None  # None: the type its subject names (an event's type is its subject), checked against its schema
    ack_wait_s: float = 60.0
    max_deliver: int = 5
    max_ack_pending: int = 1000


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> None:
    """Create the durable consumer or bring its editable config up to date (N7, N8)."""
    config = ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        filter_subject=spec.filter_subject,
        max_ack_pending=spec.max_ack_pending,
    )
    await bus.js.add_consumer(spec.stream, config=config)
    info = await bus.js.consumer_info(spec.stream, spec.durable)
    if info.config.ack_wait != spec.ack_wait_s or info.config.max_deliver != spec.max_deliver:
        raise RuntimeError(f"consumer {spec.durable} has config {info.config} which differs from the wanted one")


class PullConsumer:
    """Runs ``handler`` on each message of a durable pull consumer until :meth:`stop`."""

    def __init__(self, bus: Bus, spec: ConsumerSpec, handler: JobHandler, *, fetch_timeout_s: float = 2.0) -> None:
        self.bus, self.spec, self.handler, self.fetch_timeout_s = bus, spec, handler, fetch_timeout_s
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.busy = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        """False if the loop has ended while it was not asked to stop (readiness reports it)."""
        return self._task is not None and (not self._task.done() or self._stopping.is_set())

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching; wait up to ``timeout`` s for the message in hand, then cancel it (it is redelivered)."""
        self._stopping.set()
        if self._task:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout)
            except TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):
                    pass

    async def _subscribe(self) -> Any:
        await ensure_consumer(self.bus, self.spec)
        return await self.bus.js.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)

    async def _run(self) -> None:
        sub = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if sub is None:
                    sub = await self._subscribe()
                msgs = await sub.fetch(1, timeout=self.fetch_timeout_s)
                failures = 0
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # an idle queue is not an error (N1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("fetch on %s failed (%s); retrying", self.spec.durable, exc)
                if failures >= 3:
                    sub = None  # re-create the subscription (N3)
                await asyncio.sleep(min(0.2 * failures, 2.0))
                continue
            for msg in msgs:
                self.busy = True
                try:
                    await self._process(msg)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let one message stop the loop
                    log.exception("processing a message on %s failed; it will be redelivered", self.spec.filter_subject)
                    await self._nak(msg, 5.0)
                finally:
                    self.busy = False

    async def _process(self, msg: Msg) -> None:
        number = msg.metadata.num_delivered if msg.metadata else 1
        delivery = Delivery(msg=msg, number=number, max_deliver=self.spec.max_deliver, stopping_event=self._stopping)
        ctx = telemetry.extract_context(msg.headers)
        with telemetry.tracer().start_as_current_span(f"{self.spec.filter_subject} process", context=ctx, kind=SpanKind.CONSUMER):
            try:
                env = envelope.decode(msg.data, expected_type=self.spec.msg_type or msg.subject or None)
            except InvalidInput as exc:
                await self._reject(msg, f"malformed message: {exc.detail}", number)
                return
            telemetry.correlation_id.set(env["correlation_id"])
            try:
                await self.handler(env, delivery)
            except Reject as exc:
                await self._reject(msg, exc.reason, number)
                return
            except Release:
                await self._nak(msg, 0)
                return
            except Postpone as exc:
                await self._nak(msg, exc.delay)
                return
            except Abandon:
                return
            except asyncio.CancelledError:
                await self._nak(msg, 0)
                raise
            except (Retry, BrokerError, Exception) as exc:
                reason = exc.reason if isinstance(exc, Retry) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, (Retry, BrokerError)):
                    log.exception("handler failed on %s", self.spec.filter_subject)
                if delivery.last_attempt:
                    await self._reject(msg, f"gave up after {number} deliveries: {reason}", number)
                else:
                    delay = exc.delay if isinstance(exc, Retry) else min(2.0 ** number, 30.0)
                    await self._nak(msg, delay)
                return
            try:
                await msg.ack_sync(timeout=5)
            except Exception as exc:  # the work is idempotent; a redelivery is harmless
                log.warning("ack failed (%s); the message may be redelivered", exc)

    async def _nak(self, msg: Msg, delay: float) -> None:
        try:
            await msg.nak(delay=delay)
        except Exception:
            pass

    async def _reject(self, msg: Msg, reason: str, number: int) -> None:
        await self.bus.dead_letter(msg.subject or self.spec.filter_subject, msg.data, reason, headers=msg.headers, deliveries=number)
        try:
            await msg.term()
        except Exception:
            pass
