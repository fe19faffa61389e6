"""Model-spec parity: one canonical weight layout, same logits in torch and Keras."""

from __future__ import annotations

import numpy as np
import pytest

from sandbox import ConfigError
from sandbox.core.config import ModelConfig, TrainConfig
from sandbox.core.models import ModelSpec

CASES = {
    "mlp-digits": ("mlp", (8, 8, 1), {}),
    "cnn2d-digits": ("cnn", (8, 8, 1), {}),
    "cnn1d-mnist1d": ("cnn", (40, 1), {"channels": [8, 16, 16], "kernel_size": 5}),
    "cnn1d-even-kernel": ("cnn", (40, 1), {"kernel_size": 4}),
    "mlp-tabular-tanh": ("mlp", (60,), {"hidden": [32, 16], "activation": "tanh"}),
    "cnn2d-elu-dropout": ("cnn", (8, 8, 1), {"activation": "elu", "dropout": 0.3}),
}


def spec_for(name: str) -> ModelSpec:
    arch, shape, extra = CASES[name]
    return ModelSpec.from_config(ModelConfig(arch=arch, **extra), shape, 10)


@pytest.mark.parametrize("name", CASES)
def test_same_weights_same_logits(name):
    from clients.keras_trainer import build_model
    from clients.torch_trainer import build_module

    spec = spec_for(name)
    weights = spec.init_weights(seed=7)
    x = np.random.default_rng(1).normal(size=(64, *spec.input_shape)).astype(np.float32)
    torch_module = build_module(spec, weights).eval()
    keras_model = build_model(spec, weights)
    import torch

    with torch.no_grad():
        torch_logits = torch_module(torch.from_numpy(x)).numpy()
    keras_logits = keras_model(x, training=False).numpy()
    np.testing.assert_allclose(torch_logits, keras_logits, atol=1e-5, rtol=0)
    assert [w.shape for w in keras_model.get_weights()] == [s for _, s in spec.weight_shapes()]


@pytest.mark.parametrize("name", CASES)
def test_weights_round_trip_through_both_frameworks(name):
    from clients.keras_trainer import KerasTrainer
    from clients.torch_trainer import TorchTrainer

    spec = spec_for(name)
    weights = spec.init_weights(seed=3)
    for trainer in (TorchTrainer(spec, TrainConfig()), KerasTrainer(spec, TrainConfig())):
        trainer.set_weights(weights)
        for got, want in zip(trainer.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(got, want)


def test_init_is_seeded_and_glorot_scaled():
    spec = spec_for("mlp-digits")
    a, b, c = spec.init_weights(1), spec.init_weights(1), spec.init_weights(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    limit = np.sqrt(6 / (64 + 64))
    assert np.abs(a[0]).max() <= limit and np.abs(a[0]).max() > 0.9 * limit
    assert not a[1].any()  # zero bias
    assert spec.num_parameters() == 64 * 64 + 64 + 64 * 10 + 10


def test_cnn_on_vector_data_is_a_config_error():
    with pytest.raises(ConfigError, match="model.arch='cnn'"):
        ModelSpec.from_config(ModelConfig(arch="cnn"), (60,), 10)
