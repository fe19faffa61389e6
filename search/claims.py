"""Slots claimed through the study's storage, heartbeats and retries of killed workers' trials.

Workers may run in several processes and on several machines; they share nothing but
the study's storage (SQLite, a journal file, PostgreSQL or any SQLAlchemy URL). The
storage's one atomic hand-out is the move of a WAITING trial to RUNNING (what
``Study.ask`` does with queued trials): it succeeds for exactly one worker. So a slot is
claimed by queueing a trial that names it and moving that trial to RUNNING; the claimer
then fixes the slot's parameters (:mod:`search.optuna_backend`):

* the *holder* of slot ``s`` is the lowest-numbered trial with ``slot = s`` that is not
  interrupted (:func:`~search.study_store.interrupted_trials`). Trial numbers are handed
  out in creation order, and a queued trial carries its slot from creation, so every
  worker agrees on the holder; a worker that asked a trial which is not its slot's holder
  (two workers queued the same slot) tells it FAIL without running it;
* a running trial beats: Optuna's heartbeat on RDB storages (``heartbeat_interval`` s,
  ``grace_period`` twice that), a ``heartbeat`` user attribute (wall-clock seconds) on
  the journal file, which has none. A trial whose worker stopped beating (killed,
  machine lost) is told FAIL by the next worker that looks, recorded as interrupted and
  queued again as a copy with the same slot and parameters
  (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`): no trial is lost.
"""

from __future__ import annotations

import threading
import time
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from search.study_store import interrupted_trials, on_stale_trial

if TYPE_CHECKING:
    from collections.abc import Iterator

    import optuna

#: Trial user attribute: when the trial's worker last beat (journal storage only).
HEARTBEAT = "heartbeat"


def has_optuna_heartbeat(storage) -> bool:
    from optuna.storages import RDBStorage

    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def trial_id(optuna_study: optuna.Study, storage, number: int) -> int:
    """The storage's id of trial ``number`` (public storage API)."""
    study_id = storage.get_study_id_from_name(optuna_study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def fail_stale_trials(optuna_study: optuna.Study, storage, *, interval: int) -> None:
    """Tell FAIL (and queue again) every RUNNING trial whose worker stopped beating."""
    import optuna

    if has_optuna_heartbeat(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(optuna_study)
        return
    from optuna.trial import TrialState

    now = time.time()
    for trial in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # A retry copies its original's heartbeat: its own start counts as a beat.
        last = max(trial.user_attrs.get(HEARTBEAT, 0.0), trial.datetime_start.timestamp())
        if now - last <= 2 * interval:
            continue
        ident = trial_id(optuna_study, storage, trial.number)
        try:
            failed = storage.set_trial_state_values(ident, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            failed = False  # another worker (or the trial itself) finished it first
        if failed:
            on_stale_trial(optuna_study, storage.get_trial(ident))


@contextmanager
def heartbeat(optuna_study: optuna.Study, storage, number: int, *,
              interval: int) -> Iterator[None]:
    """Beat for trial ``number`` every ``interval`` seconds while the block runs."""
    ident = trial_id(optuna_study, storage, number)
    if has_optuna_heartbeat(storage):
        def beat() -> None:
            storage.record_heartbeat(ident)
    else:
        def beat() -> None:
            storage.set_trial_user_attr(ident, HEARTBEAT, time.time())
    stop = threading.Event()

    def loop() -> None:
        while True:
            beat()
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def holders(optuna_study: optuna.Study, trials: list | None = None) -> dict[int, Any]:
    """Slot -> the trial that holds it (lowest number, not interrupted), any state.

    ``trials``: a snapshot of the study's trials (default: read them now).
    """
    interrupted = interrupted_trials(optuna_study)
    held: dict[int, Any] = {}
    trials = optuna_study.get_trials(deepcopy=False) if trials is None else trials
    for trial in trials:  # in number order
        slot = trial.user_attrs.get("slot")
        if slot is not None and trial.number not in interrupted:
            held.setdefault(int(slot), trial)
    return held


def claim(optuna_study: optuna.Study, storage) -> tuple[int, int, int] | None:
    """Move a queued trial that holds its slot to RUNNING, for this worker alone.

    Returns (trial number, storage id, slot), or ``None`` when nothing is queued. The
    state change is the storage's atomic hand-out (the one ``Study.ask`` uses): a worker
    that loses the race for a trial tries the next one. Queued trials that hold no slot
    (a slot queued twice) are claimed too and told FAIL, without running.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)  # one snapshot: a trial queued
    held = holders(optuna_study, trials)  # later holds nothing in this pass
    for trial in [t for t in trials if t.state == TrialState.WAITING]:
        ident = trial_id(optuna_study, storage, trial.number)
        try:
            if not storage.set_trial_state_values(ident, state=TrialState.RUNNING):
                continue
        except UpdateFinishedTrialError:
            continue
        slot = trial.user_attrs.get("slot")
        holder = held.get(slot)
        if holder is not None and holder.number == trial.number:
            return trial.number, ident, int(slot)
        optuna_study.tell(trial.number, state=TrialState.FAIL)
    return None
