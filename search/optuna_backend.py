"""Optuna backend: one federated experiment per trial, reported (and pruned) by round.

The loop is Optuna's ask-and-tell interface rather than ``study.optimize`` so that

* every trial is asked from a fresh sampler seeded from (study seed, slot), the slot being
  the number of finished trials: samplers keep their history in the storage, so a study
  killed and resumed proposes the same parameters as an uninterrupted one (TPE, Random,
  NSGA-II, GP; not CMA-ES, which also seeds each trial from its trial *number*);
* Hyperband brackets follow the slot too (:mod:`search.hyperband`);
* trials left RUNNING by a killed process are marked FAIL on ``--resume``, listed in the
  study user attribute ``interrupted_trials`` and their parameters are enqueued again, so
  no trial is lost;
* a failing experiment is told as FAIL with its reason (``fail_reason`` user attr) and the
  study goes on;
* the study stops at ``n_trials`` finished trials, at the client-round budget, or when
  the study's privacy budget is spent.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import ConfigError, RunPruned
from sandbox.core.results import StopReason
from sandbox.engine import interrupt
from search.objective import TrialOutcome, run_trial, trial_ledger

if TYPE_CHECKING:
    import optuna

    from search.config import Study
    from search.space import SearchSpace

INTERRUPTED = StopReason.INTERRUPTED.value
# Study user attribute: numbers of the trials a killed process left RUNNING.
INTERRUPTED_TRIALS = "interrupted_trials"


def storage_url(study: Study) -> str:
    setting = study.settings.storage
    if not setting:
        return f"sqlite:///{(study.directory / 'study.db').resolve()}"
    if setting == "journal":
        return f"journal:{(study.directory / 'study.journal').resolve()}"
    return setting


def _local_file(url: str) -> Path | None:
    """The file behind a journal or SQLite URL; ``None`` for a database server."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def prepare_storage(study: Study, *, resume: bool):
    """Check ``study.storage`` and open it; on any problem a ConfigError, nothing left.

    A ``--resume`` whose storage file does not exist is refused before anything is
    created (opening it would create an empty database). A URL that SQLAlchemy cannot
    parse or connect to is a user error naming ``study.storage``; the study directory
    is removed again if this call created it.
    """
    url = storage_url(study)
    local = _local_file(url)
    if resume and local is not None and not local.is_file():
        raise ConfigError(f"--resume: there is no study storage at {local} (study.name = "
                          f"'{study.settings.name}'); run without --resume to start it")
    if local is None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url)
        except ArgumentError:
            raise ConfigError(
                f"study.storage = {url!r} is not a database URL; allowed: \"\" (SQLite in "
                "the study directory), \"journal\", or an SQLAlchemy URL such as "
                "sqlite:///path/study.db or postgresql://user@127.0.0.1/db") from None
    created = study.directory.resolve()  # the outermost directory this call creates
    while not created.parent.exists():
        created = created.parent
    existed = created.exists()
    study.directory.mkdir(parents=True, exist_ok=True)
    try:
        return make_storage(study)
    except Exception as exc:  # noqa: BLE001 - any driver/connection error is the URL's
        if not existed:
            shutil.rmtree(created, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"study.storage = {url!r}: cannot open it "
                          f"({type(exc).__name__}: {first})") from None


def make_storage(study: Study):
    import optuna

    url = storage_url(study)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


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
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
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
                                   slot_attr="slot", exclude_attr=INTERRUPTED_TRIALS)
    return optuna.pruners.NopPruner()


def open_study(study: Study, *, create: bool, storage=None) -> optuna.Study:
    """Create or load the study, in ``storage`` (default: a new one from the settings)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(study) if storage is None else storage
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


def interrupted_trials(optuna_study: optuna.Study) -> set[int]:
    """Numbers of the trials a killed process left RUNNING (marked FAIL on resume)."""
    return {int(n) for n in optuna_study.user_attrs.get(INTERRUPTED_TRIALS, [])}


def recover_interrupted(optuna_study: optuna.Study, space: SearchSpace | None = None
                        ) -> list[int]:
    """Mark trials a killed process left RUNNING as FAIL and enqueue their parameters.

    Only a complete parameter set is enqueued (every parameter active for those values;
    ``space`` says which). A process killed halfway through ``suggest_*`` leaves a
    partial set: enqueued, the retry would draw the missing values from a different
    point of the slot's random stream than an uninterrupted study; not enqueued, the
    slot's seeded sampler proposes the same complete set again.
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
        if trial.params and (space is None or space.is_complete(trial.params)):
            optuna_study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return recovered


def finished_trials(optuna_study: optuna.Study) -> list:
    """Trials that count towards ``n_trials`` (interrupted ones do not)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    interrupted = interrupted_trials(optuna_study)
    return [t for t in optuna_study.get_trials(deepcopy=False, states=done)
            if t.number not in interrupted]


def _slot_seed(seed: int, slot: int) -> int:
    """A well-mixed seed for the sampler at a given slot (consecutive seeds correlate)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


