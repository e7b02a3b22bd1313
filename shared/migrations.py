"""Alembic migrations, one history per service (``services/<service>/migrations``).

A service migrates on start only when asked (``--migrate``); otherwise it refuses to start
on a database whose revision is not the head of its history. On PostgreSQL each service's
tables, and its ``alembic_version`` table, live in the service's own schema.

New revision after a model change: ``make migration SERVICE=consent MESSAGE="add x"``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text

from .db import Database

SERVICES_DIR = Path(__file__).resolve().parents[1] / "services"


class NotMigrated(RuntimeError):
    """The database is not at the head revision of the service's migrations."""


def config(service: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    return cfg


def head(service: str) -> str | None:
    return ScriptDirectory.from_config(config(service)).get_current_head()


def _current(sync_conn: Any, schema: str | None) -> str | None:
    return MigrationContext.configure(sync_conn, opts={"version_table_schema": schema}).get_current_revision()


async def current(db: Database) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current, db.schema)


async def upgrade(db: Database, service: str, revision: str = "head") -> None:
    """Migrate the service's database (and create its PostgreSQL schema) up to ``revision``."""
    cfg = config(service)

    def run(sync_conn: Any) -> None:
        cfg.attributes["connection"] = sync_conn
        cfg.attributes["schema"] = db.schema
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:  # on SQLite, BEGIN IMMEDIATE already makes migrations take turns
        if not db.is_sqlite:
            # two replicas starting together migrate one after the other (the lock ends with the transaction)
            key = int.from_bytes(hashlib.sha256(f"migrate:{db.schema}".encode()).digest()[:8], "big", signed=True)
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        if db.schema:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"'))
        await conn.run_sync(run)


async def check(db: Database, service: str) -> None:
    """Raise :class:`NotMigrated` unless the database is at the head revision."""
    want, have = head(service), await current(db)
    if want != have:
        raise NotMigrated(f"the {service} database is at revision {have or 'none'}, not {want}: "
                          f"start the service with --migrate (or run: python -m services.{service} --migrate)")


async def autogenerate(db: Database, service: str, message: str) -> None:
    """Write a new revision with the differences between the models and a database at head."""
    cfg = config(service)

    def run(sync_conn: Any) -> None:
        cfg.attributes["connection"] = sync_conn
        cfg.attributes["schema"] = db.schema
        command.revision(cfg, message=message, autogenerate=True)

    await upgrade(db, service)
    async with db.engine.begin() as conn:
        await conn.run_sync(run)


def run_env(metadata: MetaData) -> None:
    """The body of every service's ``migrations/env.py``: migrate on the connection given in the config."""
    from alembic import context

    conn = context.config.attributes["connection"]
    schema = context.config.attributes.get("schema")
    context.configure(
        connection=conn,
        target_metadata=metadata,
        version_table_schema=schema,
        render_as_batch=conn.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main(argv: list[str] | None = None) -> None:
    """``python -m shared.migrations revision <service> <message>``: autogenerate against a scratch SQLite database."""
    import argparse
    import asyncio
    import importlib
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m shared.migrations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a new revision from the model changes")
    rev.add_argument("service", choices=["registry", "consent", "transfer"])
    rev.add_argument("message")
    args = parser.parse_args(argv)
    models = importlib.import_module(f"services.{args.service}.models")
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/scratch.db", models.metadata, args.service)
        asyncio.run(autogenerate(db, args.service, args.message))


if __name__ == "__main__":
    main()
