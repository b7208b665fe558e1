"""``python -m gandalf_usage``: the usage service (what ``gandalf usage`` runs).
The billing tools are ``python -m gandalf_usage.cli replay|export``."""

from gandalf_common.servicemain import Built, Context, run

from .app import UsageService


def build(ctx: Context) -> Built:
    return [UsageService(ctx.cfg.database.url)], None


run("usage", build)
