"""Micro-benchmark of proof generation + verification on a :class:`~shared.tlog.merkle.MemoryTree`.

Run: ``python -m shared.tlog.bench 1000000``. Memory:
the tree holds ~2n 32-byte hashes, roughly 150 MB at n = 10**6.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

from shared.tlog.merkle import MemoryTree, verify_consistency, verify_inclusion

__all__ = ["bench"]


def _percentiles_ms(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000.0, cuts[98] * 1000.0


def bench(n: int, *, queries: int = 1000, seed: int = 0) -> dict[str, float | int]:
    """Build a MemoryTree of ``n`` leaves, then time ``queries`` random proofs of each kind.

    Each inclusion sample is one ``inclusion_proof`` + ``verify_inclusion`` for a
    random ``size in [1, n]`` and ``index < size``; each consistency sample one
    ``consistency_proof`` + ``verify_consistency`` for random ``1 <= size1 <=
    size2 <= n``. Roots are computed outside the timed section.

    Returns ``{"n", "queries", "build_s", "inclusion_p50_ms", "inclusion_p99_ms",
    "consistency_p50_ms", "consistency_p99_ms"}`` (seconds / milliseconds,
    wall clock via ``time.perf_counter``). Raises ValueError if ``n < 1`` or
    ``queries < 2``.
    """
    if n < 1 or queries < 2:
        raise ValueError("need n >= 1 and queries >= 2")
    rng = random.Random(seed)
    t0 = time.perf_counter()
    tree = MemoryTree()
    for i in range(n):
        tree.append(i.to_bytes(8, "big"))
    build_s = time.perf_counter() - t0

    inclusion: list[float] = []
    for _ in range(queries):
        size = rng.randint(1, n)
        index = rng.randrange(size)
        root = tree.root(size)
        leaf = tree.leaf_hash_at(index)
        t = time.perf_counter()
        verify_inclusion(leaf, index, size, tree.inclusion_proof(index, size), root)
        inclusion.append(time.perf_counter() - t)

    consistency: list[float] = []
    for _ in range(queries):
        size1, size2 = sorted((rng.randint(1, n), rng.randint(1, n)))
        root1, root2 = tree.root(size1), tree.root(size2)
        t = time.perf_counter()
        verify_consistency(size1, size2, tree.consistency_proof(size1, size2), root1, root2)
        consistency.append(time.perf_counter() - t)

    inc50, inc99 = _percentiles_ms(inclusion)
    con50, con99 = _percentiles_ms(consistency)
    return {
        "n": n,
        "queries": queries,
        "build_s": build_s,
        "inclusion_p50_ms": inc50,
        "inclusion_p99_ms": inc99,
        "consistency_p50_ms": con50,
        "consistency_p99_ms": con99,
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000), indent=2))
