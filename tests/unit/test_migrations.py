"""Each service's migrations build exactly its models, on SQLite and (with DATABASE_URL) PostgreSQL,
and a service refuses to start on a database that is not migrated."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from shared import migrations
from shared.db import Database
from shared.settings import Settings

SERVICES = ["registry", "consent", "transfer"]


def _database(service: str, tmp_path: Path) -> Database:
    models = importlib.import_module(f"services.{service}.models")
    url = os.environ.get("DATABASE_URL")
    if url:
        s = Settings(database_url=url, db_schema_prefix=f"m{uuid.uuid4().hex[:8]}_")
        return Database(s.database_url_for(service), models.metadata, s.schema_for(service))
    return Database(f"sqlite+aiosqlite:///{tmp_path}/{service}.db", models.metadata, service)


async def _drop(db: Database) -> None:
    if db.schema:
        async with db.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{db.schema}" CASCADE'))
    await db.dispose()


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_build_exactly_the_models(service: str, tmp_path: Path) -> None:
    if migrations.head(service) is None:
        pytest.fail(f"{service} has no migrations")
    db = _database(service, tmp_path)
    try:
        with pytest.raises(migrations.NotMigrated, match="--migrate"):
            await migrations.check(db, service)
        await migrations.upgrade(db, service)
        await migrations.check(db, service)

        def diff(sync_conn: Any) -> list[Any]:
            if db.schema:  # compare what lives in the service's own schema
                sync_conn.exec_driver_sql(f'SET search_path TO "{db.schema}"')
            ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True, "version_table_schema": db.schema})
            return [d for d in compare_metadata(ctx, db.metadata)
                    if not (d[0] == "remove_table" and d[1].name == "alembic_version")]

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == [], "models and migrations differ: run `make migration`"
    finally:
        await _drop(db)


def test_a_service_refuses_to_start_on_an_unmigrated_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env |= {"DATA_DIR": str(tmp_path), "NATS_URL": "nats://127.0.0.1:1"}
    proc = subprocess.run([sys.executable, "-m", "services.registry", "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "not migrated" in proc.stderr or "--migrate" in proc.stderr, proc.stderr[-2000:]
