"""The offline check of a receipt proof (shared.receiptproof), on a log built in memory: what the person's
receipt says must be what the log's entry says, and the entry must be under a checkpoint signed by the log."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from shared.canonical import canonical
from shared.receiptproof import FORMAT, BadProof, ProofMismatch, verify_receipt_proof
from shared.tlog import Checkpoint, MemoryTree, Signer

ORIGIN = "portability-broker.example/consent-log"
PURPOSE = "Show my electricity use in my personal cloud"


def _entry(i: int, **over: Any) -> dict[str, Any]:
    return {"v": 1, "event": "authorised", "consent_id": f"c{i}", "subject": "ab" * 32, "holder_id": "h", "recipient_id": "r",
            "datasets": ["enedis.v5.daily_consumption"], "purpose_hash": hashlib.sha256(PURPOSE.encode()).hexdigest(),
            "one_off": True, "expires_at": "2027-02-27T10:00:00Z", "status": "authorised", "time": "2026-11-29T10:00:00.123456Z",
            "purpose_category": "dpv:ServiceProvision", "legal_basis": ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"],
            "data_from": "2025-01-01", **over}


def _receipt(index: int, **ext: Any) -> str:
    payload = {"services": [{"purposes": [{"purpose": ext.pop("purpose", PURPOSE)}]}],
               "x-portability": {"consent_id": f"c{index}", "log_index": index, "holder_id": "h", "recipient_id": "r",
                                 "datasets": ["enedis.v5.daily_consumption"], "one_off": True,
                                 "expires_at": "2027-02-27T10:00:00+00:00", "purpose_category": "dpv:ServiceProvision",
                                 "legal_basis": "dpv:Consent", "data_window": {"from": "2025-01-01", "to": None}, "supersedes": None,
                                 **ext}}
    part = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFZERTQSJ9.{part}.c2ln"


def _proof(index: int = 3, size: int = 7, entry: dict[str, Any] | None = None, **receipt_ext: Any) -> tuple[dict[str, Any], str]:
    signer = Signer.generate(ORIGIN)
    entries = [_entry(i) for i in range(size)]
    if entry is not None:
        entries[index] = entry
    tree = MemoryTree.from_leaves(canonical(e) for e in entries)
    note = Checkpoint(ORIGIN, size, tree.root()).sign(signer)
    return {"format": FORMAT, "consent_id": f"c{index}", "receipt": _receipt(index, **receipt_ext), "log_index": index,
            "entry": entries[index], "leaf_hash": tree.leaf_hash_at(index).hex(), "checkpoint": note, "tree_size": size,
            "inclusion_proof": [h.hex() for h in tree.inclusion_proof(index, size)], "log_public_key": signer.vkey}, signer.vkey


def test_a_good_proof_verifies() -> None:
    doc, key = _proof()
    done = verify_receipt_proof(doc, log_key=key)
    assert len(done) == 3 and "entry 3 is in the signed tree" in done[1] and "legal basis" in done[2]


def test_an_entry_from_before_the_lawfulness_members_compares_what_it_has() -> None:
    old = {k: v for k, v in _entry(3).items() if k not in ("purpose_category", "legal_basis", "data_from")}
    doc, key = _proof(entry=old)
    assert "legal basis" not in verify_receipt_proof(doc, log_key=key)[2]


@pytest.mark.parametrize(("field", "value", "what"), [
    ("recipient_id", "someone-else", "recipient"), ("holder_id", "x", "holder"), ("datasets", ["other"], "datasets"),
    ("one_off", False, "one-off"), ("log_index", 4, "log index"), ("consent_id", "c9", "consent id"),
    ("expires_at", "2028-01-01T00:00:00Z", "expiry"), ("purpose", "Something else", "purpose"),
    ("data_window", {"from": "2024-01-01", "to": None}, "data window start"),
    ("data_window", {"from": "2025-01-01", "to": "2025-06-30"}, "data window end"),
    ("legal_basis", "GDPR Art. 6(1)(b)", "legal basis"), ("purpose_category", "dpv:Marketing", "purpose category"),
    ("supersedes", "c0", "amended consent"),
])
def test_a_receipt_that_says_something_else_than_the_log_is_a_mismatch(field: str, value: Any, what: str) -> None:
    doc, key = _proof(**{field: value})
    with pytest.raises(ProofMismatch, match=what):
        verify_receipt_proof(doc, log_key=key)


def test_an_entry_of_another_event_is_a_mismatch() -> None:
    doc, key = _proof(entry=_entry(3, event="revoked"))
    with pytest.raises(ProofMismatch, match="event"):
        verify_receipt_proof(doc, log_key=key)


@pytest.mark.parametrize("defect", ["proof", "index", "size", "root", "origin", "key"])
def test_a_proof_not_tied_to_the_signed_tree_is_a_mismatch(defect: str) -> None:
    doc, key = _proof()
    if defect == "proof":
        doc["inclusion_proof"][0] = "00" * 32
    elif defect == "index":
        doc["log_index"] = 2
    elif defect == "size":
        doc["tree_size"] = 6
    elif defect == "root":
        doc["checkpoint"] = Checkpoint(ORIGIN, 7, b"\1" * 32).sign(Signer.generate(ORIGIN))
    elif defect == "origin":  # the log's key signed the head of another log (C2SP: the origin must be the expected one)
        signer = Signer.generate(ORIGIN)
        tree = MemoryTree.from_leaves(canonical(_entry(i)) for i in range(7))
        doc["checkpoint"], key = Checkpoint("another-log.example/staging", 7, tree.root()).sign(signer), signer.vkey
    else:
        key = Signer.generate(ORIGIN).vkey
    with pytest.raises(ProofMismatch, match="checkpoint|signed tree"):
        verify_receipt_proof(doc, log_key=key)


@pytest.mark.parametrize("change", [{"format": "x"}, {"log_index": "3"}, {"log_index": True}, {"inclusion_proof": ["zz"]},
                                    {"entry": []}, {"receipt": "not-a-jws"}, {"checkpoint": None}])
def test_a_malformed_document_is_bad_proof(change: dict[str, Any]) -> None:
    doc, key = _proof()
    with pytest.raises(BadProof):
        verify_receipt_proof({**doc, **change}, log_key=key)
    with pytest.raises(BadProof, match="malformed"):
        verify_receipt_proof(doc, log_key="nonsense")


def test_an_entry_that_is_not_i_json_is_a_mismatch() -> None:
    doc, key = _proof()
    doc["entry"] = {**doc["entry"], "n": 2**60}
    del doc["leaf_hash"]
    with pytest.raises(ProofMismatch, match="I-JSON"):
        verify_receipt_proof(doc, log_key=key)


def test_frequency_is_compared_and_malformed_receipt_members_or_keys_are_bad_proof() -> None:
    doc, key = _proof(frequency="P1D")
    with pytest.raises(ProofMismatch, match="frequency"):
        verify_receipt_proof(doc, log_key=key)
    for basis in (5, [1], {}, True):
        doc, key = _proof(legal_basis=basis)
        with pytest.raises(BadProof, match="legal_basis"):
            verify_receipt_proof(doc, log_key=key)
    doc, key = _proof()
    for keys in ({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": 5}]}, {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]},
                 {"keys": [{"kty": "OKP", "crv": "Ed25519"}]}, {"keys": [{"kty": "EC"}]}, {"keys": []}, {"nope": 1}):
        with pytest.raises(BadProof, match="receipt key"):
            verify_receipt_proof(doc, log_key=key, receipt_jwks=keys)
