"""Seeds and confidence intervals: sweeps repeat every point over experiment seeds."""

from __future__ import annotations

import json
import math

import pytest

from sandbox import ConfigError
from sandbox.core.stats import mean_ci
from sandbox.engine.sweep import load_sweep, run_sweep, summarize
from tests.conftest import small_overrides


def test_mean_ci_is_the_student_t_interval():
    estimate = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, t(0.975, df = 2) = 4.302653
    assert estimate.mean == 2.0
    assert estimate.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (estimate.low, estimate.n) == (pytest.approx(2 - 2.484138, rel=1e-6), 3)
    assert estimate.format(2) == "2.00 ± 2.48 (n=3)"
    single = mean_ci([0.5])
    assert single.half_width is None and single.format(1) == "0.5 (n=1, no CI)"
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])


def _sweep_file(tmp_path, seeds: str) -> object:
    path = tmp_path / "sweep.toml"
    path.write_text(f'seed = 7\n[sweep]\n"data.alpha" = [0.5, 5.0]\nseeds = {seeds}\n')
    return path


def test_seeds_repeat_every_point_and_vary_the_experiment(tmp_path):
    _, runs = load_sweep(_sweep_file(tmp_path, "3"))
    assert [(combo["data.alpha"], cfg.seed) for combo, cfg in runs] == [
        (0.5, 7), (0.5, 8), (0.5, 9), (5.0, 7), (5.0, 8), (5.0, 9)]
    _, runs = load_sweep(_sweep_file(tmp_path, "[3, 1]"))
    assert [cfg.seed for _, cfg in runs] == [3, 1, 3, 1]


@pytest.mark.parametrize("seeds, message", [
    ("0", "a count 1..1000"), ("true", "a count 1..1000"), ("[1, 1]", "distinct"),
    ("[]", "a count 1..1000"), ("[-1]", "distinct and in"), ('"3"', "a count 1..1000"),
])
def test_bad_seeds_are_refused_with_the_key(tmp_path, seeds, message):
    with pytest.raises(ConfigError, match=r"\[sweep\] seeds = .*" + message):
        load_sweep(_sweep_file(tmp_path, seeds))


def test_seeds_and_a_swept_seed_are_refused(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\nseed = [1, 2]\nseeds = 2\n')
    with pytest.raises(ConfigError, match="also lists 'seed'"):
        load_sweep(path)


def test_summary_groups_seeds_with_mean_and_ci():
    rows = [{"data.alpha": a, "seed": s, "swept": ["data.alpha", "seed"], "framework": "torch",
             "baseline": False, "epsilon": None, "epsilon_upper_bound": None,
             "final_val_accuracy": acc, "final_test_accuracy": acc,
             "best_round_val_accuracy": acc, "best_round_test_accuracy": acc}
            for a, s, acc in [(0.1, 0, 0.5), (0.1, 1, 0.7), (1.0, 0, 0.9), (1.0, 1, 0.9)]]
    low, high = summarize(rows)
    assert (low["data.alpha"], low["n_seeds"], low["seeds"]) == (0.1, 2, [0, 1])
    assert low["final_test_accuracy"] == pytest.approx(0.6)
    assert low["final_test_accuracy_ci95"] == pytest.approx(12.706205 * 0.1, rel=1e-6)
    assert high["final_test_accuracy_ci95"] == 0.0


def test_a_sweep_over_seeds_writes_the_summary(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('[sweep]\n"train.lr" = [0.05]\nseeds = 2\n')
    out = run_sweep(path, small_overrides(tmp_path, rounds=2), quiet=True)
    runs = json.loads((out / "sweep.json").read_text())
    assert [r["seed"] for r in runs] == [0, 1]
    assert runs[0]["final_test_accuracy"] != runs[1]["final_test_accuracy"]
    (point,) = json.loads((out / "summary.json").read_text())
    assert point["n_seeds"] == 2 and point["final_test_accuracy_ci95"] > 0
    assert "± " in (out / "summary.md").read_text()
