"""One study contract, both backends: reproducible (seed 0 too), resumable, budgeted, reported."""

from __future__ import annotations

import json

import pytest

from sandbox import ConfigError
from tests.test_search import read_trials, write_study

BACKENDS = {
    "optuna": 'sampler = "random"',
    "kerastuner": 'backend = "kerastuner"\noracle = "random"',
}


def _run(tmp_path, backend: str, *, name: str, n_trials: int, resume=False, seed=0,
         extra_study="", **kwargs):
    from search import run_search

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_study(tmp_path, name=name, n_trials=n_trials, rounds=2, sampler=None,
                       pruner=None, extra_study=f"{BACKENDS[backend]}\n{extra_study}", **kwargs)
    path.write_text(path.read_text().replace("seed = 3", f"seed = {seed}"))
    return run_search(path, resume=resume)


def _trials(out) -> list[tuple]:
    return [(t["state"], t["lr"], t["width"], t["accuracy"]) for t in read_trials(out)]


@pytest.mark.parametrize("backend", list(BACKENDS))
class TestStudyContract:
    def test_seed_0_reproducible_whatever_the_name_and_resume_continues_it(self, tmp_path,
                                                                            backend):
        straight = _run(tmp_path / "a", backend, name="first", n_trials=3)
        again = _run(tmp_path / "b", backend, name="second", n_trials=3)
        assert _trials(straight) == _trials(again)  # seed 0 honoured, name irrelevant
        assert len({t[1] for t in _trials(straight)}) == 3
        _run(tmp_path / "c", backend, name="first", n_trials=2)
        resumed = _run(tmp_path / "c", backend, name="first", n_trials=3, resume=True)
        assert _trials(resumed) == _trials(straight)
        other_seed = _run(tmp_path / "d", backend, name="first", n_trials=3, seed=1)
        assert _trials(other_seed) != _trials(straight)

    def test_report_files(self, tmp_path, backend):
        out = _run(tmp_path, backend, name="s", n_trials=2)
        for name in ("trials.csv", "summary.json", "privacy.json", "history.png",
                     "best_config.toml", "report.md"):
            assert (out / name).is_file(), name
        assert not (out / "importances.png").exists()  # 2 complete trials: too few
        report = (out / "report.md").read_text()
        summary = json.loads((out / "summary.json").read_text())
        assert "not computed: 2 complete trial(s), fewer than 10" in report
        assert f"{summary['best']['test_accuracy']:.4f}" in report
        assert f"{summary['best']['validation_accuracy']:.4f}" in report
        assert "fedsandbox search" in report and "fedsandbox run" in report

    def test_privacy_budget_stops_the_trial_before_the_exceeding_round(self, tmp_path,
                                                                      backend):
        out = _run(tmp_path, backend, name="s", n_trials=10,
                   extra_study="privacy_budget = 9.0",
                   extra_experiment="privacy.sample.enabled = true")
        summary = json.loads((out / "summary.json").read_text())
        assert "privacy budget" in summary["stop_reason"]
        trials = read_trials(out)
        assert len(trials) < 10 and trials[-1]["stop_reason"] == "budget"
        assert "budget" in trials[-1]["reason"]
        assert all(int(t["rounds_completed"]) > 0 for t in trials if t["state"] == "COMPLETE")
        privacy = json.loads((out / "privacy.json").read_text())
        assert privacy["epsilon_composed"] <= 9.0
        assert not privacy["random_stopping"]["applies"]

    def test_keys_of_the_other_backend_are_rejected(self, tmp_path, backend):
        from search.config import Study

        key = {"optuna": 'oracle = "random"', "kerastuner": 'pruner = "median"'}[backend]
        path = write_study(tmp_path, sampler=None, pruner=None,
                           extra_study=f"{BACKENDS[backend]}\n{key}")
        other = "kerastuner" if backend == "optuna" else "optuna"
        with pytest.raises(ConfigError, match=f"a key of backend '{other}' only; backend "
                           f"'{backend}' does not use it"):
            Study(path)


def test_kerastuner_poisson_count_is_applied_and_hyperband_refuses_it(tmp_path):
    import optuna

    from search.config import Study

    out = _run(tmp_path / "a", "kerastuner", name="s", n_trials=3,
               extra_study='trial_distribution = "poisson"',
               extra_experiment='privacy.sample.enabled = true\nprivacy.noise = "seeded"')
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["n_trials_drawn"] == len(read_trials(out)) == 2  # seed 0: K = 2
    stopping = json.loads((out / "privacy.json").read_text())["random_stopping"]
    assert not stopping["applies"]  # KerasTuner's random oracle: no i.i.d. trials
    assert "random oracle never repeats a point" in stopping["why"]
    refused = {
        'trial_distribution = "poisson"': "hyperband oracle has none",
        "privacy_budget = 5.0": "privacy_budget does not work with KerasTuner's hyperband",
    }
    for index, (key, needle) in enumerate(refused.items()):
        (tmp_path / f"b{index}").mkdir()
        path = write_study(tmp_path / f"b{index}", sampler=None, pruner=None,
                           extra_study=f'backend = "kerastuner"\n{key}')
        with pytest.raises(ConfigError, match=needle):
            Study(path)
    ray = write_study(tmp_path / "b0", name="ray", sampler=None, pruner=None,
                      extra_study='backend = "kerastuner"', extra_experiment='backend = "ray"')
    with pytest.raises(ConfigError, match="needs experiment.backend = 'inline'"):
        Study(ray)
