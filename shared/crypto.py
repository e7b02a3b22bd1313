"""Secrets at rest: AES-256-GCM sealing (``cryptography``) of small JSON values such as OAuth tokens.

A sealed value is ``v1.<base64url(nonce || ciphertext+tag)>``; the associated data binds it to
its row (e.g. the consent id) so that a sealed value copied to another row does not open.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BrokerError

# development-only key: refused by Settings outside development mode
DEV_KEY_B64 = base64.urlsafe_b64encode(b"portability-dev-key-not-secret!!").decode()


class SealError(BrokerError):
    code, title = "seal_error", "Sealed value cannot be opened"


class SecretBox:
    """AES-GCM with a 256-bit key given as base64url (44 characters)."""

    def __init__(self, key_b64: str) -> None:
        key = base64.urlsafe_b64decode(key_b64.encode())
        if len(key) != 32:
            raise ValueError("the encryption key must be 32 bytes, base64url-encoded")
        self._aead = AESGCM(key)

    def seal(self, value: Any, *, aad: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, json.dumps(value).encode(), aad.encode())
        return "v1." + base64.urlsafe_b64encode(nonce + ct).decode()

    def open(self, sealed: str, *, aad: str) -> Any:
        """Raises :class:`SealError` if the value was altered, moved to another row or sealed with another key."""
        if not sealed.startswith("v1."):
            raise SealError("unknown sealed value version")
        raw = base64.urlsafe_b64decode(sealed[3:].encode())
        try:
            return json.loads(self._aead.decrypt(raw[:12], raw[12:], aad.encode()))
        except InvalidTag:
            raise SealError("sealed value does not open with this key") from None
