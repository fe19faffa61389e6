"""Both trainers behind one protocol: they learn, and they agree with each other."""

from __future__ import annotations

import numpy as np
import pytest

from clients.schedule import batch_schedule
from sandbox.core.config import DataConfig, ModelConfig, TrainConfig
from sandbox.core.data import load_federated_data
from sandbox.core.models import ModelSpec

FRAMEWORKS = ["torch", "keras"]


def make_trainer(framework: str, spec: ModelSpec, cfg: TrainConfig):
    if framework == "torch":
        from clients.torch_trainer import TorchTrainer

        return TorchTrainer(spec, cfg)
    from clients.keras_trainer import KerasTrainer

    return KerasTrainer(spec, cfg)


@pytest.fixture(scope="module")
def digits():
    data = load_federated_data(DataConfig(num_clients=1, partitioner="iid"), 0)
    return data.clients[0], (data.x_test, data.y_test)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_trainer_learns(framework, optimizer, digits):
    client, (x_test, y_test) = digits
    spec = ModelSpec.from_config(ModelConfig(arch="mlp"), (8, 8, 1), 10)
    cfg = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.005,
                      local_epochs=3)
    trainer = make_trainer(framework, spec, cfg)
    trainer.set_weights(spec.init_weights(0))
    before = trainer.evaluate(x_test, y_test)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(0))
    loss = trainer.fit(client.x_train, client.y_train, schedule, seed=0)
    after = trainer.evaluate(x_test, y_test)
    assert np.isfinite(loss)
    assert after[0] < before[0] and after[1] > 0.8


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_torch_and_keras_take_the_same_steps(arch, digits):
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch=arch), (8, 8, 1), 10)
    cfg = TrainConfig(lr=0.05, momentum=0.9, local_steps=10, batch_size=16)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(5))
    results = []
    for framework in FRAMEWORKS:
        trainer = make_trainer(framework, spec, cfg)
        trainer.set_weights(spec.init_weights(1))
        loss = trainer.fit(client.x_train, client.y_train, schedule, seed=0)
        results.append((loss, trainer.get_weights()))
    (torch_loss, torch_w), (keras_loss, keras_w) = results
    assert torch_loss == pytest.approx(keras_loss, rel=1e-4)
    for a, b in zip(torch_w, keras_w, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fit_is_reproducible_and_resets_optimizer(framework, digits):
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch="mlp", dropout=0.2), (8, 8, 1), 10)
    cfg = TrainConfig(optimizer="adam", lr=0.01, local_steps=5)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(0))
    trainer = make_trainer(framework, spec, cfg)
    runs = []
    for _ in range(2):
        trainer.set_weights(spec.init_weights(0))
        trainer.fit(client.x_train, client.y_train, schedule, seed=11)
        runs.append(trainer.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_batch_schedule_shapes():
    rng = np.random.default_rng(0)
    epochs = batch_schedule(100, TrainConfig(batch_size=32, local_epochs=2), rng)
    assert epochs.shape == (2 * 4, 32)
    first_pass = epochs.reshape(-1)[:100]
    assert sorted(first_pass.tolist()) == list(range(100))  # each epoch is a permutation
    steps = batch_schedule(10, TrainConfig(batch_size=32, local_steps=3), rng)
    assert steps.shape == (3, 10)


def test_fedprox_proximal_term_pulls_towards_the_round_start(digits):
    """Both frameworks add (mu/2)||w - w_start||^2 identically; larger mu stays closer."""
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch="mlp"), (8, 8, 1), 10)
    cfg = TrainConfig(lr=0.1, local_steps=20, batch_size=16)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(2))
    start = spec.init_weights(4)
    drift = {}
    for framework in FRAMEWORKS:
        trainer = make_trainer(framework, spec, cfg)
        for mu in (0.0, 5.0):
            trainer.set_weights(start)
            trainer.fit(client.x_train, client.y_train, schedule, seed=0, proximal_mu=mu)
            weights = trainer.get_weights()
            drift[framework, mu] = (weights, sum(float(np.sum((w - s) ** 2))
                                                 for w, s in zip(weights, start, strict=True)))
    for framework in FRAMEWORKS:
        assert drift[framework, 5.0][1] < 0.8 * drift[framework, 0.0][1]
    for a, b in zip(drift["torch", 5.0][0], drift["keras", 5.0][0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
