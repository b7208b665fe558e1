"""Fault directives and request records of the mock upstream."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# --------------------------------------------------------------------------- faults


@dataclasses.dataclass(frozen=True)
class Fault:
    """What to do wrong for one request. The default instance means "behave normally"."""

    status: int | None = None  # respond with this HTTP error status
    retry_after: int | None = None  # Retry-After header value (seconds)
    delay_ms: int = 0  # delay before the first byte
    chunk_delay_ms: int = 0  # delay between stream chunks
    cut: int | None = None  # abort the connection after n stream events / half the body
    hang: bool = False  # never respond
    words: int | None = None  # reply length in words

    def merged(self, other: Fault) -> Fault:
        """``self`` overridden by every non-default field of ``other``."""
        default = Fault()
        changes = {
            f.name: getattr(other, f.name)
            for f in dataclasses.fields(Fault)
            if getattr(other, f.name) != getattr(default, f.name)
        }
        return dataclasses.replace(self, **changes)

    @property
    def is_noop(self) -> bool:
        return self == Fault()


_DIRECTIVE_RE = re.compile(
    r"(?P<name>fail|retry-after|chunk-delay|delay|cut|words)-(?P<value>\d+)|(?P<flag>hang|ok)"
)
_SPLIT_RE = re.compile(r"[;+/,\s]+")


def parse_model_faults(model: str | None) -> Fault:
    """Parse the fault directives embedded in a model name (see module docstring)."""
    fault = Fault()
    if not model:
        return fault
    for token in _SPLIT_RE.split(model.strip().lower()):
        m = _DIRECTIVE_RE.fullmatch(token)
        if m is None:
            continue
        if m.group("flag") == "hang":
            fault = dataclasses.replace(fault, hang=True)
            continue
        if m.group("flag") == "ok":
            continue
        name, value = m.group("name"), int(m.group("value"))
        if name == "fail":
            fault = dataclasses.replace(fault, status=value)
        elif name == "retry-after":
            fault = dataclasses.replace(fault, retry_after=value)
        elif name == "delay":
            fault = dataclasses.replace(fault, delay_ms=value)
        elif name == "chunk-delay":
            fault = dataclasses.replace(fault, chunk_delay_ms=value)
        elif name == "cut":
            fault = dataclasses.replace(fault, cut=value)
        elif name == "words":
            fault = dataclasses.replace(fault, words=value)
    return fault


@dataclasses.dataclass
class FaultRule:
    """A programmatic fault: applies to ``model`` (exact match) or to every request if None."""

    model: str | None
    fault: Fault
    times: int | None = None  # remaining applications; None = unlimited


# ------------------------------------------------------------------------- records


@dataclasses.dataclass
class RequestRecord:
    """One received HTTP request. Times are ``time.monotonic()`` values."""

    index: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lowercase names
    body: Any  # parsed JSON body, or None (absent / not JSON)
    raw_body: bytes
    received_at: float
    wall_time: float  # time.time() at receipt
    model: str | None = None
    stream: bool = False
    fault: Fault | None = None  # effective fault applied (None if not a faultable endpoint)
    status: int | None = None  # status sent (or about to be sent) to the client
    first_byte_at: float | None = None  # when response headers were sent
    finished_at: float | None = None  # when the handler finished (response complete or aborted)
    chunks_sent: int = 0  # SSE "data:" events written (including [DONE])
    client_closed_at: float | None = None  # client closed before the response was finished
    server_aborted: bool = False  # the mock deliberately aborted the connection (cut-N)

    @property
    def client_closed(self) -> bool:
        return self.client_closed_at is not None

    @property
    def completed(self) -> bool:
        """The response was sent in full (no client close, no deliberate abort)."""
        return (
            self.finished_at is not None
            and self.client_closed_at is None
            and not self.server_aborted
        )


class _ClientGone(Exception):
    """The client closed the connection; stop handling the request."""
