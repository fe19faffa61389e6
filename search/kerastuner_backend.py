"""KerasTuner backend: a ``keras_tuner.Tuner`` whose trials are federated experiments.

:class:`FederatedTuner` overrides ``run_trial``: the oracle's ``HyperParameters`` become
a trial config (torch or Keras clients alike), the experiment runs, and its final
validation accuracy is the objective. Oracles: RandomSearch, BayesianOptimization,
Hyperband. Seeds, the privacy budget and the noised evaluation are handled as for Optuna
(:mod:`search.trials`). Each finished trial is also written to the study's Optuna
storage (same parameters, value, state and attributes), so reports,
``optuna-dashboard`` and the privacy accounting are the same as for Optuna studies.

Hyperband (Li et al. 2018, "Hyperband: A Novel Bandit-Based Approach to Hyperparameter
Optimization", JMLR) trains a configuration to a rung and continues the best ones; its
epochs are federated rounds. Every run of a configuration has the horizon
``max_rounds`` and stops at its rung (``tuner/epochs``) as a pruned run that keeps its
checkpoint; a promoted trial (``tuner/trial_id``, ``tuner/initial_epoch``) continues a
copy of that run with :func:`sandbox.engine.api.resume` instead of training from
scratch. So each configuration is one federated run: its rounds are charged once (the
continuing run's ledger holds the earlier rounds, whose record then no longer counts),
its client-rounds once, and it is stored as PRUNED records at the rungs it stopped at
and at most one COMPLETE record, at ``max_rounds``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import keras_tuner  # noqa: E402

from sandbox.core.results import StopReason  # noqa: E402
from search.objective import TrialOutcome  # noqa: E402
from search.study_store import NO_TRIAL_DRAWN, target_trials  # noqa: E402
from search.trials import (  # noqa: E402
    client_budget_spent,
    mixed_seed,
    run_budgeted_trial,
)

if TYPE_CHECKING:
    import optuna

    from search.config import Study


class BudgetSpent(keras_tuner.errors.FatalError):
    """The study's client-round budget is used up: stop the search."""


class FederatedTuner(keras_tuner.Tuner):
    """Tuner whose ``run_trial`` runs one federated experiment.

    The study's client-round budget and privacy budget apply exactly as with Optuna
    (:mod:`search.trials`): a trial that would overspend the privacy budget stops before
    the exceeding round, and the search stops after it. (The hyperband oracle refuses a
    privacy budget: a continued run cannot be told what the study spent meanwhile.)
    """

    def __init__(self, oracle, study: Study, optuna_study: optuna.Study, **kwargs) -> None:
        super().__init__(oracle=oracle, **kwargs)
        self.study = study
        self.optuna_study = optuna_study
        self.stop_reason = "oracle finished"

    def run_trial(self, trial, *args, **kwargs):
        settings = self.study.settings
        recorded = self.optuna_study.get_trials(deepcopy=False)
        budget = settings.client_round_budget
        if client_budget_spent(self.study, [t.user_attrs for t in recorded]):
            raise BudgetSpent(f"client-round budget {budget} spent")
        values = self.study.space.values_from_keras_tuner(trial.hyperparameters)
        hp = trial.hyperparameters.values
        rung = hp.get("tuner/epochs")
        name = f"kt{trial.trial_id}"
        continued = _record_of(recorded, hp.get("tuner/trial_id"))
        rungs = {} if rung is None else {"rounds": self.horizon, "stop_after": rung}
        if continued is not None:
            rungs |= {"continue_run": self._copy_run(continued, name),
                      "earlier": TrialOutcome(StopReason.PRUNED, run_dir=continued.user_attrs[
                          "run_dir"], **{k: continued.user_attrs[k] for k in (
                              "accuracy_per_round", "central_val_per_round")})}
        outcome, attrs = run_budgeted_trial(self.study, values, name=name, slot=len(recorded),
                                            spent=[t.user_attrs for t in recorded], **rungs)
        self._record(values, outcome, attrs | {
            "slot": len(recorded), "kerastuner_trial": trial.trial_id, "tuner_epochs": rung,
            "continues_trial": None if continued is None else continued.number})
        if settings.release == "all":
            print(f"kt trial {trial.trial_id} {outcome.status:8s} val acc "
                  f"{outcome.accuracy:.4f} (test {outcome.test_accuracy:.4f}) "
                  f"rounds {outcome.rounds_completed} {values}", flush=True)
        if outcome.budget_stopped:
            raise BudgetSpent(f"study privacy budget ε={settings.privacy_budget:g} spent")
        if outcome.status == "complete" or (rung is not None and outcome.status == "pruned"):
            return {"accuracy": outcome.accuracy}  # a rung's value decides promotion
        raise keras_tuner.errors.FailedTrialError(outcome.reason or outcome.status)

    @property
    def horizon(self) -> int:
        """Rounds of a configuration trained to the end (Hyperband's ``max_epochs``)."""
        return self.study.settings.max_rounds or self.study.base.rounds

    def _copy_run(self, continued, name: str) -> Path:
        """A copy of the stopped run ``continued`` ran, as ``<run>.partial`` to resume.

        The copy leaves the earlier trial's directory as it was at its rung; a copy left
        by an interrupted attempt at this trial is replaced.
        """
        source = Path(continued.user_attrs["run_dir"])
        target = source.with_name(f"{name}-from-kt{continued.user_attrs['kerastuner_trial']}"
                                  ".partial")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target

    def _record(self, values, outcome: TrialOutcome, attrs: dict) -> None:
        """Store the trial in the Optuna study: COMPLETE, PRUNED at a rung, or FAIL."""
        import optuna
        from optuna.trial import TrialState

        distributions = self.study.space.optuna_distributions()
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(
            outcome.status, TrialState.FAIL)
        scores = enumerate(outcome.accuracy_per_round, start=1)
        self.optuna_study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: distributions[k] for k in values},
            value=outcome.accuracy if state == TrialState.COMPLETE else None,
            intermediate_values={r: v for r, v in scores if math.isfinite(v)},
            state=state, user_attrs=attrs,
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


def run_kerastuner(study: Study, optuna_study: optuna.Study, *, resume: bool) -> str:
    """Run (or resume) the KerasTuner search; return why it stopped."""
    if target_trials(study, optuna_study) == 0:
        return NO_TRIAL_DRAWN
    hp = keras_tuner.HyperParameters()
    study.space.declare_keras_tuner(hp)
    drawn = optuna_study.user_attrs.get("n_trials_drawn")  # applied: max_trials
    oracle = make_oracle(study, max_trials=drawn)
    oracle.hyperparameters = hp
    tuner = FederatedTuner(oracle, study, optuna_study,
                           directory=str(study.work_directory), project_name="kerastuner",
                           overwrite=not resume)
    try:
        tuner.search(verbose=0)
    except BudgetSpent as exc:
        tuner.stop_reason = str(exc)
    return tuner.stop_reason


def _record_of(recorded: list, kerastuner_trial: str | None):
    """The Optuna record of KerasTuner trial ``kerastuner_trial`` that kept its run."""
    if kerastuner_trial is None:
        return None
    runs = [t for t in recorded if t.user_attrs.get("kerastuner_trial") == kerastuner_trial
            and t.user_attrs.get("run_dir")]
    return runs[-1] if runs else None
