"""Adversarial clients (``[attack]``): what a malicious client trains on and replies.

Which partitions are malicious is :func:`sandbox.core.assignment.malicious_partitions`
(seeded). The attacks are the standard ones robust-aggregation papers test against:

* ``label_flip``: the client trains on labels ``y -> C - 1 - y`` (a data-poisoning
  attack; Tolpegin et al. 2020, "Data Poisoning Attacks Against Federated Learning
  Systems", ESORICS);
* ``sign_flip``: the reply is ``w_global - scale * (w_local - w_global)``, the reversed
  and amplified update (Li et al. 2019, "RSA: Byzantine-Robust Stochastic Aggregation
  Methods", AAAI; Karimireddy et al. 2021, "Learning from History for Byzantine Robust
  Optimization", ICML);
* ``scale``: the reply is ``w_global + scale * (w_local - w_global)``, the boosted update
  of model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning",
  AISTATS);
* ``gaussian``: the reply is ``w_global + N(0, noise_std^2)`` per weight, ignoring the
  data (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS).

The ClientApp applies the reply transforms inside its train handler, so Flower's
client-side clipping mods (``privacy.client.mode = "client_*"``) clip the malicious
update like any other: client-level DP still bounds every reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sandbox.core.config import AttackConfig

_NOISE_TAG = 0x6A05_5001  # the gaussian attack's own seeded stream


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """``label_flip``: each label ``y`` becomes ``num_classes - 1 - y``."""
    return (num_classes - 1 - y).astype(y.dtype)


def malicious_reply(attack: AttackConfig, local: list[np.ndarray],
                    received: list[np.ndarray], *, seed: int, server_round: int,
                    partition_id: int) -> list[np.ndarray]:
    """The weights a malicious client sends instead of ``local`` (canonical layout).

    ``received`` are the global weights of the round. ``label_flip`` changes the data,
    not the reply: ``local`` is returned unchanged. The ``gaussian`` noise is drawn from
    ``default_rng([tag, seed, round, partition])``, so attacks repeat with the seed.
    """
    if attack.kind == "label_flip":
        return local
    if attack.kind == "gaussian":
        rng = np.random.default_rng([_NOISE_TAG, seed, server_round, partition_id])
        return [(g + rng.normal(0.0, attack.noise_std, g.shape)).astype(np.float32)
                for g in received]
    factor = -attack.scale if attack.kind == "sign_flip" else attack.scale
    return [(g + factor * (w - g)).astype(np.float32)
            for w, g in zip(local, received, strict=True)]
