"""Signed consent receipts: Kantara CR v1.1 payloads checked against the published schema, the ISO/IEC TS
27560 (DPV) record, and the Ed25519 compact JWS against the served JWK Set (RFC 7515, 7517, 7638, 8037)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.consent.receipts import (
    DEV_RECEIPT_SIGNING_KEY,
    KANTARA_VERSION,
    RECEIPT_TYP,
    ReceiptInvalid,
    ReceiptSigner,
    iso27560_record,
    kantara_receipt,
    legal_bases,
    receipt_id,
    sign_receipt,
    signer_from_settings,
    verify_receipt,
)
from shared.settings import Settings
from tests.conftest import REPO

KANTARA = REPO.parent / "shared" / "specs" / "kantara"
DPV = REPO.parent / "shared" / "specs" / "dpv"

# RFC 8037 appendix A.1 (the Ed25519 private key) and A.3 (its RFC 7638 thumbprint)
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

ISSUED = datetime(2025, 3, 4, 10, 0, 5, tzinfo=UTC)
BROKER = {"name": "Portability Broker", "policy_url": "https://broker.example/privacy",
          "issuer": "https://broker.example", "manage_url": "https://broker.example/me/consents"}
HOLDER = {
    "id": "enedis", "name": "Enedis", "roles": ["holder"], "status": "active",
    "legal_entity": {"name": "Enedis SA", "identifiers": {"SIREN": "444608442"}, "country": "FR"},
    "contacts": [{"name": "Support technique", "email": "api@enedis.example", "role": "technical"},
                 {"name": "Délégué à la protection des données", "email": "dpo@enedis.example", "role": "data protection officer"}],
    "notification_url": "https://enedis.example/notifications", "datasets_offered": ["enedis.v5.daily_consumption"],
}
RECIPIENT = {
    "id": "mycloud", "name": "My personal cloud", "roles": ["recipient"], "status": "active",
    "legal_entity": None, "contacts": [], "notification_url": None, "datasets_accepted": ["enedis.v5.daily_consumption"],
}


def consent(**over: Any) -> dict[str, Any]:
    """A consent as services.consent.service._consent returns it, with the fields being added alongside."""
    c: dict[str, Any] = {
        "id": "5f0c2a9be0d44c7b8e4a3a1f9d6c2b71", "data_subject": "alice@example.org", "holder_id": "enedis",
        "recipient_id": "mycloud", "datasets": ["enedis.v5.daily_consumption", "enedis.v5.consumption_load_curve"],
        "purpose": "Show my electricity use in my personal cloud", "one_off": False, "frequency": "P1D",
        "status": "authorised", "status_reason": None, "expires_at": "2025-06-02T09:58:41.120000+00:00",
        "created_at": "2025-03-04T09:58:41.120000+00:00", "updated_at": "2025-03-04T09:59:57.500000+00:00", "log_index": 41,
        "purpose_category": "https://w3id.org/dpv#ServiceProvision", "legal_basis": "GDPR Art. 6(1)(a)",
        "data_from": "2024-03-01", "data_to": None, "holder_subject": "25884515170669", "supersedes": "0a1b2c3d4e5f",
    }
    c.update(over)
    return c


def load_jsonc(path: Any) -> Any:
    """JSON with whole-line ``//`` comments (the Kantara schema file)."""
    return json.loads("\n".join(line for line in path.read_text("utf-8").splitlines() if not line.lstrip().startswith("//")))


@pytest.fixture(scope="module")
def kantara_validator() -> jsonschema.Draft4Validator:
    schema = load_jsonc(KANTARA / "kantara-consent-receipt-v1_1-schema.jsonc")
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema)
    # the schema as loaded accepts the specification's own example
    validator.validate(json.loads((KANTARA / "kantara-consent-receipt-v1_1-example.json").read_text("utf-8")))
    return validator


@pytest.fixture(scope="module")
def signer() -> ReceiptSigner:
    return ReceiptSigner.from_seed(hashlib.sha256(b"test receipt key").digest())


