"""The wire contract: every NATS subject and every payload that crosses the bus.

This is the one place to read the protocol. Payloads are msgspec Structs
encoded as msgpack. Rules (msgspec schema evolution): every Struct is
``frozen`` and ``kw_only``; fields added later get defaults; unknown fields are
ignored, so an old service can read a newer message.

Flow of one request::

    ingress --ROUTER_CHAT/ROUTER_EMBED (reply = ingress inbox)--> router (queue "router")
    router  --provider_subject(instance, op) (request/reply, ctl)--> worker (queue per instance)
    worker  --Chunk.../End or Complete--> ingress inbox   (``reply_to`` in the ExecRequest)
    worker  --Started / Failed-->  router                  (the NATS reply of the exec request)
    router  --ErrorReply--> ingress inbox                  (when no target produced a response)
    ingress --Cancel on CANCEL--> every worker             (the client went away)

The request deadline travels in the ``Gandalf-Deadline`` header of the
route and exec messages (:func:`deadline_headers`), so a hop can drop expired
work before decoding the body. Requests the ingress marks coalescable
(``RouteRequest.coalesce_key``) go to one owner worker of the instance,
chosen by rendezvous hashing over the workers that announce themselves on
:func:`presence_subject` (see :func:`worker_subject`).

Configuration (keys, orgs, teams, providers, routes, JWT settings) is not
sent as messages: the admin service writes it to NATS KV and every service
mirrors the buckets; the records are in :mod:`gandalf_common.records`.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Struct

# ===================================================================== subjects
PREFIX: Final = "gandalf"

#: ingress -> router, one subject per operation; queue group ROUTER_QUEUE.
ROUTER_CHAT: Final = "gandalf.router.chat"
ROUTER_EMBED: Final = "gandalf.router.embed"
ROUTER_NATIVE: Final = "gandalf.router.native"
ROUTER_WILDCARD: Final = "gandalf.router.*"
ROUTER_QUEUE: Final = "router"

#: ingress -> admin service: ``/admin/v1/*`` as request/reply (queue "admin").
ADMIN_HTTP: Final = "gandalf.admin.http"
ADMIN_QUEUE: Final = "admin"
#: The admin API's part of ``/openapi.json`` (JSON: ``{"paths", "schemas"}``).
ADMIN_OPENAPI: Final = "gandalf.admin.openapi"
#: admin -> every ingress: drop cached responses (body: :class:`CachePurge`).
CACHE_PURGE: Final = "gandalf.cache.purge"

#: ingress -> JetStream stream USAGE: one :class:`UsageEvent` per finished
#: request, ``Nats-Msg-Id`` = request id (duplicates dropped by the stream).
USAGE_STREAM: Final = "USAGE"
USAGE_SUBJECTS: Final = "gandalf.usage.>"
USAGE_SUBJECT: Final = "gandalf.usage.event"
#: ingress -> USAGE: one :class:`UsageStarted` per admitted request, stored
#: before the first response byte; ``Nats-Msg-Id`` = request id +
#: :data:`USAGE_STARTED_MSG_ID_SUFFIX` (the finished event keeps the plain id).
USAGE_STARTED_SUBJECT: Final = "gandalf.usage.started"
USAGE_STARTED_MSG_ID_SUFFIX: Final = ":started"
#: The usage writer's durable pull consumer (shared by every usage replica).
USAGE_DURABLE: Final = "usage-writer"
#: KV bucket of spend per budget scope, written by the usage service, read by
#: every ingress for budget checks (key: ``<scope>.<id>``, value :class:`Spend`).
SPEND_BUCKET: Final = "gandalf_spend"

#: readiness pings (request/reply, any member of the queue group answers).
PING_ROUTER: Final = "gandalf.ping.router"
PING_ADMIN: Final = "gandalf.ping.admin"
PING_USAGE: Final = "gandalf.ping.usage"

#: ingress -> all workers: a client disconnected, abort its upstream call.
#: Broadcast (no queue group): disconnects are rare and the ingress does not
#: know which worker holds the request.
CANCEL: Final = "gandalf.cancel"

#: JetStream object store for request bodies too large for one NATS message.
BODY_BUCKET: Final = "gandalf_bodies"

#: Prefix of the per-process reply inboxes of ingresses.
INBOX_PREFIX: Final = "_INBOX.gw"

OP_CHAT: Final = "chat"
OP_EMBED: Final = "embed"
#: A provider's own API (``/v1/messages``, ``/v1beta/models/*``, ...): the
#: body is the client's, in that provider's wire format; see :class:`NativeCall`.
OP_NATIVE: Final = "native"

#: Native wire formats the ingress accepts (``NativeCall.kind``).
KIND_ANTHROPIC: Final = "anthropic"
KIND_GEMINI: Final = "gemini"
KIND_AZURE: Final = "azure"  # OpenAI bodies on Azure-style deployment paths
KIND_OLLAMA: Final = "ollama"
#: OpenAI's Responses API (``/v1/responses``): forwarded to OpenAI-type
#: targets, translated to chat for every other type.
KIND_RESPONSES: Final = "responses"

#: Which native kinds a provider type forwards unchanged. Anthropic Messages
#: aimed at any other type is translated by the worker (Messages -> OpenAI ->
#: target), so every type can serve ``KIND_ANTHROPIC``.
NATIVE_KINDS: Final[dict[str, frozenset[str]]] = {
    "openai": frozenset({KIND_AZURE, KIND_ANTHROPIC, KIND_RESPONSES}),
    "anthropic": frozenset({KIND_ANTHROPIC, KIND_RESPONSES}),
    "gemini": frozenset({KIND_GEMINI, KIND_ANTHROPIC, KIND_RESPONSES}),
    "ollama": frozenset({KIND_OLLAMA, KIND_AZURE, KIND_ANTHROPIC, KIND_RESPONSES}),
}

#: Responses API actions on a stored response: only the OpenAI type keeps
#: responses, so these go to the instance that created the response.
RESPONSES_STORED_ACTIONS: Final = frozenset({"retrieve", "delete", "input_items", "cancel"})

#: Universal operations per provider type; the router skips a target that
#: cannot do the op (a clear 400 when none can), never a breaker failure.
PROVIDER_OPS: Final[dict[str, frozenset[str]]] = {
    "openai": frozenset({OP_CHAT, OP_EMBED}),
    "anthropic": frozenset({OP_CHAT}),
    "gemini": frozenset({OP_CHAT, OP_EMBED}),
    "ollama": frozenset({OP_CHAT, OP_EMBED}),
}


def serves(provider_type: str, op: str, kind: str = "") -> bool:
    """Whether a provider of this type can take ``op`` (``kind`` for native)."""
    if op == OP_NATIVE:
        return kind in NATIVE_KINDS.get(provider_type, frozenset())
    return op in PROVIDER_OPS.get(provider_type, frozenset())


def provider_subject(instance: str, op: str) -> str:
    """router -> worker pool of one provider instance (``op``: chat, embed)."""
    return f"gandalf.provider.{instance}.{op}"


def provider_wildcard(instance: str) -> str:
    return f"gandalf.provider.{instance}.*"


def provider_queue(instance: str) -> str:
    """One queue group per provider instance, so its workers share the load."""
    return f"provider.{instance}"


def ping_provider(instance: str) -> str:
    return f"gandalf.ping.provider.{instance}"


HEALTH_WILDCARD: Final = "gandalf.health.*"


def health_subject(instance: str) -> str:
    """worker -> routers: breaker transitions and latency samples."""
    return f"gandalf.health.{instance}"


def router_op_subject(op: str) -> str:
    return f"gandalf.router.{op}"


PRESENCE_WILDCARD: Final = "gandalf.presence.*"
#: routers -> workers: "announce yourselves now" (a router that just started
#: need not wait a heartbeat interval to know the workers).
PRESENCE_HELLO: Final = "gandalf.hello.workers"
#: Seconds between a worker's presence heartbeats; a worker not heard from
#: for three intervals is presumed gone.
PRESENCE_INTERVAL: Final = 2.0


def presence_subject(instance: str) -> str:
    """worker -> routers and sibling workers: "I serve this instance"."""
    return f"gandalf.presence.{instance}"


def worker_subject(worker: str, instance: str, op: str) -> str:
    """router -> one particular worker of an instance (no queue group): where
    coalescable requests go, so identical ones meet in the same process."""
    return f"gandalf.worker.{worker}.{instance}.{op}"


def worker_wildcard(worker: str, instance: str) -> str:
    return f"gandalf.worker.{worker}.{instance}.*"


#: Header with the absolute request deadline (Unix epoch seconds, decimal).
DEADLINE_HEADER: Final = "Gandalf-Deadline"


def deadline_headers(deadline: float) -> dict[str, str] | None:
    return {DEADLINE_HEADER: f"{deadline:.3f}"} if deadline else None


def deadline_of(headers: dict[str, str] | None) -> float:
    """The deadline a message carries; 0.0 (none) when absent or unreadable."""
    if not headers:
        return 0.0
    try:
        return float(headers.get(DEADLINE_HEADER, 0.0))
    except ValueError:
        return 0.0


# ===================================================================== payloads


class Usage(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Token counts reported by the upstream for one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class NativeCall(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a native-API request needs beyond its body (``op`` = native)."""

    #: ``KIND_*``: the wire format of the client's body and of the answer.
    kind: str
    #: Provider-relative action: anthropic ``messages``; gemini
    #: ``generateContent``/``streamGenerateContent``/``embedContent``/...;
    #: azure ``chat/completions``/``embeddings``; ollama ``chat``/``embed``/``generate``.
    action: str
    #: The client's raw query string (gateway credentials already removed).
    query: str = ""
    #: Client headers worth forwarding (``anthropic-beta``, ``anthropic-version``).
    headers: list[tuple[str, str]] = []
    #: Responses API: the stored response an action is about (``resp_...``).
    ref: str = ""
    #: Only this provider instance may serve the call (a stored response
    #: lives on the instance that created it).
    pin: str = ""


