"""What a study claims about privacy: random stopping only where its premises hold, no
infeasible best, the GP told when the objective is noisy, a secret untruncated K."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from tests.test_search import write_study

DP = "privacy.sample.enabled = true"


def _study(tmp_path):
    return optuna.load_study(study_name="s",
                             storage=f"sqlite:///{tmp_path / 'out' / 's.private' / 'study.db'}")


def test_best_only_random_search_gets_the_random_stopping_bound_and_releases_one_trial(
        tmp_path, monkeypatch, capsys):
    """Random sampler, no pruner, K ~ Poisson from the CSPRNG (here a fixed uniform: K=2),
    best-only release: the bound applies, and the report holds no per-trial result."""
    import search.study_store
    from search import run_search

    monkeypatch.setattr(search.study_store, "secure_uniform", lambda n: np.array([0.5]))
    path = write_study(tmp_path, n_trials=2, sampler="random", rounds=2, extra_experiment=DP,
                       extra_study='trial_distribution = "poisson"\nrelease = "best_only"')
    out = run_search(path)
    assert "val acc" not in capsys.readouterr().out  # no per-trial line either
    assert sorted(p.name for p in out.iterdir()) == [
        "best_config.toml", "best_model", "privacy.json", "report.md", "summary.json"]
    assert sorted(p.name for p in (out / "best_model").iterdir()) == ["config.toml",
                                                                      "weights.npz"]
    study = _study(tmp_path)
    assert study.user_attrs["n_trials_drawn"] == 2 == len(study.trials)
    assert study.user_attrs["n_trials_source"] == "secure"
    assert study.user_attrs["proposal_key"] != 3  # proposals from a secret, not the seed
    assert len(list((tmp_path / "out" / "s.private" / "trials").iterdir())) == 2
    privacy = json.loads((out / "privacy.json").read_text())
    stopping = privacy["random_stopping"]
    assert stopping["applies"] and privacy["epsilon"] == stopping["epsilon"]
    single = max(t.user_attrs["epsilon"] for t in study.trials)  # every trial: same ε
    assert stopping["epsilon_single_trial"] == pytest.approx(single, rel=1e-9)
    assert stopping["epsilon"] > single
    assert "epsilon_composed" not in privacy and "ledgers" not in privacy  # K stays secret
    summary = json.loads((out / "summary.json").read_text())
    assert "states" not in summary and summary["best"] is not None
    report = (out / "report.md").read_text()
    assert "Papernot–Steinke random stopping" in report and "best_only" in report


def test_a_poisson_count_of_zero_is_kept_and_runs_no_trial(tmp_path, capsys):
    """No truncation: K = 0 is a draw of the distribution the bound assumes."""
    from search import run_search
    from search.study_store import draw_trial_count

    assert draw_trial_count(1.0, secure=False, seed=2) == 0
    path = write_study(tmp_path, n_trials=1, sampler="random", rounds=1,
                       extra_study='trial_distribution = "poisson"',
                       extra_experiment=f'{DP}\nprivacy.noise = "seeded"')
    out = run_search(path, {"study.seed": 2})
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] is None and summary["no_best"] == "no trial ran"
    assert "K = 0" in summary["stop_reason"] and summary["states"] == {}
    assert "no best trial: no trial ran" in capsys.readouterr().out
    assert not (out / "best_config.toml").exists()


def test_secure_trial_counts_follow_the_poisson_distribution():
    from search.study_store import draw_trial_count

    draws = [draw_trial_count(3.0, secure=True, seed=0) for _ in range(400)]
    assert abs(np.mean(draws) - 3.0) < 4 * np.sqrt(3.0 / 400) and min(draws) == 0
    assert len(set(draws)) > 5  # not the seed's one value


def test_no_feasible_trial_means_no_best_and_no_best_config(tmp_path, capsys):
    """Reproducer: with ε ≤ epsilon_max unmet by every trial, the most accurate
    infeasible trial used to become the best and its config was written."""
    from search import run_search

    path = write_study(tmp_path, n_trials=2, sampler="random", rounds=1, extra_experiment=DP,
                       extra_study='objectives = ["accuracy", "epsilon"]\n'
                                   "epsilon_max = 0.01")
    out = run_search(path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["states"] == {"COMPLETE": 2} and summary["best"] is None
    assert summary["no_best"].startswith("no trial satisfies the constraint ε ≤ epsilon_max "
                                         "= 0.01")
    assert not (out / "best_config.toml").exists() and not (out / "best_model").exists()
    assert "There is no best trial: no trial satisfies" in (out / "report.md").read_text()
    assert "no best trial: no trial satisfies" in capsys.readouterr().out


@pytest.mark.parametrize("experiment,study,deterministic", [
    ("", "", True),
    (DP, "", False),  # secure DP noise: the same parameters score differently
    (f'{DP}\nprivacy.noise = "seeded"', "", True),
    ("", "eval_fraction = 0.5\neval_noise_multiplier = 1.0", False),
])
def test_the_gp_sampler_is_told_whether_the_objective_is_noisy(tmp_path, monkeypatch,
                                                                experiment, study,
                                                                deterministic):
    from search.config import Study
    from search.optuna_backend import make_sampler

    told = {}
    monkeypatch.setattr(optuna.samplers, "GPSampler", lambda **kwargs: told.update(kwargs))
    make_sampler(Study(write_study(tmp_path, sampler="gp", extra_experiment=experiment,
                                   extra_study=study)))
    assert told["deterministic_objective"] is deterministic
