"""Opt-in semantic response cache for chat completions.

After an exact-cache miss, a chat request on a route with ``semantic_cache:
true`` has its conversation text (user/assistant messages, not the system
prompt, not tools) embedded with ``cache.semantic_model`` through the
gateway's own pipeline (an internal embeddings ``RouteRequest`` sent with
``Relay.unary`` and a capturing ``send``). The nearest stored answer with a
cosine similarity >= ``cache.semantic_threshold`` is served. Entries are only
compared within one partition: (scope, model alias, hash of the system
prompt(s), hash of tools/tool_choice/response_format), so an answer never
crosses system prompts or tool sets.

Vectors are normalized and kept as float32 bytes. Backend: memory only (a
list per partition with a global bound, oldest evicted); no Redis backend yet.
Any failure (embedding call, odd body) is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import operator
import time
import uuid
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import Counter

from gandalf_common import contract
from gandalf_common.config import GatewayConfig
from gandalf_common.contract import RouteRequest
from gandalf_common.metrics_hub import REGISTRY

from .cache import cacheable, effective_ttl
from .relay import Relay

log = logging.getLogger("gandalf.semantic")

SEMANTIC_HITS = Counter("gandalf_semantic_cache_hits_total",
                        "Chat requests answered from the semantic cache", registry=REGISTRY)
SEMANTIC_MISSES = Counter("gandalf_semantic_cache_misses_total",
                          "Semantic cache lookups that found no close enough answer",
                          registry=REGISTRY)

_HEADER = b"x-gandalf-cache"
_SEMANTIC_HIT = (_HEADER, b"semantic-hit")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
#: Fields that decide tool use / output shape: part of the partition.
_SHAPE = ("tools", "tool_choice", "response_format")
#: The internal embedding call may take at most this long (seconds).
EMBED_TIMEOUT = 10.0


@dataclass(slots=True)
class Probe:
    """One request's lookup: where to store its answer, and the hit if any."""

    partition: str
    vector: bytes
    ttl: float
    body: bytes | None = None


@dataclass(slots=True)
class _Entry:
    vector: array[float]
    body: bytes
    expires: float
    id: int = 0


@dataclass
class MemoryVectors:
    """Per-partition entry lists with one global bound (oldest evicted)."""

    max_entries: int = 10000
    parts: dict[str, dict[int, _Entry]] = field(default_factory=dict)
    order: OrderedDict[int, str] = field(default_factory=OrderedDict)
    _next: int = 0

    def nearest(self, partition: str, vector: bytes, threshold: float) -> bytes | None:
        entries = self.parts.get(partition)
        if not entries:
            return None
        query = array("f")
        query.frombytes(vector)
        now = time.monotonic()
        best, best_score = None, threshold
        for ident, entry in list(entries.items()):
            if entry.expires <= now:
                self._drop(ident)
                continue
            if len(entry.vector) != len(query):
                continue
            score = sum(map(operator.mul, query, entry.vector))
            if score >= best_score:
                best, best_score = entry, score
        return best.body if best is not None else None

    def add(self, partition: str, vector: bytes, body: bytes, ttl: float) -> None:
        if self.max_entries <= 0 or ttl <= 0:
            return
        vec = array("f")
        vec.frombytes(vector)
        self._next += 1
        ident = self._next
        self.parts.setdefault(partition, {})[ident] = _Entry(
            vec, body, time.monotonic() + ttl, ident)
        self.order[ident] = partition
        while len(self.order) > self.max_entries:
            self._drop(next(iter(self.order)))

    def _drop(self, ident: int) -> None:
        partition = self.order.pop(ident, None)
        if partition is None:
            return
        entries = self.parts.get(partition)
        if entries is not None:
            entries.pop(ident, None)
            if not entries:
                del self.parts[partition]

    def __len__(self) -> int:
        return len(self.order)


