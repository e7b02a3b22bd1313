"""The consent log verifier (shared/audit.py) against an in-memory log whose served entries can be
tampered with while its Merkle nodes stay honest, as when somebody edits the entries table."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shared.audit import AuditError, Mismatch, TrustedState, app, canonical_json, load_state, save_state, verify_log
from shared.canonical import canonical
from shared.tlog import Checkpoint, MemoryTree, Signer, leaf_hash

ORIGIN = "test.example/consent-log"
SIGNER = Signer.from_seed(ORIGIN, bytes(range(32)))


def entry(i: int) -> dict[str, Any]:
    return {"v": 1, "event": "requested", "consent_id": f"c{i}", "subject": f"{i:064x}", "time": f"2026-01-01T00:00:{i % 60:02d}Z"}


class MemoryLog:
    """A log: entries as served (``served``, tamperable) and the honest tree behind proofs and checkpoints."""

    def __init__(self, n: int, signer: Signer = SIGNER) -> None:
        self.signer = signer
        self.tree = MemoryTree()
        self.served: list[dict[str, Any]] = []
        self.note = ""
        self.extend([entry(i) for i in range(n)])

    def extend(self, entries: list[dict[str, Any]]) -> None:
        for e in entries:
            h = leaf_hash(canonical(e))
            self.served.append({"index": self.tree.size, "entry": e, "leaf_hash": h.hex()})
            self.tree.append_hash(h)
        self.note = Checkpoint(ORIGIN, self.tree.size, self.tree.root()).sign(self.signer)

    async def public_key(self) -> str:
        return self.signer.vkey

    async def checkpoint(self) -> str:
        return self.note

    async def entries(self, start: int, end: int) -> AsyncGenerator[dict[str, Any], None]:
        for item in self.served:
            if start <= item["index"] < end:
                yield copy.deepcopy(item)

    async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.tree.inclusion_proof(index, size)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return self.tree.consistency_proof(first, second)


async def verified(log: MemoryLog, state: TrustedState | None = None) -> TrustedState:
    report, new = await verify_log(log, state=state, rng=random.Random(1))
    assert report.size == log.tree.size
    return new


async def mismatch(log: MemoryLog, state: TrustedState | None) -> Mismatch:
    with pytest.raises(Mismatch) as exc:
        await verify_log(log, state=state, rng=random.Random(1))
    return exc.value


async def test_a_sound_log_verifies_and_then_only_grows() -> None:
    log = MemoryLog(37)
    state = await verified(log)
    assert state.size == 37 and len(state.leaves) == 37 and state.public_key == SIGNER.vkey
    log.extend([entry(i) for i in range(37, 50)])
    report, state2 = await verify_log(log, state=state, sample=5, rng=random.Random(2))
    assert (report.new_entries, report.consistency_from, report.inclusion_proofs) == (13, 37, 13 + 5)
    assert state2.size == 50 and state2.leaves[:37] == state.leaves
    empty = MemoryLog(0)
    assert (await verified(empty)).size == 0


@pytest.mark.parametrize("pinned", [True, False])
async def test_one_changed_byte_is_named(pinned: bool) -> None:
    log = MemoryLog(40)
    state = await verified(log) if pinned else None
    log.served[17]["entry"]["consent_id"] = "c18"  # the stored leaf hash is left as it was
    m = await mismatch(log, state)
    assert m.index == 17 and "leaf hash" in m.message
    log.served[17]["leaf_hash"] = leaf_hash(canonical(log.served[17]["entry"])).hex()  # and now recomputed too
    m = await mismatch(log, state)
    assert m.index == 17
    assert ("verified on" in m.message) if pinned else ("root" in m.message)


@pytest.mark.parametrize("pinned", [True, False])
async def test_a_deleted_entry_is_named(pinned: bool) -> None:
    log = MemoryLog(40)
    state = await verified(log) if pinned else None
    del log.served[23]
    m = await mismatch(log, state)
    assert m.index == 23 and "missing" in m.message
    del log.served[-1]  # the last one
    log.served.insert(23, copy.deepcopy(MemoryLog(40).served[23]))
    m = await mismatch(log, state)
    assert m.index == 39 and "missing" in m.message


@pytest.mark.parametrize("pinned", [True, False])
async def test_two_swapped_entries_are_named(pinned: bool) -> None:
    log = MemoryLog(40)
    state = await verified(log) if pinned else None
    a, b = log.served[5], log.served[30]
    a["entry"], b["entry"] = b["entry"], a["entry"]
    a["leaf_hash"], b["leaf_hash"] = b["leaf_hash"], a["leaf_hash"]
    m = await mismatch(log, state)
    assert m.index == 5


async def test_a_rewritten_history_signed_with_the_operators_key_is_caught_by_the_pinned_state() -> None:
    log = MemoryLog(40)
    state = await verified(log)
    forged = MemoryLog(0)
    forged.extend([entry(i) for i in range(25)] + [entry(1000 + i) for i in range(30)])  # truncated at 25, regrown
    m = await mismatch(forged, state)
    assert m.index == 25 and "consistency proof" in m.message
    assert (await verified(forged)).size == 55  # without the pinned state nothing tells
    shorter = MemoryLog(30)
    m = await mismatch(shorter, state)
    assert m.index == 30 and "shrank" in m.message
    same_size = MemoryLog(0)
    same_size.extend([entry(i) for i in range(39)] + [entry(999)])
    m = await mismatch(same_size, state)
    assert m.index == 39 and "consistency proof" in m.message


async def test_bad_signature_other_key_and_bad_proofs() -> None:
    log = MemoryLog(10)
    state = await verified(log)
    log.note = log.note.replace("\n10\n", "\n11\n")
    m = await mismatch(log, state)
    assert m.index is None and "does not verify" in m.message
    other = MemoryLog(10, Signer.from_seed(ORIGIN, bytes(32)))
    m = await mismatch(other, state)  # signed by a key that is not the pinned one
    assert m.index is None
    with pytest.raises(AuditError, match="differs from the key pinned"):
        await verify_log(other, state=state, public_key=other.signer.vkey)
    with pytest.raises(AuditError, match="bad public key"):
        await verify_log(log, state=None, public_key="not-a-key")

    class BadProofs(MemoryLog):
        async def inclusion_proof(self, index: int, size: int) -> list[bytes]:
            proof = self.tree.inclusion_proof(index, size)
            return [bytes(32)] + proof[1:] if index == 7 else proof

    bad = BadProofs(12)
    m = await mismatch(bad, None)
    assert m.index == 7 and "inclusion proof" in m.message


async def test_non_object_entry_and_extra_entries() -> None:
    log = MemoryLog(8)
    log.served[3]["entry"] = '{"v":1, broken'
    m = await mismatch(log, None)
    assert m.index == 3 and "not a JSON object" in m.message
    log = MemoryLog(8)
    log.served.insert(4, copy.deepcopy(log.served[4]))
    m = await mismatch(log, None)
    assert m.index == 5 and "missing" in m.message


def test_state_file_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "s" / "state.json"
    assert load_state(path) is None
    st = TrustedState(public_key=SIGNER.vkey, origin=ORIGIN, size=2, root_hash=bytes(32), note="n\n", leaves=[b"a" * 32, b"b" * 32],
                      verified_at="2026-01-01T00:00:00Z")
    save_state(path, st)
    assert load_state(path) == st
    (tmp_path / "s" / "state.json.leaves").write_bytes(b"a" * 64)
    with pytest.raises(AuditError, match="unreadable"):
        load_state(path)
    path.write_text("{", "utf-8")
    with pytest.raises(AuditError):
        load_state(path)


def test_cli_usage_and_network_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["http://127.0.0.1:9", "--state", str(tmp_path / "st.json"), "--timeout", "2"])
    assert r.exit_code == 2, r.output
    r = runner.invoke(app, ["http://127.0.0.1:9", "--state", str(tmp_path / "st.json"), "--sample", "-1"])
    assert r.exit_code == 2
    (tmp_path / "bad.json").write_text(json.dumps({"size": 1}), "utf-8")
    r = runner.invoke(app, ["http://127.0.0.1:9", "--state", str(tmp_path / "bad.json")])
    assert r.exit_code == 2 and "unreadable" in r.output


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**60), max_value=2**60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_the_fast_canonical_json_is_rfc_8785(value: Any) -> None:
    try:
        want = canonical(value)
    except Exception as exc:  # not representable in JCS (e.g. lone surrogates): the fast path must refuse too
        with pytest.raises(type(exc)):
            canonical_json(value)
        return
    assert canonical_json(value) == want
    entry_like = {"v": 1, "event": "x\u0000\u001f\"\\\u2028é😀", "n": 2**53 - 1, "m": 1 - 2**53, "l": [None, True, "a"]}
    assert canonical_json(entry_like) == canonical(entry_like)
