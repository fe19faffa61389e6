"""Optuna backend: one federated experiment per trial, reported (and pruned) by round.

The loop is Optuna's ask-and-tell interface rather than ``study.optimize`` so that

* every trial's sampler randomness is re-seeded from (study seed, number of finished
  trials): a study killed and resumed proposes the same parameters as an uninterrupted
  one (TPE, Random, NSGA-II, GP; CMA-ES keeps its own state in the storage);
* trials left RUNNING by a killed process are marked FAIL ("interrupted") on ``--resume``
  and their parameters are enqueued again, so no trial is lost;
* a failing experiment is told as FAIL with its reason (``fail_reason`` user attr) and the
  study goes on;
* the study stops at ``n_trials`` finished trials, at the client-round budget, or when
  the study's privacy budget is spent.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import ConfigError, RunPruned
from search.objective import TrialOutcome, config_reason, run_trial, trial_ledger

if TYPE_CHECKING:
    import optuna

    from search.config import Study

INTERRUPTED = "interrupted"


def storage_url(study: Study) -> str:
    setting = study.settings.storage
    if not setting:
        return f"sqlite:///{(study.directory / 'study.db').resolve()}"
    if setting == "journal":
        return f"journal:{(study.directory / 'study.journal').resolve()}"
    return setting


def make_storage(study: Study):
    import optuna

    url = storage_url(study)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_sampler(study: Study):
    import optuna

    seed = study.settings.seed
    name = study.settings.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
    population = max(4, min(20, study.settings.n_trials // 3))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


def make_pruner(study: Study):
    import optuna

    rounds = study.base.rounds
    name = study.settings.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return _slot_hyperband(optuna)(min_resource=1, max_resource=rounds,
                                       reduction_factor=study.settings.hyperband_factor)
    return optuna.pruners.NopPruner()


def _slot_hyperband(optuna):
    """Hyperband whose bracket follows the trial's slot, not its number.

    Optuna picks a trial's bracket from a hash of (study name, trial number). A trial
    re-run after an interruption gets a new number; keyed on its *slot* (the number of
    finished trials when it was asked) it lands in the same bracket as in an uninterrupted
    study, which keeps pruning decisions, and so the study, identical under resume.
    """
    import copy

    class SlotHyperbandPruner(optuna.pruners.HyperbandPruner):
        def _get_bracket_id(self, study, trial):
            slot = trial.user_attrs.get("slot")
            if slot is not None and slot != trial.number:
                trial = copy.copy(trial)
                trial.number = int(slot)
            return super()._get_bracket_id(study, trial)

    return SlotHyperbandPruner


def open_study(study: Study, *, create: bool) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(study)
    kwargs = {"study_name": study.settings.name, "storage": storage,
              "sampler": make_sampler(study), "pruner": make_pruner(study)}
    if create:
        try:
            created = optuna.create_study(directions=study.settings.directions, **kwargs)
        except optuna.exceptions.DuplicatedStudyError:
            raise ConfigError(
                f"study '{study.settings.name}' already exists in {storage_url(study)}; "
                "continue it with --resume or choose another study.name") from None
        created.set_user_attr("settings", study.settings.model_dump(mode="json"))
        created.set_user_attr("space", study.space.describe())
        if study.settings.trial_distribution == "poisson":
            import numpy as np

            drawn = int(np.random.default_rng(study.settings.seed).poisson(study.settings.n_trials))
            created.set_user_attr("n_trials_drawn", max(drawn, 1))
        return created
    try:
        return optuna.load_study(**kwargs)
    except KeyError:
        raise ConfigError(f"no study '{study.settings.name}' in {storage_url(study)} to "
                          "resume; run without --resume first") from None


def target_trials(study: Study, optuna_study: optuna.Study) -> int:
    return int(optuna_study.user_attrs.get("n_trials_drawn", study.settings.n_trials))


def recover_interrupted(optuna_study: optuna.Study) -> list[int]:
    """Mark trials a killed process left RUNNING as FAIL and enqueue their parameters."""
    from optuna.trial import TrialState

    recovered = []
    for trial in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        optuna_study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
        optuna_study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial.params:
            optuna_study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        recovered.append(trial.number)
    return recovered


def finished_trials(optuna_study: optuna.Study) -> list:
    """Trials that count towards ``n_trials`` (interrupted ones do not)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in optuna_study.get_trials(deepcopy=False, states=done)
            if t.user_attrs.get("fail_reason") != INTERRUPTED]


