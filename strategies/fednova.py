"""FedNova: normalized averaging for clients that take different numbers of local steps.

Wang, Liu, Liang, Joshi & Poor (2020), "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization" (NeurIPS). Plain FedAvg weights each client's
update by its data share, so clients that take more local steps pull the model towards
their own optimum (objective inconsistency). FedNova divides each update by the client's
normalized step count ``||a_i||_1`` (reported by the client under
:data:`sandbox.core.wire.NORMALIZED_STEPS`) and rescales the mean by the effective step
count ``tau_eff``; the maths is :func:`strategies.aggregation.fednova_update`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from sandbox.core import wire
from strategies.aggregation import fednova_update
from strategies.records import arrays_record, record_arrays, valid_replies


class FedNova(FedAvg):
    """FedNova (Wang et al. 2020) on Flower's message API.

    Client selection, federated evaluation and metric aggregation are FedAvg's; the
    model update is eq. (5)-(6) of the paper with ``p_i = n_i / sum_j n_j`` (the
    clients' :data:`~sandbox.core.wire.NUM_EXAMPLES`) and server learning rate 1.
    Takes Flower's ``FedAvg`` arguments.
    """

    _keys: list[str]
    _current: list[np.ndarray]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._keys, self._current = record_arrays(arrays)  # x of this round
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``x <- x - tau_eff sum_i p_i (x - y_i) / ||a_i||_1``."""
        valid = valid_replies(replies, wire.ARRAYS)
        if not valid:
            return None, None
        metrics = [reply.content[wire.METRICS] for reply in valid]
        new_x = fednova_update(
            self._current, [record_arrays(reply.content[wire.ARRAYS])[1] for reply in valid],
            [float(m[wire.NUM_EXAMPLES]) for m in metrics],
            [float(m[wire.NORMALIZED_STEPS]) for m in metrics])
        aggregated = self.train_metrics_aggr_fn([reply.content for reply in valid],
                                                self.weighted_by_key)
        return arrays_record(self._keys, new_x), aggregated
