"""The small protocol both framework trainers follow, and the shared batch schedule.

Both trainers draw mini-batches from the same numpy index schedule, so a torch client
and a Keras client see identical batches for the same seed.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from sandbox.config import TrainConfig
    from sandbox.models import ModelSpec
    from sandbox.privacy import SampleDPPlan

#: Padding value in Poisson schedules (rows have different batch sizes).
PAD = -1


class Trainer(Protocol):
    """Local training for one model architecture; weights in the canonical layout."""

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: list[np.ndarray]) -> None: ...

    def fit(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray, *, seed: int,
            dp: SampleDPPlan | None = None, proximal_mu: float = 0.0) -> float:
        """Run one optimizer step per schedule row; return the mean training loss.

        ``proximal_mu > 0`` adds FedProx's proximal term (mu/2)||w - w_start||^2, where
        w_start are the weights the round started from (not with ``dp``).

        With ``dp``, each step is a DP-SGD step: per-example gradients clipped to
        ``dp.max_grad_norm``, summed, Gaussian noise of std ``noise_multiplier *
        max_grad_norm`` added, divided by ``dp.expected_batch``. Rows may then be padded
        with :data:`PAD` (Poisson batches vary in size; an empty row is a noise-only step).
        """
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Model outputs (pre-softmax) for ``x``, evaluation mode."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean cross-entropy loss and accuracy on ``(x, y)``."""
        ...


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


@functools.lru_cache(maxsize=8)
def get_trainer(
    framework: str, spec: ModelSpec, train: TrainConfig, *, private: bool = False
) -> Trainer:
    """One trainer per (framework, architecture, optimizer, DP or not) and process.

    Clients share it: each message loads that client's weights first, so building the
    model and compiling its step happens once per process, not once per client.
    """
    if framework == "torch":
        from clients.torch_trainer import TorchTrainer

        return TorchTrainer(spec, train, private=private)
    if framework == "keras":
        from clients.keras_trainer import KerasTrainer

        return KerasTrainer(spec, train, private=private)
    raise ValueError(f"unknown framework '{framework}'; allowed: torch, keras")
