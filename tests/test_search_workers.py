"""Parallel workers on one storage: distinct proposals, reproducible per slot; a killed
worker loses no trial (journal here, PostgreSQL in test_study_postgres.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_search import read_trials, write_study

TINY_SPACE = ('[space.batch]\ntype = "categorical"\nchoices = [16, 32, 64]\n'
              'key = "train.batch_size"\n')


@pytest.mark.parametrize("storage", ["", "journal"])
def test_two_worker_processes_propose_distinct_parameters_reproducibly(tmp_path, storage):
    """2 workers, 12 points in the space, 12 trials: every point once, the same each time."""
    import optuna

    from search import run_search
    from search.claims import holders
    from search.config import Study
    from search.study_store import interrupted_trials, make_storage

    def run(directory) -> list:
        directory.mkdir()
        path = write_study(directory, n_trials=12, sampler="tpe", rounds=1,
                           extra_study=f'workers = 2\nstorage = "{storage}"',
                           extra_space=TINY_SPACE)
        path.write_text(path.read_text().replace("[space.lr]", "[space.lr]\nstep = 0.49")
                        .replace("[space.width]", "[space.width]\nstep = 56")
                        .replace("log = true\nkey = \"model.hidden[0]\"",
                                 "key = \"model.hidden[0]\"").replace(
                            "log = true\nkey = \"train.lr\"", "key = \"train.lr\""))
        run_search(path)
        study = optuna.load_study(study_name="s", storage=make_storage(Study(path)))
        trials = list(holders(study).values())
        # Two workers that queue a slot at once leave a FAIL trial that holds nothing.
        assert interrupted_trials(study) == {t.number for t in study.get_trials()} - {
            t.number for t in trials}
        assert {t.user_attrs["worker"] for t in trials} == {0, 1}
        assert all(t.state.name == "COMPLETE" for t in trials)
        assert len({t.user_attrs["run_dir"] for t in trials}) == 12
        return sorted((t.user_attrs["slot"], tuple(sorted(t.params.items()))) for t in trials)

    first = run(tmp_path / "a")
    assert [slot for slot, _ in first] == list(range(12))
    assert len({params for _, params in first}) == 12  # 2 × 2 × 3 = 12 points, none twice
    if not storage:
        assert run(tmp_path / "b") == first  # the same parameters, slot by slot


def _wait_for(condition, what: str, processes, timeout: float = 600):
    """Poll ``condition()`` until it returns something truthy; fail if a process died."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        for proc in processes:
            assert proc.poll() is None, (f"{what}: a worker exited ({proc.returncode}): "
                                         f"{proc.communicate()[0]}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return value


def _study_created(url: str) -> bool:
    """Whether a study exists in the storage at ``url`` (read without creating anything)."""
    if url.startswith("journal:"):
        journal = Path(url.removeprefix("journal:"))
        return journal.is_file() and journal.stat().st_size > 0
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return bool(connection.execute(sqlalchemy.text("SELECT count(*) FROM studies"))
                        .scalar())
    except sqlalchemy.exc.SQLAlchemyError:  # no table yet
        return False
    finally:
        engine.dispose()


def kill_a_worker_mid_trial(tmp_path: Path, storage: str, *, n_trials: int = 4):
    """Start a study (one process) and a joined worker; SIGKILL the joined one mid-trial.

    Returns (study, the killed trial's number, the killed worker's pid, creator output).
    """
    import optuna

    from search.config import Study
    from search.study_store import make_storage, storage_url

    path = write_study(tmp_path, n_trials=n_trials, rounds=6, extra_study=(
        f'workers = 2\nstorage = "{storage}"\nheartbeat_interval = 5'))
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sandbox", "search", str(path)]
    creator = subprocess.Popen([*command, "--processes", "1"], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    study = Study(path)

    def loaded():
        if not _study_created(storage_url(study)):  # opening an RDB storage creates its
            return None  # tables: not while the creator does
        found = optuna.load_study(study_name="s", storage=make_storage(study))
        return found if "settings" in found.user_attrs else None

    optuna_study = _wait_for(loaded, "study in the storage", [creator])
    joiner = subprocess.Popen([*command, "--join"], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def joiner_mid_trial():  # the joined worker's trial has reported a round, not all
        return next((t for t in optuna_study.get_trials(states=(
            optuna.trial.TrialState.RUNNING,)) if t.user_attrs.get("pid") == joiner.pid
            and 1 <= len(t.intermediate_values) < 6), None)

    victim = _wait_for(joiner_mid_trial, "trial of the joined worker", [creator, joiner])
    joiner.send_signal(signal.SIGKILL)
    joiner.communicate()
    output, _ = creator.communicate(timeout=900)
    assert creator.returncode == 0, output[-3000:]
    return loaded(), victim, joiner.pid, output


def check_no_trial_lost(optuna_study, victim, killed_pid: int, n_trials: int = 4) -> None:
    """Every slot complete once; the killed trial FAIL, interrupted and retried as itself."""
    from search.claims import holders
    from search.study_store import interrupted_trials
    from search.trials import interrupted_spend

    held = holders(optuna_study)
    assert sorted(held) == list(range(n_trials))
    assert all(t.state.name == "COMPLETE" for t in held.values())
    killed = optuna_study.trials[victim.number]
    assert killed.state.name == "FAIL" and killed.number in interrupted_trials(optuna_study)
    assert killed.number in optuna_study.user_attrs["interrupted_trials"]
    retry = held[victim.user_attrs["slot"]]
    assert retry.number > killed.number and retry.params == killed.params
    assert retry.system_attrs["retry_history"] == [killed.number]  # Optuna's retry callback
    assert retry.user_attrs["pid"] != killed_pid
    assert len(held) == n_trials  # the study's trial count, no more
    # The killed run's rounds still count towards the budgets (ledger, client-rounds).
    spent = {a["run_dir"]: a["client_rounds"] for a in interrupted_spend(optuna_study)}
    assert killed.user_attrs["run_dir"].endswith(".partial")
    assert spent[killed.user_attrs["run_dir"]] >= 4  # a round trains the 4 clients


def test_a_joined_worker_killed_mid_trial_on_the_journal_loses_no_trial(tmp_path):
    """The journal has no Optuna heartbeat: our heartbeat attribute finds the dead worker."""
    study, victim, pid, output = kill_a_worker_mid_trial(tmp_path, "journal")
    check_no_trial_lost(study, victim, pid)
    rows = read_trials(tmp_path / "out" / "s")
    assert {int(r["number"]) for r in rows if r["fail_reason"] == "interrupted"} >= {
        victim.number}
