"""The strategy registry: each strategy describes itself when it registers.

A registration says everything the rest of the system needs to know without building
the strategy or importing Flower:

* its **argument schema** (:class:`Arg` per ``federation.strategy_args`` key: type,
  default, meaning), which the engine's pre-flight checks before any output exists;
* whether it is **mean-aggregating** (its aggregate is a weighted mean of client
  updates, possibly followed by a server optimizer), the condition under which
  client-level DP noise calibrated to the mean is valid;
* whether its client update works under **sample-level DP-SGD** (a proximal term, for
  one, would be clipped and noised together with the data gradients);
* the **paper** it implements;
* an optional **check** of the whole experiment config (numbers of clients against
  its assumptions, optimizers it cannot normalize), run by the pre-flight;
* whether its factory needs the experiment's **train** settings (``needs_train``);
* whether it is expected to **learn** (beat chance) on a small benign federation in a
  few rounds, which the conformance suite checks (``learns``).

Opacus-style explicit registry: ``register(name, factory, ...)`` adds an entry,
re-registering a name is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import ConfigError

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from sandbox.core.config import Config, FederationConfig, TrainConfig

#: ``factory(federation_cfg, num_clients, *, weighted_by_key[, train]) -> flwr Strategy``
StrategyFactory = Callable[..., "Strategy"]
#: ``check(config)`` raises ConfigError naming the key, the value and what is allowed
StrategyCheck = Callable[["Config"], None]

_TYPE_NAMES = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Arg:
    """One ``federation.strategy_args`` key: type, the strategy's default, meaning, range.

    ``interval`` bounds numeric values, written as in mathematics: ``"[0, 1)"``,
    ``"(0, inf)"``; empty for no bound.
    """

    type: type
    default: Any
    doc: str = ""
    interval: str = ""

    def accepts(self, value: Any) -> bool:
        if self.type is float:  # TOML writes 1 for 1.0
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.type)

    def in_range(self, value: float) -> bool:
        if not self.interval:
            return True
        low, high = (float(part) for part in self.interval[1:-1].split(","))
        above = value > low if self.interval[0] == "(" else value >= low
        below = value < high if self.interval[-1] == ")" else value <= high
        return above and below


@dataclass(frozen=True)
class StrategyInfo:
    """What a registered strategy declares about itself."""

    name: str
    factory: StrategyFactory = field(repr=False)
    args: Mapping[str, Arg]
    mean_aggregating: bool
    paper: str = ""
    sample_dp: bool = True
    check: StrategyCheck | None = field(default=None, repr=False)
    needs_train: bool = False
    learns: bool = True


_REGISTRY: dict[str, StrategyInfo] = {}


def register(name: str, factory: StrategyFactory, *, args: Mapping[str, Arg],
             mean_aggregating: bool, paper: str = "", sample_dp: bool = True,
             check: StrategyCheck | None = None, needs_train: bool = False,
             learns: bool = True) -> StrategyInfo:
    """Add a strategy under ``name`` (lower-case); re-registering a name is an error.

    Parameters
    ----------
    factory : callable
        ``factory(federation_cfg, num_clients, *, weighted_by_key)`` returning a Flower
        ``Strategy``; it receives the validated ``strategy_args`` in ``federation_cfg``.
        The run chooses each round's clients itself (:mod:`strategies.sampling`) and
        shows the strategy a grid with only those nodes: it must take every node it
        sees (Flower's strategies: ``fraction_train = fraction_evaluate = 1``).
    args : mapping of str to Arg
        Every key ``federation.strategy_args`` may hold for this strategy.
    mean_aggregating : bool
        True if the aggregate is a (weighted) mean of client updates, possibly followed by
        a server optimizer: only then can client-level DP wrap the strategy.
    paper : str
        The algorithm's reference.
    sample_dp : bool
        False if the strategy's client update cannot run under sample-level DP-SGD.
    check : callable, optional
        ``check(config)``: the strategy's own pre-flight check of the experiment; raises
        :class:`~sandbox.core.errors.ConfigError` naming key, value and what is allowed.
    needs_train : bool
        True if ``factory`` also takes ``train=`` (the experiment's ``TrainConfig``).
    learns : bool
        False if the strategy is not meant to beat chance on a small benign federation
        within three rounds (the conformance suite then checks only that it runs).
    """
    if name in _REGISTRY:
        raise ValueError(f"strategy '{name}' is already registered")
    if name != name.lower():
        raise ValueError(f"strategy names are lower-case, got '{name}'")
    for key, arg in args.items():  # a malformed interval or a default outside it
        if not (arg.accepts(arg.default) and arg.in_range(arg.default)):
            raise ValueError(f"strategy '{name}': default {arg.default!r} of {key} is not "
                             f"a {arg.type.__name__} in {arg.interval or 'any range'}")
    entry = StrategyInfo(name, factory, dict(args), mean_aggregating, paper, sample_dp,
                         check, needs_train, learns)
    _REGISTRY[name] = entry
    return entry


def available() -> list[str]:
    return sorted(_REGISTRY)


def mean_aggregating() -> list[str]:
    """Registered strategies that client-level DP may wrap."""
    return [name for name in available() if _REGISTRY[name].mean_aggregating]


def info(name: str) -> StrategyInfo:
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown federation.strategy '{name}'; allowed: {', '.join(available())}")
    return _REGISTRY[name]


def check_strategy(cfg: FederationConfig) -> None:
    """Raise ConfigError unless ``cfg.strategy`` is registered and takes ``strategy_args``."""
    entry = info(cfg.strategy)
    unknown = sorted(set(cfg.strategy_args) - set(entry.args))
    if unknown:
        raise ConfigError(
            f"federation.strategy_args: strategy '{entry.name}' does not take {unknown}; "
            f"allowed: {sorted(entry.args) or 'none'}")
    for key, value in cfg.strategy_args.items():
        arg = entry.args[key]
        if not arg.accepts(value):
            raise ConfigError(
                f"federation.strategy_args.{key} = {value!r}: strategy '{entry.name}' needs "
                f"{_TYPE_NAMES.get(arg.type, arg.type.__name__)} (default {arg.default!r})")
        if not arg.in_range(value):
            raise ConfigError(
                f"federation.strategy_args.{key} = {value!r}: strategy '{entry.name}' needs "
                f"a value in {arg.interval} (default {arg.default!r})")


def check_experiment(cfg: Config) -> None:
    """:func:`check_strategy` plus the strategy's own check of the whole config."""
    check_strategy(cfg.federation)
    entry = _REGISTRY[cfg.federation.strategy]
    if entry.check is not None:
        entry.check(cfg)


def build_strategy(cfg: FederationConfig, num_clients: int, *,
                   weighted_by_key: str, train: TrainConfig | None = None) -> Strategy:
    """The Flower strategy ``cfg.strategy`` with ``cfg.strategy_args``.

    ``weighted_by_key`` is the reply metric the strategy weights client updates by;
    ``train`` the experiment's training settings, which strategies registered with
    ``needs_train`` require.
    """
    check_strategy(cfg)
    entry = _REGISTRY[cfg.strategy]
    if not entry.needs_train:
        return entry.factory(cfg, num_clients, weighted_by_key=weighted_by_key)
    if train is None:
        raise ValueError(f"strategy '{entry.name}' needs the experiment's train settings "
                         "(build_strategy(..., train=cfg.train))")
    return entry.factory(cfg, num_clients, weighted_by_key=weighted_by_key, train=train)
