"""A process of transfer workers without the HTTP API, for scaling out (``python -m services.transfer worker``).

SIGTERM or SIGINT: stop fetching, finish or release the job in hand within 8 s, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from shared.http import setup_logging
from shared.runtime import Runtime
from shared.settings import Settings

from . import models
from .worker import make_consumers

log = logging.getLogger("services.transfer.workerproc")


async def run(count: int) -> None:
    rt = Runtime("transfer", models.metadata, models.outbox, Settings())
    await rt.start(wait_for_migrations_s=120.0)  # the API process (or a deployment job) migrates
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumers = await make_consumers(rt, count)
    for c in consumers:
        c.start()
    log.info("%d transfer worker(s) running", count)
    await stop.wait()
    log.info("stopping workers")
    await asyncio.gather(*(c.stop(timeout=5.0) for c in consumers))
    await rt.stop()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.transfer worker")
    parser.add_argument("--count", type=int, default=1, help="workers in this process")
    args = parser.parse_args(argv)
    setup_logging(Settings().log_level, Settings().log_format)
    asyncio.run(run(args.count))
