"""A distributed study on a real PostgreSQL server: two workers, one SIGKILLed mid-trial.

The server is Debian's ``postgresql`` (installed by ``nox -s tests`` when missing), started
for this module in a temporary directory on 127.0.0.1 and stopped afterwards
(:mod:`tests.postgres`). Optuna's heartbeat finds the killed worker's trial; its retry
callback queues it again and the other worker runs it.
"""

from __future__ import annotations

import pytest

from tests.postgres import postgres_server
from tests.test_search_workers import check_no_trial_lost, kill_a_worker_mid_trial


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


def test_a_worker_killed_mid_trial_on_postgres_loses_no_trial(tmp_path, postgres_url):
    from optuna.storages import RDBStorage

    from search.config import Study
    from search.study_store import make_storage

    study, victim, pid, output = kill_a_worker_mid_trial(tmp_path, postgres_url)
    check_no_trial_lost(study, victim, pid)
    storage = make_storage(Study(tmp_path / "s.toml"))
    assert isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() == 5
    assert "trial" in output and "Traceback" not in output


def test_the_study_resumes_from_postgres_with_its_trials(tmp_path, postgres_url):
    """A finished study on the server is found again by --resume (nothing to add)."""
    import optuna

    from search import run_search
    from tests.test_search import write_study

    path = write_study(tmp_path, name="pg", n_trials=2, rounds=1,
                       extra_study=f'storage = "{postgres_url}"')
    run_search(path)
    run_search(path, resume=True)
    trials = optuna.load_study(study_name="pg", storage=postgres_url).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
