"""torch DP-SGD (clients.torch_dp): the same steps as Opacus' GradSampleModule + DPOptimizer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clients.schedule import PAD, poisson_schedule
from sandbox.core.config import ModelConfig, TrainConfig
from sandbox.core.models import ModelSpec
from sandbox.core.privacy import SampleDPPlan

MODELS = [("mlp", (12, 1), 3), ("cnn", (8, 8, 1), 3), ("cnn", (8, 8, 2), 4),
          ("cnn", (20, 1), 4), ("cnn", (20, 2), 3)]


def opacus_fit(module, optimizer, x, y, schedule, dp, seed):
    """The reference: Opacus' hooks and DPOptimizer (seeded generator), summed loss."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = GradSampleModule(module, loss_reduction="sum")
    optimizer = DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier,
                            max_grad_norm=dp.max_grad_norm, expected_batch_size=dp.expected_batch,
                            loss_reduction="mean",
                            generator=torch.Generator().manual_seed(seed ^ 0x5EED))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for row in torch.from_numpy(schedule):
        idx = row[row != PAD]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx], reduction="sum")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook")
            loss.backward()
        optimizer.step()
    model._close()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("arch,shape,kernel", MODELS)
def test_dp_sgd_equals_opacus(arch, shape, kernel, optimizer):
    """Same batches (Poisson, with empty ones), same seeded noise: same weights."""
    import torch

    from clients.torch_dp import fit_private
    from clients.torch_trainer import TorchTrainer, build_module

    spec = ModelSpec.from_config(ModelConfig(arch=arch, channels=[4, 3], hidden=[8],
                                             kernel_size=kernel), shape, 5)
    train = TrainConfig(optimizer=optimizer, lr=0.1, momentum=0.5 if optimizer == "sgd" else 0.0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, *shape)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    schedule = poisson_schedule(40, 0.05, 30, np.random.default_rng(0))
    assert (schedule == PAD).all(axis=1).any()  # includes noise-only steps
    dp = SampleDPPlan(noise_multiplier=0.7, max_grad_norm=0.5, sample_rate=0.05,
                      expected_batch=2, steps=30, poisson=True)
    ours, reference = (TorchTrainer(spec, train) for _ in range(2))
    for trainer in (ours, reference):
        trainer.set_weights(spec.init_weights(1))
    fit_private(ours.module, ours._optimizer(), x, y, schedule, dp=dp, seed=11,
                secure_rng=False, offsets=[])
    opacus_fit(reference.module, reference._optimizer(), x, y, schedule, dp, seed=11)
    for a, b in zip(ours.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours.get_weights()[0], spec.init_weights(1)[0])
    other = build_module(spec, spec.init_weights(1))
    fit_private(other, torch.optim.SGD(other.parameters(), lr=0.1), x, y, schedule, dp=dp,
                seed=11, secure_rng=True, offsets=[])
    assert not np.allclose(other.classifier[0].weight.detach().numpy(),
                           ours.module.classifier[0].weight.detach().numpy())


@pytest.mark.parametrize("arch,shape,kernel", MODELS)
def test_clipped_sum_is_the_sum_of_clipped_per_example_gradients(arch, shape, kernel):
    """Against one backward pass per example, clipped by hand."""
    import torch

    from clients.torch_dp import clipped_gradient_sum
    from clients.torch_trainer import build_module

    spec = ModelSpec.from_config(ModelConfig(arch=arch, channels=[4, 3], hidden=[8],
                                             kernel_size=kernel), shape, 5)
    module = build_module(spec, spec.init_weights(2))
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.random((7, *shape), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 5, 7))
    per_example = []
    for i in range(7):
        module.zero_grad()
        torch.nn.functional.cross_entropy(module(x[i:i + 1]), y[i:i + 1],
                                          reduction="sum").backward()
        per_example.append([p.grad.clone() for p in module.parameters()])
    norms = [float(torch.sqrt(sum(g.square().sum() for g in grads))) for grads in per_example]
    clip = float(np.median(norms))
    _, sums = clipped_gradient_sum(module, x, y, clip)
    for k, total in enumerate(sums):
        expected = sum(min(1.0, clip / (n + 1e-6)) * grads[k]
                       for n, grads in zip(norms, per_example, strict=True))
        np.testing.assert_allclose(total.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
