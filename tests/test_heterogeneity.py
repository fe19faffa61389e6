"""System heterogeneity: seeded local steps per client (and round), recorded compute."""

from __future__ import annotations

import numpy as np
import pytest

import sandbox
from clients.schedule import normalized_steps
from sandbox.core.assignment import local_steps
from sandbox.core.config import Config, TrainConfig

LOGNORMAL = {"dist": "lognormal", "median": 6.0, "sigma": 0.8, "min": 2, "max": 30}


def steps_of(seed: int, table, rounds: int = 3) -> np.ndarray:
    """(rounds, 8 clients) local steps."""
    cfg = Config(seed=seed, data={"num_clients": 8}, heterogeneity={"local_steps": table})
    return np.array([[local_steps(cfg, r, p) for p in range(8)] for r in range(1, rounds + 1)])


def test_off_list_and_distribution():
    assert local_steps(Config(), 1, 0) is None
    assert list(steps_of(0, [1, 2, 3, 4, 5, 6, 7, 8])[2]) == [1, 2, 3, 4, 5, 6, 7, 8]
    fixed = steps_of(0, LOGNORMAL)
    assert (fixed == fixed[0]).all() and len(set(fixed[0])) > 1  # per client, not per round
    varying = steps_of(0, LOGNORMAL | {"per_round": True})
    assert not (varying == varying[0]).all()
    assert (steps_of(0, LOGNORMAL) == fixed).all()
    assert not (steps_of(1, LOGNORMAL) == fixed).all()
    uniform = steps_of(0, {"dist": "uniform", "min": 3, "max": 5, "per_round": True},
                       rounds=49)
    assert set(uniform.ravel()) == {3, 4, 5}


def test_lognormal_draws_have_the_median_and_the_bounds():
    table = LOGNORMAL | {"per_round": True}
    draws = steps_of(0, table, rounds=250).ravel()  # 2000 draws
    assert draws.min() >= 2 and draws.max() <= 30
    # P(draw <= 6) = P(Z <= 0.5/6/0.8 on the log scale ~ 0.54): far from 0.3 and 0.8
    assert 0.45 < np.mean(draws <= 6) < 0.65
    assert np.mean(draws == 30) < 0.05


def test_normalized_steps_is_fednovas_a_norm():
    assert normalized_steps(TrainConfig(momentum=0.0), 7) == 7.0
    assert normalized_steps(TrainConfig(optimizer="adam"), 7) == 7.0
    rho, tau = 0.9, 7
    by_hand = sum((1 - rho**k) / (1 - rho) for k in range(1, tau + 1))
    assert normalized_steps(TrainConfig(momentum=rho), tau) == pytest.approx(by_hand,
                                                                              rel=1e-12)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_clients_take_their_steps_and_results_record_compute(framework, small):
    steps = [1, 4, 9, 2]
    result = sandbox.run(small(framework=framework, **{
        "heterogeneity.local_steps": steps, "train.batch_size": 8}))
    for row in result.rounds[1:]:
        assert row["local_steps"] == {str(p): s for p, s in enumerate(steps)}
        assert row["local_examples"] == {str(p): 8 * s for p, s in enumerate(steps)}
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("local_steps,local_examples")
