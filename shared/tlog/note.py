"""C2SP signed notes (https://c2sp.org/signed-note), Ed25519 and ECDSA verifier keys.

A signed note is ``text`` (UTF-8, ending in LF) + a blank line + one or more
signature lines ``"— <key name> <base64(4-byte key ID || signature)>\\n"``
(U+2014 EM DASH, space). The signed message is the text including its final LF.

Supported signature types (signed-note "Signature types"):

* ``0x01`` Ed25519: key ID = SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4];
  verifier key (vkey) string ``<name>+<8 hex key ID>+base64(0x01 || public key)``.
* ``0x02`` ECDSA (transparency-dev/witness, Rekor v1 checkpoints): key ID =
  SHA-256(DER SubjectPublicKeyInfo)[:4]; signature = ASN.1 DER ECDSA over
  SHA-256(text); vkey ``<name>+<8 hex key ID>+base64(0x02 || DER SPKI)``.
  Verification only (we never sign with ECDSA).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from shared.tlog.errors import NoteError

__all__ = [
    "ALG_ED25519",
    "ALG_ECDSA",
    "MAX_SIGNATURES",
    "SIGNATURE_PREFIX",
    "key_id",
    "is_valid_key_name",
    "Verifier",
    "Ed25519Verifier",
    "ECDSAVerifier",
    "Signer",
    "NoteSignature",
    "ParsedNote",
    "parse_note",
    "sign_note",
    "open_note",
]

ALG_ED25519 = 0x01
"""Signature type byte of C2SP Ed25519 note signatures."""

ALG_ECDSA = 0x02
"""Signature type byte of ECDSA note signatures (transparency-dev/witness, Rekor v1)."""

MAX_SIGNATURES = 100
"""Notes with more signature lines than this are rejected (the spec requires accepting >= 16)."""

SIGNATURE_PREFIX = "\u2014 "
"""Every signature line starts with U+2014 EM DASH and a space."""

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _b64decode(value: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4, padded); NoteError on anything else."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise NoteError(f"{what}: invalid base64") from exc


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """Return the 4-byte C2SP key ID ``SHA-256(name || 0x0A || alg || public_key)[:4]``.

    For ECDSA (``alg == 0x02``) the key ID is instead ``SHA-256(public_key)[:4]``
    where ``public_key`` is the DER SubjectPublicKeyInfo.
    """
    if alg == ALG_ECDSA:
        return hashlib.sha256(public_key).digest()[:4]
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()[:4]


def is_valid_key_name(name: str) -> bool:
    """True if ``name`` is a valid note key name: non-empty, no Unicode space, no '+', no control chars."""
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and not any(ch.isspace() or ch < "\x20" for ch in name)
    )


def _check_name(name: str) -> str:
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    return name


class Verifier(ABC):
    """A known public key: ``name`` + 4-byte ``key_id`` identify it inside notes."""

    name: str
    key_id: bytes

    @abstractmethod
    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return True iff ``signature`` (without the 4-byte key ID) is valid over ``message``."""

    @property
    @abstractmethod
    def vkey(self) -> str:
        """The verifier key string ``<name>+<hex key ID>+<base64(type || key)>``."""

    @staticmethod
    def from_vkey(vkey: str) -> Verifier:
        """Parse a verifier key string (type 0x01 Ed25519 or 0x02 ECDSA).

        Raises NoteError if it is malformed, of an unsupported type, or its key ID
        does not match the key.
        """
        if not isinstance(vkey, str):
            raise NoteError("vkey must be a str")
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise NoteError("vkey must be <name>+<hex key id>+<base64 key>")
        name, hex_id, b64 = parts
        _check_name(name)
        if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
            raise NoteError("vkey key id must be 8 hex digits")
        raw = _b64decode(b64, "vkey")
        if len(raw) < 2:
            raise NoteError("vkey key too short")
        verifier: Verifier
        if raw[0] == ALG_ED25519:
            verifier = Ed25519Verifier(name, raw[1:])
        elif raw[0] == ALG_ECDSA:
            verifier = ECDSAVerifier(name, raw[1:])
        else:
            raise NoteError(f"unsupported vkey signature type 0x{raw[0]:02x}")
        if verifier.key_id.hex() != hex_id.lower():
            raise NoteError("vkey key id does not match the key")
        return verifier

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, key_id={self.key_id.hex()})"


