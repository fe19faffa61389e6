"""q-FFL (Flower's ``QFedAvg``) with the loss it needs from our clients.

Li, Sanjabi, Beirami & Smith (2020), "Fair Resource Allocation in Federated Learning"
(ICLR): q-FedAvg weights each client's update by ``F_k(w^t)^q``, the loss of the
*received* global model on the client's data, so clients the model serves badly count
more. Flower's ``QFedAvg`` reads that loss from the train replies under
``train_loss_key``; our clients measure it before training when the train config asks
for it (:data:`sandbox.core.wire.REPORT_PRE_TRAIN_LOSS`) and reply it under
:data:`~sandbox.core.wire.PRE_TRAIN_LOSS`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import QFedAvg

from sandbox.core import wire
from strategies.records import arrays_record, record_arrays


class QFFL(QFedAvg):
    """Flower's ``QFedAvg`` that asks the clients for their pre-training loss.

    Construct with ``train_loss_key = wire.PRE_TRAIN_LOSS`` and the clients' learning
    rate (``1 / L`` in the paper). The aggregate is returned in float32, the wire's dtype.
    """

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config = ConfigRecord({**config, wire.REPORT_PRE_TRAIN_LOSS: True})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        keys, values = record_arrays(arrays)
        return arrays_record(keys, [np.asarray(v, np.float32) for v in values]), metrics