def conversation_text(payload: dict[str, Any]) -> str:
    """The user/assistant message texts, joined (system prompt and tools excluded)."""
    parts: list[str] = []
    for msg in payload.get("messages") or ():
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            continue
        text = _text_of(msg.get("content"))
        if text:
            parts.append(f"{msg['role']}: {text}")
    return "\n".join(parts)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def partition_of(payload: dict[str, Any], *, scope: str, model: str) -> str:
    """(scope, alias, hash of system prompts, hash of tools/tool_choice/response_format)."""
    system = [m.get("content") for m in payload.get("messages") or ()
              if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    shape = [[name, payload.get(name)] for name in _SHAPE]
    digest = hashlib.sha256(_encode([scope, model, system, shape])).hexdigest()
    return digest


def normalized(values: Any) -> bytes | None:
    """Unit float32 bytes of an embedding, or None if it is not a usable vector."""
    if not isinstance(values, list) or not values:
        return None
    try:
        vec = array("f", values)
    except TypeError:
        return None
    norm = math.sqrt(sum(v * v for v in vec))
    if not norm or math.isnan(norm) or math.isinf(norm):
        return None
    return array("f", (v / norm for v in vec)).tobytes()


class SemanticCache:
    def __init__(self, cfg: GatewayConfig) -> None:
        c = cfg.cache
        self.model = c.semantic_model
        self.threshold = c.semantic_threshold
        self.scope = c.scope
        self.max_temperature = c.max_temperature
        self.serve_streams = c.stream
        self.default_ttl = c.default_ttl
        self.routes = {r.model_alias for r in cfg.routes if r.semantic_cache}
        self.route_ttl = {r.model_alias: r.cache_ttl_s for r in cfg.routes}
        self.store_ = MemoryVectors(c.semantic_max_entries)

    @staticmethod
    def wanted(cfg: GatewayConfig) -> bool:
        return bool(cfg.cache.semantic_model) and any(r.semantic_cache for r in cfg.routes)

    async def lookup(self, relay: Relay | None, scope: dict[str, Any], payload: dict[str, Any],
                     body: bytes, *, model: str, stream: bool, key_id: str,
                     org_id: str) -> Probe | None:
        """A probe for a request this cache handles (None otherwise); ``.body`` on a hit."""
        if relay is None or model not in self.routes or (stream and not self.serve_streams):
            return None
        control = _cache_control(scope)
        if "no-store" in control:
            return None
        if not payload:
            try:
                payload = _decode(body)
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                return None
            if not isinstance(payload, dict):
                return None
        if not cacheable(payload, max_temperature=self.max_temperature):
            return None
        text = conversation_text(payload)
        if not text:
            return None
        vector = await self.embed(relay, text, org_id=org_id)
        if vector is None:
            SEMANTIC_MISSES.inc()
            return None
        owner = key_id if self.scope == "key" else org_id
        probe = Probe(partition_of(payload, scope=owner, model=model), vector,
                      effective_ttl(self.route_ttl.get(model, 0), self.default_ttl))
        if "no-cache" not in control:
            probe.body = self.store_.nearest(probe.partition, vector, self.threshold)
        (SEMANTIC_HITS if probe.body is not None else SEMANTIC_MISSES).inc()
        return probe

    async def store(self, probe: Probe, body: bytes) -> None:
        self.store_.add(probe.partition, probe.vector, body, probe.ttl)

    async def embed(self, relay: Relay, text: str, *, org_id: str = "") -> bytes | None:
        """Embed through the pipeline; None on any failure."""
        req = RouteRequest(
            request_id="sem-" + uuid.uuid4().hex, op=contract.OP_EMBED, model=self.model,
            body=_encode({"model": self.model, "input": text}),
            deadline=time.time() + EMBED_TIMEOUT, org_id=org_id)
        sink = _Capture()
        try:
            status = await relay.unary(req, sink.send, _never)
            if status != 200:
                log.info("semantic cache: embedding call answered %d; miss", status)
                return None
            data = _decode(sink.body())
            return normalized(data["data"][0]["embedding"])
        except Exception as exc:  # noqa: BLE001 - a failed embedding is only a miss
            log.info("semantic cache: embedding failed (%s); miss", type(exc).__name__)
            return None


class _Capture:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.parts.append(message.get("body", b""))

    def body(self) -> bytes:
        return b"".join(self.parts)


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()  # the internal call has no client to go away
    return {"type": "http.disconnect"}


def mark_semantic_hit(state: dict[str, Any]) -> None:
    """Replace the exact cache's ``miss`` header (if any) with ``semantic-hit``."""
    headers = [h for h in state.get("headers", []) if h[0] != _HEADER]
    headers.append(_SEMANTIC_HIT)
    state["headers"] = headers


def _cache_control(scope: dict[str, Any]) -> str:
    for name, value in scope["headers"]:
        if name == b"cache-control":
            return str(value.decode("latin-1")).lower()
    return ""
