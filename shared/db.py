"""SQLAlchemy 2 async engine and unit of work, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

SQLite: WAL, a busy timeout, and every writing transaction opened with ``BEGIN IMMEDIATE``
(the SQLAlchemy aiosqlite recipe; see STACK_PITFALLS S1/S2), so concurrent writers
wait instead of failing with "database is locked" and SAVEPOINTs roll back.
PostgreSQL: each service's tables live in its own schema, via ``schema_translate_map``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


class Database:
    """One service's database: engine, session factory and table creation."""

    def __init__(self, url: str, metadata: MetaData, schema: str) -> None:
        self.url = url
        self.metadata = metadata
        self.is_sqlite = url.startswith("sqlite")
        self.schema = None if self.is_sqlite else schema
        kwargs: dict[str, Any] = {"hide_parameters": True}  # statement parameters (sealed tokens, sessions) never in logs or errors
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["execution_options"] = {"schema_translate_map": {None: self.schema}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_recipe(self.engine, begin="BEGIN IMMEDIATE")
            # reads need no write lock: a second engine whose transactions begin deferred
            self.read_engine: AsyncEngine = create_async_engine(url, **kwargs)
            _sqlite_recipe(self.read_engine, begin="BEGIN")
        else:
            self.read_engine = self.engine
        self.writer = async_sessionmaker(self.engine, expire_on_commit=False)
        # ``sessions()`` is for reading; ``unit_of_work()`` for every change
        self.sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)

    async def create_all(self) -> None:
        """Create the schema (PostgreSQL) and every table that does not exist yet."""
        async with self.engine.begin() as conn:
            if self.schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(self.metadata.create_all)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed when the block ends normally, rolled back otherwise."""
        async with self.writer() as session:
            async with session.begin():
                yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _sqlite_recipe(engine: AsyncEngine, *, begin: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # deleted rows (an erased person) are overwritten, not left in free pages
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)