def receipt(c: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return kantara_receipt(c or consent(), holder=HOLDER, recipient=RECIPIENT, broker=BROKER, issued_at=ISSUED, **kw)


def errors(validator: jsonschema.Draft4Validator, doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


# ---------------------------------------------------------------------------
# Kantara payload
# ---------------------------------------------------------------------------


def test_kantara_receipt_validates_against_the_schema(kantara_validator: jsonschema.Draft4Validator, signer: ReceiptSigner) -> None:
    r = receipt(signer=signer)
    assert errors(kantara_validator, r) == []
    assert set(kantara_validator.schema["required"]) | {"publicKey", "language"} <= set(r)
    assert r["version"] == KANTARA_VERSION == "KI-CR-v1.1.0"
    assert r["jurisdiction"] == "EU" and r["language"] == "en"
    # consent given at the authorisation (updated_at of an authorised consent), in integer seconds
    assert r["consentTimestamp"] == int(datetime(2025, 3, 4, 9, 59, 57, 500000, tzinfo=UTC).timestamp())
    assert isinstance(r["consentTimestamp"], int)
    assert r["piiPrincipalId"] == "alice@example.org"
    assert r["policyUrl"] == BROKER["policy_url"]
    assert r["publicKey"] == signer.public_pem() and r["publicKey"].startswith("-----BEGIN PUBLIC KEY-----")
    holder, recipient = r["piiControllers"]
    assert holder == {"piiController": "Enedis SA", "onBehalf": False, "contact": "Délégué à la protection des données",
                      "address": {"addressCountry": "FR"}, "email": "dpo@enedis.example", "phone": "not provided"}
    # a participant without legal entity nor contacts: its name and explicit placeholders
    assert recipient == {"piiController": "My personal cloud", "onBehalf": False, "contact": "not provided",
                         "address": {}, "email": "not provided", "phone": "not provided"}
    [service] = r["services"]
    assert "Enedis SA" in service["service"] and "My personal cloud" in service["service"]
    [purpose] = service["purposes"]
    assert purpose["purpose"] == "Show my electricity use in my personal cloud"
    assert purpose["purposeCategory"] == ["dpv:ServiceProvision"]
    assert purpose["piiCategory"] == ["enedis.v5.daily_consumption", "enedis.v5.consumption_load_curve"]
    assert purpose["consentType"] == "EXPLICIT" and purpose["primaryPurpose"] is True
    assert purpose["thirdPartyDisclosure"] is True and purpose["thirdPartyName"] == "My personal cloud"
    assert "2025-06-02T09:58:41.120000Z" in purpose["termination"] and "P1D" in purpose["termination"]
    assert r["sensitive"] is False and r["spiCat"] == []
    assert r["iat"] == int(ISSUED.timestamp()) and r["jti"] == r["consentReceiptID"] and r["iss"] == BROKER["issuer"]
    assert r["x-portability"] == {
        "consent_id": "5f0c2a9be0d44c7b8e4a3a1f9d6c2b71", "status": "authorised", "holder_id": "enedis", "recipient_id": "mycloud",
        "datasets": ["enedis.v5.daily_consumption", "enedis.v5.consumption_load_curve"],
        "purpose_category": "dpv:ServiceProvision", "legal_basis": "GDPR Art. 6(1)(a)", "one_off": False, "frequency": "P1D",
        "data_window": {"from": "2024-03-01", "to": None}, "expires_at": "2025-06-02T09:58:41.120000Z", "log_index": 41,
        "supersedes": "0a1b2c3d4e5f", "broker": "Portability Broker", "holder_subject": "25884515170669",
    }
    json.dumps(r, allow_nan=False)  # plain JSON


def test_kantara_receipt_of_a_minimal_consent(kantara_validator: jsonschema.Draft4Validator) -> None:
    """Only the fields _consent() gives today: the new ones take their defaults; without a signer, no publicKey."""
    c = consent(one_off=True, frequency=None)
    for new in ("purpose_category", "legal_basis", "data_from", "data_to", "holder_subject", "supersedes"):
        del c[new]
    bare_holder = {"id": "h1", "name": "Holder One"}
    r = kantara_receipt(c, holder=bare_holder, recipient=RECIPIENT, broker={"name": "B", "policy_url": "https://b.example/p"},
                        issued_at=ISSUED, jurisdiction="FR", spi_categories=["6 - Health"])
    assert errors(kantara_validator, r) == []
    assert "publicKey" not in r and "iss" not in r
    assert r["jurisdiction"] == "FR" and r["sensitive"] is True and r["spiCat"] == ["6 - Health"]
    assert r["services"][0]["purposes"][0]["purposeCategory"] == ["dpv:ServiceProvision"]
    ext = r["x-portability"]
    assert ext["legal_basis"] == "dpv:Consent" and ext["one_off"] is True and ext["frequency"] is None
    assert ext["data_window"] == {"from": None, "to": None} and ext["supersedes"] is None and "holder_subject" not in ext
    assert r["piiControllers"][0]["piiController"] == "Holder One"
    assert "after one transfer" in r["services"][0]["purposes"][0]["termination"]


def test_each_schema_requirement_is_enforced(kantara_validator: jsonschema.Draft4Validator) -> None:
    """The validator is not vacuous: dropping a required member, or a third-party name, fails."""
    r = receipt()
    for member in kantara_validator.schema["required"]:
        broken = {k: v for k, v in r.items() if k != member}
        assert errors(kantara_validator, broken), member
    broken = copy.deepcopy(r)
    del broken["services"][0]["purposes"][0]["thirdPartyName"]
    assert errors(kantara_validator, broken)
    broken = copy.deepcopy(r)
    del broken["piiControllers"][1]["phone"]
    assert errors(kantara_validator, broken)


def test_receipt_id_is_derived_from_the_consent_state() -> None:
    a = receipt()
    reissued = kantara_receipt(consent(), holder=HOLDER, recipient=RECIPIENT, broker=BROKER, issued_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert a["consentReceiptID"] == reissued["consentReceiptID"]  # the same consent state, issued again
    assert a["consentReceiptID"] == receipt_id(consent())
    later = receipt(consent(status="revoked", log_index=57, updated_at="2025-04-01T08:00:00+00:00"),
                    consented_at=datetime(2025, 3, 4, 9, 59, 57, tzinfo=UTC))
    assert later["consentReceiptID"] != a["consentReceiptID"]
    assert receipt_id(consent(id="other")) != a["consentReceiptID"]
    assert receipt_id(consent(), "iso27560") != a["consentReceiptID"]
    unlogged = consent(log_index=None)
    assert receipt_id(unlogged) == receipt_id(dict(unlogged)) != receipt_id(consent(log_index=None, status="revoked"))


def test_no_receipt_for_a_consent_never_given() -> None:
    for status in ("requested", "rejected"):
        with pytest.raises(ValueError, match="no consent was given"):
            receipt(consent(status=status))
    with pytest.raises(ValueError, match="pass consented_at"):
        receipt(consent(status="revoked"))  # when it was given is not in the dict
    r = receipt(consent(status="revoked", authorised_at="2025-03-04T09:59:57Z"))
    assert r["consentTimestamp"] == int(datetime(2025, 3, 4, 9, 59, 57, tzinfo=UTC).timestamp())
    assert r["x-portability"]["status"] == "revoked"


# ---------------------------------------------------------------------------
# Keys and JWK Set
# ---------------------------------------------------------------------------


def test_kid_is_the_rfc7638_thumbprint() -> None:
    s = ReceiptSigner.from_key(RFC8037_D)
    assert s.kid == RFC8037_KID
    assert s.public_jwk() == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "use": "sig", "alg": "EdDSA", "kid": RFC8037_KID}


def test_key_formats_give_the_same_signer() -> None:
    seed = hashlib.sha256(b"formats").digest()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    kids = {ReceiptSigner.from_seed(seed).kid, ReceiptSigner.from_key(base64.b64encode(seed).decode()).kid,
            ReceiptSigner.from_key(base64.urlsafe_b64encode(seed).rstrip(b"=").decode()).kid, ReceiptSigner.from_key(pem).kid,
            ReceiptSigner(key).kid}
    assert len(kids) == 1
    with pytest.raises(ValueError):
        ReceiptSigner.from_key(base64.b64encode(b"too short").decode())
    with pytest.raises(ValueError):
        ReceiptSigner.from_key("not base64 !")


def test_dev_key_is_deterministic_and_refused_in_production() -> None:
    dev = Settings(environment="development")
    a, b = signer_from_settings(dev), ReceiptSigner.from_settings(SimpleNamespace(environment="development"))
    assert a.kid == b.kid == ReceiptSigner.from_key(DEV_RECEIPT_SIGNING_KEY).kid
    assert a.jwks() == b.jwks()
    assert sign_receipt({"x": 1}, a) == sign_receipt({"x": 1}, b)  # Ed25519 is deterministic: replicas agree
    assert a.kid != ReceiptSigner.from_key(dev.log_signing_key).kid  # not the consent log's key
    with pytest.raises(ValueError, match="RECEIPT_SIGNING_KEY must be set outside development mode"):
        ReceiptSigner.from_settings(SimpleNamespace(environment="production"))
    with pytest.raises(ValueError, match="RECEIPT_SIGNING_KEY"):
        ReceiptSigner.from_settings(SimpleNamespace(environment="production", receipt_signing_key=DEV_RECEIPT_SIGNING_KEY))
    seed = base64.b64encode(hashlib.sha256(b"prod").digest()).decode()
    prod = ReceiptSigner.from_settings(SimpleNamespace(environment="production", receipt_signing_key=seed))
    assert prod.kid == ReceiptSigner.from_key(seed).kid != a.kid


def test_jwks_is_public_and_lists_retired_keys() -> None:
    old = ReceiptSigner.from_seed(hashlib.sha256(b"old").digest())
    older = ReceiptSigner.from_seed(hashlib.sha256(b"older").digest())
    raw = older.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    settings = SimpleNamespace(environment="development", receipt_signing_key=base64.b64encode(hashlib.sha256(b"new").digest()).decode(),
                               receipt_retired_keys=f"{base64.b64encode(raw).decode()}, {base64.b64encode(raw).decode()}")
    new = ReceiptSigner.from_settings(settings)
    assert [k["kid"] for k in new.jwks()["keys"]] == [new.kid, older.kid]
    both = ReceiptSigner.from_seed(hashlib.sha256(b"new").digest(), retired=[old.public_jwk(), raw, new.public_jwk()])
    jwks = json.loads(json.dumps(both.jwks()))
    assert [k["kid"] for k in jwks["keys"]] == [both.kid, old.kid, older.kid]
    for k in jwks["keys"]:
        assert set(k) == {"kty", "crv", "x", "use", "alg", "kid"}
        assert (k["kty"], k["crv"], k["use"], k["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
    from_json = ReceiptSigner.from_settings(SimpleNamespace(environment="development", receipt_retired_keys=json.dumps({"keys": [old.public_jwk()]})))
    assert [k["kid"] for k in from_json.jwks()["keys"]][1:] == [old.kid]
    with pytest.raises(ValueError, match="public"):
        ReceiptSigner.from_seed(bytes(32), retired=[{**old.public_jwk(), "d": RFC8037_D}])
    # a receipt signed before the rotation verifies with the new JWK Set
    token = sign_receipt(receipt(), old)
    assert verify_receipt(token, jwks) == receipt()


# ---------------------------------------------------------------------------
# JWS
# ---------------------------------------------------------------------------


def b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def b64(data: Any) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_sign_then_verify_with_the_served_jwks(signer: ReceiptSigner, kantara_validator: jsonschema.Draft4Validator) -> None:
    payload = receipt(signer=signer)
    token = sign_receipt(payload, signer)
    header, body, sig = token.split(".")
    assert b64json(header) == {"alg": "EdDSA", "kid": signer.kid, "typ": RECEIPT_TYP}
    assert len(base64.urlsafe_b64decode(sig + "==")) == 64
    served = json.loads(json.dumps(signer.jwks()))  # what /.well-known/jwks.json sends
    got = verify_receipt(token, served)
    assert got == payload
    assert errors(kantara_validator, got) == []
    assert verify_receipt(token.encode(), served) == payload
    # the signature is over the bytes of header and payload (RFC 7515 section 5.1), checkable without joserfc
    public = ed25519.Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(served["keys"][0]["x"] + "="))
    public.verify(base64.urlsafe_b64decode(sig + "=="), f"{header}.{body}".encode())


def test_iso27560_record_can_be_signed_with_its_own_type(signer: ReceiptSigner) -> None:
    record = iso27560_record(consent(), holder=HOLDER, recipient=RECIPIENT, broker=BROKER, issued_at=ISSUED)
    token = sign_receipt(record, signer, typ="iso27560+jwt")
    assert verify_receipt(token, signer.jwks(), typ="iso27560+jwt") == record
    with pytest.raises(ReceiptInvalid, match="type"):
        verify_receipt(token, signer.jwks())  # not a Kantara receipt


def test_tampered_payload_is_rejected(signer: ReceiptSigner) -> None:
    token = sign_receipt(receipt(), signer)
    header, body, sig = token.split(".")
    forged = b64json(body)
    forged["x-portability"]["datasets"].append("enedis.v5.production")
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(f"{header}.{b64(forged)}.{sig}", signer.jwks())
    flipped = bytearray(base64.urlsafe_b64decode(sig + "=="))
    flipped[0] ^= 1
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(f"{header}.{body}.{b64(bytes(flipped))}", signer.jwks())


def test_other_key_and_wrong_kid_are_rejected(signer: ReceiptSigner) -> None:
    other = ReceiptSigner.from_seed(hashlib.sha256(b"someone else").digest())
    payload = receipt()
    # signed by a key the JWK Set does not hold
    with pytest.raises(ReceiptInvalid, match="unknown receipt key"):
        verify_receipt(sign_receipt(payload, other), signer.jwks())
    # another key claiming our kid
    impostor = other.sign({"alg": "EdDSA", "kid": signer.kid, "typ": RECEIPT_TYP}, json.dumps(payload).encode())
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(impostor, signer.jwks())
    # our token, its header's kid changed to the other (also served) key
    both = {"keys": signer.jwks()["keys"] + other.jwks()["keys"]}
    token = sign_receipt(payload, signer)
    header, body, sig = token.split(".")
    assert verify_receipt(token, both) == payload
    swapped = b64({**b64json(header), "kid": other.kid})
    with pytest.raises(ReceiptInvalid, match="signature"):
        verify_receipt(f"{swapped}.{body}.{sig}", both)
    # no kid at all
    with pytest.raises(ReceiptInvalid, match="kid"):
        verify_receipt(signer.sign({"alg": "EdDSA", "typ": RECEIPT_TYP}, b"{}"), signer.jwks())


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "!!!.e30.AAAA", "e30.e30.AAAA", f"{b64([1])}.e30.AAAA", b"\xff.\xfe.\xfd",
])
def test_malformed_tokens_are_rejected(token: Any, signer: ReceiptSigner) -> None:
    with pytest.raises(ReceiptInvalid):
        verify_receipt(token, signer.jwks())


def test_unexpected_headers_and_keys_are_rejected(signer: ReceiptSigner) -> None:
    jwks = signer.jwks()
    body = b64({"a": 1})
    # alg "none" and HMAC with the public key as secret (algorithm confusion)
    for alg in ("none", "HS256", "ES256"):
        head = b64({"alg": alg, "kid": signer.kid, "typ": RECEIPT_TYP})
        with pytest.raises(ReceiptInvalid, match="algorithm"):
            verify_receipt(f"{head}.{body}.", jwks)
    # the fully-specified name "Ed25519" against a key published for "EdDSA"
    head = b64({"alg": "Ed25519", "kid": signer.kid, "typ": RECEIPT_TYP})
    sig = signer._key.sign(f"{head}.{body}".encode())
    with pytest.raises(ReceiptInvalid, match="not meant for Ed25519"):
        verify_receipt(f"{head}.{body}.{b64(sig)}", jwks)
    # ... and accepted from a signer that publishes its key for "Ed25519"
    fully = ReceiptSigner(signer._key, alg="Ed25519")
    assert fully.kid == signer.kid and fully.jwks()["keys"][0]["alg"] == "Ed25519"
    assert verify_receipt(sign_receipt({"a": 1}, fully), fully.jwks()) == {"a": 1}
    # critical and unencoded-payload (RFC 7797) members
    for extra in ({"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}):
        head = b64({"alg": "EdDSA", "kid": signer.kid, "typ": RECEIPT_TYP, **extra})
        with pytest.raises(ReceiptInvalid, match="critical"):
            verify_receipt(f"{head}.{body}.{b64(signer._key.sign(f'{head}.{body}'.encode()))}", jwks)
    # a payload that is not a JSON object
    for raw in (b"[1]", b"not json"):
        head = b64({"alg": "EdDSA", "kid": signer.kid, "typ": RECEIPT_TYP})
        p = b64(raw)
        with pytest.raises(ReceiptInvalid, match="payload"):
            verify_receipt(f"{head}.{p}.{b64(signer._key.sign(f'{head}.{p}'.encode()))}", jwks)
    # a JWK Set that is not one, a key of another type or use
    token = sign_receipt({"a": 1}, signer)
    for bad in ({}, {"keys": "x"}, {"keys": [{**jwks["keys"][0], "crv": "X25519"}]}, {"keys": [{**jwks["keys"][0], "use": "enc"}]}):
        with pytest.raises(ReceiptInvalid):
            verify_receipt(token, bad)


# ---------------------------------------------------------------------------
# ISO/IEC TS 27560 record
# ---------------------------------------------------------------------------


def test_iso27560_record_maps_the_consent() -> None:
    example = json.loads((DPV / "dpv-27560-record-example-SEP-01b.json").read_text("utf-8"))
    rec = iso27560_record(consent(), holder=HOLDER, recipient=RECIPIENT, broker=BROKER, issued_at=ISSUED)
    json.dumps(rec, allow_nan=False)
    # the example's top-level structure
    assert set(example) <= set(rec)
    assert rec["dct:conformsTo"] == example["dct:conformsTo"] == "dpv-27560:record-2"
    assert rec["dpv:hasIdentifier"] == receipt_id(consent(), "iso27560")
    assert rec["dpv:hasDataSubject"] == {"@type": ["dpv:DataSubject", "dpv:Customer"], "dpv:hasIdentifier": "alice@example.org"}
    assert rec["dct:created"] == "2025-03-04T10:00:05Z" and rec["dct:language"] == "en"
    assert rec["dct:creator"] == "entity:broker" and rec["dct:replaces"] == "0a1b2c3d4e5f"
    [process] = rec["dpv:hasProcess"]
    # the example process's members, but a processor and a storage condition: the broker keeps no copy of the data
    assert set(example["dpv:hasProcess"][0]) - set(process) == {"dpv:hasDataProcessor", "dpv:hasStorageCondition"}
    assert process["dpv:hasPurpose"] == [{"@type": ["dpv:ServiceProvision"], "dct:description": "Show my electricity use in my personal cloud"}]
    assert [d["dpv:hasIdentifier"] for d in process["dpv:hasPersonalData"]] == consent()["datasets"]
    assert {d["dct:temporal"] for d in process["dpv:hasPersonalData"]} == {"2024-03-01/.."}
    assert process["dpv:hasDataController"] == ["entity:enedis", "entity:mycloud"]
    assert process["dpv:hasDataSource"][0]["dpv:hasEntity"] == "entity:enedis"
    assert process["dpv:hasLegalBasis"] == ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]
    assert process["dpv:hasFrequency"] == {"@type": ["dpv:OftenFrequency"], "rdf:value": "P1D"}
    assert "eu-gdpr:A20" in process["dpv:hasRight"] and "eu-gdpr:A7-3" in process["dpv:hasRight"]
    assert process["dpv:hasConsentControl"]["dpv:isExercisedAt"] == BROKER["manage_url"]
    [sub] = process["dpv:hasProcess"]
    assert sub["dpv:hasRecipient"] == ["entity:mycloud"]
    [given] = sub["dpv:hasConsentStatus"]
    assert given["@type"] == ["dpv:ConsentGiven", "dpv:ExpressedConsent"]
    assert given["dpv:isIndicatedAtTime"] == "2025-03-04T09:59:57.500000Z"
    assert given["dpv:hasDuration"] == {"@type": ["dpv:UntilTimeDuration"], "rdf:value": "2025-06-02T09:58:41.120000Z"}
    assert given["dpv:hasNotice"]["dpv:hasLocation"] == BROKER["policy_url"]
    entities = rec["dpv:hasEntity"]
    assert entities["entity:enedis"] == {
        "@type": ["dpv:Organisation", "dpv:DataController"], "dpv:hasName": "Enedis SA", "dpv:hasAddress": "loc:FR",
        "dpv:hasIdentifier": ["SIREN:444608442"], "dpv:hasContact": {"schema:email": "dpo@enedis.example"}}
    assert entities["entity:mycloud"]["@type"] == ["dpv:Organisation", "dpv:DataController", "dpv:Recipient"]
    assert entities["entity:broker"]["dpv:hasName"] == "Portability Broker"
    assert rec["x-portability"]["consent_id"] == consent()["id"]


def test_iso27560_record_keeps_the_history_of_a_withdrawn_one_off_consent() -> None:
    c = consent(status="revoked", one_off=True, frequency=None, updated_at="2025-04-01T08:00:00+00:00",
                authorised_at="2025-03-04T09:59:57+00:00", legal_basis=None, data_from=None)
    rec = iso27560_record(c, holder=HOLDER, recipient=RECIPIENT, broker={"name": "B", "policy_url": "https://b.example/p"}, issued_at=ISSUED)
    [process] = rec["dpv:hasProcess"]
    assert process["dpv:hasFrequency"] == {"@type": ["dpv:SingularFrequency"]}
    assert process["dpv:hasLegalBasis"] == ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]
    assert "dpv:hasConsentControl" not in process
    assert all("dct:temporal" not in d for d in process["dpv:hasPersonalData"])
    given, withdrawn = process["dpv:hasProcess"][0]["dpv:hasConsentStatus"]
    assert (given["@type"][0], given["dpv:isIndicatedAtTime"]) == ("dpv:ConsentGiven", "2025-03-04T09:59:57Z")
    assert (withdrawn["@type"][0], withdrawn["dpv:isIndicatedAtTime"]) == ("dpv:ConsentWithdrawn", "2025-04-01T08:00:00Z")
    revoked = iso27560_record({**c, "revoked_by": "holder"}, holder=HOLDER, recipient=RECIPIENT, broker=BROKER, issued_at=ISSUED)
    assert revoked["dpv:hasProcess"][0]["dpv:hasProcess"][0]["dpv:hasConsentStatus"][1]["@type"][0] == "dpv:ConsentRevoked"
    with pytest.raises(ValueError, match="no consent was given"):
        iso27560_record(consent(status="requested"), holder=HOLDER, recipient=RECIPIENT, broker=BROKER, issued_at=ISSUED)


@pytest.mark.parametrize(("given", "expected"), [
    (None, ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]),
    ("dpv:Consent", ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]),
    ("https://w3id.org/dpv#Consent", ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]),
    ("GDPR Art. 6(1)(a)", ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]),
    ("GDPR Article 6(1)(b)", ["eu-gdpr:A6-1-b"]),
    ("dpv:Contract", ["dpv:Contract"]),
])
def test_legal_bases(given: str | None, expected: list[str]) -> None:
    assert legal_bases(given) == expected
