"""Twin runs: the same experiment in TensorFlow Federated, as an independent cross-check.

:func:`run_twin` exports an experiment to plain files (client partitions, validation and
test sets, initial weights, every client's batch order, the clients of every round),
runs it in TFF 0.87 in its own environment (``nox -s tff`` builds ``.nox/tff-env``) and
in the sandbox, and writes both sides and their comparison into ``<run dir>/twin/``.
See ``docs/twins.md``.

Importing this package imports no TensorFlow, torch or Flower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def run_twin(config_path: str | Path, overrides: list[str] | None = None) -> Path:
    """Run a config in the sandbox and in TFF; return the ``twin/`` directory (see runner)."""
    from sandbox.engine.twin.runner import run_twin as run

    return run(config_path, overrides)


def export_experiment(cfg: Any, out_dir: Path) -> dict:
    """Write the twin inputs of ``cfg`` into ``out_dir`` (see :mod:`.export`)."""
    from sandbox.engine.twin.export import export_experiment as export

    return export(cfg, out_dir)


__all__ = ["export_experiment", "run_twin"]
