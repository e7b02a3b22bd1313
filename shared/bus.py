"""The NATS bus: connection, JetStream streams, request/reply, events and dead letters.

One wrapper for every service so that handlers never deal with NATS details, envelopes
or OpenTelemetry:

- :meth:`Bus.request` sends a question (core request/reply) and returns the ``result``
  of the reply, or raises the :class:`~shared.errors.BrokerError` the responder raised.
  "No responders" and time-outs become :class:`~shared.errors.Unavailable`.
- :meth:`Bus.serve` answers a subject in a queue group; each message runs in its own task
  (bounded), malformed messages get an error reply (or are dead-lettered when there is no
  reply inbox), and no exception ever kills the subscription.
- :meth:`Bus.publish` is a JetStream publish with ``Nats-Msg-Id`` deduplication and
  bounded retries (STACK_PITFALLS N5, N6).
- :meth:`Bus.dead_letter` parks a message on ``deadletter.<subject>`` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import envelope, natsauth, telemetry
from .errors import BrokerError, InvalidInput, Unavailable, from_problem
from .settings import Settings
from .subjects import ALL_STREAMS, StreamSpec, dead_letter_subject

log = logging.getLogger("shared.bus")

Handler = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]

DUPLICATE_WINDOW_S = 120.0

_violations: Any = None


def _permission_violations() -> Any:
    """Counter of the operations NATS refused this process (a gap in shared/natsauth.py, or an attack)."""
    global _violations
    if _violations is None:
        _violations = telemetry.meter().create_counter(
            "nats_permission_violations", description="NATS operations refused by the server's permissions")
    return _violations


def _uses_tls(nc: Client) -> bool | None:
    """Whether the connection runs over TLS; None when the transport does not tell (websocket)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if writer is None:
        return None
    return writer.get_extra_info("ssl_object") is not None


