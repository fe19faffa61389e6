"""Mini-batch schedules: exact epochs, the local-steps stream, secure randomness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clients.schedule import (
    PAD,
    SecureRandom,
    batch_schedule,
    client_randomness,
    poisson_schedule,
)
from sandbox.core.config import TrainConfig
from sandbox.core.privacy.noise import gaussian


@pytest.mark.parametrize(("n", "batch", "epochs"), [(100, 32, 3), (96, 32, 2), (10, 32, 2),
                                                    (33, 1, 1), (7, 3, 4)])
def test_local_epochs_are_exact_passes(n, batch, epochs):
    cfg = TrainConfig(batch_size=batch, local_epochs=epochs)
    schedule = batch_schedule(n, cfg, np.random.default_rng(0))
    width, steps = cfg.local_work(n)
    per_epoch = math.ceil(n / width)
    assert schedule.shape == (steps, width) == (epochs * per_epoch, min(batch, n))
    real = schedule[schedule != PAD]
    assert np.array_equal(np.bincount(real, minlength=n), np.full(n, epochs))
    for block in schedule.reshape(epochs, per_epoch, width):  # one epoch = one permutation
        assert sorted(block[block != PAD].tolist()) == list(range(n))
        sizes = (block != PAD).sum(axis=1)
        assert sizes[:-1].tolist() == [width] * (per_epoch - 1)  # full batches ...
        assert sizes[-1] == n - (per_epoch - 1) * width  # ... then the partial last one
        assert (block[-1, sizes[-1]:] == PAD).all()  # padding only at the row's end
    blocks = schedule.reshape(epochs, per_epoch * width)
    if epochs > 1 and n > 2:
        assert not np.array_equal(blocks[0], blocks[1])  # reshuffled every epoch


def test_local_steps_keep_the_wrapping_stream_of_full_batches():
    cfg = TrainConfig(batch_size=32, local_steps=7)
    schedule = batch_schedule(100, cfg, np.random.default_rng(4))
    assert schedule.shape == (7, 32) and (schedule != PAD).all()
    rng = np.random.default_rng(4)  # the stream: per-epoch permutations, wrapping around
    stream = np.concatenate([rng.permutation(100) for _ in range(3)])[: 7 * 32]
    assert np.array_equal(schedule.ravel(), stream)
    small = batch_schedule(10, TrainConfig(batch_size=32, local_steps=3),
                           np.random.default_rng(0))
    assert small.shape == (3, 10)


def test_seeded_schedules_repeat_and_secure_ones_do_not():
    cfg = TrainConfig(batch_size=8, local_epochs=2)
    seeded = [batch_schedule(50, cfg, client_randomness(3, 1, 2)[0]) for _ in range(2)]
    assert np.array_equal(*seeded)
    secure = [client_randomness(3, 1, 2, secure=True) for _ in range(2)]
    assert isinstance(secure[0][0], SecureRandom)
    assert secure[0][1] == secure[1][1] == client_randomness(3, 1, 2)[1]  # dropout seed
    first, second = (batch_schedule(50, cfg, rng) for rng, _ in secure)
    assert not np.array_equal(first, second)
    for schedule in (first, second):  # still exact passes
        assert np.array_equal(np.bincount(schedule[schedule != PAD]), np.full(50, 2))


def test_secure_random_draws():
    source = SecureRandom()
    assert sorted(source.permutation(100).tolist()) == list(range(100))
    values = np.array([5, 9, 11])
    assert sorted(source.permutation(values).tolist()) == [5, 9, 11]
    uniform = source.random((200, 500))
    assert uniform.shape == (200, 500) and 0 <= uniform.min() and uniform.max() < 1
    # mean of 1e5 U(0, 1): sd 0.29 / 316 = 9.1e-4; 5 sd (false failure ~6e-7)
    assert abs(uniform.mean() - 0.5) < 5 * math.sqrt(1 / 12 / uniform.size)


def test_secure_poisson_schedule_has_the_configured_rate():
    steps, n, rate = 200, 1000, 0.05
    schedule = poisson_schedule(n, rate, steps, SecureRandom())
    sizes = (schedule != PAD).sum(axis=1)
    for row, size in zip(schedule, sizes, strict=True):
        assert len(set(row[:size].tolist())) == size and (row[size:] == PAD).all()
    # 200k Bernoulli(0.05) trials: sd of the proportion 4.9e-4; 5 sd (false failure ~6e-7)
    assert abs(sizes.sum() / (steps * n) - rate) < 5 * math.sqrt(rate * (1 - rate) / (steps * n))


def test_secure_noise_is_gaussian_with_the_given_std():
    """1e6 draws: relative sd of the sample std is 1/sqrt(2e6) = 0.07 %, so 0.5 % is 7 sd;
    the sample kurtosis has sd sqrt(24/1e6) = 0.005, so 0.05 is 10 sd (a uniform would
    give 1.8). False-failure rate below 1e-11."""
    noise = gaussian((1000, 1000), 0.3, None)  # secure: the sum of four draws, halved
    assert noise.shape == (1000, 1000) and noise.dtype == np.float64
    assert noise.std() == pytest.approx(0.3, rel=0.005)
    assert abs(noise.mean()) < 5 * 0.3 / 1000
    kurtosis = np.mean((noise / noise.std()) ** 4)
    assert kurtosis == pytest.approx(3.0, abs=0.05)
    assert not np.array_equal(noise, gaussian((1000, 1000), 0.3, None))
