"""Test fixtures: real-format files, and the whole broker as separate processes.

The broker under test runs on its own nats-server (started on a free port) and on SQLite,
or on PostgreSQL when ``DATABASE_URL`` is set (each run in fresh schemas, dropped after).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from pathlib import Path

import httpx
import pytest

from shared.launcher import Stack

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"

REAL_ENEDIS_FILES = {
    "enedis_v5_daily_consumption_myelectricaldatapy.json": ("enedis.v5.daily_consumption", 365),
    "enedis_v5_consumption_load_curve_myelectricaldatapy.json": ("enedis.v5.consumption_load_curve", 144),
    "enedis_v5_consumption_load_curve_myelectricaldata.json": ("enedis.v5.consumption_load_curve", 96),
}

BAD_CUSTOMER = "00000000000099"
BAD_POSITION = 250
PAGE_LIMIT = 100


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real-format fixtures not found at {REAL}")
    return REAL


def _bad_file(real_dir: Path, out: Path) -> Path:
    """The real daily file, for another meter, with one value that breaks the schema at BAD_POSITION."""
    doc = json.loads((real_dir / "enedis_v5_daily_consumption_myelectricaldatapy.json").read_text("utf-8"))
    doc = copy.deepcopy(doc)
    doc["meter_reading"]["usage_point_id"] = BAD_CUSTOMER
    doc["meter_reading"]["interval_reading"][BAD_POSITION]["value"] = "12 kWh"
    out.write_text(json.dumps(doc), "utf-8")
    return out


def _drop_pg_schemas(url: str, prefix: str) -> None:
    import asyncpg

    async def drop() -> None:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            for name in ("registry", "consent", "transfer"):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@contextmanager
def running_stack(data_dir: Path, files: list[Path], *, register: bool = True, env: dict[str, str] | None = None,
                  **options: Any) -> Iterator[Stack]:
    """A whole broker of its own: on PostgreSQL (``DATABASE_URL``) in fresh schemas, dropped after;
    with ``register``, the demo holder and cloud registered."""
    database_url = os.environ.get("DATABASE_URL") or None
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    s = Stack(data_dir=data_dir, database_url=database_url, holder_files=files,
              extra_env={"DB_SCHEMA_PREFIX": prefix, "LOG_LEVEL": "INFO", **(env or {})}, **options)
    s.start()
    try:
        if register:
            from shared.demo import register_participants

            with httpx.Client(timeout=30) as c:
                register_participants(c, s)
        yield s
    finally:
        s.stop()
        if database_url and database_url.startswith("postgres"):
            _drop_pg_schemas(database_url, prefix)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, real_dir: Path) -> Iterator[Stack]:
    """The broker's five processes and an embedded nats-server of their own."""
    data_dir = tmp_path_factory.mktemp("broker")
    files = [real_dir / name for name in REAL_ENEDIS_FILES] + [_bad_file(real_dir, data_dir / "bad_daily.json")]
    with running_stack(data_dir, files, register=False,
                       env={"TRANSFER_PAGE_LIMIT": str(PAGE_LIMIT), "OTEL_SPANS_FILE": str(data_dir / "spans")}) as s:
        yield s