class OptunaSearch:
    """Run (a share of) a study in this process.

    Parameters
    ----------
    study : Study
        The parsed study file.
    optuna_study : optuna.Study
        The study, opened on ``storage``.
    storage : optuna.storages.BaseStorage
        The storage object ``optuna_study`` was opened on; every trial's own study
        object (with its fresh sampler) is loaded from it.
    quota : int or None
        Most trials this process starts.
    progress : bool
        Print one line per trial.
    """

    def __init__(self, study: Study, optuna_study: optuna.Study, storage, *,
                 quota: int | None = None, progress: bool = True) -> None:
        self.study = study
        self.optuna_study = optuna_study
        self.storage = storage
        self.quota = quota
        self.progress = progress
        self._started = 0
        self.stop_reason = ""

    def _spent_ledger(self):
        from sandbox.core.privacy import PrivacyLedger

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
            interrupt.check()  # a signal between trials: stop before asking for another
            self._started += 1
            slot = len(finished_trials(self.optuna_study))
            slot_study = self.slot_study(slot)
            trial = slot_study.ask()
            trial.set_user_attr("slot", slot)
            self._run_one(slot_study, trial)

    def slot_study(self, slot: int) -> optuna.Study:
        """The study with a fresh sampler seeded for ``slot``, to ask and tell one trial.

        Samplers keep their history in the storage, so a fresh one per trial proposes
        from the same data as a long-lived one, and its randomness depends only on
        (study seed, slot): a resumed study proposes like an uninterrupted one.
        """
        import optuna

        seed = _slot_seed(self.study.settings.seed, slot)
        return optuna.load_study(study_name=self.optuna_study.study_name, storage=self.storage,
                                 sampler=make_sampler(self.study, seed=seed),
                                 pruner=self.optuna_study.pruner)

    def _run_one(self, slot_study: optuna.Study, trial: optuna.Trial) -> None:
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
            outcome = TrialOutcome.invalid(exc)
        else:
            outcome = run_trial(cfg, report=self._reporter(trial), prior_ledger=prior)
        for key in ("accuracy", "test_accuracy", "client_compute", "client_rounds",
                    "rounds_completed", "run_dir", "reason", "accuracy_per_round"):
            trial.set_user_attr(key, getattr(outcome, key))
        if math.isfinite(outcome.epsilon):
            trial.set_user_attr("epsilon", outcome.epsilon)
        if settings.epsilon_max:  # feasible iff ε <= epsilon_max (TPE, GP, NSGA-II use it)
            trial.set_constraint("epsilon", min(outcome.epsilon, 1e12) - settings.epsilon_max)
        trial.set_user_attr("stop_reason", outcome.stop_reason.value)
        if outcome.stop_reason is StopReason.BUDGET:
            trial.set_user_attr("budget_stop", True)
        if outcome.status == "failed":
            trial.set_user_attr("fail_reason", outcome.reason)
            slot_study.tell(trial, state=TrialState.FAIL)
        elif outcome.status == "pruned":
            slot_study.tell(trial, state=TrialState.PRUNED)
        else:
            objective_values = [outcome.value(o) for o in settings.objectives]
            slot_study.tell(trial, objective_values if len(objective_values) > 1
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


def run_worker(study_path: str, overrides: dict[str, Any], quota: int | None) -> None:
    """Entry point of an extra worker process (``study.workers > 1``)."""
    from search.config import Study

    study = Study(study_path, overrides)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    storage = make_storage(study)
    OptunaSearch(study, open_study(study, create=False, storage=storage), storage,
                 quota=quota).run()


def run_optuna(study: Study, *, resume: bool, study_path: Path,
               overrides: dict[str, Any]) -> tuple[optuna.Study, str]:
    """Create or resume the study and run it with ``study.workers`` processes."""
    import multiprocessing

    storage = prepare_storage(study, resume=resume)
    optuna_study = open_study(study, create=not resume, storage=storage)
    if resume:
        recovered = recover_interrupted(optuna_study, study.space)
        if recovered:
            print(f"resume: trials {recovered} were interrupted; re-enqueued their parameters")
    workers = study.settings.workers
    remaining = max(target_trials(study, optuna_study) - len(finished_trials(optuna_study)), 0)
    if workers == 1:
        search = OptunaSearch(study, optuna_study, storage)
        search.run()
        return optuna_study, search.stop_reason
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(str(study_path), overrides, share))
                 for share in shares[1:]]
    for process in processes:
        process.start()
    search = OptunaSearch(study, optuna_study, storage, quota=shares[0])
    search.run()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed (exit codes {failed})")
    return optuna_study, search.stop_reason
