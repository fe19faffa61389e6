"""The row columns that need the clients' replies one by one: per framework, compute, attacks.

Strategies aggregate the clients' metrics into one record per round; a mixed, a
heterogeneous or an attacked federation also reports them per framework, per client
(optimizer steps, examples) and by malice. The ServerApp's grid view
(:class:`sandbox.engine.server.ReplyTap`) keeps the metrics of every valid train and
evaluate reply of a round; :func:`client_columns` turns them into the row's columns
beyond :data:`~sandbox.core.results.METRIC_COLUMNS` (:func:`metric_columns`). No
Flower import: the recorder and run directories use this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandbox.core import wire
from sandbox.core.assignment import keras_partitions
from sandbox.core.results import (
    ATTACK_COLUMNS,
    COMPUTE_COLUMNS,
    FRAMEWORK_COLUMNS,
    METRIC_COLUMNS,
)

if TYPE_CHECKING:
    from sandbox.core.config import Config

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


