"""Optuna backend: one federated experiment per trial, reported (and pruned) by round.

The loop is Optuna's ask-and-tell interface rather than ``study.optimize``. Trials fill
*slots* ``0, 1, ...`` (``n_trials`` of them); with ``W = study.workers``, slot ``s``
belongs to batch ``s // W``, and any worker process (here, or joined from another
machine) may run any slot: slots are claimed through the storage (:mod:`search.claims`).
Then

* a slot is queued once its earlier batches have finished; its parameters are proposed
  by a fresh sampler seeded from (study seed, slot) on an in-memory copy of the trials
  of *earlier batches* only (``Study.add_trials``), and what the sampler records beside
  them (NSGA-II's generation) comes from asking those fixed parameters
  (``PartialFixedSampler``) of such a copy too. So what a slot proposes depends on
  (seed, slot, W) alone: a study is reproducible with any number of worker processes,
  and a study killed and resumed, or whose worker was killed, proposes the same
  parameters as an uninterrupted one;
* a proposal equal to an earlier trial's (or to a lower slot's of the same batch) is
  redrawn with the next seed of the slot's stream, up to ``MAX_REDRAWS`` times (a space
  that is exhausted, or nearly so, then repeats a point): workers never evaluate the
  same parameters twice. Not so in a best-only random search, whose trials must be
  i.i.d. draws (:func:`~search.study_store.independent_proposals`); its proposals
  derive from a secret key rather than the study seed under secure noise;
* Hyperband brackets follow the slot, and a trial's rung peers are the trials of earlier
  batches (:mod:`search.hyperband`), so pruning is reproducible too;
* trials left RUNNING by a killed process are marked FAIL (by a surviving worker when
  their heartbeat stops, else on ``--resume``) and listed in the study user attribute
  ``interrupted_trials``; their slots run again with the same parameters;
* a failing experiment is told as FAIL with its reason (``fail_reason`` user attr) and the
  study goes on;
* the study stops at ``n_trials`` slots, at the client-round budget, or when the study's
  privacy budget is spent (:mod:`search.trials`); the check before each slot reads only
  earlier batches, so every worker takes the same decision. Each slot keeps the most the
  lower slots of its batch (running beside it) can take off the client-round budget, so
  concurrent trials never overrun it; ``privacy_budget`` needs ``W = 1`` (trials one
  after another, however many processes).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import RunPruned
from sandbox.engine import interrupt
from search.claims import claim, fail_stale_trials, heartbeat, holders
from search.study_store import (
    INTERRUPTED_TRIALS,
    NO_TRIAL_DRAWN,
    independent_proposals,
    interrupted_trials,
    proposal_seed,
    target_trials,
)
from search.trials import (
    client_budget_spent,
    interrupted_spend,
    is_budget_stop,
    mixed_seed,
    run_budgeted_trial,
    trial_cost_bound,
)

if TYPE_CHECKING:
    import optuna

    from search.config import Study

MAX_REDRAWS = 50  # redraws of a duplicate proposal before a repeat is accepted
POLL_S = 0.1  # how often a waiting worker reads the storage


def make_sampler(study: Study, *, seed: int | None = None):
    """The study's sampler, seeded with ``seed`` (default: the study seed)."""
    import optuna

    seed = study.settings.seed if seed is None else seed
    name = study.settings.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":  # noisy objectives (secure DP noise, noised evaluation) are not
        return optuna.samplers.GPSampler(  # deterministic: the GP must model the noise
            seed=seed, deterministic_objective=study.objective_deterministic)
    population = max(4, min(20, study.settings.n_trials // 3))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


def make_pruner(study: Study):
    """The study's pruner; it judges the accuracy reported after every round."""
    import optuna

    rounds = study.base.rounds
    name = study.settings.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        from search.hyperband import SlotHyperbandPruner

        # Brackets by slot, interrupted trials left out: resume prunes like a straight run.
        return SlotHyperbandPruner(min_resource=1, max_resource=rounds,
                                   reduction_factor=study.settings.hyperband_factor,
                                   slot_attr="slot", exclude_attr=INTERRUPTED_TRIALS,
                                   before_attr="batch_start")
    return optuna.pruners.NopPruner()


def recover_interrupted(optuna_study: optuna.Study) -> list[int]:
    """Mark trials a killed process left RUNNING as FAIL; return their numbers.

    Nothing is enqueued: a slot's proposal depends only on (seed, slot) and the trials
    of earlier batches, so the slot's retry proposes the same parameters again, whether
    the killed process had suggested all of them or only some.
    """
    from optuna.trial import TrialState

    running = optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    recovered = [t.number for t in running]
    if not recovered:
        return []
    # Recorded before they are told FAIL, so they never count as finished trials.
    optuna_study.set_user_attr(INTERRUPTED_TRIALS,
                               sorted(interrupted_trials(optuna_study) | set(recovered)))
    for trial in running:
        optuna_study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return recovered


class OptunaSearch:
    """One worker of a study: claims slots through the storage and runs them in turn.

    Parameters
    ----------
    study : Study
        The parsed study file.
    optuna_study : optuna.Study
        The study, opened on ``storage``.
    storage : optuna.storages.BaseStorage
        The storage ``optuna_study`` was opened on.
    worker : int
        A label for this process's trials (user attribute ``worker``); any worker may run
        any slot (:mod:`search.claims`).
    progress : bool
        Print one line per trial (never with ``study.release = "best_only"``: the
        trials' results are not to be released).
    """

    def __init__(self, study: Study, optuna_study: optuna.Study, storage, *, worker: int = 0,
                 progress: bool = True) -> None:
        self.study = study
        self.optuna_study = optuna_study
        self.storage = storage
        self.worker = worker
        self.workers = study.settings.workers
        self.progress = progress and study.settings.release == "all"
        self.stop_reason = ""

    def batch_start(self, slot: int) -> int:
        return slot - slot % self.workers

    def run(self) -> None:
        """Claim and run slots until every slot (or the budget) is done and none runs.

        Threads would share the per-process trainer cache and Flower's process-wide task
        identity, so parallelism comes from worker *processes*.
        """
        target = target_trials(self.study, self.optuna_study)
        interval = self.study.settings.heartbeat_interval
        while True:
            interrupt.check()  # a signal between trials: stop before claiming another
            fail_stale_trials(self.optuna_study, self.storage, interval=interval)
            claimed = claim(self.optuna_study, self.storage)
            if claimed is not None:
                self._run_claimed(*claimed)
                continue
            held = holders(self.optuna_study)
            free = next((s for s in range(target) if s not in held), None)
            if free is not None and not self.stop_reason:
                earlier = self._finished_before(self.batch_start(free), held)
                if earlier is not None and not self._should_stop(free, earlier):
                    self.enqueue(free)
                    continue
            if all(t.state.is_finished() for t in held.values()) and (
                    free is None or self.stop_reason):
                break
            time.sleep(POLL_S)
        self.stop_reason = self.stop_reason or (
            "n_trials reached" if target else NO_TRIAL_DRAWN)

    @staticmethod
    def _finished_before(end: int, held: dict[int, Any]) -> list | None:
        """The holders of slots ``< end`` once they have all finished, else ``None``."""
        trials = [held.get(s) for s in range(end)]
        if all(t is not None and t.state.is_finished() for t in trials):
            return trials
        return None

    def _should_stop(self, slot: int, earlier: list) -> bool:
        """Stop before ``slot``? Reads only earlier batches: every worker agrees.

        The client-round budget keeps, for each lower slot of the batch (running beside
        this one), the most its trial can take, so concurrent trials never overrun it.
        """
        spent = [t.user_attrs for t in earlier]
        if client_budget_spent(self.study, spent, reserved=self._reserved(slot, earlier)):
            budget = self.study.settings.client_round_budget
            self.stop_reason = f"client-round budget {budget} spent"
            return True
        if any(is_budget_stop(attrs) for attrs in spent):
            self.stop_reason = (f"study privacy budget ε={self.study.settings.privacy_budget:g}"
                                " spent")
            return True
        return False

    def _reserved(self, slot: int, earlier: list) -> int:
        """Client-rounds the lower slots of ``slot``'s batch may still take."""
        if not self.study.settings.client_round_budget or slot == self.batch_start(slot):
            return 0
        return sum(trial_cost_bound(self.study, values)
                   for values in self.proposals(slot, earlier)[:-1])

    def proposals(self, slot: int, earlier: list) -> list[dict[str, Any]]:
        """Parameters of the slots ``batch_start(slot) .. slot``, in order.

        Each is proposed by a fresh sampler seeded from (seed, slot, draw) on the earlier
        batches and redrawn while it repeats an earlier trial or a lower slot of its
        batch; lower slots are proposed here again rather than read, so no worker waits
        for another. Independent proposals (:func:`~search.study_store.independent_proposals`)
        take the first draw as it comes: repeats are part of i.i.d. random search.
        """
        key = proposal_seed(self.study, self.optuna_study)
        redraws = 1 if independent_proposals(self.study) else MAX_REDRAWS
        seen = [t.params for t in earlier]
        batch: list[dict[str, Any]] = []
        for peer in range(self.batch_start(slot), slot + 1):
            values: dict[str, Any] = {}
            for draw in range(redraws):
                copy = self._copy(earlier, make_sampler(self.study,
                                                        seed=mixed_seed(key, peer, draw)))
                values = self.study.space.suggest_optuna(copy.ask())
                if values not in seen + batch:
                    break
            batch.append(values)
        return batch

    def propose(self, slot: int, earlier: list) -> dict[str, Any]:
        """Parameters of ``slot`` (see :meth:`proposals`)."""
        return self.proposals(slot, earlier)[-1]

    def _copy(self, earlier: list, sampler) -> optuna.Study:
        import optuna

        copy = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                   directions=self.study.settings.directions, sampler=sampler)
        copy.add_trials(earlier)
        return copy

    def enqueue(self, slot: int) -> None:
        """Queue a trial for ``slot`` (its parameters are fixed by whoever claims it)."""
        import optuna

        self.optuna_study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            user_attrs={"slot": slot, "batch_start": self.batch_start(slot)}))

    def fixed_trial(self, number: int, ident: int, slot: int,
                    earlier: list) -> tuple[optuna.Study, optuna.Trial, dict]:
        """The claimed trial with ``slot``'s parameters; (study, trial, values).

        What the sampler records beside the parameters (NSGA-II's generation, ...) comes
        from asking them (``PartialFixedSampler``) of a copy that holds the earlier
        batches only, so it does not depend on which trials of the batch finished first.
        """
        import optuna

        values = self.propose(slot, earlier)
        seed = mixed_seed(proposal_seed(self.study, self.optuna_study), slot)
        with warnings.catch_warnings():  # PartialFixedSampler is public, marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            copy = self._copy(earlier, optuna.samplers.PartialFixedSampler(
                values, make_sampler(self.study, seed=seed)))
            fixed = optuna.load_study(
                study_name=self.optuna_study.study_name, storage=self.storage,
                sampler=optuna.samplers.PartialFixedSampler(
                    values, optuna.samplers.RandomSampler(seed=seed)),
                pruner=self.optuna_study.pruner)
        self.study.space.suggest_optuna(copy.ask())
        for key, value in copy.get_trials(deepcopy=False)[-1].system_attrs.items():
            self.storage.set_trial_system_attr(ident, key, value)
        fixed.get_trials(deepcopy=False)  # Optuna caches RDB trials per study: sync it
        trial = optuna.trial.Trial(fixed, ident)
        for key, value in {"worker": self.worker, "host": socket.gethostname(),
                           "pid": os.getpid(), "run_dir": ""}.items():  # not a retried run's
            trial.set_user_attr(key, value)
        self.study.space.suggest_optuna(trial)  # stores the parameters (a retry has them)
        return fixed, trial, values

    def ask(self, slot: int, earlier: list) -> tuple[optuna.Study, optuna.Trial, dict]:
        """Queue, claim and fix ``slot``'s trial in this process; (study, trial, values)."""
        self.enqueue(slot)
        number, ident, _ = claim(self.optuna_study, self.storage)
        return self.fixed_trial(number, ident, slot, earlier)

    def _run_claimed(self, number: int, ident: int, slot: int) -> None:
        held = holders(self.optuna_study)
        earlier = [held[s] for s in range(self.batch_start(slot))]  # all finished
        with heartbeat(self.optuna_study, self.storage, number,
                       interval=self.study.settings.heartbeat_interval):
            fixed, trial, values = self.fixed_trial(number, ident, slot, earlier)
            self._run_one(slot, fixed, trial, values, earlier)

    def _run_one(self, slot: int, fixed: optuna.Study, trial: optuna.Trial,
                 values: dict[str, Any], earlier: list) -> None:
        import optuna

        spent = [t.user_attrs for t in earlier] + interrupted_spend(self.optuna_study)
        outcome, attrs = run_budgeted_trial(
            self.study, values, name=f"trial{trial.number:04d}", slot=slot, spent=spent,
            report=self._reporter(trial), reserved_client_rounds=self._reserved(slot, earlier))
        try:
            self._tell(fixed, trial, outcome, attrs)
        except optuna.exceptions.UpdateFinishedTrialError:
            print(f"trial {trial.number:3d} was told FAIL by another worker (this worker's "
                  f"heartbeat came later than {2 * self.study.settings.heartbeat_interval} s)"
                  f" and runs again there; the run in {outcome.run_dir} is not the study's "
                  "and its privacy spend is not in privacy.json", flush=True)
            return
        if self.progress:
            print(f"trial {trial.number:3d} {outcome.status:8s} val acc "
                  f"{outcome.accuracy:.4f} (test {outcome.test_accuracy:.4f}) "
                  f"rounds {outcome.rounds_completed:3d} "
                  f"{_short(values)}{'  ' + outcome.reason if outcome.reason else ''}",
                  flush=True)

    def _tell(self, fixed: optuna.Study, trial: optuna.Trial, outcome, attrs: dict) -> None:
        from optuna.trial import TrialState

        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        settings = self.study.settings
        if settings.epsilon_max:  # feasible iff ε <= epsilon_max (TPE, GP, NSGA-II use it)
            trial.set_constraint("epsilon", min(outcome.epsilon, 1e12) - settings.epsilon_max)
        if outcome.status == "failed":
            fixed.tell(trial, state=TrialState.FAIL)
        elif outcome.status == "pruned":
            fixed.tell(trial, state=TrialState.PRUNED)
        else:
            objective_values = [outcome.value(o) for o in settings.objectives]
            fixed.tell(trial, objective_values if len(objective_values) > 1
                       else objective_values[0])

    def _reporter(self, trial: optuna.Trial):
        """Each round: the run's directory on the trial (once), the value, pruning.

        With the directory recorded from round 1 on, the rounds of a trial whose worker
        is killed still count: their ledger and client-rounds stay in its ``.partial``
        directory (:func:`~search.trials.interrupted_spend`). A trial told FAIL meanwhile
        (its heartbeat came late) stops its run here: another worker runs it again.
        """
        import optuna

        pattern = f"trial{trial.number:04d}-*.partial"
        single = len(self.study.settings.objectives) == 1

        recorded: list[str] = []

        def report(server_round: int, accuracy: float) -> None:
            try:
                if not recorded:
                    found = sorted((self.study.work_directory / "trials").glob(pattern))
                    recorded.append(str(found[-1]) if found else "")
                    trial.set_user_attr("run_dir", recorded[0])
                if single:
                    trial.report(accuracy, server_round)
            except optuna.exceptions.UpdateFinishedTrialError:
                raise RunPruned(server_round, "told FAIL by another worker (heartbeat "
                                "late); run again there") from None
            if single and trial.should_prune():
                raise RunPruned(server_round, f"pruned by {self.study.settings.pruner}")

        return report


def _short(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())