class Bus:
    """A service's NATS connection and JetStream context."""

    def __init__(self, nc: Client, service: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Any] = []
        self.closing = False
        self.replicas = 1

    @classmethod
    async def connect(
        cls, url: str, service: str, *, connect_timeout: float = 5.0, settings: Settings | None = None
    ) -> Bus:
        """Connect with endless reconnects (STACK_PITFALLS N4); raises :class:`Unavailable` if unreachable.

        Authenticates as the service's own NATS user (``NATS_USER``/``NATS_PASSWORD``, or
        ``NATS_CREDS_FILE``) over TLS when ``NATS_TLS_*`` is set or the URL is ``tls://``, with the
        reply inbox ``_INBOX_<service>`` that only this service may read (shared/natsauth.py).
        ``settings`` default to the environment's. The password is never sent over a connection
        that should be TLS and is not. Operations the server refuses ("Permissions Violation") are
        logged as errors and counted (``nats_permission_violations``).
        """
        auth = natsauth.client_auth(settings if settings is not None else Settings(), url)
        nc = Client()

        async def error_cb(exc: Exception) -> None:
            text = str(exc)
            if "permissions violation" in text.lower():
                _permission_violations().add(1, {"service": service})
                log.error("NATS refused an operation of %s (user %s): %s; the allowed subjects are in shared/natsauth.py",
                          service, auth.user or "-", text)
            elif isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower():
                log.error("NATS refused the credentials of %s (user %s): %s", service, auth.user or "-", text)
            else:
                log.warning("nats error: %s", exc)

        async def closed_cb() -> None:
            if not getattr(bus, "closing", False):
                log.error("nats connection closed")

        def password() -> str:
            # called while the CONNECT is built, after any TLS upgrade
            if auth.require_tls and _uses_tls(nc) is False:
                raise nats.errors.Error("nats: TLS is configured but the server did not start TLS; the password is not sent")
            return auth.password or ""

        options: dict[str, Any] = {
            "servers": [url],
            "name": service,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": connect_timeout,
            "allow_reconnect": True,
            "drain_timeout": 3,
            "error_cb": error_cb,
            "closed_cb": closed_cb,
            "inbox_prefix": natsauth.inbox_prefix(service),
        }
        if auth.user:
            options["user"] = auth.user
            options["password"] = password
        if auth.creds_file:
            options["user_credentials"] = auth.creds_file
        if auth.tls is not None:
            options["tls"] = auth.tls
            options["tls_handshake_first"] = auth.tls_handshake_first
        try:
            await nc.connect(**options)
        except Exception as exc:  # nats raises several unrelated types here
            raise Unavailable(f"cannot reach NATS at {natsauth.redact_url(url)}: {exc}") from exc
        if auth.require_tls and _uses_tls(nc) is False:
            await nc.close()
            raise Unavailable(f"NATS at {natsauth.redact_url(url)} did not start TLS, which the settings require")
        bus = cls(nc, service)
        return bus

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        # consumers and handlers are stopped by now: flush what we published, then close
        # (a drain can stall for its whole timeout on pull subscriptions)
        if self.nc.is_connected:
            try:
                await self.nc.flush(timeout=2)
            except Exception:
                pass
        if not self.nc.is_closed:
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    # ---- JetStream set-up -------------------------------------------------------------

    async def ensure_streams(self, specs: tuple[StreamSpec, ...] = ALL_STREAMS, *, replicas: int = 1, max_age_s: float = 0.0) -> None:
        """Create each stream if missing (file storage, dedupe window, ``replicas`` copies); idempotent across services.

        The event streams (every one but the work queue of transfer jobs, whose messages go when done) keep a
        message ``max_age_s`` seconds (0: for ever; setting ``EVENT_RETENTION_DAYS``): events name people, and
        a consumer down longer than that has lost them anyway. A stream that exists with another ``max_age``
        is updated to this one (the setting changed)."""
        self.replicas = replicas
        for spec in specs:
            age = 0.0 if spec.work_queue else max(0.0, float(max_age_s))
            config = StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
                num_replicas=replicas,
                max_age=age,
            )
            try:
                info = await self.js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                info = None
            if info is None:
                try:
                    await self.js.add_stream(config=config)
                    continue
                except nats.js.errors.BadRequestError:
                    # another service created it between our two calls
                    info = await self.js.stream_info(spec.name)
            if abs(float(info.config.max_age or 0) - age) > 0.001:
                log.info("stream %s: keeping messages %s instead of %s", spec.name, f"{age:.0f} s" if age else "for ever",
                         f"{info.config.max_age:.0f} s" if info.config.max_age else "for ever")
                await self.js.update_stream(config=info.config.evolve(max_age=age))

    # ---- request / reply --------------------------------------------------------------

    async def request(
        self,
        subject: str,
        data: dict[str, Any],
        *,
        correlation_id: str | None = None,
        timeout: float = 5.0,
        no_responder_retries: int = 10,
    ) -> dict[str, Any]:
        """Ask ``subject`` a question; returns the reply's ``result``.

        Raises :class:`Unavailable` when nobody answers (after short retries on "no responders",
        STACK_PITFALLS N14) or the answer is late; re-raises the responder's error otherwise.
        """
        env = envelope.make(subject, data, correlation_id=correlation_id)
        with telemetry.tracer().start_as_current_span(f"{subject} publish", kind=SpanKind.CLIENT) as span:
            headers = telemetry.inject_headers()
            delay = 0.05
            for attempt in range(no_responder_retries + 1):
                try:
                    msg = await self.nc.request(subject, envelope.encode(env), timeout=timeout, headers=headers)
                    break
                except nats.errors.NoRespondersError:
                    if attempt == no_responder_retries:
                        span.set_status(Status(StatusCode.ERROR, "no responders"))
                        raise Unavailable(f"no service answers {subject}") from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                except nats.errors.TimeoutError:
                    span.set_status(Status(StatusCode.ERROR, "timeout"))
                    raise Unavailable(f"{subject} did not answer within {timeout} s") from None
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
                    raise Unavailable(f"NATS unavailable: {exc}") from None
            reply = envelope.decode(msg.data, expected_type="reply")["data"]
            if reply["ok"]:
                return dict(reply["result"])
            raise from_problem(reply["error"])

    async def serve(self, subject: str, handler: Handler, *, queue: str, concurrency: int = 64) -> None:
        """Answer ``subject`` in queue group ``queue`` with ``handler(data, envelope) -> result``."""
        sem = asyncio.Semaphore(concurrency)

        async def cb(msg: Msg) -> None:
            await sem.acquire()
            task = asyncio.create_task(self._handle(subject, msg, handler))
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                sem.release()

            task.add_done_callback(done)

        self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=cb))

    async def _handle(self, subject: str, msg: Msg, handler: Handler) -> None:
        ctx = telemetry.extract_context(msg.headers)
        correlation_id: str | None = None
        with telemetry.tracer().start_as_current_span(f"{subject} process", context=ctx, kind=SpanKind.SERVER) as span:
            try:
                env = envelope.decode(msg.data, expected_type=subject)
                correlation_id = env["correlation_id"]
                telemetry.correlation_id.set(correlation_id)
                result = await handler(env["data"], env)
                body: dict[str, Any] = {"ok": True, "result": result}
            except BrokerError as exc:
                span.set_status(Status(StatusCode.ERROR, exc.code))
                if isinstance(exc, InvalidInput):
                    log.warning("rejected malformed message on %s: %s", subject, exc.detail)
                body = {"ok": False, "error": exc.to_problem()}
            except Exception as exc:  # a handler bug must not kill the service
                log.exception("handler for %s failed", subject)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                body = {"ok": False, "error": BrokerError("internal error").to_problem()}
            if msg.reply:
                reply = envelope.make("reply", body, correlation_id=correlation_id, check=False)
                try:
                    await msg.respond(envelope.encode(reply))
                except Exception:  # pragma: no cover - connection lost while replying
                    log.warning("could not reply on %s", subject)
            elif not body["ok"]:
                await self.dead_letter(subject, msg.data, body["error"]["detail"], headers=msg.headers)

    # ---- JetStream publishing ---------------------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, *, msg_id: str, headers: dict[str, str] | None = None, attempts: int = 8
    ) -> None:
        """Publish to JetStream with ``Nats-Msg-Id`` = ``msg_id``; retries the same id on failure.

        A duplicate ack counts as success. Raises :class:`Unavailable` after ``attempts``.
        """
        hdrs = dict(headers or {})
        hdrs["Nats-Msg-Id"] = msg_id
        delay = 0.1
        last: Exception | None = None
        for _ in range(attempts):
            try:
                await self.js.publish(subject, payload, headers=hdrs, timeout=2.0)
                return
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.ServiceUnavailableError,
                nats.errors.ConnectionReconnectingError,
                nats.js.errors.APIError,
            ) as exc:
                last = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise Unavailable(f"could not publish to {subject}: {last!r}")

    async def publish_envelope(self, subject: str, env: dict[str, Any]) -> None:
        """Publish an envelope on a JetStream subject, with the current trace context."""
        with telemetry.tracer().start_as_current_span(f"{subject} publish", kind=SpanKind.PRODUCER):
            await self.publish(subject, envelope.encode(env), msg_id=env["id"], headers=telemetry.inject_headers())

    async def dead_letter(
        self, subject: str, payload: bytes, reason: str, *, headers: dict[str, Any] | None = None, deliveries: int = 1
    ) -> None:
        """Park ``payload`` on ``deadletter.<subject>`` with ``reason``; logs if even that fails."""
        try:
            text = payload.decode("utf-8", errors="replace")[:65536]
        except Exception:  # pragma: no cover
            text = repr(payload[:65536])
        data = {
            "subject": subject,
            "reason": reason[:2000],
            "payload": text,
            "headers": {str(k): str(v) for k, v in (headers or {}).items()},
            "deliveries": deliveries,
        }
        env = envelope.make("deadletter", data)
        try:
            await self.publish(dead_letter_subject(subject), envelope.encode(env), msg_id=env["id"], attempts=3)
            log.warning("dead-lettered a message on %s: %s", subject, reason)
        except Unavailable:
            log.error("could not dead-letter a message on %s (%s): %s", subject, reason, json.dumps(data)[:500])
