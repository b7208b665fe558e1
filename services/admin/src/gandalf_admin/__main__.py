"""``python -m gandalf_admin``: the admin service (what ``gandalf admin`` runs)."""

from gandalf_common.callersig import load_bus_secret
from gandalf_common.servicemain import Built, Context, run

from .app import AdminService


def build(ctx: Context) -> Built:
    load_bus_secret(required=True)  # before any wait: a startup error of one line
    return [AdminService(ctx.cfg, ctx.cfg.database.url)], None


run("admin", build)
