"""Strategy registry: ``name -> factory(federation_cfg, num_clients) -> flwr Strategy``.

Stock Flower strategies are used as they are. Only strategies whose client side our
``ClientApp`` implements are registered (FedProx: the trainers add the proximal term
for the ``proximal-mu`` the strategy sends; SCAFFOLD's control variates and friends
arrive with the strategy zoo). Importing this package does not
import Flower; each factory does.

``federation.strategy_args`` is passed to the strategy's constructor; keys the
constructor does not take are rejected with the list of keys it does take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.errors import ConfigError

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from sandbox.config import FederationConfig

StrategyFactory = Callable[..., "Strategy"]

#: Strategies whose aggregate is a (weighted) mean of client updates, possibly followed by
#: a server optimizer: the ones client-level DP noise calibrated to the mean is valid for.
MEAN_AGGREGATING = frozenset({"fedavg", "fedavgm", "fedprox", "fedadam", "fedadagrad",
                              "fedyogi"})

_REGISTRY: dict[str, StrategyFactory] = {}

# Arguments the sandbox sets itself from [federation] and the client count.
_MANAGED_ARGS = {
    "fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
    "min_available_nodes", "weighted_by_key", "arrayrecord_key", "configrecord_key",
    "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn",
}


def register(name: str, factory: StrategyFactory) -> None:
    """Add ``factory`` under ``name`` (lower-case); re-registering a name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"strategy '{name}' is already registered")
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_strategy(
    cfg: FederationConfig, num_clients: int, *, uniform_weights: bool = False
) -> Strategy:
    """Strategy ``cfg.strategy``; ``uniform_weights`` averages clients equally.

    Client-level DP needs equal weights: its noise is calibrated to a sensitivity of
    ``clipping_norm / clients_per_round``, which holds for the unweighted mean only.
    Clients send ``unit-weight = 1`` in every training reply for this.
    """
    if cfg.strategy not in _REGISTRY:
        raise ConfigError(
            f"unknown federation.strategy '{cfg.strategy}'; allowed: {', '.join(available())}"
        )
    return _REGISTRY[cfg.strategy](cfg, num_clients, uniform_weights=uniform_weights)


def _stock(class_name: str) -> StrategyFactory:
    """Factory for a stock ``flwr.serverapp.strategy`` class."""

    def factory(
        cfg: FederationConfig, num_clients: int, *, uniform_weights: bool = False
    ) -> Strategy:
        from flwr.serverapp import strategy as flwr_strategies

        cls = getattr(flwr_strategies, class_name)
        tunable = [
            p for p in inspect.signature(cls.__init__).parameters if p not in _MANAGED_ARGS
            and p != "self"
        ]
        unknown = sorted(set(cfg.strategy_args) - set(tunable))
        if unknown:
            raise ConfigError(
                f"federation.strategy_args: {class_name} does not take {unknown}; "
                f"allowed: {tunable or 'none'}"
            )
        kwargs: dict[str, Any] = dict(cfg.strategy_args)
        if uniform_weights:
            kwargs["weighted_by_key"] = "unit-weight"
        return cls(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if cfg.fraction_evaluate > 0 else 0,
            min_available_nodes=num_clients,
            **kwargs,
        )

    factory.__doc__ = f"Flower's stock ``{class_name}``."
    return factory


for _name, _cls in {
    "fedavg": "FedAvg",
    "fedavgm": "FedAvgM",
    "fedprox": "FedProx",
    "fedadam": "FedAdam",
    "fedadagrad": "FedAdagrad",
    "fedyogi": "FedYogi",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg",
}.items():
    register(_name, _stock(_cls))

__all__ = ["MEAN_AGGREGATING", "available", "build_strategy", "register"]
