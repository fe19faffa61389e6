"""The clients' replies of each round, one by one: per-framework metrics, compute, attacks.

Strategies aggregate the clients' metrics into one record per round; a mixed, a
heterogeneous or an attacked federation also reports them per framework, per client
(optimizer steps, examples) and by malice. :class:`ReplyTap` is a view of the run's
``Grid`` that keeps the metrics of every valid train and evaluate reply as it passes
to the strategy; the ServerApp takes them once per round (its rounds run train, then
evaluate, then the centralized evaluation, one after another) and
:func:`client_columns` turns them into the row's extra columns
(:func:`sandbox.core.results.metric_columns`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from sandbox.core import wire
from sandbox.core.assignment import keras_partitions
from sandbox.core.results import (
    ATTACK_COLUMNS,
    COMPUTE_COLUMNS,
    FRAMEWORK_COLUMNS,
    METRIC_COLUMNS,
)

if TYPE_CHECKING:
    from flwr.supercore.run import Run

    from sandbox.core.config import Config

_KEPT = (MessageType.TRAIN, MessageType.EVALUATE)


class ReplyTap(Grid):
    """``grid`` itself, keeping the metrics of valid train and evaluate replies."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self._kept: dict[str, list[dict[str, float]]] = {kind: [] for kind in _KEPT}

    def take(self) -> dict[str, list[dict[str, float]]]:
        """The metrics kept since the last call, by message type; forgets them."""
        kept, self._kept = self._kept, {kind: [] for kind in _KEPT}
        return kept

    def _keep(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            kind = reply.metadata.message_type
            if kind in self._kept and not reply.has_error():
                self._kept[kind].append(dict(reply.content[wire.METRICS]))
        return replies

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._keep(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self._keep(self._grid.send_and_receive(messages, timeout=timeout))


def metric_columns(cfg: Config) -> list[str]:
    """The columns of ``cfg``'s metric rows: :data:`METRIC_COLUMNS`, then the per-framework,
    compute and attack columns of a mixed, heterogeneous or attacked federation."""
    columns = list(METRIC_COLUMNS)
    if cfg.framework == "mixed":
        columns += FRAMEWORK_COLUMNS
    if cfg.heterogeneity.local_steps is not None:
        columns += COMPUTE_COLUMNS
    if cfg.attack.any:
        columns += ATTACK_COLUMNS
    return columns


def client_columns(cfg: Config, train: list[dict[str, float]],
                   evaluate: list[dict[str, float]], weight_key: str) -> dict[str, Any]:
    """The round's :func:`metric_columns` beyond :data:`METRIC_COLUMNS`, from its replies.

    ``train`` / ``evaluate`` hold the metrics of the round's valid replies (each with
    its ``partition-id``); ``weight_key`` is the reply metric the strategy weighs client
    metrics by. A framework without replies gets ``None``.
    """
    extra = set(metric_columns(cfg)) - set(METRIC_COLUMNS)
    row: dict[str, Any] = {}
    if "local_steps" in extra:
        by_pid = sorted(train, key=lambda m: m[wire.PARTITION_ID])
        for column, key in (("local_steps", wire.LOCAL_STEPS),
                            ("local_examples", wire.LOCAL_EXAMPLES)):
            row[column] = {str(int(m[wire.PARTITION_ID])): int(m[key]) for m in by_pid}
    if "malicious_partitions" in extra:
        row["malicious_partitions"] = sorted(int(m[wire.PARTITION_ID]) for m in train
                                             if m.get(wire.MALICIOUS))
    if cfg.framework == "mixed":
        keras = set(keras_partitions(cfg))
        for framework in ("torch", "keras"):
            mine = [(m, d) for d in (train, evaluate) for m in d
                    if (int(m[wire.PARTITION_ID]) in keras) == (framework == "keras")]
            for column, key, source in (("train_loss", wire.TRAIN_LOSS, train),
                                        ("fed_val_loss", wire.EVAL_LOSS, evaluate),
                                        ("fed_val_accuracy", wire.EVAL_ACCURACY, evaluate)):
                replies = [m for m, d in mine if d is source]
                row[f"{column}_{framework}"] = _weighted_mean(replies, key, weight_key)
    return row


def _weighted_mean(replies: list[dict[str, float]], key: str, weight_key: str
                   ) -> float | None:
    total = sum(float(m[weight_key]) for m in replies)
    if not replies or total <= 0:
        return None
    return sum(float(m[key]) * float(m[weight_key]) for m in replies) / total


