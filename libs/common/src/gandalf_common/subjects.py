"""Every NATS subject, queue group, stream and bucket name Gandalf uses.

This is the only module where subject strings are written down; the payloads
that travel on them are in :mod:`gandalf_common.messages`.

Flow of one request::

    ingress --ROUTER_CHAT/ROUTER_EMBED (reply = ingress inbox)--> router (queue "router")
    router  --provider_subject(instance, op) (request/reply, ctl)--> worker (queue per instance)
    worker  --chunks / complete--> ingress inbox      (reply_to in the ExecRequest)
    worker  --Started / Failed-->  router ctl inbox   (the NATS reply of the exec request)
    ingress --CANCEL--> every worker                   (client went away)
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "gandalf"

#: ingress -> router, one subject per operation; queue group ROUTER_QUEUE.
ROUTER_CHAT: Final = "gandalf.router.chat"
ROUTER_EMBED: Final = "gandalf.router.embed"
ROUTER_WILDCARD: Final = "gandalf.router.*"
ROUTER_QUEUE: Final = "router"

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


def health_subject(instance: str) -> str:
    """worker -> routers: breaker transitions and latency samples."""
    return f"gandalf.health.{instance}"


def router_op_subject(op: str) -> str:
    return f"gandalf.router.{op}"
