"""Flower's stock strategies, registered with their argument schemas.

Only strategies whose client side our ClientApp implements are registered (FedProx: the
trainers add the proximal term for the ``proximal-mu`` the strategy sends). Flower is
imported when a strategy is built, not here. The declared schemas are Flower 1.42's
constructor arguments minus the ones the sandbox sets itself (:data:`MANAGED_ARGS`), with
Flower's defaults except :data:`PAPER_DEFAULTS`; a test checks them against the
constructors. The byzantine-robust rules check ``num_malicious_nodes`` against the
clients sampled per round before any output exists (:func:`byzantine_check`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.core import wire
from sandbox.core.errors import ConfigError
from strategies.registry import Arg, StrategyCheck, StrategyFactory, register

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from sandbox.core.config import Config, FederationConfig, TrainConfig

#: Constructor arguments set from ``[federation]``, the client count and the wire protocol.
MANAGED_ARGS = frozenset({
    "fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
    "min_available_nodes", "weighted_by_key", "arrayrecord_key", "configrecord_key",
    "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn",
    # q-FedAvg: the clients' learning rate is train.lr, the loss their pre-training loss.
    "client_learning_rate", "train_loss_key",
    # Bulyan's first stage stays Flower's Multi-Krum (a function, not a TOML value).
    "selection_rule",
})

#: Registry name -> Flower 1.42 class in ``flwr.serverapp.strategy``.
FLOWER_CLASSES = {
    "fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedprox": "FedProx", "fedadam": "FedAdam",
    "fedadagrad": "FedAdagrad", "fedyogi": "FedYogi", "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg", "krum": "Krum", "multikrum": "MultiKrum",
    "bulyan": "Bulyan", "qfedavg": "QFedAvg",
}

#: Defaults taken from the algorithm's paper where Flower's would make it another
#: algorithm: FedAvgM with Flower's server_momentum = 0 is plain FedAvg; Hsu et al.
#: (2019) report their results with server momentum 0.9.
PAPER_DEFAULTS = {"fedavgm": {"server_momentum": 0.9}}

_ETA = "server-side learning rate"
_ETA_L = "client-side learning rate (Flower only logs it; clients use train.lr)"
_TAU = "adaptivity: controls the algorithm's degree of adaptability"
_POSITIVE, _UNIT = "(0, inf)", "[0, 1)"


def managed_args(cfg: FederationConfig, weighted_by_key: str) -> dict[str, Any]:
    """The FedAvg-family constructor arguments the sandbox sets (see :data:`MANAGED_ARGS`).

    The run's outermost strategy chooses the clients (:mod:`strategies.sampling`) and
    shows this one only the chosen nodes: it takes all it sees.
    """
    evaluate = cfg.fraction_evaluate > 0
    return {"fraction_train": 1.0, "fraction_evaluate": 1.0 if evaluate else 0.0,
            "min_train_nodes": 1, "min_evaluate_nodes": 1 if evaluate else 0,
            "min_available_nodes": 1, "weighted_by_key": weighted_by_key}


def stock_factory(name: str) -> StrategyFactory:
    """Factory for the stock ``flwr.serverapp.strategy`` class of registry ``name``."""
    class_name = FLOWER_CLASSES[name]

    def factory(cfg: FederationConfig, num_clients: int, *, weighted_by_key: str) -> Strategy:
        from flwr.serverapp import strategy as flwr_strategies

        cls = getattr(flwr_strategies, class_name)
        # Our declared defaults where they differ from Flower's (PAPER_DEFAULTS).
        args = {**PAPER_DEFAULTS.get(name, {}), **cfg.strategy_args}
        return cls(**managed_args(cfg, weighted_by_key), **args)

    factory.__doc__ = f"Flower's stock ``{class_name}``."
    return factory


register("fedavg", stock_factory("fedavg"), args={}, mean_aggregating=True,
         paper="McMahan et al. 2017, Communication-Efficient Learning of Deep Networks "
               "from Decentralized Data (AISTATS)")
register("fedavgm", stock_factory("fedavgm"), mean_aggregating=True, args={
    "server_learning_rate": Arg(float, 1.0, "server-side learning rate", "(0, inf)"),
    "server_momentum": Arg(float, 0.9, "server-side momentum (Flower's default 0.0 "
                           "would make this plain FedAvg)", "[0, 1)"),
}, paper="Hsu, Qi & Brown 2019, Measuring the Effects of Non-Identical Data Distribution "
         "for Federated Visual Classification")
# The proximal term's gradient would be clipped and noised with the data gradients.
register("fedprox", stock_factory("fedprox"), mean_aggregating=True, sample_dp=False, args={
    "proximal_mu": Arg(float, 0.0, "weight mu of the clients' proximal term (mu/2)·‖w − w_t‖²",
                       "[0, inf)"),
}, paper="Li et al. 2020, Federated Optimization in Heterogeneous Networks (MLSys)")
_ADAPTIVE = "Reddi et al. 2021, Adaptive Federated Optimization (ICLR)"


def _fedopt_args(eta: float, eta_l: float, *, moments: bool) -> dict[str, Arg]:
    """The arguments of Flower's FedOpt family with one variant's defaults."""
    args = {"eta": Arg(float, eta, _ETA, _POSITIVE),
            "eta_l": Arg(float, eta_l, _ETA_L, _POSITIVE)}
    if moments:  # FedAdam, FedYogi (FedAdagrad has no momentum terms)
        args |= {"beta_1": Arg(float, 0.9, "momentum parameter", _UNIT),
                 "beta_2": Arg(float, 0.99, "second moment parameter", _UNIT)}
    return args | {"tau": Arg(float, 0.001, _TAU, _POSITIVE)}


register("fedadam", stock_factory("fedadam"), mean_aggregating=True,
         args=_fedopt_args(0.1, 0.1, moments=True), paper=_ADAPTIVE)
register("fedadagrad", stock_factory("fedadagrad"), mean_aggregating=True,
         args=_fedopt_args(0.1, 0.1, moments=False), paper=_ADAPTIVE)
register("fedyogi", stock_factory("fedyogi"), mean_aggregating=True,
         args=_fedopt_args(0.01, 0.0316, moments=True), paper=_ADAPTIVE)
register("fedmedian", stock_factory("fedmedian"), args={}, mean_aggregating=False,
         paper="Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards Optimal "
               "Statistical Rates (ICML)")
register("fedtrimmedavg", stock_factory("fedtrimmedavg"), mean_aggregating=False, args={
    "beta": Arg(float, 0.2, "fraction cut from each end before averaging", "[0, 0.5)"),
}, paper="Yin et al. 2018, Byzantine-Robust Distributed Learning: Towards Optimal "
         "Statistical Rates (ICML)")


# -- byzantine-robust aggregation --------------------------------------------------------
_MALICIOUS = Arg(int, 0, "f: malicious clients the rule must withstand among those "
                 "sampled per round", "[0, inf)")


def byzantine_check(name: str, rule: str, needed: Callable[[int], int]) -> StrategyCheck:
    """Pre-flight check that ``needed(f)`` clients are sampled per round (the rule's premise).

    ``rule`` states the premise for the message (for example ``"n > 2f + 2"``).
    """

    def check(cfg: Config) -> None:
        args = cfg.federation.strategy_args
        f = int(args.get("num_malicious_nodes", 0))
        n = cfg.federation.clients_per_round(cfg.data.num_clients)
        if n < needed(f):
            largest = max((g for g in range(n + 1) if needed(g) <= n), default=None)
            allowed = (f"num_malicious_nodes <= {largest}" if largest is not None else
                       f"at least {needed(0)} clients per round")
            raise ConfigError(
                f"federation.strategy_args.num_malicious_nodes = {f}: strategy '{name}' "
                f"needs {rule} with n = {n} clients sampled per round (data.num_clients × "
                f"federation.fraction_train); allowed: {allowed}")
        select = int(args.get("num_nodes_to_select", 1))
        if select > n - f:
            raise ConfigError(
                f"federation.strategy_args.num_nodes_to_select = {select}: strategy "
                f"'{name}' averages at most n - f = {n - f} of the n = {n} sampled clients; "
                f"allowed: 1..{n - f}")

    return check


_BLANCHARD = ("Blanchard, El Mhamdi, Guerraoui & Stainer 2017, Machine Learning with "
              "Adversaries: Byzantine Tolerant Gradient Descent (NeurIPS)")
register("krum", stock_factory("krum"), mean_aggregating=False, args={
    "num_malicious_nodes": _MALICIOUS,
}, paper=_BLANCHARD, check=byzantine_check("krum", "n > 2f + 2", lambda f: 2 * f + 3))
register("multikrum", stock_factory("multikrum"), mean_aggregating=False, args={
    "num_malicious_nodes": _MALICIOUS,
    "num_nodes_to_select": Arg(int, 1, "m: the m lowest-scoring updates are averaged "
                               "(1 is Krum)", "[1, inf)"),
}, paper=_BLANCHARD, check=byzantine_check("multikrum", "n > 2f + 2", lambda f: 2 * f + 3))
register("bulyan", stock_factory("bulyan"), mean_aggregating=False, args={
    "num_malicious_nodes": _MALICIOUS,
}, paper="El Mhamdi, Guerraoui & Rouault 2018, The Hidden Vulnerability of Distributed "
         "Learning in Byzantium (ICML)",
    check=byzantine_check("bulyan", "n >= 4f + 3", lambda f: 4 * f + 3))


# -- q-FFL -------------------------------------------------------------------------------
def qffl_factory(cfg: FederationConfig, num_clients: int, *, weighted_by_key: str,
                 train: TrainConfig) -> Strategy:
    """Flower's ``QFedAvg`` asking for the clients' pre-training loss (:mod:`strategies.qffl`)."""
    from strategies.qffl import QFFL

    return QFFL(client_learning_rate=train.lr, train_loss_key=wire.PRE_TRAIN_LOSS,
                **managed_args(cfg, weighted_by_key), **cfg.strategy_args)


# Not mean-aggregating (updates weighted by loss^q); not under DP-SGD: the pre-training
# loss each client reports is computed on its data without noise.
register("qfedavg", qffl_factory, mean_aggregating=False, sample_dp=False, needs_train=True,
         args={"q": Arg(float, 0.1, "fairness: q = 0 is FedAvg with step 1/L, larger q "
                        "weights high-loss clients more", "[0, inf)")},
         paper="Li, Sanjabi, Beirami & Smith 2020, Fair Resource Allocation in Federated "
               "Learning (ICLR)")
