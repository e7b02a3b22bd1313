"""Per-holder limits held across every transfer worker, in NATS JetStream key-value buckets.

A data holder sets them in its registry entry (``limits``):

- ``max_concurrent_transfers``: at most that many transfers read from the holder at once.
  Slots are keys ``<holder>.<n>`` of the bucket ``HOLDER_SLOTS``, taken with an atomic
  create and kept alive by each heartbeat; the bucket's TTL frees the slot of a worker that
  died. A job that finds no free slot is put back (nak with a delay) without counting as
  a failure.
- ``requests_per_second``: a token bucket (burst = one second of requests) stored in the
  key ``<holder>`` of ``HOLDER_RATE`` and updated with compare-and-set on its revision, so
  that all workers together stay under the rate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from shared.bus import Bus

log = logging.getLogger("services.transfer.limits")

SLOTS_BUCKET = "HOLDER_SLOTS"
RATE_BUCKET = "HOLDER_RATE"


def _key(holder_id: str) -> str:
    """A KV-safe key for a participant id (ids allow ``[A-Za-z0-9._:-]``; ':' is not a KV key character)."""
    return holder_id.replace(":", "_")


class NoSlot(Exception):
    """Every transfer slot of the holder is taken; try again after ``delay`` seconds."""

    def __init__(self, holder_id: str, delay: float) -> None:
        super().__init__(f"holder {holder_id} is at its concurrent transfer limit")
        self.delay = delay


class HolderLimits:
    def __init__(self, bus: Bus, *, slot_ttl_s: float) -> None:
        self.bus = bus
        self.slot_ttl_s = slot_ttl_s
        self._slots: KeyValue | None = None
        self._rate: KeyValue | None = None

    async def _buckets(self) -> tuple[KeyValue, KeyValue]:
        if self._slots is None or self._rate is None:
            js = self.bus.js
            for name, ttl in ((SLOTS_BUCKET, self.slot_ttl_s), (RATE_BUCKET, 3600.0)):
                try:
                    await js.key_value(name)
                except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                    try:
                        await js.create_key_value(KeyValueConfig(bucket=name, ttl=ttl, history=1, storage=StorageType.FILE,
                                                                    replicas=self.bus.replicas))
                    except nats.js.errors.BadRequestError:
                        pass  # created by another worker meanwhile
            self._slots = await js.key_value(SLOTS_BUCKET)
            self._rate = await js.key_value(RATE_BUCKET)
        return self._slots, self._rate

    async def take_slot(self, holder: dict[str, Any], owner: str) -> str | None:
        """Take a transfer slot of ``holder``; returns its key (None without a limit). Raises :class:`NoSlot`."""
        limit = (holder.get("limits") or {}).get("max_concurrent_transfers")
        if not limit:
            return None
        slots, _ = await self._buckets()
        for n in range(int(limit)):
            key = f"{_key(holder['id'])}.{n}"
            try:
                await slots.create(key, owner.encode())
                return key
            except nats.js.errors.KeyWrongLastSequenceError:
                try:  # our own slot, from an earlier delivery of this very job
                    entry = await slots.get(key)
                    if entry.value == owner.encode():
                        return key
                except nats.js.errors.KeyNotFoundError:
                    pass
        raise NoSlot(holder["id"], delay=2.0)

    async def keep_slot(self, key: str | None, owner: str) -> None:
        """Refresh the slot so that its TTL does not free it while the transfer runs."""
        if key:
            slots, _ = await self._buckets()
            await slots.put(key, owner.encode())

    async def release_slot(self, key: str | None) -> None:
        if key:
            slots, _ = await self._buckets()
            try:
                await slots.delete(key)
            except Exception as exc:  # the TTL frees it anyway
                log.warning("could not release slot %s: %s", key, exc)

    async def wait_for_request(self, holder: dict[str, Any]) -> None:
        """Wait until the holder's shared token bucket allows one more request."""
        rate = (holder.get("limits") or {}).get("requests_per_second")
        if not rate:
            return
        rate = float(rate)
        burst = max(1.0, rate)
        _, bucket = await self._buckets()
        key = _key(holder["id"])
        while True:
            now = time.time()
            try:
                entry = await bucket.get(key)
                state = json.loads(entry.value or b"{}")
                revision = entry.revision
            except nats.js.errors.KeyNotFoundError:
                state, revision = {}, None
            tokens = min(burst, float(state.get("tokens", burst)) + (now - float(state.get("ts", now))) * rate)
            if tokens >= 1.0:
                value = json.dumps({"tokens": tokens - 1.0, "ts": now}).encode()
                try:
                    if revision is None:
                        await bucket.create(key, value)
                    else:
                        await bucket.update(key, value, last=revision)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another worker took a token meanwhile
            await asyncio.sleep((1.0 - tokens) / rate)