class RouteRequest(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """ingress -> router (``gandalf.router.<op>``); the NATS reply subject is
    the ingress inbox that will receive :data:`ReplyMsg` messages."""

    request_id: str
    op: str
    model: str
    #: The client's JSON body, unchanged (unknown OpenAI fields are kept).
    body: bytes = b""
    #: Set instead of ``body`` when the body is larger than one NATS message:
    #: the object name in the ``gandalf_bodies`` JetStream object store.
    body_ref: str = ""
    stream: bool = False
    #: The client asked for ``stream_options.include_usage``.
    include_usage: bool = False
    #: Absolute deadline, Unix epoch seconds. In-process only: on the bus it
    #: travels in the ``Gandalf-Deadline`` header (0, so omitted, in the body);
    #: each hop fills it from the header and drops expired work.
    deadline: float = 0.0
    key_id: str = ""
    org_id: str = ""
    traceparent: str = ""
    team_id: str = ""
    #: The end user: a key's user, or a JWT's subject.
    user_id: str = ""
    #: Set for ``op`` = native.
    native: NativeCall | None = None
    #: Set when identical requests in flight may share one upstream call (a
    #: deterministic non-streaming chat): the response cache's key.
    coalesce_key: str = ""


class ExecRequest(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """router -> worker (``gandalf.provider.<instance>.<op>``), sent as a NATS
    request: the worker answers the router with :data:`CtlMsg` and streams the
    response itself to ``reply_to``."""

    route: RouteRequest
    provider: str
    target_model: str
    reply_to: str
    #: 0 for the first target, +1 per failover; the ingress keeps the output
    #: of the first attempt that produced bytes and ignores any other.
    attempt: int = 0


# --- worker -> router (control) -------------------------------------------


class Started(Struct, frozen=True, kw_only=True, tag_field="t", tag="started"):
    """The first byte went to the client: failover is no longer possible."""

    attempt: int = 0


class Failed(Struct, frozen=True, kw_only=True, tag_field="t", tag="failed"):
    """The attempt failed before any byte reached the client."""

    attempt: int = 0
    #: HTTP status to show the client (upstream status when there was one).
    status: int = 502
    type: str = "api_error"
    code: str | None = None
    message: str = ""
    #: Whether another target may be tried (connect error, timeout, 408, 429, 5xx).
    retryable: bool = True
    #: Upstream Retry-After in seconds, 0 when absent.
    retry_after: float = 0.0
    #: The worker that refused (``CODE_SATURATED``): the router may try the
    #: instance's other workers before failing over.
    worker: str = ""


CtlMsg = Started | Failed

#: ``Failed.code`` of an attempt whose client disconnected: nobody waits for it.
CODE_CLIENT_GONE: Final = "client_disconnected"
#: ``Failed.code`` of a worker at ``max_concurrency`` or ``max_rps``.
CODE_SATURATED: Final = "provider_saturated"


# --- worker/router -> ingress (reply inbox) -------------------------------


class Head(Struct, frozen=True, kw_only=True, tag_field="t", tag="head"):
    """Native responses only: the status and headers, sent before the body,
    which follows as raw ``Chunk`` bytes and an ``End``."""

    attempt: int = 0
    seq: int
    status: int = 200
    headers: list[tuple[str, str]] = []


class Chunk(Struct, frozen=True, kw_only=True, tag_field="t", tag="chunk"):
    """One SSE ``data:`` payload (JSON bytes) of a stream; raw body bytes of a
    native response."""

    attempt: int = 0
    seq: int
    data: bytes


class End(Struct, frozen=True, kw_only=True, tag_field="t", tag="end"):
    """Clean end of a stream (``data: [DONE]`` follows)."""

    attempt: int = 0
    seq: int
    usage: Usage | None = None
    provider: str = ""
    model: str = ""
    #: The id of what the upstream stored (a Responses API ``resp_...``), so
    #: the ingress can bind it to its owner and this instance.
    ref: str = ""


class Complete(Struct, frozen=True, kw_only=True, tag_field="t", tag="complete"):
    """A whole non-streaming response. Bodies larger than one NATS message are
    sent as ``Chunk`` parts first; the client body is the parts + ``body``."""

    attempt: int = 0
    seq: int
    status: int = 200
    body: bytes = b""
    usage: Usage | None = None
    provider: str = ""
    model: str = ""
    #: The answer of another identical request's upstream call (coalesced).
    coalesced: bool = False


class ErrorReply(Struct, frozen=True, kw_only=True, tag_field="t", tag="error"):
    """Terminal error: before the stream started it becomes an HTTP error
    response, after it an SSE error event."""

    attempt: int = 0
    seq: int = 0
    status: int = 502
    type: str = "api_error"
    code: str | None = None
    message: str = ""
    retry_after: float = 0.0


class Alive(Struct, frozen=True, kw_only=True, tag_field="t", tag="alive"):
    """router/worker -> ingress inbox, every ``liveness.HEARTBEAT_S`` while
    it holds the request: silence means the process handling it died."""


ReplyMsg = Head | Chunk | End | Complete | ErrorReply | Alive


class Cancel(Struct, frozen=True, kw_only=True):
    """ingress -> workers (``gandalf.cancel``): the client went away."""

    request_id: str
    #: -1 cancels every attempt; the router cancels only the one it gave up on.
    attempt: int = -1


class Caller(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who made a request, as the ingress authenticated it (API key, JWT or
    the bootstrap admin key). The admin service authorizes with this."""

    key_id: str = ""
    org_id: str = "default"
    team_id: str = ""
    user_id: str = ""
    role: str = "member"
    #: apikey | jwt | admin_key
    auth: str = "apikey"


class AdminRequest(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """ingress -> admin (``gandalf.admin.http``): one ``/admin/v1/*`` call."""

    request_id: str
    method: str
    path: str
    query: str = ""
    body: bytes = b""
    caller: Caller
    #: Unix time of signing and the HMAC of everything above plus the reply
    #: subject (see ``callersig``): a process that can publish on the bus
    #: but lacks the bus secret cannot claim to be an admin.
    signed_at: float = 0.0
    signature: str = ""


class AdminResponse(Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = []


class UsageEvent(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One finished request, as billed (JSON on the USAGE stream, so billing
    tools and ``nats stream view`` can read it)."""

    request_id: str
    #: Unix epoch seconds when the request arrived.
    ts: float
    org_id: str = ""
    team_id: str = ""
    key_id: str = ""
    #: A key's user, or the JWT subject.
    user_id: str = ""
    #: apikey | jwt | admin_key
    auth: str = ""
    #: chat | embed | native:<kind>
    endpoint: str = ""
    model: str = ""  # the alias the client asked for
    provider: str = ""  # the provider instance that answered ("" if none did)
    provider_model: str = ""  # the provider's own model id
    status: int = 0  # HTTP status sent (499: the client went away)
    stream: bool = False
    cached: bool = False
    coalesced: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0
    #: True when the upstream reported no usage and the counts are estimates
    #: (a client that disconnected mid-stream).
    estimated: bool = False
    cost_usd: float = 0.0
    latency_ms: int = 0
    #: Time to the first byte of the answer (streams), None when not streamed.
    ttft_ms: int | None = None
    #: Why it failed: the error code (rate_limit_exceeded, upstream_timeout...).
    error_class: str = ""


class UsageStarted(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An admitted request, before its answer: if no :class:`UsageEvent`
    follows within the usage service's deadline (the ingress died), the
    request is billed from this estimate (a flagged, provisional row) until
    its finished event, if it ever comes, settles it."""

    request_id: str
    #: Unix epoch seconds when the request arrived (the finished event's ``ts``).
    ts: float
    org_id: str = ""
    team_id: str = ""
    key_id: str = ""
    user_id: str = ""
    auth: str = ""
    endpoint: str = ""
    model: str = ""
    stream: bool = False
    #: The tokens reserved at admission (prompt + completion allowance).
    estimated_tokens: int = 0
    #: Their cost at the alias's price (0 when unknown).
    estimated_cost_usd: float = 0.0


class Spend(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Spend of one budget scope (key, team or org) in its current period."""

    period: str  # daily | weekly | monthly | lifetime
    #: Start of the current period, Unix epoch seconds (0 for lifetime).
    period_start: float
    spend_usd: float
    updated_at: float = 0.0


class CachePurge(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Empty fields purge everything; otherwise only that model and/or key."""

    model: str = ""
    key_id: str = ""


class Health(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """worker -> routers (``gandalf.health.<instance>``): a breaker transition."""

    instance: str
    #: closed | open | half_open
    state: str
    #: While open: Unix time until which routers skip the instance.
    until: float = 0.0
    pid: int = 0
    #: The worker (``Presence.worker``) whose breaker moved; its siblings
    #: adopt the transition, so every replica of an instance agrees.
    worker: str = ""


class Presence(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """worker -> routers and workers (``gandalf.presence.<instance>``): a
    heartbeat every :data:`PRESENCE_INTERVAL`, and once more when leaving."""

    instance: str
    #: Unique per worker pool (process and generation); names its direct subject.
    worker: str
    leaving: bool = False


class Pong(Struct, frozen=True, kw_only=True):
    """Answer to a readiness ping."""

    service: str
    instance: str = ""
    pid: int = 0


# Build encoders and decoders once (msgspec performance tip); never per message.
encode = msgspec.msgpack.Encoder().encode
route_decoder = msgspec.msgpack.Decoder(RouteRequest)
exec_decoder = msgspec.msgpack.Decoder(ExecRequest)
ctl_decoder = msgspec.msgpack.Decoder(CtlMsg)
reply_decoder = msgspec.msgpack.Decoder(ReplyMsg)
cancel_decoder = msgspec.msgpack.Decoder(Cancel)
pong_decoder = msgspec.msgpack.Decoder(Pong)
health_decoder = msgspec.msgpack.Decoder(Health)
presence_decoder = msgspec.msgpack.Decoder(Presence)
admin_request_decoder = msgspec.msgpack.Decoder(AdminRequest)
admin_response_decoder = msgspec.msgpack.Decoder(AdminResponse)
cache_purge_decoder = msgspec.msgpack.Decoder(CachePurge)
usage_json_encode = msgspec.json.Encoder().encode
usage_json_decoder = msgspec.json.Decoder(UsageEvent)
usage_started_decoder = msgspec.json.Decoder(UsageStarted)
spend_decoder = msgspec.msgpack.Decoder(Spend)


# --- Responses API: who created a stored response -------------------------

#: NATS KV bucket: response id -> :class:`ResponseOwner`. Written by the
#: ingress when an OpenAI-type target created a response; entries expire
#: with :data:`RESPONSES_TTL` (OpenAI keeps stored responses 30 days).
RESPONSES_BUCKET: Final = "gandalf_responses"
RESPONSES_TTL: Final = 30 * 24 * 3600.0


class ResponseOwner(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The org and key that created a stored response, and where it lives."""

    org_id: str = ""
    key_id: str = ""
    #: The provider instance that stores it, and the alias it was created with.
    provider: str
    model: str
