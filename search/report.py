"""Study reports, the same for both backends (KerasTuner trials are stored as Optuna trials).

``<output_dir>/<study>/`` with ``study.release = "all"`` (default)::

    study.db | study.journal   Optuna storage (open with optuna-dashboard)
    trials.csv                 one row per trial: state, values, params, rounds, costs, ε and
                               why it is not an upper bound (if so), reason
    best_config.toml           the best trial's config, re-runnable with `fedsandbox run`
                               (best = highest validation accuracy; its test accuracy is
                               reported beside it, never used to choose; with an ε
                               constraint, the best *feasible* trial, and no file at all
                               when no trial is feasible)
    best_model/                its weights.npz, config.toml and metrics
    report.md                  the best trial's validation and test metrics, ε, the search's
                               privacy cost and the commands that reproduce both
    history.png                objective per trial (at its last round) and best so far
    importances.json/.png      parameter importances (fANOVA), from >= 10 complete trials
                               only (report.md says why when there are none)
    pareto.png                 multi-objective studies: all trials, Pareto front, ε limit
    privacy.json               privacy cost of the whole search (:mod:`search.privacy_cost`)
    summary.json               settings, counts, best trial (or why there is none), stop reason
    trials/                    every trial's run directory

With ``study.release = "best_only"`` the report holds the best trial only: report.md,
summary.json and privacy.json without per-trial results or counts, best_config.toml and
best_model/ (weights and config, no metrics). The storage, the trials' run directories
and evaluation ledgers live in ``<output_dir>/<study>.private/``, for the curator alone.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.plots import importances, plot_history, plot_importances, plot_pareto
from search.privacy_cost import privacy_cost
from search.study_store import INTERRUPTED, interrupted_trials

if TYPE_CHECKING:
    import optuna

    from search.config import Study

#: Files of a full report that a best-only release never writes (removed if stale).
PER_TRIAL_FILES = ("trials.csv", "history.png", "importances.json", "importances.png",
                   "pareto.png")


def best_trial(study: Study, optuna_study: optuna.Study):
    """(best trial, ``""``) or (``None``, why there is none).

    Single objective: the best value. Several: the most accurate trial of the Pareto
    front, among the trials with ε ≤ ``epsilon_max`` when that constraint is set; when
    no trial satisfies it there is no feasible best (an infeasible trial is never best).
    """
    from optuna.trial import TrialState

    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None, ("no trial completed a round" if optuna_study.trials else "no trial ran")
    if len(study.settings.objectives) == 1:
        return optuna_study.best_trial, ""
    limit = study.settings.epsilon_max
    feasible = [t for t in complete
                if not limit or t.user_attrs.get("epsilon", math.inf) <= limit]
    if not feasible:
        smallest = min(t.user_attrs.get("epsilon", math.inf) for t in complete)
        return None, (f"no trial satisfies the constraint ε ≤ epsilon_max = {limit:g} "
                      f"(smallest ε of {len(complete)} complete trial(s): {smallest:.4g}): "
                      "there is no feasible best trial")
    numbers = {t.number for t in feasible}
    front = [t for t in optuna_study.best_trials if t.number in numbers] or feasible
    return max(front, key=lambda t: t.values[0]), ""


def write_report(study: Study, optuna_study: optuna.Study, *, stop_reason: str = "") -> Path:
    """Write the study's report directory (see the module docstring); return it."""
    out = study.directory
    out.mkdir(parents=True, exist_ok=True)
    trials = optuna_study.get_trials(deepcopy=False)
    best, no_best = best_trial(study, optuna_study)
    for stale in (*PER_TRIAL_FILES, "best_config.toml"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "best_model", ignore_errors=True)
    how = "not computed: per-trial results are not released (study.release = 'best_only')"
    if study.settings.release == "all":
        how = _write_per_trial_files(study, optuna_study, out)
    if best is not None and best.user_attrs.get("run_dir"):
        _copy_best(study, Path(best.user_attrs["run_dir"]), out)
    privacy = privacy_cost(study, optuna_study)
    (out / "privacy.json").write_text(json.dumps(privacy, indent=2, default=str) + "\n")
    summary = _summary(study, trials, best, no_best, stop_reason, privacy) | {
        "importances": how}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    from search.markdown import report_markdown

    (out / "report.md").write_text(report_markdown(study, summary, privacy, best))
    return out


