"""Our own strategies (where Flower has none), registered like the stock ones.

SCAFFOLD (:mod:`strategies.scaffold`) and FedNova (:mod:`strategies.fednova`) subclass
Flower's ``FedAvg`` for client selection and evaluation and replace its aggregation with
the pure maths of :mod:`strategies.aggregation`. Flower is imported when a strategy is
built, not here.

Neither is mean-aggregating in the registry's sense: client-level DP clips and noises
the model update only, so SCAFFOLD's control variates would be released without noise,
and FedNova's normalized weights need every client's own step count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.core.errors import ConfigError
from strategies.registry import Arg, register
from strategies.stock import managed_args

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from sandbox.core.config import Config, FederationConfig


def sgd_only(name: str, why: str):
    """Pre-flight check: ``train.optimizer`` must be 'sgd' for strategy ``name``."""

    def check(cfg: Config) -> None:
        if cfg.train.optimizer != "sgd":
            raise ConfigError(
                f"train.optimizer = '{cfg.train.optimizer}' cannot be used with "
                f"federation.strategy = '{name}' ({why}); allowed: 'sgd'")

    return check


def scaffold_factory(cfg: FederationConfig, num_clients: int, *,
                     weighted_by_key: str) -> Strategy:
    """:class:`strategies.scaffold.Scaffold` with ``N = data.num_clients``."""
    from strategies.scaffold import Scaffold

    return Scaffold(num_clients=num_clients, **managed_args(cfg, weighted_by_key),
                    **cfg.strategy_args)


def fednova_factory(cfg: FederationConfig, num_clients: int, *,
                    weighted_by_key: str) -> Strategy:
    """:class:`strategies.fednova.FedNova`."""
    from strategies.fednova import FedNova

    return FedNova(**managed_args(cfg, weighted_by_key), **cfg.strategy_args)


register("scaffold", scaffold_factory, mean_aggregating=False, args={
    "server_learning_rate": Arg(float, 1.0, "global step size eta_g", "(0, inf)"),
}, paper="Karimireddy, Kale, Mohri, Reddi, Stich & Suresh 2020, SCAFFOLD: Stochastic "
         "Controlled Averaging for Federated Learning (ICML)",
    check=sgd_only("scaffold", "option II's control variate (x - y_i) / (K eta_l) assumes "
                               "SGD steps of size train.lr"))
register("fednova", fednova_factory, mean_aggregating=False, args={},
         paper="Wang, Liu, Liang, Joshi & Poor 2020, Tackling the Objective Inconsistency "
               "Problem in Heterogeneous Federated Optimization (NeurIPS)",
         check=sgd_only("fednova", "the normalized step count ||a_i||_1 is known for SGD "
                                   "with or without momentum only"))
