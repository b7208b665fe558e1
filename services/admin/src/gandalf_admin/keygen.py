"""API key material: ``gnd_`` + base64url(32 random bytes), stored only as
SHA-256 hex (what the ingress looks up) and a 12-character prefix."""

from __future__ import annotations

import base64
import hashlib
import os

KEY_PREFIX = "gnd_"
#: Stored and shown: enough to recognise a key, useless to guess it.
PREFIX_LEN = 12


def hash_key(plaintext: str) -> str:
    """As the ingress hashes a presented key: SHA-256 hex of the full text."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def yaml_key_id(key_hash: str) -> str:
    """The id the ingress gives a YAML key in static mode (usage agrees)."""
    return key_hash[:16]
