"""``privacy.secure_rng``: DP-SGD noise from the OS's CSPRNG, still of the configured scale.

Each test pairs a secure run with the seeded default: the seeded one must repeat bit for
bit, the secure one must not, and both must add noise of std ``noise_multiplier *
max_grad_norm`` per step.
"""

from __future__ import annotations

import numpy as np
import pytest

import sandbox
from clients.schedule import PAD
from clients.trainer import get_trainer
from sandbox.core.config import ModelConfig, TrainConfig
from sandbox.core.models import ModelSpec
from sandbox.core.privacy import SampleDPPlan
from tests.conftest import ROOT, small_overrides

FRAMEWORKS = ["torch", "keras"]
SPEC = ModelSpec.from_config(ModelConfig(arch="mlp", hidden=[256]), (8, 8, 1), 10)
TRAIN = TrainConfig(lr=1.0, local_steps=1, batch_size=5)


def _fit(framework: str, schedule: np.ndarray, plan: SampleDPPlan, *, secure: bool,
         x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    trainer = get_trainer(framework, SPEC, TRAIN, private=True)
    trainer.set_weights(SPEC.init_weights(0))
    trainer.fit(x, y, schedule, seed=11, dp=plan, secure_rng=secure)
    return trainer.get_weights()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_secure_noise_is_not_reproducible_and_seeded_noise_is(framework):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 20)
    schedule = np.array([[0, 4, 7, PAD], [1, 2, 3, 9]])
    plan = SampleDPPlan(0.8, 1.0, 0.2, 4, 2, True)
    seeded = [_fit(framework, schedule, plan, secure=False, x=x, y=y) for _ in range(2)]
    secure = [_fit(framework, schedule, plan, secure=True, x=x, y=y) for _ in range(2)]
    for a, b in zip(*seeded, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.allclose(a, b) for a, b in zip(*secure, strict=True))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_secure_noise_has_the_configured_scale(framework):
    """250 noise-only steps (empty batches) with SGD lr = 1 move each weight by minus the
    sum of 250 independent N(0, (σC)²) draws over B: std ``σ C sqrt(250) / B``.

    19,210 weights: the sample std has relative sd 1/sqrt(2·19210) = 0.51 %, so 3 % is
    5.9 sd; the sample kurtosis has sd sqrt(24/19210) = 0.035, so 0.25 is 7 sd. False-
    failure rate below 1e-8. 250 steps also span five pre-drawn noise chunks in Keras
    (54 rows each): noise reused across rows would give std ~ σ C 250 / B instead.
    """
    steps, sigma, clip, batch = 250, 1.3, 0.7, 5
    plan = SampleDPPlan(sigma, clip, 0.1, batch, steps, True)
    x = np.zeros((4, 8, 8, 1), np.float32)
    weights = _fit(framework, np.full((steps, 1), PAD), plan, secure=True, x=x,
                   y=np.zeros(4, np.int64))
    moved = np.concatenate([(a - b).ravel() for a, b in zip(weights, SPEC.init_weights(0),
                                                              strict=True)])
    assert moved.size == 19210
    assert moved.std() == pytest.approx(sigma * clip * np.sqrt(steps) / batch, rel=0.03)
    assert abs(moved.mean()) < 5 * moved.std() / np.sqrt(moved.size)
    assert np.mean((moved / moved.std()) ** 4) == pytest.approx(3.0, abs=0.25)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_secure_rng_runs_differ_and_seeded_runs_repeat(tmp_path, framework):
    """The ClientApp passes the flag on: one DP-SGD round, the same config twice."""
    final = {}
    for secure in (False, True):
        for attempt in range(2):
            cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
                tmp_path / f"{secure}-{attempt}", framework=framework, rounds=1, **{
                    "privacy.sample.enabled": True, "privacy.secure_rng": secure,
                    "train.batch_size": 16, "train.local_epochs": 1, "train.momentum": 0.0,
                    "federation.fraction_evaluate": 0.0}))
            with np.load(sandbox.run(cfg).run_dir / "weights.npz") as saved:
                final[secure, attempt] = [saved[name] for name in sorted(saved.files)]
    for a, b in zip(final[False, 0], final[False, 1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(not np.allclose(a, b) for a, b in zip(final[True, 0], final[True, 1],
                                                      strict=True))
