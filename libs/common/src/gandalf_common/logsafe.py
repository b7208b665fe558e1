"""Client-supplied text made safe for one log line: control characters
(CR/LF above all, which would forge log lines) are escaped as ``\\xNN``."""

from __future__ import annotations

#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def clean(value: object) -> str:
    """``value`` as text with every control character escaped."""
    return str(value).translate(_ESCAPES)
