"""The Flower ``ServerApp`` every backend runs: registry strategy + centralized evaluation."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients.app import model_spec_for, record_to_arrays
from clients.trainer import get_trainer
from clients.wire import to_record
from sandbox.data import load_federated_data
from strategies import build_strategy

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Result

    from sandbox.config import Config


class RoundObserver(Protocol):
    """Receives the centralized metrics after round 0 (initial model) and every round."""

    def round_finished(self, server_round: int, metrics: dict[str, float]) -> None: ...

    def strategy_finished(self, result: Result) -> None: ...


def make_server_app(cfg: Config, observer: RoundObserver) -> ServerApp:
    """Build the ``ServerApp`` for experiment ``cfg``; ``observer`` sees every round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        observer.strategy_finished(run_strategy(cfg, grid, observer))

    return app


def run_strategy(cfg: Config, grid: Grid, observer: RoundObserver) -> Result:
    random.seed(cfg.seed)  # Flower's strategies sample nodes with the `random` module
    data = load_federated_data(cfg.data, cfg.seed)
    spec = model_spec_for(cfg)
    strategy = build_strategy(cfg.federation, cfg.data.num_clients)
    evaluator = get_trainer(cfg.framework, spec, cfg.train)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluator.set_weights(record_to_arrays(spec, arrays))
        loss, accuracy = evaluator.evaluate(data.x_test, data.y_test)
        observer.round_finished(server_round, {"loss": loss, "accuracy": accuracy})
        return MetricRecord({"central_loss": loss, "central_accuracy": accuracy})

    result = strategy.start(
        grid=grid,
        initial_arrays=to_record(spec.init_weights(cfg.seed)),
        num_rounds=cfg.rounds,
        train_config=ConfigRecord({"framework": cfg.framework}),
        evaluate_fn=evaluate_global,
    )
    missing = [r for r in range(1, cfg.rounds + 1) if r not in result.train_metrics_clientapp]
    if missing:
        raise RuntimeError(
            f"no client returned a valid training reply in round(s) {missing[:10]}; "
            "the ClientApp errors are in the log above"
        )
    return result
