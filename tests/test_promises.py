"""Tests that pin the core promises: each fails when the promise is quietly broken.

* FedAvg is the sample-weighted mean of the clients' models (fails if every client
  reported ``num-examples = 1``, i.e. a uniform mean).
* DP-SGD adds noise of standard deviation ``noise_multiplier * max_grad_norm`` per step
  (fails if the optimizer got noise multiplier 0 while the ledger reports ε).
* Each round trains the configured number of clients (fails if ``fraction_train`` were
  ignored).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import sandbox
from clients.schedule import PAD, batch_schedule, client_randomness
from clients.trainer import get_trainer
from sandbox.core.privacy import SampleDPPlan
from sandbox.core.wire import model_spec_for
from tests.conftest import ROOT, small_overrides

FRAMEWORKS = ["torch", "keras"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fedavg_is_the_sample_weighted_mean_of_client_models(tmp_path, framework):
    """One round on unequal partitions vs an independent numpy weighted mean."""
    cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
        tmp_path, framework=framework, rounds=1, **{
            "data.partitioner": "quantity_skew", "data.quantity_beta": 0.5,
            "train.momentum": 0.0, "federation.fraction_evaluate": 0.0}))
    result = sandbox.run(cfg)
    prepared = sandbox.preflight(cfg)
    spec = model_spec_for(cfg)
    sizes = [len(c.y_train) for c in prepared.data.clients]
    assert max(sizes) > 2 * min(sizes)  # unequal: a uniform mean would differ
    models = []
    trainer = get_trainer(framework, spec, cfg.train)
    for pid, client in enumerate(prepared.data.clients):  # one client round, by hand
        trainer.set_weights(spec.init_weights(cfg.seed))
        rng, seed = client_randomness(cfg.seed, 1, pid)
        trainer.fit(client.x_train, client.y_train,
                    batch_schedule(len(client.y_train), cfg.train, rng), seed=seed)
        models.append(trainer.get_weights())
    weights = np.array(sizes, dtype=np.float64) / sum(sizes)
    with np.load(result.run_dir / "weights.npz") as saved:
        for index, name in enumerate(spec.weight_names()):
            expected = sum(w * m[index].astype(np.float64) for w, m in zip(weights, models,
                                                                             strict=True))
            uniform = sum(m[index].astype(np.float64) for m in models) / len(models)
            np.testing.assert_allclose(saved[name], expected, atol=2e-6, rtol=0)
            if index == 0:
                assert np.abs(uniform - expected).max() > 1e-4  # the test can tell


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dp_sgd_adds_noise_of_the_configured_scale(tmp_path, framework):
    """A noise-only step (empty Poisson batch) with SGD lr = 1 moves the weights by
    ``-noise / expected_batch``: its standard deviation must be ``σ C / B``.

    ~4,800 weights: the sample standard deviation has a relative sd of ~1 %, so the 5 %
    tolerance is 5 sd (false-failure rate below 1e-6 over seeds).
    """
    cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
        tmp_path, framework=framework, **{"model.hidden": [64], "train.lr": 1.0,
                                          "train.momentum": 0.0}))
    spec = model_spec_for(cfg)
    trainer = get_trainer(framework, spec, cfg.train, private=True)
    start = spec.init_weights(0)
    trainer.set_weights(start)
    plan = SampleDPPlan(noise_multiplier=1.3, max_grad_norm=0.7, sample_rate=0.1,
                        expected_batch=5, steps=1, poisson=True)
    x = np.zeros((4, *spec.input_shape), np.float32)
    trainer.fit(x, np.zeros(4, np.int64), np.full((1, 1), PAD), seed=11, dp=plan)
    moved = np.concatenate([(a - b).ravel() for a, b in zip(trainer.get_weights(), start,
                                                              strict=True)])
    assert moved.size > 4000
    assert moved.std() == pytest.approx(1.3 * 0.7 / 5, rel=0.05)
    assert abs(moved.mean()) < 5 * moved.std() / np.sqrt(moved.size)


def test_each_round_trains_the_configured_number_of_clients(tmp_path):
    cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
        tmp_path, rounds=4, **{"data.num_clients": 8, "federation.fraction_train": 0.25,
                               "federation.fraction_evaluate": 0.5}))
    result = sandbox.run(cfg)
    chosen = json.loads((result.run_dir / "participation.json").read_text())
    assert sorted(chosen, key=int) == ["1", "2", "3", "4"]
    assert all(len(r["train"]) == 2 and len(r["evaluate"]) == 4 for r in chosen.values())
    assert len({tuple(r["train"]) for r in chosen.values()}) > 1  # not the same each round
