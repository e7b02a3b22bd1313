"""Signed consent receipts: what the person gets when they authorise a transfer.

Pure functions over what the caller passes in (a consent, its two participants, the broker's
description, a signer): no database, no bus, no clock. Three documents of one consent:

* :func:`kantara_receipt`: a Kantara Initiative Consent Receipt v1.1 (``KI-CR-v1.1.0``, the JSON
  schema of the Consent Receipt Specification v1.1.0 draft 6, 2017-11-17) with our own extension
  member ``"x-portability"``;
* :func:`iso27560_record`: the same consent as an ISO/IEC TS 27560 consent record in the W3C DPV
  serialisation (``dpv-27560:record-2``, the DPV guide's JSON example);
* :func:`sign_receipt` / :func:`verify_receipt`: a compact JWS (RFC 7515 section 7.1) signed with
  Ed25519 (RFC 8032; JOSE use per RFC 8037), its key named by its JWK thumbprint (RFC 7638), and
  checked against the public JWK Set (RFC 7517 section 5) that :meth:`ReceiptSigner.jwks` gives for
  ``/.well-known/jwks.json``.

The signing key comes from the setting ``receipt_signing_key`` (base64 of a 32-byte Ed25519 seed,
or a PKCS#8 PEM), as the consent log's key comes from ``log_signing_key``; in development it falls
back to the fixed key :data:`DEV_RECEIPT_SIGNING_KEY`, never a random one, so that every replica
signs with, and serves, the same key. Retired public keys stay in the JWK Set (``retired``) so that
receipts signed before a key rotation still verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from shared.settings import DEV_RECEIPT_SIGNING_KEY  # development-only seed; refused outside development

__all__ = [
    "DEV_RECEIPT_SIGNING_KEY",
    "ALGORITHMS",
    "KANTARA_VERSION",
    "RECEIPT_TYP",
    "ReceiptInvalid",
    "ReceiptSigner",
    "iso27560_record",
    "jwk_set",
    "kantara_receipt",
    "legal_bases",
    "public_jwk",
    "receipt_id",
    "sign_receipt",
    "signer_from_settings",
    "verify_receipt",
]

KANTARA_VERSION = "KI-CR-v1.1.0"
# explicit typing of the JWS (RFC 8725 section 3.11): a receipt is not mistaken for another kind of JWT
RECEIPT_TYP = "kantara-cr+jwt"

NOT_PROVIDED = "not provided"
# JWS "alg" values of Ed25519: "EdDSA" (RFC 8037 section 3.1, the one verifiers know today) and its
# fully-specified successor "Ed25519" (RFC 9864, which deprecates "EdDSA")
Alg = Literal["EdDSA", "Ed25519"]
ALGORITHMS: tuple[Alg, ...] = ("EdDSA", "Ed25519")
# name space of the receipt and record ids (uuid5, RFC 9562 section 5.5)
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:portability-broker:consent-receipt")


class ReceiptInvalid(ValueError):
    """A receipt that does not verify: malformed token, unknown key id, unexpected algorithm or type,
    or a signature that does not match."""


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def _b64decode_any(text: str) -> bytes:
    """Base64 or base64url, padded or not."""
    s = "".join(text.split()).replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def public_jwk(public_key: ed25519.Ed25519PublicKey | bytes, *, alg: Alg = "EdDSA") -> dict[str, Any]:
    """The public JWK of an Ed25519 key (RFC 8037 section 2): ``{"kty": "OKP", "crv": "Ed25519", "x",
    "use": "sig", "alg", "kid"}``, ``kid`` being its RFC 7638 thumbprint (SHA-256, base64url)."""
    raw = public_key if isinstance(public_key, bytes) else public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    x = _b64url(raw)
    # RFC 7638 section 3.2 with RFC 8037 section 2: the required members crv, kty, x, sorted, no whitespace
    thumbprint = _b64url(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"),
                                                   sort_keys=True).encode()).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "alg": alg, "kid": thumbprint}


def _retired_jwk(key: Mapping[str, Any] | bytes | str, alg: Alg) -> dict[str, Any]:
    """A retired verification key as a public JWK: a JWK (``d`` refused), raw 32 bytes, or their base64."""
    if isinstance(key, Mapping):
        if "d" in key:
            raise ValueError("a retired receipt key must be public: drop its private member 'd'")
        if key.get("kty") != "OKP" or key.get("crv") != "Ed25519" or not isinstance(key.get("x"), str):
            raise ValueError("a retired receipt key must be an Ed25519 OKP JWK")
        out = public_jwk(_b64decode_any(key["x"]), alg=key.get("alg") or alg)
        if key.get("kid") and key["kid"] != out["kid"]:
            out["kid"] = str(key["kid"])  # keep the kid it was published under: old receipts name it
        return out
    return public_jwk(key if isinstance(key, bytes) else _b64decode_any(key), alg=alg)


class ReceiptSigner:
    """An Ed25519 receipt signing key, its ``kid`` (RFC 7638 thumbprint) and the JWK Set to publish.

    ``retired``: public keys of earlier signers (JWKs, raw 32 bytes or their base64), published
    next to the current one so that receipts signed before a rotation still verify.
    ``alg``: the JWS algorithm name written in headers and JWKs (see :data:`ALGORITHMS`).
    """

    def __init__(self, private_key: ed25519.Ed25519PrivateKey, *, retired: Iterable[Mapping[str, Any] | bytes | str] = (),
                 alg: Alg = "EdDSA") -> None:
        if alg not in ALGORITHMS:
            raise ValueError(f"alg must be one of {ALGORITHMS}")
        self.alg: Alg = alg
        self._key = private_key
        self.public_key = private_key.public_key()
        self._public_jwk = public_jwk(self.public_key, alg=alg)
        self.kid: str = self._public_jwk["kid"]
        seen = {self.kid}
        self.retired: list[dict[str, Any]] = []
        for k in retired:
            jwk = _retired_jwk(k, alg)
            if jwk["kid"] not in seen:
                seen.add(jwk["kid"])
                self.retired.append(jwk)
        self._jose_key = OKPKey.import_key(private_key, parameters={"kid": self.kid, "use": "sig", "alg": alg})

    @classmethod
    def from_seed(cls, seed: bytes, **kw: Any) -> ReceiptSigner:
        """From a 32-byte Ed25519 seed (the RFC 8032 section 5.1.5 private key)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)), **kw)

    @classmethod
    def from_key(cls, value: str | bytes, **kw: Any) -> ReceiptSigner:
        """From a PKCS#8 PEM Ed25519 private key (``-----BEGIN PRIVATE KEY-----``) or the base64 /
        base64url of a 32-byte seed. ValueError otherwise."""
        text = value.decode("ascii") if isinstance(value, bytes) else value
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ValueError("the receipt signing key must be an Ed25519 key")
            return cls(key, **kw)
        try:
            seed = _b64decode_any(text)
        except ValueError:
            raise ValueError("the receipt signing key must be a PEM key or the base64 of a 32-byte Ed25519 seed") from None
        return cls.from_seed(seed, **kw)

    @classmethod
    def from_settings(cls, settings: Any) -> ReceiptSigner:
        """The signer of ``settings.receipt_signing_key`` (PEM or base64 seed), with the retired public keys of
        ``settings.receipt_retired_keys`` (comma- or space-separated base64 raw public keys, or a JSON JWK Set),
        both read with ``getattr`` (absent means unset).

        Unset or equal to :data:`DEV_RECEIPT_SIGNING_KEY`, the key is the development key, as the consent log's
        ``log_signing_key`` defaults to its own fixed development key: the same on every replica and every restart.
        Outside ``environment == "development"`` that is refused (ValueError).
        """
        value = getattr(settings, "receipt_signing_key", None) or DEV_RECEIPT_SIGNING_KEY
        if value == DEV_RECEIPT_SIGNING_KEY and getattr(settings, "environment", "development") != "development":
            raise ValueError("RECEIPT_SIGNING_KEY must be set outside development mode")
        return cls.from_key(value, retired=_parse_retired(getattr(settings, "receipt_retired_keys", None)))

    def public_jwk(self) -> dict[str, Any]:
        """The current public JWK (a copy)."""
        return dict(self._public_jwk)

    def public_pem(self) -> str:
        """The current public key as a PEM SubjectPublicKeyInfo (RFC 8410), the Kantara ``publicKey`` member."""
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 section 5) to serve at ``/.well-known/jwks.json``:
        ``{"keys": [current JWK, *retired JWKs]}``, each ``{"kty": "OKP", "crv": "Ed25519", "x", "use": "sig",
        "alg", "kid"}``. Never a private member."""
        return jwk_set([self._public_jwk, *self.retired])

    def sign(self, protected: dict[str, Any], payload: bytes) -> str:
        """A compact JWS of ``payload`` under ``protected`` (which must name this key's ``alg``)."""
        return jws.serialize_compact(protected, payload, self._jose_key, registry=_registry(self.alg))


def _parse_retired(value: Any) -> list[Any]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if text.startswith("{"):
        return list(json.loads(text).get("keys", []))
    return [part for part in re.split(r"[\s,]+", text) if part]


def signer_from_settings(settings: Any) -> ReceiptSigner:
    """The receipt signer (see :meth:`ReceiptSigner.from_settings`); the counterpart of
    :func:`services.consent.log.signer_from_settings`."""
    return ReceiptSigner.from_settings(settings)


def jwk_set(keys: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"keys": [...]}`` of public JWKs (private member ``d`` dropped), first occurrence of each kid kept."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for k in keys:
        kid = k.get("kid")
        if kid in seen:
            continue
        if kid:
            seen.add(kid)
        out.append({n: v for n, v in k.items() if n != "d"})
    return {"keys": out}


# ---------------------------------------------------------------------------
# JWS (RFC 7515 compact serialisation, Ed25519 per RFC 8037 / RFC 9864)
# ---------------------------------------------------------------------------


class _Ed25519(jws.JWSAlgModel):
    """Ed25519 signatures (RFC 8032) under a JWS ``alg`` name. joserfc's own ``EdDSA`` model warns that
    RFC 9864 deprecates the name (a SecurityWarning at each use); this one is the same algorithm, held
    to Ed25519 only (no Ed448), without the warning."""

    key_type = "OKP"
    recommended = True

    def __init__(self, name: Alg) -> None:
        self.name = name
        self.description = "Ed25519 (RFC 8032) JWS signature"

    def sign(self, msg: bytes, key: Any) -> bytes:
        op = key.get_op_key("sign")
        if not isinstance(op, ed25519.Ed25519PrivateKey):
            raise TypeError("not an Ed25519 private key")
        return op.sign(msg)

    def verify(self, msg: bytes, sig: bytes, key: Any) -> bool:
        op = key.get_op_key("verify")
        if not isinstance(op, ed25519.Ed25519PublicKey):
            return False
        try:
            op.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


class _Registry(jws.JWSRegistry):
    algorithms = {name: _Ed25519(name) for name in ALGORITHMS}
    recommended = list(ALGORITHMS)


def _registry(alg: str) -> _Registry:
    return _Registry(algorithms=[alg])


def _canonical_json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8")


def sign_receipt(payload: Mapping[str, Any], signer: ReceiptSigner, *, typ: str = RECEIPT_TYP) -> str:
    """The compact JWS (RFC 7515 section 7.1) of ``payload`` (a JSON object, serialised with sorted keys and
    no whitespace) with protected header ``{"alg": signer.alg, "kid": signer.kid, "typ": typ}``.
    Ed25519 signatures are deterministic: the same payload and key give the same token."""
    if not isinstance(payload, Mapping):
        raise TypeError("a receipt payload is a JSON object")
    return signer.sign({"alg": signer.alg, "kid": signer.kid, "typ": typ}, _canonical_json(payload))


def _header(token: str) -> dict[str, Any]:
    try:
        head = token.split(".", 1)[0]
        header = json.loads(_b64decode_any(head)) if token.count(".") == 2 and head else None
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ReceiptInvalid("malformed receipt: not a JWS compact serialisation")
    return header


def verify_receipt(token: str | bytes, jwks: Mapping[str, Any], *, typ: str | None = RECEIPT_TYP) -> dict[str, Any]:
    """Verify a compact JWS made by :func:`sign_receipt` against a JWK Set (``{"keys": [...]}``, as served)
    and return its payload.

    The protected header must name an Ed25519 ``alg`` (:data:`ALGORITHMS`: no ``none``, no HMAC), a ``kid``
    present in ``jwks`` whose key is an Ed25519 OKP key meant for it (``use`` "sig" and ``alg``, when the
    JWK says them: RFC 7517 sections 4.2, 4.4), ``typ`` equal to ``typ`` (unless None), and no ``crit``
    or ``b64`` (RFC 7797) member. Raises :class:`ReceiptInvalid` otherwise, on a bad signature, or if
    the payload is not a JSON object.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise ReceiptInvalid("malformed receipt: not ASCII") from None
    if not isinstance(token, str):
        raise ReceiptInvalid("malformed receipt: not a string")
    token = token.strip()
    header = _header(token)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise ReceiptInvalid(f"receipt algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})")
    if "crit" in header or "b64" in header:
        raise ReceiptInvalid("receipt header has critical or unencoded-payload members")
    if typ is not None and header.get("typ") != typ:
        raise ReceiptInvalid(f"receipt type {header.get('typ')!r} is not {typ!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ReceiptInvalid("receipt header names no key (kid)")
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise ReceiptInvalid("not a JWK Set")
    matches = [k for k in keys if isinstance(k, Mapping) and k.get("kid") == kid]
    if not matches:
        raise ReceiptInvalid(f"unknown receipt key {kid!r}")
    jwk = matches[0]
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ReceiptInvalid(f"receipt key {kid!r} is not an Ed25519 key")
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        raise ReceiptInvalid(f"receipt key {kid!r} is not meant for {alg} signatures")
    try:
        key = OKPKey.import_key({n: v for n, v in jwk.items() if n != "d"})
        obj = jws.deserialize_compact(token, key, registry=_registry(alg))
    except jws.BadSignatureError:
        raise ReceiptInvalid("receipt signature does not verify") from None
    except (JoseError, ValueError, TypeError) as e:
        raise ReceiptInvalid(f"malformed receipt: {e}") from None
    try:
        payload = json.loads(obj.payload)
    except ValueError:
        raise ReceiptInvalid("receipt payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ReceiptInvalid("receipt payload is not a JSON object")
    return payload


# ---------------------------------------------------------------------------
# Mapping a consent
# ---------------------------------------------------------------------------

# DPV terms: https://w3id.org/dpv (DPV 2.x), GDPR extension https://w3id.org/dpv/legal/eu/gdpr
DEFAULT_PURPOSE_CATEGORY = "dpv:ServiceProvision"
DEFAULT_LEGAL_BASIS = "dpv:Consent"
_DPV_IRI = "https://w3id.org/dpv#"
_CONSENT_STATUS = {  # broker status -> DPV consent status
    "requested": "dpv:ConsentRequested",
    "authorised": "dpv:ConsentGiven",
    "rejected": "dpv:ConsentRefused",
    "revoked": "dpv:ConsentWithdrawn",  # by the data subject; dpv:ConsentRevoked when by another party
    "expired": "dpv:ConsentExpired",
    "consumed": "dpv:ConsentExpired",  # a one-off consent used up: no longer valid, not withdrawn
}
_GIVEN = frozenset({"authorised", "revoked", "expired", "consumed"})  # statuses after consent was given


def _when(value: Any) -> datetime:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _rfc3339(value: Any) -> str:
    return _when(value).isoformat().replace("+00:00", "Z")


def _day(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _curie(value: str) -> str:
    """``https://w3id.org/dpv#X`` as ``dpv:X``; anything else as given."""
    return "dpv:" + value[len(_DPV_IRI):] if value.startswith(_DPV_IRI) else value


_GDPR_ART = re.compile(r"(?:GDPR\s*)?Art(?:icle|\.)?\s*(\d+)\s*\((\d+)\)\s*\(([a-f])\)", re.IGNORECASE)


def legal_bases(value: str | None) -> list[str]:
    """DPV legal bases of ``legal_basis``: consent (``dpv:Consent``, ``GDPR Art. 6(1)(a)``, ...) is
    ``["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]`` as in the DPV 27560 example; ``GDPR Art. 6(1)(x)`` is
    ``eu-gdpr:A6-1-x``; a CURIE or IRI is kept."""
    value = (value or DEFAULT_LEGAL_BASIS).strip()
    m = _GDPR_ART.search(value)
    if m:
        art = f"eu-gdpr:A{m[1]}-{m[2]}-{m[3].lower()}"
        return ["dpv:ExpressedConsent", art] if art == "eu-gdpr:A6-1-a" else [art]
    curie = _curie(value)
    if curie in ("dpv:Consent", "dpv:ExpressedConsent", "dpv:ExplicitlyExpressedConsent", "eu-gdpr:A6-1-a"):
        return ["dpv:ExpressedConsent", "eu-gdpr:A6-1-a"]
    return [curie]


def _consented_at(consent: Mapping[str, Any], consented_at: datetime | None) -> datetime:
    """When the person gave the consent: ``consented_at``, else ``authorised_at``, else ``updated_at`` of
    an ``authorised`` consent (its last change was the authorisation). ValueError if it cannot be known."""
    if consented_at is not None:
        return _when(consented_at)
    if consent.get("authorised_at"):
        return _when(consent["authorised_at"])
    if consent.get("status") == "authorised" and consent.get("updated_at"):
        return _when(consent["updated_at"])
    raise ValueError(f"when consent {consent.get('id')!r} was given is unknown: pass consented_at")


def _check_given(consent: Mapping[str, Any]) -> None:
    if consent.get("status") not in _GIVEN:
        raise ValueError(f"consent {consent.get('id')!r} is {consent.get('status')!r}: no consent was given, no receipt")


def receipt_id(consent: Mapping[str, Any], kind: str = "kantara") -> str:
    """A UUID (version 5) derived from ``kind``, the consent id and ``log_index`` (the consent-log entry of its
    current status), or, for a consent never logged, its status and ``updated_at``.

    Derived rather than random: every replica, and every re-issue of the receipt of the same consent state,
    gives the same ID (a person downloading it twice does not hold two receipts), and a new status (a new
    log entry) gives a new ID. The ID then also names the log entry that a regulator can prove included.
    """
    if consent.get("log_index") is not None:
        name = f"{kind}:{consent['id']}:{int(consent['log_index'])}"
    else:
        name = f"{kind}:{consent['id']}:{consent.get('status')}:{consent.get('updated_at')}"
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def _name(participant: Mapping[str, Any]) -> str:
    entity = participant.get("legal_entity") or {}
    return str(entity.get("name") or participant.get("name") or participant.get("id") or NOT_PROVIDED)


def _contact(participant: Mapping[str, Any]) -> dict[str, Any] | None:
    """The contact a person should write to about their data: a data protection officer or privacy contact
    first, else the first contact."""
    contacts = [c for c in participant.get("contacts") or [] if isinstance(c, Mapping)]
    for c in contacts:
        role = str(c.get("role") or "").lower()
        if "protection" in role or "privacy" in role or re.search(r"\bdpo\b", role):
            return dict(c)
    return dict(contacts[0]) if contacts else None


def _kantara_controller(participant: Mapping[str, Any]) -> dict[str, Any]:
    """A ``piiControllers`` item: name, contact, address, email and phone are required strings (address an
    object); the registry has no postal address nor phone number, so the address is the legal entity's
    country (schema.org PostalAddress ``addressCountry``) and missing strings are "not provided"."""
    entity = participant.get("legal_entity") or {}
    contact = _contact(participant) or {}
    address: dict[str, Any] = {"addressCountry": entity["country"]} if entity.get("country") else {}
    return {
        "piiController": _name(participant),
        "onBehalf": False,
        "contact": str(contact.get("name") or contact.get("role") or contact.get("email") or NOT_PROVIDED),
        "address": address,
        "email": str(contact.get("email") or NOT_PROVIDED),
        "phone": str(contact.get("phone") or NOT_PROVIDED),
    }


def _extension(consent: Mapping[str, Any], issuer: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``x-portability`` member: the consent as the broker holds it."""
    ext: dict[str, Any] = {
        "consent_id": consent["id"],
        "status": consent.get("status"),
        "holder_id": consent["holder_id"],
        "recipient_id": consent["recipient_id"],
        "datasets": list(consent.get("datasets") or []),
        "purpose_category": _curie(consent.get("purpose_category") or DEFAULT_PURPOSE_CATEGORY),
        "legal_basis": consent.get("legal_basis") or DEFAULT_LEGAL_BASIS,
        "one_off": bool(consent.get("one_off", True)),
        "frequency": consent.get("frequency"),
        "data_window": {"from": _day(consent.get("data_from")), "to": _day(consent.get("data_to"))},
        "expires_at": _rfc3339(consent["expires_at"]),
        "log_index": consent.get("log_index"),
        "supersedes": consent.get("supersedes"),
        "broker": issuer.get("name"),
    }
    if consent.get("holder_subject"):
        ext["holder_subject"] = consent["holder_subject"]
    return ext


def _termination(consent: Mapping[str, Any], broker: Mapping[str, Any]) -> str:
    use = "after one transfer" if consent.get("one_off", True) else (
        f"recurring every {consent['frequency']}" if consent.get("frequency") else "recurring")
    where = f" at {broker['manage_url']}" if broker.get("manage_url") else ""
    return f"Ends at {_rfc3339(consent['expires_at'])} or {use}, whichever comes first; withdrawable at any time{where}."


def kantara_receipt(
    consent: Mapping[str, Any], *, holder: Mapping[str, Any], recipient: Mapping[str, Any], broker: Mapping[str, Any],
    issued_at: datetime, jurisdiction: str = "EU", signer: ReceiptSigner | None = None, language: str = "en",
    consented_at: datetime | None = None, spi_categories: Sequence[str] = (),
) -> dict[str, Any]:
    """The Kantara Consent Receipt v1.1 (``KI-CR-v1.1.0``) of a consent the person gave.

    ``consent``: as :func:`services.consent.service._consent` gives it, with the optional ``purpose_category``
    (DPV purpose CURIE/IRI, default ``dpv:ServiceProvision``), ``legal_basis`` (default ``dpv:Consent``),
    ``data_from``/``data_to``, ``holder_subject``, ``supersedes`` and ``authorised_at``. ``holder``/``recipient``:
    registry participants (``id``, ``name``, ``legal_entity {name, identifiers, country}`` or None, ``contacts
    [{name, email, role}]``). ``broker``: ``{"name", "policy_url"}`` and optionally ``"issuer"`` (the base URL
    serving the JWK Set), ``"manage_url"`` (where the person sees and withdraws consents). ``signer``: its
    public key (PEM) becomes ``publicKey``; without it, ``broker["public_key"]`` if given, else no ``publicKey``
    (optional in the schema).

    Returns every member the v1.1 schema requires, in the order of its fields table: ``version``,
    ``jurisdiction``, ``consentTimestamp`` (integer seconds: when consent was given), ``collectionMethod``,
    ``consentReceiptID`` (:func:`receipt_id`), ``publicKey``, ``language``, ``piiPrincipalId`` (the data
    subject), ``piiControllers`` (the holder, which discloses, and the recipient, which obtains: both
    controllers, GDPR Art. 20(2)), ``policyUrl``, ``services`` (one service, one primary purpose whose
    ``purposeCategory`` is the DPV purpose, ``piiCategory`` the dataset ids, ``consentType`` ``EXPLICIT``,
    ``thirdPartyDisclosure`` true to the recipient), ``sensitive``/``spiCat`` (from ``spi_categories``);
    then JWT claims ``iat``, ``jti`` (= ``consentReceiptID``) and ``iss`` (when ``broker["issuer"]``), and
    the extension ``"x-portability"``: ``{consent_id, status, holder_id, recipient_id, datasets,
    purpose_category, legal_basis, one_off, frequency, data_window {from, to}, expires_at, log_index,
    supersedes, broker[, holder_subject]}``.

    Raises ValueError for a consent never given (``requested``, ``rejected``).
    """
    _check_given(consent)
    given = _consented_at(consent, consented_at)
    rid = receipt_id(consent)
    holder_name, recipient_name = _name(holder), _name(recipient)
    out: dict[str, Any] = {
        "version": KANTARA_VERSION,
        "jurisdiction": jurisdiction,
        "consentTimestamp": int(given.timestamp()),
        "collectionMethod": ("Broker consent screen, then authorisation at the data holder "
                             "(OAuth 2.0 authorization code with PKCE)"),
        "consentReceiptID": rid,
    }
    public_key = signer.public_pem() if signer is not None else broker.get("public_key")
    if public_key:
        out["publicKey"] = str(public_key)
    out |= {
        "language": language,
        "piiPrincipalId": str(consent["data_subject"]),
        "piiControllers": [_kantara_controller(holder), _kantara_controller(recipient)],
        "policyUrl": str(broker["policy_url"]),
        "services": [{
            "service": f"Data portability (GDPR Art. 20) from {holder_name} to {recipient_name}",
            "purposes": [{
                "purpose": str(consent["purpose"]),
                "purposeCategory": [_curie(consent.get("purpose_category") or DEFAULT_PURPOSE_CATEGORY)],
                "consentType": "EXPLICIT",
                "piiCategory": list(consent.get("datasets") or []),
                "primaryPurpose": True,
                "termination": _termination(consent, broker),
                "thirdPartyDisclosure": True,
                "thirdPartyName": recipient_name,
            }],
        }],
        "sensitive": bool(spi_categories),
        "spiCat": list(spi_categories),
        "iat": int(_when(issued_at).timestamp()),
        "jti": rid,
    }
    if broker.get("issuer"):
        out["iss"] = str(broker["issuer"])
    out["x-portability"] = _extension(consent, broker)
    return out


def _entity(participant: Mapping[str, Any], types: list[str]) -> dict[str, Any]:
    entity = participant.get("legal_entity") or {}
    contact = _contact(participant) or {}
    out: dict[str, Any] = {"@type": ["dpv:Organisation", *types], "dpv:hasName": _name(participant)}
    if entity.get("country"):
        out["dpv:hasAddress"] = f"loc:{entity['country']}"
    if entity.get("identifiers"):
        out["dpv:hasIdentifier"] = [f"{k}:{v}" for k, v in sorted(dict(entity["identifiers"]).items())]
    reach = {k: v for k, v in (("schema:email", contact.get("email")), ("schema:telephone", contact.get("phone"))) if v}
    if reach:
        out["dpv:hasContact"] = reach
    return out


def _status_type(consent: Mapping[str, Any]) -> str:
    status = str(consent.get("status"))
    if status == "revoked" and consent.get("revoked_by") not in (None, "data_subject"):
        return "dpv:ConsentRevoked"
    return _CONSENT_STATUS.get(status, "dpv:ConsentUnknown")


def iso27560_record(
    consent: Mapping[str, Any], *, holder: Mapping[str, Any], recipient: Mapping[str, Any], broker: Mapping[str, Any],
    issued_at: datetime, language: str = "en", consented_at: datetime | None = None,
) -> dict[str, Any]:
    """The consent as an ISO/IEC TS 27560 consent record in DPV terms, shaped as the DPV guide's example
    (``dct:conformsTo`` ``dpv-27560:record-2``). Arguments as :func:`kantara_receipt`.

    Top level: ``dpv:hasIdentifier`` (:func:`receipt_id` of kind ``iso27560``), ``dpv:hasDataSubject``
    (``dpv:DataSubject``/``dpv:Customer`` with the subject's id), ``dct:created`` (``issued_at``),
    ``dct:creator`` (the broker), ``dct:language``, ``dct:replaces`` (the superseded consent, if any),
    ``dpv:hasProcess`` and ``dpv:hasEntity`` (``entity:<participant id>`` and ``entity:broker``).
    The process: ``dpv:hasPurpose`` (the DPV purpose, with the purpose text as ``dct:description``),
    ``dpv:hasPersonalData`` (one per dataset; the data window as ``dct:temporal``, an ISO 8601 interval),
    ``dpv:hasProcessing`` (retrieve, transmit, store), ``dpv:hasDataController`` (holder and recipient),
    ``dpv:hasDataSource`` (the holder), ``dpv:hasFrequency`` (``dpv:SingularFrequency`` for a one-off
    consent, else ``dpv:OftenFrequency`` with the ISO 8601 period), ``dpv:hasLegalBasis`` (:func:`legal_bases`),
    ``dpv:hasRight`` (GDPR Art. 7(3) withdrawal, Art. 20 portability), ``dpv:hasConsentControl`` (when
    ``broker["manage_url"]``), and a sub-process for the recipient with ``dpv:hasConsentStatus``: each a DPV
    status of the broker status (given, withdrawn/revoked, expired), ``dpv:ExpressedConsent``, when it was
    indicated, its duration (``dpv:UntilTimeDuration`` up to ``expires_at``) and the consent notice
    (``broker["policy_url"]``, the consent id): ``dpv:ConsentGiven`` first, then, for a consent no longer
    valid, its current status at ``updated_at``.

    Raises ValueError for a consent never given (``requested``, ``rejected``).
    """
    _check_given(consent)
    given = _consented_at(consent, consented_at)
    h, r = f"entity:{holder['id']}", f"entity:{recipient['id']}"
    window = (_day(consent.get("data_from")), _day(consent.get("data_to")))
    data: list[dict[str, Any]] = []
    for ds in consent.get("datasets") or []:
        item: dict[str, Any] = {"@type": ["dpv:PersonalData"], "dpv:hasIdentifier": ds}
        if window != (None, None):
            item["dct:temporal"] = f"{window[0] or '..'}/{window[1] or '..'}"
        data.append(item)
    def consent_status(dpv_status: str, at: datetime) -> dict[str, Any]:
        out: dict[str, Any] = {
            "@type": [dpv_status, "dpv:ExpressedConsent"],
            "dpv:isIndicatedAtTime": _rfc3339(at),
            "dpv:hasDuration": {"@type": ["dpv:UntilTimeDuration"], "rdf:value": _rfc3339(consent["expires_at"])},
            "dpv:hasNotice": {"@type": ["dpv:ConsentNotice"], "dpv:hasIdentifier": consent["id"],
                              "dpv:hasLocation": str(broker["policy_url"])},
        }
        if broker.get("manage_url"):
            out["dpv:isExercisedAt"] = broker["manage_url"]
        return out

    # the history: given, then (for a consent no longer valid) its current status
    statuses = [consent_status("dpv:ConsentGiven", given)]
    if consent.get("status") != "authorised":
        statuses.append(consent_status(_status_type(consent), _when(consent.get("updated_at") or given)))
    process: dict[str, Any] = {
        "@type": "dpv:Process",
        "dpv:hasPurpose": [{"@type": [_curie(consent.get("purpose_category") or DEFAULT_PURPOSE_CATEGORY)],
                            "dct:description": str(consent["purpose"])}],
        "dpv:hasPersonalData": data,
        "dpv:hasProcessing": ["dpv:Retrieve", "dpv:Transmit", "dpv:Store"],
        "dpv:hasDataController": [h, r],
        "dpv:hasDataSource": [{"@type": ["dpv:DataControllerDataSource"], "dpv:hasProcessing": "dpv:Retrieve", "dpv:hasEntity": h}],
        "dpv:hasFrequency": ({"@type": ["dpv:SingularFrequency"]} if consent.get("one_off", True)
                             else {"@type": ["dpv:OftenFrequency"], **({"rdf:value": consent["frequency"]} if consent.get("frequency") else {})}),
        "dpv:hasLegalBasis": legal_bases(consent.get("legal_basis")),
        "dpv:hasRight": ["eu-gdpr:A7-3", "eu-gdpr:A20"],
    }
    if broker.get("manage_url"):
        process["dpv:hasConsentControl"] = {"@type": ["dpv:ProvideConsent", "dpv:WithdrawConsent"],
                                            "dpv:isExercisedAt": broker["manage_url"]}
    process["dpv:hasProcess"] = [{"@type": "dpv:Process", "dpv:hasRecipient": [r], "dpv:hasConsentStatus": statuses}]
    subject: dict[str, Any] = {"@type": ["dpv:DataSubject", "dpv:Customer"], "dpv:hasIdentifier": str(consent["data_subject"])}
    out: dict[str, Any] = {
        "dct:conformsTo": "dpv-27560:record-2",
        "dpv:hasIdentifier": receipt_id(consent, "iso27560"),
        "dpv:hasDataSubject": subject,
        "dct:created": _rfc3339(issued_at),
        "dct:creator": "entity:broker",
        "dct:language": language,
    }
    if consent.get("supersedes"):
        out["dct:replaces"] = consent["supersedes"]
    broker_entity: dict[str, Any] = {"@type": ["dpv:Organisation"], "dpv:hasName": str(broker.get("name") or "broker")}
    if broker.get("issuer") or broker.get("email"):
        broker_entity["dpv:hasContact"] = {k: v for k, v in (("schema:url", broker.get("issuer")), ("schema:email", broker.get("email"))) if v}
    out |= {
        "dpv:hasProcess": [process],
        "dpv:hasEntity": {
            h: _entity(holder, ["dpv:DataController"]),
            r: _entity(recipient, ["dpv:DataController", "dpv:Recipient"]),
            "entity:broker": broker_entity,
        },
        "x-portability": _extension(consent, broker),
    }
    return out
