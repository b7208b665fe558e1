"""``python -m gandalf_router``: one router (what ``gandalf router`` runs)."""

from gandalf_common.live import LiveConfig, LiveService
from gandalf_common.servicemain import Built, Context, run

from .app import RouterService


def build(ctx: Context) -> Built:
    live = LiveConfig(ctx.cfg)
    return [LiveService(live, keys=False), RouterService(ctx.cfg, live)], None


run("router", build)
