"""Federated architecture and hyperparameter search: Optuna or KerasTuner over whole runs.

    fedsandbox search configs/search_digits.toml [--resume] [--dry-run]
        [--set study.n_trials=40] [--set experiment.rounds=6] [--set space.lr.high=0.3]

>>> from search import run_search               # doctest: +SKIP
>>> study_dir = run_search("configs/search_digits.toml")

The search space is framework-free (:mod:`search.space`); each trial is one federated
experiment (:mod:`search.objective`); reports are the same for both backends
(:mod:`search.report`). Importing this package imports no Optuna or KerasTuner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def dry_run(path: str | Path, overrides: dict[str, Any] | None = None) -> str:
    """The resolved study, space and base experiment as TOML; nothing is run or written."""
    from search.config import Study

    return Study(path, overrides).describe()


def run_search(path: str | Path, overrides: dict[str, Any] | None = None, *,
               resume: bool = False) -> Path:
    """Run (or ``resume``) the study in ``path``; return its report directory.

    ``overrides`` name their table (``study.seed``, ``experiment.rounds``,
    ``space.lr.high``); a key without a prefix is a ``[study]`` key.
    """
    from search.config import Study
    from search.report import write_report

    study = Study(path, overrides)
    if study.settings.backend == "kerastuner":
        from search.study_store import open_study, prepare_storage

        storage = prepare_storage(study, resume=resume)
        optuna_study = open_study(study, create=not resume, storage=storage)
        from search.kerastuner_backend import run_kerastuner

        stop_reason = run_kerastuner(study, optuna_study, resume=resume)
    else:
        from search.workers import run_optuna

        optuna_study, stop_reason = run_optuna(study, resume=resume, study_path=Path(path),
                                               overrides=overrides or {})
    report = write_report(study, optuna_study, stop_reason=stop_reason)
    best = json.loads((report / "summary.json").read_text())
    if best["best"] is None:  # the CLI prints the best trial; say why there is none
        print(f"no best trial: {best['no_best']}")
    return report


__all__ = ["dry_run", "run_search"]
