"""Server-side strategies: the registry, Flower's stock strategies and the DP wrappers.

Every strategy registers with the argument schema and traits the rest of the system
needs (:mod:`strategies.registry`); Flower's stock strategies are registered in
:mod:`strategies.stock`, our own (SCAFFOLD, FedNova) in :mod:`strategies.own`.
Importing this package does not import Flower: building a strategy does.

>>> import strategies
>>> strategies.info("fedprox").args["proximal_mu"].default
0.0
>>> strategies.mean_aggregating()                         # doctest: +ELLIPSIS
['fedadagrad', 'fedadam', 'fedavg', ...]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from strategies import own as _own  # noqa: F401 - registers SCAFFOLD and FedNova
from strategies import stock as _stock  # noqa: F401 - registers Flower's stock strategies
from strategies.registry import (
    Arg,
    StrategyInfo,
    available,
    build_strategy,
    check_experiment,
    check_strategy,
    info,
    mean_aggregating,
    register,
)

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import Result, Strategy

    from sandbox.core.config import Config
    from sandbox.core.privacy import PrivacyLedger, SampleDPPlan


class Accounted(Protocol):
    """What the engine uses of a run's outermost strategy (see :func:`accounted`).

    ``ledger`` holds every DP mechanism applied so far; ``client_reported`` the ε each
    client's own accountant reported (by partition id); ``participation`` the partition
    ids chosen per round (``{round: {"train": [...], "evaluate": [...]}}``); ``result``
    the latest global model and aggregated client metrics, kept even when the budget
    stops the run; ``client_dp_log`` one dict per round of client-level DP (clients
    sampled, valid replies, clipping norm used, noise stds, noised unclipped fraction,
    next norm, effective noise multiplier; empty without client-level DP); ``failures``
    the sampled clients that failed or timed out, with the reason
    (``{round: {"train": {pid: "Type: message"}, ...}}``).
    ``start`` is Flower's ``Strategy.start``; it raises
    :class:`~sandbox.core.errors.BudgetExhausted` before a round over budget and
    :class:`~sandbox.core.errors.ClientsFailed` when too few clients replied.
    """

    ledger: PrivacyLedger
    client_reported: dict[int, float]
    participation: dict[int, dict[str, list[int]]]
    failures: dict[int, dict[str, dict[int, str]]]
    result: Result

    @property
    def client_dp_log(self) -> list[dict[str, float | int | None]]: ...

    def start(self, **kwargs: Any) -> Result: ...


def wrap_client_dp(strategy: Strategy, cfg: Config) -> Strategy:
    """Client-level DP (:mod:`strategies.client_dp`) selected by ``privacy.client.mode``."""
    from strategies.privacy import wrap_client_dp as wrap

    return wrap(strategy, cfg)


def accounted(strategy: Strategy, cfg: Config, sample_plans: dict[int, SampleDPPlan], *,
              initial_arrays: ArrayRecord, source: str = "",
              prior: PrivacyLedger | None = None) -> Accounted:
    """The outermost wrapper of every run: privacy ledger, budget stop, stop-proof Result."""
    from strategies.privacy import AccountedStrategy

    return AccountedStrategy(strategy, cfg, sample_plans, initial_arrays=initial_arrays,
                             source=source, prior=prior)


__all__ = [
    "Accounted",
    "Arg",
    "StrategyInfo",
    "accounted",
    "available",
    "build_strategy",
    "check_experiment",
    "check_strategy",
    "info",
    "mean_aggregating",
    "register",
    "wrap_client_dp",
]
