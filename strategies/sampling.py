"""Seeded client selection and partition-ordered replies for any Flower strategy.

Flower's strategies choose nodes with ``random.sample`` over the runtime's node ids and
aggregate replies in arrival order. Neither is reproducible: the ``random`` module is
process-wide state, node ids are random on Ray and on SuperNodes, and Ray replies arrive
in completion order (float32 sums depend on the order). The run's outermost strategy
(:class:`strategies.privacy.AccountedStrategy`) therefore

1. asks every node once for its partition id (a ``query.partition`` message; the
   ClientApp answers from its node config), so node ids map to partition ids on every
   runtime;
2. chooses each round's clients with :func:`sandbox.core.sampling.clients_for_round`, a
   pure function of (seed, round, purpose, partition ids), and hands the wrapped
   strategy a :class:`SampledGrid` that shows only those nodes, so the strategy
   "samples" exactly them (it is built with ``fraction_* = 1``);
3. passes replies on sorted by partition id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from sandbox.core import wire

PARTITION_QUERY = f"{MessageType.QUERY}.{wire.PARTITION_QUERY_ACTION}"


class SampledGrid(Grid):
    """A view of ``grid`` whose ``get_node_ids`` lists only ``node_ids``."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def discover_partitions(grid: Grid, num_nodes: int, *, timeout_s: float = 600.0
                        ) -> dict[int, int]:
    """``{node id: partition id}`` of all ``num_nodes`` nodes, once they are connected."""
    deadline = time.monotonic() + timeout_s
    while len(node_ids := sorted(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(node_ids)} of {num_nodes} nodes connected "
                               f"within {timeout_s:g} s")
        time.sleep(0.05)
    messages = [Message(RecordDict({wire.CONFIG: ConfigRecord()}), dst_node_id=node,
                        message_type=PARTITION_QUERY) for node in node_ids]
    partitions = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} did not say its "
                               f"partition id: {reply.error.reason}")
        pid = int(reply.content[wire.METRICS][wire.PARTITION_ID])
        partitions[reply.metadata.src_node_id] = pid
    if sorted(partitions.values()) != list(range(num_nodes)):
        raise RuntimeError(f"nodes reported partition ids {sorted(partitions.values())}, "
                           f"expected 0..{num_nodes - 1} once each")
    return partitions


def in_partition_order(replies: Iterable[Message], partitions: dict[int, int]
                       ) -> list[Message]:
    """Replies sorted by their sender's partition id (deterministic aggregation order)."""
    return sorted(replies, key=lambda reply: partitions[reply.metadata.src_node_id])
