"""Study reports, the same for both backends (KerasTuner trials are stored as Optuna trials).

``<output_dir>/<study>/``::

    study.db | study.journal   Optuna storage (open with optuna-dashboard)
    trials.csv                 one row per trial: state, values, params, rounds, costs, reason
    best_config.toml           the best trial's config, re-runnable with `fedsandbox run`
                               (best = highest validation accuracy; its test accuracy is
                               reported beside it, never used to choose)
    best_model/                its weights.npz, config.toml and metrics
    history.png                objective per trial and best so far
    importances.json/.png      parameter importances (fANOVA) when there is enough data
    pareto.png                 multi-objective studies: all trials, Pareto front, ε limit
    privacy.json               privacy cost of the whole search
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

from search.objective import trial_ledger
from search.optuna_backend import INTERRUPTED, interrupted_trials

if TYPE_CHECKING:
    import optuna

    from search.config import Study


LABELS = {"accuracy": "final validation accuracy (server-held set)",
          "epsilon": "ε (max over privacy scopes)",
          "client_compute": "client compute (M per-example gradients)"}


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
    _plot_history(study, trials, out / "history.png")
    importances = _importances(optuna_study)
    if importances:
        (out / "importances.json").write_text(json.dumps(importances, indent=2) + "\n")
        _plot_importances(importances, out / "importances.png")
    if len(study.settings.objectives) > 1:
        _plot_pareto(study, optuna_study, out / "pareto.png")
    privacy = privacy_cost(study, optuna_study)
    (out / "privacy.json").write_text(json.dumps(privacy, indent=2, default=str) + "\n")
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    summary = {
        "study": study.settings.name, "backend": study.settings.backend,
        "settings": study.settings.model_dump(mode="json"), "states": states,
        "stop_reason": stop_reason,
        "selection": "objective 'accuracy' = final central_val_accuracy (server-held "
                     "validation set); test_accuracy = global test set, reported only",
        "best": None if best is None else {
            "number": best.number, "values": best.values, "params": best.params,
            "validation_accuracy": best.user_attrs.get("accuracy"),
            "test_accuracy": best.user_attrs.get("test_accuracy"),
            "run_dir": best.user_attrs.get("run_dir")},
        "client_rounds_total": sum(t.user_attrs.get("client_rounds", 0) for t in trials),
        "privacy": {k: privacy[k] for k in ("epsilon_composed", "epsilon_naive_sum")
                    if k in privacy},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return out


def _write_trials_csv(study: Study, trials, path: Path, interrupted: set[int]) -> None:
    """One row per trial; interrupted trials (FAIL) give ``interrupted`` as fail_reason."""
    params = [p.name for p in study.space.params]
    attrs = ["test_accuracy", "rounds_completed", "client_rounds", "client_compute", "epsilon",
             "fail_reason", "reason", "run_dir"]
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
    """Composed ε of every trial that touched the data, the naive sum, and PS22 if it applies."""
    from sandbox.core.privacy import PrivacyLedger
    from sandbox.core.privacy.tuning import random_stopping_epsilon

    ledgers, names = [], []
    for t in optuna_study.get_trials(deepcopy=False):
        ledger = trial_ledger(t.user_attrs.get("run_dir", ""))
        if ledger is not None and ledger.mechanisms:
            ledgers.append(ledger)
            names.append(f"trial-{t.number}")
    if not ledgers:
        return {"dp": False, "note": "no trial applied a DP mechanism"}
    accountant = study.base.privacy.accountant
    merged = PrivacyLedger.compose(ledgers, sources=names)
    report = merged.report()
    composed = {s: v[accountant] for s, v in report["scopes"].items()}
    naive = {s: sum(led.epsilon(s, accountant) for led in ledgers if s in led.scopes)
             for s in merged.scopes}
    result = {
        "dp": True, "delta": merged.delta, "accountant": accountant,
        "trials_with_dp": len(ledgers),
        "composition": report["composition"],
        "epsilon_composed": max(composed.values()),
        "epsilon_naive_sum": max(naive.values()),
        "per_scope": {s: {"composed": composed[s], "naive_sum": naive[s]} for s in composed},
        "budget": study.settings.privacy_budget or None,
    }
    mean = optuna_study.user_attrs.get("n_trials_drawn")
    if study.settings.trial_distribution == "poisson":
        worst = max(merged.scopes, key=lambda s: composed[s])
        result["random_stopping"] = random_stopping_epsilon(
            [led.history(worst) for led in ledgers], merged.delta,
            mean_trials=float(study.settings.n_trials))
        result["random_stopping"]["n_trials_drawn"] = mean
    else:
        result["random_stopping"] = {
            "applies": False,
            "why": "Papernot & Steinke (2022) bound needs a random number of trials: set "
                   "study.trial_distribution = 'poisson'"}
    return result


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_history(study: Study, trials, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}
    best, xs, ys = -math.inf, [], []
    for t in trials:
        acc = t.user_attrs.get("accuracy")
        if acc is None or not math.isfinite(acc):
            continue
        ax.scatter(t.number, acc, color=colors.get(t.state.name, "gray"), s=18)
        if t.state.name == "COMPLETE":
            best = max(best, acc)
            xs.append(t.number)
            ys.append(best)
    ax.step(xs, ys, where="post", color="black", label="best complete so far")
    for state, color in colors.items():
        ax.scatter([], [], color=color, label=state.lower())
    ax.set_xlabel("trial")
    ax.set_ylabel("final validation accuracy")
    ax.set_title(f"{study.settings.name}: optimization history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _importances(optuna_study) -> dict[str, float]:
    import warnings

    import optuna

    if len([t for t in optuna_study.trials if t.state.name == "COMPLETE"]) < 4:
        return {}
    try:
        target = None if len(optuna_study.directions) == 1 else (lambda t: t.values[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(
                optuna_study, target=target).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}  # too few complete trials or no variation


def _plot_importances(importances: dict[str, float], path: Path) -> None:
    plt = _pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA, validation accuracy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pareto(study: Study, optuna_study, path: Path) -> None:
    from optuna.trial import TrialState

    plt = _pyplot()
    objectives = study.settings.objectives
    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in optuna_study.best_trials}
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        for on_front in (False, True):
            pts = [(t.values[j], t.values[i]) for t in complete if (t.number in front) == on_front]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=30 if on_front else 14,
                           color="tab:red" if on_front else "tab:gray",
                           label="Pareto front" if on_front else "trials")
        if objectives[j] == "epsilon" and study.settings.epsilon_max:
            ax.axvline(study.settings.epsilon_max, ls="--", color="black", label="ε limit")
        ax.set_xlabel(LABELS[objectives[j]])
        ax.set_ylabel(LABELS[objectives[i]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{study.settings.name}: Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
