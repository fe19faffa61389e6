"""Optuna backend: one federated experiment per trial, reported (and pruned) by round.

The loop is Optuna's ask-and-tell interface rather than ``study.optimize``. Trials fill
*slots* ``0, 1, ...`` (``n_trials`` of them); with ``W = study.workers`` processes, slot
``s`` belongs to worker ``s mod W`` and to batch ``s // W``. Then

* a slot's parameters are proposed by a fresh sampler seeded from (study seed, slot) on
  an in-memory copy of the trials of *earlier batches* only (``Study.add_trials``), and
  the trial is asked with those parameters fixed (``PartialFixedSampler``). A worker
  waits until the earlier batches have finished, and a trial is told only when every
  slot of its batch has been asked, so what a slot proposes depends on (seed, slot, W)
  alone: a study is reproducible with any number of workers, and a study killed and
  resumed proposes the same parameters as an uninterrupted one (TPE, Random, GP,
  NSGA-II; CMA-ES also seeds each trial from its trial *number*);
* a proposal equal to an earlier trial's (or to a lower slot's of the same batch) is
  redrawn with the next seed of the slot's stream, up to ``MAX_REDRAWS`` times (a space
  that is exhausted, or nearly so, then repeats a point): workers never evaluate the
  same parameters twice. Not so in a best-only random search, whose trials must be
  i.i.d. draws (:func:`~search.study_store.independent_proposals`); its proposals
  derive from a secret key rather than the study seed under secure noise;
* Hyperband brackets follow the slot, and a trial's rung peers are the trials of earlier
  batches (:mod:`search.hyperband`), so pruning is reproducible too;
* trials left RUNNING by a killed process are marked FAIL on ``--resume`` and listed in
  the study user attribute ``interrupted_trials``; their slots run again;
* a failing experiment is told as FAIL with its reason (``fail_reason`` user attr) and the
  study goes on;
* the study stops at ``n_trials`` slots, at the client-round budget, or when the study's
  privacy budget is spent (:mod:`search.trials`); the check before each batch reads only
  earlier batches, so every worker takes the same decision.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import RunPruned
from sandbox.engine import interrupt
from search.study_store import (
    INTERRUPTED_TRIALS,
    NO_TRIAL_DRAWN,
    independent_proposals,
    interrupted_trials,
    make_storage,
    open_study,
    prepare_storage,
    proposal_seed,
    target_trials,
)
from search.trials import (
    client_budget_spent,
    is_budget_stop,
    mixed_seed,
    run_budgeted_trial,
)

if TYPE_CHECKING:
    from collections.abc import Callable

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


def counted_slots(optuna_study: optuna.Study) -> dict[int, Any]:
    """Slot -> trial, for the trials that hold their slot (interrupted ones do not)."""
    interrupted = interrupted_trials(optuna_study)
    return {int(t.user_attrs["slot"]): t for t in optuna_study.get_trials(deepcopy=False)
            if "slot" in t.user_attrs and t.number not in interrupted}


class OptunaSearch:
    """Run worker ``worker``'s slots of a study in this process.

    Parameters
    ----------
    study : Study
        The parsed study file.
    optuna_study : optuna.Study
        The study, opened on ``storage``.
    storage : optuna.storages.BaseStorage
        The storage ``optuna_study`` was opened on.
    worker : int
        This process's index in ``0 .. study.workers - 1``.
    peers_alive : callable or None
        Says whether the other workers still run (a waiting worker gives up otherwise).
    progress : bool
        Print one line per trial (never with ``study.release = "best_only"``: the
        trials' results are not to be released).
    """

    def __init__(self, study: Study, optuna_study: optuna.Study, storage, *, worker: int = 0,
                 peers_alive: Callable[[], bool] | None = None, progress: bool = True) -> None:
        self.study = study
        self.optuna_study = optuna_study
        self.storage = storage
        self.worker = worker
        self.workers = study.settings.workers
        self.peers_alive = peers_alive or (lambda: True)
        self.progress = progress and study.settings.release == "all"
        self.stop_reason = ""

    def batch_start(self, slot: int) -> int:
        return slot - slot % self.workers

    def run(self) -> None:
        """This worker's slots in order; one federated experiment at a time.

        Threads would share the per-process trainer cache and Flower's process-wide task
        identity, so parallelism comes from worker *processes*.
        """
        target = target_trials(self.study, self.optuna_study)
        done = {s for s, t in counted_slots(self.optuna_study).items() if t.state.is_finished()}
        for slot in range(self.worker, target, self.workers):
            if slot in done:
                continue
            interrupt.check()  # a signal between trials: stop before asking for another
            earlier = self._wait(lambda s=slot: self._finished_before(self.batch_start(s)))
            if self._should_stop(earlier):
                return
            self._run_one(slot, earlier)
        self.stop_reason = self.stop_reason or (
            "n_trials reached" if target else NO_TRIAL_DRAWN)

    def _finished_before(self, end: int) -> list | None:
        """The trials of slots ``< end`` once they have all finished, else ``None``."""
        slots = counted_slots(self.optuna_study)
        trials = [slots.get(s) for s in range(end)]
        if all(t is not None and t.state.is_finished() for t in trials):
            return trials
        return None

    def _wait(self, ready: Callable[[], Any]) -> Any:
        while (value := ready()) is None:
            if not self.peers_alive():
                raise RuntimeError(f"worker {self.worker}: a peer worker died; the study "
                                   "can be continued with --resume")
            interrupt.check()
            time.sleep(POLL_S)
        return value

    def _should_stop(self, earlier: list) -> bool:
        """Stop before this batch? Reads only earlier batches: every worker agrees."""
        budget = self.study.settings.client_round_budget
        if client_budget_spent(self.study, [t.user_attrs for t in earlier]):
            self.stop_reason = f"client-round budget {budget} spent"
            return True
        if any(is_budget_stop(t.user_attrs) for t in earlier):
            self.stop_reason = (f"study privacy budget ε={self.study.settings.privacy_budget:g}"
                                " spent")
            return True
        return False

    def propose(self, slot: int, earlier: list) -> dict[str, Any]:
        """Parameters of ``slot``: a fresh sampler on the earlier batches, no repeats.

        Independent proposals (:func:`~search.study_store.independent_proposals`) take
        the first draw as it comes: repeats are part of i.i.d. random search.
        """
        import optuna

        batch = self.batch_start(slot)
        peers = [t.params for t in self._wait(lambda: self._asked(batch, slot))]
        seen = [t.params for t in earlier] + peers
        key = proposal_seed(self.study, self.optuna_study)
        redraws = 1 if independent_proposals(self.study) else MAX_REDRAWS
        values: dict[str, Any] = {}
        for draw in range(redraws):
            copy = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                directions=self.study.settings.directions,
                sampler=make_sampler(self.study, seed=mixed_seed(key, slot, draw)))
            copy.add_trials(earlier)
            values = self.study.space.suggest_optuna(copy.ask())
            if values not in seen:
                break
        return values

    def _asked(self, start: int, end: int) -> list | None:
        """Trials of slots ``start .. end - 1`` once all of them hold their parameters."""
        slots = counted_slots(self.optuna_study)
        trials = [slots.get(s) for s in range(start, end)]
        if all(t is not None and self.study.space.is_complete(t.params) for t in trials):
            return trials
        return None

    def ask(self, slot: int, earlier: list) -> tuple[optuna.Study, optuna.Trial, dict]:
        """Ask ``slot``'s trial with its proposed parameters fixed; (study, trial, values)."""
        import optuna

        values = self.propose(slot, earlier)
        seed = mixed_seed(proposal_seed(self.study, self.optuna_study), slot)
        with warnings.catch_warnings():  # PartialFixedSampler is public, marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(
                values, make_sampler(self.study, seed=seed))
        fixed = optuna.load_study(study_name=self.optuna_study.study_name,
                                  storage=self.storage, sampler=sampler,
                                  pruner=self.optuna_study.pruner)
        trial = fixed.ask()
        for key, value in {"slot": slot, "batch_start": self.batch_start(slot),
                           "worker": self.worker}.items():
            trial.set_user_attr(key, value)
        self.study.space.suggest_optuna(trial)  # stores the fixed parameters
        return fixed, trial, values

    def _run_one(self, slot: int, earlier: list) -> None:
        from optuna.trial import TrialState

        fixed, trial, values = self.ask(slot, earlier)
        outcome, attrs = run_budgeted_trial(
            self.study, values, name=f"trial{trial.number:04d}", slot=slot,
            spent=[t.user_attrs for t in earlier], report=self._reporter(trial))
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        settings = self.study.settings
        if settings.epsilon_max:  # feasible iff ε <= epsilon_max (TPE, GP, NSGA-II use it)
            trial.set_constraint("epsilon", min(outcome.epsilon, 1e12) - settings.epsilon_max)
        end = min(self.batch_start(slot) + self.workers, target_trials(self.study, fixed))
        self._wait(lambda: self._asked(self.batch_start(slot), end))  # then tell
        if outcome.status == "failed":
            fixed.tell(trial, state=TrialState.FAIL)
        elif outcome.status == "pruned":
            fixed.tell(trial, state=TrialState.PRUNED)
        else:
            objective_values = [outcome.value(o) for o in settings.objectives]
            fixed.tell(trial, objective_values if len(objective_values) > 1
                       else objective_values[0])
        if self.progress:
            print(f"trial {trial.number:3d} {outcome.status:8s} val acc "
                  f"{outcome.accuracy:.4f} (test {outcome.test_accuracy:.4f}) "
                  f"rounds {outcome.rounds_completed:3d} "
                  f"{_short(values)}{'  ' + outcome.reason if outcome.reason else ''}",
                  flush=True)

    def _reporter(self, trial: optuna.Trial):
        if len(self.study.settings.objectives) > 1:
            return None

        def report(server_round: int, accuracy: float) -> None:
            trial.report(accuracy, server_round)
            if trial.should_prune():
                raise RunPruned(server_round, f"pruned by {self.study.settings.pruner}")

        return report