def _write_per_trial_files(study: Study, optuna_study: optuna.Study, out: Path) -> str:
    """trials.csv and the figures; returns how (or why not) importances were computed."""
    trials = optuna_study.get_trials(deepcopy=False)
    _write_trials_csv(study, trials, out / "trials.csv", interrupted_trials(optuna_study))
    plot_history(study, trials, out / "history.png")
    values, how = importances(optuna_study)
    if values:
        (out / "importances.json").write_text(json.dumps(values, indent=2) + "\n")
        plot_importances(values, how, out / "importances.png")
    if len(study.settings.objectives) > 1:
        plot_pareto(study, optuna_study, out / "pareto.png")
    return how


def _copy_best(study: Study, run_dir: Path, out: Path) -> None:
    """best_config.toml and best_model/; a best-only release copies no metrics (they hold
    the exact federated validation values and the run's per-round history)."""
    shutil.copyfile(run_dir / "config.toml", out / "best_config.toml")
    model_dir = out / "best_model"
    model_dir.mkdir(exist_ok=True)
    names = ("weights.npz", "config.toml")
    if study.settings.release == "all":
        names += ("metrics.csv", "run.json")
    for name in names:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, model_dir / name)


def _summary(study: Study, trials, best, no_best: str, stop_reason: str,
             privacy: dict) -> dict[str, Any]:
    summary = {
        "study": study.settings.name, "backend": study.settings.backend,
        "settings": study.settings.model_dump(mode="json"),
        "release": study.settings.release, "stop_reason": stop_reason,
        "selection": f"objective 'accuracy' = final validation accuracy, "
                     f"{study.settings.objective_source}; test_accuracy = global test "
                     "set, reported only",
        "command": study.command,
        "best": None if best is None else {
            "number": best.number, "values": best.values, "params": best.params,
            "validation_accuracy": best.user_attrs.get("accuracy"),
            "central_val_accuracy": best.user_attrs.get("central_val_accuracy"),
            "test_accuracy": best.user_attrs.get("test_accuracy"),
            "epsilon": best.user_attrs.get("epsilon"),
            "epsilon_upper_bound": best.user_attrs.get("epsilon_upper_bound"),
            "epsilon_caveats": best.user_attrs.get("epsilon_caveats", []),
            "run_dir": best.user_attrs.get("run_dir")},
        "no_best": no_best or None,
        "privacy": {k: privacy.get(k) for k in ("epsilon", "epsilon_method", "upper_bound",
                                                "caveats", "epsilon_composed",
                                                "epsilon_naive_sum") if k in privacy},
    }
    if study.settings.release == "all":
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        summary["states"] = states
        summary["client_rounds_total"] = sum(t.user_attrs.get("client_rounds", 0)
                                             for t in trials)
    return summary


def _write_trials_csv(study: Study, trials, path: Path, interrupted: set[int]) -> None:
    """One row per trial; interrupted trials (FAIL) give ``interrupted`` as fail_reason."""
    params = [p.name for p in study.space.params]
    attrs = ["test_accuracy", "central_val_accuracy", "rounds_completed", "client_rounds",
             "client_compute", "epsilon", "epsilon_upper_bound", "epsilon_caveats",
             "eval_epsilon", "stop_reason", "fail_reason", "reason", "continued_run",
             "run_dir"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", *study.settings.objectives, *params, *attrs,
                         "duration_s"])
        for t in trials:
            values = list(t.values) if t.values else [t.user_attrs.get("accuracy")] + [None] * (
                len(study.settings.objectives) - 1)
            duration = t.duration.total_seconds() if t.duration else None
            row = {a: t.user_attrs.get(a) for a in attrs}
            row["epsilon_caveats"] = "; ".join(row["epsilon_caveats"] or [])
            if t.number in interrupted:
                row["fail_reason"] = INTERRUPTED
            writer.writerow([t.number, t.state.name, *values,
                             *(t.params.get(p) for p in params), *row.values(), duration])
