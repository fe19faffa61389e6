"""Study reports, the same for both backends (KerasTuner trials are stored as Optuna trials).

``<output_dir>/<study>/``::

    study.db | study.journal   Optuna storage (open with optuna-dashboard)
    trials.csv                 one row per trial: state, values, params, rounds, costs, reason
    best_config.toml           the best trial's config, re-runnable with `fedsandbox run`
                               (best = highest validation accuracy; its test accuracy is
                               reported beside it, never used to choose)
    best_model/                its weights.npz, config.toml and metrics
    report.md                  the best trial's validation and test metrics, ε, the search's
                               privacy cost and the commands that reproduce both
    history.png                objective per trial (at its last round) and best so far
    importances.json/.png      parameter importances (fANOVA), from >= 10 complete trials
                               only (report.md says why when there are none)
    pareto.png                 multi-objective studies: all trials, Pareto front, ε limit
    privacy.json               privacy cost of the whole search (trials' runs and noised
                               evaluations composed; bounds reported only where applied)
    summary.json               settings, counts, best trial, stop reason
    trials/                    every trial's run directory
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.objective import trial_ledgers
from search.optuna_backend import INTERRUPTED, finished_trials, interrupted_trials
from search.plots import importances, plot_history, plot_importances, plot_pareto

if TYPE_CHECKING:
    import optuna

    from search.config import Study


def best_trial(study: Study, optuna_study: optuna.Study):
    """Best trial: single objective -> best value; multi -> most accurate feasible Pareto."""
    from optuna.trial import TrialState

    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if len(study.settings.objectives) == 1:
        return optuna_study.best_trial
    front = optuna_study.best_trials or complete
    limit = study.settings.epsilon_max
    feasible = [t for t in front if not limit or t.user_attrs.get("epsilon", math.inf) <= limit]
    return max(feasible or front, key=lambda t: t.values[0])


def write_report(study: Study, optuna_study: optuna.Study, *, stop_reason: str = "") -> Path:
    out = study.directory
    out.mkdir(parents=True, exist_ok=True)
    trials = optuna_study.get_trials(deepcopy=False)
    _write_trials_csv(study, trials, out / "trials.csv", interrupted_trials(optuna_study))
    best = best_trial(study, optuna_study)
    if best is not None and best.user_attrs.get("run_dir"):
        run_dir = Path(best.user_attrs["run_dir"])
        shutil.copyfile(run_dir / "config.toml", out / "best_config.toml")
        model_dir = out / "best_model"
        model_dir.mkdir(exist_ok=True)
        for name in ("weights.npz", "config.toml", "metrics.csv", "run.json"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, model_dir / name)
    plot_history(study, trials, out / "history.png")
    values, how = importances(optuna_study)
    for stale in ("importances.json", "importances.png"):
        (out / stale).unlink(missing_ok=True)
    if values:
        (out / "importances.json").write_text(json.dumps(values, indent=2) + "\n")
        plot_importances(values, how, out / "importances.png")
    if len(study.settings.objectives) > 1:
        plot_pareto(study, optuna_study, out / "pareto.png")
    privacy = privacy_cost(study, optuna_study)
    (out / "privacy.json").write_text(json.dumps(privacy, indent=2, default=str) + "\n")
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    summary = {
        "study": study.settings.name, "backend": study.settings.backend,
        "settings": study.settings.model_dump(mode="json"), "states": states,
        "stop_reason": stop_reason,
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
            "run_dir": best.user_attrs.get("run_dir")},
        "importances": how,
        "client_rounds_total": sum(t.user_attrs.get("client_rounds", 0) for t in trials),
        "privacy": {k: privacy[k] for k in ("epsilon_composed", "epsilon_naive_sum")
                    if k in privacy},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    from search.markdown import report_markdown

    (out / "report.md").write_text(report_markdown(study, summary, privacy, best))
    return out


def _write_trials_csv(study: Study, trials, path: Path, interrupted: set[int]) -> None:
    """One row per trial; interrupted trials (FAIL) give ``interrupted`` as fail_reason."""
    params = [p.name for p in study.space.params]
    attrs = ["test_accuracy", "central_val_accuracy", "rounds_completed", "client_rounds",
             "client_compute", "epsilon", "eval_epsilon", "stop_reason", "fail_reason",
             "reason", "run_dir"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", *study.settings.objectives, *params, *attrs,
                         "duration_s"])
        for t in trials:
            values = list(t.values) if t.values else [t.user_attrs.get("accuracy")] + [None] * (
                len(study.settings.objectives) - 1)
            duration = t.duration.total_seconds() if t.duration else None
            row = {a: t.user_attrs.get(a) for a in attrs}
            if t.number in interrupted:
                row["fail_reason"] = INTERRUPTED
            writer.writerow([t.number, t.state.name, *values,
                             *(t.params.get(p) for p in params), *row.values(), duration])


def privacy_cost(study: Study, optuna_study: optuna.Study) -> dict[str, Any]:
    """Composed ε of everything that touched the data, the naive sum, and PS22 if applied.

    Every trial's run ledger and its noised evaluations' ledger (:mod:`search.evaluation`)
    compose per scope. The Papernot & Steinke (2022) random-stopping bound is reported
    only when it was applied: a Poisson number of trials was drawn, the backend ran
    exactly that many, and nothing else (a budget) stopped the search earlier.
    """
    from sandbox.core.privacy import PrivacyLedger

    ledgers, names, evaluation = [], [], []
    for t in optuna_study.get_trials(deepcopy=False):
        for ledger in trial_ledgers(t.user_attrs):
            ledgers.append(ledger)
            names.append(f"trial-{t.number}")
            evaluation += [m for m in ledger.mechanisms if m.kind == "eval-gaussian"]
    if not ledgers:
        return {"dp": False, "note": "no trial applied a DP mechanism",
                "random_stopping": {"applies": False, "why": "no DP mechanism"}}
    accountant = study.base.privacy.accountant
    merged = PrivacyLedger.compose(ledgers, sources=names)
    report = merged.report()
    composed = {s: v[accountant] for s, v in report["scopes"].items()}
    naive = {s: sum(led.epsilon(s, accountant) for led in ledgers if s in led.scopes)
             for s in merged.scopes}
    result = {
        "dp": True, "delta": merged.delta, "accountant": accountant,
        "ledgers": len(ledgers),
        "trials_with_dp": len(set(names)),
        "composition": report["composition"],
        "epsilon_composed": max(composed.values()),
        "epsilon_naive_sum": max(naive.values()),
        "per_scope": {s: {"composed": composed[s], "naive_sum": naive[s]} for s in composed},
        "budget": study.settings.privacy_budget or None,
        "noised_evaluation": None if not evaluation else {
            "releases": len(evaluation), "noise_multiplier": evaluation[0].noise_multiplier,
            "mechanism": "Gaussian on (correct, examples) counts, std z·√2, per evaluated "
                         "client scope"},
    }
    per_trial: dict[str, list] = {}  # a trial's run and evaluation are one mechanism
    worst = max(merged.scopes, key=lambda s: composed[s])
    for name, ledger in zip(names, ledgers, strict=True):
        per_trial.setdefault(name, []).extend(ledger.history(worst))
    result["random_stopping"] = _random_stopping(study, optuna_study, merged.delta,
                                                 list(per_trial.values()))
    return result


def _random_stopping(study: Study, optuna_study, delta: float, histories: list) -> dict:
    from sandbox.core.privacy.tuning import random_stopping_epsilon

    drawn = optuna_study.user_attrs.get("n_trials_drawn")
    if drawn is None:
        return {"applies": False,
                "why": "Papernot & Steinke (2022) bound needs a random number of trials: "
                       "set study.trial_distribution = 'poisson'"}
    ran = len(finished_trials(optuna_study))
    if ran != drawn:
        return {"applies": False, "n_trials_drawn": drawn, "trials_run": ran,
                "why": f"the search stopped after {ran} of the {drawn} trials drawn "
                       "(a budget stopped it): the trial count was not the Poisson draw"}
    bound = random_stopping_epsilon(histories, delta,
                                    mean_trials=float(study.settings.n_trials))
    return bound | {"n_trials_drawn": drawn, "trials_run": ran}
