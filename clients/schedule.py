"""Mini-batch schedules and per-client randomness, the same for both frameworks.

A schedule is an index matrix ``(steps, batch)`` into a client's training arrays; both
trainers run one optimizer step per row, so torch and Keras clients see identical batches.
Rows shorter than the matrix are padded at the end with :data:`PAD` (the last batch of an
epoch, Poisson batches); a trainer's step uses only the real entries of its row.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.assignment import local_steps
from sandbox.core.csprng import secure_uniform

if TYPE_CHECKING:
    from sandbox.core.config import Config, TrainConfig

#: Padding value of schedule rows that hold fewer examples than the matrix is wide.
PAD = -1


class SecureRandom:
    """The draws a schedule needs (``random``, ``permutation``) from :func:`os.urandom`.

    Stands in for the seeded ``numpy.random.Generator`` under ``privacy.noise = "secure"``
    (the default), so which examples a DP-SGD batch holds cannot be reconstructed from the
    run's seed and differs between runs: the amplification by sampling that the
    accountant credits assumes the batches are secret.
    """

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform float64 draws in [0, 1) with 53 random bits each."""
        return secure_uniform(int(np.prod(shape, dtype=np.int64))).reshape(shape)

    def permutation(self, items: int | np.ndarray) -> np.ndarray:
        """A uniformly random order: sorting by independent 64-bit keys (ties ~ n²/2⁶⁵)."""
        values = np.arange(items) if np.ndim(items) == 0 else np.asarray(items)
        keys = np.frombuffer(os.urandom(8 * len(values)), dtype=np.uint64)
        return values[np.argsort(keys, kind="stable")]


RandomSource = np.random.Generator | SecureRandom


def client_randomness(
    seed: int, server_round: int, partition_id: int, *, secure: bool = False
) -> tuple[RandomSource, int]:
    """Batch-order source and framework seed (dropout) for one client in one round.

    Derived from (run seed, round, partition id) only, so it does not depend on message
    delivery order or on the backend. ``secure`` (DP-SGD with ``privacy.noise = "secure"``)
    replaces the batch-order generator by :class:`SecureRandom`; the framework seed
    stays seed-derived (dropout masks are not a privacy mechanism).
    """
    sequence = np.random.SeedSequence([seed, server_round, partition_id])
    framework_seed = int(sequence.generate_state(1)[0] & 0x7FFFFFFF)
    source = SecureRandom() if secure else np.random.default_rng(sequence)
    return source, framework_seed


def round_train_config(cfg: Config, server_round: int, partition_id: int) -> TrainConfig:
    """``cfg.train`` with this client's steps of ``server_round`` under ``[heterogeneity]``.

    With ``heterogeneity.local_steps`` the client takes the steps that
    :func:`sandbox.core.assignment.local_steps` gives it (full batches, as
    ``train.local_steps``); without, ``cfg.train`` is returned unchanged.
    """
    steps = local_steps(cfg, server_round, partition_id)
    if steps is None:
        return cfg.train
    return cfg.train.model_copy(update={"local_steps": steps, "local_epochs": None})


def normalized_steps(train: TrainConfig, steps: int) -> float:
    """FedNova's ``||a_i||_1`` for ``steps`` local steps of ``train``'s optimizer.

    Plain SGD: ``tau``; SGD with momentum ``rho``: ``sum_{k=1..tau} (1 - rho^k) / (1 - rho)``
    (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
    Federated Optimization", NeurIPS, Section 4). Adam has no such closed form; it
    reports ``tau`` like plain SGD.
    """
    rho = train.momentum if train.optimizer == "sgd" else 0.0
    if rho == 0:
        return float(steps)
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def batch_schedule(num_examples: int, cfg: TrainConfig, rng: RandomSource) -> np.ndarray:
    """Index matrix ``(steps, batch)`` of one round's mini-batches, ``batch = min(b, n)``.

    ``train.local_epochs = E``: exact passes over the data. Each epoch is a fresh
    permutation cut into ``ceil(n / batch)`` batches; the last one holds the remaining
    ``n mod batch`` examples and is padded with :data:`PAD` (a ``DataLoader`` with
    ``shuffle=True, drop_last=False``). Every example appears exactly ``E`` times.

    ``train.local_steps = S``: ``S`` full batches cut from a stream of per-epoch
    permutations that wraps across epoch boundaries, so the number of optimizer steps
    does not depend on ``n``.

    The number of rows is :meth:`TrainConfig.local_work` in both cases.
    """
    batch, steps = cfg.local_work(num_examples)
    if cfg.local_steps is None:
        per_epoch = steps // cfg.epochs_or_default
        padded = np.full((cfg.epochs_or_default, per_epoch * batch), PAD, dtype=np.int64)
        for epoch in padded:
            epoch[:num_examples] = rng.permutation(num_examples)
        return padded.reshape(steps, batch)
    needed = steps * batch
    perms = [rng.permutation(num_examples) for _ in range(-(-needed // num_examples))]
    return np.concatenate(perms)[:needed].reshape(steps, batch).astype(np.int64)


def poisson_schedule(
    num_examples: int, sample_rate: float, steps: int, rng: RandomSource
) -> np.ndarray:
    """Index matrix ``(steps, width)`` of Poisson-sampled batches, padded with :data:`PAD`.

    Each row includes every example independently with probability ``sample_rate`` (the
    sampling that DP-SGD's privacy amplification assumes; Abadi et al. 2016).
    """
    include = rng.random((steps, num_examples)) < sample_rate
    width = max(int(include.sum(axis=1).max(initial=0)), 1)
    schedule = np.full((steps, width), PAD, dtype=np.int64)
    for row, members in enumerate(include):
        idx = np.flatnonzero(members)
        schedule[row, : len(idx)] = rng.permutation(idx)
    return schedule
