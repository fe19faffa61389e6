"""KerasTuner backend: a ``keras_tuner.Tuner`` whose trials are federated experiments.

:class:`FederatedTuner` overrides ``run_trial``: the oracle's ``HyperParameters`` become
a trial config (torch or Keras clients alike), the experiment runs, and its final
centralized accuracy is the objective. With the Hyperband oracle, ``tuner/epochs`` is
the number of federated rounds of the trial. Oracles: RandomSearch, BayesianOptimization,
Hyperband. Each finished trial is also written to the study's Optuna storage (same
parameters, value, state and attributes), so reports, ``optuna-dashboard`` and the
privacy accounting are the same as for Optuna studies.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras_tuner  # noqa: E402

from sandbox.core.errors import ConfigError  # noqa: E402
from search.objective import TrialOutcome, run_trial  # noqa: E402

if TYPE_CHECKING:
    import optuna

    from search.config import Study


class BudgetSpent(keras_tuner.errors.FatalError):
    """The study's client-round budget is used up: stop the search."""


class FederatedTuner(keras_tuner.Tuner):
    """Tuner whose ``run_trial`` runs one federated experiment."""

    def __init__(self, oracle, study: Study, optuna_study: optuna.Study, **kwargs) -> None:
        super().__init__(oracle=oracle, **kwargs)
        self.study = study
        self.optuna_study = optuna_study
        self.stop_reason = "oracle finished"

    def run_trial(self, trial, *args, **kwargs):
        budget = self.study.settings.client_round_budget
        if budget and sum(t.user_attrs.get("client_rounds", 0)
                          for t in self.optuna_study.get_trials(deepcopy=False)) >= budget:
            raise BudgetSpent(f"client-round budget {budget} spent")
        values = self.study.space.values_from_keras_tuner(trial.hyperparameters)
        rounds = trial.hyperparameters.values.get("tuner/epochs")
        try:
            cfg = self.study.trial_config(values, rounds=rounds,
                                          name=f"kt{trial.trial_id}")
        except ConfigError as exc:
            outcome = TrialOutcome.invalid(exc)
        else:
            outcome = run_trial(cfg)
        self._record(values, outcome, trial.trial_id, rounds)
        print(f"kt trial {trial.trial_id} {outcome.status:8s} val acc {outcome.accuracy:.4f} "
              f"(test {outcome.test_accuracy:.4f}) "
              f"rounds {outcome.rounds_completed} {values}", flush=True)
        if outcome.status != "complete":
            raise keras_tuner.errors.FailedTrialError(outcome.reason or outcome.status)
        return {"accuracy": outcome.accuracy}

    def _record(self, values, outcome: TrialOutcome, trial_id: str, rounds) -> None:
        import optuna
        from optuna.trial import TrialState

        distributions = self.study.space.optuna_distributions()
        attrs = {k: getattr(outcome, k) for k in (
            "accuracy", "test_accuracy", "client_compute", "client_rounds",
            "rounds_completed", "run_dir", "reason", "accuracy_per_round")}
        attrs |= {"kerastuner_trial": trial_id, "tuner_epochs": rounds}
        if outcome.status == "failed":
            attrs["fail_reason"] = outcome.reason
        complete = outcome.status == "complete"
        self.optuna_study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: distributions[k] for k in values},
            value=outcome.accuracy if complete else None,
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
            user_attrs=attrs | ({"epsilon": outcome.epsilon} if complete and
                                outcome.epsilon != float("inf") else {}),
        ))

    # The federated experiment writes its own results; nothing for Keras to save.
    def save_model(self, trial_id, model, step=0):
        return None

    def load_model(self, trial):
        return None


def make_oracle(study: Study):
    settings = study.settings
    objective = keras_tuner.Objective("accuracy", direction="max")
    if settings.oracle == "random":
        return keras_tuner.oracles.RandomSearchOracle(
            objective=objective, max_trials=settings.n_trials, seed=settings.seed,
            max_consecutive_failed_trials=settings.n_trials)
    if settings.oracle == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            objective=objective, max_trials=settings.n_trials, seed=settings.seed,
            max_consecutive_failed_trials=settings.n_trials)
    # With a client-round budget, Hyperband iterations repeat until the budget is spent.
    iterations = 100 if settings.client_round_budget else 1
    return keras_tuner.oracles.HyperbandOracle(
        objective=objective, max_epochs=settings.max_rounds or study.base.rounds,
        factor=settings.hyperband_factor, seed=settings.seed, hyperband_iterations=iterations,
        max_consecutive_failed_trials=settings.n_trials)


def run_kerastuner(study: Study, optuna_study: optuna.Study, *, resume: bool) -> FederatedTuner:
    hp = keras_tuner.HyperParameters()
    study.space.declare_keras_tuner(hp)
    oracle = make_oracle(study)
    oracle.hyperparameters = hp
    tuner = FederatedTuner(oracle, study, optuna_study,
                           directory=str(study.directory), project_name="kerastuner",
                           overwrite=not resume)
    try:
        tuner.search(verbose=0)
    except BudgetSpent as exc:
        tuner.stop_reason = str(exc)
    return tuner
