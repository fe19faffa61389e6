"""Injected client faults (``[faults]``): which client fails or stalls, seeded.

Whether a client fails in a round is a pure function of (seed, round, purpose, partition
id), so the same config gives the same failures on every backend and in any process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sandbox.core.config import Config

_FAULT_TAG = 0xFA_0175  # keeps these draws apart from the run's other seeded streams
_PURPOSES = {"train": 1, "evaluate": 2}


class InjectedFault(RuntimeError):
    """A failure injected by ``[faults]`` (not a bug)."""


def injected_failure(cfg: Config, server_round: int, partition_id: int,
                     purpose: str) -> str | None:
    """Why this client fails this round's ``purpose`` message, or ``None``."""
    faults = cfg.faults
    if partition_id in faults.fail_partitions:
        return f"injected fault (faults.fail_partitions has {partition_id})"
    if faults.client_failure_rate:
        sequence = np.random.SeedSequence(
            [_FAULT_TAG, cfg.seed, server_round, _PURPOSES[purpose], partition_id])
        if np.random.default_rng(sequence).random() < faults.client_failure_rate:
            return f"injected fault (faults.client_failure_rate = {faults.client_failure_rate:g})"
    return None


def injected_delay(cfg: Config, partition_id: int) -> float:
    """Seconds this client stalls before replying (``faults.slow_partitions``)."""
    return cfg.faults.slow_seconds if partition_id in cfg.faults.slow_partitions else 0.0
