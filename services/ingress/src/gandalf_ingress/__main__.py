"""``python -m gandalf_ingress``: the HTTP edge (what ``gandalf ingress`` runs)."""

import argparse

import msgspec

from gandalf_common.listen import bind_socket
from gandalf_common.live import LiveConfig, LiveService
from gandalf_common.servicemain import Built, Context, admin_key_sha256, fail, run

from .app import IngressService


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", help="listen address (overrides server.addr)")


def build(ctx: Context) -> Built:
    cfg = ctx.cfg
    if ctx.args.addr:
        cfg = msgspec.structs.replace(
            cfg, server=msgspec.structs.replace(cfg.server, addr=ctx.args.addr))
    try:
        # Bound before anything starts: a taken port is one line, not a crash later.
        sock = bind_socket(cfg.server.addr)
    except OSError as exc:
        fail(f"cannot listen on {cfg.server.addr}: {exc.strerror or exc}", prog=ctx.prog)
    live = LiveConfig(cfg)
    http = IngressService(cfg, admin_key_sha256=admin_key_sha256(cfg), sock=sock, live=live)
    return [LiveService(live, keys=True)], http


run("ingress", build, add_arguments=arguments)
