"""Which clients take part in a round: a pure function of (seed, round, purpose, clients).

Flower's strategies sample nodes with the process-wide ``random`` module, so the clients
of a round depended on whatever else had consumed it (building a Keras model does) and
on the runtime's node ids. Here the choice depends only on the run seed, the round, the
purpose (train or evaluate) and the partition ids available, through its own
``numpy`` generator; the server side (:mod:`strategies.sampling`) hands the chosen nodes
to the strategy, so every strategy, framework and backend trains the same clients.

Fixed-size sampling without replacement: ``max(int(n * fraction), minimum)`` clients, as
Flower's strategies size it, drawn uniformly.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PURPOSES = {"train": 0, "evaluate": 1}


def sample_size(num_available: int, fraction: float, minimum: int = 1) -> int:
    """How many of ``num_available`` clients a round with ``fraction`` samples."""
    if fraction <= 0:
        return 0
    return min(max(int(num_available * fraction), minimum), num_available)


def clients_for_round(seed: int, server_round: int, purpose: str,
                      partition_ids: Iterable[int], fraction: float,
                      minimum: int = 1) -> list[int]:
    """The partition ids that take part in ``server_round`` for ``purpose``, sorted.

    Parameters
    ----------
    seed : int
        The run seed.
    server_round : int
        1-based round.
    purpose : {"train", "evaluate"}
        Training and evaluation draw independent samples.
    partition_ids : iterable of int
        The clients available this round.
    fraction : float
        ``federation.fraction_train`` or ``fraction_evaluate``.
    minimum : int
        At least this many (if available).
    """
    available = sorted(set(int(p) for p in partition_ids))
    size = sample_size(len(available), fraction, minimum)
    if size == len(available):
        return available
    rng = np.random.default_rng(np.random.SeedSequence([seed, server_round, PURPOSES[purpose]]))
    return sorted(int(p) for p in rng.choice(available, size=size, replace=False))
