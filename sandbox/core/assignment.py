"""Seeded per-partition assignments: framework, malicious clients, local steps.

Which partitions train in Keras (``framework = "mixed"``), which are malicious
(``[attack]``) and how many local steps a client takes in a round
(``[heterogeneity] local_steps``) are pure functions of the config (its seed first),
so the ClientApp, the server and the results agree on them on every backend and in
every process. Each purpose draws from its own numpy generator,
``default_rng([tag, seed, ...])`` with a distinct leading tag, apart from the run's
other seeded streams (:mod:`sandbox.core.sampling`, :mod:`sandbox.core.faults`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sandbox.core.config import Config

_KERAS_TAG = 0x3E4A_5001
_ATTACK_TAG = 0xA77A_C001
_STEPS_TAG = 0x57E9_5001


def _seeded_subset(tag: int, seed: int, num_clients: int, fraction: float) -> list[int]:
    """``round(fraction * n)`` partition ids (at least one when ``fraction > 0``), sorted."""
    if fraction <= 0:
        return []
    size = min(max(math.floor(fraction * num_clients + 0.5), 1), num_clients)
    rng = np.random.default_rng([tag, seed])
    return sorted(int(p) for p in rng.choice(num_clients, size=size, replace=False))


def keras_partitions(cfg: Config) -> list[int]:
    """The partition ids that train in Keras, sorted.

    ``framework = "keras"``: all; ``"torch"``: none; ``"mixed"``: ``mixed.keras_partitions``
    when given, else ``round(mixed.keras_fraction * num_clients)`` drawn from the seed.
    """
    n = cfg.data.num_clients
    if cfg.framework != "mixed":
        return list(range(n)) if cfg.framework == "keras" else []
    if cfg.mixed.keras_partitions:
        return sorted(cfg.mixed.keras_partitions)
    return _seeded_subset(_KERAS_TAG, cfg.seed, n, cfg.mixed.keras_fraction)


def client_framework(cfg: Config, partition_id: int) -> str:
    """``"torch"`` or ``"keras"``: the framework client ``partition_id`` trains in."""
    if cfg.framework != "mixed":
        return cfg.framework
    return "keras" if partition_id in keras_partitions(cfg) else "torch"


def server_framework(cfg: Config) -> str:
    """The framework of the server's centralized evaluation (torch in a mixed federation)."""
    return "torch" if cfg.framework == "mixed" else cfg.framework


def malicious_partitions(cfg: Config) -> list[int]:
    """The malicious partition ids, sorted: ``attack.partitions`` when given, else
    ``round(attack.fraction * num_clients)`` (at least one) drawn from the seed."""
    if cfg.attack.partitions:
        return sorted(cfg.attack.partitions)
    return _seeded_subset(_ATTACK_TAG, cfg.seed, cfg.data.num_clients, cfg.attack.fraction)


def local_steps(cfg: Config, server_round: int, partition_id: int) -> int | None:
    """Optimizer steps of ``partition_id`` in ``server_round``; ``None`` without
    ``heterogeneity.local_steps`` (then ``train.local_steps`` / ``local_epochs`` apply).

    A list gives each partition its steps. A distribution draws once per client (or once
    per client and round with ``per_round``) from ``default_rng([tag, seed, partition,
    round or 0])``: ``lognormal`` is ``median * exp(sigma * N(0, 1))`` rounded to the
    nearest integer, ``uniform`` an integer in ``[min, max]``; both are clipped to
    ``[min, max]``.
    """
    steps = cfg.heterogeneity.local_steps
    if steps is None or isinstance(steps, list):
        return None if steps is None else steps[partition_id]
    rng = np.random.default_rng(
        [_STEPS_TAG, cfg.seed, partition_id, server_round if steps.per_round else 0])
    if steps.dist == "uniform":
        drawn = int(rng.integers(steps.min, steps.max + 1))
    else:
        drawn = math.floor(steps.median * math.exp(steps.sigma * rng.standard_normal()) + 0.5)
    return min(max(drawn, steps.min), steps.max)
