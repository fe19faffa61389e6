"""SCAFFOLD's client side: the control variate ``c_i`` and its update (option II).

Karimireddy et al. (2020), "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML, Algorithm 1. A train message that carries the server control variate
``c`` (an ArrayRecord under :data:`sandbox.core.wire.SERVER_CONTROL`, flat canonical
layout) makes the client

1. correct every local gradient by ``c - c_i`` before the optimizer step;
2. after its ``K`` steps from ``x`` to ``y_i`` with learning rate ``eta_l``, set
   ``c_i+ = c_i - c + (x - y_i) / (K * eta_l)`` (option II);
3. reply ``y_i`` and ``delta c_i = c_i+ - c_i`` (under
   :data:`~sandbox.core.wire.CONTROL_DELTA`) and keep ``c_i+``.

``c_i`` lives in the node's ``Context.state`` (zeros before the client's first SCAFFOLD
round), so it persists across rounds and is part of inline checkpoints.

Under sample-level DP-SGD the correction is added to the *privatized* gradient (after
per-example clipping and noise). ``c`` and ``c_i`` are functions of earlier DP releases
only (the clients' noised models), so the corrected step is post-processing of the
step's Gaussian mechanism and the accountant's ε is unchanged (adaptive composition).
Option II's ``c_i+`` is itself post-processing of ``y_i``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sandbox.core import wire

if TYPE_CHECKING:
    from flwr.app import Context, RecordDict

    from sandbox.core.models import ModelSpec

#: Context.state key of the client's control variate c_i (an ArrayRecord, flat layout).
STATE_KEY = "scaffold-control"


def server_control(content: RecordDict, spec: ModelSpec) -> list[np.ndarray] | None:
    """The server control variate ``c`` of a train message, or ``None`` (not SCAFFOLD)."""
    if wire.SERVER_CONTROL not in content:
        return None
    return wire.record_to_arrays(spec, content[wire.SERVER_CONTROL])


def client_control(context: Context, spec: ModelSpec) -> list[np.ndarray]:
    """The node's ``c_i`` (zeros before its first SCAFFOLD round)."""
    if STATE_KEY in context.state:
        return wire.record_to_arrays(spec, context.state[STATE_KEY])
    return [np.zeros(shape, np.float32) for _, shape in spec.weight_shapes()]


def correction(server: list[np.ndarray], client: list[np.ndarray]) -> list[np.ndarray]:
    """``c - c_i``: what every local gradient is corrected by."""
    return [(c - ci).astype(np.float32) for c, ci in zip(server, client, strict=True)]


def updated_control(server: list[np.ndarray], client: list[np.ndarray],
                    start: list[np.ndarray], end: list[np.ndarray], *, steps: float,
                    lr: float) -> list[np.ndarray]:
    """Option II: ``c_i+ = c_i - c + (x - y_i) / (K * eta_l)`` (``c_i`` if ``K = 0``).

    ``steps`` is the effective step count ``||a_i||_1`` (FedNova's normalized steps): K
    for plain SGD; with SGD momentum rho the model moves by ``eta_l * sum_k (1 - rho^k) /
    (1 - rho)`` gradients, and dividing by ``K * eta_l`` would overstate the mean corrected
    gradient up to ``1 / (1 - rho)`` times (10x at rho = 0.9: SCAFFOLD then diverges).
    """
    if steps == 0:
        return client
    scale = 1.0 / (steps * lr)
    return [(ci - c + (x - y) * scale).astype(np.float32)
            for c, ci, x, y in zip(server, client, start, end, strict=True)]


def store_control(context: Context, control: list[np.ndarray]) -> None:
    context.state[STATE_KEY] = wire.to_record(control)


def control_delta(new: list[np.ndarray], old: list[np.ndarray]):
    """``delta c_i = c_i+ - c_i`` as the reply's ArrayRecord (flat layout)."""
    return wire.to_record([n - o for n, o in zip(new, old, strict=True)])