class Ed25519Verifier(Verifier):
    """C2SP Ed25519 (type 0x01) note verifier."""

    def __init__(self, name: str, public_key: bytes) -> None:
        """``public_key``: the raw 32-byte Ed25519 public key. NoteError if invalid."""
        self.name = _check_name(name)
        if len(public_key) != 32:
            raise NoteError("Ed25519 public key must be 32 bytes")
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(bytes(public_key))
        except ValueError as exc:
            raise NoteError("invalid Ed25519 public key") from exc
        self.public_key = bytes(public_key)
        self.key_id = key_id(name, ALG_ED25519, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Ed25519 (RFC 8032) verification of ``signature`` (64 bytes) over ``message``."""
        if len(signature) != 64:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @property
    def vkey(self) -> str:
        """``<name>+<hex key ID>+base64(0x01 || public key)``."""
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{b64}"


class ECDSAVerifier(Verifier):
    """ECDSA (type 0x02) note verifier as used by Rekor v1 checkpoints: DER signature over SHA-256(text)."""

    def __init__(self, name: str, spki_der: bytes) -> None:
        """``spki_der``: DER SubjectPublicKeyInfo of a P-256/P-384/P-521 key. NoteError if invalid."""
        self.name = _check_name(name)
        try:
            key = serialization.load_der_public_key(bytes(spki_der))
        except (ValueError, TypeError) as exc:
            raise NoteError("invalid ECDSA SubjectPublicKeyInfo") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
        ):
            raise NoteError("ECDSA key must be on NIST P-256, P-384 or P-521")
        self._key = key
        self.spki_der = bytes(spki_der)
        self.key_id = key_id(name, ALG_ECDSA, self.spki_der)

    @classmethod
    def from_spki(cls, name: str, spki: bytes | str) -> ECDSAVerifier:
        """Build from DER bytes, or a base64 DER / PEM string."""
        if isinstance(spki, str):
            text = spki.strip()
            if text.startswith("-----BEGIN"):
                try:
                    key = serialization.load_pem_public_key(text.encode("ascii"))
                except (ValueError, TypeError, UnicodeEncodeError) as exc:
                    raise NoteError("invalid PEM public key") from exc
                der = key.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            else:
                der = _b64decode(text, "SPKI")
            return cls(name, der)
        return cls(name, spki)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """ECDSA verification of DER ``signature`` over SHA-256(``message``)."""
        digest = hashlib.sha256(message).digest()
        try:
            self._key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        except (InvalidSignature, ValueError):
            return False
        return True

    @property
    def vkey(self) -> str:
        """``<name>+<hex key ID>+base64(0x02 || DER SPKI)`` (transparency-dev/formats style)."""
        b64 = base64.b64encode(bytes([ALG_ECDSA]) + self.spki_der).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{b64}"


class Signer:
    """An Ed25519 note signing key with its key name."""

    def __init__(self, name: str, private_key: ed25519.Ed25519PrivateKey) -> None:
        """NoteError if ``name`` is not a valid key name."""
        self.name = _check_name(name)
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(name, ALG_ED25519, self.public_key)

    @classmethod
    def generate(cls, name: str) -> Signer:
        """Create a signer with a fresh random Ed25519 key."""
        return cls(name, ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Signer:
        """Create a signer from a 32-byte Ed25519 seed (RFC 8032 private key)."""
        if len(seed) != 32:
            raise NoteError("Ed25519 seed must be 32 bytes")
        return cls(name, ed25519.Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @classmethod
    def from_skey(cls, skey: str) -> Signer:
        """Parse a Go ``golang.org/x/mod/sumdb/note`` signer key ``PRIVATE+KEY+<name>+<hex id>+base64(0x01 || seed)``.

        Raises NoteError if malformed or if the key ID does not match.
        """
        parts = skey.split("+", 4) if isinstance(skey, str) else []
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise NoteError("skey must be PRIVATE+KEY+<name>+<hex key id>+<base64 key>")
        _, _, name, hex_id, b64 = parts
        raw = _b64decode(b64, "skey")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("skey must hold 0x01 || 32-byte Ed25519 seed")
        signer = cls.from_seed(name, raw[1:])
        if signer.key_id.hex() != hex_id.lower():
            raise NoteError("skey key id does not match the key")
        return signer

    @property
    def skey(self) -> str:
        """The Go-compatible private signer key string (keep secret)."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{b64}"

    @property
    def vkey(self) -> str:
        """The public verifier key string for this signer."""
        return self.verifier().vkey

    def verifier(self) -> Ed25519Verifier:
        """The matching :class:`Ed25519Verifier`."""
        return Ed25519Verifier(self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature over ``message`` (no key ID prefix)."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key_id={self.key_id.hex()})"


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line: key ``name``, 4-byte ``key_id``, raw ``signature`` bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def to_line(self) -> str:
        """Render as ``"— <name> <base64(key_id || signature)>\\n"``."""
        b64 = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{SIGNATURE_PREFIX}{self.name} {b64}\n"


@dataclass(frozen=True)
class ParsedNote:
    """A syntactically valid but *unverified* note: ``text`` (ends in LF) and its signatures in order."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _check_text_chars(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise NoteError(f"{what} must be a str")
    if _CONTROL.search(value):
        raise NoteError(f"{what} contains ASCII control characters")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8") from exc


def parse_note(note: str) -> ParsedNote:
    """Split a signed note into text and signature lines without verifying anything.

    Raises NoteError if the note is not valid UTF-8, contains ASCII control
    characters other than LF, lacks the blank line before the signatures, has
    an empty signature block, a line not of the form ``— <name> <base64>``, an
    invalid key name, a signature shorter than 5 bytes, or more than
    :data:`MAX_SIGNATURES` signature lines.
    """
    _check_text_chars(note, "note")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("note has no signature lines, or does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    sigs: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("signature line does not start with an em dash and a space")
        name, sep, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not sep or not b64:
            raise NoteError("signature line lacks a signature")
        _check_name(name)
        raw = _b64decode(b64, "signature")
        if len(raw) < 5:
            raise NoteError("signature too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
    return ParsedNote(text, tuple(sigs))


def sign_note(text: str, signer: Signer | Sequence[Signer]) -> str:
    """Return the signed note: ``text`` + LF + one signature line per signer.

    ``text`` must be non-empty, end in LF, be valid UTF-8 and contain no ASCII
    control characters other than LF (NoteError otherwise).
    """
    body = _check_text_chars(text, "note text")
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    signers = [signer] if isinstance(signer, Signer) else list(signer)
    if not signers:
        raise NoteError("at least one signer is required")
    lines = [NoteSignature(s.name, s.key_id, s.sign(body)).to_line() for s in signers]
    return text + "\n" + "".join(lines)


def open_note(note: str, verifiers: Iterable[Verifier]) -> tuple[str, list[str]]:
    """Verify a signed note against known keys; return ``(text, names of verified signers)``.

    Follows C2SP signed-note "Signatures": a line whose (name, key ID) matches no
    verifier is ignored; a line matching a known key MUST verify (NoteError
    otherwise); repeated lines of one key are verified once; at least one known
    key must have signed (NoteError otherwise). The returned names are in note
    order. Raises NoteError for malformed notes (see :func:`parse_note`) and
    for a verifier list holding two keys with the same name and key ID.
    """
    known: dict[tuple[str, bytes], Verifier] = {}
    for v in verifiers:
        ident = (v.name, bytes(v.key_id))
        if ident in known:
            raise NoteError(f"ambiguous verifiers for {v.name}+{v.key_id.hex()}")
        known[ident] = v
    parsed = parse_note(note)
    message = parsed.text.encode("utf-8")
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    for sig in parsed.signatures:
        ident = (sig.name, sig.key_id)
        verifier = known.get(ident)
        if verifier is None or ident in seen:
            continue
        seen.add(ident)
        if not verifier.verify(message, sig.signature):
            raise NoteError(f"invalid signature by known key {sig.name}+{sig.key_id.hex()}")
        verified.append(sig.name)
    if not verified:
        raise NoteError("note has no valid signature from a known key")
    return parsed.text, verified
