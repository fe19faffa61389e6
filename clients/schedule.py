"""Mini-batch schedules and per-client randomness, the same for both frameworks.

A schedule is an index matrix ``(steps, batch)`` into a client's training arrays; both
trainers run one optimizer step per row, so torch and Keras clients see identical batches.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sandbox.core.config import TrainConfig

#: Padding value in Poisson schedules (rows have different batch sizes).
PAD = -1


def client_randomness(
    seed: int, server_round: int, partition_id: int
) -> tuple[np.random.Generator, int]:
    """Batch-order generator and framework seed (dropout) for one client in one round.

    Derived from (run seed, round, partition id) only, so it does not depend on message
    delivery order or on the backend.
    """
    sequence = np.random.SeedSequence([seed, server_round, partition_id])
    return np.random.default_rng(sequence), int(sequence.generate_state(1)[0] & 0x7FFFFFFF)


def batch_schedule(
    num_examples: int, cfg: TrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """Index matrix ``(steps, batch)``: rows are mini-batches of a reshuffled stream.

    ``train.local_steps`` gives the number of rows directly; ``train.local_epochs`` gives
    ``epochs * ceil(n / batch)`` rows. Batches have a fixed size ``min(batch_size, n)``:
    the stream of per-epoch permutations wraps across epoch boundaries instead of
    emitting a short last batch, which keeps one compiled step shape per client.
    """
    batch, steps = cfg.local_work(num_examples)
    needed = steps * batch
    perms = [rng.permutation(num_examples) for _ in range(math.ceil(needed / num_examples))]
    return np.concatenate(perms)[:needed].reshape(steps, batch).astype(np.int64)


def poisson_schedule(
    num_examples: int, sample_rate: float, steps: int, rng: np.random.Generator
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