def _short(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def run_worker(study_path: str, overrides: dict[str, Any], worker: int) -> None:
    """Entry point of an extra worker process (``study.workers > 1``)."""
    from search.config import Study

    parent = os.getppid()
    study = Study(study_path, overrides)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    storage = make_storage(study)
    optuna_study = open_study(study, create=False, storage=storage,
                              sampler=make_sampler(study), pruner=make_pruner(study))
    OptunaSearch(study, optuna_study, storage, worker=worker,
                 peers_alive=lambda: os.getppid() == parent).run()


def run_optuna(study: Study, *, resume: bool, study_path: Path,
               overrides: dict[str, Any]) -> tuple[optuna.Study, str]:
    """Create or resume the study and run it with ``study.workers`` processes."""
    import multiprocessing

    storage = prepare_storage(study, resume=resume)
    optuna_study = open_study(study, create=not resume, storage=storage,
                              sampler=make_sampler(study), pruner=make_pruner(study))
    if resume:
        recovered = recover_interrupted(optuna_study)
        if recovered:
            print(f"resume: trials {recovered} were interrupted; their slots run again")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(str(study_path), overrides, w))
                 for w in range(1, study.settings.workers)]
    for process in processes:
        process.start()
    search = OptunaSearch(study, optuna_study, storage,
                          peers_alive=lambda: not any(p.exitcode for p in processes))
    try:
        search.run()
    finally:
        for process in processes:
            process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed (exit codes {failed})")
    return optuna_study, search.stop_reason
