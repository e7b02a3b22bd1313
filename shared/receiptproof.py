"""A person's proof that their consent receipt is in the consent log, and its offline check.

The broker hands the person (dashboard: ``GET /me/consents/{id}/receipt/proof``) and the consent's
parties (``GET /consents/{id}/receipt/proof``) one JSON document, the *receipt proof*::

    {"format": "portability-receipt-proof/1",
     "consent_id": "...",
     "receipt": "<compact JWS: the signed Kantara Consent Receipt v1.1>",
     "receipt_keys": "<URL of the JWK Set verifying it: .../.well-known/jwks.json>",
     "log_index": N,                      # the receipt's entry: the consent's "authorised" event
     "entry": {...},                      # that entry (its RFC 8785 form is the leaf)
     "leaf_hash": "<hex SHA-256(0x00 || entry)>",
     "checkpoint": "<C2SP signed note: origin, tree size, base64 root, signature line>",
     "tree_size": S,                      # the checkpoint's size (N < S)
     "inclusion_proof": ["<hex>", ...],   # RFC 9162 section 2.1.3 audit path of N in the tree of S leaves
     "log_public_key": "<name>+<key id>+<base64 key>"}

:func:`verify_receipt_proof` checks it without trusting the broker, with the log key the operator
publishes (``--public-key``): the checkpoint's Ed25519 signature (C2SP signed-note) and origin; the
leaf hash of the entry (RFC 9162 section 2.1.1); the inclusion proof up to the signed root (section
2.1.3.2); then that the entry is the ``authorised`` event of the receipt's consent and says what the
receipt says (consent id, log index, holder, recipient, datasets, SHA-256 of the purpose text, one-off,
expiry, frequency, and, in entries that carry them, purpose category, legal basis, data window and amended
consent). With the broker's receipt keys it also checks the receipt's signature
(:func:`services.consent.receipts.verify_receipt`). The data subject is in the entry only as a keyed
pseudonym, which the person cannot recompute: it is not compared.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from shared.canonical import CanonicalizationError, canonical
from shared.tlog import TlogError, Verifier, leaf_hash, open_checkpoint, verify_inclusion

FORMAT = "portability-receipt-proof/1"


class ProofMismatch(Exception):
    """The receipt proof does not verify: the log or the receipt does not say what the broker claims."""


class BadProof(ValueError):
    """The document is not a receipt proof (missing or malformed member), or a key given is malformed."""


def _member(bundle: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = bundle.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BadProof(f"the receipt proof has no valid {name!r}")
    return value


def _hex32(value: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise BadProof(f"{what} is not a hex SHA-256 hash")
    return raw


def receipt_payload(jws: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified. Raises BadProof if it is not one with a JSON object payload."""
    parts = jws.split(".") if isinstance(jws, str) else []
    if len(parts) != 3:
        raise BadProof("the receipt is not a compact JWS")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        raise BadProof("the receipt's payload is not base64url JSON") from None
    if not isinstance(payload, dict):
        raise BadProof("the receipt's payload is not a JSON object")
    return payload


MAX_PROOF_BYTES = 1024 * 1024
"""The largest receipt proof file read (one is a few kilobytes: the receipt, one entry, about 64 hashes at most)."""


def check_receipt_keys(jwks: Any) -> None:
    """Raise BadProof unless ``jwks`` is a JWK Set of 1 to 20 Ed25519 public keys (RFC 8037), as the broker
    serves at ``/.well-known/jwks.json``: a malformed key is a usage error, not a receipt that fails to verify."""
    from joserfc.jwk import OKPKey

    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not 1 <= len(keys) <= 20:
        raise BadProof("the receipt keys are not a JWK Set of 1 to 20 keys")
    for n, k in enumerate(keys):
        if not isinstance(k, dict) or k.get("kty") != "OKP" or k.get("crv") != "Ed25519":
            raise BadProof(f"receipt key {n} is not an Ed25519 key (kty OKP, crv Ed25519)")
        try:
            OKPKey.import_key({m: k[m] for m in ("kty", "crv", "x") if m in k})
        except Exception:  # joserfc raises several types for a malformed key
            raise BadProof(f"receipt key {n} is malformed") from None


def _same_time(a: Any, b: Any) -> bool:
    try:
        return datetime.fromisoformat(str(a).replace("Z", "+00:00")) == datetime.fromisoformat(str(b).replace("Z", "+00:00"))
    except ValueError:
        return False


