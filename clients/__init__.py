"""Client side of a federation: the Flower ClientApp and the per-framework trainers.

The engine uses only this package's public API below; everything else in ``clients/``
is internal (an import-linter contract checks this). Importing ``clients`` imports no
torch, TensorFlow, Keras or Flower; each function imports what it needs.

``make_client_app(cfg)``
    The ``ClientApp`` every runtime backend runs.
``get_evaluator(framework, spec, train)``
    A model of ``spec`` in ``framework`` with ``set_weights`` / ``evaluate`` / ``logits``
    (the server's centralized evaluation uses it).
``run_audits(cfg, spec, weights)``
    Membership-inference and canary audits of a final model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from flwr.clientapp import ClientApp

    from clients.trainer import Trainer
    from sandbox.core.config import Config, TrainConfig
    from sandbox.core.models import ModelSpec


def make_client_app(cfg: Config) -> ClientApp:
    from clients.app import make_client_app as make

    return make(cfg)


def get_evaluator(framework: str, spec: ModelSpec, train: TrainConfig) -> Trainer:
    from clients.trainer import get_evaluator as get

    return get(framework, spec, train)


def run_audits(cfg: Config, spec: ModelSpec, weights: list[np.ndarray]) -> dict:
    from clients.audit import run_audits as audits

    return audits(cfg, spec, weights)


__all__ = ["get_evaluator", "make_client_app", "run_audits"]
