from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def small_overrides(tmp_path: Path, **extra) -> dict:
    """A federation that trains in about a second: digits, 4 clients, MLP, 3 rounds."""
    base = {
        "rounds": 3,
        "data.num_clients": 4,
        "model.arch": "mlp",
        "model.hidden": [32],
        "output.dir": str(tmp_path / "results"),
        "output.progress": False,
    }
    base.update(extra)
    return base


@pytest.fixture
def small(tmp_path):
    from sandbox import load_config

    def make(**extra):
        return load_config(ROOT / "configs" / "quickstart.toml", small_overrides(tmp_path, **extra))

    return make
