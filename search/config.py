"""Study files: ``[study]`` settings, ``[experiment]`` overrides and the ``[space]``.

Every key is documented in ``configs/README.md`` (section "Search studies").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sandbox.core.config import Config, check_safe_name, describe_error
from sandbox.core.errors import ConfigError
from sandbox.core.tomlio import read_toml, set_dotted
from sandbox.engine.preflight import load_config, validate_config
from search.space import SearchSpace

Objective = Literal["accuracy", "epsilon", "client_compute"]
DIRECTIONS = {"accuracy": "maximize", "epsilon": "minimize", "client_compute": "minimize"}


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    name: str = "study"
    backend: Literal["optuna", "kerastuner"] = "optuna"
    experiment: str = ""
    n_trials: int = Field(20, ge=1)
    seed: int = Field(0, ge=0)
    sampler: Literal["tpe", "cmaes", "random", "gp", "nsga2"] = "tpe"
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    objectives: list[Objective] = Field(default_factory=lambda: ["accuracy"])
    storage: str = ""
    output_dir: str = "results"
    workers: int = Field(1, ge=1)
    epsilon_max: float = Field(0.0, ge=0)
    privacy_budget: float = Field(0.0, ge=0)
    trial_distribution: Literal["fixed", "poisson"] = "fixed"
    client_round_budget: int = Field(0, ge=0)
    oracle: Literal["random", "bayesian", "hyperband"] = "hyperband"
    max_rounds: int = Field(0, ge=0)
    hyperband_factor: int = Field(3, ge=2)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_safe_name("study.name", name)

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(
                f"study.objectives must list distinct objectives, got {self.objectives}")
        if self.objectives[0] != "accuracy":
            raise ValueError("study.objectives must start with 'accuracy' (the pruned metric)")
        multi = len(self.objectives) > 1
        if multi and self.pruner != "none":
            raise ValueError("study.pruner must be 'none' for multi-objective studies "
                             "(Optuna prunes single-objective studies only)")
        if multi and self.backend == "kerastuner":
            raise ValueError("study.backend='kerastuner' optimizes one objective; "
                             "use backend='optuna' for multi-objective studies")
        if self.epsilon_max and "epsilon" not in self.objectives:
            raise ValueError("study.epsilon_max constrains ε: add 'epsilon' to study.objectives")
        return self

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[o] for o in self.objectives]


class Study:
    """A parsed study file: settings, base experiment (as a raw dict) and space."""

    def __init__(self, path: str | Path, overrides: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        raw = read_toml(self.path, "study")
        unknown = sorted(set(raw) - {"study", "experiment", "space"})
        if unknown:
            raise ConfigError(f"{self.path}: unknown table(s) {unknown}; allowed: study, "
                              "experiment, space")
        settings = dict(raw.get("study", {}))
        settings.update(overrides or {})
        try:
            self.settings = StudyConfig.model_validate(settings)
        except ValidationError as exc:
            lines = [describe_error(e, StudyConfig).replace("  ", "  study.", 1)
                     for e in exc.errors()]
            raise ConfigError(f"{self.path}: invalid [study]\n" + "\n".join(lines),
                              problems=[line.strip() for line in lines]) from None
        base = load_config(self._resolve(self.settings.experiment)
                           if self.settings.experiment else None)
        self.base_raw = base.model_dump(mode="json", exclude_none=True)
        for key, value in _flatten(raw.get("experiment", {})):
            set_dotted(self.base_raw, key, value)
        self.base_raw.setdefault("output", {})["progress"] = False
        self.space = SearchSpace.from_dict(raw.get("space", {}), source=str(self.path))
        self.base = validate_config(self.base_raw, source=f"{self.path} [experiment]")
        if "epsilon" in self.settings.objectives and not self.base.privacy.any_dp:
            keys = [p.key for p in self.space.params]
            if not any(k.startswith("privacy.") for k in keys):
                raise ConfigError(f"{self.path}: objective 'epsilon' needs DP in the experiment "
                                  "(privacy.sample.enabled or privacy.client.mode)")

    def _resolve(self, name: str) -> Path:
        candidate = Path(name)
        return candidate if candidate.is_absolute() or candidate.exists() else (
            self.path.parent / candidate)

    @property
    def directory(self) -> Path:
        return Path(self.settings.output_dir) / self.settings.name

    def trial_config(self, values: dict[str, Any], *, rounds: int | None = None,
                     name: str = "trial") -> Config:
        raw = self.space.apply(self.base_raw, values)
        raw["name"] = name
        raw.setdefault("output", {}).update(
            {"dir": str(self.directory / "trials"), "progress": False, "tensorboard": False})
        if rounds is not None:
            raw["rounds"] = int(rounds)
        return validate_config(raw, source=f"{self.path} trial {values}")


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "strategy_args":
            items += _flatten(value, dotted + ".")
        else:
            items.append((dotted, value))
    return items
