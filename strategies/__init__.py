"""Server-side strategies: the registry, Flower's stock strategies and the DP wrappers.

Every strategy registers with the argument schema and traits the rest of the system
needs (:mod:`strategies.registry`); Flower's stock strategies are registered in
:mod:`strategies.stock`. Importing this package does not import Flower: building a
strategy does.

>>> import strategies
>>> strategies.info("fedprox").args["proximal_mu"].default
0.0
>>> strategies.mean_aggregating()                         # doctest: +ELLIPSIS
['fedadagrad', 'fedadam', 'fedavg', ...]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strategies import stock as _stock  # noqa: F401 - registers Flower's stock strategies
from strategies.registry import (
    Arg,
    StrategyInfo,
    available,
    build_strategy,
    check_strategy,
    info,
    mean_aggregating,
    register,
)

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from sandbox.core.config import Config
    from sandbox.core.privacy import PrivacyLedger, SampleDPPlan
    from strategies.privacy import AccountedStrategy


def wrap_client_dp(strategy: Strategy, cfg: Config) -> Strategy:
    """Flower's client-level DP wrapper selected by ``privacy.client.mode``."""
    from strategies.privacy import wrap_client_dp as wrap

    return wrap(strategy, cfg)


def accounted(strategy: Strategy, cfg: Config, sample_plans: dict[int, SampleDPPlan], *,
              source: str = "", prior: PrivacyLedger | None = None) -> AccountedStrategy:
    """The outermost wrapper of every run: privacy ledger, budget stop, stop-proof Result."""
    from strategies.privacy import AccountedStrategy

    return AccountedStrategy(strategy, cfg, sample_plans, source=source, prior=prior)


__all__ = [
    "Arg",
    "StrategyInfo",
    "accounted",
    "available",
    "build_strategy",
    "check_strategy",
    "info",
    "mean_aggregating",
    "register",
    "wrap_client_dp",
]
