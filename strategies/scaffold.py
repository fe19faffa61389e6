"""SCAFFOLD's server side: the server control variate and the two updates.

Karimireddy, Kale, Mohri, Reddi, Stich & Suresh (2020), "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning" (ICML), Algorithm 1 with option II for the
client control variates (the client side is :mod:`clients.scaffold`). Every train
message carries the server control variate ``c`` under
:data:`sandbox.core.wire.SERVER_CONTROL` beside the global model; every reply carries
the local model ``y_i`` and ``delta c_i`` under :data:`~sandbox.core.wire.CONTROL_DELTA`.
The maths is :func:`strategies.aggregation.scaffold_update`.

``c`` is an attribute of the strategy, so a run's checkpoint (which pickles the whole
outermost strategy) holds it, and the clients' ``c_i`` live in their ``Context.state``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from sandbox.core import wire
from strategies.aggregation import scaffold_update
from strategies.records import arrays_record, record_arrays, valid_replies


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al. 2020) on Flower's message API.

    Client selection, federated evaluation and metric aggregation are FedAvg's; training
    sends ``c`` and aggregates with the paper's server step (eq. (4)-(5)).

    Parameters
    ----------
    num_clients : int
        ``N``, every client of the federation: ``c`` moves by ``|S|/N`` times the mean
        control delta of the ``|S|`` clients that replied.
    server_learning_rate : float
        Global step size ``eta_g`` (the paper's experiments use 1).
    **kwargs
        Flower's ``FedAvg`` arguments (client selection, keys, metric aggregation).
    """

    def __init__(self, *, num_clients: int, server_learning_rate: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_clients = num_clients
        self.server_learning_rate = server_learning_rate
        #: the server control variate c (zeros before round 1), in the model's layout
        self.control: list[np.ndarray] | None = None
        self._keys: list[str] = []
        self._current: list[np.ndarray] = []  # x of the round being trained

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's train messages, each also carrying ``c``."""
        self._keys, self._current = record_arrays(arrays)
        if self.control is None:
            self.control = [np.zeros_like(layer, np.float32) for layer in self._current]
        messages = list(super().configure_train(server_round, arrays, config, grid))
        control = arrays_record(self._keys, self.control)
        for message in messages:
            message.content[wire.SERVER_CONTROL] = control
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``x <- x + eta_g mean(y_i - x)``, ``c <- c + |S|/N mean(delta c_i)``."""
        valid = valid_replies(replies, wire.ARRAYS, wire.CONTROL_DELTA)
        if not valid:
            return None, None
        local = [record_arrays(reply.content[wire.ARRAYS])[1] for reply in valid]
        deltas = [record_arrays(reply.content[wire.CONTROL_DELTA])[1] for reply in valid]
        new_x, self.control = scaffold_update(
            self._current, local, self.control, deltas,
            server_lr=self.server_learning_rate, num_clients=self.num_clients)
        metrics = self.train_metrics_aggr_fn([reply.content for reply in valid],
                                             self.weighted_by_key)
        return arrays_record(self._keys, new_x), metrics
