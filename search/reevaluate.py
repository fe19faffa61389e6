"""Re-evaluate a finished study's best configurations over fresh experiment seeds.

A study scores every trial with one experiment seed (the base experiment's ``seed``):
one draw of the data split, initial model, batches and client sampling. The trial that
won on that draw is partly the luckiest one, so its validation score is optimistic, and
one seed gives no spread at all. :func:`reevaluate` takes the study's top-``k`` trials by
validation accuracy (the search's own objective; among the trials with ε ≤
``epsilon_max`` when the study sets that constraint), reruns each one's configuration with
``N`` other experiment seeds and reports, per configuration, the validation and test
accuracy as mean ± 95 % confidence interval over those seeds (:func:`sandbox.core.stats.mean_ci`).
The configurations are ranked by their re-evaluated *validation* mean; test accuracy is
reported beside it and never used to choose.

Writes into ``out_dir`` (default ``<study report>/reevaluation/``)::

    reevaluation.json / .csv   one row per configuration: trial number, parameters, the
                               search's validation score, N, seeds, validation and test
                               mean and 95 % CI half-width, the largest ε and whether it
                               is an upper bound; ranked by validation mean
    runs.csv                   one row per rerun (configuration × seed)
    reevaluation.md            the table
    runs/                      every rerun's results directory

By default the seeds are the ``N`` integers after the base experiment's seed, so none is
the seed the search selected on.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import ConfigError
from sandbox.core.stats import mean_ci
from sandbox.engine.api import run
from sandbox.engine.preflight import validate_config

if TYPE_CHECKING:
    from search.config import Study

#: Per-configuration columns averaged over the seeds.
METRICS = ("val_accuracy", "test_accuracy")


def reevaluate(study_file: str | Path, *, top_k: int = 3, seeds: int | list[int] = 3,
               overrides: dict[str, Any] | None = None,
               out_dir: str | Path | None = None) -> Path:
    """Rerun the study's top-``top_k`` trials over ``seeds``; return ``out_dir``.

    Parameters
    ----------
    study_file : str or Path
        The study file (its storage must hold a finished or stopped study).
    top_k : int
        How many configurations, best validation accuracy first.
    seeds : int or list of int
        A count ``N`` (the ``N`` seeds after the base experiment's) or explicit seeds.
    overrides : dict, optional
        As :func:`search.run_search` (``study.output_dir`` locates the storage).
    out_dir : str or Path, optional
        Where to write; default ``<study report>/reevaluation``.

    Raises
    ------
    ConfigError
        ``top_k`` < 1, bad seeds, or a study without complete (feasible) trials.
    """
    from search.config import Study

    study = Study(study_file, overrides)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"reevaluate: top_k = {top_k!r}; allowed: an integer >= 1")
    seed_list = _seeds(seeds, study.base.seed)
    chosen = top_trials(study, top_k)
    out = Path(out_dir) if out_dir is not None else study.directory / "reevaluation"
    out.mkdir(parents=True, exist_ok=True)
    reruns, summary = [], []
    for trial in chosen:
        rows = [_rerun(study, trial, seed, out / "runs") for seed in seed_list]
        reruns += rows
        summary.append(_summarize(trial, rows))
    summary.sort(key=lambda r: (-r["val_accuracy"], r["trial"]))
    for rank, row in enumerate(summary, 1):
        row["rank"] = rank
    (out / "reevaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_csv(out / "reevaluation.csv", summary)
    _write_csv(out / "runs.csv", reruns)
    (out / "reevaluation.md").write_text(markdown(summary))
    return out


def top_trials(study: Study, k: int) -> list:
    """The ``k`` complete trials with the highest validation accuracy (feasible ones only)."""
    from optuna.trial import TrialState

    from search.study_store import open_study

    optuna_study = open_study(study, create=False)
    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    limit = study.settings.epsilon_max
    feasible = [t for t in complete
                if not limit or t.user_attrs.get("epsilon", math.inf) <= limit]
    if not feasible:
        raise ConfigError(f"reevaluate: study '{study.settings.name}' has no complete trial"
                          + (f" with ε ≤ epsilon_max = {limit:g}" if limit else ""))
    ranked = sorted(feasible, key=lambda t: (-t.values[0], t.number))
    return ranked[:k]


def _seeds(value: int | list[int], base: int) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        return [base + i for i in range(1, value + 1)]
    if (isinstance(value, list) and value and len(set(value)) == len(value)
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31
                    for s in value)):
        return list(value)
    raise ConfigError(f"reevaluate: seeds = {value!r}; allowed: a count 1..1000 (the seeds "
                      "after the experiment's) or a list of distinct seeds in 0..2³¹−1")


def _rerun(study: Study, trial, seed: int, runs: Path) -> dict[str, Any]:
    cfg = study.trial_config(trial.params, name=f"reeval-t{trial.number}-s{seed}")
    raw = cfg.to_dict() | {"seed": seed}
    raw["output"] = raw["output"] | {"dir": str(runs), "progress": False}
    cfg = validate_config(raw, source=f"{study.path} trial {trial.number}, seed {seed}")
    result = run(cfg)
    return {"trial": trial.number, "seed": seed,
            "val_accuracy": result.final["central_val_accuracy"],
            "test_accuracy": result.final["central_test_accuracy"],
            "epsilon": result.epsilon,
            "epsilon_upper_bound": None if result.epsilon is None
            else result.epsilon_upper_bound,
            "stop_reason": result.stop_reason.value, "config_hash": result.config_hash}


def _summarize(trial, rows: list[dict[str, Any]]) -> dict[str, Any]:
    point: dict[str, Any] = {"trial": trial.number, "params": dict(trial.params),
                             "search_val_accuracy": trial.values[0],
                             "n": len(rows), "seeds": [r["seed"] for r in rows]}
    for metric in METRICS:
        estimate = mean_ci([r[metric] for r in rows])
        point[metric], point[f"{metric}_ci95"] = estimate.mean, estimate.half_width
    epsilons = [r["epsilon"] for r in rows if r["epsilon"] is not None]
    point["epsilon"] = max(epsilons) if epsilons else None
    point["epsilon_upper_bound"] = (all(r["epsilon_upper_bound"] for r in rows)
                                    if epsilons else None)
    return point


def markdown(summary: list[dict[str, Any]]) -> str:
    """The ranked table: mean ± 95 % CI over N seeds (no interval for N = 1)."""
    lines = ["| rank | trial | search val | N | val accuracy | test accuracy | ε | params |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary:
        cells = [str(row["rank"]), str(row["trial"]), f"{row['search_val_accuracy']:.4f}",
                 str(row["n"])]
        for metric in METRICS:
            half = row[f"{metric}_ci95"]
            cells.append(f"{row[metric]:.4f}" + ("" if half is None else f" ± {half:.4f}"))
        eps = row["epsilon"]
        cells.append("–" if eps is None else f"{eps:.3g}" + (
            "" if row["epsilon_upper_bound"] else " (not an upper bound)"))
        cells.append(", ".join(f"{k}={_short(v)}" for k, v in row["params"].items()))
        lines.append("| " + " | ".join(cells) + " |")
    return ("Top configurations by validation accuracy, rerun over N experiment seeds: "
            "mean ± 95 % CI half-width; ranked by validation, test reported only.\n\n"
            + "\n".join(lines) + "\n")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v
                             for k, v in row.items()})
