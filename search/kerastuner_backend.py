"""KerasTuner backend: a ``keras_tuner.Tuner`` whose trials are federated experiments.

:class:`FederatedTuner` overrides ``run_trial``: the oracle's ``HyperParameters`` become
a trial config (torch or Keras clients alike), the experiment runs, and its final
validation accuracy is the objective. With the Hyperband oracle, ``tuner/epochs`` is the
number of federated rounds of the trial. Oracles: RandomSearch, BayesianOptimization,
Hyperband. Seeds, the privacy budget and the noised evaluation are handled as for Optuna
(:mod:`search.trials`). Each finished trial is also written to the study's Optuna
storage (same parameters, value, state and attributes), so reports,
``optuna-dashboard`` and the privacy accounting are the same as for Optuna studies."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras_tuner  # noqa: E402

from search.trials import mixed_seed, run_budgeted_trial  # noqa: E402

if TYPE_CHECKING:
    import optuna

    from search.config import Study
    from search.objective import TrialOutcome


class BudgetSpent(keras_tuner.errors.FatalError):
    """The study's client-round budget is used up: stop the search."""


class FederatedTuner(keras_tuner.Tuner):
    """Tuner whose ``run_trial`` runs one federated experiment.

    The study's client-round budget and privacy budget apply exactly as with Optuna
    (:mod:`search.trials`): a trial that would overspend the privacy budget stops before
    the exceeding round, and the search stops after it.
    """

    def __init__(self, oracle, study: Study, optuna_study: optuna.Study, **kwargs) -> None:
        super().__init__(oracle=oracle, **kwargs)
        self.study = study
        self.optuna_study = optuna_study
        self.stop_reason = "oracle finished"

    def run_trial(self, trial, *args, **kwargs):
        settings = self.study.settings
        recorded = [t.user_attrs for t in self.optuna_study.get_trials(deepcopy=False)]
        budget = settings.client_round_budget
        if budget and sum(a.get("client_rounds", 0) for a in recorded) >= budget:
            raise BudgetSpent(f"client-round budget {budget} spent")
        values = self.study.space.values_from_keras_tuner(trial.hyperparameters)
        rounds = trial.hyperparameters.values.get("tuner/epochs")
        outcome, attrs = run_budgeted_trial(self.study, values, name=f"kt{trial.trial_id}",
                                            slot=len(recorded), spent=recorded, rounds=rounds)
        self._record(values, outcome, attrs | {"slot": len(recorded),
                                               "kerastuner_trial": trial.trial_id,
                                               "tuner_epochs": rounds})
        print(f"kt trial {trial.trial_id} {outcome.status:8s} val acc {outcome.accuracy:.4f} "
              f"(test {outcome.test_accuracy:.4f}) "
              f"rounds {outcome.rounds_completed} {values}", flush=True)
        if outcome.budget_stopped:
            raise BudgetSpent(f"study privacy budget ε={settings.privacy_budget:g} spent")
        if outcome.status != "complete":
            raise keras_tuner.errors.FailedTrialError(outcome.reason or outcome.status)
        return {"accuracy": outcome.accuracy}

    def _record(self, values, outcome: TrialOutcome, attrs: dict) -> None:
        import optuna
        from optuna.trial import TrialState

        distributions = self.study.space.optuna_distributions()
        complete = outcome.status == "complete"
        self.optuna_study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: distributions[k] for k in values},
            value=outcome.accuracy if complete else None,
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
            user_attrs=attrs,
        ))

    # The federated experiment writes its own results; nothing for Keras to save.
    def save_model(self, trial_id, model, step=0):
        return None

    def load_model(self, trial):
        return None


def make_oracle(study: Study, max_trials: int | None = None):
    """The study's oracle, seeded with a never-zero seed mixed from ``study.seed``.

    KerasTuner replaces a falsy seed (0, the default) by a random one, so the study seed
    is never passed as is. ``max_trials`` (default ``n_trials``) is the trial count of
    the random and bayesian oracles (the Poisson draw under ``trial_distribution``).
    """
    settings = study.settings
    seed = mixed_seed(settings.seed)
    objective = keras_tuner.Objective("accuracy", direction="max")
    max_trials = max_trials or settings.n_trials
    if settings.oracle == "random":
        return keras_tuner.oracles.RandomSearchOracle(
            objective=objective, max_trials=max_trials, seed=seed,
            max_consecutive_failed_trials=max_trials)
    if settings.oracle == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            objective=objective, max_trials=max_trials, seed=seed,
            max_consecutive_failed_trials=max_trials)
    # With a client-round budget, Hyperband iterations repeat until the budget is spent.
    iterations = 100 if settings.client_round_budget else 1
    return keras_tuner.oracles.HyperbandOracle(
        objective=objective, max_epochs=settings.max_rounds or study.base.rounds,
        factor=settings.hyperband_factor, seed=seed, hyperband_iterations=iterations,
        max_consecutive_failed_trials=settings.n_trials)


def run_kerastuner(study: Study, optuna_study: optuna.Study, *, resume: bool) -> FederatedTuner:
    hp = keras_tuner.HyperParameters()
    study.space.declare_keras_tuner(hp)
    drawn = optuna_study.user_attrs.get("n_trials_drawn")  # applied: max_trials
    oracle = make_oracle(study, max_trials=drawn)
    oracle.hyperparameters = hp
    tuner = FederatedTuner(oracle, study, optuna_study,
                           directory=str(study.directory), project_name="kerastuner",
                           overwrite=not resume)
    try:
        tuner.search(verbose=0)
    except BudgetSpent as exc:
        tuner.stop_reason = str(exc)
    return tuner
