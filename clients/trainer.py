"""The small protocol both framework trainers follow, and the trainer factory.

Both trainers draw mini-batches from the same numpy index schedule
(:mod:`clients.schedule`), so a torch client and a Keras client see identical batches
for the same seed.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from sandbox.core.config import TrainConfig
    from sandbox.core.models import ModelSpec
    from sandbox.core.privacy import SampleDPPlan


class Trainer(Protocol):
    """Local training for one model architecture; weights in the canonical layout."""

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: list[np.ndarray]) -> None: ...

    def fit(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray, *, seed: int,
            dp: SampleDPPlan | None = None, proximal_mu: float = 0.0,
            secure_rng: bool = False, correction: list[np.ndarray] | None = None) -> float:
        """Run one optimizer step per schedule row; return the mean training loss.

        Rows may be padded with :data:`clients.schedule.PAD` (the partial last batch of
        an epoch, Poisson batches); a step uses the row's real entries only. The loss of
        a step is the mean over its real examples (as a ``DataLoader`` with
        ``drop_last=False`` gives), and the returned loss is the mean over the steps that
        had examples (loss before each step's update, as Keras' ``fit`` reports it).

        ``proximal_mu > 0`` adds FedProx's proximal term (mu/2)||w - w_start||^2, where
        w_start are the weights the round started from (not with ``dp``).

        With ``dp``, each step is a DP-SGD step: per-example gradients clipped to
        ``dp.max_grad_norm``, summed, Gaussian noise of std ``noise_multiplier *
        max_grad_norm`` added, divided by ``dp.expected_batch`` whatever the row's size
        (an empty row is a noise-only step). With ``secure_rng`` (``privacy.noise =
        "secure"``, the default) the noise comes fresh from the OS's CSPRNG and is not
        reproducible; without it, it is seeded by ``seed`` (``privacy.noise = "seeded"``:
        reproducible, not private). Ignored without ``dp``.

        ``correction`` (SCAFFOLD's ``c - c_i``, canonical layout) is added to every
        step's gradient before the optimizer uses it; with ``dp`` it is added to the
        clipped and noised gradient (post-processing; :mod:`clients.scaffold`).
        """
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Model outputs (pre-softmax) for ``x``, evaluation mode."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean cross-entropy loss and accuracy on ``(x, y)``."""
        ...


@functools.lru_cache(maxsize=8)
def get_trainer(
    framework: str, spec: ModelSpec, train: TrainConfig, *, private: bool = False,
    mode: str | None = None,
) -> Trainer:
    """One trainer per (framework, architecture, optimizer, DP or not, mode) and process.

    Clients share it: each message loads that client's weights first, so building the
    model and compiling its step happens once per process, not once per client.
    ``mode`` is how the training steps execute (``runtime.torch_mode`` /
    ``runtime.keras_mode``); ``None``: the framework's default (torch eager, Keras graph).
    """
    return _build(framework, spec, train, private=private, mode=mode)


@functools.lru_cache(maxsize=8)
def get_evaluator(framework: str, spec: ModelSpec, train: TrainConfig) -> Trainer:
    """A model for evaluating weights (the server's global test, audits), once per process.

    A separate instance from the clients' trainers, which may run in the same process.
    ``"mixed"`` (a federation of torch and Keras clients) is evaluated in torch
    (:func:`sandbox.core.assignment.server_framework`).
    """
    return _build("torch" if framework == "mixed" else framework, spec, train, private=False)


def _build(framework: str, spec: ModelSpec, train: TrainConfig, *, private: bool,
           mode: str | None = None) -> Trainer:
    if framework == "torch":
        from clients.torch_trainer import TorchTrainer

        return TorchTrainer(spec, train, private=private, mode=mode or "eager")
    if framework == "keras":
        from clients.keras_trainer import KerasTrainer

        return KerasTrainer(spec, train, private=private, mode=mode or "graph")
    raise ValueError(f"unknown framework '{framework}'; allowed: torch, keras")
