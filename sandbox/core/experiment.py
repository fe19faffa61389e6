"""The data a run trains on: the configured federation plus audit canaries, if any."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.core.data import load_federated_data

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.data import FederatedData


def load_experiment_data(cfg: Config) -> FederatedData:
    """The federation a run trains on: ``cfg.data`` plus audit canaries if configured."""
    if not cfg.privacy.audit.canaries:
        return load_federated_data(cfg.data, cfg.seed)
    from sandbox.core.privacy.canaries import federation_with_canaries

    return federation_with_canaries(cfg.data, cfg.seed, cfg.privacy.audit)[0]
