"""Client side of a federation: the Flower ClientApp and the per-framework trainers.

The engine uses only this package's public API below; everything else in ``clients/``
is internal (an import-linter contract checks this). Importing ``clients`` imports no
torch, TensorFlow, Keras or Flower; each function imports what it needs.

``make_client_app(cfg)``
    The ``ClientApp`` every runtime backend runs.
``get_evaluator(framework, spec, train)``
    A model of ``spec`` in ``framework`` with ``set_weights`` / ``evaluate`` / ``logits``
    (the server's centralized evaluation uses it; a ``"mixed"`` federation's is torch).
``run_audits(cfg, spec, weights)``
    Membership-inference and canary audits of a final model.
``training_batches(cfg, server_round, partition_id, num_examples)``
    The mini-batches a client trains on in a round without DP-SGD (twin runs export them).
``framework_model(framework, spec, weights)``
    The bare model (a torch ``nn.Module`` or a ``keras.Model``) with canonical
    ``weights``, for exporting it (``sandbox.engine.export``).
``train_vectorized(cfg, calls)``, ``vectorized_unsupported(cfg)``
    A round's train messages ``(message, node context)`` trained as one batched torch
    computation (``backend = "vectorized"``), replies built as the ClientApp builds them;
    ``None`` where the ClientApp must answer (:mod:`clients.vectorized`).
``meter_updates(cfg)``
    Wall time, steps and peak RSS of every client update this process runs (measurements:
    ``fedsandbox compare-frameworks``).
``framework_threads(framework, count)``, ``tensorflow_threads(count)``, ``ThreadsUnavailable``
    Thread counts of the server's framework work (``runtime.server_threads``); for a
    ``"mixed"`` federation that is torch, as its evaluator.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from clients.threads import ThreadsUnavailable, tensorflow_threads

if TYPE_CHECKING:
    import numpy as np
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from clients.trainer import Trainer
    from sandbox.core.config import Config, TrainConfig
    from sandbox.core.models import ModelSpec


def framework_threads(framework: str, count: int) -> contextlib.AbstractContextManager:
    """:func:`clients.threads.framework_threads` for the server side of ``framework``.

    A ``"mixed"`` federation's server work (centralized evaluation, audits) is torch.
    """
    from clients.threads import framework_threads as threads

    return threads("torch" if framework == "mixed" else framework, count)


def make_client_app(cfg: Config) -> ClientApp:
    from clients.app import make_client_app as make

    return make(cfg)


def train_vectorized(cfg: Config, calls: list[tuple[Message, Context]]) -> list[Message | None]:
    from clients.vectorized import train_round

    return train_round(cfg, calls)


def vectorized_unsupported(cfg: Config) -> str | None:
    """Why ``cfg``'s clients cannot train as one batched computation, or ``None``."""
    from clients.vectorized import unsupported

    return unsupported(cfg)


def get_evaluator(framework: str, spec: ModelSpec, train: TrainConfig) -> Trainer:
    from clients.trainer import get_evaluator as get

    return get(framework, spec, train)


def framework_model(framework: str, spec: ModelSpec, weights: list[np.ndarray]):
    """``spec`` with ``weights`` as a torch ``nn.Module`` (eval mode) or a ``keras.Model``."""
    if framework == "torch":
        from clients.torch_trainer import build_module

        return build_module(spec, weights).eval()
    if framework == "keras":
        from clients.keras_trainer import build_model

        return build_model(spec, weights)
    raise ValueError(f"unknown framework '{framework}'; allowed: torch, keras")


def meter_updates(cfg: Config) -> list[dict]:
    from clients.meter import meter_updates as meter

    return meter(cfg)


def run_audits(cfg: Config, spec: ModelSpec, weights: list[np.ndarray]) -> dict:
    from clients.audit import run_audits as audits

    return audits(cfg, spec, weights)


def training_batches(cfg: Config, server_round: int, partition_id: int,
                     num_examples: int) -> list[np.ndarray]:
    """Index arrays of the mini-batches client ``partition_id`` trains on in a round, in order.

    The ClientApp's schedule without DP-SGD (``clients.schedule``: generator from
    ``client_randomness(seed, round, partition id)``, ``batch_schedule`` with the
    client's ``[heterogeneity]`` steps), with the
    padding of partial batches removed: one array per optimizer step.
    """
    from clients.schedule import PAD, batch_schedule, client_randomness, round_train_config

    rng, _ = client_randomness(cfg.seed, server_round, partition_id)
    train = round_train_config(cfg, server_round, partition_id)
    return [row[row != PAD] for row in batch_schedule(num_examples, train, rng)]


__all__ = ["ThreadsUnavailable", "framework_model", "framework_threads", "get_evaluator",
           "make_client_app", "meter_updates", "run_audits", "tensorflow_threads",
           "train_vectorized", "training_batches", "vectorized_unsupported"]
