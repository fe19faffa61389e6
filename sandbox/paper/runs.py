"""Run a section's expanded configs and average their results over seeds.

A section config is a sweep file (:mod:`sandbox.engine.sweep`): an experiment plus a
``[sweep]`` table whose ``seeds = N`` repeats every point over N experiment seeds.
:func:`run_points` runs every (point, seed) with :func:`sandbox.engine.api.run` and keeps
what the report needs from each run; :func:`by_point` groups the rows of one point.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sandbox.core.config import Config
from sandbox.core.errors import SandboxError
from sandbox.core.results import best_row
from sandbox.engine.api import run
from sandbox.engine.preflight import preflight
from sandbox.engine.sweep import load_sweep

#: Output settings of every run of the report (nothing it does not read).
QUIET = {"output.progress": False, "output.plot": False, "output.tensorboard": False,
         "output.checkpoint": False, "output.save_weights": False}


def expand(path: Path, overrides: dict[str, Any] | None = None
           ) -> list[tuple[dict[str, Any], Config]]:
    """The validated (point, config) pairs of a sweep file, every one pre-flight checked."""
    _, points = load_sweep(path, {**QUIET, **(overrides or {})})
    for combo, cfg in points:
        try:
            preflight(cfg)
        except SandboxError as exc:
            raise type(exc)(f"{path} [{combo}]: {exc}", problems=exc.problems) from None
    return points


def points_hash(points: list[tuple[dict[str, Any], Config]]) -> str:
    """Hash of every resolved config a section runs (output settings excluded)."""
    text = json.dumps([[combo, cfg.config_hash()] for combo, cfg in points],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_points(points: list[tuple[dict[str, Any], Config]], runs_dir: Path,
               label: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every point; one row each: the point, seed, accuracies, ε, audit, curve."""
    rows = []
    for combo, cfg in points:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(
            update={"dir": str(runs_dir)})})
        result = run(cfg)
        best = best_row(result.rounds) or result.rounds[-1]
        canaries = result.privacy.get("audit", {}).get("canaries")
        rows.append({
            **(label or {}), **{k: v for k, v in combo.items() if k != "seed"},
            "baseline": bool(combo.get("baseline", False)), "seed": cfg.seed,
            "config_hash": result.config_hash,
            "final_val_accuracy": result.final["central_val_accuracy"],
            "final_test_accuracy": result.final["central_test_accuracy"],
            "best_round": best["round"],
            "best_round_test_accuracy": best["central_test_accuracy"],
            "epsilon": result.epsilon,
            "epsilon_upper_bound": None if result.epsilon is None
            else result.epsilon_upper_bound,
            "audit_epsilon_lower_bound": None if canaries is None
            else canaries["epsilon_lower_bound"],
            "audit_auc": None if canaries is None else canaries["auc_included_vs_excluded"],
            "val_accuracy_per_round": [r["central_val_accuracy"] for r in result.rounds],
            "stop_reason": result.stop_reason.value,
            "wall_s": result.wall_s, "round_seconds": list(result.round_seconds),
        })
    return rows


#: Row keys that are measured time, not results: kept out of the numbers.
TIMING_KEYS = ("wall_s", "round_seconds")


def numbers_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def by_point(rows: list[dict[str, Any]], keys: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by the values of ``keys`` (the seeds of one point), in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups
