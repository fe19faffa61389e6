"""Framework-free search space, translated to Optuna and to KerasTuner.

A space is a TOML table of named parameters (``[space.<name>]``)::

    [space.depth]
    type = "int"            # int | float | categorical
    low = 1
    high = 3
    key = "model.hidden#len"    # config key it sets (default: the name)

    [space.width_1]
    type = "int"
    low = 16
    high = 256
    log = true
    key = "model.hidden[1]"     # list element
    when = { depth = [2, 3] }   # active only if depth is 2 or 3

``int``/``float`` take ``low``, ``high`` and optionally ``log`` or ``step``;
``categorical`` takes ``choices``. ``when`` makes a parameter conditional on the values
of parameters defined before it (KerasTuner's ``conditional_scope`` semantics).
Keys: any dotted config key, ``federation.strategy_args.<arg>``, ``<list key>[i]`` for
one element of a list and ``<list key>#len`` for its length (elements beyond the length
are dropped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sandbox.core.errors import ConfigError
from sandbox.core.tomlio import get_dotted, set_dotted

TYPES = ("int", "float", "categorical")
_INDEX = re.compile(r"^(?P<key>[\w.]+)\[(?P<index>\d+)\]$")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Framework-neutral description (what both translations must agree on)."""
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step}


class SearchSpace:
    """Ordered parameters; parents come before the parameters conditioned on them."""

    def __init__(self, params: list[Param]) -> None:
        self.params = params
        self.by_name = {p.name: p for p in params}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "space") -> SearchSpace:
        if not raw:
            raise ConfigError(f"{source}: [space] is empty; define at least one parameter")
        params: list[Param] = []
        for name, entry in raw.items():
            params.append(_parse_param(name, entry, {p.name: p for p in params}, source))
        return cls(params)

    def active(self, name: str, values: dict[str, Any]) -> bool:
        param = self.by_name[name]
        return all(parent in values and values[parent] in allowed
                   for parent, allowed in param.when.items())

    def is_complete(self, values: dict[str, Any]) -> bool:
        """True if ``values`` holds every parameter that is active for those values."""
        return all(p.name in values for p in self.params if self.active(p.name, values))

    def describe(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.describe() | {"when": {k: list(v) for k, v in p.when.items()}}
                for p in self.params}

    # -- Optuna ------------------------------------------------------------------------
    def suggest_optuna(self, trial) -> dict[str, Any]:
        """Sample every active parameter with ``trial.suggest_*``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if not self.active(p.name, values):
                continue
            if p.type == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high),
                                                   step=int(p.step or 1), log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step,
                                                     log=p.log)
        return values

    def optuna_distributions(self) -> dict[str, Any]:
        """Optuna distribution of every parameter (conditions aside)."""
        from optuna import distributions as d

        out = {}
        for p in self.params:
            if p.type == "categorical":
                out[p.name] = d.CategoricalDistribution(list(p.choices))
            elif p.type == "int":
                out[p.name] = d.IntDistribution(int(p.low), int(p.high), log=p.log,
                                                step=int(p.step or 1))
            else:
                out[p.name] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        return out

    # -- KerasTuner --------------------------------------------------------------------
    def declare_keras_tuner(self, hp) -> None:
        """Declare every parameter on ``keras_tuner.HyperParameters`` (with conditions)."""
        for p in self.params:
            scopes = [hp.conditional_scope(parent, list(allowed))
                      for parent, allowed in p.when.items()]
            for scope in scopes:
                scope.__enter__()
            try:
                _declare(hp, p)
            finally:
                for scope in reversed(scopes):
                    scope.__exit__(None, None, None)

    def values_from_keras_tuner(self, hp) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in self.params:
            if self.active(p.name, values) and p.name in hp.values:
                values[p.name] = hp.values[p.name]
        return values

    # -- configs -----------------------------------------------------------------------
    def apply(self, raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """A copy of the nested config dict ``raw`` with ``values`` set at their keys."""
        import copy

        out = copy.deepcopy(raw)
        lengths: dict[str, int] = {}
        elements: dict[str, dict[int, Any]] = {}
        for name, value in values.items():
            key = self.by_name[name].key
            if key.endswith("#len"):
                lengths[key[:-4]] = int(value)
            elif (match := _INDEX.match(key)) is not None:
                elements.setdefault(match["key"], {})[int(match["index"])] = value
            else:
                set_dotted(out, key, value)
        for key in sorted(set(lengths) | set(elements)):
            current = list(get_dotted(out, key) or [])
            for index, value in elements.get(key, {}).items():
                while len(current) <= index:
                    current.append(current[-1] if current else value)
                current[index] = value
            if key in lengths:
                length = lengths[key]
                while len(current) < length:
                    current.append(current[-1] if current else 1)
                current = current[:length]
            set_dotted(out, key, current)
        return out


def _declare(hp, p: Param) -> None:
    if p.type == "categorical":
        hp.Choice(p.name, list(p.choices))
    elif p.type == "int":
        hp.Int(p.name, int(p.low), int(p.high), step=int(p.step) if p.step else None,
               sampling="log" if p.log else "linear")
    else:
        hp.Float(p.name, p.low, p.high, step=p.step, sampling="log" if p.log else "linear")


def _parse_param(name: str, entry: Any, earlier: dict[str, Param], source: str) -> Param:
    where = f"{source}: space.{name}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table with 'type', got {entry!r}")
    allowed = {"type", "low", "high", "log", "step", "choices", "key", "when"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    kind = entry.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type = {kind!r}; allowed: {', '.join(TYPES)}")
    when = {}
    for parent, values in dict(entry.get("when", {})).items():
        if parent not in earlier:
            raise ConfigError(f"{where}.when: '{parent}' is not a parameter defined above it")
        when[parent] = tuple(values if isinstance(values, list) else [values])
    key = str(entry.get("key", name))
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices must be a non-empty list")
        return Param(name, kind, key, choices=tuple(choices), when=when)
    low, high = entry.get("low"), entry.get("high")
    if not isinstance(low, int | float) or not isinstance(high, int | float) or low >= high:
        raise ConfigError(f"{where}: need numeric low < high, got low={low!r}, high={high!r}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: int bounds must be integers, got {low}, {high}")
    log = bool(entry.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: log = true needs low > 0, got {low}")
    step = entry.get("step")
    if log and step is not None:
        raise ConfigError(f"{where}: set only one of log and step")
    return Param(name, kind, key, float(low), float(high), log,
                 float(step) if step is not None else None, when=when)
