"""Worker processes on one study: started here, or joined from another machine.

``fedsandbox search STUDY`` creates (or resumes) the study and runs ``study.workers``
worker processes on it; ``fedsandbox search STUDY --join`` adds workers to a study that
exists, from any machine that reaches its storage (a journal file on a shared file
system, or a database server such as PostgreSQL). Workers share nothing but the storage
(:mod:`search.claims`), so any of them may be killed: the trial it was running is run
again by another, and the study completes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import ConfigError
from search.study_store import make_storage, open_study, prepare_storage

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from search.config import Study


def run_worker(study_path: str, overrides: dict[str, Any], worker: int) -> None:
    """Entry point of a worker process on an existing study (spawned, or ``--join``)."""
    from search.config import Study
    from search.optuna_backend import OptunaSearch, make_pruner, make_sampler

    study = Study(study_path, overrides)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    storage = make_storage(study)
    optuna_study = open_study(study, create=False, storage=storage,
                              sampler=make_sampler(study), pruner=make_pruner(study))
    OptunaSearch(study, optuna_study, storage, worker=worker).run()


def run_optuna(study: Study, *, resume: bool, study_path: Path, overrides: dict[str, Any],
               join: bool = False, processes: int | None = None) -> tuple[optuna.Study, str]:
    """Create, resume or ``join`` the study; run ``processes`` workers on it here.

    ``processes`` defaults to ``study.workers`` (1 with ``join``). Any worker may run any
    slot, so a worker killed here or on another machine costs the study nothing but the
    trial it was running, which another worker runs again (:mod:`search.claims`).
    """
    import multiprocessing

    from search.optuna_backend import (
        OptunaSearch,
        make_pruner,
        make_sampler,
        recover_interrupted,
    )

    flag = "--join" if join else "--resume"
    storage = prepare_storage(study, resume=resume or join, flag=flag)
    optuna_study = open_study(study, create=not (resume or join), storage=storage,
                              sampler=make_sampler(study), pruner=make_pruner(study), flag=flag)
    if join:
        check_same_settings(study, optuna_study)
    if resume:
        recovered = recover_interrupted(optuna_study)
        if recovered:
            print(f"resume: trials {recovered} were interrupted; their slots run again")
    local = processes or (1 if join else study.settings.workers)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=run_worker, args=(str(study_path), overrides, w))
                for w in range(1, local)]
    for process in children:
        process.start()
    search = OptunaSearch(study, optuna_study, storage)
    try:
        search.run()
    finally:
        for process in children:
            process.join()
    failed = [p.exitcode for p in children if p.exitcode and p.exitcode > 0]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) failed (exit codes {failed})")
    killed = [p.exitcode for p in children if p.exitcode and p.exitcode < 0]
    if killed:
        print(f"{len(killed)} worker process(es) were killed (signals "
              f"{[-code for code in killed]}); other workers ran their trials again")
    return optuna_study, search.stop_reason


#: Settings a joining worker may hold differently (where this machine keeps its files).
LOCAL_SETTINGS = ("storage", "output_dir")


def check_same_settings(study: Study, optuna_study: optuna.Study) -> None:
    """A joining worker must run the study's settings (slots, batches, budget, seed)."""
    stored = optuna_study.user_attrs.get("settings", {})
    mine = study.settings.model_dump(mode="json")
    for key in sorted(set(stored) | set(mine)):
        if key not in LOCAL_SETTINGS and stored.get(key) != mine.get(key):
            raise ConfigError(
                f"--join: study.{key} = {mine.get(key)!r} but the study "
                f"'{study.settings.name}' in its storage has {stored.get(key)!r}; a joining "
                "worker runs the study's own settings (same study file and --set)")
