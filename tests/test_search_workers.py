"""Parallel workers on one storage: distinct proposals, reproducible as a set (and per slot)."""

from __future__ import annotations

import pytest

from tests.test_search import write_study

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