def _slot_seed(seed: int, slot: int) -> int:
    """A well-mixed seed for the sampler at a given slot (consecutive seeds correlate)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


def _reseed(sampler, seed: int) -> None:
    """Seed every random state a sampler (and its sub-samplers) holds."""
    import numpy as np
    from optuna.samplers import BaseSampler

    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        for value in vars(obj).values():
            if isinstance(value, np.random.RandomState):
                value.seed(seed % 2**32)
            elif hasattr(value, "rng") and isinstance(value.rng, np.random.RandomState):
                value.rng.seed(seed % 2**32)  # optuna's LazyRandomState
            elif isinstance(value, np.random.Generator):
                value.bit_generator.state = np.random.PCG64(seed).state
            elif isinstance(value, BaseSampler):
                visit(value, depth + 1)

    visit(sampler, 0)


class OptunaSearch:
    """Run (a share of) a study in this process."""

    def __init__(self, study: Study, optuna_study: optuna.Study, *, quota: int | None = None,
                 progress: bool = True) -> None:
        self.study = study
        self.optuna_study = optuna_study
        self.quota = quota
        self.progress = progress
        self._started = 0
        self.stop_reason = ""

    def _spent_ledger(self):
        from sandbox.privacy import PrivacyLedger

        ledgers = [led for t in finished_trials(self.optuna_study)
                   if (led := trial_ledger(t.user_attrs.get("run_dir", ""))) is not None]
        return PrivacyLedger.compose(ledgers) if ledgers else None

    def _should_stop(self) -> bool:
        settings = self.study.settings
        done = finished_trials(self.optuna_study)
        if len(done) >= target_trials(self.study, self.optuna_study):
            self.stop_reason = "n_trials reached"
            return True
        if self.quota is not None and self._started >= self.quota:
            self.stop_reason = "worker quota reached"
            return True
        if settings.client_round_budget:
            used = sum(t.user_attrs.get("client_rounds", 0) for t in done)
            if used >= settings.client_round_budget:
                self.stop_reason = f"client-round budget {settings.client_round_budget} spent"
                return True
        if any(t.user_attrs.get("budget_stop") for t in done):
            self.stop_reason = f"study privacy budget ε={settings.privacy_budget:g} spent"
            return True
        return False

    def run(self) -> None:
        """Trials one after another; parallelism comes from worker *processes*.

        Threads would share the per-process trainer cache and Flower's process-wide task
        identity, so one process runs one federated experiment at a time.
        """
        while not self._should_stop():
            self._started += 1
            slot = len(finished_trials(self.optuna_study))
            _reseed(self.optuna_study.sampler, _slot_seed(self.study.settings.seed, slot))
            trial = self.optuna_study.ask()
            trial.set_user_attr("slot", slot)
            self._run_one(trial)

    def _run_one(self, trial: optuna.Trial) -> None:
        from optuna.trial import TrialState

        study, settings = self.study, self.study.settings
        values = study.space.suggest_optuna(trial)
        prior = self._spent_ledger() if settings.privacy_budget else None
        try:
            cfg = study.trial_config(values, name=f"trial{trial.number:04d}")
            if settings.privacy_budget:
                cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(
                    update={"budget_epsilon": settings.privacy_budget})})
        except ConfigError as exc:
            outcome = TrialOutcome("failed", reason=config_reason(exc))
        else:
            outcome = run_trial(cfg, report=self._reporter(trial), prior_ledger=prior)
        for key in ("accuracy", "client_compute", "client_rounds", "rounds_completed",
                    "run_dir", "reason", "accuracy_per_round"):
            trial.set_user_attr(key, getattr(outcome, key))
        if math.isfinite(outcome.epsilon):
            trial.set_user_attr("epsilon", outcome.epsilon)
        if settings.epsilon_max:  # feasible iff ε <= epsilon_max (TPE, GP, NSGA-II use it)
            trial.set_constraint("epsilon", min(outcome.epsilon, 1e12) - settings.epsilon_max)
        if "budget" in outcome.reason and "stopped after" in outcome.reason:
            trial.set_user_attr("budget_stop", True)
        if outcome.status == "failed":
            trial.set_user_attr("fail_reason", outcome.reason)
            self.optuna_study.tell(trial, state=TrialState.FAIL)
        elif outcome.status == "pruned":
            self.optuna_study.tell(trial, state=TrialState.PRUNED)
        else:
            objective_values = [outcome.value(o) for o in settings.objectives]
            self.optuna_study.tell(trial, objective_values if len(objective_values) > 1
                                   else objective_values[0])
        if self.progress:
            print(f"trial {trial.number:3d} {outcome.status:8s} acc "
                  f"{outcome.accuracy:.4f} rounds {outcome.rounds_completed:3d} "
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


def run_worker(study_path: str, overrides: dict[str, Any], quota: int | None) -> None:
    """Entry point of an extra worker process (``study.workers > 1``)."""
    from search.config import Study

    study = Study(study_path, overrides)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    OptunaSearch(study, open_study(study, create=False), quota=quota).run()


def run_optuna(study: Study, *, resume: bool, study_path: Path,
               overrides: dict[str, Any]) -> tuple[optuna.Study, str]:
    """Create or resume the study and run it with ``study.workers`` processes."""
    import multiprocessing

    study.directory.mkdir(parents=True, exist_ok=True)
    optuna_study = open_study(study, create=not resume)
    if resume:
        recovered = recover_interrupted(optuna_study)
        if recovered:
            print(f"resume: trials {recovered} were interrupted; re-enqueued their parameters")
    workers = study.settings.workers
    remaining = max(target_trials(study, optuna_study) - len(finished_trials(optuna_study)), 0)
    if workers == 1:
        search = OptunaSearch(study, optuna_study)
        search.run()
        return optuna_study, search.stop_reason
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(str(study_path), overrides, share))
                 for share in shares[1:]]
    for process in processes:
        process.start()
    search = OptunaSearch(study, optuna_study, quota=shares[0])
    search.run()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed (exit codes {failed})")
    return optuna_study, search.stop_reason
