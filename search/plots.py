"""The study report's figures: history, importances, Pareto front (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.config import Study

#: Complete trials needed before importances are computed: fANOVA fits a random forest
#: to (parameters -> objective); on a handful of points its ranking is noise.
MIN_IMPORTANCE_TRIALS = 10


def objective_labels(study: Study) -> dict[str, str]:
    """Axis label of each objective, naming where "accuracy" comes from."""
    return {"accuracy": f"final validation accuracy\n({study.settings.objective_source})",
            "epsilon": "ε of the trial's run (max over privacy scopes)",
            "client_compute": "client compute (M per-example gradients)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(study: Study, trials, path: Path) -> None:
    """Each trial's objective at its last round, and the best complete trial so far."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}
    labels = {"COMPLETE": "complete (final round)", "PRUNED": "pruned (round it stopped at)",
              "FAIL": "failed (last round it reached)"}
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
    ax.step(xs, ys, where="post", color="black", label="best complete trial so far")
    for state, color in colors.items():
        ax.scatter([], [], color=color, label=labels[state])
    ax.set_xlabel("trial number (order in which trials were asked)")
    ax.set_ylabel(f"validation accuracy at the trial's last round\n"
                  f"({study.settings.objective_source})", fontsize="small")
    ax.set_title(f"{study.settings.name}: optimization history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def importances(optuna_study) -> tuple[dict[str, float], str]:
    """fANOVA importances of the first objective, or ``({}, why not)``."""
    import warnings

    import optuna

    complete = [t for t in optuna_study.trials if t.state.name == "COMPLETE"]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return {}, (f"not computed: {len(complete)} complete trial(s), fewer than "
                    f"{MIN_IMPORTANCE_TRIALS} (a random forest on so few points ranks noise)")
    try:
        target = None if len(optuna_study.directions) == 1 else (lambda t: t.values[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(optuna_study, target=target)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return {}, f"not computed: {type(exc).__name__}: {exc}"
    return ({k: float(v) for k, v in values.items()},
            f"fANOVA over {len(complete)} complete trials")


def plot_importances(values: dict[str, float], how: str, path: Path) -> None:
    plt = _pyplot()
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.4))
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel("share of the variance of final validation accuracy")
    ax.set_title(f"parameter importances ({how})", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(study: Study, optuna_study, path: Path) -> None:
    from optuna.trial import TrialState

    plt = _pyplot()
    labels = objective_labels(study)
    objectives = study.settings.objectives
    complete = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in optuna_study.best_trials}
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs, strict=True):
        for on_front in (False, True):
            pts = [(t.values[j], t.values[i]) for t in complete if (t.number in front) == on_front]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=30 if on_front else 14,
                           color="tab:red" if on_front else "tab:gray",
                           label="Pareto front" if on_front else "trials")
        if objectives[j] == "epsilon" and study.settings.epsilon_max:
            ax.axvline(study.settings.epsilon_max, ls="--", color="black", label="ε limit")
        ax.set_xlabel(labels[objectives[j]], fontsize="small")
        ax.set_ylabel(labels[objectives[i]], fontsize="small")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{study.settings.name}: Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
