"""Server-side aggregation maths of our own strategies, as pure numpy functions.

Each function takes the global model and the clients' replies as lists of numpy arrays
(one list per client, layer by layer in one fixed order) and returns the new arrays.
They compute in float64 and return float32 (the wire's dtype); sums run over clients in
the order given, so equal inputs in equal order give equal bits. No Flower here: the
strategies (:mod:`strategies.scaffold`, :mod:`strategies.fednova`) turn messages into
these lists and back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Arrays = list[np.ndarray]


def _mean(per_client: Sequence[Arrays], weights: Sequence[float]) -> list[np.ndarray]:
    """``sum_i weights[i] * per_client[i]`` layer by layer, in float64."""
    total = [np.zeros(np.shape(layer), np.float64) for layer in per_client[0]]
    for arrays, weight in zip(per_client, weights, strict=True):
        for acc, layer in zip(total, arrays, strict=True):
            acc += float(weight) * np.asarray(layer, np.float64)
    return total


def _float32(arrays: Sequence[np.ndarray]) -> Arrays:
    return [np.asarray(layer, np.float32) for layer in arrays]


def scaffold_update(x: Arrays, local_models: Sequence[Arrays], control: Arrays,
                    control_deltas: Sequence[Arrays], *, server_lr: float,
                    num_clients: int) -> tuple[Arrays, Arrays]:
    """SCAFFOLD's server step: new global model and server control variate.

    Karimireddy et al. (2020), "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning" (ICML), Algorithm 1, lines 16-17 (eq. (4)-(5))::

        x <- x + eta_g * (1/|S|) sum_i (y_i - x)
        c <- c + (|S|/N) * (1/|S|) sum_i delta_c_i

    Parameters
    ----------
    x : list of ndarray
        The global model the clients started from.
    local_models : sequence of list of ndarray
        ``y_i`` of the ``|S|`` clients that replied.
    control : list of ndarray
        The server control variate ``c`` sent this round.
    control_deltas : sequence of list of ndarray
        ``delta c_i = c_i+ - c_i`` of the same clients, in the same order.
    server_lr : float
        ``eta_g`` (1 in the paper's experiments: the new model is the mean of the ``y_i``).
    num_clients : int
        ``N``, all clients of the federation (sampled or not).

    Returns
    -------
    (list of ndarray, list of ndarray)
        The new ``x`` and ``c`` (float32).
    """
    sampled = len(local_models)
    if sampled == 0 or sampled != len(control_deltas):
        raise ValueError(f"need one control delta per local model, got {sampled} models "
                         f"and {len(control_deltas)} deltas")
    mean_model = _mean(local_models, [1.0 / sampled] * sampled)
    mean_delta = _mean(control_deltas, [1.0 / sampled] * sampled)
    new_x = [np.asarray(xl, np.float64) + server_lr * (ml - np.asarray(xl, np.float64))
             for xl, ml in zip(x, mean_model, strict=True)]
    new_c = [np.asarray(cl, np.float64) + (sampled / num_clients) * dl
             for cl, dl in zip(control, mean_delta, strict=True)]
    return _float32(new_x), _float32(new_c)


def fednova_update(x: Arrays, local_models: Sequence[Arrays], num_examples: Sequence[float],
                   normalized_steps: Sequence[float]) -> Arrays:
    """FedNova's normalized averaging: the new global model.

    Wang, Liu, Liang, Joshi & Poor (2020), "Tackling the Objective Inconsistency Problem
    in Heterogeneous Federated Optimization" (NeurIPS), eq. (5)-(6) with the server
    learning rate 1::

        p_i = n_i / sum_j n_j
        d_i = (x - y_i) / ||a_i||_1               (normalized local update)
        tau_eff = sum_i p_i ||a_i||_1
        x <- x - tau_eff * sum_i p_i d_i

    ``||a_i||_1`` is the client's normalized step count (``tau_i`` for plain SGD). With
    equal ``||a_i||_1`` this is FedAvg's weighted mean ``sum_i p_i y_i``.

    Parameters
    ----------
    x : list of ndarray
        The global model the clients started from.
    local_models : sequence of list of ndarray
        ``y_i`` of the clients that replied.
    num_examples : sequence of float
        ``n_i``, the clients' training examples.
    normalized_steps : sequence of float
        ``||a_i||_1`` of the same clients (positive).

    Returns
    -------
    list of ndarray
        The new ``x`` (float32).
    """
    if not local_models or not len(local_models) == len(num_examples) == len(
            normalized_steps):
        raise ValueError("need n_i and ||a_i||_1 for every local model")
    if min(normalized_steps) <= 0 or min(num_examples) <= 0:
        raise ValueError(f"FedNova needs positive n_i and ||a_i||_1, got {list(num_examples)}"
                         f" and {list(normalized_steps)}")
    total = float(sum(num_examples))
    p = [n / total for n in num_examples]
    tau_eff = sum(pi * a for pi, a in zip(p, normalized_steps, strict=True))
    x64 = [np.asarray(layer, np.float64) for layer in x]
    directions = [[(xl - np.asarray(yl, np.float64)) / a for xl, yl in zip(x64, y, strict=True)]
                  for y, a in zip(local_models, normalized_steps, strict=True)]
    step = _mean(directions, p)
    return _float32([xl - tau_eff * sl for xl, sl in zip(x64, step, strict=True)])
