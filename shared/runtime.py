"""Bootstrap of one service process: settings, database, NATS bus, outbox relay, HTTP app.

Every service builds a :class:`Runtime` in its FastAPI lifespan so that HTTP routes and
NATS handlers share the same database, bus and use cases (one ``bootstrap()``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import MetaData, Table

from . import migrations, natsauth, telemetry
from .auth import ADMIN, REGULATOR, TokenVerifier, install_bearer_errors, requires
from .bus import Bus
from .db import Database
from .http import BodyLimitMiddleware, TextGuardMiddleware, install_problem_handlers, setup_logging
from .outbox import OutboxRelay
from .settings import Settings
from .subjects import ALL_STREAMS

log = logging.getLogger("shared.runtime")


class Runtime:
    """What a running service holds: ``settings``, ``db``, ``bus`` and the outbox ``relay``."""

    def __init__(self, name: str, metadata: MetaData, outbox: Table, settings: Settings | None = None) -> None:
        self.name = name
        self.settings = settings or Settings()
        self.metadata = metadata
        self.outbox = outbox
        self.db = Database(self.settings.database_url_for(name), metadata, self.settings.schema_for(name))
        self.bus: Bus | None = None
        self.relay: OutboxRelay | None = None
        # more readiness checks: name -> callable answering True when fine
        self.ready_checks: dict[str, Callable[[], bool]] = {}

    async def start(self, *, wait_for_migrations_s: float = 0.0) -> None:
        """Connect everything. The database must be at the latest revision: migrated here with
        ``migrate``, or, for processes that never migrate (workers), waited for up to
        ``wait_for_migrations_s`` seconds while another process migrates it."""
        import asyncio
        import time

        telemetry.setup(self.name)
        if migrations.head(self.name) is None:  # a service without migrations yet
            await self.db.create_all()
        elif self.settings.migrate:
            await migrations.upgrade(self.db, self.name)
        else:
            deadline = time.monotonic() + wait_for_migrations_s
            while True:
                try:
                    await migrations.check(self.db, self.name)
                    break
                except migrations.NotMigrated:
                    if time.monotonic() >= deadline:
                        raise
                    log.info("waiting for the %s database to be migrated", self.name)
                    await asyncio.sleep(0.5)
        self.bus = await Bus.connect(self.settings.nats_url, self.name, settings=self.settings)
        # each service creates the streams it owns (with NATS permissions on it may create no others)
        owned = natsauth.owned_streams(self.name) if self.name in natsauth.ACCESS else ALL_STREAMS
        retention_s = self.settings.event_retention_days * 86400
        await self.bus.ensure_streams(owned, replicas=self.settings.nats_stream_replicas, max_age_s=retention_s)
        self.relay = OutboxRelay(self.db, self.outbox, self.bus, keep_published_s=retention_s)
        self.relay.start()

    async def stop(self) -> None:
        if self.relay:
            await self.relay.stop()
        if self.bus:
            await self.bus.close()
        await self.db.dispose()

    def require_bus(self) -> Bus:
        assert self.bus is not None, "runtime not started"
        return self.bus

    def events_committed(self) -> None:
        """Tell the relay that a transaction with outbox rows has just committed."""
        if self.relay:
            self.relay.notify()


def build_app(
    runtime: Runtime,
    *,
    title: str,
    description: str,
    on_start: Callable[[Runtime], Awaitable[None]] | None = None,
    on_stop: Callable[[Runtime], Awaitable[None]] | None = None,
) -> FastAPI:
    """A FastAPI app whose lifespan starts and stops ``runtime``; adds /healthz and /readyz."""

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        verifier: TokenVerifier = app_.state.token_verifier
        # a verifier fed locally (the registry's own) needs no NATS subscription
        local = getattr(app_.state, "token_verifier_local", False)
        await verifier.start(None if local else runtime.require_bus())
        runtime.ready_checks.setdefault("token_keys", lambda: verifier.ready)
        if on_start:
            await on_start(runtime)
        try:
            yield
        finally:
            if on_stop:
                await on_stop(runtime)
            await verifier.stop()
            await runtime.stop()

    telemetry.setup(runtime.name)
    app = FastAPI(title=title, description=description, version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    # the broker's access tokens (shared.auth): keys from the registry over NATS; the registry replaces it
    app.state.token_verifier = TokenVerifier.from_settings(runtime.settings)
    telemetry.instrument_app(app)
    install_problem_handlers(app)
    install_bearer_errors(app)
    app.add_middleware(TextGuardMiddleware)  # inside the body limit (the last added runs first)
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_request_bytes)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], include_in_schema=False, dependencies=[Depends(requires(REGULATOR, ADMIN))])
    async def metrics() -> Any:
        """Prometheus text format of the service's OpenTelemetry metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            await runtime.db.ping()
            checks["database"] = "ok"
        except Exception as exc:  # report, don't raise
            checks["database"] = f"error: {type(exc).__name__}"
        checks["nats"] = "ok" if runtime.bus and runtime.bus.connected else "disconnected"
        if checks["database"] == "ok":
            try:
                await migrations.check(runtime.db, runtime.name)
                checks["migrations"] = "ok"
            except migrations.NotMigrated:
                checks["migrations"] = "not current"
        for name, check in runtime.ready_checks.items():
            checks[name] = "ok" if check() else "failing"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)

    return app


def serve_main(service: str, make_app: Callable[[Settings], FastAPI], argv: list[str] | None = None) -> None:
    """``python -m services.<service> [--host H] [--port P]``: run the service's HTTP app with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--migrate", action="store_true", help="bring the database to the latest revision before serving")
    parser.add_argument("--migrate-only", action="store_true", help="migrate the database and exit (a deployment job)")
    args = parser.parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    if args.migrate_only:
        import asyncio

        metadata = make_app(settings).state.runtime.metadata
        db = Database(settings.database_url_for(service), metadata, settings.schema_for(service))
        asyncio.run(migrations.upgrade(db, service))
        print(f"{service}: database at revision {migrations.head(service)}")
        return
    settings.migrate = settings.migrate or args.migrate
    app = make_app(settings)
    uvicorn.run(
        app,
        host=args.host or settings.http_host,
        port=args.port if args.port is not None else settings.http_port,
        log_level="warning",
        timeout_graceful_shutdown=8,
    )
