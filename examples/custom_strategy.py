"""Add a strategy of your own: register it, and every tool of the sandbox knows it.

This script registers **FedAvg with a server learning rate** ("fedavg_slr"): the server
moves the global model only part of the way (or further) towards the clients' mean,
``x <- x + eta * (mean_i y_i - x)`` (Reddi et al. 2021, "Adaptive Federated
Optimization" (ICLR), Algorithm 1 with SGD as the server optimizer; Hsu et al. 2019 with
momentum 0). Once registered, configs may name it (``federation.strategy``), its
arguments are validated before a run, and the strategy comparison runs it beside the
built-in ones::

    python examples/custom_strategy.py                      # compare it with fedavg
    python examples/custom_strategy.py --strategies fedavg_slr scaffold fedavg --rounds 5

The strategy subclasses Flower's ``FedAvg`` and changes only the aggregation; the
factory receives the validated ``federation.strategy_args``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

import strategies  # noqa: E402
from benchmarks import compare_strategies  # noqa: E402
from sandbox.core import wire  # noqa: E402
from strategies.stock import managed_args  # noqa: E402


class FedAvgServerLR(FedAvg):
    """FedAvg whose aggregate is ``x + eta * (weighted mean of the y_i - x)``."""

    def __init__(self, *, server_learning_rate: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.server_learning_rate = server_learning_rate
        self.current: ArrayRecord | None = None  # x of the round being trained

    def configure_train(self, server_round, arrays, config, grid):
        self.current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None:
            return None, metrics
        moved = {}
        for key in mean.keys():
            x = wire.from_array(self.current[key])
            step = self.server_learning_rate * (wire.from_array(mean[key]) - x)
            moved[key] = wire.to_array((x + step).astype(np.float32))
        return ArrayRecord(moved), metrics


def fedavg_slr_factory(cfg, num_clients, *, weighted_by_key):
    """The registry's factory: Flower's managed arguments plus the validated strategy_args."""
    return FedAvgServerLR(**managed_args(cfg, weighted_by_key), **cfg.strategy_args)


strategies.register(
    "fedavg_slr", fedavg_slr_factory, mean_aggregating=True,
    args={"server_learning_rate": strategies.Arg(float, 1.0, "server step eta towards the "
                                                 "clients' mean", "(0, inf)")},
    paper="Reddi et al. 2021, Adaptive Federated Optimization (ICLR)")

if __name__ == "__main__":
    argv = sys.argv[1:] or ["--strategies", "fedavg", "fedavg_slr", "--rounds", "5",
                            "--skip-robustness"]
    # A report of its own: benchmarks/COMPARE.md stays the one `nox -s compare` wrote.
    out = Path("results") / "custom_strategy"
    out.mkdir(parents=True, exist_ok=True)
    raise SystemExit(compare_strategies.main(
        [*argv, "--out", str(out), "--report", str(out / "COMPARE.md")]))
