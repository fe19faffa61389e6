"""The Flower ``ServerApp`` every backend runs: registry strategy + centralized evaluation.

The strategy is built as ``AccountedStrategy(DP wrapper?(registry strategy))``: the
optional Flower client-level DP wrapper, and outermost the privacy ledger / budget
wrapper of :mod:`strategies.privacy`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients.app import model_spec_for, record_to_arrays
from clients.trainer import get_trainer
from clients.wire import to_record
from sandbox.data import load_experiment_data
from sandbox.privacy import sample_dp_plan
from strategies import build_strategy
from strategies.privacy import AccountedStrategy, BudgetExhausted, wrap_client_dp

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Result

    from sandbox.config import Config


class RoundObserver(Protocol):
    """Receives the centralized metrics after round 0 (initial model) and every round."""

    def round_finished(self, server_round: int, metrics: dict[str, float]) -> None: ...

    def strategy_started(self, accounted: AccountedStrategy) -> None: ...

    def strategy_finished(self, result: Result, accounted: AccountedStrategy,
                          stopped: BudgetExhausted | None) -> None: ...


def make_server_app(cfg: Config, observer: RoundObserver) -> ServerApp:
    """Build the ``ServerApp`` for experiment ``cfg``; ``observer`` sees every round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_strategy(cfg, grid, observer)

    return app


def build_accounted_strategy(cfg: Config, *, source: str = "", prior=None) -> AccountedStrategy:
    """Registry strategy, optional client-level DP wrapper, ledger/budget wrapper."""
    data = load_experiment_data(cfg)
    client_dp = cfg.privacy.client.mode != "off"
    strategy = build_strategy(cfg.federation, cfg.data.num_clients, uniform_weights=client_dp)
    if client_dp:
        strategy = wrap_client_dp(strategy, cfg)
    plans = {}
    if cfg.privacy.sample.enabled:
        plans = {pid: sample_dp_plan(cfg, len(c.y_train)) for pid, c in enumerate(data.clients)}
    return AccountedStrategy(strategy, cfg, plans, source=source, prior=prior)


def run_strategy(cfg: Config, grid: Grid, observer: RoundObserver) -> Result:
    random.seed(cfg.seed)  # Flower's strategies sample nodes with the `random` module
    np.random.seed(cfg.seed)  # and its DP wrappers draw noise from numpy's global state
    data = load_experiment_data(cfg)
    spec = model_spec_for(cfg)
    accounted = build_accounted_strategy(cfg, prior=getattr(observer, "prior_ledger", None))
    evaluator = get_trainer(cfg.framework, spec, cfg.train)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluator.set_weights(record_to_arrays(spec, arrays))
        loss, accuracy = evaluator.evaluate(data.x_test, data.y_test)
        privacy = accounted.ledger.round_summary(server_round, cfg.privacy.accountant)
        observer.round_finished(server_round, {"loss": loss, "accuracy": accuracy, **privacy})
        return MetricRecord({"central_loss": loss, "central_accuracy": accuracy})

    initial = to_record(spec.init_weights(cfg.seed))
    accounted.result.arrays = initial
    observer.strategy_started(accounted)
    stopped = None
    try:
        accounted.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=cfg.rounds,
            train_config=ConfigRecord({"framework": cfg.framework}),
            evaluate_fn=evaluate_global,
        )
    except BudgetExhausted as exc:
        stopped = exc
    result = accounted.result
    last = stopped.server_round - 1 if stopped else cfg.rounds
    missing = [r for r in range(1, last + 1) if r not in result.train_metrics_clientapp]
    if missing:
        raise RuntimeError(
            f"no client returned a valid training reply in round(s) {missing[:10]}; "
            "the ClientApp errors are in the log above"
        )
    observer.strategy_finished(result, accounted, stopped)
    return result
