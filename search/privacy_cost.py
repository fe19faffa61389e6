"""``privacy.json`` of a study: what the whole search spent, and what that rests on.

Every trial's run ledger and its noised evaluations' ledger (:mod:`search.evaluation`)
compose per scope (sequential composition, :meth:`PrivacyLedger.compose`); a run that a
later trial continued from its checkpoint counts once. Beside the composition: the naive
sum, whether the composed ε is an upper bound (the ledgers' caveats: seeded noise,
shuffled DP-SGD batches), what the noised evaluation rests on (its noise source, and the
exact values the trial directories keep), and the Papernot–Steinke bound where its
premises hold (:mod:`search.random_stopping`).

The study's ε (``epsilon``) is that bound when it applies, else the composition. With
``study.release = "best_only"`` and the bound applying, the composition is withheld: it
grows with the number of trials K, which the bound assumes nobody learns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.evaluation import EVAL_KIND
from search.objective import superseded_runs, trial_ledgers
from search.random_stopping import random_stopping

if TYPE_CHECKING:
    import optuna

    from sandbox.core.privacy import PrivacyLedger
    from search.config import Study

#: Keys of the composition that reveal how many trials ran.
_COUNTING = ("ledgers", "trials_with_dp", "epsilon_composed", "epsilon_naive_sum",
             "per_scope", "noised_evaluation")


def privacy_cost(study: Study, optuna_study: optuna.Study) -> dict[str, Any]:
    """Contents of ``privacy.json`` (see the module docstring)."""
    trials = optuna_study.get_trials(deepcopy=False)
    superseded = superseded_runs(t.user_attrs for t in trials)
    per_trial = {t.number: parts for t in trials
                 if (parts := trial_ledgers(t.user_attrs, superseded))}
    if not per_trial:
        return {"dp": False, "note": "no trial applied a DP mechanism", "epsilon": None,
                "random_stopping": {"applies": False, "why": "no DP mechanism"},
                "evaluation": evaluation_statement(study, [])}
    result = _composition(study, per_trial)
    result["random_stopping"] = stopping = random_stopping(
        study, optuna_study, per_trial, result["delta"])
    if stopping["applies"]:
        result |= {"epsilon": stopping["epsilon"], "epsilon_method": stopping["method"]}
        if study.settings.release == "best_only":
            result = {k: v for k, v in result.items() if k not in _COUNTING}
            result["withheld"] = ("the composition over trials: it grows with the number "
                                  "of trials K, which the bound assumes secret")
    return result


def _composition(study: Study, per_trial: dict[int, list[PrivacyLedger]]) -> dict[str, Any]:
    from sandbox.core.privacy import PrivacyLedger

    ledgers, names = [], []
    for number, parts in per_trial.items():
        ledgers += parts
        names += [f"trial-{number}"] * len(parts)
    accountant = study.base.privacy.accountant
    merged = PrivacyLedger.compose(ledgers, sources=names)
    report = merged.report()
    composed = {s: v[accountant] for s, v in report["scopes"].items()}
    naive = {s: sum(led.epsilon(s, accountant) for led in ledgers if s in led.scopes)
             for s in merged.scopes}
    evaluations = [m for m in merged.mechanisms if m.kind == EVAL_KIND]
    return {
        "dp": True, "delta": merged.delta, "accountant": accountant,
        "epsilon": max(composed.values()),
        "epsilon_method": "sequential composition of every trial (max over scopes)",
        "upper_bound": merged.upper_bound, "caveats": merged.caveats,
        "ledgers": len(ledgers), "trials_with_dp": len(per_trial),
        "composition": report["composition"],
        "epsilon_composed": max(composed.values()),
        "epsilon_naive_sum": max(naive.values()),
        "per_scope": {s: {"composed": composed[s], "naive_sum": naive[s]} for s in composed},
        "budget": study.settings.privacy_budget or None,
        "noised_evaluation": None if not evaluations else {
            "releases": len(evaluations),
            "noise_multiplier": evaluations[0].noise_multiplier,
            "mechanism": "Gaussian of std z·√2 on a (sum, count) pair of L2 sensitivity √2: "
                         "(correct, examples) charged to each evaluated client's scope when "
                         "the engine weighs clients by examples; (Σ accuracies, clients) "
                         "charged to the federation scope under client-level DP"},
        "evaluation": evaluation_statement(study, evaluations),
    }


def evaluation_statement(study: Study, evaluations: list) -> dict[str, Any]:
    """What the objective's privacy rests on: noise source, exact values kept."""
    settings = study.settings
    statement: dict[str, Any] = {"objective": settings.objective_source}
    if not settings.eval_fraction:
        statement["privacy"] = ("the server-held validation set is the server's own data: "
                                "no client data is scored, nothing is charged")
        return statement
    if not settings.eval_noise_multiplier:
        statement["privacy"] = ("not private: the clients' federated validation accuracy is "
                                "used exactly, without noise, and no ε covers it")
        return statement
    sources = sorted({m.noise or "not recorded" for m in evaluations})
    words = {"secure": "OS CSPRNG (os.urandom), fresh in every trial",
             "seeded": "seeded from (study seed, trial slot, round): reproducible, NOT "
                       "private (whoever knows the seed subtracts it)",
             "not recorded": "not recorded"}
    statement["noise_source"] = "; ".join(words[s] for s in sources) or "no release yet"
    where = ("the private work directory " + str(study.work_directory)
             if settings.release == "best_only" else "the trial run directories")
    statement["exact_values_kept"] = (
        f"{where} keep the exact fed_val_accuracy / fed_val_loss of every evaluated round "
        "(metrics.json, metrics.csv, run.json): the evaluation ε covers only the noised "
        "values the tuner saw; publishing those files is not covered")
    return statement
