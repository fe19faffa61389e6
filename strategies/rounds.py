"""The round loop of Flower's ``Strategy.start``, able to begin at any round.

Flower 1.42's ``Strategy.start`` (template method) always runs rounds 1..N after
evaluating the initial model. A run resumed from a checkpoint must continue at round
k + 1 with the checkpoint's model and strategy state; :func:`run_rounds` is the same
loop (train → federated evaluation → centralized evaluation, per round) with a first
round. With ``first_round = 1`` it does exactly what ``Strategy.start`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import Result

if TYPE_CHECKING:
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy


def run_rounds(strategy: Strategy, *, grid: Grid, initial_arrays: ArrayRecord,
               num_rounds: int, first_round: int = 1, timeout: float = 3600,
               train_config: ConfigRecord | None = None,
               evaluate_config: ConfigRecord | None = None,
               evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
               ) -> Result:
    """Rounds ``first_round``..``num_rounds`` of ``strategy`` starting from ``initial_arrays``.

    The initial model is evaluated centrally (round 0) only when ``first_round`` is 1; a
    resumed run has that row already.
    """
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    result = Result(arrays=initial_arrays)
    arrays = initial_arrays
    if evaluate_fn and first_round == 1:
        metrics = evaluate_fn(0, initial_arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[0] = metrics
    for server_round in range(first_round, num_rounds + 1):
        replies = grid.send_and_receive(
            messages=strategy.configure_train(server_round, arrays, train_config, grid),
            timeout=timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            result.arrays = arrays = new_arrays
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
        if evaluate_fn:
            metrics = evaluate_fn(server_round, arrays)
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
    return result
