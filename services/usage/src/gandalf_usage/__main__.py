"""``python -m gandalf_usage``: the usage service (what ``gandalf usage`` runs).
The billing tools are ``python -m gandalf_usage.cli replay|export``."""

from gandalf_common.servicemain import Built, Context, run

from .app import UsageService


def build(ctx: Context) -> Built:
    cfg = ctx.cfg
    return [UsageService(cfg.database.url,
                         started_deadline_s=cfg.usage.deadline_s(cfg.server))], None


run("usage", build)
