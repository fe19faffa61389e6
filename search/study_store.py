"""Where a study lives and what it holds, for both backends.

The storage is SQLite (default), a journal file, or any SQLAlchemy URL; it sits in the
study's work directory (:attr:`search.config.Study.work_directory`). Besides the trials,
the study keeps these user attributes:

``n_trials_drawn`` / ``n_trials_source``
    With ``trial_distribution = "poisson"``, the number of trials K ~ Poisson(n_trials),
    drawn once when the study is created: from the OS's CSPRNG when the experiment's
    ``privacy.noise = "secure"`` (whoever knows the study seed learns nothing about K),
    else from the study seed (``"seeded"``: reproducible, and no secret). K may be 0;
    it is never truncated, so the distribution drawn is the one the Papernot–Steinke
    bound assumes (:mod:`search.random_stopping`).
``proposal_key``
    The seed of the random sampler's proposals in a best-only random search with secure
    noise: drawn from the CSPRNG, so the hyperparameters a trial draws are as secret as
    its noise (the study seed is in the published command).
``interrupted_trials``
    Trials a killed process left RUNNING, told FAIL on ``--resume`` or by a surviving
    worker once their heartbeat stopped (:mod:`search.claims`); not counted.

Every storage has a heartbeat: RDB storages (SQLite, PostgreSQL, ...) Optuna's own
(``heartbeat_interval``, ``grace_period``, a stale-trial callback that re-queues the
trial), the journal file a trial user attribute (:mod:`search.claims`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.csprng import UNIT, secure_uniform
from sandbox.core.errors import ConfigError
from sandbox.core.results import StopReason

if TYPE_CHECKING:
    import optuna

    from search.config import Study

INTERRUPTED = StopReason.INTERRUPTED.value
INTERRUPTED_TRIALS = "interrupted_trials"
N_TRIALS_DRAWN = "n_trials_drawn"
N_TRIALS_SOURCE = "n_trials_source"
PROPOSAL_KEY = "proposal_key"
#: Stop reason of a study whose Poisson trial count came out 0 (nothing ran).
NO_TRIAL_DRAWN = "no trial: the Poisson trial count drawn was K = 0"


def storage_url(study: Study) -> str:
    setting = study.settings.storage
    if not setting:
        return f"sqlite:///{(study.work_directory / 'study.db').resolve()}"
    if setting == "journal":
        return f"journal:{(study.work_directory / 'study.journal').resolve()}"
    return setting


def _local_file(url: str) -> Path | None:
    """The file behind a journal or SQLite URL; ``None`` for a database server."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def prepare_storage(study: Study, *, resume: bool, flag: str = "--resume"):
    """Check ``study.storage`` and open it; on any problem a ConfigError, nothing left.

    A ``--resume`` (or ``flag``: ``--join``) whose storage file does not exist is refused
    before anything is created (opening it would create an empty database). A URL that
    SQLAlchemy cannot parse or connect to is a user error naming ``study.storage``; the
    work directory is removed again if this call created it.
    """
    url = storage_url(study)
    local = _local_file(url)
    if resume and local is not None and not local.is_file():
        raise ConfigError(f"{flag}: there is no study storage at {local} (study.name = "
                          f"'{study.settings.name}'); run without {flag} to start it")
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
    created = study.work_directory.resolve()  # the outermost directory this call creates
    while not created.parent.exists():
        created = created.parent
    existed = created.exists()
    study.work_directory.mkdir(parents=True, exist_ok=True)
    try:
        return make_storage(study)
    except Exception as exc:  # noqa: BLE001 - any driver/connection error is the URL's
        if not existed:
            shutil.rmtree(created, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"study.storage = {url!r}: cannot open it "
                          f"({type(exc).__name__}: {first})") from None


def make_storage(study: Study):
    """The study's storage; an RDB storage with Optuna's heartbeat and stale-trial retry."""
    import warnings

    import optuna

    url = storage_url(study)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    interval = study.settings.heartbeat_interval
    with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=interval,
            grace_period=2 * interval, heartbeat_stale_trial_callback=on_stale_trial)


