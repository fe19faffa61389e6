"""Canaries for the one-run privacy audit (Steinke, Nasr & Jagielski 2023).

``m`` canaries are drawn once per (data, seed); each is *included* in the training data of
client ``canary_client`` independently with probability 1/2 (``canary_repeats`` copies
each). The excluded half are the controls. A canary is an out-of-distribution input
(uniform noise over the data's value range) with a random label, the kind of example a
model only fits by memorizing it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.data import FederatedData, load_federated_data

if TYPE_CHECKING:
    from sandbox.core.config import AuditConfig, DataConfig


@dataclass(frozen=True)
class CanarySet:
    x: np.ndarray
    y: np.ndarray
    included: np.ndarray  # bool per canary
    client: int


def make_canaries(data: FederatedData, audit: AuditConfig, seed: int) -> CanarySet:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA7A]))
    train = data.clients[audit.canary_client].x_train
    low, high = float(train.min()), float(train.max())
    x = rng.uniform(low, high, (audit.canaries, *data.input_shape)).astype(train.dtype)
    y = rng.integers(0, data.num_classes, audit.canaries).astype(np.int64)
    included = rng.random(audit.canaries) < 0.5
    return CanarySet(x, y, included, audit.canary_client)


def with_canaries(data: FederatedData, canaries: CanarySet, repeats: int) -> FederatedData:
    """``data`` with the included canaries appended to their client's training set."""
    client = data.clients[canaries.client]
    x_in = np.repeat(canaries.x[canaries.included], repeats, axis=0)
    y_in = np.repeat(canaries.y[canaries.included], repeats, axis=0)
    patched = replace(
        client,
        x_train=np.concatenate([client.x_train, x_in]),
        y_train=np.concatenate([client.y_train, y_in]),
    )
    clients = list(data.clients)
    clients[canaries.client] = patched
    return replace(data, clients=clients)


@functools.lru_cache(maxsize=4)
def federation_with_canaries(
    data_cfg: DataConfig, seed: int, audit: AuditConfig
) -> tuple[FederatedData, CanarySet]:
    base = load_federated_data(data_cfg, seed)
    canaries = make_canaries(base, audit, seed)
    return with_canaries(base, canaries, audit.canary_repeats), canaries
