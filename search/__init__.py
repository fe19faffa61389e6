"""Federated architecture and hyperparameter search: Optuna or KerasTuner over whole runs.

    fedsandbox search configs/search_digits.toml [--resume] [--dry-run] [--processes P]
    fedsandbox search configs/search_digits.toml --join    # one more worker, any machine
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
               resume: bool = False, processes: int | None = None) -> Path:
    """Run (or ``resume``) the study in ``path``; return its report directory.

    ``overrides`` name their table (``study.seed``, ``experiment.rounds``,
    ``space.lr.high``); a key without a prefix is a ``[study]`` key. ``processes``:
    Optuna worker processes here (default ``study.workers``); more may :func:`join_search`.
    """
    from search.config import Study
    from search.report import write_report

    study = Study(path, overrides)
    _optuna_only(study, processes)
    if study.settings.backend == "kerastuner":
        from search.study_store import open_study, prepare_storage

        storage = prepare_storage(study, resume=resume)
        optuna_study = open_study(study, create=not resume, storage=storage)
        from search.kerastuner_backend import run_kerastuner

        stop_reason = run_kerastuner(study, optuna_study, resume=resume)
    else:
        from search.workers import run_optuna

        optuna_study, stop_reason = run_optuna(study, resume=resume, study_path=Path(path),
                                               overrides=overrides or {}, processes=processes)
    report = write_report(study, optuna_study, stop_reason=stop_reason)
    best = json.loads((report / "summary.json").read_text())
    if best["best"] is None:  # the CLI prints the best trial; say why there is none
        print(f"no best trial: {best['no_best']}")
    return report


def join_search(path: str | Path, overrides: dict[str, Any] | None = None, *,
                processes: int | None = None) -> str:
    """Add ``processes`` workers (default 1) to the running study in ``path``.

    Returns why the study ended (the process that created it writes the report).
    """
    from search.config import Study
    from search.workers import run_optuna

    study = Study(path, overrides)
    _optuna_only(study, processes, join=True)
    _, stop_reason = run_optuna(study, resume=False, study_path=Path(path),
                                overrides=overrides or {}, join=True, processes=processes)
    return stop_reason


def _optuna_only(study, processes: int | None, *, join: bool = False) -> None:
    """``--join`` and ``--processes`` are for Optuna studies (KerasTuner runs one process)."""
    from sandbox.core.errors import ConfigError

    backend = study.settings.backend
    if backend != "optuna" and (join or processes is not None):
        option = "--join" if join else f"--processes {processes}"
        raise ConfigError(f"{option}: study.backend = {backend!r} runs in one process; "
                          "allowed with backend 'optuna' only")
    if processes is not None and processes < 1:
        raise ConfigError(f"--processes {processes}: allowed: an integer >= 1 (worker "
                          "processes here)")
    several = join or (processes or study.settings.workers) > 1
    if several and study.settings.privacy_budget:
        option = "--join" if join else f"--processes {processes}"
        raise ConfigError(f"{option} with study.privacy_budget: concurrent trials cannot see "
                          "each other's spending, so the budget could be overrun; allowed: "
                          "one worker process for a study with a privacy budget")
    if several and study.dp_possible and not study.base.output.checkpoint:
        option = "--join" if join else f"{processes or study.settings.workers} workers"
        raise ConfigError(
            f"{option} with DP and experiment.output.checkpoint = false: a killed worker's "
            "run leaves its privacy spend only in its checkpoint, so the study's ε would "
            "miss it; allowed: output.checkpoint = true (the default) or one worker")


__all__ = ["dry_run", "join_search", "run_search"]
