"""The layering is a checked contract: import-linter on the real tree and on a broken copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("sandbox", "clients", "strategies", "search")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """Run import-linter with ``tree``'s pyproject, importing the packages from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_layer_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("sandbox/core/models.py", "import sandbox.engine.api", "core -> clients"),
    ("sandbox/core/wire.py", "from clients import make_client_app", "core -> clients"),
    ("clients/app.py", "import strategies", "never import each other"),
    ("sandbox/engine/server.py", "import clients.trainer", "public APIs"),
    ("sandbox/core/data.py", "import sandbox.core.wire", "no import cycles"),
    ("sandbox/core/models.py", "import torch", "framework-free"),
])
def test_a_back_up_import_breaks_a_contract(tmp_path, module, line, contract):
    tree = copy_tree(tmp_path)
    path = tree / module
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    path.write_text(text.replace(marker, f"{marker}\n{line}  # deliberate violation\n", 1))
    proc = lint_imports(tree)
    assert proc.returncode != 0, proc.stdout[-2000:]
    broken = [row for row in proc.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), proc.stdout[-3000:]


FRAMEWORKS = ("torch", "tensorflow", "keras", "flwr", "optuna", "ray", "keras_tuner", "opacus")


def frameworks_loaded_by(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON dict as its last line."""
    proc = subprocess.run([sys.executable, "-c", code + "\nprint(json.dumps(report | "
                           f"{{'loaded': [m for m in {FRAMEWORKS!r} if m in sys.modules]}}))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_sandbox_loads_only_the_core():
    """``import sandbox`` and the public names resolve lazily, without any framework."""
    report = frameworks_loaded_by(
        "import json, sys, sandbox\ncfg = sandbox.load_config(None)\n"
        "report = {'names': len([sandbox.Config, sandbox.RunResult, sandbox.run])}")
    assert report == {"names": 3, "loaded": []}


def test_every_core_module_imports_without_frameworks():
    """The core's rule holds for every module of it, not only those a run reaches."""
    report = frameworks_loaded_by(
        "import importlib, json, pkgutil, sys, sandbox.core as core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'sandbox.core.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "report = {'n': len(names)}")
    assert report["n"] >= 15 and report["loaded"] == []