def open_study(study: Study, *, create: bool, storage=None, sampler=None,
               pruner=None, flag: str = "--resume") -> optuna.Study:
    """Create or load the study in ``storage`` (default: a new one from the settings).

    A new study records its settings, space and command, and draws its trial count
    and proposal key (see the module docstring).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(study) if storage is None else storage
    kwargs = {"study_name": study.settings.name, "storage": storage, "sampler": sampler,
              "pruner": pruner}
    if not create:
        try:
            return optuna.load_study(**kwargs)
        except KeyError:
            raise ConfigError(f"{flag}: no study '{study.settings.name}' in "
                              f"{storage_url(study)}; run without {flag} first") from None
    try:
        created = optuna.create_study(directions=study.settings.directions, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            f"study '{study.settings.name}' already exists in {storage_url(study)}; "
            "continue it with --resume or choose another study.name") from None
    created.set_user_attr("settings", study.settings.model_dump(mode="json"))
    created.set_user_attr("space", study.space.describe())
    created.set_user_attr("command", study.command)
    secure = study.base.privacy.noise == "secure"
    if study.settings.trial_distribution == "poisson":
        created.set_user_attr(N_TRIALS_DRAWN, draw_trial_count(
            study.settings.n_trials, secure=secure, seed=study.settings.seed))
        created.set_user_attr(N_TRIALS_SOURCE, "secure" if secure else "seeded")
    if independent_proposals(study) and secure:
        created.set_user_attr(PROPOSAL_KEY, int.from_bytes(os.urandom(4), "little") >> 1)
    return created


def draw_trial_count(mean: float, *, secure: bool, seed: int) -> int:
    """K ~ Poisson(``mean``), by inversion of a CSPRNG uniform or from ``seed``.

    Zero is a possible draw and is kept (no truncation).
    """
    if not secure:
        return int(np.random.default_rng(seed).poisson(mean))
    from scipy.stats import poisson

    uniform = float(secure_uniform(1)[0]) + UNIT / 2  # in (0, 1): ppf(0) is -1
    return int(poisson.ppf(uniform, mean))


def independent_proposals(study: Study) -> bool:
    """Whether trials draw their parameters i.i.d. (repeats allowed, nothing adapts).

    Optuna's random sampler in a best-only study: the premise of the random-stopping
    bound. Everywhere else a repeated proposal is redrawn (:mod:`search.optuna_backend`).
    """
    settings = study.settings
    return (settings.backend, settings.sampler, settings.release) == (
        "optuna", "random", "best_only")


def proposal_seed(study: Study, optuna_study: optuna.Study) -> int:
    """The seed the slots' proposals derive from: the secret key, else the study seed."""
    return int(optuna_study.user_attrs.get(PROPOSAL_KEY, study.settings.seed))


def target_trials(study: Study, optuna_study: optuna.Study) -> int:
    return int(optuna_study.user_attrs.get(N_TRIALS_DRAWN, study.settings.n_trials))


def interrupted_trials(optuna_study: optuna.Study) -> set[int]:
    """Numbers of the trials that hold no slot: killed, retried or claimed twice.

    Those recorded in the study attribute (``--resume``, stale heartbeats), those a retry
    names in its history (the record a concurrent update of the attribute may drop), and
    FAIL trials without an outcome (a worker told FAIL a claim it lost, or a trial of a
    killed worker before its retry was queued).
    """
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    from optuna.trial import TrialState

    numbers = {int(n) for n in optuna_study.user_attrs.get(INTERRUPTED_TRIALS, [])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        for trial in optuna_study.get_trials(deepcopy=False):
            numbers.update(Retry.retry_history(trial))
            if trial.state == TrialState.FAIL and "stop_reason" not in trial.user_attrs:
                numbers.add(trial.number)
    return numbers


def finished_trials(optuna_study: optuna.Study) -> list:
    """Trials that count towards ``n_trials`` (interrupted ones do not)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    interrupted = interrupted_trials(optuna_study)
    return [t for t in optuna_study.get_trials(deepcopy=False, states=done)
            if t.number not in interrupted]


def on_stale_trial(optuna_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Record a trial whose heartbeat stopped as interrupted and queue it again.

    The study attribute is read, extended and written back, so two workers recording
    two different stale trials at the same instant may drop one; the retry's own
    ``retry_history`` still names it (:func:`~search.study_store.interrupted_trials`).
    """
    import warnings

    import optuna

    optuna_study.set_user_attr(INTERRUPTED_TRIALS,
                               sorted(interrupted_trials(optuna_study) | {trial.number}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(optuna_study, trial)
