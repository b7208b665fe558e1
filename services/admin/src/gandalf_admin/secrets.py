"""Provider secrets are write-only: sealed at rest and in KV, shown masked.

A body's secret field is: absent -> keep the stored secret; ``null`` or
``""`` -> clear it; the masked form the API showed -> keep (so a GET body can
be PUT back); anything else -> the new secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgspec import UNSET

from gandalf_common.crypto import SecretBox, SecretError
from gandalf_common.records import ProviderSecrets, encode_record, secrets_decoder

from .errors import bad_request
from .store.rows import ProviderRow

#: ProviderSecrets fields, in the order they are reported.
SECRET_FIELDS = ("api_key", "client_secret", "secret_access_key", "session_token")
#: Stands in for a kept secret whose plaintext is not needed (validation only
#: checks that it is there).
_KEPT = "<kept>"


def mask(secret: str) -> str:
    """``sk-...abcd``: enough to recognise a secret, never enough to use it."""
    return f"{secret[:3]}...{secret[-4:]}" if len(secret) >= 12 else "***"


def purpose(provider_id: str) -> str:
    """The AES-GCM associated data, as ``live.provider_config`` opens it."""
    return f"provider:{provider_id}"


@dataclass(frozen=True, slots=True)
class Sealed:
    secrets_enc: str
    hints: dict[str, str]
    #: Secret values for validation (``_KEPT`` placeholders for kept ones).
    check: dict[str, str]


def kept(wanted: dict[str, Any], current: ProviderRow) -> list[str]:
    """Stored secrets the body leaves in place (absent, or echoed masked)."""
    hints = current.secret_hints
    return [n for n in SECRET_FIELDS if n in hints and (
        wanted.get(n, UNSET) is UNSET or wanted.get(n) == hints[n])]


def merge(provider_id: str, wanted: dict[str, Any], current: ProviderRow | None,
          box: SecretBox | None) -> Sealed:
    """The sealed secrets after applying ``wanted`` (field -> body value)."""
    hints = current.secret_hints if current is not None else {}
    decisions: dict[str, str | None] = {}  # None = keep
    for name in SECRET_FIELDS:
        value = wanted.get(name, UNSET)
        if value is UNSET or (value and value == hints.get(name)):
            decisions[name] = None if name in hints else ""
        else:
            decisions[name] = value or ""
    if current is not None and all(d is None or (d == "" and n not in hints)
                                   for n, d in decisions.items()):
        # Nothing changes: keep the ciphertext as it is (no key needed).
        return Sealed(current.secrets_enc, dict(hints),
                      {n: _KEPT for n in SECRET_FIELDS if n in hints})
    plain: dict[str, str] = {}
    kept = [n for n, d in decisions.items() if d is None]
    if kept:
        old = _open(current, box, provider_id)
        plain.update({n: getattr(old, n) for n in kept})
    plain.update({n: d for n, d in decisions.items() if d})
    plain = {n: v for n, v in plain.items() if v}
    if not plain:
        return Sealed("", {}, {})
    if box is None:
        param = next(iter(plain))
        raise bad_request("provider secrets need GANDALF_ENCRYPTION_KEY on the admin service "
                          "(base64 of 32 random bytes)", param, code="encryption_key_missing")
    sealed = box.seal(encode_record(ProviderSecrets(**plain)), purpose(provider_id))
    return Sealed(sealed, {n: mask(v) for n, v in plain.items()}, dict(plain))


def _open(current: ProviderRow | None, box: SecretBox | None,
          provider_id: str) -> ProviderSecrets:
    if current is None or not current.secrets_enc:
        return ProviderSecrets()
    if box is None:
        raise bad_request("the stored provider secrets cannot be read without "
                          "GANDALF_ENCRYPTION_KEY; send every secret again or set the key",
                          "api_key", code="encryption_key_missing")
    try:
        return secrets_decoder.decode(box.open(current.secrets_enc, purpose(provider_id)))
    except SecretError:
        raise bad_request("the stored provider secrets cannot be decrypted with the current "
                          "GANDALF_ENCRYPTION_KEY; send every secret again", "api_key",
                          code="encryption_key_mismatch") from None
