"""Run the empirical privacy audits of :mod:`sandbox.core.privacy.audit` on a final model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from clients.trainer import get_evaluator
from sandbox.core.data import load_federated_data
from sandbox.core.privacy import audit

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.models import ModelSpec


def run_audits(cfg: Config, spec: ModelSpec, weights: list[np.ndarray]) -> dict:
    """Membership inference (train members vs global test set) and the canary audit."""
    settings = cfg.privacy.audit
    model = get_evaluator(cfg.framework, spec, cfg.train)
    model.set_weights(weights)
    report: dict = {}
    if settings.membership:
        data = load_federated_data(cfg.data, cfg.seed)  # without canaries
        x_in = np.concatenate([c.x_train for c in data.clients])
        y_in = np.concatenate([c.y_train for c in data.clients])
        n = min(len(y_in), len(data.y_test), settings.max_examples)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0xA0D17]))
        members = rng.choice(len(y_in), n, replace=False)
        nonmembers = rng.choice(len(data.y_test), n, replace=False)
        report["membership_inference"] = audit.membership_inference(
            model.logits(x_in[members]), y_in[members],
            model.logits(data.x_test[nonmembers]), data.y_test[nonmembers],
        )
    if settings.canaries:
        from sandbox.core.privacy.canaries import federation_with_canaries

        _, canaries = federation_with_canaries(cfg.data, cfg.seed, settings)
        report["canaries"] = audit.canary_audit(
            model.logits(canaries.x), canaries.y, canaries.included,
            guesses=settings.guesses, delta=cfg.privacy.delta,
            confidence=settings.confidence,
        ) | {"client": canaries.client, "repeats": settings.canary_repeats}
    return report