def verify_receipt_proof(bundle: Mapping[str, Any], *, log_key: str, receipt_jwks: Mapping[str, Any] | None = None) -> list[str]:
    """Check a receipt proof (module docstring) with the log's verifier key ``log_key``
    (``<name>+<hex key id>+<base64(0x01 || Ed25519 key)>``) and, if given, the broker's receipt JWK Set.

    Returns what was checked, one line each. Raises BadProof for a malformed document or key, ProofMismatch
    when something does not verify (the message says what).
    """
    if not isinstance(bundle, Mapping) or bundle.get("format") != FORMAT:
        raise BadProof(f"not a receipt proof (format {FORMAT!r})")
    try:
        verifier = Verifier.from_vkey(log_key)
    except TlogError as exc:
        raise BadProof(f"the log's public key is malformed: {exc}") from None
    index = _member(bundle, "log_index", int)
    size = _member(bundle, "tree_size", int)
    entry = _member(bundle, "entry", dict)
    proof = [_hex32(h, "an inclusion proof hash") for h in _member(bundle, "inclusion_proof", list)]
    jws = _member(bundle, "receipt", str)
    done: list[str] = []

    # 1. the checkpoint: signed by the log's key, for this log (C2SP tlog-checkpoint), of the size claimed
    try:
        checkpoint, _ = open_checkpoint(_member(bundle, "checkpoint", str), [verifier], origin=verifier.name)
    except TlogError as exc:
        raise ProofMismatch(f"the checkpoint does not verify with the log's key {verifier.name!r}: {exc}") from None
    if checkpoint.size != size:
        raise ProofMismatch(f"the checkpoint is of {checkpoint.size} entries, the proof says {size}")
    done.append(f"checkpoint of {checkpoint.origin} signed by the log's key: {size} entries, root {checkpoint.root_hash.hex()[:16]}...")

    # 2. the entry is leaf ``index`` of that tree (RFC 9162 sections 2.1.1 and 2.1.3.2)
    try:
        leaf = leaf_hash(canonical(entry))
    except (CanonicalizationError, ValueError, TypeError, RecursionError) as exc:
        raise ProofMismatch(f"the entry is not I-JSON: {type(exc).__name__}") from None
    if bundle.get("leaf_hash") is not None and _hex32(bundle["leaf_hash"], "leaf_hash") != leaf:
        raise ProofMismatch("the leaf hash given is not the hash of the entry")
    try:
        verify_inclusion(leaf, index, size, proof, checkpoint.root_hash)
    except TlogError as exc:
        raise ProofMismatch(f"entry {index} is not in the signed tree: {exc}") from None
    done.append(f"entry {index} is in the signed tree (inclusion proof of {len(proof)} hashes)")

    # 3. the receipt: signed by the broker (when its keys are given), and the entry says what it says
    if receipt_jwks is not None:
        from services.consent.receipts import ReceiptInvalid, verify_receipt

        check_receipt_keys(receipt_jwks)

        try:
            payload = verify_receipt(jws, receipt_jwks)
        except ReceiptInvalid as exc:
            raise ProofMismatch(f"the receipt's signature does not verify: {exc}") from None
        done.append("the receipt's signature verifies with the broker's receipt keys")
    else:
        payload = receipt_payload(jws)
    ext = payload.get("x-portability")
    if not isinstance(ext, dict):
        raise BadProof("the receipt has no x-portability member")
    try:
        purpose = payload["services"][0]["purposes"][0]["purpose"]
    except (KeyError, IndexError, TypeError):
        raise BadProof("the receipt names no purpose") from None
    checks = [
        ("event", entry.get("event"), "authorised"),
        ("consent id", entry.get("consent_id"), ext.get("consent_id")),
        ("consent id of the proof", bundle.get("consent_id"), ext.get("consent_id")),
        ("log index", index, ext.get("log_index")),
        ("holder", entry.get("holder_id"), ext.get("holder_id")),
        ("recipient", entry.get("recipient_id"), ext.get("recipient_id")),
        ("datasets", entry.get("datasets"), ext.get("datasets")),
        ("purpose (SHA-256 of its UTF-8 text)", entry.get("purpose_hash"), hashlib.sha256(str(purpose).encode("utf-8")).hexdigest()),
        ("one-off", entry.get("one_off"), ext.get("one_off")),
    ]
    # what entries carry since they say the consent's lawfulness (older entries do not: nothing to compare)
    window = ext.get("data_window") if isinstance(ext.get("data_window"), dict) else {}
    for what, key, in_receipt in (("purpose category", "purpose_category", ext.get("purpose_category")),
                                  ("data window start", "data_from", window.get("from")),
                                  ("data window end", "data_to", window.get("to")),
                                  ("amended consent", "supersedes", ext.get("supersedes"))):
        if key in entry or ("purpose_category" in entry and in_receipt is not None):
            checks.append((what, entry.get(key), in_receipt))
    checks.append(("frequency", entry.get("frequency"), ext.get("frequency")))
    if "legal_basis" in entry:
        from services.consent.receipts import legal_bases

        basis = ext.get("legal_basis")
        if basis is not None and not isinstance(basis, str):
            raise BadProof("the receipt's legal_basis is not a string")
        checks.append(("legal basis", entry["legal_basis"], legal_bases(basis)))
    for what, in_log, in_receipt in checks:
        if in_log != in_receipt:
            raise ProofMismatch(f"the log's entry {index} and the receipt differ on the {what}: {in_log!r} != {in_receipt!r}")
    if not _same_time(entry.get("expires_at"), ext.get("expires_at")):
        raise ProofMismatch(f"the log's entry {index} and the receipt differ on the expiry: {entry.get('expires_at')!r} != "
                            f"{ext.get('expires_at')!r}")
    done.append(f"entry {index} is the authorisation of consent {ext.get('consent_id')} and says what the receipt says "
                f"({', '.join(what for what, _, _ in checks[3:])}, expiry)")
    return done
