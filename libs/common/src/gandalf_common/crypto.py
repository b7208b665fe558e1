"""Provider secrets at rest and in KV: AES-256-GCM with the gateway's key.

The key is 32 random bytes, given base64 in ``GANDALF_ENCRYPTION_KEY``;
``gandalf up`` generates one into its state directory when unset. Each
ciphertext is ``v1.`` + base64url(nonce || ciphertext+tag); the associated
data binds it to its purpose (e.g. the provider id), so a sealed secret
cannot be replayed into another provider's record.
"""

from __future__ import annotations

import base64
import os
from typing import Any

ENV_KEY = "GANDALF_ENCRYPTION_KEY"
_PREFIX = "v1."


class SecretError(Exception):
    """A missing or wrong key, or a damaged ciphertext (never says more)."""


def generate_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()  # what AESGCM.generate_key does


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise SecretError(f"{ENV_KEY} is not valid base64") from None
    if len(key) != 32:
        raise SecretError(f"{ENV_KEY} must be 32 bytes (base64), got {len(key)}")
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        # Imported here: ``gandalf up``'s supervisor only generates keys and
        # should not carry OpenSSL's bindings.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead: Any = AESGCM(key)

    @classmethod
    def from_env(cls) -> SecretBox | None:
        text = os.environ.get(ENV_KEY, "")
        return cls(parse_key(text)) if text else None

    def seal(self, plaintext: bytes, purpose: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext, purpose.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str, purpose: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if not token.startswith(_PREFIX):
            raise SecretError("unknown secret format")
        try:
            raw = base64.urlsafe_b64decode(token[len(_PREFIX):])
            plain: bytes = self._aead.decrypt(raw[:12], raw[12:], purpose.encode())
            return plain
        except (ValueError, InvalidTag):
            raise SecretError("cannot decrypt secret (wrong GANDALF_ENCRYPTION_KEY?)") from None
