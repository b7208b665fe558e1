"""The bus as an AsyncAPI 3 document, generated from :mod:`gandalf_common.contract`.

``docs/asyncapi.yaml`` is this module's output (``python -m gandalf_common.asyncapi``
writes it); a test regenerates it and fails when the committed file differs, and
another fails when ``contract.py`` gains a subject or a Struct that no channel
names, so the document cannot drift from the code.

The gateway is several services on one bus, so each operation says who sends
(``x-senders``) and who receives (``action: receive``, ``x-receiver``). Payload
schemas come from the msgspec Structs (``msgspec.json.schema_components``);
on the wire they are msgpack, where ``bytes`` fields are msgpack ``bin`` (the
JSON schema shows them as base64 strings). The USAGE stream is JSON.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from . import contract as c
from . import liveness, records

MSGPACK = "application/msgpack"
JSON = "application/json"


@dataclass(frozen=True)
class Channel:
    """One subject (or subject pattern) and what travels on it."""

    id: str
    address: str | None  # None: a per-process inbox, given as the reply subject
    messages: tuple[type[Any], ...]
    senders: tuple[str, ...]
    receiver: str
    description: str
    parameters: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    content_type: str = MSGPACK
    reply: str = ""  # the id of the channel replies go to
    headers: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


_INSTANCE = {"instance": "A provider instance's name (`providers[].name`)."}
_OP = {"op": f"`{c.OP_CHAT}`, `{c.OP_EMBED}` or `{c.OP_NATIVE}`."}
_DEADLINE = (c.DEADLINE_HEADER,)

CHANNELS: tuple[Channel, ...] = (
    Channel("routerOp", "gandalf.router.{op}", (c.RouteRequest,), ("ingress",), "router",
            "A request to route: the router picks a target and fails over. "
            f"Subjects {c.ROUTER_CHAT}, {c.ROUTER_EMBED}, {c.ROUTER_NATIVE}.",
            parameters=_OP, queue=c.ROUTER_QUEUE, reply="ingressInbox", headers=_DEADLINE),
    Channel("providerOp", "gandalf.provider.{instance}.{op}", (c.ExecRequest,), ("router",),
            "worker", "One attempt on one provider instance (NATS request: the worker "
            "answers the router with Started or Failed and streams the response to "
            "`reply_to`).", parameters={**_INSTANCE, **_OP}, queue="provider.{instance}",
            reply="workerControl", headers=_DEADLINE),
    Channel("workerOp", "gandalf.worker.{worker}.{instance}.{op}", (c.ExecRequest,),
            ("router",), "worker", "A coalescable attempt sent to one chosen worker of "
            "the instance (rendezvous hashing over presence), no queue group.",
            parameters={"worker": "`Presence.worker`.", **_INSTANCE, **_OP},
            reply="workerControl", headers=_DEADLINE),
    Channel("workerControl", None, (c.Started, c.Failed), ("worker",), "router",
            "The reply to an exec request: the first byte went out (no more failover) "
            "or the attempt failed before any byte."),
    Channel("ingressInbox", None,
            (c.Head, c.Chunk, c.End, c.Complete, c.ErrorReply, c.Alive),
            ("worker", "router"), "ingress",
            f"The ingress's per-process reply inbox (`{c.INBOX_PREFIX}.*`): the "
            "response in sequence, and `Alive` every "
            f"{liveness.HEARTBEAT_S:g} s while a process holds the request "
            f"(silence for {liveness.LIVENESS_S:g} s: it died)."),
    Channel("cancel", c.CANCEL, (c.Cancel,), ("ingress", "router"), "worker",
            "A client went away: abort its upstream call (broadcast)."),
    Channel("health", "gandalf.health.{instance}", (c.Health,), ("worker",),
            "router, worker", "A breaker transition of an instance.", parameters=_INSTANCE),
    Channel("presence", "gandalf.presence.{instance}", (c.Presence,), ("worker",),
            "router, worker", f"A worker's heartbeat every {c.PRESENCE_INTERVAL:g} s, "
            "and once more when it leaves.", parameters=_INSTANCE),
    Channel("presenceHello", c.PRESENCE_HELLO, (), ("router",), "worker",
            "Empty body: workers announce themselves at once."),
    Channel("pingRouter", c.PING_ROUTER, (), ("ingress",), "router",
            "Readiness ping (empty body).", queue=c.ROUTER_QUEUE, reply="pong"),
    Channel("pingAdmin", c.PING_ADMIN, (), ("ingress",), "admin",
            "Readiness ping (empty body).", queue=c.ADMIN_QUEUE, reply="pong"),
    Channel("pingUsage", c.PING_USAGE, (), ("ingress",), "usage",
            "Readiness ping (empty body).", reply="pong"),
    Channel("pingProvider", "gandalf.ping.provider.{instance}", (), ("ingress",), "worker",
            "Readiness ping of an instance's worker pool (empty body).",
            parameters=_INSTANCE, reply="pong"),
    Channel("pong", None, (c.Pong,), ("router", "admin", "usage", "worker"), "ingress",
            "The answer to a readiness ping."),
    Channel("adminHttp", c.ADMIN_HTTP, (c.AdminRequest,), ("ingress",), "admin",
            "One `/admin/v1/*` call, signed with the bus secret (callersig).",
            queue=c.ADMIN_QUEUE, reply="adminResponse"),
    Channel("adminResponse", None, (c.AdminResponse,), ("admin",), "ingress",
            "The admin API's answer."),
    Channel("adminOpenapi", c.ADMIN_OPENAPI, (), ("ingress",), "admin",
            "Ask for the admin API's part of /openapi.json (JSON `{paths, schemas}`).",
            content_type=JSON),
    Channel("cachePurge", c.CACHE_PURGE, (c.CachePurge,), ("admin",), "ingress",
            "Drop cached responses (all, or one model and/or key)."),
    Channel("usage", c.USAGE_SUBJECT, (c.UsageEvent,), ("ingress",), "usage",
            "One finished request as billed, on JetStream.", content_type=JSON,
            headers=("Nats-Msg-Id",),
            extra={"x-jetstream": {"stream": c.USAGE_STREAM, "subjects": [c.USAGE_SUBJECTS],
                                   "durable": c.USAGE_DURABLE,
                                   "dedup": "Nats-Msg-Id = request id"}}),
    Channel("usageStarted", c.USAGE_STARTED_SUBJECT, (c.UsageStarted,), ("ingress",), "usage",
            "An admitted request, before its answer (the first response byte waits for its "
            "ack): a started event with no finished one within the deadline becomes a "
            "provisional, estimated row.", content_type=JSON, headers=("Nats-Msg-Id",),
            extra={"x-jetstream": {"stream": c.USAGE_STREAM, "durable": c.USAGE_DURABLE,
                                   "dedup": "Nats-Msg-Id = request id + "
                                            + repr(c.USAGE_STARTED_MSG_ID_SUFFIX)}}),
)

#: Stores that are not subjects: KV buckets (NATS KV) and the object store.
STORES: dict[str, dict[str, str]] = {
    records.KEYS_BUCKET: {"kind": "kv", "writer": "admin", "readers": "every service",
                          "value": "API key records (records.py)"},
    records.CONFIG_BUCKET: {"kind": "kv", "writer": "admin", "readers": "every service",
                            "value": "orgs, teams, providers, routes, JWT settings"},
    c.SPEND_BUCKET: {"kind": "kv", "writer": "usage", "readers": "ingress",
                     "value": "Spend per budget scope (`<scope>.<id>`)"},
    c.RESPONSES_BUCKET: {"kind": "kv", "writer": "ingress", "readers": "ingress",
                         "value": "ResponseOwner per stored Responses API id (30-day TTL)"},
    c.BODY_BUCKET: {"kind": "object store", "writer": "ingress", "readers": "worker",
                    "value": "request bodies larger than one NATS message"},
}


DESCRIPTION = (
    "Every subject of the Gandalf pipeline (ingress, router, provider workers, usage, admin) "
    "and every payload, generated from contract.py. Payloads are msgpack-encoded msgspec "
    "Structs (bytes fields are msgpack bin; the JSON schemas show them as base64 strings) "
    "except the USAGE stream, which is JSON. Each operation names its receiving service "
    "(x-receiver) and the services that send on it (x-senders). x-stores lists the NATS KV "
    "buckets and the object store.")
#: Structs that travel in stores rather than on a channel.
STORE_STRUCTS: tuple[type[Any], ...] = (c.Spend, c.ResponseOwner)


def _schemas(structs: list[type[Any]]) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}")
    return components


def _headers(names: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "object",
            "properties": {n: {"type": "string"} for n in names}}


def document() -> dict[str, Any]:
    structs = sorted({m for ch in CHANNELS for m in ch.messages} | set(STORE_STRUCTS),
                     key=lambda t: t.__name__)
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for ch in CHANNELS:
        refs: dict[str, Any] = {}
        names = [m.__name__ for m in ch.messages] or [f"{ch.id}Empty"]
        for m, name in zip(ch.messages or (None,), names, strict=True):
            msg: dict[str, Any] = {"name": name, "contentType": ch.content_type}
            if m is not None:
                msg["payload"] = {"$ref": f"#/components/schemas/{name}"}
                if m.__doc__:
                    msg["summary"] = m.__doc__.strip().splitlines()[0]
            else:
                msg["summary"] = "empty body"
            if ch.headers:
                msg["headers"] = _headers(ch.headers)
            messages.setdefault(name, msg)
            refs[name] = {"$ref": f"#/components/messages/{name}"}
        entry: dict[str, Any] = {"address": ch.address, "description": ch.description,
                                 "messages": refs}
        if ch.parameters:
            entry["parameters"] = {k: {"description": v} for k, v in ch.parameters.items()}
        entry.update(ch.extra)
        channels[ch.id] = entry
        op: dict[str, Any] = {"action": "receive", "channel": {"$ref": f"#/channels/{ch.id}"},
                              "x-receiver": ch.receiver, "x-senders": list(ch.senders)}
        if ch.queue:
            op["bindings"] = {"nats": {"queue": ch.queue}}
        if ch.reply:
            op["reply"] = {"channel": {"$ref": f"#/channels/{ch.reply}"}}
        operations[f"receive_{ch.id}"] = op
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Gandalf bus", "version": "1",
                 "description": DESCRIPTION},
        "defaultContentType": MSGPACK,
        "servers": {"nats": {"host": "localhost:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas(structs)},
        "x-stores": STORES,
    }


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, width=100, allow_unicode=True)


DEFAULT_PATH = Path("docs/asyncapi.yaml")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
