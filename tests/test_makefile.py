"""`make clean` removes build artefacts only; `make reset-state` is the one
target that deletes the gateway's state, says what it deletes, and refuses
while a `gandalf up` holds that state directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gandalf_app.embedded import StateDirLock

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _tree(tmp: Path) -> Path:
    shutil.copy(ROOT / "Makefile", tmp / "Makefile")
    for path in (".venv/bin/gandalf", ".pytest_cache/x", "pkg/__pycache__/m.pyc",
                 ".gandalf/pg/PG_VERSION", ".gandalf/encryption-key"):
        (tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / path).write_text("x")
    return tmp


def _make(tmp: Path, target: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    return subprocess.run(["make", "-s", target], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=30)


def test_clean_keeps_the_state_directory(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert _make(tree, "clean").returncode == 0
    assert not (tree / ".venv").exists() and not (tree / "pkg/__pycache__").exists()
    assert (tree / ".gandalf/encryption-key").exists()
    assert (tree / ".gandalf/pg/PG_VERSION").exists()


def test_reset_state_says_what_it_deletes_and_deletes_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    done = _make(tree, "reset-state")
    assert done.returncode == 0, done.stderr
    assert "encryption key" in done.stdout and ".gandalf" in done.stdout
    assert not (tree / ".gandalf").exists()
    assert (tree / ".venv/bin/gandalf").exists()


def test_reset_state_refuses_while_gandalf_up_runs(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    with StateDirLock(tree / ".gandalf"):
        refused = _make(tree, "reset-state")
    assert refused.returncode != 0
    assert "stop it first" in refused.stderr
    assert (tree / ".gandalf/encryption-key").exists()
