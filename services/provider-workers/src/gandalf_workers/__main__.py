"""``python -m gandalf_workers``: provider worker pools (what ``gandalf worker`` runs)."""

import argparse

from gandalf_common.live import LiveConfig, LiveService
from gandalf_common.servicemain import Built, Context, run

from .app import WorkerService


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", action="append", default=[],
                        help="serve only this provider instance (repeatable)")


def build(ctx: Context) -> Built:
    live = LiveConfig(ctx.cfg)
    workers = WorkerService(ctx.cfg, ctx.args.provider or None, live=live)
    return [LiveService(live, keys=False), workers], None


run("workers", build, add_arguments=arguments)
